"""The MMSR paper's own definitions: its pooled fusion formulas on hand-computed tensors, its attention fusions as
BERT layers (initialised from a BERT checkpoint), and its scoring (BCE on the raw dot product)."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_fusion import item_inputs
from test_model import ITEM_IDS, tiny

from mmsr_peft import MMSRModel
from mmsr_peft.builder import ModelArguments, build_model
from mmsr_peft.encoders import EncoderOutput
from mmsr_peft.fusion import FusionConfig, build_fusion

# t = [1, 3] and v = [2, -2], projected by identities: the shared LayerNorm gives x = [-1, 1] and y = [1, -1]
T, V = torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, -2.0]])
PRESENT = torch.tensor([True])
SIG = 1 / (1 + math.exp(-1))  # sigmoid(1)


def paper_pooled(fusion_type, condition="text", **weights):
    """A `fusion_type` on D = 2 with identity projections and `weights` (name -> (weight, bias)) for its layers."""
    fusion = build_fusion(FusionConfig(type=fusion_type, condition=condition, dropout=0.0), (2, 2), (2, 2), 2).eval()
    with torch.no_grad():
        for projection in (fusion.text.proj, fusion.image.proj):
            projection.weight.copy_(torch.eye(2))
            projection.bias.zero_()
        for name, module in fusion.named_modules():
            if isinstance(module, torch.nn.Linear) and name not in ("text.proj", "image.proj"):
                weight, bias = weights.get(name, (torch.eye(module.out_features, module.in_features), None))
                module.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
                module.bias.copy_(torch.zeros(module.out_features) if bias is None else torch.tensor(bias))
    return fusion


def fuse(fusion):
    encoded = [EncoderOutput(x, x[:, None], torch.ones(1, 1, dtype=torch.bool)) for x in (T, V)]
    with torch.no_grad():
        return fusion(*encoded, PRESENT, PRESENT)[0].tolist()


@pytest.mark.parametrize(
    "fusion_type, condition, weights, expected",
    [
        # fc_x(x) + fc_y(y) = [-1 + 0.5, 2 * 1] + [y1, y0]
        ("paper_sum", "text", {"fc_x": ([[1, 0], [0, 2]], [0.5, 0.0]), "fc_y": ([[0, 1], [1, 0]], None)}, [-1.5, 3.0]),
        # fc_out([x; y]) = [x0 + y1, x1 + y0]
        ("paper_concat", "text", {"fc_out": ([[1, 0, 0, 1], [0, 1, 1, 0]], None)}, [-2.0, 2.0]),
        # (γ, β) = (2 x, x): γ ⊙ y + β = [-2 - 1, -2 + 1]
        ("paper_film", "text", {"fc": ([[2, 0], [0, 2], [1, 0], [0, 1]], None)}, [-3.0, -1.0]),
        # the image conditions: (γ, β) = (2 y, y), γ ⊙ x + β = [-2 + 1, -2 - 1]
        ("paper_film", "image", {"fc": ([[2, 0], [0, 2], [1, 0], [0, 1]], None)}, [-1.0, -3.0]),
        # sigmoid(x) ⊙ y = [sigmoid(-1), -sigmoid(1)]
        ("paper_gated", "text", {}, [1 - SIG, -SIG]),
        # x ⊙ sigmoid(y) = [-sigmoid(1), sigmoid(-1)]
        ("paper_gated", "image", {}, [-SIG, 1 - SIG]),
        # the sum above, then three ReLU layers (identities): [0, 3]
        ("paper_sum_dnn", "text", {"fc_x": ([[1, 0], [0, 2]], [0.5, 0.0]), "fc_y": ([[0, 1], [1, 0]], None)}, [0, 3]),
        ("paper_gated_dnn", "text", {}, [1 - SIG, 0.0]),
    ],
)
def test_pooled_fusions_follow_the_papers_formulas(fusion_type, condition, weights, expected):
    assert fuse(paper_pooled(fusion_type, condition, **weights)) == pytest.approx(expected, abs=1e-5)


def test_the_layer_norm_is_shared_and_comes_first():
    """Scaling and shifting an input leaves a paper fusion's output unchanged: only LN(t), LN(v) are read."""
    fusion = paper_pooled("paper_concat", fc_out=([[1, 2, 3, 4], [4, 3, 2, 1]], None))
    assert [name for name, m in fusion.named_modules() if isinstance(m, torch.nn.LayerNorm)] == ["layer_norm"]
    before = fuse(fusion)
    with torch.no_grad():
        fusion.text.proj.weight.mul_(7.0)
        fusion.image.proj.bias.fill_(-3.0)
    assert fuse(fusion) == pytest.approx(before, abs=1e-4)


def tiny_bert(heads=2, layers=2):
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=24
    )
    return BertModel(config).eval()


def encodings(n=3):
    g = torch.Generator().manual_seed(0)
    text_mask = torch.ones(n, 5, dtype=torch.bool)
    text_mask[0, 2:] = False
    text = EncoderOutput(torch.randn(n, 8, generator=g), torch.randn(n, 5, 8, generator=g), text_mask)
    image = EncoderOutput(torch.randn(n, 6, generator=g), torch.randn(n, 4, 6, generator=g), torch.ones(n, 4).bool())
    return text, image


