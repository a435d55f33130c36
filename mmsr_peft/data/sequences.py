"""Per-user chronological item sequences and the leave-one-out split."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError
from .catalog import Catalog, read_parquet

INTERACTION_COLUMNS = {"user_id": "string", "item_id": "string", "timestamp": "int64"}
MIN_INTERACTIONS = 3  # one to train on, one to validate, one to test


@dataclass
class Sequences:
    """Chronological item sequences, one per user, as indices into a `Catalog`.

    Args:
        user_ids (`list[str]`): users kept (those with at least 3 interactions).
        items (`list[np.ndarray]`): for each user, catalog indices ordered by time (ties: original row order).
        stats (`dict`): counts of the source file: interactions, users, users dropped for being too short.
    """

    user_ids: list[str]
    items: list[np.ndarray]
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, catalog: Catalog) -> Sequences:
        """Reads `interactions.parquet`, checking that every item exists in `catalog`."""
        path = Path(folder) / "interactions.parquet"
        # Arrow compute on whole columns, no Python object per row: 2.7 M rows in 6 s instead of 30 s.
        columns = read_parquet(path, INTERACTION_COLUMNS).data
        user_names, user_codes = _sorted_codes(columns.column("user_id"))
        timestamps = pc.cast(columns.column("timestamp"), pa.int64()).to_numpy()
        if len(timestamps) and timestamps.min() < 0:
            row = int(np.argmin(timestamps))
            raise DataError(f"{path}: row {row}: timestamp {timestamps[row]} is negative; expected seconds since 1970")
        items = _item_indices(path, columns.column("item_id"), catalog)
        _refuse_duplicates(path, user_codes, items, timestamps)
        return cls._grouped(user_names, user_codes, items, timestamps)

    @classmethod
    def from_arrays(cls, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> Sequences:
        """Groups interaction rows by user, ordered by (timestamp, row), dropping users with fewer than 3."""
        user_names, user_codes = np.unique(users, return_inverse=True)
        return cls._grouped(user_names, user_codes, items, timestamps)

    @classmethod
    def _grouped(cls, user_names, user_codes: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> Sequences:
        """`from_arrays` once users are codes into their sorted distinct names."""
        order = np.lexsort((np.arange(len(user_codes)), timestamps, user_codes))  # last key sorts first
        bounds = np.flatnonzero(np.diff(user_codes[order])) + 1
        kept_ids, kept_items = [], []
        for group in np.split(order, bounds):
            if len(group) >= MIN_INTERACTIONS:
                kept_ids.append(str(user_names[user_codes[group[0]]]))
                kept_items.append(items[group])
        stats = {
            "interactions": int(len(user_codes)),
            "users": len(user_names),
            "users_kept": len(kept_ids),
            "users_dropped_short": len(user_names) - len(kept_ids),
        }
        return cls(kept_ids, kept_items, stats)

    @classmethod
    def concat(cls, parts: list[Sequences], offsets: list[int]) -> Sequences:
        """Joins the sequences of several domains whose catalogs were concatenated at `offsets`."""
        return cls(
            [u for p in parts for u in p.user_ids],
            [seq + offset for p, offset in zip(parts, offsets, strict=True) for seq in p.items],
            {key: sum(p.stats.get(key, 0) for p in parts) for key in parts[0].stats},
        )


def _refuse_duplicates(path: Path, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> None:
    """Refuses two rows with the same user, item and timestamp: a repeated row, which would count twice in the
    sequences and the statistics (a repeat at another time is a real repeat and stays)."""
    rows = np.stack([users.astype(np.int64), items, timestamps], axis=1)  # (R, 3)
    _, first, counts = np.unique(rows, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        row = int(first[np.argmax(counts > 1)])
        again = int(np.flatnonzero((rows == rows[row]).all(axis=1))[1])
        raise DataError(
            f"{path}: rows {row} and {again} are the same interaction (user, item, timestamp {timestamps[row]}); "
            "remove the repeated rows"
        )


def _sorted_codes(values: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """The distinct values, sorted as `np.unique` sorts Python strings (code points, i.e. UTF-8 bytes), and each
    row's index into them."""
    names = pc.unique(values)
    names = names.take(pc.array_sort_indices(names))
    return names.to_pylist(), pc.index_in(values, value_set=names).to_numpy()


