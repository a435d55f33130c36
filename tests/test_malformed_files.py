"""Malformed model and adapter files are errors naming the file and the field (a failed adapter load leaves the model
as it was), and `--image_size` reaches the open_clip towers that can run at it and is refused by those that cannot."""

import json

import pytest
import torch
from peft import LoraConfig
from test_model import tiny

from mmsr_peft import MMSRModel
from mmsr_peft.builder import ModelArguments, build_model
from mmsr_peft.errors import CheckpointError
from mmsr_peft.lora import lora_target_modules


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny image-tower base and a LoRA adapter trained on it: `(base folder, adapter folder)`."""
    root = tmp_path_factory.mktemp("saved")
    tiny(item_tower="image").save_pretrained(root / "base")
    model = MMSRModel.from_pretrained(root / "base")
    model.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(model)), "office")
    model.save_adapter(root / "office", "office")
    return root / "base", root / "office"


def copy_of(folder, tmp_path):
    import shutil

    return shutil.copytree(folder, tmp_path / folder.name)


@pytest.mark.parametrize(
    "text, fragments",
    [
        ('{"max_length": "24", "image_size": 32}', ["max_length is '24'", "expected an integer"]),
        ('{"max_length": 16, "image_size": true}', ["image_size is True", "or null"]),
        ("{}", ["missing keys ['max_length', 'image_size']"]),
        ('{"max_length": 16, "image_size": 32, "x": 1}', ["unknown keys ['x']"]),
        ("[16, 32]", ["expected a JSON object", "list"]),
        ('{"max_length": 16,\n "image_size": }', ["not valid JSON", "line 2"]),
    ],
    ids=["str", "bool", "empty", "unknown", "list", "bad-json"],
)
def test_a_malformed_processor_config_is_an_error_naming_the_file_and_the_key(saved, tmp_path, text, fragments):
    folder = copy_of(saved[0], tmp_path)
    (folder / "processor_config.json").write_text(text)
    with pytest.raises(CheckpointError) as err:
        MMSRModel.from_pretrained(folder)
    assert str(folder / "processor_config.json") in str(err.value)
    assert all(fragment in str(err.value) for fragment in fragments), str(err.value)


def state(model) -> tuple:
    """What a failed load must leave as it was: the adapters, the active one, what trains, the base weights."""
    from mmsr_peft.adapters import base_state_dict

    weights = {k: v.clone() for k, v in base_state_dict(model).items()}
    # by base name: a failed injection may leave peft's wrappers (`….base_layer.weight`), holding no adapter
    trainable = {n.replace(".base_layer", ""): p.requires_grad for n, p in model.named_parameters()}
    return model.list_adapters(), model.active_adapter(), trainable, weights


def assert_same_state(before: tuple, after: tuple) -> None:
    assert before[:3] == after[:3]
    assert before[3].keys() == after[3].keys() and all(torch.equal(v, after[3][k]) for k, v in before[3].items())


RECORD_CASES = [
    ([], ["expected a JSON object", "list"]),
    ({"base_sha256": 5}, ["base_sha256 is 5", "expected a string"]),
    ({"lora": "x"}, ["lora is 'x'", "expected an object"]),
    ({"lora": {"dropout_pattern": "x"}}, ["lora.dropout_pattern is 'x'"]),
    ({"lora": {"dropout_pattern": {"vision": "high"}}}, ["lora.dropout_pattern has {'vision': 'high'}", "[0, 1]"]),
]
CONFIG_CASES = [
    ({"r": "8"}, ["r is '8'", "expected an integer"]),
    ({"target_modules": 5}, ["target_modules is 5"]),
    ({"peft_type": "NOSUCH"}, ["peft_type is 'NOSUCH'", "'LORA'"]),
    ({"r": 0}, ["cannot apply the adapter config", "`r` should be a positive integer"]),  # peft's own check
    ({"target_modules": "APPENDED|(sequence_encoder\\.norm)"}, ["cannot apply the adapter config", "LayerNorm"]),
]


@pytest.mark.parametrize(
    "file, change, fragments",
    [("mmsr_adapter.json", *case) for case in RECORD_CASES]
    + [("adapter_config.json", *case) for case in CONFIG_CASES],
    ids=["record-list", "sha-int", "lora-str", "dropout-str", "dropout-value", "r-str", "targets-int", "peft-type"]
    + ["r-zero", "layernorm-target"],
)
def test_a_malformed_adapter_file_is_an_error_and_leaves_the_model_as_it_was(saved, tmp_path, file, change, fragments):
    base, adapter = saved
    folder = copy_of(adapter, tmp_path)
    path = folder / file
    content = json.loads(path.read_text())
    if isinstance(change, dict):
        for key, value in change.items():
            # the LayerNorm case: the adapter's own targets, then a module peft cannot adapt (injected in part)
            content[key] = value.replace("APPENDED", f"({content.get(key)})") if isinstance(value, str) else value
    else:
        content = change
    path.write_text(json.dumps(content))
    model = MMSRModel.from_pretrained(base)
    model.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(model)), "first")
    model.add_adapter(LoraConfig(r=4, target_modules=lora_target_modules(model, ["vision"])), "second")
    model.set_adapter("first")
    before = state(model)
    with pytest.raises(CheckpointError) as err:
        model.load_adapter(folder, adapter_name="bad")
    assert str(path) in str(err.value) and all(f in str(err.value) for f in fragments), str(err.value)
    assert_same_state(before, state(model))
    assert model.load_adapter(adapter) == "office"  # the model still takes a good adapter


def test_a_failed_injection_leaves_a_model_without_adapters_as_it_was(saved):
    model = MMSRModel.from_pretrained(saved[0])
    pixels = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    expected, before = model.item_tower.vision(pixels).pooled, state(model)
    targets = f"({lora_target_modules(model)})|(sequence_encoder\\.norm)"  # the last one cannot be adapted
    with pytest.raises(ValueError, match="LayerNorm"):
        model.add_adapter(LoraConfig(r=2, target_modules=targets), "partial")
    assert_same_state(before, state(model))
    assert torch.equal(model.item_tower.vision(pixels).pooled, expected)
    with pytest.raises(ValueError, match="lora is 'x'"):  # metadata is checked before anything is injected
        model.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(model)), "x", {"lora": "x"})
    assert_same_state(before, state(model))


def vision_config(**kwargs):
    args = ModelArguments(item_tower="image", hidden_size=16, **kwargs)
    return build_model(args).config.vision


def test_image_size_reaches_an_open_clip_tower_whose_weights_are_interpolated_to_it(tmp_path):
    from safetensors.torch import save_file

    from mmsr_peft.encoders import VisionEncoder, VisionEncoderConfig

    assert vision_config(vision_model="ViT-S-32").image_size == 224  # not given: the model's own size
    source = VisionEncoder(VisionEncoderConfig.from_open_clip("ViT-S-32"))  # 224 pixels: a 7x7 grid
    weights = {k: v.contiguous() for k, v in source.tower.state_dict().items()}
    save_file(weights, tmp_path / "vit.safetensors")
    weights_file = str(tmp_path / "vit.safetensors")
    args = ModelArguments(item_tower="image", hidden_size=16, vision_model="ViT-S-32", image_size=96)
    args.vision_weights = weights_file
    model = build_model(args)
    assert model.config.vision.image_size == model.processor.image_size == 96
    position = model.item_tower.vision.tower.positional_embedding
    assert position.shape == (1 + 3 * 3, 384)  # a 3x3 grid, interpolated from the 7x7 one
    assert torch.equal(position[0], weights["positional_embedding"][0])  # the class token's, unchanged
    pixels = torch.randint(0, 255, (2, 3, 96, 96), dtype=torch.uint8)
    assert model.item_tower.vision.eval()(pixels).tokens.shape == (2, 9, 384)


def test_image_size_other_than_an_hf_model_s_own_is_refused(tmp_path):
    from transformers import ViTConfig, ViTModel

    settings = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    ViTModel(ViTConfig(image_size=32, patch_size=8, **settings), add_pooling_layer=False).save_pretrained(tmp_path)
    assert vision_config(vision_model=f"hf:{tmp_path}").image_size == 32  # not given: its own
    assert vision_config(vision_model=f"hf:{tmp_path}", image_size=32).image_size == 32
    with pytest.raises(ValueError, match="--image_size 48: .* takes images of 32 pixels"):
        vision_config(vision_model=f"hf:{tmp_path}", image_size=48)
    assert vision_config(vision_model="micro-vit", image_size=48).image_size == 48  # presets take any size
