"""Full-ranking evaluation: every catalog item is a candidate; HR@K, NDCG@K and MRR@K of the held-out target."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.collate import ItemInputs, pad_histories

DEFAULT_KS = (10, 20)
MISS = 2**62  # rank given to a target that is not among the candidates
PROTOCOL = (
    "leave-one-out by time (last item = test, second last = validation); full ranking over every item of the "
    "domain's catalog; items in the user's history (its last max_len items, as the model reads it) are excluded "
    "from the candidates, so a target that repeats one of them counts as a miss; ties are counted against the "
    "target (pessimistic rank); HR@K equals Recall@K with one target."
)


@dataclass
class EvalSet:
    """Evaluation cases of one domain.

    Attributes:
        name (`str`): the domain.
        histories (`list[np.ndarray]`): catalog indices, oldest first (at most `max_len`).
        targets (`np.ndarray`): catalog index of each held-out item.
        item_range (`tuple[int, int]`): the candidates: catalog rows `[start, end)` (this domain's items).
    """

    name: str
    histories: list[np.ndarray]
    targets: np.ndarray
    item_range: tuple[int, int]


def rank_metrics(ranks: np.ndarray, ks=DEFAULT_KS) -> dict[str, float]:
    """Mean HR@K, NDCG@K and MRR@K from 0-based ranks of the target (0 = ranked first)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    metrics = {}
    for k in ks:
        hit = ranks < k
        metrics[f"hr@{k}"] = float(hit.mean())
        metrics[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
        metrics[f"mrr@{k}"] = float(np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean())
    return metrics


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
    if exclude is None:
        return ahead.sum(1) - 1
    ranks = (ahead & ~exclude).sum(1) - 1
    return ranks.masked_fill(exclude.gather(1, targets[:, None]).squeeze(1), MISS)  # an excluded target is a miss


def history_mask(histories: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """`(B, end - start)` True where catalog row `start + j` is in the row's history (-1 = padding)."""
    local = histories - start
    inside = (histories >= 0) & (local >= 0) & (local < end - start)
    mask = torch.zeros(len(histories), end - start + 1, dtype=torch.bool, device=histories.device)
    mask.scatter_(1, torch.where(inside, local, end - start), True)
    return mask[:, :-1]


@torch.no_grad()
def evaluate(
    model,
    catalog_inputs: ItemInputs,
    eval_sets: list[EvalSet],
    ks=DEFAULT_KS,
    batch_size: int = 256,
    exclude_history: bool = True,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Full-ranking metrics per evaluation set, plus `"all"` (weighted by number of cases).

    Catalog embeddings are computed once; each batch of users is scored with one matrix multiply.
    """
    was_training = model.training
    model.eval()
    item_embeddings = model.embed_catalog(catalog_inputs, batch_size)  # (N, D)
    device = item_embeddings.device
    results, all_ranks = {}, []
    for eval_set in eval_sets:
        start, end = eval_set.item_range
        ranks = []
        batches = range(0, len(eval_set.targets), batch_size)
        for first in tqdm(batches, desc=f"eval {eval_set.name}", disable=not progress, leave=False):
            histories = pad_histories(eval_set.histories[first : first + batch_size]).to(device)
            targets = torch.as_tensor(eval_set.targets[first : first + batch_size], device=device) - start
            users = model.user_embeddings(item_embeddings, histories)  # (B, D)
            scores = users.float() @ item_embeddings[start:end].T  # (B, N_domain)
            exclude = history_mask(histories, start, end) if exclude_history else None
            ranks.append(target_ranks(scores, targets, exclude).cpu())
        ranks = torch.cat(ranks).numpy()
        all_ranks.append(ranks)
        results[eval_set.name] = rank_metrics(ranks, ks)
    results["all"] = rank_metrics(np.concatenate(all_ranks), ks)
    model.train(was_training)
    return results


def random_baseline(eval_sets: list[EvalSet], ks=DEFAULT_KS, exclude_history: bool = True) -> dict[str, float]:
    """Expected metrics of a random ranking over the same candidates as `evaluate`."""
    sizes = []
    for eval_set in eval_sets:
        n = eval_set.item_range[1] - eval_set.item_range[0]
        for history in eval_set.histories:
            sizes.append(n - len(set(history.tolist())) if exclude_history else n)
    return random_metrics(np.asarray(sizes), ks)


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
