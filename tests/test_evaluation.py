import math

import numpy as np
import pytest
import torch
from testing_utils import assert_topk_agree
from torch import nn

from mmsr_peft.data.processing import ItemInputs
from mmsr_peft.evaluation import (
    EXCLUSIONS,
    MISS,
    EvalSet,
    case_metric,
    chunked_ranks,
    chunked_ranks_under,
    chunked_topk,
    evaluate,
    evaluate_exclusions,
    format_table,
    history_mask,
    paired_bootstrap,
    popularity_bucket,
    random_baseline,
    random_metrics,
    rank_metrics,
    ranking_chunk_size,
    target_ranks,
)


def test_rank_metrics_hand_computed():
    metrics = rank_metrics(np.array([0, 1, 4, 12, 30]), ks=(10, 20))
    expected = {
        "hr@10": 3 / 5,
        "ndcg@10": (1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5,
        "mrr@10": (1 + 1 / 2 + 1 / 5) / 5,
        "hr@20": 4 / 5,
        "ndcg@20": (1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(14)) / 5,
        "mrr@20": (1 + 1 / 2 + 1 / 5 + 1 / 13) / 5,
    }
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key


def test_rank_metrics_cutoff_is_exclusive():
    # rank 9 is the 10th item: a hit at 10; rank 10 is the 11th: a miss.
    metrics = rank_metrics(np.array([9, 10]), ks=(10,))
    assert metrics["hr@10"] == 0.5
    assert metrics["ndcg@10"] == pytest.approx((1 / math.log2(11)) / 2)
    assert metrics["mrr@10"] == pytest.approx((1 / 10) / 2)


def test_random_metrics_equals_brute_force_average():
    sizes = [1, 3, 7, 10, 25]
    ks = (5, 10)
    expected = {f"{m}@{k}": 0.0 for k in ks for m in ("hr", "ndcg", "mrr")}
    for n in sizes:
        for position in range(n):  # the target is equally likely at every position
            for k in ks:
                hit = position < k
                expected[f"hr@{k}"] += hit / n / len(sizes)
                expected[f"ndcg@{k}"] += hit / math.log2(position + 2) / n / len(sizes)
                expected[f"mrr@{k}"] += hit / (position + 1) / n / len(sizes)
    metrics = random_metrics(np.array(sizes), ks)
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key


def test_target_ranks_ties_count_against_the_target():
    scores = torch.tensor(
        [
            [0.9, 0.5, 0.5, 0.1, 0.7],
            [0.9, 0.5, 0.5, 0.1, 0.7],
            [0.9, 0.5, 0.5, 0.1, 0.7],
            [0.3, 0.3, 0.3, 0.3, 0.3],
        ]
    )
    ranks = target_ranks(scores, torch.tensor([1, 2, 0, 0]))
    # 0.5 ties with the other 0.5 and is behind 0.9 and 0.7: rank 3 (not 2) for both tied targets.
    assert ranks.tolist() == [3, 3, 0, 4]


def test_target_ranks_with_exclusion():
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1, 0.7], [0.9, 0.5, 0.5, 0.1, 0.7]])
    exclude = torch.tensor([[True, False, True, False, False], [False, False, False, False, True]])
    ranks = target_ranks(scores, torch.tensor([1, 3]), exclude)
    # row 0: 0.9 and the tied 0.5 are excluded, only 0.7 is ahead; row 1: 0.7 is excluded, 0.9 and both 0.5 ahead.
    assert ranks.tolist() == [1, 3]


def test_excluded_target_is_a_miss():
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.3, 0.4, 0.5] + [0.0] * 20])
    exclude = torch.zeros_like(scores, dtype=torch.bool)
    exclude[0, 1] = True
    ranks = target_ranks(scores, torch.tensor([1]), exclude)
    num_candidates = int((~exclude).sum())
    assert int(ranks[0]) >= num_candidates  # ranked below every real candidate despite the best score
    assert rank_metrics(ranks.numpy(), ks=(10, 20))["hr@20"] == 0.0


