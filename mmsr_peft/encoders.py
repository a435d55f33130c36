"""Text and vision encoders: built from their architecture config, optionally filled from pretrained weights."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import ConfigMixin

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")
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
LENGTH_BUCKET = 64  # texts per backbone call when a batch is encoded in groups of similar length
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TORCHVISION_CNNS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny")
TORCHVISION_CNNS += RESNETS
FINETUNE_REGIMES = ("frozen", "top_k", "full")
# Where each encoder family keeps its stack of blocks, and the modules/parameters after the stack that train
# with the top blocks (`top_k` freezes the *lower* blocks and the embeddings).
BLOCK_LAYOUT = {
    "bert": ("encoder.layer", ()),
    "roberta": ("encoder.layer", ()),
    "xlm-roberta": ("encoder.layer", ()),
    "distilbert": ("transformer.layer", ()),
    "electra": ("encoder.layer", ()),
    "xlnet": ("layer", ()),
    "clip_text_model": (
        ("encoder.layers", "text_model.encoder.layers"),
        ("final_layer_norm", "text_model.final_layer_norm"),
    ),
    "open_clip_vit": ("transformer.resblocks", ("ln_post", "proj", "attn_pool")),
    # transformers 5 dropped the `encoder.layer` / `vision_model.` levels of 4.x: the first path that exists is used
    "hf_vit": (("layers", "encoder.layer"), ("layernorm",)),
    "hf_clip_vision_model": (
        ("encoder.layers", "vision_model.encoder.layers"),
        ("post_layernorm", "vision_model.post_layernorm"),
    ),
    "hf_swin": ("encoder.layers", ("layernorm",)),
    "hf_beit": (("layers", "encoder.layer"), ("layernorm", "pooler")),
    "hf_vit_mae": (("layers", "encoder.layer"), ("layernorm",)),
    "hf_convnext": ("encoder.stages", ("layernorm",)),
    **{f"torchvision_{arch}": ("features", ()) for arch in TORCHVISION_CNNS if arch not in RESNETS},
    # a ResNet's stages are four modules, not one list: "+" joins them into the stack of blocks
    **{f"torchvision_{arch}": ("layer1+layer2+layer3+layer4", ()) for arch in RESNETS},
}
# Where the [CLS]-like token of a text encoder is: first (BERT and most), or last (XLNet appends its <cls>).
CLS_LAST = ("xlnet",)
# Pixel normalisation of Hugging Face vision models by type (their image processors'); ImageNet's otherwise.
HF_NORMALISATION = {"clip_vision_model": (OPENAI_MEAN, OPENAI_STD), "vit": ((0.5,) * 3, (0.5,) * 3)}
HF_NORMALISATION["beit"] = HF_NORMALISATION["vit"]


def set_finetuning(module: nn.Module, family: str, regime: str, top_k: int = 1) -> None:
    """Marks which parameters of an encoder train: none (`frozen`), all (`full`) or the top `top_k` blocks
    plus what follows them (`top_k`)."""
    if regime not in FINETUNE_REGIMES:
        raise ValueError(f"fine-tuning regime must be one of {FINETUNE_REGIMES}, got {regime!r}")
    module.requires_grad_(regime == "full")
    if regime != "top_k":
        return
    blocks = encoder_blocks(module, family, "top_k fine-tuning")
    if not 1 <= top_k <= len(blocks):
        raise ValueError(f"top_k must be between 1 and the {len(blocks)} blocks of {family!r}, got {top_k}")
    for block in blocks[len(blocks) - top_k :]:
        block.requires_grad_(True)
    for name in BLOCK_LAYOUT[family][1]:
        part = getattr(module, name, None) if "." not in name else _get_submodule(module, name)
        if part is not None:
            part.requires_grad_(True)


def encoder_blocks(module: nn.Module, family: str, purpose: str = "this") -> list[nn.Module]:
    """The stack of blocks of an encoder of `family` (`BLOCK_LAYOUT`), bottom first."""
    if family not in BLOCK_LAYOUT:
        raise ValueError(f"{purpose} does not know the blocks of {family!r}; known: {sorted(BLOCK_LAYOUT)}")
    blocks_path = BLOCK_LAYOUT[family][0]
    candidates = (blocks_path,) if isinstance(blocks_path, str) else blocks_path
    found = next(p for p in candidates if all(_has_submodule(module, part) for part in p.split("+")))
    return (
        [module.get_submodule(part) for part in found.split("+")]
        if "+" in found
        else list(module.get_submodule(found))
    )


def _get_submodule(module: nn.Module, path: str):
    return module.get_submodule(path) if _has_submodule(module, path) else None


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


@dataclass
class EncoderOutput:
    """What an encoder gives the fusion module.

    Attributes:
        pooled (`torch.FloatTensor` of shape `(N, H)`): one vector per item.
        tokens (`torch.FloatTensor` of shape `(N, L, W)`): token / patch states, for token-level fusion.
        mask (`torch.BoolTensor` of shape `(N, L)`): True on real tokens.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor

    def select(self, index: torch.Tensor) -> EncoderOutput:
        return EncoderOutput(self.pooled[index], self.tokens[index], self.mask[index])

    def to(self, device) -> EncoderOutput:
        return EncoderOutput(self.pooled.to(device), self.tokens.to(device), self.mask.to(device))

    @classmethod
    def cat(cls, outputs: list[EncoderOutput]) -> EncoderOutput:
        return cls(*(torch.cat([getattr(o, f) for o in outputs]) for f in ("pooled", "tokens", "mask")))


