"""Every fusion variant: shapes, masking of absent modalities, gradients, learning, LoRA targets, round trips."""

import re

import pytest
import torch
from test_model import ITEM_IDS, tiny

from mmsr_peft import MMSRModel
from mmsr_peft.encoders import EncoderOutput
from mmsr_peft.fusion import FUSION_TYPES, FusionConfig, build_fusion
from mmsr_peft.lora import lora_target_modules

N, D = 4, 16
HAS_TEXT = torch.tensor([True, False, True, True])
HAS_IMAGE = torch.tensor([True, True, False, True])


def make_fusion(fusion_type, dropout=0.0):
    torch.manual_seed(0)
    return build_fusion(FusionConfig(type=fusion_type, dropout=dropout), (16, 16), (24, 12), D)


def encodings(seed=0):
    """Text: pooled (N, 16), tokens (N, 5, 16), the first item padded after 3 tokens; image: (N, 24), (N, 4, 12)."""
    g = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(N, 5, dtype=torch.bool)
    text_mask[0, 3:] = False
    text = EncoderOutput(torch.randn(N, 16, generator=g), torch.randn(N, 5, 16, generator=g), text_mask)
    image = EncoderOutput(torch.randn(N, 24, generator=g), torch.randn(N, 4, 12, generator=g), torch.ones(N, 4).bool())
    return text, image


def redraw(encoded, rows, seed):
    """A copy of `encoded` with the pooled vector and tokens of `rows` replaced by new random values."""
    other = EncoderOutput(encoded.pooled.clone(), encoded.tokens.clone(), encoded.mask)
    g = torch.Generator().manual_seed(seed)
    other.pooled[rows] = torch.randn(other.pooled[rows].shape, generator=g) * 10
    other.tokens[rows] = torch.randn(other.tokens[rows].shape, generator=g) * 10
    return other


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_shape_and_absent_modalities_are_masked_not_read(fusion_type):
    fusion = make_fusion(fusion_type).eval()
    text, image = encodings()
    with torch.no_grad():
        out = fusion(text, image, HAS_TEXT, HAS_IMAGE)
        assert out.shape == (N, D) and torch.isfinite(out).all()
        same = fusion(redraw(text, ~HAS_TEXT, 1), redraw(image, ~HAS_IMAGE, 2), HAS_TEXT, HAS_IMAGE)
        assert torch.allclose(same, out, atol=1e-5)
        padded = EncoderOutput(text.pooled, text.tokens.clone(), text.mask)
        padded.tokens[0, 3:] = 100.0  # padding of a present text
        assert torch.allclose(fusion(padded, image, HAS_TEXT, HAS_IMAGE), out, atol=1e-5)
        # the content of present modalities is read
        changed = fusion(redraw(text, HAS_TEXT, 3), redraw(image, HAS_IMAGE, 4), HAS_TEXT, HAS_IMAGE)
        assert not torch.allclose(changed[HAS_TEXT], out[HAS_TEXT], atol=1e-3)
        assert not torch.allclose(changed[HAS_IMAGE], out[HAS_IMAGE], atol=1e-3)


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_a_batch_without_one_modality_is_finite(fusion_type):
    fusion = make_fusion(fusion_type, dropout=0.1).train()
    text, image = encodings()
    everything, nothing = torch.ones(N, dtype=torch.bool), torch.zeros(N, dtype=torch.bool)
    for has_text, has_image in [(everything, nothing), (nothing, everything), (nothing, nothing)]:
        with torch.inference_mode():  # eval takes PyTorch's fused attention path
            assert torch.isfinite(fusion.eval()(text, image, has_text, has_image)).all()
        out = fusion.train()(text, image, has_text, has_image)
        out.square().mean().backward()
        assert torch.isfinite(out).all()
        assert all(torch.isfinite(p.grad).all() for p in fusion.parameters() if p.grad is not None)
        fusion.zero_grad()


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_gradients_reach_every_parameter_and_training_lowers_the_loss(fusion_type):
    fusion = make_fusion(fusion_type).train()
    text, image = encodings()
    target = torch.randn(N, D, generator=torch.Generator().manual_seed(5))
    steps = 15
    if fusion_type.endswith("_dnn"):  # the paper's DNN heads end with a ReLU (outputs >= 0), and learn slower
        target, steps = target.abs(), 40
    optimizer = torch.optim.Adam(fusion.parameters(), lr=1e-2)
    losses = []
    for step in range(steps):
        loss = torch.nn.functional.mse_loss(fusion(text, image, HAS_TEXT, HAS_IMAGE), target)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            unused = [n for n, p in fusion.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not unused, f"{fusion_type}: no gradient reaches {unused}"
            if fusion_type == "merge_attention":  # the [CLS], text and image type embeddings are all added
                assert (fusion.type_embedding.weight.grad.abs().sum(1) > 0).all()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_unknown_fusion_type_lists_the_twenty_types():
    with pytest.raises(ValueError, match="fusion.type") as err:
        FusionConfig(type="merge_attn")
    assert len(FUSION_TYPES) == 20 and all(name in str(err.value) for name in FUSION_TYPES)


def test_attention_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="num_heads=3 must divide hidden_size=16"):
        build_fusion(FusionConfig(type="co_attention", num_heads=3), (16, 16), (24, 12), 16)


