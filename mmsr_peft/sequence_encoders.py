"""Sequence encoders: turn a history of item embeddings into user states.

Every encoder maps right-padded item states `(B, T, D)` to user states `(B, T, D)` and is causal: the state at
position t depends only on items 0..t, so the state at the last real item summarises the history and the padding
after it never changes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigMixin

SEQUENCE_TYPES = ("sasrec", "gru4rec", "nextitnet")


@dataclass
class SequenceEncoderConfig(ConfigMixin):
    """Architecture of the sequence encoder.

    Args:
        type (`str`): `"sasrec"` (causal self-attention, Kang & McAuley 2018), `"gru4rec"` (GRU, Hidasi et al.
            2016) or `"nextitnet"` (dilated causal convolutions, Yuan et al. 2019).
        num_layers (`int`): transformer layers (sasrec), GRU layers (gru4rec) or residual blocks (nextitnet).
        num_heads (`int`): attention heads (sasrec only).
        dropout (`float`): dropout on the input embeddings and inside the layers.
        max_len (`int`): longest history the model reads (older items are cut); size of the position table (sasrec).
        kernel_size (`int`): width of each causal convolution (nextitnet only).
        dilations (`tuple[int]`): dilation of each residual block, cycled over the `num_layers` blocks; a block with
            dilation d stacks convolutions with dilations d and 2d (nextitnet only).
    """

    type: str = "sasrec"  # "sasrec" | "gru4rec" | "nextitnet"
    num_layers: int = 2  # transformer layers / GRU layers / residual blocks
    num_heads: int = 2  # attention heads (sasrec only)
    dropout: float = 0.1  # embedding and layer dropout
    max_len: int = 50  # history length (and position embeddings, sasrec)
    kernel_size: int = 3  # causal convolution width (nextitnet only)
    dilations: tuple[int, ...] = (1, 2, 4)  # dilation per residual block, cycled (nextitnet only)

    def __post_init__(self):
        if self.type not in SEQUENCE_TYPES:
            raise ValueError(f"sequence.type must be one of {SEQUENCE_TYPES}, got {self.type!r}")
        for name in ("max_len", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"sequence.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"sequence.dropout must be in [0, 1), got {self.dropout}")
        if self.kernel_size < 2:
            raise ValueError(
                f"sequence.kernel_size must be >= 2 (a kernel of 1 sees no history), got {self.kernel_size}"
            )
        if not (
            isinstance(self.dilations, (tuple, list))
            and self.dilations
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in self.dilations)
        ):
            raise ValueError(f"sequence.dilations must be a non-empty tuple of ints >= 1, got {self.dilations!r}")
        self.dilations = tuple(self.dilations)


class SequenceEncoder(nn.Module):
    """Base of the encoders: `forward` gives the state after every position, `last_states` after one position per
    row (what ranking needs); an encoder that can skip work for the other positions overrides `last_states`."""

    def last_states(self, item_states: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """`(B, D)`: the state after position `last[b]` of each row of `item_states` `(B, T, D)`."""
        return self(item_states)[torch.arange(len(last), device=last.device), last]


def _check_length(item_states: torch.Tensor, config: SequenceEncoderConfig) -> None:
    length = item_states.shape[1]
    if length > config.max_len:
        raise ValueError(f"history of {length} items is longer than sequence.max_len={config.max_len}")


class SASRec(SequenceEncoder):
    """Causal transformer over a right-padded history (Kang & McAuley 2018): learned positions, pre-norm layers
    with a causal attention mask, a final LayerNorm."""

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
        _check_length(item_states, self.config)
        length = item_states.shape[1]
        positions = self.position.weight[:length]  # (T, D)
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=item_states.device)
        states = self.layers(self.dropout(item_states * self.scale + positions), mask=causal, is_causal=True)
        return self.norm(states)

    def last_states(self, item_states: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """`(B, D)`: the state after position `last[b]` of each row. The layers below the top one run over every
        position (their outputs are the top layer's keys and values); the top layer runs for one query per row,
        which makes ranking about `num_layers / (num_layers - 1)` times faster than `forward`."""
        _check_length(item_states, self.config)
        length = item_states.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=item_states.device)
        states = self.dropout(item_states * self.scale + self.position.weight[:length])
        *lower, top = self.layers.layers
        for layer in lower:
            states = layer(states, src_mask=causal, is_causal=True)
        query = states[torch.arange(len(last), device=last.device), last].unsqueeze(1)  # (B, 1, D)
        # the pre-norm layer of nn.TransformerEncoderLayer(norm_first=True), for that one query: it sees the
        # positions up to its own (the causal mask's row `last`)
        hidden = top.norm1(states)
        after_query = torch.arange(length, device=last.device) > last.unsqueeze(1)  # (B, T), True = hidden
        attended = top.self_attn(top.norm1(query), hidden, hidden, key_padding_mask=after_query, need_weights=False)[0]
        query = query + top.dropout1(attended)
        feed_forward = top.linear2(top.dropout(top.activation(top.linear1(top.norm2(query)))))
        return self.norm((query + top.dropout2(feed_forward)).squeeze(1))


class GRU4Rec(SequenceEncoder):
    """GRU over the history (Hidasi et al. 2016): input dropout, a `num_layers` GRU of width D, a linear output
    projection. A recurrence is causal by construction and needs no position table."""

    def __init__(self, config: SequenceEncoderConfig, hidden_size: int):
        super().__init__()
        self.config = config
        self.scale = hidden_size**0.5  # as in SASRec: unit scale per dim for L2-normalised item embeddings
        self.dropout = nn.Dropout(config.dropout)
        inner_dropout = config.dropout if config.num_layers > 1 else 0.0  # nn.GRU warns on dropout with one layer
        self.gru = nn.GRU(hidden_size, hidden_size, config.num_layers, batch_first=True, dropout=inner_dropout)
        self.projection = nn.Linear(hidden_size, hidden_size)

    def forward(self, item_states: torch.Tensor) -> torch.Tensor:
        """`item_states`: `(B, T, D)` with T <= max_len, padding after the real items. Returns `(B, T, D)`."""
        _check_length(item_states, self.config)
        states, _ = self.gru(self.dropout(item_states * self.scale))  # (B, T, D)
        return self.projection(states)


class CausalConv1d(nn.Conv1d):
    """A 1-D convolution over `(B, D, T)` padded on the left only, so output t sees inputs t-(k-1)*dilation..t."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__(channels, channels, kernel_size, dilation=dilation)
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))


