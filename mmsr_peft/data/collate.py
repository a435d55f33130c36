"""Batches of training sequences: each distinct item of a batch once (`TrainBatch.items`), the sequences as indices
into them, and the sampled negatives with their inclusion probabilities (`TrainCollator`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .processing import ItemInputs


def pad_histories(histories: list[np.ndarray], length: int = 1) -> torch.Tensor:
    """Right-pads index sequences with -1 into a `(B, T)` LongTensor (T: the longest sequence, at least `length`)."""
    length = max(length, max(len(h) for h in histories))
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
        candidate_mask (`torch.BoolTensor` of shape `(N,)`, *optional*): False for the rows that only pad `items`
            to a steady size (`pad_to_multiple_of`); they are encoded but never scored.
    """

    items: ItemInputs
    inputs: torch.Tensor
    targets: torch.Tensor
    negatives: torch.Tensor | None = None
    logq: torch.Tensor | None = None
    catalog_rows: torch.Tensor | None = None
    from_table: torch.Tensor | None = None
    candidate_mask: torch.Tensor | None = None

    def to(self, device) -> TrainBatch:
        return TrainBatch(*(None if v is None else v.to(device) for v in self.__dict__.values()))


class TrainCollator:
    """Collates training sequences (each `max_len + 1` items at most) into a `TrainBatch` for `loss`.

    Every distinct item of the batch is encoded once. `sampled_softmax` adds `num_negatives` catalog items drawn
    uniformly to the candidates, with each candidate's log inclusion probability (`log_inclusion`; from
    `item_counts`, the items' frequencies in the training data; no correction without them); `full_ce` makes the
    whole catalog the candidates; `bce` draws one uniform negative per position, never that position's target.

    A training sample is a sequence, or a `(sequence, skip)` pair whose first `skip` targets are context only
    (`Split.train_skip`): their positions get no target.

    `candidates` (catalog indices, *optional*) restricts negatives (and `full_ce`'s softmax) to those items: with a
    cold-start split, the cold items must never enter training, not even as negatives.

    With `negative_table`, each batch also says which items are only sampled negatives (`from_table`) and where
    each item is in the catalog (`catalog_rows`), so the model can score those from a table of embeddings.

    With `pad_to_multiple_of`, every step has one of a few shapes instead of a new one (GPU kernels and the memory
    allocator, `torch.compile`): the sequences are padded to `sequence_length` and the distinct items that go
    through the encoders to a multiple of `pad_to_multiple_of`, with copies of the first item that
    `candidate_mask` leaves out of the loss. The loss is the unpadded one.
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
        pad_to_multiple_of: int = 0,
        sequence_length: int = 1,
    ):
        if pad_to_multiple_of < 0:
            raise ValueError(f"pad_to_multiple_of must be >= 0 (0: no padding), got {pad_to_multiple_of}")
        if negative_table and loss == "full_ce":
            raise ValueError("a negative table scores sampled negatives; the full_ce loss samples none")
        self.negative_table = negative_table
        self.pad_to_multiple_of = pad_to_multiple_of
        self.sequence_length = sequence_length if pad_to_multiple_of else 1
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

    def __call__(self, samples: list) -> TrainBatch:
        if not samples or not isinstance(samples[0], tuple):
            return self._collate(samples)
        sequences, skips = zip(*samples, strict=True)
        batch = self._collate(list(sequences))
        batch.targets = batch.targets.clone()  # a view of the inputs' tensor, shifted by one
        for row, skip in enumerate(skips):
            batch.targets[row, :skip] = -1  # context only: the window before trains these targets
        return batch

    def _collate(self, sequences: list[np.ndarray]) -> TrainBatch:
        padded = pad_histories(sequences, self.sequence_length)  # (B, T + 1)
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
        # bce: a negative per position of the sequences as they come (the same draws with or without padding)
        drawn = (len(sequences), max(1, max(len(s) for s in sequences)))
        extra = torch.as_tensor(rng.integers(0, pool, drawn if self.loss == "bce" else self.num_negatives))
        if self.candidates is not None:
            extra = self.candidates[extra]
        if self.loss == "bce" and pool > 1:  # column c is the negative of the target at c (column 0: none)
            _redraw_targets(rng, extra[:, 1:], padded[:, 1 : drawn[1]], pool, self.candidates)
        unique, inverse = torch.unique(torch.cat([padded[valid], extra.flatten()]), return_inverse=True)
        rows = torch.full_like(padded, -1)
        rows[valid] = inverse[: int(valid.sum())]
        batch = TrainBatch(self.catalog_inputs.select(unique), inputs=rows[:, :-1], targets=rows[:, 1:])
        if self.negative_table:
            batch.catalog_rows = unique
            batch.from_table = torch.ones(len(unique), dtype=torch.bool)
            batch.from_table[inverse[: int(valid.sum())]] = False  # the batch's own items go through the encoders
        if self.loss == "bce":
            negatives = inverse[int(valid.sum()) :].view(drawn)[:, 1:]
            batch.negatives = torch.nn.functional.pad(negatives, (0, padded.shape[1] - drawn[1]))  # no targets there
        elif self.item_share is not None:
            batch.logq = log_inclusion(self.item_share[unique], int(valid.sum()), self.num_negatives, pool).float()
        if self.pad_to_multiple_of:
            multiple = self.pad_to_multiple_of
            if self.negative_table:  # the encoders' share and the table's share each get a steady size
                own = int((~batch.from_table).sum())
                batch = pad_items(batch, unique, -own % multiple, -(len(unique) - own) % multiple)
            else:
                batch = pad_items(batch, unique, -len(unique) % multiple)
        return batch


def _redraw_targets(
    rng: np.random.Generator,
    negatives: torch.Tensor,
    targets: torch.Tensor,
    pool: int,
    candidates: torch.Tensor | None,
) -> None:
    """SASRec's `random_neq`: draws each of `negatives` `(B, L)` (catalog indices) that equals its position's target
    (`targets`, `(B, L)`, -1 where none) again from the `pool` items (rows of `candidates`, or the catalog), in
    place. The draws come from the batch's own `rng`, so that a seed and batch index still give one batch."""
    clash = negatives == targets
    while clash.any():  # a target is one of the pool's > 1 items: each draw misses it with probability >= 1/2
        drawn = torch.as_tensor(rng.integers(0, pool, int(clash.sum())))
        negatives[clash] = drawn if candidates is None else candidates[drawn]
        clash = negatives == targets


