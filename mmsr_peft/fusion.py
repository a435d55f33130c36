"""Multimodal fusion: turns an item's text and image encodings into one item embedding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import ConfigMixin
from .encoders import EncoderOutput

FUSION_TYPES = ("concat", "merge_attn")


@dataclass
class FusionConfig(ConfigMixin):
    """Architecture of the fusion module.

    Args:
        type (`str`): `"concat"` (pooled text and image vectors, concatenated and projected) or `"merge_attn"`
            (self-attention over the concatenated text and image tokens, read out at a [CLS] token).
        num_layers (`int`): transformer layers of `merge_attn`.
        num_heads (`int`): attention heads of `merge_attn`.
        dropout (`float`): dropout inside `merge_attn`.
    """

    type: str = "concat"  # "concat" | "merge_attn"
    num_layers: int = 1  # merge_attn: transformer layers
    num_heads: int = 2  # merge_attn: attention heads
    dropout: float = 0.1  # merge_attn: dropout

    def __post_init__(self):
        if self.type not in FUSION_TYPES:
            raise ValueError(f"fusion.type must be one of {FUSION_TYPES}, got {self.type!r}")
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


class ConcatFusion(nn.Module):
    """Late fusion: `out_proj([proj(text); proj(image)])`. An absent modality is replaced by a learned vector
    (an explicit "missing" signal, not zeros that look like content)."""

    def __init__(self, config: FusionConfig, text_dim: int, image_dim: int, hidden_size: int):
        super().__init__()
        self.text = ModalityProjection(text_dim, hidden_size)
        self.image = ModalityProjection(image_dim, hidden_size)
        self.out_proj = nn.Linear(2 * hidden_size, hidden_size)

    def forward(self, text: EncoderOutput, image: EncoderOutput, has_text, has_image) -> torch.Tensor:
        fused = torch.cat([self.text(text, has_text), self.image(image, has_image)], dim=-1)  # (N, 2D)
        return self.out_proj(fused)


class MergeAttentionFusion(nn.Module):
    """Early fusion: one self-attention stream over `[CLS] + text tokens + image patches`, each token tagged
    with a modality-type embedding. Tokens of an absent modality are masked out of attention."""

    def __init__(self, config: FusionConfig, text_dim: int, image_dim: int, hidden_size: int):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, hidden_size)
        self.image_proj = nn.Linear(image_dim, hidden_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.type_embedding = nn.Embedding(3, hidden_size)  # 0: [CLS], 1: text, 2: image
        layer = nn.TransformerEncoderLayer(
            hidden_size, config.num_heads, 4 * hidden_size, config.dropout, batch_first=True, norm_first=True
        )
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
        keep = torch.cat(
            [
                torch.ones(n, 1, dtype=torch.bool, device=tokens.device),
                text.mask & has_text[:, None],
                image.mask & has_image[:, None],
            ],
            dim=1,
        )
        states = self.layers(tokens, src_key_padding_mask=~keep)
        return self.out_proj(self.norm(states[:, 0]))  # (N, D)


FUSION_CLASSES = {"concat": ConcatFusion, "merge_attn": MergeAttentionFusion}


def build_fusion(config: FusionConfig, text_dims: tuple[int, int], image_dims: tuple[int, int], hidden_size: int):
    """`text_dims`/`image_dims` are `(pooled size, token size)` of each encoder."""
    index = 1 if config.type == "merge_attn" else 0
    return FUSION_CLASSES[config.type](config, text_dims[index], image_dims[index], hidden_size)
