"""Encoders whose lower blocks are frozen (top-k fine-tuning, LoRA in the top blocks) run from their lowest
trainable block on states computed once (`BlockInputs`): the same outputs and gradients as the whole encoder, for
BERT-like and CLIP text encoders, torchvision CNNs and open_clip ViTs (Hugging Face ViT and CLIP: test_hf_vision.py), and a
catalog prepared for training carries those states instead of the raw inputs."""

import json
import logging

import pytest
import torch
from transformers import AutoConfig, AutoModel

from mmsr_peft import training
from mmsr_peft.adaptation import AdaptArguments, prepare_method
from mmsr_peft.builder import ModelArguments, build_model
from mmsr_peft.encoders import TextEncoder, TextEncoderConfig, encoder_blocks
from mmsr_peft.training import precompute_frozen_states

SMALL = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}
TEXT = {
    "roberta": {**SMALL, "pad_token_id": 1},
    "electra": {"embedding_size": 16, **SMALL},
    "distilbert": {"dim": 32, "n_layers": 3, "n_heads": 2, "hidden_dim": 64},
    "clip_text_model": {**SMALL, "bos_token_id": 0, "eos_token_id": 2},  # causal, a layer norm after the blocks
}


def text_encoder(model_type: str, tmp_path) -> TextEncoder:
    torch.manual_seed(0)
    backbone = AutoModel.from_config(AutoConfig.for_model(model_type, vocab_size=120, **TEXT[model_type]))
    backbone.save_pretrained(tmp_path / model_type)
    encoder = TextEncoder(TextEncoderConfig.from_pretrained_backbone(str(tmp_path / model_type)))
    encoder.load_backbone(str(tmp_path / model_type))
    return encoder