@dataclass
class LayerStates:
    """An encoder's pooled state after each of its layers, side by side, for side adapters.

    Attributes:
        states (`torch.FloatTensor` of shape `(N, W_1 + ... + W_K)`): layer k's pooled state in columns
            `W_1 + ... + W_{k-1}` onwards (the widths are the encoder's `layer_widths`).
    """

    states: torch.Tensor

    def select(self, index: torch.Tensor) -> LayerStates:
        return LayerStates(self.states[index])

    def to(self, device) -> LayerStates:
        return LayerStates(self.states.to(device))

    @classmethod
    def cat(cls, outputs: list[LayerStates]) -> LayerStates:
        return cls(torch.cat([o.states for o in outputs]))

    @classmethod
    def from_layers(cls, layers: list[torch.Tensor]) -> LayerStates:
        """The per-layer states as an encoder's `encode_layers` gives them, `(N, W_k)` each, side by side."""
        return cls(torch.cat(layers, dim=-1))


def _checkpointing_enable(model) -> None:
    """Activation checkpointing of a transformers model (renamed in transformers 5; the old name warns)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def quiet_from_pretrained(model_class, name_or_path: str, **kwargs):
    """`model_class.from_pretrained` without transformers' load report, which lists the pooler we leave out as
    unexpected keys (the strict `load_state_dict` that follows is the check that matters), and without its
    progress bar over a hundred tensors."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        return model_class.from_pretrained(name_or_path, **kwargs)
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _no_pooler(hf_config) -> dict:
    """`add_pooling_layer=False` for the models that have that option (BERT-like): their pooler is not used."""
    from transformers import AutoModel

    model_class = AutoModel._model_mapping[type(hf_config)]
    return (
        {"add_pooling_layer": False}
        if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
        else {}
    )


