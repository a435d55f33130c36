"""The three training losses: hand-computed values, what the collator gives each, and that each one trains."""

import math

import numpy as np
import pytest
import torch

from mmsr_peft.data.collate import TrainCollator
from mmsr_peft.data.processing import ItemInputs
from mmsr_peft.losses import LOSSES, bce_loss, similarity_matrix, softmax_loss
from mmsr_peft.model import MMSRConfig, MMSRModel
from mmsr_peft.sequence_encoders import SequenceEncoderConfig

SEQUENCES = [np.array([0, 1, 2, 3]), np.array([4, 5, 6]), np.array([7, 8, 9, 10, 11])]


def test_softmax_loss_matches_hand_computation_with_and_without_logq():
    states = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, 2, 2)
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    targets = torch.tensor([[2, -1]])  # second position ignored
    logits = [1.0 / 0.5, 0.0, 0.6 / 0.5]
    expected = -(logits[2] - math.log(sum(math.exp(v) for v in logits)))
    assert softmax_loss(states, items, targets, 0.5, None).item() == pytest.approx(expected, rel=1e-6)
    logq = torch.tensor([0.5, -1.0, 0.2])
    corrected = [v - q for v, q in zip(logits, logq.tolist(), strict=True)]
    expected = -(corrected[2] - math.log(sum(math.exp(v) for v in corrected)))
    assert softmax_loss(states, items, targets, 0.5, logq).item() == pytest.approx(expected, rel=1e-6)


def test_bce_loss_matches_hand_computation():
    states = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    targets, negatives = torch.tensor([[0, 1]]), torch.tensor([[2, 2]])
    pos, neg = [1.0, 1.0], [0.6, 0.8]
    terms = [math.log(1 + math.exp(-p)) for p in pos] + [math.log(1 + math.exp(n)) for n in neg]
    assert bce_loss(states, items, targets, negatives, 1.0).item() == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_losses_score_in_float32_under_bf16_autocast():
    """Under bf16 autocast (its inputs in bf16, as a bf16 model gives them) a logit at temperature 0.07 was off by
    up to ~0.05; the scores are computed in float32 from the same inputs."""
    g = torch.Generator().manual_seed(0)
    states = torch.nn.functional.normalize(torch.randn(2, 3, 16, generator=g), dim=-1).bfloat16()
    items = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=-1).bfloat16()
    targets, negatives = torch.tensor([[0, 5, -1], [7, 19, 3]]), torch.tensor([[1, 2, 0], [8, 4, 6]])
    expected_logits = states.float() @ items.float().T
    expected = (
        softmax_loss(states.float(), items.float(), targets, 0.07, None),
        bce_loss(states.float(), items.float(), targets, negatives, 0.07),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = similarity_matrix(states, items)
        found = softmax_loss(states, items, targets, 0.07, None), bce_loss(states, items, targets, negatives, 0.07)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected_logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(found, expected, rtol=1e-6, atol=1e-6)


def test_collator_gives_each_loss_its_candidates():
    catalog = ItemInputs(item_index=torch.arange(20))
    counts = np.bincount(np.concatenate(SEQUENCES), minlength=20)

    full = TrainCollator(catalog, "full_ce")(SEQUENCES)
    # exact: integer indices
    assert torch.equal(full.items.item_index, torch.arange(20)) and full.targets[0, :3].tolist() == [1, 2, 3]

    sampled = TrainCollator(catalog, "sampled_softmax", num_negatives=5, item_counts=counts, seed=0)(SEQUENCES)
    rows = sampled.items.item_index
    assert len(rows) == len(set(rows.tolist())) and set(range(12)) <= set(rows.tolist())
    positions = sum(len(s) for s in SEQUENCES)
    share = counts[rows.numpy()] / counts.sum()
    included = 1 - (1 - share) ** positions * (1 - 1 / 20) ** 5
    assert torch.allclose(sampled.logq, torch.tensor(np.log(included), dtype=torch.float32))

    bce = TrainCollator(catalog, "bce", seed=0)(SEQUENCES)
    assert bce.negatives.shape == bce.targets.shape
    drawn = bce.items.item_index[bce.negatives]
    assert drawn.min() >= 0 and drawn.max() < 20


@pytest.mark.parametrize("candidates", [None, [1, 2, 3]])  # a pool of 3: a third of the first draws hit the target
def test_bce_never_draws_a_position_s_own_target_and_a_seed_gives_one_batch(candidates):
    catalog = ItemInputs(item_index=torch.arange(20))
    sequences = [np.array([1, 2, 3, 1, 2, 3, 2, 1, 3])] * 8 + [np.array([3, 1])]
    collator = TrainCollator(catalog, "bce", seed=0, candidates=candidates)
    batches = [collator(sequences) for _ in range(30)]
    for batch in batches:
        ids, keep = batch.items.item_index, batch.targets >= 0
        assert (ids[batch.negatives[keep]] != ids[batch.targets[keep]]).all()
        assert candidates is None or set(ids[batch.negatives[keep]].tolist()) <= set(candidates)
    replay = TrainCollator(catalog, "bce", seed=0, candidates=candidates)
    replay.batch_index = 7  # a resumed run
    again = replay(sequences)
    assert torch.equal(again.negatives, batches[7].negatives)
    assert torch.equal(again.items.item_index, batches[7].items.item_index)


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_trains_an_id_model(loss):
    torch.manual_seed(0)
    config = MMSRConfig(
        item_tower="id", num_items=20, hidden_size=16, loss=loss, sequence=SequenceEncoderConfig(max_len=8)
    )
    model = MMSRModel(config)
    catalog = ItemInputs(item_index=torch.arange(20))
    counts = np.bincount(np.concatenate(SEQUENCES), minlength=20)
    collator = TrainCollator(catalog, loss, num_negatives=4, item_counts=counts, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        batch = collator(SEQUENCES)
        out = model(batch.items, batch.inputs, batch.targets, batch.negatives, batch.logq)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_bce_without_negatives_and_unknown_loss_are_errors():
    config = MMSRConfig(item_tower="id", num_items=5, hidden_size=8, loss="bce")
    model = MMSRModel(config)
    with pytest.raises(ValueError, match="negatives"):
        model(ItemInputs(item_index=torch.arange(5)), torch.tensor([[0, 1]]), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="sampled_softmax"):
        MMSRConfig(item_tower="id", num_items=5, loss="hinge")


def test_logq_is_the_log_probability_of_inclusion_in_the_unique_candidates():
    """Monte Carlo: draw the step's positions from the items' shares and the negatives uniformly, deduplicate, and
    count how often each item is among the candidates; the collator's logQ must be the log of that frequency."""
    from mmsr_peft.data.collate import log_inclusion

    rng = np.random.default_rng(0)
    share = rng.dirichlet(np.full(50, 0.3))  # a skewed popularity, as in real data
    positions, negatives, trials = 40, 30, 20000
    drawn = np.concatenate(
        [rng.choice(50, size=(trials, positions), p=share), rng.integers(0, 50, size=(trials, negatives))], axis=1
    )
    seen = np.zeros((trials, 50), dtype=bool)
    np.put_along_axis(seen, drawn, True, axis=1)
    frequency = seen.mean(0)
    predicted = log_inclusion(torch.as_tensor(share), positions, negatives, pool=50).exp().numpy()
    stderr = np.sqrt(frequency * (1 - frequency) / trials)
    assert np.all(np.abs(predicted - frequency) <= 4 * stderr + 1e-3)
    # the expected count, the old correction, is far from it for popular items
    expected_count = positions * share + negatives / 50
    assert expected_count.max() > 5 and np.abs(expected_count - frequency).max() > 4
