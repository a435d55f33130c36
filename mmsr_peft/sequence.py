"""Sequence encoders: turn a history of item embeddings into user states."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import ConfigMixin

SEQUENCE_TYPES = ("sasrec",)


@dataclass
class SequenceEncoderConfig(ConfigMixin):
    """Architecture of the sequence encoder.

    Args:
        type (`str`): `"sasrec"` (causal self-attention, Kang & McAuley 2018).
        num_layers (`int`): transformer layers.
        num_heads (`int`): attention heads.
        dropout (`float`): dropout on embeddings and inside the layers.
        max_len (`int`): longest history the model reads (older items are cut); size of the position table.
    """

    type: str = "sasrec"  # "sasrec"
    num_layers: int = 2  # transformer layers
    num_heads: int = 2  # attention heads
    dropout: float = 0.1  # embedding and layer dropout
    max_len: int = 50  # history length (position embeddings)

    def __post_init__(self):
        if self.type not in SEQUENCE_TYPES:
            raise ValueError(f"sequence.type must be one of {SEQUENCE_TYPES}, got {self.type!r}")
        if self.max_len < 1 or self.num_layers < 1 or self.num_heads < 1:
            raise ValueError(
                f"sequence.max_len/num_layers/num_heads must be >= 1, got {self.max_len}/{self.num_layers}/{self.num_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"sequence.dropout must be in [0, 1), got {self.dropout}")


class SASRec(nn.Module):
    """Causal transformer over a right-padded history: position t only sees items 0..t, so the state at the
    last real position summarises the whole history and padding never changes it."""

    def __init__(self, config: SequenceEncoderConfig, hidden_size: int):
        super().__init__()
        self.config = config
        self.position = nn.Embedding(config.max_len, hidden_size)
        nn.init.normal_(self.position.weight, std=0.02)
        self.scale = hidden_size**0.5  # item embeddings arrive L2-normalised: bring them to unit scale per dim
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            hidden_size, config.num_heads, 4 * hidden_size, config.dropout, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, item_states: torch.Tensor) -> torch.Tensor:
        """`item_states`: `(B, T, D)` with T <= max_len, padding after the real items. Returns `(B, T, D)`."""
        length = item_states.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"history of {length} items is longer than sequence.max_len={self.config.max_len}")
        positions = self.position.weight[:length]  # (T, D)
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=item_states.device)
        states = self.layers(self.dropout(item_states * self.scale + positions), mask=causal, is_causal=True)
        return self.norm(states)


SEQUENCE_CLASSES = {"sasrec": SASRec}