def texts(count: int, length: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """More texts than one length group (`LENGTH_BUCKET`), right-padded, of every length from 1 to `length`."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 120, (count, length), generator=generator)
    lengths = torch.arange(count) % length + 1
    return ids, (torch.arange(length)[None] < lengths[:, None]).long()


def gradients(encoder) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.requires_grad}
    encoder.zero_grad()
    return grads


def assert_same_encoding(encoder, full_path, from_blocks) -> None:
    """Eval-mode outputs (real tokens) and train-mode gradients without dropout agree between the two paths."""
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "drop_prob"):  # stochastic depth (the DropPath of BEiT, Swin, ConvNeXt)
            module.drop_prob = 0.0
    encoder.eval()
    with torch.no_grad():
        full, part = full_path(), from_blocks()
    mask = full.mask[..., None]
    assert torch.allclose(part.pooled, full.pooled, atol=1e-5)
    assert torch.allclose(part.tokens * mask, full.tokens * mask, atol=1e-5)
    # a fixed projection of the pooled vectors: their squared norm (or sum) is constant after a final layer norm,
    # which would leave every gradient at float noise
    projection = torch.randn(full.pooled.shape[-1], 4, generator=torch.Generator().manual_seed(0))
    encoder.train()
    (full_path().pooled @ projection).square().sum().backward()
    expected = gradients(encoder)
    (from_blocks().pooled @ projection).square().sum().backward()
    actual = gradients(encoder)
    assert expected.keys() == actual.keys() and expected
    for name, grad in expected.items():  # float noise is relative to the gradient's scale, not to each entry
        scale = float(grad.abs().max())
        assert scale > 0, name
        assert torch.allclose(actual[name], grad, rtol=1e-4, atol=1e-5 * scale), name


@pytest.mark.parametrize("model_type", ["bert", *sorted(TEXT)])
def test_a_text_encoder_runs_from_its_lowest_trainable_block_as_the_whole_encoder_does(model_type, tmp_path):
    if model_type == "bert":
        encoder = build_model(
            ModelArguments(item_tower="text", text_model="tiny-bert", hidden_size=16)
        ).item_tower.text
    else:
        encoder = text_encoder(model_type, tmp_path)
    blocks = encoder_blocks(encoder.backbone, model_type)
    encoder.set_finetuning("top_k", 1)
    start = encoder.first_cached_block()
    assert start == len(blocks) - 1 > 0
    ids, mask = texts(80)
    with torch.no_grad():
        inputs = encoder.eval().block_inputs(ids, mask, start)
    assert inputs.states.shape == (80, 12, encoder.hidden_size) and inputs.block == start
    # the catalog keeps these for every item: not a view into the states of every layer
    assert inputs.states.untyped_storage().nbytes() == inputs.states.nbytes
    assert_same_encoding(encoder, lambda: encoder(ids, mask), lambda: encoder.encode_from(inputs))
    whole = torch.ones_like(mask)  # no padding: a mask builder may leave causality to the attention kernel (CLIP)
    with torch.no_grad():
        from_block = encoder.eval().encode_from(encoder.block_inputs(ids, whole, start))
        assert torch.allclose(from_block.pooled, encoder(ids, whole).pooled, atol=1e-5)


@pytest.mark.parametrize("arch, top_k", [("mobilenet_v2", 2), ("resnet18", 1), ("tiny-vit", 1)])
def test_a_vision_tower_runs_from_its_lowest_trainable_block_as_the_whole_tower_does(arch, top_k):
    args = ModelArguments(item_tower="image", vision_model=arch, image_size=32, hidden_size=16)
    args.vision_finetune, args.vision_top_k = "top_k", top_k
    vision = build_model(args).item_tower.vision
    start = vision.first_cached_block()
    assert start == len(encoder_blocks(vision.tower, vision.family)) - top_k
    pixels = torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        inputs = vision.eval().block_inputs(pixels, start)
    assert inputs.states.dim() == (3 if arch == "tiny-vit" else 4) and inputs.block == start
    # BatchNorm of the trained blocks normalises by the batch in training mode: the same batch on both paths
    assert_same_encoding(vision, lambda: vision(pixels), lambda: vision.encode_from(inputs))


def test_nothing_is_cached_when_the_bottom_of_an_encoder_trains_or_nothing_does():
    args = ModelArguments(vision_model="mobilenet_v2", text_model="tiny-bert", image_size=32, hidden_size=16)
    model = build_model(args)
    text, vision = model.item_tower.text, model.item_tower.vision
    text.set_finetuning("full")
    vision.set_finetuning("frozen")
    assert text.first_cached_block() == 0 and vision.first_cached_block() == 0
    text.set_finetuning("top_k", 1)
    text.backbone.embeddings.requires_grad_(True)  # the embeddings train: the states entering the top block move
    assert text.first_cached_block() == 0


def test_a_catalog_prepared_for_lora_in_the_top_blocks_carries_the_top_blocks_inputs(tmp_path):
    args = ModelArguments(vision_model="mobilenet_v2", text_model="tiny-bert", image_size=32, hidden_size=16)
    model = build_model(args)
    model, _ = prepare_method(model, AdaptArguments(target="office", lora_top_k=1))
    model.eval()
    records = [{"item_id": f"i{i}", "text": "word " * (i % 7 + 1), "image": None} for i in range(70)]
    catalog = model.processor(records)
    prepared = precompute_frozen_states(model, catalog, batch_size=32)
    whole = precompute_frozen_states(model, catalog, batch_size=32, frozen_blocks=False)
    text_blocks = len(encoder_blocks(model.item_tower.text.backbone, "bert"))
    image_blocks = len(encoder_blocks(model.item_tower.vision.tower, model.item_tower.vision.family))
    assert prepared.text_blocks.block == text_blocks - 1 and prepared.image_blocks.block == image_blocks - 1
    assert prepared.input_ids is None and prepared.pixel_values is None
    assert whole.text_blocks is None and whole.input_ids is not None
    with torch.no_grad():
        expected = model.embed_catalog(whole, batch_size=32)
        assert torch.allclose(model.embed_catalog(prepared, batch_size=32), expected, atol=1e-5)


def test_an_encoder_whose_top_block_inputs_exceed_the_memory_budget_runs_whole(monkeypatch, caplog):
    args = ModelArguments(item_tower="text", text_model="tiny-bert", hidden_size=16)
    model = build_model(args)
    model.item_tower.text.set_finetuning("top_k", 1)
    records = [{"item_id": f"i{i}", "text": "word " * (i % 7 + 1), "image": None} for i in range(10)]
    catalog = model.processor(records)
    per_item = catalog.attention_mask.shape[1] * model.item_tower.text.hidden_size * 4  # float32 states
    monkeypatch.setattr(training, "BLOCK_INPUTS_BUDGET", per_item * 10)
    assert precompute_frozen_states(model, catalog).text_blocks is not None  # exactly the budget: kept
    monkeypatch.setattr(training, "BLOCK_INPUTS_BUDGET", per_item * 10 - 1)
    with caplog.at_level(logging.WARNING, logger="mmsr_peft.training"):
        prepared = precompute_frozen_states(model, catalog)
    assert prepared.text_blocks is None and prepared.input_ids is not None
    assert "for 10 items" in caplog.text and "runs whole at every step" in caplog.text


def test_pretraining_the_top_blocks_from_their_inputs_trains_as_running_the_whole_encoders(data_dir, tmp_path):
    """Without dropout (the frozen blocks' dropout is the one difference), a run that computes the top blocks'
    inputs once ends where a run through the whole encoders at every step ends."""
    from conftest import tiny_pretrain_argv
    from safetensors.torch import load_file

    from mmsr_peft.cli import pretrain_main

    runs = {}
    for cached in ("true", "false"):
        out = tmp_path / cached
        argv = tiny_pretrain_argv(data_dir, "--num_epochs", "2", "--text_finetune", "top_k")
        argv += ["--vision_finetune", "top_k", "--encoder_dropout", "0", "--cache_frozen_blocks", cached]
        assert pretrain_main([*argv, "--output_dir", str(out), "--report_to", "none"]) == 0
        runs[cached] = (load_file(out / "model.safetensors"), json.loads((out / "metrics.json").read_text()))
    (cached, cached_metrics), (whole, whole_metrics) = runs["true"], runs["false"]
    for epoch, expected in zip(cached_metrics["history"], whole_metrics["history"], strict=True):
        assert epoch["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)
        assert epoch["valid_ndcg@10"] == pytest.approx(expected["valid_ndcg@10"], abs=1e-6)
    # An attention key bias has no gradient but float noise (softmax ignores a shift shared by every key), which
    # AdamW's normalised step turns into up to a step of the learning rate (3e-3) either way: 2e-3 lets them differ.
    assert cached.keys() == whole.keys()
    for name, weight in whole.items():
        torch.testing.assert_close(cached[name], weight, rtol=1e-4, atol=2e-3 if "in_proj_bias" in name else 1e-4)