def _item_indices(path: Path, item_ids: pa.ChunkedArray, catalog: Catalog) -> np.ndarray:
    """Each row's position in `catalog` (its item ids are unique)."""
    positions = pc.index_in(item_ids, value_set=pa.array(catalog.item_ids, item_ids.type))
    if positions.null_count:
        row = pc.index(pc.is_null(positions), True).as_py()
        item_id = item_ids[row].as_py()
        raise DataError(f"{path}: row {row}: item_id {item_id!r} is not in items.parquet of {catalog.name!r}")
    return positions.to_numpy().astype(np.int64)


@dataclass
class Split:
    """Leave-one-out by time: the last item of each user is the test target, the one before it the validation
    target, and everything before that is training data.

    Attributes:
        train (`list[np.ndarray]`): training sequences, each at most `max_len + 1` items (inputs + shifted targets).
            A user longer than that is cut into windows whose ends are `stride` items apart (by default consecutive
            windows sharing one item), and every training transition is trained exactly once.
        train_skip (`np.ndarray` of int): per training sequence, how many of its first targets are context only
            (the window before, which ends with them, trains them with more history); zeros unless `stride` <
            `max_len`.
        valid_histories / test_histories (`list[np.ndarray]`): the last `max_len` items before each target (what
            the model reads).
        valid_known / test_known (`list[np.ndarray]`): every item before each target, cold items included (the
            user's whole known history, excluded from the candidates by the main evaluation protocol).
        valid_targets / test_targets (`np.ndarray`): catalog index of each target.
        users (`list[str]`): the user of each evaluation case.
        cold_items / valid_cold / test_cold (`np.ndarray`, *optional*): with a cold-start split, the cold items and,
            per evaluation case, whether its target is one of them.
        train_users (`np.ndarray` of bool, *optional*): per user, whether their sequence trains (None: every user).
    """

    train: list[np.ndarray]
    valid_histories: list[np.ndarray]
    valid_targets: np.ndarray
    test_histories: list[np.ndarray]
    test_targets: np.ndarray
    users: list[str]
    valid_known: list[np.ndarray]
    test_known: list[np.ndarray]
    cold_items: np.ndarray | None = None
    valid_cold: np.ndarray | None = None
    test_cold: np.ndarray | None = None
    train_users: np.ndarray | None = None
    train_skip: np.ndarray | None = None

    @classmethod
    def leave_one_out(
        cls,
        sequences: Sequences,
        max_len: int = 50,
        cold_items: np.ndarray | None = None,
        train_users: np.ndarray | None = None,
        stride: int | None = None,
    ) -> Split:
        """The split of `sequences`.

        Args:
            cold_items (`np.ndarray` of catalog indices, *optional*): cold-start items. They are removed from
                every training sequence and every history, so a model never sees them before it is asked to
                rank them; they remain validation and test targets, marked in `valid_cold` / `test_cold`.
            train_users (`np.ndarray` of bool, *optional*): per user, whether their sequence trains (a
                data-efficiency run trains on a share of the users); every user is evaluated either way.
            stride (`int`, *optional*): how far apart the ends of a long user's training windows are, from 1 to
                `max_len` (the default). Each window trains only its last `stride` targets (the window before it
                trains the others, with more history), so a target at position j of the user's training items is
                trained once, with at least min(j, `max_len - stride + 1`) items before it, at about
                `max_len / stride` times the sequences.
        """
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        stride = max_len if stride is None else stride
        if not 1 <= stride <= max_len:
            raise ValueError(f"the training stride (--train_stride) must be in [1, max_len = {max_len}], got {stride}")
        cold = np.zeros(0, dtype=np.int64) if cold_items is None else np.asarray(cold_items, dtype=np.int64)
        train, skip, valid_k, valid_t, test_k, test_t = [], [], [], [], [], []
        for user, seq in enumerate(sequences.items):
            if train_users is None or train_users[user]:
                for window, context in _windows(_without(seq[:-2], cold), max_len + 1, stride):
                    train.append(window)
                    skip.append(context)
            valid_k.append(seq[:-2])  # cold items included: the user consumed them, they are no candidates
            valid_t.append(seq[-2])
            test_k.append(seq[:-1])
            test_t.append(seq[-1])
        split = cls(
            train=train,
            valid_histories=[_without(known, cold)[-max_len:] for known in valid_k],
            valid_targets=np.asarray(valid_t, dtype=np.int64),
            test_histories=[_without(known, cold)[-max_len:] for known in test_k],
            test_targets=np.asarray(test_t, dtype=np.int64),
            users=list(sequences.user_ids),
            valid_known=valid_k,
            test_known=test_k,
            train_users=train_users,
            train_skip=np.asarray(skip, dtype=np.int64),
        )
        if cold_items is not None:
            split.cold_items = cold
            split.valid_cold = np.isin(split.valid_targets, cold)
            split.test_cold = np.isin(split.test_targets, cold)
        return split

    def train_counts(self, num_items: int) -> np.ndarray:
        """`(num_items,)` training interactions of each catalog item: the items before each training user's
        validation target, the cold items excepted (0)."""
        known = [k for user, k in enumerate(self.valid_known) if self.train_users is None or self.train_users[user]]
        counts = np.bincount(np.concatenate(known) if known else np.zeros(0, np.int64), minlength=num_items)
        if self.cold_items is not None:
            counts[self.cold_items] = 0
        return counts

    def evaluation(self, stage: str) -> tuple[list[np.ndarray], np.ndarray]:
        """`(histories, targets)` of `stage` (`"valid"` or `"test"`)."""
        if stage == "valid":
            return self.valid_histories, self.valid_targets
        if stage == "test":
            return self.test_histories, self.test_targets
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")