def test_merge_attention_from_bert_runs_bert_layers_and_averages_the_tokens():
    """The fusion initialised from a BERT checkpoint computes what that BERT's own layers compute on the same
    token states (post-norm, GELU), then the mean of the visible tokens."""
    bert = tiny_bert()
    config = FusionConfig(type="paper_merge_attention", num_layers=2, num_heads=2, intermediate_size=24, dropout=0.0)
    fusion = build_fusion(config, (8, 8), (6, 6), 16).eval()
    fusion.load_bert(bert)
    text, image = encodings()
    has_text, has_image = torch.tensor([True, True, False]), torch.tensor([True, False, True])
    with torch.no_grad():
        out = fusion(text, image, has_text, has_image)
        t, t_keep, v, v_keep = fusion.streams(text, image, has_text, has_image)
        states, keep = torch.cat([t, v], dim=1), torch.cat([t_keep, v_keep], dim=1)
        additive = (~keep)[:, None, None, :].float() * torch.finfo(torch.float32).min
        for layer in bert.encoder.layer:
            states = layer(states, attention_mask=additive)
            states = states[0] if isinstance(states, tuple) else states
        expected = (states * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
    assert torch.allclose(out, expected, atol=1e-5)


def test_co_attention_from_bert_copies_each_layer_into_both_streams_and_the_shared_cross_attention():
    bert = tiny_bert()
    config = FusionConfig(type="paper_co_attention", num_layers=1, num_heads=2, intermediate_size=24, dropout=0.0)
    fusion = build_fusion(config, (8, 8), (6, 6), 16).eval()
    fusion.load_bert(bert)
    (layer,), source = fusion.layers, bert.encoder.layer[0].attention
    assert torch.equal(layer.text_self.linear1.weight, bert.encoder.layer[0].intermediate.dense.weight)
    assert all(
        torch.equal(a, b)
        for a, b in zip(layer.text_self.state_dict().values(), layer.image_self.state_dict().values(), strict=True)
    )
    query_key_value = torch.cat([source.self.query.weight, source.self.key.weight, source.self.value.weight])
    assert torch.equal(layer.cross.attn.in_proj_weight, query_key_value)
    assert torch.equal(layer.cross.norm.weight, source.output.LayerNorm.weight)
    text, image = encodings()
    with torch.no_grad():
        out = fusion(text, image, torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool))
    assert out.shape == (3, 16) and torch.isfinite(out).all()


def test_a_model_built_from_a_bert_checkpoint_records_it_and_reloads_without_it(tmp_path):
    bert = tiny_bert(heads=4)
    bert.save_pretrained(tmp_path / "bert")
    args = ModelArguments(
        text_model="tiny-bert",
        vision_model="micro-vit",
        image_size=32,
        hidden_size=16,
        max_len=8,
        text_max_length=16,
        fusion="paper_merge_attention",
        fusion_init_from=str(tmp_path / "bert"),
    )
    model = build_model(args, item_vocab=ITEM_IDS).eval()
    fusion = model.config.fusion
    assert (fusion.num_heads, fusion.intermediate_size, fusion.init_from) == (4, 24, str(tmp_path / "bert"))
    (layer,) = model.item_tower.fusion.layers
    assert torch.equal(layer.linear2.weight, bert.encoder.layer[0].output.dense.weight)
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "bert" / "model.safetensors").unlink()  # loading reads the model's own weights, not the checkpoint
    loaded = MMSRModel.from_pretrained(tmp_path / "model")
    items = item_inputs(model, tmp_path)
    assert torch.equal(loaded.embed_items(items), model.embed_items(items))  # exact: same weights, same forward

    for wrong, message in [
        ({"hidden_size": 32}, "its width 16 must equal --hidden_size 32"),
        ({"fusion": "merge_attention"}, "initialises paper_co_attention or paper_merge_attention only"),
        ({"fusion_layers": 3}, "its 2 layers must cover --fusion_layers 3"),
    ]:
        (tmp_path / "bert2").mkdir(exist_ok=True)
        bert.save_pretrained(tmp_path / "bert2")
        with pytest.raises(ValueError, match=message):
            build_model(ModelArguments(**{**vars(args), "fusion_init_from": str(tmp_path / "bert2"), **wrong}))


def test_dot_similarity_scores_raw_inner_products_and_the_bce_reads_them(tmp_path):
    model = tiny(similarity="dot", loss="bce", temperature=1.0)
    cosine = tiny(loss="bce", temperature=1.0)
    items = item_inputs(model, tmp_path)
    embeddings = model.embed_items(items)
    assert not torch.allclose(embeddings.norm(dim=-1), torch.ones(len(items)), atol=1e-3)
    assert torch.allclose(cosine.embed_items(items).norm(dim=-1), torch.ones(len(items)), atol=1e-5)
    assert torch.allclose(F.normalize(embeddings, dim=-1), cosine.embed_items(items), atol=1e-5)  # same seed, weights
    inputs, targets, negatives = torch.tensor([[0, 1, 2]]), torch.tensor([[1, 2, 3]]), torch.tensor([[3, 0, 1]])
    out = model(items, inputs, targets, negatives)
    states = out.sequence_output[0]  # (3, D), not normalised
    positive = (states * embeddings[targets[0]]).sum(-1)
    negative = (states * embeddings[negatives[0]]).sum(-1)
    expected = (F.softplus(-positive).sum() + F.softplus(negative).sum()) / 6
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="similarity must be one of"):
        tiny(similarity="euclidean")
