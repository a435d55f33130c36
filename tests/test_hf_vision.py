"""Hugging Face vision towers (ViT, CLIP vision) as the vision encoder: from a local model folder, offline."""

import re

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel

from mmsr_peft import MMSRModel
from mmsr_peft.builder import ModelArguments, build_model
from mmsr_peft.lora import lora_target_modules

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32}


@pytest.fixture(scope="module", params=["vit", "clip"])
def hf_folder(request, tmp_path_factory):
    """A small pretrained-style model folder (config.json + model.safetensors), as `from_pretrained` reads it."""
    torch.manual_seed(0)
    if request.param == "vit":
        model = ViTModel(ViTConfig(patch_size=8, **TINY), add_pooling_layer=False)
    else:
        model = CLIPVisionModel(CLIPVisionConfig(patch_size=8, projection_dim=16, **TINY))
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return request.param, folder, model.eval()


def test_hf_tower_is_built_from_its_config_and_filled_with_its_weights(hf_folder, tmp_path):
    kind, folder, reference = hf_folder
    model = build_model(ModelArguments(item_tower="image", vision_model=f"hf:{folder}", image_size=32, hidden_size=16))
    vision = model.item_tower.vision.eval()
    assert vision.family == ("hf_vit" if kind == "vit" else "hf_clip_vision_model")
    pixels = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    out = vision(pixels)
    assert out.tokens.shape == (3, 1 + 16, 32) and out.pooled.shape == (3, 32)
    normalised = (pixels.float() - vision.mean) / vision.std
    expected = reference(pixel_values=normalised).last_hidden_state
    assert torch.allclose(out.tokens, expected, atol=1e-5)  # the weights are the folder's

    model.save_pretrained(tmp_path / "ckpt")
    loaded = MMSRModel.from_pretrained(tmp_path / "ckpt").eval()
    assert torch.equal(loaded.item_tower.vision(pixels).tokens, out.tokens)  # exact: the same forward, same weights


def test_hf_tower_has_lora_targets_and_top_k(hf_folder):
    _, folder, _ = hf_folder
    args = ModelArguments(vision_model=f"hf:{folder}", text_model="tiny-bert", image_size=32, hidden_size=16)
    args.vision_finetune, args.vision_top_k = "top_k", 1
    model = build_model(args)
    pattern = lora_target_modules(model, ["vision"])
    assert sum(bool(re.fullmatch(pattern, n)) for n, _ in model.named_modules()) == 4  # q and v of 2 layers
    trainable = {n for n, p in model.item_tower.vision.tower.named_parameters() if p.requires_grad}
    assert trainable and all(".1." in n or "layernorm" in n or "post_layernorm" in n for n in trainable)
    assert not any(".0." in n for n in trainable)


def test_hf_tower_runs_from_its_lowest_trainable_block_as_the_whole_tower_does(hf_folder):
    from test_frozen_blocks import assert_same_encoding

    _, folder, _ = hf_folder
    args = ModelArguments(item_tower="image", vision_model=f"hf:{folder}", image_size=32, hidden_size=16)
    args.vision_finetune, args.vision_top_k = "top_k", 1
    vision = build_model(args).item_tower.vision
    assert vision.first_cached_block() == 1
    pixels = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        inputs = vision.eval().block_inputs(pixels, 1)
    assert inputs.states.shape == (3, 1 + 16, 32)
    assert_same_encoding(vision, lambda: vision(pixels), lambda: vision.encode_from(inputs))
