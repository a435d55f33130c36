"""The simple rankers beside the learned models, evaluated by the same `evaluate` (`mmsr-baseline`)."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL_FLAGS

from mmsr_peft.baselines import ContentKNN, PopularityRanker, training_counts
from mmsr_peft.cli import baseline_main
from mmsr_peft.domains import build_corpus, load_domain
from mmsr_peft.evaluation import EvalSet, evaluate, rank_metrics


def test_popularity_ranks_by_training_count_with_ties_against_the_target():
    counts = np.array([5, 9, 9, 1, 0, 7])
    eval_set = EvalSet("d", [np.array([1])], np.array([2]), (0, 6), known=[np.array([1, 5])])
    # item 2 (count 9) competes with 0 (5) and 3, 4 below it; 1 and 5 are known; no tie left: rank 0
    assert evaluate(PopularityRanker(counts), None, [eval_set], ks=(1,), progress=False)["d"]["hr@1"] == 1.0
    tied = EvalSet("d", [np.array([5])], np.array([2]), (0, 6), known=[np.array([5])])  # item 1 ties with 2
    assert evaluate(PopularityRanker(counts), None, [tied], ks=(1, 2), progress=False)["d"] == pytest.approx(
        rank_metrics(np.array([1]), ks=(1, 2))
    )


def test_content_knn_scores_by_cosine_to_the_mean_history_vector():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0], [0.0, 0.0]])
    knn = ContentKNN(features)
    histories = torch.tensor([[0, 1, -1], [3, -1, -1]])
    users = knn.user_embeddings(knn.embed_catalog(None), histories)
    torch.testing.assert_close(users, torch.tensor([[2**-0.5, 2**-0.5], [2**-0.5, -(2**-0.5)]]))
    scores = users @ knn.embed_catalog(None).T
    assert scores[0].argmax() == 2 and scores[1].argmax() == 3 and torch.all(scores[:, 4] == 0)


def test_training_counts_count_each_training_interaction_once(data_dir):
    domain = load_domain("food", data_dir=str(data_dir))
    corpus = build_corpus([domain], max_len=4)  # short windows: training sequences overlap, counts must not
    counts = training_counts(corpus)
    expected = np.bincount(np.concatenate([seq[:-2] for seq in domain.sequences.items]), minlength=len(counts))
    assert np.array_equal(counts, expected)  # exact: integer counts


@pytest.mark.parametrize("baseline", ["popularity", "knn_text", "knn_both"])
def test_mmsr_baseline_writes_metrics_like_a_trained_run(baseline, data_dir, tmp_path):
    out = tmp_path / baseline
    argv = ["--baseline", baseline, "--domains", "food", "--data_dir", str(data_dir), "--output_dir", str(out)]
    assert baseline_main([*argv, *TINY_MODEL_FLAGS, "--cold_start_fraction", "0.2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"food", "food warm", "food cold", "all", "random"} <= set(metrics["test"])
    assert set(metrics["test_other_exclusions"]) == {"window", "none"} and metrics["trainable_parameters"] == 0
    if baseline == "popularity":  # cold items have no training interaction: never above a warm one
        assert metrics["test"]["food cold"]["hr@10"] == 0.0
    assert json.loads((out / "run_args.json").read_text())["baseline"] == baseline
    ranks = np.load(out / metrics["test_ranks"])  # every test case's rank: the "all" row, case by case
    assert rank_metrics(ranks) == pytest.approx(metrics["test"]["all"])
    if baseline == "popularity":  # a run folder holds one run: replaced only when asked
        assert baseline_main([*argv, *TINY_MODEL_FLAGS]) == 2
        assert baseline_main([*argv, *TINY_MODEL_FLAGS, "--overwrite_output_dir"]) == 0
        assert "food cold" not in json.loads((out / "metrics.json").read_text())["test"]


def test_unknown_baseline_lists_the_valid_ones(capsys):
    assert baseline_main(["--baseline", "bpr"]) == 2
    assert "valid: popularity, knn_text, knn_image, knn_both" in capsys.readouterr().err
    assert baseline_main(["--eval_batch_size", "0"]) == 2
    assert "--eval_batch_size must be >= 1, got 0" in capsys.readouterr().err