def test_excluded_target_is_a_miss_even_when_k_covers_the_catalog():
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.3, 0.4]])
    exclude = torch.tensor([[False, True, False, False, False]])
    ranks = target_ranks(scores, torch.tensor([1]), exclude)
    assert rank_metrics(ranks.numpy(), ks=(10,))["hr@10"] == 0.0, f"excluded target counted as a hit: rank {ranks}"


def test_history_mask_padding_and_sub_range():
    histories = torch.tensor([[2, 5, -1, -1], [7, 3, 3, 8], [-1, -1, -1, -1]])
    mask = history_mask(histories, start=3, end=8)  # candidates: catalog rows 3..7
    assert mask.dtype == torch.bool
    assert mask.tolist() == [
        [False, False, True, False, False],  # 2 is below the range, -1 is padding
        [True, False, False, False, True],  # duplicates are fine; 8 == end is outside
        [False, False, False, False, False],
    ]


def test_random_baseline_excludes_history_items():
    eval_set = EvalSet(
        "d",
        histories=[np.array([10, 11, 11]), np.array([12]), np.array([], dtype=np.int64)],
        targets=np.array([13, 14, 15]),
        item_range=(10, 30),
    )
    excluded = random_baseline([eval_set], ks=(10,))
    # 20 candidates minus the distinct history items: 18, 19, 20.
    assert excluded["hr@10"] == pytest.approx((10 / 18 + 10 / 19 + 10 / 20) / 3)
    assert excluded == pytest.approx(random_metrics(np.array([18, 19, 20]), ks=(10,)))
    full = random_baseline([eval_set], ks=(10,), exclude="none")
    assert full["hr@10"] == pytest.approx(10 / 20)
    assert full == pytest.approx(random_metrics(np.array([20, 20, 20]), ks=(10,)))


def test_random_baseline_counts_a_target_among_the_excluded_items_as_a_miss():
    """As `evaluate` does for every model: under an exclusion, a target that repeats an excluded item is no
    candidate, so it is a miss for random too; with nothing excluded it is one of the n candidates."""
    eval_set = EvalSet(
        "d",
        histories=[np.array([1]), np.array([2]), np.array([4])],  # what the model reads ("window")
        targets=np.array([3, 2, 5]),
        item_range=(0, 10),
        known=[np.array([3, 1]), np.array([2]), np.array([4])],  # the whole history ("history")
    )
    hr1 = {exclude: random_baseline([eval_set], ks=(1,), exclude=exclude)["hr@1"] for exclude in EXCLUSIONS}
    # case 1: a miss under "history" only; case 2: a miss under both exclusions; case 3: 9 candidates, or 10
    assert hr1 == pytest.approx({"history": (0 + 0 + 1 / 9) / 3, "window": (1 / 9 + 0 + 1 / 9) / 3, "none": 1 / 10})


def test_format_table():
    rows = {
        "id": {f"{m}@{k}": 0.5 for k in (10, 20) for m in ("hr", "ndcg", "mrr")},
        "modal": {f"{m}@{k}": 0.123456 for k in (10, 20) for m in ("hr", "ndcg", "mrr")} | {"mrr@20": math.nan},
    }
    extra = {"id": {"params": "1.0M"}, "modal": {"params": "2.0M"}}
    lines = format_table(rows, ks=(10, 20), extra=extra).splitlines()
    assert lines[0] == "| model | HR@10 | NDCG@10 | MRR@10 | HR@20 | NDCG@20 | MRR@20 | params |"
    assert lines[1] == "|" + "---|" * 8
    assert len(lines) == 2 + len(rows)
    assert lines[2] == "| id | 0.5000 | 0.5000 | 0.5000 | 0.5000 | 0.5000 | 0.5000 | 1.0M |"
    assert lines[3] == "| modal | 0.1235 | 0.1235 | 0.1235 | 0.1235 | 0.1235 | - | 2.0M |"


