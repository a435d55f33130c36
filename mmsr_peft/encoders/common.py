"""What the text and vision encoders share: the outputs they give the fusion, which of their blocks train
(`frozen`, `top_k`, `full`), and how pretrained weights are read quietly."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TypeVar

import torch
from torch import nn

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
        part = find_part(module, name)
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


def first_trainable_block(module: nn.Module, family: str) -> int:
    """The lowest block of an encoder's stack (`encoder_blocks`) that has a trainable parameter, when nothing below
    it trains (the embeddings, the stem, the blocks under it): the states entering that block are then the same at
    every step and can be computed once (`BlockInputs`). 0 when there is nothing to gain: the encoder is frozen,
    its bottom block trains, or something outside the stack and the modules after it trains."""
    if family not in BLOCK_LAYOUT or not any(p.requires_grad for p in module.parameters()):
        return 0
    blocks = encoder_blocks(module, family)
    start = next((i for i, block in enumerate(blocks) if any(p.requires_grad for p in block.parameters())), 0)
    above = {id(p) for block in blocks[start:] for p in block.parameters()}
    for name in BLOCK_LAYOUT[family][1]:
        part = find_part(module, name)
        if isinstance(part, nn.Module):
            above |= {id(p) for p in part.parameters()}
        elif part is not None:  # a parameter (open_clip's `proj`)
            above.add(id(part))
    below_trains = any(p.requires_grad and id(p) not in above for p in module.parameters())
    return 0 if below_trains else start


def find_part(module: nn.Module, name: str) -> nn.Module | nn.Parameter | None:
    """`module`'s part called `name` (an attribute, a parameter such as open_clip's `proj`, or a dotted submodule
    path), None where it has none."""
    if "." not in name:
        return getattr(module, name, None)
    return module.get_submodule(name) if _has_submodule(module, name) else None


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


Rows = TypeVar("Rows", bound="ItemRows")


class ItemRows:
    """`select`, `to` and `cat` for a dataclass of tensors whose first dimension is the item (encoder outputs and
    what is computed once for them), so batches, devices and shards handle every kind alike."""

    def select(self: Rows, index: torch.Tensor) -> Rows:
        return type(self)(*(getattr(self, f.name)[index] for f in fields(self)))

    def spread(self: Rows, rows: torch.Tensor) -> Rows:
        """These rows put back at the True places of the bool mask `rows`, zeros (False) at the others: the
        inverse of `select(rows)`, differentiable."""

        def place(tensor: torch.Tensor) -> torch.Tensor:
            whole = tensor.new_zeros((len(rows), *tensor.shape[1:]))
            whole[rows] = tensor
            return whole

        return type(self)(*(place(getattr(self, f.name)) for f in fields(self)))

    def to(self: Rows, device) -> Rows:
        return type(self)(*(getattr(self, f.name).to(device) for f in fields(self)))

    @classmethod
    def cat(cls: type[Rows], outputs: list[Rows]) -> Rows:
        return cls(*(torch.cat([getattr(o, f.name) for o in outputs]) for f in fields(cls)))

    def compact(self: Rows) -> Rows:
        """The rows holding only their own memory: a field that is a view into a larger tensor (a [CLS] vector read
        out of every token's state) is copied, so that keeping the rows does not keep the rest alive."""
        return type(self)(*(_owned(getattr(self, f.name)) for f in fields(self)))


def _owned(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.clone() if tensor.untyped_storage().nbytes() > tensor.nbytes else tensor


@dataclass
class EncoderOutput(ItemRows):
    """What an encoder gives the fusion module.

    Attributes:
        pooled (`torch.FloatTensor` of shape `(N, H)`): one vector per item.
        tokens (`torch.FloatTensor` of shape `(N, L, W)`): token / patch states, for token-level fusion.
        mask (`torch.BoolTensor` of shape `(N, L)`): True on real tokens.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor


@dataclass
class BlockInputs(ItemRows):
    """What enters block `start` of an encoder's stack for each item, computed once by the frozen part below it
    (`first_trainable_block`), so a training step runs the encoder from that block on.

    Attributes:
        states (`torch.FloatTensor`): `(N, L, H)` token states, or `(N, C, h, w)` feature maps.
        mask (`torch.BoolTensor` of shape `(N, L)`): True on real tokens (feature maps: `(N, 1)`, all True).
        start (`torch.LongTensor` of shape `(N,)`): the block the states enter (the same for every row).
    """

    states: torch.Tensor
    mask: torch.Tensor
    start: torch.Tensor

    @classmethod
    def entering(cls, start: int, states: torch.Tensor, mask: torch.Tensor | None = None) -> BlockInputs:
        """`states` entering block `start`, for every row; without `mask`, every token is real (a feature map's
        mask is one True per row)."""
        if mask is None:
            width = states.shape[1] if states.dim() == 3 else 1
            mask = torch.ones(len(states), width, dtype=torch.bool, device=states.device)
        return cls(states, mask, torch.full((len(states),), start, dtype=torch.long, device=states.device))

    @property
    def block(self) -> int:
        return int(self.start[0])


@dataclass
class LayerStates(ItemRows):
    """An encoder's pooled state after each of its layers, side by side, for side adapters.

    Attributes:
        states (`torch.FloatTensor` of shape `(N, W_1 + ... + W_K)`): layer k's pooled state in columns
            `W_1 + ... + W_{k-1}` onwards (the widths are the encoder's `layer_widths`).
    """

    states: torch.Tensor

    @classmethod
    def from_layers(cls, layers: list[torch.Tensor]) -> LayerStates:
        """The per-layer states as an encoder's `encode_layers` gives them, `(N, W_k)` each, side by side."""
        return cls(torch.cat(layers, dim=-1))


def enable_activation_checkpointing(model) -> None:
    """Activation checkpointing of a transformers model (renamed in transformers 5; the old name warns)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def checkpoint_feed_forward(module: nn.Module) -> int:
    """Recomputes the wide half of every transformer feed-forward block inside `module` in the backward pass instead
    of storing it: Hugging Face `*Intermediate` modules (BERT-like text encoders, ViT, BEiT, ...: the expansion and
    its activation) and open_clip's `mlp` (`c_fc` + GELU, + `ln` in blocks built with `scale_fc`). That activation
    is 4x the hidden width, and under LoRA its output is what a frozen layer still stores (for the activation's
    gradient). The state-dict keys do not change. Returns how many blocks were wrapped."""
    from torch.utils.checkpoint import checkpoint

    def recomputed(forward):
        def run(hidden_states, *args, **kwargs):
            if not (torch.is_grad_enabled() and hidden_states.requires_grad):
                return forward(hidden_states, *args, **kwargs)
            return checkpoint(forward, hidden_states, *args, use_reentrant=False, **kwargs)

        return run

    wrapped = 0
    for name, block in module.named_modules():
        if getattr(block, "_feed_forward_checkpointed", False):
            continue
        if type(block).__name__.endswith("Intermediate"):
            block.forward = recomputed(block.forward)
        elif name.endswith("mlp") and isinstance(block, nn.Sequential) and hasattr(block, "c_fc"):
            expand = recomputed(lambda x, block=block: _open_clip_expansion(block, x))
            block.forward = lambda x, block=block, expand=expand: block.c_proj(expand(x))
        else:
            continue
        block._feed_forward_checkpointed = True
        wrapped += 1
    return wrapped


def _open_clip_expansion(mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """What open_clip's `mlp` runs before `c_proj`: `c_fc`, the activation and, where the block was built with
    `scale_fc`, the LayerNorm `ln` of the wide states. The children are read per call: LoRA may replace `c_fc`."""
    x = mlp.gelu(mlp.c_fc(x))  # (..., 4W)
    return mlp.ln(x) if hasattr(mlp, "ln") else x


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
