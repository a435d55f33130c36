"""Cold-start split: held-out items never reach training or histories; they are only ranked."""

import json

import numpy as np
import pytest
import torch

from mmsr_peft.data.collate import TrainCollator
from mmsr_peft.data.processing import ItemInputs
from mmsr_peft.data.sequences import Sequences, Split, choose_cold_items
from mmsr_peft.domains import build_corpus, load_domain


def sequences_of(*users) -> Sequences:
    return Sequences([f"u{i}" for i in range(len(users))], [np.array(u) for u in users])


def test_cold_items_leave_training_and_histories_but_stay_targets():
    sequences = sequences_of([0, 1, 2, 3, 4, 5], [6, 2, 7, 1, 8], [3, 4, 9, 2])
    split = Split.leave_one_out(sequences, max_len=10, cold_items=np.array([2, 9]))
    assert [s.tolist() for s in split.train] == [[0, 1, 3], [6, 7], [3, 4]]
    assert [h.tolist() for h in split.valid_histories] == [[0, 1, 3], [6, 7], [3, 4]]
    assert split.valid_targets.tolist() == [4, 1, 9]
    assert [h.tolist() for h in split.test_histories] == [[0, 1, 3, 4], [6, 7, 1], [3, 4]]  # cold 9 left out
    # the whole known history, which the evaluation excludes, keeps the cold items the user consumed
    assert [k.tolist() for k in split.test_known] == [[0, 1, 2, 3, 4], [6, 2, 7, 1], [3, 4, 9]]
    assert split.test_targets.tolist() == [5, 8, 2]
    assert split.valid_cold.tolist() == [False, False, True]
    assert split.test_cold.tolist() == [False, False, True]


def test_without_cold_items_the_split_is_unchanged():
    sequences = sequences_of([0, 1, 2, 3, 4, 5], [6, 2, 7, 1, 8])
    plain, empty = Split.leave_one_out(sequences, 3), Split.leave_one_out(sequences, 3, np.array([], dtype=int))
    assert [s.tolist() for s in plain.train] == [s.tolist() for s in empty.train]
    assert plain.valid_cold is None and empty.valid_cold.tolist() == [False, False]


def test_cold_items_are_a_seeded_share_of_the_items_that_occur():
    sequences = sequences_of(list(range(0, 100, 2)), list(range(50, 150, 2)))
    cold = choose_cold_items(sequences, 0.1, seed=3)
    occurring = set(range(0, 150, 2))
    assert len(cold) == 8 and set(cold.tolist()) <= occurring  # 10 % of 75 items, rounded
    assert np.array_equal(cold, choose_cold_items(sequences, 0.1, seed=3))  # exact: seeded integer choice
    assert not np.array_equal(cold, choose_cold_items(sequences, 0.1, seed=4))
    with pytest.raises(ValueError, match="fraction must be in"):
        choose_cold_items(sequences, 1.5)


def test_corpus_with_cold_start_holds_items_out_of_every_training_sequence(data_dir):
    domain = load_domain("office", data_dir=data_dir)
    corpus = build_corpus([domain], max_len=12, cold_start_fraction=0.2, seed=0)
    cold = set(choose_cold_items(domain.sequences, 0.2, seed=0).tolist())
    assert corpus.stats["office"]["cold_items"] == len(cold) > 0
    assert not cold & {int(i) for seq in corpus.train for i in seq}
    for eval_set in corpus.valid + corpus.test:
        assert not cold & {int(i) for h in eval_set.histories for i in h}
        assert eval_set.cold.tolist() == [int(t) in cold for t in eval_set.targets]
    assert corpus.test[0].cold.any()