@dataclass
class TextEncoderConfig(ConfigMixin):
    """Architecture of the text encoder: any Hugging Face `AutoModel`.

    Args:
        backbone (`dict`): the Hugging Face model config as a dict (`model_type` + architecture fields).
        pooling (`str`): `"mean"` over real tokens or `"cls"` (the classification token: the first one, XLNet's last).
        max_length (`int`): maximum tokens per item text.
        source (`str`, *optional*): the model name/path the architecture (and tokenizer) came from; informational.
    """

    backbone: dict = field(default_factory=dict)  # transformers config dict, e.g. {"model_type": "bert", ...}
    pooling: str = "mean"  # "mean" over real tokens or "cls"
    max_length: int = 32  # tokens per item text
    source: str | None = None  # name/path the architecture came from (provenance only)

    def __post_init__(self):
        self.backbone = json.loads(json.dumps(self.backbone))  # the form it has after config.json (str keys)
        # where the weights were read from: a path of the machine, not architecture
        self.backbone.pop("_name_or_path", None)
        if "model_type" not in self.backbone:
            raise ValueError(
                f"text.backbone must be a transformers config dict with 'model_type', got {self.backbone}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"text.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.max_length < 2:
            raise ValueError(f"text.max_length must be >= 2, got {self.max_length}")

    @classmethod
    def from_pretrained_backbone(cls, name_or_path: str, **kwargs) -> TextEncoderConfig:
        """The architecture of a Hugging Face model (name or local folder), without loading its weights."""
        from transformers import AutoConfig

        backbone = AutoConfig.from_pretrained(name_or_path).to_dict()
        return cls(backbone=backbone, source=name_or_path, **kwargs)


class TextEncoder(nn.Module):
    """A Hugging Face encoder with `mean` or `cls` pooling."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        settings = dict(config.backbone)
        hf_config = AutoConfig.for_model(settings.pop("model_type"), **settings)
        self.config = config
        self.backbone = AutoModel.from_config(hf_config, **_no_pooler(hf_config))
        self.hidden_size = hf_config.hidden_size
        self.length_bucket = LENGTH_BUCKET  # texts encoded together, by length (0: the whole batch at once)

    def set_finetuning(self, regime: str, top_k: int = 1) -> None:
        """`frozen`, `full`, or `top_k`: only the top `top_k` transformer layers train."""
        set_finetuning(self.backbone, self.config.backbone["model_type"], regime, top_k)

    def gradient_checkpointing_enable(self) -> None:
        """Recomputes each transformer layer's activations in the backward pass instead of storing them."""
        _checkpointing_enable(self.backbone)

    def load_backbone(self, name_or_path: str) -> None:
        """Fills the backbone with the weights of a pretrained model (every key must match)."""
        from transformers import AutoModel

        pretrained = quiet_from_pretrained(AutoModel, name_or_path, **_no_pooler(self.backbone.config))
        self.backbone.load_state_dict(pretrained.state_dict(), strict=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncoderOutput:
        states = self._run_backbone(input_ids, attention_mask)[-1]  # (N, L, H)
        mask = attention_mask.bool()
        return EncoderOutput(self._pool(states, mask), states, mask)

    def encode_layers(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[EncoderOutput, list[torch.Tensor]]:
        """`forward`'s output and, from the same pass, the pooled state after the embeddings and after each layer
        (pooled like the output: mean over real tokens, or the classification token), `(N, H)` each."""
        layers = self._run_backbone(input_ids, attention_mask, all_layers=True)  # (K, N, L, H)
        mask = attention_mask.bool()
        pooled = [self._pool(states, mask) for states in layers]
        return EncoderOutput(pooled[-1], layers[-1], mask), pooled

    def _pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls" and self.config.backbone["model_type"] in CLS_LAST:
            columns = torch.arange(mask.shape[1], device=mask.device)
            # the last real token, whatever side the tokenizer pads
            last = torch.where(mask, columns, -1).amax(1).clamp(min=0)
            return states[torch.arange(len(states), device=states.device), last]
        if self.config.pooling == "cls":
            return states[:, 0]
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def _run_backbone(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, all_layers: bool = False):
        """The backbone's hidden states, `(K, N, L, H)`: the last layer's alone (K = 1), or with `all_layers` the
        embeddings' and every layer's. Right-padded texts are encoded in groups of `length_bucket` of similar
        length, each cut after its longest text, so a batch of mostly short texts does not pay for its longest one
        in every row; the padding positions come back as zeros (they are masked wherever states are read)."""

        def run(ids, mask):
            out = self.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=all_layers)
            return torch.stack(out.hidden_states) if all_layers else out.last_hidden_state[None]

        lengths = attention_mask.sum(1)
        columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        right_padded = bool((attention_mask.bool() == (columns < lengths[:, None])).all())
        if not self.length_bucket or len(input_ids) <= self.length_bucket or not right_padded:
            return run(input_ids, attention_mask)
        states = None
        for group in torch.argsort(lengths).split(self.length_bucket):
            length = max(1, int(lengths[group].max()))
            hidden = run(input_ids[group, :length], attention_mask[group, :length])  # (K, G, length, H)
            if states is None:
                states = hidden.new_zeros(len(hidden), len(input_ids), attention_mask.shape[1], hidden.shape[-1])
            layers = torch.arange(len(hidden), device=hidden.device)[:, None, None]
            states = states.index_put((layers, group[None, :, None], columns[None, None, :length]), hidden)
        return states


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
    """

    backend: str = "open_clip"  # "open_clip" | "torchvision" | "hf"
    tower: dict = field(default_factory=lambda: {"layers": 2, "width": 64, "head_width": 32, "patch_size": 8})
    embed_dim: int = 64  # pooled output size of an open_clip tower
    image_size: int = 64  # square input side in pixels
    image_mean: tuple[float, float, float] = OPENAI_MEAN  # per-channel mean on the 0-1 scale
    image_std: tuple[float, float, float] = OPENAI_STD  # per-channel std on the 0-1 scale
    source: str | None = None  # open_clip model name the tower came from (provenance only)

    def __post_init__(self):
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError(f"vision.image_mean/image_std need 3 values, got {self.image_mean}, {self.image_std}")
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
        mean, std = HF_NORMALISATION.get(tower["model_type"], (IMAGENET_MEAN, IMAGENET_STD))
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
        """The vision tower architecture of an open_clip model (e.g. `"ViT-B-32"`, `"RN50"`)."""
        import open_clip

        model_config = open_clip.get_model_config(model_name)
        if model_config is None:
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
        tower = dict(model_config["vision_cfg"])
        image_size = tower.pop("image_size", 224)
        return cls(
            tower=tower, embed_dim=model_config["embed_dim"], image_size=image_size, source=model_name, **kwargs
        )


class VisionEncoder(nn.Module):
    """A vision tower returning the pooled embedding and the patch (or feature-map cell) tokens."""

    def __init__(self, config: VisionEncoderConfig):
        super().__init__()
        self.config = config
        if config.backend == "torchvision":
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
        elif config.backend == "hf":
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
        else:
            from open_clip.model import CLIPVisionCfg, _build_vision_tower
            from open_clip.transformer import VisionTransformer

            tower_config = CLIPVisionCfg(**config.tower, image_size=config.image_size, output_tokens=True)
            self.tower = _build_vision_tower(config.embed_dim, tower_config)
            is_vit = isinstance(self.tower, VisionTransformer)
            self.family = "open_clip_vit" if is_vit else f"open_clip_{type(self.tower).__name__}"
            self.hidden_size = config.embed_dim
            self.token_size = tower_config.width if is_vit else config.embed_dim
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(config.image_std).view(1, 3, 1, 1) * 255, persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.modules():  # a frozen BatchNorm keeps its pretrained statistics while the rest trains
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()
            ):
                module.eval()
        return self

    def set_finetuning(self, regime: str, top_k: int = 1) -> None:
        """`frozen`, `full`, or `top_k`: only the top `top_k` blocks (and the pooling/projection after them) train."""
        set_finetuning(self.tower, self.family, regime, top_k)

    def gradient_checkpointing_enable(self) -> None:
        """Recomputes each block's activations in the backward pass (transformer towers; CNNs are left as they
        are, with a warning)."""
        if self.config.backend == "hf":
            _checkpointing_enable(self.tower)
        elif hasattr(self.tower, "set_grad_checkpointing") and self.family == "open_clip_vit":
            self.tower.set_grad_checkpointing(True)
        else:
            logger.warning("gradient checkpointing is not supported by the %s vision tower; ignored", self.family)

    def load_backbone(self, path: str) -> None:
        """Fills the tower from a local weights file: an open_clip checkpoint (full model with `visual.*` keys, or
        the tower alone) or a torchvision classifier state dict (its classifier head is dropped); for the hf
        backend, from a Hugging Face model name or folder."""
        from safetensors.torch import load_file

        if self.config.backend == "hf":
            extra = {"add_pooling_layer": False} if self.family == "hf_vit" else {}
            extra |= {"mask_ratio": 0.0} if self.family == "hf_vit_mae" else {}
            pretrained = quiet_from_pretrained(type(self.tower), path, **extra)
            self.tower.load_state_dict(pretrained.state_dict(), strict=True)
            return
        state = load_file(path) if path.endswith(".safetensors") else torch.load(path, weights_only=True)
        state = state.get("state_dict", state)
        if any(k.startswith("visual.") for k in state):
            state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
        if self.config.backend == "torchvision":
            head = "fc." if self.config.tower["arch"] in RESNETS else "classifier."
            state = {k: v for k, v in state.items() if not k.startswith(head)}
        self.tower.load_state_dict(state, strict=True)

    def _feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """A torchvision CNN's last feature map, `(N, C, h, w)`: its `features`, or a ResNet's stem and stages."""
        tower = self.tower
        if self.config.tower["arch"] not in RESNETS:
            return tower.features(pixels)
        x = tower.maxpool(tower.relu(tower.bn1(tower.conv1(pixels))))
        return tower.layer4(tower.layer3(tower.layer2(tower.layer1(x))))

    def _hf_forward(self, pixels: torch.Tensor) -> EncoderOutput:
        """A Hugging Face tower's tokens and pooled vector, by family: ViT and CLIP read out their [CLS] (CLIP after
        its post-layernorm), Swin, BEiT and ConvNeXt their own pooler (the mean of the tokens), ViT-MAE the mean of
        its patches (its [CLS] is not trained to summarise); ConvNeXt's feature map cells are its tokens."""
        if self.family == "hf_vit_mae":  # ascending noise: MAE's shuffle keeps every patch in its own place
            patches = self.tower.embeddings.patch_embeddings.num_patches
            noise = torch.arange(patches, device=pixels.device, dtype=pixels.dtype).expand(len(pixels), patches)
            tokens = self.tower(pixel_values=pixels, noise=noise).last_hidden_state  # (N, 1 + P, H)
            pooled = tokens[:, 1:].mean(1)
        else:
            output = self.tower(pixel_values=pixels)
            tokens = output.last_hidden_state  # (N, L, H); ConvNeXt: (N, C, h, w)
            if tokens.dim() == 4:
                tokens = tokens.flatten(2).transpose(1, 2)
            pooled = getattr(output, "pooler_output", None)
            pooled = tokens[:, 0] if pooled is None else pooled
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(pooled, tokens, mask)

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
        pixels = (pixel_values.to(self.mean.dtype) - self.mean) / self.std  # uint8 (N, 3, H, W) -> normalised
        if self.config.backend == "torchvision":
            cells = self._feature_map(pixels)  # (N, C, h, w)
            tokens = cells.flatten(2).transpose(1, 2)  # (N, h*w, C)
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
            return EncoderOutput(tokens.mean(1), tokens, mask)
        if self.config.backend == "hf":
            return self._hf_forward(pixels)
        output = self.tower(pixels)
        if isinstance(output, tuple):  # ViT towers: pooled (N, E) and patch tokens (N, P, W)
            pooled, tokens = output
        else:  # ResNet and timm towers give the pooled vector only: it is their single token
            pooled, tokens = output, output[:, None]
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(pooled, tokens, mask)
