"""Batches of training sequences: each distinct item of a batch once (`TrainBatch.items`), the sequences as indices
into them, and the sampled negatives with their inclusion probabilities (`TrainCollator`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .processing import ItemInputs


def pad_histories(histories: list[np.ndarray]) -> torch.Tensor:
    """Right-pads index sequences with -1 into a `(B, T)` LongTensor (T = longest sequence)."""
    length = max(1, max(len(h) for h in histories))
    out = torch.full((len(histories), length), -1, dtype=torch.long)
    for row, history in enumerate(histories):
        out[row, : len(history)] = torch.as_tensor(history, dtype=torch.long)
    return out


@dataclass
class TrainBatch:
    """One training batch. `items` holds each distinct item of the batch once; the other tensors index it.

    Attributes:
        items (`ItemInputs` of N unique items): the positives of the batch plus sampled negatives.
        inputs (`torch.LongTensor` of shape `(B, T)`): history items as rows of `items`, -1 for padding.
        targets (`torch.LongTensor` of shape `(B, T)`): the next item at every position, -1 where none.
        negatives (`torch.LongTensor` of shape `(B, T)`, *optional*): one sampled negative per position (`bce`).
        logq (`torch.FloatTensor` of shape `(N,)`, *optional*): log probability that each candidate is among the
            step's candidates (`sampled_softmax`'s correction, see `log_inclusion`).
        catalog_rows (`torch.LongTensor` of shape `(N,)`, *optional*): each item's row in the catalog (with a
            negative table).
        from_table (`torch.BoolTensor` of shape `(N,)`, *optional*): True for the items that are only sampled
            negatives, which a negative table scores instead of the encoders.
    """

    items: ItemInputs
    inputs: torch.Tensor
    targets: torch.Tensor
    negatives: torch.Tensor | None = None
    logq: torch.Tensor | None = None
    catalog_rows: torch.Tensor | None = None
    from_table: torch.Tensor | None = None

    def to(self, device) -> TrainBatch:
        return TrainBatch(*(None if v is None else v.to(device) for v in self.__dict__.values()))


class TrainCollator:
    """Collates training sequences (each `max_len + 1` items at most) into a `TrainBatch` for `loss`.

    Every distinct item of the batch is encoded once. `sampled_softmax` adds `num_negatives` catalog items drawn
    uniformly to the candidates, with each candidate's log inclusion probability (`log_inclusion`; from
    `item_counts`, the items' frequencies in the training data; no correction without them); `full_ce` makes the
    whole catalog the candidates; `bce` draws one uniform negative per position.

    `candidates` (catalog indices, *optional*) restricts negatives (and `full_ce`'s softmax) to those items: with a
    cold-start split, the cold items must never enter training, not even as negatives.

    With `negative_table`, each batch also says which items are only sampled negatives (`from_table`) and where
    each item is in the catalog (`catalog_rows`), so the model can score those from a table of embeddings.
    """

    def __init__(
        self,
        catalog_inputs: ItemInputs,
        loss: str = "sampled_softmax",
        num_negatives: int = 0,
        item_counts=None,
        seed=0,
        candidates=None,
        negative_table: bool = False,
    ):
        if negative_table and loss == "full_ce":
            raise ValueError("a negative table scores sampled negatives; the full_ce loss samples none")
        self.negative_table = negative_table
        self.catalog_inputs = catalog_inputs
        self.loss = loss
        self.num_negatives = num_negatives
        self.seed = seed
        self.candidates = None
        if candidates is not None:
            candidates = np.unique(np.asarray(candidates, dtype=np.int64))
            if not len(candidates):
                raise ValueError("candidates is empty: training needs at least one item to draw negatives from")
            if candidates[0] < 0 or candidates[-1] >= len(catalog_inputs):
                raise ValueError(
                    f"candidates must be catalog indices in [0, {len(catalog_inputs)}), got indices from "
                    f"{candidates[0]} to {candidates[-1]}"
                )
            self.candidates = torch.as_tensor(candidates)
            # full_ce's candidates: catalog index -> row of `candidate_inputs`, -1 for an excluded item
            self.candidate_rows = torch.full((len(catalog_inputs),), -1, dtype=torch.long)
            self.candidate_rows[self.candidates] = torch.arange(len(self.candidates))
            if loss == "full_ce":
                self.candidate_inputs = catalog_inputs.select(self.candidates)
        self.batch_index = 0  # negatives of batch i come from (seed, i): a resumed run draws the same ones
        self.item_share = None
        if item_counts is not None:
            counts = torch.as_tensor(item_counts, dtype=torch.float64)
            self.item_share = counts / counts.sum()

    def __call__(self, sequences: list[np.ndarray]) -> TrainBatch:
        padded = pad_histories(sequences)  # (B, T + 1)
        valid = padded >= 0
        num_items = len(self.catalog_inputs)
        if self.candidates is not None:
            items = padded[valid]
            outside = self.candidate_rows[items] < 0
            if outside.any():
                item = int(items[outside][0])
                raise ValueError(f"training sequences hold catalog item {item}, which is not among the candidates")
        if self.loss == "full_ce":
            if self.candidates is None:
                return TrainBatch(self.catalog_inputs, inputs=padded[:, :-1], targets=padded[:, 1:])
            rows = torch.where(valid, self.candidate_rows[padded.clamp(min=0)], -1)
            return TrainBatch(self.candidate_inputs, inputs=rows[:, :-1], targets=rows[:, 1:])
        rng = np.random.default_rng([*np.atleast_1d(self.seed), self.batch_index])
        self.batch_index += 1
        pool = num_items if self.candidates is None else len(self.candidates)
        extra = torch.as_tensor(rng.integers(0, pool, padded.shape if self.loss == "bce" else self.num_negatives))
        if self.candidates is not None:
            extra = self.candidates[extra]
        unique, inverse = torch.unique(torch.cat([padded[valid], extra.flatten()]), return_inverse=True)
        rows = torch.full_like(padded, -1)
        rows[valid] = inverse[: int(valid.sum())]
        batch = TrainBatch(self.catalog_inputs.select(unique), inputs=rows[:, :-1], targets=rows[:, 1:])
        if self.negative_table:
            batch.catalog_rows = unique
            batch.from_table = torch.ones(len(unique), dtype=torch.bool)
            batch.from_table[inverse[: int(valid.sum())]] = False  # the batch's own items go through the encoders
        if self.loss == "bce":
            batch.negatives = inverse[int(valid.sum()) :].view(padded.shape)[:, 1:]
        elif self.item_share is not None:
            batch.logq = log_inclusion(self.item_share[unique], int(valid.sum()), self.num_negatives, pool).float()
        return batch


def log_inclusion(share: torch.Tensor, positions: int, num_negatives: int, pool: int) -> torch.Tensor:
    """Log probability that each item is among a step's deduplicated candidates: the `positions` items of the
    batch, taken as draws from the items' training shares, plus `num_negatives` uniform draws from `pool` items.

    The candidates are unique, so the logQ correction is the log of the probability that an item is *included*,
    `1 - (1 - share)^positions (1 - 1/pool)^num_negatives`, not of its expected count (which exceeds 1 for
    popular items and would push their logits down by more than sampling explains).
    """
    log_miss = positions * torch.log1p(-share.double())  # (N,)
    if num_negatives:
        log_miss = log_miss + num_negatives * math.log1p(-1 / pool)
    # an item with no share and no negative draws cannot be included: keep its log finite
    return (-torch.expm1(log_miss)).clamp_min(torch.finfo(torch.float64).tiny).log()