def item_inputs(model, tmp_path):
    from PIL import Image

    records = []
    for i, item_id in enumerate(ITEM_IDS[:4]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (60 * i, 90, 200 - 40 * i)).save(path)
        records.append({"item_id": item_id, "text": f"a blue mug number {i}" if i != 1 else "", "image": str(path)})
    records[2]["image"] = None
    return model.processor(records)


@pytest.mark.parametrize("fusion_type", FUSION_TYPES)
def test_lora_targets_fusion_modules_and_adapted_model_runs(fusion_type, tmp_path):
    from peft import LoraConfig

    model = tiny(fusion=fusion_type)
    pattern = lora_target_modules(model, ["fusion"])
    matched = [name for name, _ in model.named_modules() if re.fullmatch(pattern, name)]
    assert matched and all(name.startswith("item_tower.fusion.") for name in matched)
    assert not any(name.endswith("attn.out_proj") for name in matched)  # peft adapts the attention module itself
    inputs = item_inputs(model, tmp_path)
    model.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(model), init_lora_weights=False), "x")
    adapted = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any(name.startswith("item_tower.fusion.") and "lora_" in name for name in adapted)
    embeddings = model.embed_items(inputs)
    assert embeddings.shape == (4, 32) and torch.isfinite(embeddings).all()


@pytest.mark.parametrize("fusion_type", ["co_attention", "film_mlp"])
def test_save_then_load_gives_identical_embeddings(fusion_type, tmp_path):
    model = tiny(fusion=fusion_type)
    inputs = item_inputs(model, tmp_path)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = MMSRModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.fusion.type == fusion_type
    assert torch.equal(loaded.embed_items(inputs), model.embed_items(inputs))  # exact: the same forward, same weights


@pytest.mark.parametrize("fusion_type", ["sum", "film", "gated"])
def test_an_item_without_either_modality_does_not_embed_to_zero(fusion_type):
    fusion = make_fusion(fusion_type).eval()
    text, image = encodings()
    nothing = torch.zeros(N, dtype=torch.bool)
    with torch.no_grad():
        assert (fusion(text, image, nothing, nothing).norm(dim=-1) > 1e-3).all()


@pytest.mark.parametrize(
    ("item_tower", "fusion_type"), [("image", "concat"), ("text", "concat"), ("multimodal", "sum")]
)
def test_an_item_missing_what_its_tower_reads_has_ordinary_gradients(item_tower, fusion_type, tmp_path):
    # an all-zero embedding under cosine scoring made F.normalize divide by its eps: a ~1e13 gradient on `missing`
    from PIL import Image

    model = tiny(item_tower, fusion=fusion_type).train()
    records = []
    for i, item_id in enumerate(ITEM_IDS[:4]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (60 * i, 90, 200 - 40 * i)).save(path)
        records.append({"item_id": item_id, "text": f"a blue mug number {i}", "image": str(path)})
    records[3].update(text="", image=None)  # the last item has neither text nor image
    out = model(model.processor(records), torch.tensor([[0, 1, 2], [3, 0, 1]]), torch.tensor([[1, 2, 3], [0, 1, 2]]))
    out.loss.backward()
    norms = {name: p.grad.norm().item() for name, p in model.named_parameters() if p.grad is not None}
    assert all(0 <= norm < 1e3 for norm in norms.values()), {n: v for n, v in norms.items() if not v < 1e3}
