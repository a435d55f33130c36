"""The vision encoder: an open_clip tower, a torchvision CNN or a Hugging Face vision model, one interface."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import ConfigMixin
from .common import (
    BLOCK_LAYOUT,
    RESNETS,
    TORCHVISION_CNNS,
    BlockInputs,
    EncoderOutput,
    enable_activation_checkpointing,
    encoder_blocks,
    find_part,
    first_trainable_block,
    quiet_from_pretrained,
    set_finetuning,
)

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
VISION_BACKENDS = ("open_clip", "torchvision", "hf")
HF_VISION_TYPES = ("vit", "clip_vision_model", "swin", "beit", "vit_mae", "convnext")
# open_clip ViT towers sized for CPU runs on small images (patch grid 4x4 at 32-64 px).
VISION_PRESETS = {
    "micro-vit": {"layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "tiny-vit": {"layers": 3, "width": 96, "head_width": 48, "patch_size": 16},
}
# Pixel normalisation of Hugging Face vision models by type (their image processors'), for a checkpoint without
# a preprocessor_config.json of its own (`_hf_normalisation`); ImageNet's otherwise.
HF_NORMALISATION = {"clip_vision_model": (OPENAI_MEAN, OPENAI_STD), "vit": ((0.5,) * 3, (0.5,) * 3)}
HF_NORMALISATION["beit"] = HF_NORMALISATION["vit"]
# Hugging Face vision families whose blocks run on their own from the states below them (`HFVisionEncoder.encode_from`):
# token states (BEiT's with their position bias, transformers 5; Swin's with their patch grid), ConvNeXt's feature maps.
HF_FROM_BLOCK = ("hf_vit", "hf_clip_vision_model", "hf_vit_mae", "hf_beit", "hf_swin", "hf_convnext")


@dataclass
class VisionEncoderConfig(ConfigMixin):
    """Architecture of the vision encoder: an open_clip vision tower, a torchvision CNN or a Hugging Face model.

    Args:
        backend (`str`): `"open_clip"` (any tower open_clip builds: ViT, ModifiedResNet, timm), `"torchvision"`
            (the convolutional trunk of a torchvision classifier; its feature map cells are the tokens) or `"hf"`
            (a Hugging Face ViT or CLIP vision model; its patch states are the tokens, [CLS] the pooled vector).
        tower (`dict`): open_clip: fields of `CLIPVisionCfg` (layers, width, patch_size, ...); torchvision:
            `{"arch": name}` with a name of `TORCHVISION_CNNS`; hf: the transformers config as a dict.
        embed_dim (`int`): size of the open_clip tower's pooled (projected) output (torchvision: unused).
        image_mean / image_std (`tuple[float]`): normalisation the weights expect (RGB, 0-1 scale).
        source (`str`, *optional*): open_clip model name the architecture came from; informational.
        quick_gelu (`bool`): open_clip: the tower's activation is QuickGELU, as in OpenAI's CLIP weights and open_clip's
            `-quickgelu` models (a config saved before this field existed reads False, the GELU it was built with).
    """

    backend: str = "open_clip"  # "open_clip" | "torchvision" | "hf"
    tower: dict = field(default_factory=lambda: {"layers": 2, "width": 64, "head_width": 32, "patch_size": 8})
    embed_dim: int = 64  # pooled output size of an open_clip tower
    image_size: int = 64  # square input side in pixels
    image_mean: tuple[float, float, float] = OPENAI_MEAN  # per-channel mean on the 0-1 scale
    image_std: tuple[float, float, float] = OPENAI_STD  # per-channel std on the 0-1 scale
    source: str | None = None  # open_clip model name the tower came from (provenance only)
    quick_gelu: bool = False  # open_clip: QuickGELU instead of GELU (OpenAI CLIP weights, "-quickgelu" models)

    def __post_init__(self):
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError(f"vision.image_mean/image_std need 3 values, got {self.image_mean}, {self.image_std}")
        if self.quick_gelu and self.backend != "open_clip":
            raise ValueError(f"vision.quick_gelu applies to open_clip towers only, not backend {self.backend!r}")
        if self.backend == "torchvision":
            if set(self.tower) != {"arch"} or self.tower["arch"] not in TORCHVISION_CNNS:
                raise ValueError(
                    f"vision.tower for torchvision must be {{'arch': one of {TORCHVISION_CNNS}}}, got {self.tower}"
                )
            return
        if self.backend == "hf":
            self.tower = json.loads(json.dumps(self.tower))  # the form it has after config.json
            if self.tower.get("model_type") not in HF_VISION_TYPES:
                raise ValueError(f"vision.tower for hf needs model_type in {HF_VISION_TYPES}, got {self.tower}")
            if self.tower.get("image_size", self.image_size) != self.image_size:
                raise ValueError(
                    f"vision.image_size {self.image_size} differs from the hf tower's {self.tower['image_size']}"
                )
            return
        if self.backend != "open_clip":
            raise ValueError(f"vision.backend must be one of {VISION_BACKENDS}, got {self.backend!r}")
        from open_clip.model import CLIPVisionCfg

        known = {f.name for f in dataclasses.fields(CLIPVisionCfg)}
        unknown = sorted(set(self.tower) - known)
        if unknown:
            raise ValueError(
                f"vision.tower has unknown open_clip CLIPVisionCfg fields {unknown}; valid: {sorted(known)}"
            )
        if "image_size" in self.tower or "output_tokens" in self.tower:
            raise ValueError("vision.tower must not set image_size/output_tokens; use vision.image_size")

    @classmethod
    def from_hf(cls, name_or_path: str) -> VisionEncoderConfig:
        """The architecture (and normalisation) of a Hugging Face vision model (ViT, CLIP vision, Swin, BEiT, ViT-MAE,
        ConvNeXt), without its weights."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name_or_path)
        config = getattr(config, "vision_config", config)  # a full CLIP model: its vision half
        tower = config.to_dict()
        tower.pop("_name_or_path", None)  # a path of this machine, not architecture
        if tower.get("model_type") not in HF_VISION_TYPES:
            raise ValueError(f"{name_or_path}: a {tower.get('model_type')!r} model; hf: reads {HF_VISION_TYPES}")
        mean, std = _hf_normalisation(name_or_path, tower["model_type"])
        return cls(
            backend="hf",
            tower=tower,
            image_size=tower["image_size"],
            image_mean=mean,
            image_std=std,
            source=name_or_path,
        )

    @classmethod
    def from_open_clip(cls, model_name: str, **kwargs) -> VisionEncoderConfig:
        """The vision tower architecture of an open_clip model (e.g. `"ViT-B-32"`, `"RN50"`), with its activation
        (the model config's `quick_gelu`) and its pretrained weights' pixel normalisation (`_open_clip_normalisation`).
        """
        import open_clip

        model_config = open_clip.get_model_config(model_name)
        if model_config is None:
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
        tower = dict(model_config["vision_cfg"])
        image_size = tower.pop("image_size", 224)
        mean, std = _open_clip_normalisation(model_name)
        settings = {"image_mean": mean, "image_std": std, "quick_gelu": model_config.get("quick_gelu", False)}
        return cls(
            tower=tower,
            embed_dim=model_config["embed_dim"],
            image_size=image_size,
            source=model_name,
            **(settings | kwargs),
        )