class NextItNetBlock(nn.Module):
    """Residual block of NextItNet: LayerNorm → ReLU → causal conv (dilation d) → LayerNorm → ReLU → causal conv
    (dilation 2d), added to the input."""

    def __init__(self, hidden_size: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.conv1 = CausalConv1d(hidden_size, kernel_size, dilation)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.conv2 = CausalConv1d(hidden_size, kernel_size, 2 * dilation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(B, T, D)`; convolutions run over `(B, D, T)`."""
        h = self.conv1(F.relu(self.norm1(x)).transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        h = self.conv2(F.relu(self.norm2(h)).transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        return x + self.dropout(h)


class NextItNet(SequenceEncoder):
    """Stack of residual blocks of dilated causal convolutions (Yuan et al. 2019), dilations cycling through
    `config.dilations`, then a final LayerNorm. Left-only padding keeps every position causal."""

    def __init__(self, config: SequenceEncoderConfig, hidden_size: int):
        super().__init__()
        self.config = config
        self.scale = hidden_size**0.5  # as in SASRec: unit scale per dim for L2-normalised item embeddings
        self.dropout = nn.Dropout(config.dropout)
        dilations = [config.dilations[i % len(config.dilations)] for i in range(config.num_layers)]
        self.blocks = nn.Sequential(
            *(NextItNetBlock(hidden_size, config.kernel_size, d, config.dropout) for d in dilations)
        )
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, item_states: torch.Tensor) -> torch.Tensor:
        """`item_states`: `(B, T, D)` with T <= max_len, padding after the real items. Returns `(B, T, D)`."""
        _check_length(item_states, self.config)
        return self.norm(self.blocks(self.dropout(item_states * self.scale)))


SEQUENCE_CLASSES = {"sasrec": SASRec, "gru4rec": GRU4Rec, "nextitnet": NextItNet}