def test_format_table_without_extra_columns():
    lines = format_table({"m": {"hr@5": 1.0, "ndcg@5": 1.0, "mrr@5": 1.0}}, ks=(5,)).splitlines()
    assert lines == ["| model | HR@5 | NDCG@5 | MRR@5 |", "|---|---|---|---|", "| m | 1.0000 | 1.0000 | 1.0000 |"]


class _FixedScorer(nn.Module):
    """Every user scores item i with `preference[i]` (items are one-hot embeddings)."""

    def __init__(self, preference):
        super().__init__()
        self.preference = torch.tensor(preference)

    def embed_catalog(self, inputs, batch_size):
        return torch.eye(len(inputs))

    def user_embeddings(self, item_embeddings, histories):
        return self.preference.expand(len(histories), -1)


def test_evaluate_full_ranking_per_domain():
    model = _FixedScorer([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    model.train()
    catalog = ItemInputs(item_index=torch.arange(6))
    domain_a = EvalSet("a", [np.array([0]), np.array([1, 2])], np.array([1, 0]), item_range=(0, 3))
    domain_b = EvalSet("b", [np.array([5])], np.array([3]), item_range=(3, 6))
    results = evaluate(model, catalog, [domain_a, domain_b], ks=(1, 2), batch_size=1, progress=False)
    # a: target 1 behind item 2 (item 0 is history): rank 1; target 0 with 1, 2 excluded: rank 0.
    # b: only items 3..5 compete; 5 is history, 4 is ahead of 3: rank 1.
    assert results["a"] == pytest.approx(rank_metrics(np.array([1, 0]), ks=(1, 2)))
    assert results["b"] == pytest.approx(rank_metrics(np.array([1]), ks=(1, 2)))
    assert results["all"] == pytest.approx(rank_metrics(np.array([1, 0, 1]), ks=(1, 2)))
    assert model.training  # restored
    kept = evaluate(model, catalog, [domain_a, domain_b], ks=(1, 2), exclude="none", progress=False)
    assert kept["a"] == pytest.approx(rank_metrics(np.array([1, 2]), ks=(1, 2)))
    assert kept["b"] == pytest.approx(rank_metrics(np.array([2]), ks=(1, 2)))


def test_the_whole_known_history_leaves_the_candidates_not_only_the_window_the_model_reads():
    model = _FixedScorer([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    catalog = ItemInputs(item_index=torch.arange(7))
    # the model reads the last two items; the user also had 6 and 5 before them (the two best-scored items)
    eval_set = EvalSet("d", [np.array([0, 1])], np.array([2]), (0, 7), known=[np.array([6, 5, 0, 1])])
    ranks = {
        exclude: evaluate(model, catalog, [eval_set], ks=(1, 5), exclude=exclude, progress=False)["d"]["mrr@5"]
        for exclude in ("history", "window", "none")
    }
    # target 2 behind 3, 4 (history: 6, 5, 1, 0 excluded) | behind 3, 4, 5, 6 | behind 3, 4, 5, 6 (0, 1 score lower)
    assert ranks == pytest.approx({"history": 1 / 3, "window": 1 / 5, "none": 1 / 5})
    together = evaluate_exclusions(model, catalog, [eval_set], ks=(1, 5), progress=False)  # one pass for all three
    # exact: each exclusion goes through the same computation as its own evaluate() call
    assert {exclude: results["d"]["mrr@5"] for exclude, results in together.items()} == ranks
    assert random_baseline([eval_set], ks=(1,))["hr@1"] == pytest.approx(1 / 3)  # 7 items, 4 known
    assert random_baseline([eval_set], ks=(1,), exclude="window")["hr@1"] == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="valid: history, window, none"):
        evaluate(model, catalog, [eval_set], exclude="last", progress=False)


def test_chunked_ranks_equal_unchunked_ranks_with_ties_and_history():
    torch.manual_seed(0)
    items = torch.randn(50, 8).round()  # rounded: many exact ties
    users = torch.randn(16, 8).round()
    targets = torch.randint(0, 50, (16,))
    histories = torch.randint(-1, 50, (16, 6))
    histories[0, 2] = targets[0]  # a target in its history is a miss
    histories[1] = torch.tensor([7, 7, 7, 60, -5, 3])  # an item repeated excludes it once; other domains' rows: none
    scores = users @ items.T
    expected = target_ranks(scores, targets, history_mask(histories, 0, 50))
    # exact: integer-valued embeddings make every dot product exact in float32, whatever the kernel or chunking
    for chunk_size in (1, 7, 50, 1000):
        assert torch.equal(chunked_ranks(users, items, targets, histories, chunk_size), expected)
    assert chunked_ranks(users, items, targets, histories, 7)[0] == MISS
    assert torch.equal(chunked_ranks(users, items, targets, histories), expected)  # the default chunking
    # on a CPU, about 2^18 scores a chunk and catalogs up to 4,096 items in one piece
    assert [ranking_chunk_size(torch.zeros(n, 8)) for n in (1, 16, 256, 4096)] == [2**18, 2**14, 4096, 4096]
    assert torch.equal(chunked_ranks(users, items, targets, None, 7), target_ranks(scores, targets))
    # several exclusions from one scoring of the catalog: each the same as alone
    recent = histories[:, -2:]
    for chunk_size in (7, 1000):
        under = chunked_ranks_under(users, items, targets, [histories, None, recent], chunk_size)
        alone = [chunked_ranks(users, items, targets, h, chunk_size) for h in (histories, None, recent)]
        assert all(torch.equal(a, b) for a, b in zip(under, alone, strict=True))


def test_chunked_topk_equals_a_full_sort():
    torch.manual_seed(1)
    items, users = torch.randn(300, 16), torch.randn(9, 16)
    histories = torch.randint(-1, 300, (9, 20))
    scores = (users @ items.T).masked_fill(history_mask(histories, 0, 300), float("-inf"))
    expected = scores.sort(dim=1, descending=True)  # the full ranking: near-ties at the cut are seen too
    for chunk_size in (5, 64, 300):
        values, indices = chunked_topk(users, items, 25, histories, chunk_size)
        # a chunk's matmul and the full one round alike only on some CPUs: equal up to float32 rounding and near-ties
        assert_topk_agree(values, indices, expected.values, expected.indices)


def test_evaluate_in_chunks_equals_evaluate_in_one_piece_and_reports_cold_targets():
    torch.manual_seed(2)
    embeddings = torch.randn(40, 4)

    class Model(nn.Module):
        def embed_catalog(self, inputs, batch_size):
            return embeddings

        def user_embeddings(self, item_embeddings, histories):
            return (item_embeddings[histories.clamp(min=0)] * (histories >= 0)[..., None]).sum(1)

    rng = np.random.default_rng(0)
    histories = [rng.integers(10, 40, size=rng.integers(1, 6)) for _ in range(30)]
    targets = rng.integers(10, 40, size=30)
    cold = targets % 3 == 0
    eval_set = EvalSet("d", histories, targets, item_range=(10, 40), cold=cold)
    inputs = ItemInputs(item_index=torch.arange(40))
    whole = evaluate(Model(), inputs, [eval_set], batch_size=7, progress=False)
    chunked = evaluate(Model(), inputs, [eval_set], batch_size=7, progress=False, chunk_size=4)
    assert whole == chunked  # exact: the same ranks (no near-tie, see below), so the same metrics
    assert sorted(whole) == ["all", "d", "d cold", "d warm"]
    ranks, gaps = [], []
    for history, target in zip(histories, targets, strict=True):
        user = embeddings[torch.as_tensor(history)].sum(0)
        scores = embeddings[10:40] @ user
        candidates = [j for j in range(30) if j + 10 not in history]
        ranks.append(MISS if target in history else int(sum(scores[j] >= scores[target - 10] for j in candidates) - 1))
        if target not in history:
            gaps += [abs(float(scores[j] - scores[target - 10])) for j in candidates if j != target - 10]
    ranks = np.array(ranks)
    # No target is nearly tied with another candidate, so every way of computing the scores (chunked or not, the
    # model's matmul or this matrix-vector product, on any CPU) ranks alike: the metrics below can be compared exactly.
    assert min(gaps) > 1e-4
    assert whole["d cold"] == pytest.approx(rank_metrics(ranks[cold]))
    assert whole["d warm"] == pytest.approx(rank_metrics(ranks[~cold]))


def test_a_nan_score_is_a_miss_not_a_perfect_rank():
    users = torch.tensor([[1.0, 0.0], [float("nan"), 1.0]])
    items = torch.eye(2)
    ranks = chunked_ranks(users, items, torch.tensor([0, 0]), None, chunk_size=1)
    assert ranks.tolist() == [0, MISS]


def test_cold_targets_are_also_ranked_among_the_cold_items_and_every_target_by_its_popularity():
    torch.manual_seed(3)
    embeddings = torch.randn(30, 4)

    class Model(nn.Module):
        def embed_catalog(self, inputs, batch_size):
            return embeddings

        def user_embeddings(self, item_embeddings, histories):
            return (item_embeddings[histories.clamp(min=0)] * (histories >= 0)[..., None]).sum(1)

    rng = np.random.default_rng(1)
    cold_items = np.array([12, 15, 18, 21, 24, 27])  # a domain of catalog rows 10-29
    histories = [rng.choice(np.setdiff1d(np.arange(10, 30), cold_items), size=3, replace=False) for _ in range(40)]
    targets = rng.integers(10, 30, size=40)
    known = [np.append(h, 27) if i % 4 == 0 else h for i, h in enumerate(histories)]  # some users consumed cold 27
    counts = rng.integers(0, 300, size=20)
    counts[cold_items - 10] = 0
    eval_set = EvalSet("d", histories, targets, (10, 30), np.isin(targets, cold_items), known, cold_items, counts)
    metrics = evaluate(Model(), ItemInputs(item_index=torch.arange(30)), [eval_set], batch_size=9, progress=False)

    shelf_ranks = []
    for history, target, seen in zip(histories, targets, known, strict=True):
        if target in cold_items:
            scores = embeddings[torch.as_tensor(cold_items)] @ embeddings[torch.as_tensor(history)].sum(0)
            own = scores[list(cold_items).index(target)]
            candidates = [j for j, item in enumerate(cold_items) if item not in seen]
            shelf_ranks.append(MISS if target in seen else int(sum(scores[j] >= own for j in candidates)) - 1)
    assert len(shelf_ranks) > 3
    assert metrics["d cold, among cold items"] == pytest.approx(rank_metrics(np.array(shelf_ranks)))
    # a cold target has fewer competitors on the shelf than in the whole catalog
    assert metrics["d cold, among cold items"]["hr@10"] >= metrics["d cold"]["hr@10"]

    buckets = {key.removeprefix("d popularity "): value for key, value in metrics.items() if " popularity " in key}
    assert set(buckets) <= {"0", "1-9", "10-99", "100-999"} and "0" in buckets and "100-999" in buckets
    # the buckets partition the cases: their case-weighted mean is the set's metric
    sizes = {name: sum(popularity_bucket(int(counts[t - 10])) == name for t in targets) for name in buckets}
    mean = sum(buckets[name]["ndcg@10"] * size for name, size in sizes.items()) / len(targets)
    assert mean == pytest.approx(metrics["d"]["ndcg@10"])
    assert [popularity_bucket(c) for c in (0, 1, 9, 10, 99, 100, 999, 1000, 10**6)] == [
        "0",
        "1-9",
        "1-9",
        "10-99",
        "10-99",
        "100-999",
        "100-999",
        "1000+",
        "1000+",
    ]


def test_new_item_boost_adds_to_the_scores_of_items_without_training_interactions():
    from types import SimpleNamespace

    torch.manual_seed(4)
    embeddings = torch.randn(20, 4)

    class Model(nn.Module):
        config = SimpleNamespace(new_item_boost=0.0)

        def embed_catalog(self, inputs, batch_size):
            return embeddings

        def user_embeddings(self, item_embeddings, histories):
            return (item_embeddings[histories.clamp(min=0)] * (histories >= 0)[..., None]).sum(1)

    rng = np.random.default_rng(3)
    histories = [rng.choice(20, size=3, replace=False) for _ in range(30)]
    targets = np.array([rng.choice(np.setdiff1d(np.arange(20), h)) for h in histories])
    counts = rng.integers(0, 5, size=20)  # about one item in five never seen in training
    eval_set = EvalSet("d", histories, targets, (0, 20), item_counts=counts)
    inputs, model = ItemInputs(item_index=torch.arange(20)), Model()
    plain = evaluate(model, inputs, [eval_set], batch_size=7, progress=False)
    model.config.new_item_boost = 3.0
    boosted = evaluate(model, inputs, [eval_set], batch_size=7, progress=False)

    bias = torch.as_tensor(counts == 0, dtype=torch.float32) * 3.0
    ranks = []
    for history, target in zip(histories, targets, strict=True):
        scores = embeddings @ embeddings[torch.as_tensor(history)].sum(0) + bias
        ranks.append(int(sum(scores[j] >= scores[target] for j in range(20) if j not in history)) - 1)
    assert boosted["d"] == pytest.approx(rank_metrics(np.array(ranks)))
    new, old = boosted["d popularity 0"], plain["d popularity 0"]
    assert new["mrr@10"] > old["mrr@10"]
    assert boosted["d popularity 1-9"]["mrr@10"] <= plain["d popularity 1-9"]["mrr@10"]


def test_case_metrics_average_to_the_rank_metrics():
    ranks = np.array([0, 1, 4, 9, 10, 19, 30, MISS])
    for metric, value in rank_metrics(ranks, ks=(10, 20)).items():
        assert case_metric(ranks, metric).mean() == pytest.approx(value)
    assert case_metric(ranks, "ndcg@10")[:2] == pytest.approx([1.0, 1 / np.log2(3)])
    with pytest.raises(ValueError, match="unknown metric 'recall@x'"):
        case_metric(ranks, "recall@x")


def test_paired_bootstrap_separates_a_real_gain_from_noise_that_the_users_share():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 40, size=2000)  # the users' difficulty: shared by both models
    better = np.maximum(base - (rng.random(2000) < 0.3), 0)  # one rank higher for 30 % of the cases
    gain = paired_bootstrap(better, base, samples=2000)
    assert gain["cases"] == 2000 and gain["ratio"] > 1
    assert 1 < gain["ratio_low"] < gain["ratio"] < gain["ratio_high"]  # a small gain, and sure of it
    assert 0 < gain["difference_low"] < gain["difference"] < gain["difference_high"]
    assert gain["difference"] == pytest.approx(gain["a"] - gain["b"])
    same = paired_bootstrap(base, base, samples=500)  # a model against itself: no difference at all
    assert same["ratio_low"] == same["ratio_high"] == 1.0 and same["difference_high"] == 0.0
    shuffled = paired_bootstrap(rng.permutation(base), base, samples=2000)  # same quality, unpaired cases
    assert shuffled["ratio_low"] < 1 < shuffled["ratio_high"]
    seeds = paired_bootstrap(np.stack([better, base]), np.stack([base, base]), samples=500)  # 2 runs of each
    assert seeds["a"] == pytest.approx((gain["a"] + gain["b"]) / 2) and seeds["ratio_low"] > 1
    with pytest.raises(ValueError, match="same cases on both sides"):
        paired_bootstrap(base[:10], base[:9])


def test_a_target_outside_the_candidates_is_refused_not_ranked():
    with pytest.raises(ValueError, match=r"evaluation set 'b': 1 targets outside .* \[3, 6\): case 1 has target 2"):
        EvalSet("b", [np.array([5]), np.array([4])], np.array([3, 2]), item_range=(3, 6))  # a wrong offset
    users, items = torch.randn(2, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"targets must be rows of the 5 items; got 1\.\.5"):
        chunked_ranks_under(users, items, torch.tensor([1, 5]), [None])