def _hf_normalisation(name_or_path: str, model_type: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The pixel mean and std of the checkpoint's own image processor (`preprocessor_config.json`: a ViT trained on
    ImageNet statistics, DINO's, says so there); by model type (`HF_NORMALISATION`) where it has none."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        processor, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path)
    except (OSError, ValueError):  # no preprocessor_config.json (or offline and not cached)
        processor = {}
    mean, std = processor.get("image_mean"), processor.get("image_std")
    if isinstance(mean, (int, float)) and isinstance(std, (int, float)):  # one value for every channel
        mean, std = (mean,) * 3, (std,) * 3
    if isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(mean) == len(std) == 3:
        return tuple(map(float, mean)), tuple(map(float, std))
    return HF_NORMALISATION.get(model_type, (IMAGENET_MEAN, IMAGENET_STD))


def _open_clip_normalisation(model_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The pixel mean and std that every pretrained tag of the open_clip model `model_name` shares (SigLIP's 0.5,
    MobileCLIP's 0 and 1, ...), read offline from open_clip's pretrained table; OpenAI's where the name has no
    pretrained weights or its tags disagree (`ViT-L-14`: OpenAI's for some, 0.5 for DFN's)."""
    import open_clip

    found = set()
    for tag in open_clip.list_pretrained_tags_by_model(model_name):
        pretrained = open_clip.get_pretrained_cfg(model_name, tag)
        found.add((tuple(pretrained.get("mean", OPENAI_MEAN)), tuple(pretrained.get("std", OPENAI_STD))))
    return found.pop() if len(found) == 1 else (OPENAI_MEAN, OPENAI_STD)


class VisionEncoder(nn.Module):
    """A vision tower returning the pooled embedding and the patch (or feature-map cell) tokens.

    `VisionEncoder(config)` builds the class of `config.backend`: `OpenClipVisionEncoder`, `TorchvisionEncoder` or
    `HFVisionEncoder`. Each builds its `tower` (`_build`), runs it on normalised pixels (`encode`) and fills it from
    pretrained weights (`load_backbone`); what they share (pixel normalisation, which blocks train, per-block states
    for side adapters, frozen BatchNorm statistics) lives here.
    """

    def __new__(cls, config: VisionEncoderConfig | None = None, *args, **kwargs):
        if cls is VisionEncoder and config is not None:  # (copies and unpickling pass no config: cls is concrete)
            cls = VISION_ENCODERS[config.backend]
        return super().__new__(cls)

    def __init__(self, config: VisionEncoderConfig):
        super().__init__()
        self.config = config
        self.tower: nn.Module
        self.family: str
        self.hidden_size: int  # the pooled vector's width
        self.token_size: int  # a token's width
        self._build(config)
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(config.image_std).view(1, 3, 1, 1) * 255, persistent=False)

    def _build(self, config: VisionEncoderConfig) -> None:
        """Sets `tower`, `family`, `hidden_size` and `token_size`."""
        raise NotImplementedError

    def encode(self, pixels: torch.Tensor) -> EncoderOutput:
        """The tower's output for normalised pixels `(N, 3, H, W)`."""
        raise NotImplementedError

    def load_backbone(self, path: str) -> None:
        """Fills the tower from pretrained weights at `path`."""
        raise NotImplementedError

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.modules():  # a frozen BatchNorm keeps its pretrained statistics while the rest trains
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()
            ):
                module.eval()
        return self

    def batch_statistics(self) -> bool:
        """Whether a BatchNorm of the tower normalises by the batch (one that trains, in training mode)."""
        return any(
            isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training for module in self.modules()
        )

    def set_finetuning(self, regime: str, top_k: int = 1) -> None:
        """`frozen`, `full`, or `top_k`: only the top `top_k` blocks (and the pooling/projection after them) train."""
        set_finetuning(self.tower, self.family, regime, top_k)

    def first_cached_block(self) -> int:
        """The block a training step can start from, its inputs computed once (`block_inputs`, then
        `encode_from`): the lowest block that trains when nothing below it does. 0, the whole tower runs: nothing to
        gain, or a tower whose blocks cannot run on their own (torchvision CNNs, open_clip ViTs and Hugging Face ViT
        and CLIP vision towers can)."""
        return 0

    def gradient_checkpointing_enable(self) -> None:
        """Recomputes each block's activations in the backward pass (transformer towers override this; CNNs are
        left as they are, with a warning)."""
        logger.warning("gradient checkpointing is not supported by the %s vision tower; ignored", self.family)

    def encode_layers(self, pixel_values: torch.Tensor) -> tuple[EncoderOutput, list[torch.Tensor]]:
        """`forward`'s output and, from the same pass, the pooled output of each block of the tower's stack
        (`BLOCK_LAYOUT`), `(N, W_k)` each: the mean over its tokens or feature-map cells."""
        pooled = []

        def keep(module, args, output):
            states = output[0] if isinstance(output, (tuple, list)) else output
            pooled.append(
                states.mean((2, 3)) if states.dim() == 4 else states.mean(1) if states.dim() == 3 else states
            )

        hooks = [
            block.register_forward_hook(keep) for block in encoder_blocks(self.tower, self.family, "layer states")
        ]
        try:
            output = self(pixel_values)
        finally:
            for hook in hooks:
                hook.remove()
        return output, pooled

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:
        return self.encode(self._normalised(pixel_values))

    def _normalised(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return (pixel_values.to(self.mean.dtype) - self.mean) / self.std  # uint8 (N, 3, H, W) -> normalised


def _all_tokens(pooled: torch.Tensor, tokens: torch.Tensor) -> EncoderOutput:
    """An output whose every token is real (no padding in images)."""
    return EncoderOutput(pooled, tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))


class OpenClipVisionEncoder(VisionEncoder):
    """An open_clip vision tower (a ViT, a ResNet, or a timm model), built from its `CLIPVisionCfg`."""

    def _build(self, config: VisionEncoderConfig) -> None:
        from open_clip.model import CLIPVisionCfg, _build_vision_tower
        from open_clip.transformer import VisionTransformer

        tower_config = CLIPVisionCfg(**config.tower, image_size=config.image_size, output_tokens=True)
        self.tower = _build_vision_tower(config.embed_dim, tower_config, quick_gelu=config.quick_gelu)
        is_vit = isinstance(self.tower, VisionTransformer)
        self.family = "open_clip_vit" if is_vit else f"open_clip_{type(self.tower).__name__}"
        self.hidden_size = config.embed_dim
        self.token_size = tower_config.width if is_vit else config.embed_dim

    def encode(self, pixels: torch.Tensor) -> EncoderOutput:
        output = self.tower(pixels)
        if isinstance(output, tuple):  # ViT towers: pooled (N, E) and patch tokens (N, P, W)
            return _all_tokens(*output)
        return _all_tokens(output, output[:, None])  # ResNet and timm towers: the pooled vector is their one token

    def gradient_checkpointing_enable(self) -> None:
        if self.family == "open_clip_vit":
            self.tower.set_grad_checkpointing(True)
        else:
            super().gradient_checkpointing_enable()

    def first_cached_block(self) -> int:
        """ViT towers whose embedding and pooling steps open_clip names (`_embeds`, `_pool`) run from a block."""
        if self.family != "open_clip_vit" or not all(hasattr(self.tower, f) for f in ("_embeds", "_pool")):
            return 0
        return first_trainable_block(self.tower, self.family)

    def block_inputs(self, pixel_values: torch.Tensor, start: int) -> BlockInputs:
        """The token states entering block `start`, to `encode_from`."""
        return BlockInputs.entering(start, self._blocks(self.tower._embeds(self._normalised(pixel_values)), 0, start))

    def encode_from(self, inputs: BlockInputs) -> EncoderOutput:
        """`forward`'s output from the token states entering block `inputs.start`: only the blocks from there run."""
        pooled, tokens = self.tower._pool(self._blocks(inputs.states, inputs.block, None))
        return _all_tokens(pooled if self.tower.proj is None else pooled @ self.tower.proj, tokens)

    def _blocks(self, x: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
        """The tower's blocks `start` to `stop` on token states `(N, L, W)`, as its transformer runs them."""
        from torch.utils.checkpoint import checkpoint

        transformer = self.tower.transformer
        x = x if transformer.batch_first else x.transpose(0, 1)
        for block in transformer.resblocks[start:stop]:
            recompute = transformer.grad_checkpointing and torch.is_grad_enabled()
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x if transformer.batch_first else x.transpose(0, 1)

    def load_backbone(self, path: str) -> None:
        """From an open_clip checkpoint: the full model (`visual.*` keys) or the tower alone. A ViT's position
        embeddings saved for another image size are interpolated to this tower's grid, as open_clip does for
        `force_image_size`."""
        from types import SimpleNamespace

        from open_clip.model import resize_pos_embed

        state = _read_weights(path)
        if "positional_embedding" in state and hasattr(self.tower, "grid_size"):
            full = {"visual.positional_embedding": state["positional_embedding"]}
            resize_pos_embed(full, SimpleNamespace(visual=self.tower))
            state["positional_embedding"] = full["visual.positional_embedding"]
        self.tower.load_state_dict(state, strict=True)


class TorchvisionEncoder(VisionEncoder):
    """A torchvision CNN's convolutional trunk (ResNet-18..152, MobileNetV2, ...): the cells of its last feature map
    are the tokens, their mean the pooled vector."""

    def _build(self, config: VisionEncoderConfig) -> None:
        import torchvision

        self.tower = torchvision.models.get_model(config.tower["arch"], weights=None)
        if config.tower["arch"] in RESNETS:
            self.tower.fc = nn.Identity()  # only the convolutional trunk is used
        else:
            self.tower.classifier = nn.Identity()
        self.family = f"torchvision_{config.tower['arch']}"
        self.tower.eval()  # a one-image probe of the trunk's width (BatchNorm refuses it in training mode)
        with torch.no_grad():
            channels = self._feature_map(torch.zeros(1, 3, 32, 32)).shape[1]
        self.tower.train()
        self.hidden_size = self.token_size = channels

    def _feature_map(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The feature map `(N, C, h, w)` after the blocks `start` to `stop` of the stack (`encoder_blocks`: the
        CNN's `features`, a ResNet's stages), from normalised pixels (`start` 0, a ResNet's stem first) or from the
        map entering block `start`; by default the last map."""
        tower = self.tower
        if start == 0 and self.config.tower["arch"] in RESNETS:
            x = tower.maxpool(tower.relu(tower.bn1(tower.conv1(x))))
        for block in encoder_blocks(tower, self.family)[start:stop]:
            x = block(x)
        return x

    def encode(self, pixels: torch.Tensor) -> EncoderOutput:
        return self._output(self._feature_map(pixels))

    def first_cached_block(self) -> int:
        return first_trainable_block(self.tower, self.family)

    def block_inputs(self, pixel_values: torch.Tensor, start: int) -> BlockInputs:
        """The feature maps entering block `start`, to `encode_from`."""
        return BlockInputs.entering(start, self._feature_map(self._normalised(pixel_values), stop=start))

    def encode_from(self, inputs: BlockInputs) -> EncoderOutput:
        """`forward`'s output from the feature maps entering block `inputs.start`: only the blocks from there run."""
        return self._output(self._feature_map(inputs.states, start=inputs.block))

    @staticmethod
    def _output(feature_map: torch.Tensor) -> EncoderOutput:
        tokens = feature_map.flatten(2).transpose(1, 2)  # (N, C, h, w) -> (N, h*w, C)
        return _all_tokens(tokens.mean(1), tokens)

    def load_backbone(self, path: str) -> None:
        """From a torchvision classifier's state dict (its classifier head is dropped)."""
        head = "fc." if self.config.tower["arch"] in RESNETS else "classifier."
        state = {k: v for k, v in _read_weights(path).items() if not k.startswith(head)}
        self.tower.load_state_dict(state, strict=True)


class HFVisionEncoder(VisionEncoder):
    """A Hugging Face vision model (ViT, CLIP, Swin, BEiT, ViT-MAE, ConvNeXt) from its config's settings."""

    def _build(self, config: VisionEncoderConfig) -> None:
        from transformers import AutoConfig, AutoModel

        settings = dict(config.tower)
        if settings["model_type"] == "vit_mae":
            settings["mask_ratio"] = 0.0  # an encoder of every patch, not MAE's pretraining task
        hf_config = AutoConfig.for_model(settings.pop("model_type"), **settings)
        extra = {"add_pooling_layer": False} if hf_config.model_type == "vit" else {}
        self.tower = AutoModel.from_config(hf_config, **extra)
        self.family = f"hf_{hf_config.model_type}"
        width = getattr(hf_config, "hidden_size", None) or hf_config.hidden_sizes[-1]  # ConvNeXt: per stage
        self.hidden_size = self.token_size = width

    def encode(self, pixels: torch.Tensor) -> EncoderOutput:
        """Tokens and pooled vector by family: ViT and CLIP read out their [CLS] (CLIP after its post-layernorm),
        Swin, BEiT and ConvNeXt their own pooler (the mean of the tokens), ViT-MAE the mean of its patches (its
        [CLS] is not trained to summarise); ConvNeXt's feature map cells are its tokens."""
        output = self._run(pixels)
        tokens = output.last_hidden_state  # (N, L, H); ViT-MAE: (N, 1 + P, H); ConvNeXt: (N, C, h, w)
        if self.family == "hf_vit_mae":
            return _all_tokens(tokens[:, 1:].mean(1), tokens)
        if tokens.dim() == 4:
            tokens = tokens.flatten(2).transpose(1, 2)
        pooled = getattr(output, "pooler_output", None)
        return _all_tokens(tokens[:, 0] if pooled is None else pooled, tokens)

    def _run(self, pixels: torch.Tensor, **kwargs):
        """The tower on normalised pixels; ViT-MAE with ascending noise: its shuffle keeps every patch in place."""
        if self.family == "hf_vit_mae":
            patches = self.tower.embeddings.patch_embeddings.num_patches
            kwargs["noise"] = torch.arange(patches, device=pixels.device, dtype=pixels.dtype).expand(len(pixels), -1)
        return self.tower(pixel_values=pixels, **kwargs)

    def gradient_checkpointing_enable(self) -> None:
        enable_activation_checkpointing(self.tower)

    def first_cached_block(self) -> int:
        """Hugging Face towers run from a block (`HF_FROM_BLOCK`), BEiT's from transformers 5 on (its blocks took
        their position bias otherwise before)."""
        if self.family not in HF_FROM_BLOCK or (self.family == "hf_beit" and not hasattr(self.tower, "layers")):
            return 0
        return first_trainable_block(self.tower, self.family)

    def block_inputs(self, pixel_values: torch.Tensor, start: int) -> BlockInputs:
        """The token states (ConvNeXt: feature maps) entering block `start`, the output of the block below it, to
        `encode_from`."""
        pixels = self._normalised(pixel_values)
        if self.family == "hf_swin":  # its hidden states come out as feature maps: run its stages here
            states, _ = self.tower.embeddings(pixels)
            blocks, arguments = encoder_blocks(self.tower, self.family), self._stack_arguments(states)
            for block, (args, kwargs) in zip(blocks[:start], arguments[:start], strict=True):
                states = block(states, *args, **kwargs)[0]
            return BlockInputs.entering(start, states)
        output = self._run(pixels, output_hidden_states=True)
        return BlockInputs.entering(start, output.hidden_states[start])

    def encode_from(self, inputs: BlockInputs) -> EncoderOutput:
        """`forward`'s output from the token states entering block `inputs.start`: the blocks from there run, then
        what the model does after its stack (ViT: the final layer norm, [CLS] read out; ViT-MAE: the final layer
        norm, the mean of the patches; BEiT and Swin: their layer norm and pooler; CLIP: [CLS] through its
        post-layernorm; ConvNeXt: the layer norm of the mean cell)."""
        states, start = inputs.states, inputs.block
        blocks, arguments = encoder_blocks(self.tower, self.family), self._stack_arguments(inputs.states)
        for block, (args, kwargs) in zip(blocks[start:], arguments[start:], strict=True):
            states = block(states, *args, **kwargs)
            states = states[0] if isinstance(states, tuple) else states
        after = next(
            part for name in BLOCK_LAYOUT[self.family][1] if (part := find_part(self.tower, name)) is not None
        )
        if self.family == "hf_convnext":
            return _all_tokens(after(states.mean((-2, -1))), states.flatten(2).transpose(1, 2))
        if self.family == "hf_beit":
            tokens = after(states)
            return _all_tokens(tokens[:, 0] if self.tower.pooler is None else self.tower.pooler(tokens), tokens)
        if self.family == "hf_swin":
            tokens = after(states)
            pooler = self.tower.pooler
            return _all_tokens(tokens[:, 0] if pooler is None else pooler(tokens.transpose(1, 2)).flatten(1), tokens)
        if self.family in ("hf_vit", "hf_vit_mae"):
            tokens = after(states)
            return _all_tokens(tokens[:, 1:].mean(1) if self.family == "hf_vit_mae" else tokens[:, 0], tokens)
        return _all_tokens(after(states[:, 0]), states)

    def _stack_arguments(self, states: torch.Tensor) -> list[tuple[tuple, dict]]:
        """What each block of the stack takes besides the states (`states`: those entering any of them), once per
        pass, as the tower's own forward passes it: no attention mask (every patch is real); BEiT's blocks its
        shared position bias and the image's resolution; Swin's stages the patch grid entering each (halved, rounded
        up, after each stage that downsamples)."""
        blocks = encoder_blocks(self.tower, self.family)
        if self.family == "hf_convnext":
            return [((), {})] * len(blocks)
        if self.family == "hf_swin":
            arguments, (height, width) = [], self.tower.embeddings.patch_grid
            for stage in blocks:
                arguments.append((((height, width),), {}))
                if stage.downsample is not None:
                    height, width = (height + 1) // 2, (width + 1) // 2
            return arguments
        if self.family != "hf_beit":
            return [((None,), {})] * len(blocks)
        resolution = (self.config.image_size, self.config.image_size)
        bias = None
        if self.tower.shared_position_bias is not None:
            window = tuple(side // self.tower.config.patch_size for side in resolution)
            bias = self.tower.shared_position_bias(window, interpolate_pos_encoding=False, dim_size=states.shape[1])
        return [((), {"attention_mask": bias, "resolution": resolution})] * len(blocks)

    def load_backbone(self, path: str) -> None:
        """From a Hugging Face model name or folder."""
        extra = {"add_pooling_layer": False} if self.family == "hf_vit" else {}
        extra |= {"mask_ratio": 0.0} if self.family == "hf_vit_mae" else {}
        pretrained = quiet_from_pretrained(type(self.tower), path, **extra)
        self.tower.load_state_dict(pretrained.state_dict(), strict=True)


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    """A local weights file (`.safetensors`, or a torch file read without code): the tower's part of a full open_clip
    model (`visual.*`), or the whole state dict."""
    from safetensors.torch import load_file

    state = load_file(path) if path.endswith(".safetensors") else torch.load(path, weights_only=True)
    state = state.get("state_dict", state)
    if any(k.startswith("visual.") for k in state):
        state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    return state


VISION_ENCODERS = {"open_clip": OpenClipVisionEncoder, "torchvision": TorchvisionEncoder, "hf": HFVisionEncoder}