def pad_items(batch: TrainBatch, unique: torch.Tensor, encoded: int, looked_up: int = 0) -> TrainBatch:
    """`batch` with more rows in `items`, copies of its first item that are never scored (`candidate_mask` is False
    there): `encoded` that go through the encoders, then `looked_up` that a negative table scores (`from_table`).
    `unique`: the catalog rows of `batch.items`."""
    size, count = len(unique), encoded + looked_up
    index = torch.cat([torch.arange(size), torch.zeros(count, dtype=torch.long)])
    from_table = None
    if batch.from_table is not None:
        from_table = torch.cat([batch.from_table, torch.arange(count) >= encoded])
    return TrainBatch(
        items=batch.items.select(index),
        inputs=batch.inputs,
        targets=batch.targets,
        negatives=batch.negatives,
        logq=None if batch.logq is None else batch.logq[index],
        catalog_rows=None if batch.catalog_rows is None else unique[index],
        from_table=from_table,
        candidate_mask=torch.arange(size + count) < size,
    )


def log_inclusion(share: torch.Tensor, positions: int, num_negatives: int, pool: int) -> torch.Tensor:
    """Log probability that each item is among a step's deduplicated candidates: the `positions` items of the
    batch, taken as draws from the items' training shares, plus `num_negatives` uniform draws from `pool` items.

    The candidates are unique, so the logQ correction is the log of the probability that an item is *included*,
    `1 - (1 - share)^positions (1 - 1/pool)^num_negatives`, not of its expected count (which exceeds 1 for
    popular items and would push their logits down by more than sampling explains).
    """
    log_miss = positions * torch.log1p(-share.double())  # (N,)
    if num_negatives:  # a pool of one item: every draw is that item
        log_miss = log_miss + num_negatives * (math.log1p(-1 / pool) if pool > 1 else -math.inf)
    # an item with no share and no negative draws cannot be included: keep its log finite
    return (-torch.expm1(log_miss)).clamp_min(torch.finfo(torch.float64).tiny).log()
