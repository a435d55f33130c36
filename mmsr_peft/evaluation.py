"""Full-ranking evaluation: every catalog item is a candidate; HR@K, NDCG@K and MRR@K of the held-out target."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.collate import pad_histories
from .data.processing import ItemInputs
from .sharding import Shards

DEFAULT_KS = (10, 20)
DEFAULT_CHUNK_SIZE = 65536  # items scored at once by top-k, and by ranking on a GPU: (users x chunk) floats
CPU_CHUNK_SCORES = 2**18  # scores per ranking chunk on a CPU (1 MiB of float32, see `ranking_chunk_size`)
MISS = 2**62  # rank given to a target that is not among the candidates
PROTOCOL = (
    "leave-one-out by time (last item = test, second last = validation); full ranking over every item of the "
    "domain's catalog; every item the user interacted with before the target (the whole known history, not only "
    "the last max_len items the model reads) is excluded from the candidates, so a target that repeats one of them "
    "counts as a miss; ties are counted against the target (pessimistic rank); HR@K equals Recall@K with one target."
)
# What `evaluate(exclude=...)` removes from each case's candidates: the main protocol and two secondary columns.
EXCLUSIONS = {
    "history": "the user's whole known history (main protocol)",
    "window": "the last max_len history items only, those the model reads",
    "none": "nothing: history items stay candidates (RecBole's protocol for sequential models)",
}
# Lower edges of the popularity buckets a target is reported in, by its number of training interactions.
POPULARITY_EDGES = (0, 1, 10, 100, 1000)
COLD_SHELF = "cold, among cold items"  # cold targets ranked against the cold items only: a "new arrivals" shelf
# a case's value of each metric from the 0-based rank of its target, when that rank is under the cut-off K
CASE_METRICS = {
    "hr": lambda ranks: np.ones_like(ranks),
    "ndcg": lambda ranks: 1.0 / np.log2(ranks + 2.0),
    "mrr": lambda ranks: 1.0 / (ranks + 1.0),
}
RANKS_FILE = "test_ranks.npy"  # a run's main-protocol rank of each test case (`EvaluationReport.ranks`)


@dataclass
class EvalSet:
    """Evaluation cases of one domain.

    Attributes:
        name (`str`): the domain.
        histories (`list[np.ndarray]`): catalog indices, oldest first (at most `max_len`): what the model reads.
        targets (`np.ndarray`): catalog index of each held-out item.
        item_range (`tuple[int, int]`): the candidates: catalog rows `[start, end)` (this domain's items).
        cold (`np.ndarray`, *optional*): True for each case whose target is a cold-start item (see
            `Split.leave_one_out`'s `cold_items`).
        known (`list[np.ndarray]`, *optional*): every item of the user before the target, excluded from the
            candidates (default: `histories`).
        cold_items (`np.ndarray`, *optional*): catalog indices of the cold-start items of this domain; the cold
            cases are then also ranked against these items only (the `COLD_SHELF` row).
        item_counts (`np.ndarray`, *optional*): training interactions of each item of `item_range`; the metrics
            are then also reported by the target's popularity bucket (`POPULARITY_EDGES`).
    """

    name: str
    histories: list[np.ndarray]
    targets: np.ndarray
    item_range: tuple[int, int]
    cold: np.ndarray | None = None
    known: list[np.ndarray] | None = None
    cold_items: np.ndarray | None = None
    item_counts: np.ndarray | None = None

    def __post_init__(self):
        start, end = self.item_range
        outside = np.flatnonzero((np.asarray(self.targets) < start) | (np.asarray(self.targets) >= end))
        if len(outside):
            raise ValueError(
                f"evaluation set {self.name!r}: {len(outside)} targets outside its candidates, catalog rows "
                f"[{start}, {end}): case {outside[0]} has target {self.targets[outside[0]]}"
            )

    def excluded(self, exclude: str) -> list[np.ndarray] | None:
        """The items removed from each case's candidates under `exclude` (one of `EXCLUSIONS`)."""
        if exclude not in EXCLUSIONS:
            raise ValueError(f"unknown exclude {exclude!r}; valid: {', '.join(EXCLUSIONS)}")
        if exclude == "none":
            return None
        return self.known if exclude == "history" and self.known is not None else self.histories


def rank_metrics(ranks: np.ndarray, ks=DEFAULT_KS) -> dict[str, float]:
    """Mean HR@K, NDCG@K and MRR@K from 0-based ranks of the target (0 = ranked first)."""
    ranks = np.asarray(ranks, dtype=np.float64)  # once, not once per metric
    return {f"{name}@{k}": float(case_metric(ranks, f"{name}@{k}").mean()) for k in ks for name in CASE_METRICS}


def random_metrics(num_candidates: np.ndarray, ks=DEFAULT_KS) -> dict[str, float]:
    """Expected metrics of a uniformly random ranking, given each case's number of candidates."""
    metrics = {f"{name}@{k}": 0.0 for k in ks for name in ("hr", "ndcg", "mrr")}
    for n in np.asarray(num_candidates):
        for k in ks:
            top = np.arange(min(k, n))
            metrics[f"hr@{k}"] += len(top) / n
            metrics[f"ndcg@{k}"] += float((1.0 / np.log2(top + 2.0)).sum()) / n
            metrics[f"mrr@{k}"] += float((1.0 / (top + 1.0)).sum()) / n
    return {key: value / max(1, len(num_candidates)) for key, value in metrics.items()}


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each target among its row's candidates; ties count against the target.

    Args:
        scores: `(B, N)`; targets: `(B,)` column of the target; exclude: `(B, N)` True for non-candidates.
    """
    target_scores = scores.gather(1, targets[:, None])  # (B, 1)
    ahead = scores >= target_scores
    ranks = ahead.sum(1) - 1 if exclude is None else (ahead & ~exclude).sum(1) - 1
    if exclude is not None:
        ranks = ranks.masked_fill(exclude.gather(1, targets[:, None]).squeeze(1), MISS)  # an excluded target: a miss
    return ranks.masked_fill(~torch.isfinite(target_scores[:, 0]), MISS)  # a NaN score: a miss, not rank 0


def history_mask(histories: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """`(B, end - start)` True where catalog row `start + j` is in the row's history (-1 = padding)."""
    local = histories - start
    inside = (histories >= 0) & (local >= 0) & (local < end - start)
    mask = torch.zeros(len(histories), end - start + 1, dtype=torch.bool, device=histories.device)
    mask.scatter_(1, torch.where(inside, local, end - start), True)
    return mask[:, :-1]


def _distinct_rows(histories: torch.Tensor) -> torch.Tensor:
    """`histories` (`(B, T)` item rows, -1 = padding) with each row's repeated items set to -1, so each counts once."""
    rows = histories.sort(dim=1).values
    repeated = torch.zeros_like(rows, dtype=torch.bool)
    repeated[:, 1:] = rows[:, 1:] == rows[:, :-1]
    return rows.masked_fill(repeated, -1)


def with_item_bias(users: torch.Tensor, items: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(users', items')` whose products are `users @ items.T + bias`: a column of ones on the users, `bias` (one
    value per item) on the items, so every ranking function scores with the bias unchanged."""
    ones = users.new_ones(len(users), 1)
    return torch.cat([users, ones], dim=1), torch.cat([items, bias.to(items.dtype)[:, None]], dim=1)


def ranking_chunk_size(users: torch.Tensor) -> int:
    """Items to rank at once for `users`: on a GPU `DEFAULT_CHUNK_SIZE` (few large kernels); on a CPU about
    `CPU_CHUNK_SCORES` scores a chunk, which stay in the processor's caches through the comparisons and counts
    that follow the product (1,024 users against 1M items: 4.3 s in chunks of 4,096 items, 11.1 s in chunks of
    65,536), and never fewer than 4,096 items, so catalogs up to that size are scored in one piece."""
    if users.device.type != "cpu":
        return DEFAULT_CHUNK_SIZE
    return max(4096, CPU_CHUNK_SCORES // max(1, len(users)))


def chunked_ranks(
    users: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    histories: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """`target_ranks` of `users @ items.T` without materialising more than `(B, chunk_size)` scores (by default
    `ranking_chunk_size(users)`).

    Args:
        users: `(B, D)`; items: `(N, D)`, the candidates; targets: `(B,)` rows of `items`;
        histories: `(B, T)` rows of `items` to exclude (-1 = padding), or None to rank against every item.
    """
    return chunked_ranks_under(users, items, targets, [histories], chunk_size)[0]


def chunked_ranks_under(
    users: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    exclusions: list[torch.Tensor | None],
    chunk_size: int | None = None,
) -> list[torch.Tensor]:
    """`chunked_ranks` under each of several exclusions (`(B, T)` rows to exclude, or None), from one scoring of
    the catalog: each chunk's scores are computed once and compared against every exclusion."""
    if len(targets) and (targets.min() < 0 or targets.max() >= len(items)):
        raise ValueError(f"targets must be rows of the {len(items)} items; got {targets.min()}..{targets.max()}")
    chunk_size = chunk_size or ranking_chunk_size(users)
    # Each target's score is read from the very product that scores its competitors (the same shapes, so the same
    # BLAS kernel on any CPU): a target and an item that scores alike tie exactly. With several chunks, the chunks
    # that hold targets are scored twice; with one chunk (catalogs up to `chunk_size`), once.
    chunks = [(first, min(first + chunk_size, len(items))) for first in range(0, len(items), chunk_size)]
    target_scores, scores = users.new_empty(len(users), 1), None
    for first, last in chunks:
        inside = (targets >= first) & (targets < last)
        if inside.any():
            scores = users @ items[first:last].T  # (B, chunk)
            target_scores[inside] = scores[inside].gather(1, (targets[inside] - first)[:, None])
    # An exclusion's rank is the count of items ahead less the excluded items among them, read at the excluded
    # items' columns (a (B, T) gather, not a (B, chunk) mask per exclusion); each item once, however often repeated.
    distinct = [None if histories is None else _distinct_rows(histories) for histories in exclusions]
    ranks = [torch.zeros(len(users), dtype=torch.long, device=users.device) for _ in exclusions]
    for first, last in chunks:
        if len(chunks) > 1 or scores is None:
            scores = users @ items[first:last].T
        ahead = scores >= target_scores
        inside = torch.nonzero((targets >= first) & (targets < last)).squeeze(1)
        ahead[inside, targets[inside] - first] = False  # the target does not count against itself
        count = ahead.sum(1, dtype=torch.int32)  # (int64 accumulation is twice as slow on a CPU)
        for rank, rows in zip(ranks, distinct, strict=True):
            rank += count
            if rows is not None:
                here = (rows >= first) & (rows < last)
                rank -= (ahead.gather(1, torch.where(here, rows - first, 0)) & here).sum(1)
    for rank, histories in zip(ranks, exclusions, strict=True):
        if histories is not None:
            excluded = ((histories == targets[:, None]) & (histories >= 0)).any(1)
            rank.masked_fill_(excluded, MISS)  # a target in the history is not a candidate: a miss
        # a NaN target score compares False with everything and would rank first: a miss, so a diverged model scores 0
        rank.masked_fill_(~torch.isfinite(target_scores[:, 0]), MISS)
    return ranks


def chunked_topk(
    users: torch.Tensor,
    items: torch.Tensor,
    k: int,
    histories: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(values, indices)` of the top-`k` items per user, scoring `chunk_size` items at a time (no full sort)."""
    k = min(k, len(items))
    best_values = users.new_full((len(users), 0), float("-inf"))
    best_indices = torch.zeros(len(users), 0, dtype=torch.long, device=users.device)
    for first in range(0, len(items), chunk_size):
        last = min(first + chunk_size, len(items))
        scores = users @ items[first:last].T
        if histories is not None:
            scores.masked_fill_(history_mask(histories, first, last), float("-inf"))
        top = scores.topk(min(k, last - first), dim=1)
        values = torch.cat([best_values, top.values], dim=1)
        indices = torch.cat([best_indices, top.indices + first], dim=1)
        keep = values.topk(min(k, values.shape[1]), dim=1).indices
        best_values, best_indices = values.gather(1, keep), indices.gather(1, keep)
    return best_values, best_indices


@torch.no_grad()
def evaluate(
    model,
    catalog_inputs: ItemInputs,
    eval_sets: list[EvalSet],
    ks=DEFAULT_KS,
    batch_size: int = 256,
    exclude: str = "history",
    progress: bool = True,
    chunk_size: int | None = None,
    accelerator=None,
) -> dict[str, dict[str, float]]:
    """Full-ranking metrics per evaluation set, plus `"all"` (weighted by number of cases). A set with cold items
    also reports `"<name> warm"` and `"<name> cold"`: the cases whose target is a warm / cold item, and
    `"<name> cold, among cold items"`: the cold cases ranked against the cold items only. A set with `item_counts`
    also reports `"<name> popularity <bucket>"`: the cases whose target had that many training interactions.
    `exclude` (one of `EXCLUSIONS`) says which items leave each case's candidates: by default the user's whole
    history.

    Catalog embeddings are computed once; each batch of users is scored with one matrix multiply per chunk of
    `chunk_size` items (by default `ranking_chunk_size`), so memory stays bounded for any catalog size. With an
    `accelerator` of several processes, each process embeds its share of the catalog and ranks its share of the
    users, and every process returns the metrics of all of them.
    """
    results = evaluate_exclusions(
        model, catalog_inputs, eval_sets, (exclude,), ks, batch_size, progress, chunk_size, accelerator
    )
    return results[exclude]


def evaluate_exclusions(
    model,
    catalog_inputs: ItemInputs,
    eval_sets: list[EvalSet],
    excludes=tuple(EXCLUSIONS),
    ks=DEFAULT_KS,
    batch_size: int = 256,
    progress: bool = True,
    chunk_size: int | None = None,
    accelerator=None,
) -> dict[str, dict[str, dict[str, float]]]:
    """`{exclude: evaluate(..., exclude=exclude)}` for each of `excludes` (the main protocol and the secondary
    columns of a results table), from one pass: the catalog is embedded and each user encoded once (with an
    `accelerator` of several processes: each process its share, see `evaluate`)."""
    results, _ = _ranked(model, catalog_inputs, eval_sets, excludes, ks, batch_size, progress, chunk_size, accelerator)
    return results


@torch.no_grad()
def _ranked(
    model, catalog_inputs, eval_sets, excludes, ks, batch_size, progress, chunk_size, accelerator
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, np.ndarray]]:
    """`evaluate_exclusions`' metrics, and under each exclusion the 0-based rank of every case (the sets' cases end
    to end, in order; `MISS` for a target that is not among its candidates)."""
    was_training = model.training
    model.eval()
    try:
        shards = Shards(accelerator)
        if shards.count > 1:  # each process embeds its share of the catalog; every process gets all of it
            first, last = shards.range(len(catalog_inputs))
            own = model.embed_catalog(catalog_inputs.select(torch.arange(first, last)), batch_size)  # (share, D)
            item_embeddings = shards.gather(own, len(catalog_inputs))  # (N, D)
        else:
            item_embeddings = model.embed_catalog(catalog_inputs, batch_size)  # (N, D)
        device = item_embeddings.device
        results = {exclude: {} for exclude in excludes}
        all_ranks = {exclude: [] for exclude in excludes}
        boost = getattr(getattr(model, "config", None), "new_item_boost", 0.0)  # trained models have one
        for eval_set in eval_sets:
            start, end = eval_set.item_range
            candidates, bias = item_embeddings[start:end], None
            if boost and eval_set.item_counts is not None:  # items without training interactions: new arrivals
                bias = torch.as_tensor(eval_set.item_counts == 0, device=device, dtype=candidates.dtype) * boost
                candidates = torch.cat([candidates, bias[:, None]], dim=1)  # users get a column of ones: + bias
            excluded = {exclude: eval_set.excluded(exclude) for exclude in excludes}
            shelf = _ColdShelf(eval_set, candidates) if eval_set.cold_items is not None else None
            ranks = {exclude: [] for exclude in excludes}
            shelf_ranks = {exclude: [] for exclude in excludes}
            own_first, own_last = shards.range(len(eval_set.targets))  # this process's users (all of them with one)
            batches = [(b, min(b + batch_size, own_last)) for b in range(own_first, own_last, batch_size)]
            for first, last in tqdm(batches, desc=f"eval {eval_set.name}", disable=not progress, leave=False):
                histories = pad_histories(eval_set.histories[first:last]).to(device)
                targets = torch.as_tensor(eval_set.targets[first:last], device=device) - start
                users = model.user_embeddings(item_embeddings, histories).float()  # (B, D)
                if bias is not None:
                    users = torch.cat([users, users.new_ones(len(users), 1)], dim=1)
                rows = {}  # each exclusion's items as rows of the set (-1: padding), None: nothing excluded
                for exclude, items in excluded.items():
                    known = pad_histories(items[first:last]).to(device) if items is not None else None  # (B, T)
                    rows[exclude] = torch.where(known >= 0, known - start, -1) if known is not None else None
                under = chunked_ranks_under(users, candidates, targets, list(rows.values()), chunk_size)
                for (exclude, local), batch_ranks in zip(rows.items(), under, strict=True):
                    ranks[exclude].append(batch_ranks.cpu())
                    if shelf is not None:  # a rank for every case, MISS for the warm ones (dropped below)
                        cases = torch.as_tensor(eval_set.cold[first:last], device=device)
                        cold_ranks = torch.full((last - first,), MISS, dtype=torch.long)
                        cold_ranks[cases.cpu()] = shelf.ranks(users[cases], targets[cases], local, cases, chunk_size)
                        shelf_ranks[exclude].append(cold_ranks)
            for exclude in excludes:
                set_ranks = shards.gather(_cat_ranks(ranks[exclude]), len(eval_set.targets)).numpy()
                all_ranks[exclude].append(set_ranks)
                results[exclude].update(_set_metrics(eval_set, set_ranks, ks))
                if shelf is not None and eval_set.cold.any():
                    cold_ranks = shards.gather(_cat_ranks(shelf_ranks[exclude]), len(eval_set.targets)).numpy()
                    results[exclude][f"{eval_set.name} {COLD_SHELF}"] = rank_metrics(cold_ranks[eval_set.cold], ks)
        case_ranks = {exclude: np.concatenate(all_ranks[exclude]) for exclude in excludes}
        for exclude in excludes:
            results[exclude]["all"] = rank_metrics(case_ranks[exclude], ks)
    finally:
        model.train(was_training)
    return results, case_ranks


def _cat_ranks(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


class _ColdShelf:
    """Ranks cold targets against the cold items of their set only (a "new arrivals" shelf)."""

    def __init__(self, eval_set: EvalSet, candidates: torch.Tensor):
        """`candidates`: the embeddings of the set's items, `item_range` in order."""
        start, end = eval_set.item_range
        cold = torch.as_tensor(eval_set.cold_items - start, device=candidates.device)
        self.items = candidates[cold]  # (C, D)
        self.position = torch.full((end - start + 1,), -1, dtype=torch.long, device=cold.device)  # last: padding
        self.position[cold] = torch.arange(len(cold), device=cold.device)

    def ranks(self, users, targets, local, cases, chunk_size) -> torch.Tensor:
        """Ranks of the cold `targets` (set-local rows) of `users`; `local`: the batch's excluded rows or None."""
        histories = None if local is None else self.position[local[cases]]  # -1 (padding) maps to the last: -1
        return chunked_ranks(users, self.items, self.position[targets], histories, chunk_size).cpu()


def popularity_bucket(count: int) -> str:
    """The name of the `POPULARITY_EDGES` bucket of an item with `count` training interactions ("0", "1-9", ...)."""
    lower = max(edge for edge in POPULARITY_EDGES if edge <= count)
    later = [edge for edge in POPULARITY_EDGES if edge > lower]
    if lower == 0:
        return "0"
    return f"{lower}-{later[0] - 1}" if later else f"{lower}+"


def _set_metrics(eval_set: EvalSet, ranks: np.ndarray, ks) -> dict[str, dict[str, float]]:
    """The metrics of one evaluation set, of its warm and cold cases when it has a cold-start split, and of each
    popularity bucket of the targets when it has `item_counts` (a group without cases is left out, not NaN)."""
    metrics = {eval_set.name: rank_metrics(ranks, ks)}
    if eval_set.cold is not None:
        for part, cases in (("warm", ~eval_set.cold), ("cold", eval_set.cold)):
            if cases.any():
                metrics[f"{eval_set.name} {part}"] = rank_metrics(ranks[cases], ks)
    if eval_set.item_counts is not None:
        counts = eval_set.item_counts[eval_set.targets - eval_set.item_range[0]]
        buckets = np.array([popularity_bucket(int(c)) for c in counts])
        for edge in POPULARITY_EDGES:
            cases = buckets == popularity_bucket(edge)
            if cases.any():
                metrics[f"{eval_set.name} popularity {popularity_bucket(edge)}"] = rank_metrics(ranks[cases], ks)
    return metrics


class EvaluationReport(NamedTuple):
    """What a run reports on its test split (`evaluate_report`).

    Attributes:
        main (`dict`): the main protocol's rows for the results table.
        by_popularity (`dict`): its `"<name> popularity <bucket>"` rows, which `metrics.json` keeps apart
            (`test_by_popularity`).
        other_exclusions (`dict`): the secondary columns (`test_other_exclusions`).
        ranks (`np.ndarray`): the main protocol's 0-based rank of every case, the sets' cases end to end
            (`MISS`: the target was not a candidate), written to `RANKS_FILE` for paired comparisons
            (`paired_bootstrap`).
    """

    main: dict
    by_popularity: dict
    other_exclusions: dict
    ranks: np.ndarray


def evaluate_report(model, catalog_inputs, eval_sets, batch_size: int = 256, accelerator=None) -> EvaluationReport:
    """What a run reports on its test split, from one `evaluate_exclusions` pass (see `EvaluationReport`)."""
    other, ranks = _ranked(
        model, catalog_inputs, eval_sets, tuple(EXCLUSIONS), DEFAULT_KS, batch_size, True, None, accelerator
    )
    main = other.pop("history")
    by_popularity = {key: main.pop(key) for key in [key for key in main if " popularity " in key]}
    return EvaluationReport(main, by_popularity, other, ranks["history"])


def case_metric(ranks: np.ndarray, metric: str = "ndcg@10") -> np.ndarray:
    """Each case's value of `metric` ("hr@K", "ndcg@K" or "mrr@K") from its 0-based rank (`rank_metrics` is their
    mean)."""
    name, _, k = metric.partition("@")
    if name not in CASE_METRICS or not k.isdigit():
        raise ValueError(f"unknown metric {metric!r}; expected hr@K, ndcg@K or mrr@K")
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < int(k), CASE_METRICS[name](ranks), 0.0)


def paired_bootstrap(
    ranks_a, ranks_b, metric: str = "ndcg@10", samples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Compares two models on the same test cases from their ranks (`RANKS_FILE`: `(cases,)`, or `(runs, cases)`
    for several seeds of each, a case then counting its mean over them): the mean of `metric` of each, their ratio
    and difference, and percentile bootstrap intervals of both. The bootstrap resamples cases with replacement (the
    users are what varies between evaluations), and both models are scored on the same resample, so what a case's
    difficulty gives both cancels out."""
    a, b = case_metric(ranks_a, metric), case_metric(ranks_b, metric)
    if a.shape != b.shape or a.ndim not in (1, 2) or not a.size:
        raise ValueError(f"paired comparison needs the same cases on both sides: {a.shape} against {b.shape}")
    if a.ndim == 2:  # (runs, cases): each case's mean over the runs
        a, b = a.mean(0), b.mean(0)
    rng, mean_a, mean_b = np.random.default_rng(seed), np.empty(samples), np.empty(samples)
    for first in range(0, samples, 256):  # (256, cases) indices at a time: bounded memory for any number of cases
        picks = rng.integers(0, len(a), size=(min(256, samples - first), len(a)))
        mean_a[first : first + len(picks)], mean_b[first : first + len(picks)] = a[picks].mean(1), b[picks].mean(1)
    tail = 100 * (1 - confidence) / 2
    ratios = mean_a / np.where(mean_b > 0, mean_b, np.nan)
    return {
        "cases": len(a),
        "a": float(a.mean()),
        "b": float(b.mean()),
        "ratio": float(a.mean() / b.mean()) if b.mean() > 0 else math.nan,
        "ratio_low": float(np.nanpercentile(ratios, tail)),
        "ratio_high": float(np.nanpercentile(ratios, 100 - tail)),
        "difference": float(a.mean() - b.mean()),
        "difference_low": float(np.percentile(mean_a - mean_b, tail)),
        "difference_high": float(np.percentile(mean_a - mean_b, 100 - tail)),
    }


def random_baseline(eval_sets: list[EvalSet], ks=DEFAULT_KS, exclude: str = "history") -> dict[str, float]:
    """Expected metrics of a random ranking over the same candidates as `evaluate(exclude=...)`: a target that is
    one of its case's excluded items is not a candidate, a miss for every model, and so for this one too."""
    sizes, misses = [], 0
    for eval_set in eval_sets:
        n = eval_set.item_range[1] - eval_set.item_range[0]
        excluded = eval_set.excluded(exclude)
        for case, target in enumerate(eval_set.targets.tolist()):
            removed = set(excluded[case].tolist()) if excluded is not None else set()
            if target in removed:
                misses += 1
            else:
                sizes.append(n - len(removed))
    share = len(sizes) / max(1, len(sizes) + misses)  # the cases whose target is a candidate
    return {key: value * share for key, value in random_metrics(np.asarray(sizes), ks).items()}


def format_table(
    rows: dict[str, dict[str, float]], ks=DEFAULT_KS, extra: dict[str, dict[str, str]] | None = None
) -> str:
    """A Markdown table: one row per model, HR/NDCG/MRR at each K (+ optional extra columns)."""
    metric_names = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg", "mrr")]
    extra_names = list(next(iter(extra.values())).keys()) if extra else []
    header = ["model", *[m.upper() for m in metric_names], *extra_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in rows.items():
        cells = [f"{metrics[m]:.4f}" if not math.isnan(metrics[m]) else "-" for m in metric_names]
        cells += [extra[name][e] for e in extra_names] if extra else []
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)