def _without(items: np.ndarray, cold: np.ndarray) -> np.ndarray:
    """`items` without the cold ones (which a model never reads)."""
    return items[~np.isin(items, cold)] if len(cold) else items


def _windows(seq: np.ndarray, size: int, stride: int) -> list[tuple[np.ndarray, int]]:
    """Cuts `seq` from its end into windows of at most `size` items whose ends are `stride` items apart
    (`stride = size - 1`: consecutive windows sharing one item). Returns `(window, skip)` pairs, oldest first: each
    window trains its last `stride` targets, the first window all those left, and `skip` is how many of a window's
    first targets are context only. Windows of < 2 items are dropped."""
    windows, end = [], len(seq)
    while end >= 2:
        start = max(0, end - size)
        first = 1 if start == 0 else end - stride  # the first target the window trains, as a position of `seq`
        windows.append((seq[start:end], first - start - 1))
        if start == 0:
            break
        end -= stride
    return windows[::-1]


def choose_train_users(num_users: int, fraction: float, seed: int = 0) -> np.ndarray:
    """`(num_users,)` bool: a seeded share `fraction` of the users (at least one). The users of a smaller fraction
    are among those of a larger one with the same seed (one permutation, cut at each size), so the points of a
    data-efficiency curve differ only in how much data they get."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train user fraction must be in (0, 1], got {fraction}")
    keep = np.zeros(num_users, dtype=bool)
    keep[np.random.default_rng(seed).permutation(num_users)[: max(1, math.ceil(fraction * num_users))]] = True
    return keep


def choose_cold_items(sequences: Sequences, fraction: float, seed: int = 0) -> np.ndarray:
    """A fixed-seed sample of `fraction` of the items that occur in `sequences`, as sorted catalog indices."""
    if not 0 < fraction < 1:
        raise ValueError(f"cold-start fraction must be in (0, 1), got {fraction}")
    items = np.unique(np.concatenate(sequences.items))
    count = max(1, round(fraction * len(items)))
    return np.sort(np.random.default_rng(seed).choice(items, size=count, replace=False))