def test_cold_items_are_never_drawn_as_negatives_or_softmax_candidates(data_dir):
    domain = load_domain("office", data_dir=data_dir)
    corpus = build_corpus([domain], max_len=12, cold_start_fraction=0.2, seed=0)
    candidates = corpus.negative_candidates()
    assert len(candidates) + len(corpus.cold_items) == len(corpus.catalog)
    assert not set(candidates.tolist()) & set(corpus.cold_items.tolist())
    catalog = ItemInputs(item_index=torch.arange(len(corpus.catalog)))  # items.item_index gives back catalog rows
    cold = set(corpus.cold_items.tolist())
    for loss in ("sampled_softmax", "bce"):
        collator = TrainCollator(catalog, loss, num_negatives=500, seed=0, candidates=candidates)
        for start in range(0, len(corpus.train), 64):
            batch = collator(corpus.train[start : start + 64])
            assert not cold & set(batch.items.item_index.tolist()), loss
    # without candidates the same draws do reach the cold items: the test above can fail
    batch = TrainCollator(catalog, "sampled_softmax", num_negatives=500, seed=0)(corpus.train[:64])
    assert cold & set(batch.items.item_index.tolist())


def test_full_softmax_over_candidates_keeps_targets_and_drops_cold_items():
    catalog = ItemInputs(item_index=torch.arange(8))
    sequences = [np.array([1, 3, 5]), np.array([6, 1])]
    batch = TrainCollator(catalog, "full_ce", candidates=np.array([0, 1, 3, 5, 6]))(sequences)
    rows = batch.items.item_index
    assert rows.tolist() == [0, 1, 3, 5, 6]
    assert rows[batch.inputs[0, :2]].tolist() == [1, 3] and rows[batch.targets[0, :2]].tolist() == [3, 5]
    assert rows[batch.targets[1, :1]].tolist() == [1] and batch.targets[1, 1:].tolist() == [-1]
    with pytest.raises(ValueError, match="catalog item 2, which is not among the candidates"):
        TrainCollator(catalog, "full_ce", candidates=np.array([0, 1, 3]))([np.array([1, 2])])
    with pytest.raises(ValueError, match=r"candidates must be catalog indices in \[0, 8\), got indices from 0 to 9"):
        TrainCollator(catalog, candidates=np.array([0, 9]))
    with pytest.raises(ValueError, match="candidates is empty"):
        TrainCollator(catalog, candidates=np.array([], dtype=int))


def test_logq_counts_negatives_drawn_from_the_candidates_only():
    catalog = ItemInputs(item_index=torch.arange(10))
    counts = np.ones(10)
    batch = TrainCollator(catalog, num_negatives=4, item_counts=counts, seed=0, candidates=np.arange(4))(
        [np.array([0, 1])]
    )
    # missed by both positions (share 0.1 each) and by all 4 draws from the 4 candidates (not from the 10 items)
    expected = 1 - (1 - 0.1) ** 2 * (1 - 1 / 4) ** 4
    assert torch.allclose(batch.logq, torch.full_like(batch.logq, np.log(expected)))


