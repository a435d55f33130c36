"""Sequence encoders (sasrec, gru4rec, nextitnet): shapes, causality, padding, training, config, save/load."""

import json

import pytest
import torch
import torch.nn.functional as F

from mmsr_peft.data.processing import ItemInputs, ItemProcessor
from mmsr_peft.model import MMSRConfig, MMSRModel
from mmsr_peft.sequence_encoders import SEQUENCE_CLASSES, SEQUENCE_TYPES, NextItNet, SequenceEncoderConfig

D, MAX_LEN = 16, 10


def tiny_encoder(kind: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    config = SequenceEncoderConfig(type=kind, num_layers=2, max_len=MAX_LEN, dropout=0.0, **overrides)
    return SEQUENCE_CLASSES[kind](config, D).eval()


def random_states(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, length, D, generator=generator), dim=-1)  # as the model feeds them


def test_every_type_has_a_class():
    assert set(SEQUENCE_CLASSES) == set(SEQUENCE_TYPES) == {"sasrec", "gru4rec", "nextitnet"}


@pytest.mark.parametrize("kind", SEQUENCE_TYPES)
def test_output_shape(kind):
    encoder = tiny_encoder(kind)
    for length in (1, 7, MAX_LEN):
        assert encoder(random_states(3, length)).shape == (3, length, D)


@pytest.mark.parametrize("kind", SEQUENCE_TYPES)
def test_causal_output_depends_only_on_earlier_items(kind):
    encoder = tiny_encoder(kind)
    states = random_states(2, MAX_LEN)
    perturbed = states.clone()
    perturbed[:, 5] += torch.randn(2, D, generator=torch.Generator().manual_seed(7))  # not a constant: LayerNorm
    with torch.no_grad():
        before, after = encoder(states), encoder(perturbed)
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=1e-6, rtol=0)
    assert (after[:, 5] - before[:, 5]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", SEQUENCE_TYPES)
def test_padding_after_the_history_never_changes_real_positions(kind):
    encoder = tiny_encoder(kind)
    real = random_states(2, 6)
    zeros = torch.cat([real, torch.zeros(2, MAX_LEN - 6, D)], dim=1)  # what MMSRModel feeds
    garbage = torch.cat([real, random_states(2, MAX_LEN - 6, seed=3)], dim=1)
    with torch.no_grad():
        expected = encoder(real)
        for padded in (zeros, garbage):
            # another sequence length, so other matmul shapes: equal up to float32 rounding (values up to ~3)
            torch.testing.assert_close(encoder(padded)[:, :6], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", SEQUENCE_TYPES)
def test_gradients_reach_every_parameter(kind):
    encoder = tiny_encoder(kind).train()
    output = encoder(random_states(2, MAX_LEN))
    (output * torch.randn_like(output)).sum().backward()  # random weights: a plain sum is flat under LayerNorm
    no_grad = [name for name, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


@pytest.mark.parametrize("kind", SEQUENCE_TYPES)
def test_a_few_adam_steps_learn_a_deterministic_next_item_task(kind):
    encoder = tiny_encoder(kind).train()
    vocab = F.normalize(torch.randn(8, D, generator=torch.Generator().manual_seed(5)), dim=-1)  # (V, D)
    items = (torch.arange(8).unsqueeze(1) * 3 + torch.arange(MAX_LEN + 1)) % 8  # (8, T+1): item t+1 follows t
    inputs, targets = vocab[items[:, :-1]], items[:, 1:]  # (8, T, D), (8, T)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-3)

    def loss_fn():
        logits = F.normalize(encoder(inputs), dim=-1) @ vocab.T / 0.1  # (8, T, V), as MMSRModel scores
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    losses = []
    for _ in range(20):
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("kind", SEQUENCE_TYPES)
def test_history_longer_than_max_len_is_an_error(kind):
    with pytest.raises(ValueError, match=rf"11 items is longer than sequence\.max_len={MAX_LEN}"):
        tiny_encoder(kind)(random_states(1, MAX_LEN + 1))


def test_nextitnet_blocks_cycle_through_dilations():
    encoder = NextItNet(SequenceEncoderConfig(type="nextitnet", num_layers=4, dilations=(1, 2)), D)
    convs = [(block.conv1.dilation[0], block.conv2.dilation[0]) for block in encoder.blocks]
    assert convs == [(1, 2), (2, 4), (1, 2), (2, 4)]


def test_config_round_trips_through_json():
    config = SequenceEncoderConfig(type="nextitnet", kernel_size=2, dilations=[1, 4])
    assert config.dilations == (1, 4)
    assert SequenceEncoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_unknown_type_lists_the_valid_names():
    with pytest.raises(ValueError, match="sequence.type") as err:
        SequenceEncoderConfig(type="caser")
    assert all(repr(name) in str(err.value) for name in ("sasrec", "gru4rec", "nextitnet", "caser"))


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("dilations", (), r"sequence\.dilations must be a non-empty tuple of ints >= 1, got \(\)"),
        ("dilations", (1, 0), r"sequence\.dilations .* got \(1, 0\)"),
        ("dilations", (1, True), r"sequence\.dilations .* got \(1, True\)"),
        ("dilations", 2, r"sequence\.dilations .* got 2"),
        ("kernel_size", 1, r"sequence\.kernel_size must be >= 2 .* got 1"),
        ("num_layers", 0, r"sequence\.num_layers must be >= 1, got 0"),
        ("max_len", 0, r"sequence\.max_len must be >= 1, got 0"),
        ("dropout", 1.0, r"sequence\.dropout must be in \[0, 1\), got 1\.0"),
    ],
)
def test_invalid_config_values(field, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        SequenceEncoderConfig(**{field: value})


@pytest.mark.parametrize("kind", SEQUENCE_TYPES)
def test_mmsr_model_with_each_encoder_trains_and_round_trips(kind, tmp_path):
    torch.manual_seed(0)
    sequence = SequenceEncoderConfig(type=kind, num_layers=2, max_len=MAX_LEN)
    config = MMSRConfig(item_tower="id", num_items=20, hidden_size=D, sequence=sequence)
    model = MMSRModel(config, ItemProcessor(item_vocab=[f"i{k}" for k in range(20)]))
    items = ItemInputs(item_index=torch.arange(20))
    history = torch.randint(0, 20, (3, MAX_LEN + 1), generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([MAX_LEN + 1, 6, 2])
    history[torch.arange(MAX_LEN + 1) >= lengths.unsqueeze(1)] = -1
    inputs, targets = history[:, :-1], history[:, 1:]  # (3, T) each, -1 padded

    output = model(items, inputs, targets)
    assert torch.isfinite(output.loss) and output.sequence_output.shape == (3, MAX_LEN, D)
    output.loss.backward()

    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = MMSRModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config
    with torch.no_grad():
        before, after = model(items, inputs, targets), loaded(items, inputs, targets)
    # exact: the same forward on identical weights
    assert torch.equal(before.sequence_output, after.sequence_output)
    assert torch.equal(before.loss, after.loss)
