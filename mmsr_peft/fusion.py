"""Multimodal fusion: turns an item's text and image encodings into one item embedding."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from .config import ConfigMixin
from .encoders import EncoderOutput

POOLED_OPS = ("sum", "concat", "film", "gated")
TOKEN_FUSIONS = ("co_attention", "merge_attention")
FUSION_TYPES = POOLED_OPS + tuple(f"{op}_mlp" for op in POOLED_OPS) + TOKEN_FUSIONS


@dataclass
class FusionConfig(ConfigMixin):
    """Architecture of the fusion module. Pooled variants first project text and image to `t`, `v` of width D (a
    learned vector stands in for an absent modality); token variants read the token / patch states.

    Args:
        type (`str`): one of
            - `"sum"`: `t + v`.
            - `"concat"`: `Linear(2D -> D)([t; v])`.
            - `"film"`: `γ ⊙ t + β` with `(γ - 1, β) = Linear(D -> 2D)(v)` (image modulates text; γ starts near 1).
            - `"gated"`: `g ⊙ t + (1 - g) ⊙ v` with `g = sigmoid(Linear(2D -> D)([t; v]))`.
            - `"sum_mlp"`, `"concat_mlp"`, `"film_mlp"`, `"gated_mlp"`: the base op `x`, then
              `LayerNorm(x + MLP(x))` with `MLP = Linear(D -> 4D), GELU, dropout, Linear(4D -> D)`.
            - `"co_attention"`: per layer, text tokens cross-attend to image patches and patches to text tokens,
              then self-attention + feed-forward in each stream (LXMERT); `Linear(2D -> D)` of the two [CLS] states.
            - `"merge_attention"`: one self-attention stream over `[CLS] + text tokens + image patches` with
              modality-type embeddings, read out at [CLS].
        num_layers (`int`): layers of `co_attention` / `merge_attention`.
        num_heads (`int`): attention heads of `co_attention` / `merge_attention` (must divide D).
        dropout (`float`): dropout of the attention variants and of the `_mlp` heads.
    """

    type: str = "concat"  # one of FUSION_TYPES
    num_layers: int = 1  # co_attention / merge_attention: layers
    num_heads: int = 2  # co_attention / merge_attention: attention heads
    dropout: float = 0.1  # attention variants and _mlp heads: dropout

    def __post_init__(self):
        if self.type not in FUSION_TYPES:
            raise ValueError(f"fusion.type must be one of {', '.join(FUSION_TYPES)}; got {self.type!r}")
        if self.num_layers < 1 or self.num_heads < 1:
            raise ValueError(f"fusion.num_layers/num_heads must be >= 1, got {self.num_layers}/{self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"fusion.dropout must be in [0, 1), got {self.dropout}")


class ModalityProjection(nn.Module):
    """Single-modality item tower head: projects the pooled encoding; a learned vector stands in when absent."""

    def __init__(self, in_dim: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden_size)
        self.missing = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, encoded: EncoderOutput, present: torch.Tensor) -> torch.Tensor:
        return torch.where(present[:, None], self.proj(encoded.pooled), self.missing)  # (N, D)


class PooledFusion(nn.Module):
    """Late fusion of the projected pooled vectors `t`, `v` by `sum`, `concat`, `film` or `gated`, optionally
    followed by a residual MLP head (`*_mlp`). An absent modality is a learned vector, not zeros that look like
    content."""

    def __init__(self, config: FusionConfig, text_dim: int, image_dim: int, hidden_size: int):
        super().__init__()
        d = hidden_size
        self.op = config.type.removesuffix("_mlp")
        self.text = ModalityProjection(text_dim, d)
        self.image = ModalityProjection(image_dim, d)
        if self.op == "concat":
            self.out_proj = nn.Linear(2 * d, d)  # name kept from the first release: old checkpoints still load
        elif self.op == "film":
            self.film = nn.Linear(d, 2 * d)
            nn.init.normal_(self.film.weight, std=0.02)  # γ ≈ 1, β ≈ 0 at start: the text vector passes through
            nn.init.zeros_(self.film.bias)
        elif self.op == "gated":
            self.gate = nn.Linear(2 * d, d)
        self.mlp = self.norm = None
        if config.type.endswith("_mlp"):
            layers = [("fc1", nn.Linear(d, 4 * d)), ("act", nn.GELU()), ("drop", nn.Dropout(config.dropout))]
            self.mlp = nn.Sequential(OrderedDict([*layers, ("fc2", nn.Linear(4 * d, d))]))
            self.norm = nn.LayerNorm(d)

    def combine(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.op == "sum":
            return t + v
        if self.op == "concat":
            return self.out_proj(torch.cat([t, v], dim=-1))
        if self.op == "film":
            gamma, beta = self.film(v).chunk(2, dim=-1)  # (N, D) each
            return (1 + gamma) * t + beta
        g = torch.sigmoid(self.gate(torch.cat([t, v], dim=-1)))  # (N, D)
        return g * t + (1 - g) * v

    def forward(self, text: EncoderOutput, image: EncoderOutput, has_text, has_image) -> torch.Tensor:
        fused = self.combine(self.text(text, has_text), self.image(image, has_image))  # (N, D)
        return fused if self.mlp is None else self.norm(fused + self.mlp(fused))


def _encoder_layer(config: FusionConfig, hidden_size: int) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(
        hidden_size, config.num_heads, 4 * hidden_size, config.dropout, batch_first=True, norm_first=True
    )


def _keep(n: int, encoded: EncoderOutput, present: torch.Tensor) -> torch.Tensor:
    """`(N, 1 + L)` key mask of a stream: its [CLS] slot is always visible, tokens only if the modality is present."""
    cls = torch.ones(n, 1, dtype=torch.bool, device=encoded.mask.device)
    return torch.cat([cls, encoded.mask & present[:, None]], dim=1)


class MergeAttentionFusion(nn.Module):
    """Early fusion: one self-attention stream over `[CLS] + text tokens + image patches`, each token tagged
    with a modality-type embedding. Tokens of an absent modality are masked out of attention."""

    def __init__(self, config: FusionConfig, text_dim: int, image_dim: int, hidden_size: int):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, hidden_size)
        self.image_proj = nn.Linear(image_dim, hidden_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.type_embedding = nn.Embedding(3, hidden_size)  # 0: [CLS], 1: text, 2: image
        layer = _encoder_layer(config, hidden_size)
        self.layers = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, text: EncoderOutput, image: EncoderOutput, has_text, has_image) -> torch.Tensor:
        n = text.tokens.shape[0]
        types = self.type_embedding.weight
        tokens = torch.cat(
            [
                self.cls.expand(n, -1, -1) + types[0],
                self.text_proj(text.tokens) + types[1],  # (N, L, D)
                self.image_proj(image.tokens) + types[2],  # (N, P, D)
            ],
            dim=1,
        )  # (N, 1 + L + P, D)
        keep = torch.cat([_keep(n, text, has_text), image.mask & has_image[:, None]], dim=1)  # (N, 1 + L + P)
        states = self.layers(tokens, src_key_padding_mask=~keep)
        return self.out_proj(self.norm(states[:, 0]))  # (N, D)


class CrossAttention(nn.Module):
    """Pre-norm residual cross-attention: `x + Attn(LN(x), LN(y), LN(y))`, keys masked by `y_keep`."""

    def __init__(self, config: FusionConfig, hidden_size: int):
        super().__init__()
        self.norm_query = nn.LayerNorm(hidden_size)
        self.norm_context = nn.LayerNorm(hidden_size)
        self.attn = nn.MultiheadAttention(hidden_size, config.num_heads, dropout=config.dropout, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor, y_keep: torch.Tensor) -> torch.Tensor:
        context = self.norm_context(y)
        attended = self.attn(self.norm_query(x), context, context, key_padding_mask=~y_keep, need_weights=False)[0]
        return x + self.dropout(attended)


class CoAttentionLayer(nn.Module):
    """One LXMERT-style layer: both streams cross-attend to the other (from the same input states), then each
    runs self-attention + feed-forward on its own tokens."""

    def __init__(self, config: FusionConfig, hidden_size: int):
        super().__init__()
        self.text_cross = CrossAttention(config, hidden_size)
        self.image_cross = CrossAttention(config, hidden_size)
        self.text_self = _encoder_layer(config, hidden_size)
        self.image_self = _encoder_layer(config, hidden_size)

    def forward(self, t, v, t_keep, v_keep) -> tuple[torch.Tensor, torch.Tensor]:
        t, v = self.text_cross(t, v, v_keep), self.image_cross(v, t, t_keep)
        return self.text_self(t, src_key_padding_mask=~t_keep), self.image_self(v, src_key_padding_mask=~v_keep)


class CoAttentionFusion(nn.Module):
    """Two token streams, `[CLS_t] + text tokens` and `[CLS_v] + image patches`, joined by cross-attention layers.
    Each [CLS] is always a visible key, so an item missing a modality attends to that stream's [CLS] alone (a
    learned "missing" signal) instead of to masked content; the output projects `[CLS_t; CLS_v]` to D."""

    def __init__(self, config: FusionConfig, text_dim: int, image_dim: int, hidden_size: int):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, hidden_size)
        self.image_proj = nn.Linear(image_dim, hidden_size)
        self.text_cls = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.image_cls = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.layers = nn.ModuleList(CoAttentionLayer(config, hidden_size) for _ in range(config.num_layers))
        self.text_norm = nn.LayerNorm(hidden_size)
        self.image_norm = nn.LayerNorm(hidden_size)
        self.out_proj = nn.Linear(2 * hidden_size, hidden_size)

    def forward(self, text: EncoderOutput, image: EncoderOutput, has_text, has_image) -> torch.Tensor:
        n = text.tokens.shape[0]
        t = torch.cat([self.text_cls.expand(n, -1, -1), self.text_proj(text.tokens)], dim=1)  # (N, 1 + L, D)
        v = torch.cat([self.image_cls.expand(n, -1, -1), self.image_proj(image.tokens)], dim=1)  # (N, 1 + P, D)
        t_keep, v_keep = _keep(n, text, has_text), _keep(n, image, has_image)
        for layer in self.layers:
            t, v = layer(t, v, t_keep, v_keep)
        pooled = torch.cat([self.text_norm(t[:, 0]), self.image_norm(v[:, 0])], dim=-1)  # (N, 2D)
        return self.out_proj(pooled)


FUSION_CLASSES = {
    **{name: PooledFusion for name in FUSION_TYPES if name not in TOKEN_FUSIONS},
    "co_attention": CoAttentionFusion,
    "merge_attention": MergeAttentionFusion,
}


def build_fusion(config: FusionConfig, text_dims: tuple[int, int], image_dims: tuple[int, int], hidden_size: int):
    """`text_dims`/`image_dims` are `(pooled size, token size)` of each encoder; attention variants read tokens."""
    token_level = config.type in TOKEN_FUSIONS
    if token_level and hidden_size % config.num_heads:
        raise ValueError(
            f"fusion.num_heads={config.num_heads} must divide hidden_size={hidden_size} for {config.type!r}"
        )
    index = 1 if token_level else 0
    return FUSION_CLASSES[config.type](config, text_dims[index], image_dims[index], hidden_size)