def test_adapt_with_cold_start_reports_warm_and_cold_targets(base_dir, data_dir, tmp_path, capsys):
    from conftest import TINY_TRAIN_FLAGS

    from mmsr_peft.cli import adapt_main

    out = tmp_path / "office"
    argv = ["--target", "office", "--base", str(base_dir), "--data_dir", str(data_dir), "--output_dir", str(out)]
    assert adapt_main([*argv, "--cold_start_fraction", "0.2", *TINY_TRAIN_FLAGS, "--num_epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "Cold start: " in printed and "| LoRA (text+vision+fusion), cold targets |" in printed
    by_target = json.loads((out / "metrics.json").read_text())["test_by_target"]
    assert set(by_target) == {
        f"{row}, {part}"
        for row in ("zero-shot base", "LoRA (text+vision+fusion)")
        for part in ("warm targets", "cold targets", "cold targets among cold items")
    }
    for row in ("zero-shot base", "LoRA (text+vision+fusion)"):  # fewer competitors on the new-arrivals shelf
        assert (
            by_target[f"{row}, cold targets among cold items"]["mrr@20"] >= by_target[f"{row}, cold targets"]["mrr@20"]
        )
    assert json.loads((out / "metrics.json").read_text())["data"]["office"]["cold_items"] > 0


@pytest.mark.parametrize("command", ["adapt", "pretrain"])
@pytest.mark.parametrize(
    "flag, value, expected",
    [("cold_start_fraction", "1.5", "in [0, 1), got 1.5"), ("train_user_fraction", "0", "in (0, 1], got 0.0")],
)
def test_both_commands_refuse_split_fractions_out_of_range(command, flag, value, expected, capsys):
    from mmsr_peft import cli

    target = ["--target", "office"] if command == "adapt" else []
    assert getattr(cli, f"{command}_main")([*target, f"--{flag}", value]) != 0
    assert f"--{flag} must be {expected}" in capsys.readouterr().err


def test_a_share_of_the_users_trains_and_every_user_is_evaluated(data_dir):
    from mmsr_peft.data.sequences import choose_train_users

    small, large = choose_train_users(50, 0.1, seed=3), choose_train_users(50, 0.5, seed=3)
    assert (small.sum(), large.sum()) == (5, 25) and not (small & ~large).any()  # nested: the same first users
    assert np.array_equal(small, choose_train_users(50, 0.1, seed=3))  # exact: seeded integer draw
    assert choose_train_users(3, 0.01).sum() == 1

    domain = load_domain("food", data_dir=str(data_dir))
    whole, half = build_corpus([domain], 12, seed=3), build_corpus([domain], 12, seed=3, train_user_fraction=0.5)
    kept = {domain.sequences.user_ids[u] for u in np.flatnonzero(choose_train_users(len(domain.sequences), 0.5, 3))}
    assert half.stats["food"]["train_users"] == len(kept) < whole.stats["food"]["train_users"]
    trained = [tuple(seq) for seq in half.train]
    expected = [
        tuple(seq) for u, seq in zip(domain.sequences.user_ids, whole_windows(domain), strict=True) if u in kept
    ]
    assert sorted(trained) == sorted(w for windows in expected for w in windows)
    assert [len(e.targets) for e in half.test] == [len(e.targets) for e in whole.test]  # everyone is evaluated


def whole_windows(domain):
    """Per user, the training windows of the whole split."""
    return [
        [tuple(w) for w in Split.leave_one_out(Sequences(["u"], [seq]), max_len=12).train]
        for seq in domain.sequences.items
    ]


def test_training_counts_leave_out_cold_items_and_users_who_do_not_train():
    sequences = sequences_of([0, 1, 2, 3, 4, 5], [6, 2, 7, 1, 8], [3, 4, 9, 2])
    split = Split.leave_one_out(sequences, max_len=10, cold_items=np.array([2]), train_users=np.array([1, 0, 1], bool))
    # training user 0 contributes 0-3 (2 is cold), user 2 contributes 3 and 4; user 1 does not train
    assert split.train_counts(10).tolist() == [1, 1, 0, 2, 1, 0, 0, 0, 0, 0]
    assert Split.leave_one_out(sequences, max_len=10).train_counts(10).tolist() == [1, 1, 2, 2, 1, 0, 1, 1, 0, 0]


def test_a_new_item_with_the_content_of_a_popular_one_ranks_beside_it_not_at_the_bottom(base_dir, data_dir):
    from mmsr_peft import Catalog, MMSRModel

    model = MMSRModel.from_pretrained(base_dir)
    domain = load_domain("food", data_dir=str(data_dir))  # a domain the base trained on
    old = domain.catalog
    counts = np.bincount(np.concatenate(domain.sequences.items), minlength=len(old))
    popular = int(np.argmax(counts))
    catalog = Catalog(
        [*old.item_ids, "new-arrival"], [*old.texts, old.texts[popular]], [*old.images, old.images[popular]], "food"
    )
    histories = [[old.item_ids[i] for i in seq[:6] if i != popular] for seq in domain.sequences.items[:30]]
    ranking = model.recommend(histories, catalog, k=len(catalog)).item_ids
    new_ranks = np.array([items.index("new-arrival") for items in ranking])
    popular_ranks = np.array([items.index(old.item_ids[popular]) for items in ranking])
    assert (abs(new_ranks - popular_ranks) == 1).all()  # the same content, the same score: side by side
    assert np.median(new_ranks) < len(catalog) / 2  # where the popular item is, not at the bottom
