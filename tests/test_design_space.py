"""Every fusion x sequence encoder x loss combination builds, trains what it should, and learns a fixed batch."""

import itertools

import numpy as np
import pytest
import torch

from mmsr_peft import MMSRModel
from mmsr_peft.builder import ModelArguments, build_model
from mmsr_peft.data.collate import TrainCollator
from mmsr_peft.fusion import FUSION_TYPES, PAPER_POOLED, PAPER_TOKEN_FUSIONS, TOKEN_FUSIONS
from mmsr_peft.losses import LOSSES
from mmsr_peft.sequence_encoders import SEQUENCE_TYPES

SEQUENCES = [np.array([0, 1, 2, 3, 4]), np.array([5, 6, 7]), np.array([8, 9, 10, 11])]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("items")
    out = []
    for i in range(12):
        image = None
        if i % 4:  # every fourth item has no image
            image = str(folder / f"{i}.png")
            Image.new("RGB", (32, 32), (15 * i, 200 - 10 * i, 40)).save(image)
        text = "" if i % 5 == 2 else f"item {i} in colour {['red', 'blue', 'green'][i % 3]}"  # some have no text
        out.append({"item_id": f"it-{i}", "text": text, "image": image})
    return out


PAPER_FUSIONS = PAPER_POOLED + PAPER_TOKEN_FUSIONS
OURS = [fusion for fusion in FUSION_TYPES if fusion not in PAPER_FUSIONS]
# ours: every combination; the paper's fusions: with every loss on SASRec, and with every sequence encoder on its BCE
COMBINATIONS = sorted(
    {
        *itertools.product(OURS, SEQUENCE_TYPES, LOSSES),
        *itertools.product(PAPER_FUSIONS, ["sasrec"], LOSSES),
        *itertools.product(PAPER_FUSIONS, SEQUENCE_TYPES, ["bce"]),
    }
)


@pytest.mark.parametrize("fusion, sequence, loss", COMBINATIONS)
def test_combination_trains(fusion, sequence, loss, records):
    torch.manual_seed(0)
    args = ModelArguments(
        text_model="tiny-bert",
        vision_model="micro-vit",
        image_size=32,
        hidden_size=16,
        fusion=fusion,
        sequence_encoder=sequence,
        loss=loss,
        max_len=8,
        text_max_length=12,
        dropout=0.0,
    )
    model = build_model(args).eval()  # no dropout: the loss on a fixed batch must go down, not jitter
    inputs = model.processor(records)
    counts = np.bincount(np.concatenate(SEQUENCES), minlength=len(records))
    batch = TrainCollator(inputs, loss, num_negatives=3, item_counts=counts, seed=0)(SEQUENCES)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    losses = []
    for step in range(10):
        out = model(batch.items, batch.inputs, batch.targets, batch.negatives, batch.logq)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        if step == 0:
            assert out.sequence_output.shape == (3, 4, 16) and out.item_embeddings.shape == (len(batch.items), 16)
            # the vision tower's pooled projection is not used by token-level fusions
            unused = {"item_tower.vision.tower.proj"} if fusion in TOKEN_FUSIONS else set()
            for name, p in model.named_parameters():
                if name.startswith("item_tower.text.") or name in unused:  # frozen text: no gradient at all
                    assert p.grad is None, name
                else:
                    assert p.grad is not None and p.grad.abs().sum() > 0, name
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0], losses


def test_image_text_contrastive_auxiliary_loss_trains_its_heads_and_aligns(records, tmp_path):
    torch.manual_seed(0)
    args = ModelArguments(
        text_model="tiny-bert", vision_model="micro-vit", image_size=32, hidden_size=16, itc_weight=0.5, dropout=0.0
    )
    model = build_model(args).eval()
    batch = TrainCollator(model.processor(records), "sampled_softmax", num_negatives=0)(SEQUENCES)
    with_itc = model(batch.items, batch.inputs, batch.targets).loss
    alignment = model.item_tower.alignment_loss(batch.items)
    without = model.embed_items(batch.items)
    assert torch.allclose(model(batch.items, batch.inputs).item_embeddings, without)  # no targets: no ITC work
    with_itc.backward()
    assert (
        model.item_tower.itc_text.weight.grad.abs().sum() > 0
        and model.item_tower.itc_image.weight.grad.abs().sum() > 0
    )
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(15):
        optimizer.zero_grad()
        model(batch.items, batch.inputs, batch.targets).loss.backward()
        optimizer.step()
    assert model.item_tower.alignment_loss(batch.items) < alignment
    model.save_pretrained(tmp_path / "itc")
    assert MMSRModel.from_pretrained(tmp_path / "itc").config.itc_weight == 0.5
    with pytest.raises(ValueError, match="itc_weight"):
        build_model(ModelArguments(item_tower="id", itc_weight=0.5), item_vocab=["a"])


@pytest.mark.parametrize("sequence", SEQUENCE_TYPES)
def test_user_embeddings_equal_the_full_sequence_states_at_the_last_item(sequence):
    torch.manual_seed(0)
    args = ModelArguments(item_tower="id", hidden_size=16, sequence_encoder=sequence, max_len=8, num_layers=3)
    model = build_model(args, item_vocab=[f"it-{i}" for i in range(20)]).eval()
    items = torch.nn.functional.normalize(torch.randn(20, 16), dim=-1)
    histories = torch.tensor(
        [[3, 1, 4, 1, 5, 9, 2, 6], [7, 8, -1, -1, -1, -1, -1, -1], [-1] * 8, [0, 2, 4, 6, 8, -1, -1, -1]]
    )
    full = model.encode_sequences(items, histories)  # every position, then the last real one is picked
    expected = full[torch.arange(4), torch.tensor([7, 1, 0, 4])]
    assert torch.allclose(model.user_embeddings(items, histories), expected, atol=1e-6)
    # the padding after the last item changes nothing, whatever it holds
    padded = torch.cat([histories[1:2, :2], torch.full((1, 6), -1)], dim=1)
    assert torch.allclose(model.user_embeddings(items, padded), expected[1:2], atol=1e-6)
