"""Side adapters (`--method side`): a network beside the frozen encoders that reads their per-layer states. They
start as the base, train alone, read the same states from the feature cache as from the live encoders, and are
saved, loaded, hot-swapped and published like the LoRA adapters."""

import json

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS
from peft import LoraConfig
from safetensors.torch import load_file
from test_adapters import catalog, scores  # noqa: F401 (catalog: a fixture)
from test_model import tiny

from mmsr_peft import MMSRModel, load_domain
from mmsr_peft.adaptation import AdaptArguments, adapt
from mmsr_peft.adapters import base_state_dict
from mmsr_peft.cache import FeatureCache
from mmsr_peft.cli import adapt_main, publish_main
from mmsr_peft.encoders import TextEncoder, TextEncoderConfig, VisionEncoder, VisionEncoderConfig
from mmsr_peft.errors import CheckpointError
from mmsr_peft.side import SIDE_CONFIG_FILE, SIDE_WEIGHTS_FILE, SideAdapterConfig, aligned_layers
from mmsr_peft.training import TrainingArguments, pooled_only, pooled_output, precompute_frozen_states


def with_side(name="side", seed=0, **config) -> MMSRModel:
    """`tiny()` in eval mode with a side adapter whose output layer is random (a zero one changes nothing)."""
    model = tiny().eval()
    model.add_adapter(SideAdapterConfig(**config), name)
    torch.manual_seed(seed)
    torch.nn.init.normal_(model.item_tower.side_adapters[name].out.weight, std=0.5)
    return model


def test_a_new_side_adapter_is_the_base_exactly_and_only_it_trains(catalog):  # noqa: F811
    model = tiny().eval()
    inputs = model.processor(catalog.records(range(len(catalog))))
    base = model.embed_catalog(inputs)
    model.add_adapter(SideAdapterConfig(width=16), "office")
    assert torch.equal(model.embed_catalog(inputs), base)  # base + a zero correction
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("item_tower.side_adapters.office.") for n in trainable)
    assert not any(k.startswith("item_tower.side_adapters") for k in base_state_dict(model))
    assert model.list_adapters() == ["office"] and model.active_adapter() == "office"
    side = model._peft_configs()["office"]
    assert side.text_widths == [model.item_tower.text.hidden_size] * len(side.text_widths)
    assert len(side.image_widths) == len(model.item_tower.vision.tower.transformer.resblocks)


def test_cached_layer_states_equal_the_live_encoders(catalog, tmp_path):  # noqa: F811
    model = with_side()
    model.requires_grad_(False)
    inputs = model.processor(catalog.records(range(len(catalog))))
    live = model.embed_catalog(inputs)
    tower = model.item_tower
    for cache_dir in (None, tmp_path / "cache", tmp_path / "cache"):  # none, a cold cache, a warm one
        states = precompute_frozen_states(model, inputs, batch_size=5, cache_dir=cache_dir)
        assert states.input_ids is None and states.pixel_values is None  # nothing runs the encoders any more
        for modality in ("text", "image"):
            expected = tower.encode_layers(inputs, modality)[1].states
            torch.testing.assert_close(getattr(states, f"{modality}_layers").states, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.embed_catalog(states), live, rtol=1e-5, atol=1e-5)
    # one pass of each encoder gives its output and its layer states; a warm cache, none; a lost file, one again
    text_items, image_items = [], []
    tower.text.backbone.register_forward_hook(
        lambda module, args, kwargs, output: text_items.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    tower.vision.register_forward_hook(lambda module, args, output: image_items.append(len(args[0])))
    precompute_frozen_states(model, inputs, batch_size=5, cache_dir=tmp_path / "counted")
    assert sum(text_items) == sum(image_items) == len(inputs)
    text_items.clear()
    pooled = next((tmp_path / "counted").glob("text_pooled-*"))
    written = pooled.read_bytes()
    next((tmp_path / "counted").glob("text_layers-*")).unlink()
    again = precompute_frozen_states(model, inputs, batch_size=5, cache_dir=tmp_path / "counted")
    assert sum(text_items) == len(inputs) and sum(image_items) == len(inputs)
    assert pooled.read_bytes() == written  # a file that had every item is not written again
    torch.testing.assert_close(again.text_layers.states, states.text_layers.states, rtol=1e-5, atol=1e-5)
    # one file holds half of the items, the other none: the pass encodes all, each file takes what it lacks
    partial = FeatureCache(tmp_path / "partial")
    partial.encode("text_pooled", tower.text, pooled_only(tower.encode_text), inputs.select(torch.arange(6)), 5)

    def both(items):
        output, layers = tower.encode_layers(items, "text")
        return pooled_output(output), layers

    pooled, layers = partial.encode_together(("text_pooled", "text_layers"), tower.text, both, inputs, 5)
    assert (partial.last_hits, partial.last_misses) == (0, len(inputs))
    torch.testing.assert_close(pooled.pooled, states.text_states.pooled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layers.states, states.text_layers.states, rtol=1e-5, atol=1e-5)
    partial.encode("text_pooled", tower.text, pooled_only(tower.encode_text), inputs, 5)
    assert partial.last_misses == 0
    cache = FeatureCache(tmp_path / "cache")
    run = lambda items: tower.encode_layers(items, "text")[1]  # noqa: E731
    cache.encode("text_layers", tower.text, run, inputs, 5)
    assert cache.last_misses == 0 and cache.last_hits == len(inputs)
    assert {p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()} == {
        "text_pooled",  # the model's fusion reads the pooled vectors only
        "image_pooled",
        "text_layers",
        "image_layers",
    }


def test_a_text_encoder_s_output_with_its_layer_states_is_its_forward_output():
    """CLIP's text model normalises its last hidden state after its last layer: the output the side adapter's pass
    gives the fusion is that, as without the side adapter, not the last layer's raw states."""
    from transformers import CLIPTextConfig

    backbone = CLIPTextConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=12,
        eos_token_id=2,
    ).to_dict()
    encoder = TextEncoder(TextEncoderConfig(backbone=backbone, max_length=12)).eval()
    torch.manual_seed(0)
    lengths = torch.tensor([2, 12, 5, 3, 7])
    mask = (torch.arange(12)[None] < lengths[:, None]).long()
    ids = torch.randint(3, 50, (len(lengths), 12)) * mask
    with torch.no_grad():
        expected = encoder(ids, mask)
        output, layers = encoder.encode_layers(ids, mask)
    assert len(layers) == 3  # the embeddings and two layers
    torch.testing.assert_close(output.pooled, expected.pooled, rtol=1e-5, atol=1e-5)
    real = mask.bool()[..., None]
    torch.testing.assert_close(output.tokens * real, expected.tokens * real, rtol=1e-5, atol=1e-5)


def test_text_layer_states_do_not_depend_on_the_padding():
    """Texts encoded in groups cut after their longest one give the states of texts padded to max_length."""
    from transformers import BertConfig

    backbone = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    ).to_dict()
    encoder = TextEncoder(TextEncoderConfig(backbone=backbone, max_length=12)).eval()
    encoder.length_bucket = 4
    torch.manual_seed(0)
    lengths = torch.tensor([2, 12, 5, 3, 7, 1, 9, 4, 6])
    mask = (torch.arange(12)[None] < lengths[:, None]).long()
    ids = torch.randint(1, 50, (len(lengths), 12)) * mask
    with torch.no_grad():
        output, grouped = encoder.encode_layers(ids, mask)
        encoder.length_bucket = 0
        padded_output, padded = encoder.encode_layers(ids, mask)
    assert len(grouped) == 3  # the embeddings and two layers
    for tokens in (output.tokens, padded_output.tokens):  # the last layer's alone, not a view into every layer's
        assert tokens.untyped_storage().nbytes() == tokens.nbytes
    for a, b in zip(grouped, padded, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.pooled, padded_output.pooled, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "config",
    [
        VisionEncoderConfig(backend="torchvision", tower={"arch": "mobilenet_v2"}, image_size=32),
        VisionEncoderConfig(backend="torchvision", tower={"arch": "resnet18"}, image_size=32),
        VisionEncoderConfig(),  # an open_clip ViT
    ],
    ids=["mobilenet_v2", "resnet18", "open_clip_vit"],
)
def test_vision_layer_states_are_the_pooled_block_outputs(config):
    encoder = VisionEncoder(config).eval()
    pixels = torch.randint(0, 256, (3, 3, config.image_size, config.image_size), dtype=torch.uint8)
    with torch.no_grad():
        output, layers = encoder.encode_layers(pixels)
        again = encoder(pixels)
    torch.testing.assert_close(output.pooled, again.pooled)  # the hooks are gone and changed nothing
    assert all(layer.shape[0] == 3 and layer.dim() == 2 for layer in layers)
    if config.backend == "torchvision":  # the last block's mean over cells is the pooled vector
        torch.testing.assert_close(layers[-1], output.pooled)


def test_aligned_layers_pair_relative_depths():
    assert aligned_layers(7, 19) == [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12), (5, 15), (6, 18)]
    assert aligned_layers(3, 2) == [(0, 0), (2, 1)]
    assert aligned_layers(1, 5) == [(0, 4)]


def test_side_adapters_save_load_and_hot_swap_beside_lora(catalog, tmp_path):  # noqa: F811
    model = with_side("office", seed=0, modules_to_save=["sequence_encoder"])
    copy = model.sequence_encoder.modules_to_save["office"]  # the adapter's own sequence encoder
    assert all(p.requires_grad for p in copy.parameters())
    with torch.no_grad():
        for parameter in copy.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    torch.manual_seed(1)
    model.add_adapter(SideAdapterConfig(width=8), "arts")
    torch.nn.init.normal_(model.item_tower.side_adapters["arts"].out.weight, std=0.5)
    model.add_adapter(LoraConfig(r=4, target_modules=r"item_tower\.fusion\..*proj", init_lora_weights=False), "lora")
    model.eval()
    model.disable_adapters()
    base = scores(model, catalog)
    expected = {}
    for name in ("office", "arts", "lora"):
        model.set_adapter(name)
        assert model.active_adapter() == name
        expected[name] = scores(model, catalog)
        assert not torch.allclose(expected[name], base, atol=1e-4), name
    model.save_adapters(tmp_path / "adapters")
    saved = load_file(tmp_path / "adapters" / "office" / SIDE_WEIGHTS_FILE)
    assert any(k.startswith("modules_to_save.sequence_encoder.") for k in saved)
    assert {p.name for p in (tmp_path / "adapters" / "arts").iterdir()} == {
        SIDE_CONFIG_FILE,
        SIDE_WEIGHTS_FILE,
        "mmsr_adapter.json",
    }

    loaded = tiny().eval()
    assert loaded.load_adapters(tmp_path / "adapters", force=True) == ["arts", "lora", "office"]
    for name in ("office", "arts", "lora", "office"):  # back and forth
        loaded.set_adapter(name)
        torch.testing.assert_close(scores(loaded, catalog), expected[name], rtol=1e-5, atol=1e-5)
    loaded.disable_adapters()
    torch.testing.assert_close(scores(loaded, catalog), base, rtol=1e-5, atol=1e-5)
    loaded.delete_adapter("office")
    assert loaded.list_adapters() == ["arts", "lora"] and loaded.active_adapter() is None
    assert "office" not in loaded.item_tower.side_adapters
    with pytest.raises(ValueError, match="side adapter.*cannot be merged"):
        loaded.save_merged(tmp_path / "merged", "arts")


def test_a_side_adapter_checks_its_base_and_its_files(catalog, tmp_path):  # noqa: F811
    base = tmp_path / "base"
    tiny().save_pretrained(base)
    model = MMSRModel.from_pretrained(base)
    model.add_adapter(SideAdapterConfig(), "office")
    model.save_adapter(tmp_path / "office", "office")
    record = json.loads((tmp_path / "office" / "mmsr_adapter.json").read_text())
    assert record["base_sha256"] == model.base_fingerprint
    assert json.loads((tmp_path / "office" / SIDE_CONFIG_FILE).read_text())["base_model_name_or_path"] == str(base)

    other = tiny()
    with torch.no_grad():
        next(other.item_tower.fusion.parameters()).add_(1.0)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="trained on base"):
        MMSRModel.from_pretrained(tmp_path / "other").load_adapter(tmp_path / "office")

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("mmsr_adapter.json", SIDE_WEIGHTS_FILE):
        (broken / name).write_bytes((tmp_path / "office" / name).read_bytes())
    (broken / SIDE_CONFIG_FILE).write_text('{"adapter_type": "MMSR_SIDE", "width": "wide"}')
    with pytest.raises(CheckpointError, match=rf"{SIDE_CONFIG_FILE}.*width.*'wide'"):
        MMSRModel.from_pretrained(base).load_adapter(broken)

    config = json.loads((tmp_path / "office" / SIDE_CONFIG_FILE).read_text())
    (broken / SIDE_CONFIG_FILE).write_text(json.dumps({**config, "image_widths": config["image_widths"][:-1]}))
    with pytest.raises(CheckpointError, match="does not fit this base model.*image"):
        MMSRModel.from_pretrained(base).load_adapter(broken)

    (broken / SIDE_CONFIG_FILE).write_text(json.dumps({**config, "width": 32}))
    fresh = MMSRModel.from_pretrained(base)
    fresh.item_tower.requires_grad_(False)  # the sequence encoder trains (a side adapter freezes it while loaded)
    trainable = {name for name, parameter in fresh.named_parameters() if parameter.requires_grad}
    with pytest.raises(CheckpointError, match="weights do not fit its config"):
        fresh.load_adapter(broken)
    assert fresh.list_adapters() == []  # nothing half-loaded
    assert {name for name, parameter in fresh.named_parameters() if parameter.requires_grad} == trainable


def test_mmsr_adapt_method_side_writes_an_adapter_that_reloads_and_publishes(base_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "office-side"
    argv = ["--target", "office", "--base", str(base_dir), "--data_dir", str(data_dir), "--output_dir", str(out)]
    argv += ["--method", "side", "--side_width", "16", "--feature_cache_dir", str(tmp_path / "cache")]
    assert adapt_main([*argv, *TINY_TRAIN_FLAGS, "--num_epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| side adapter |" in printed and "Adapter 'office' written to" in printed
    assert (out / SIDE_CONFIG_FILE).is_file() and (out / SIDE_WEIGHTS_FILE).is_file()
    assert not (out / "adapter_config.json").exists()
    card = (out / "README.md").read_text()
    assert "A **side adapter**" in card and "library_name: mmsr_peft" in card and "PeftModel" not in card
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["trainable_parameters"] < metrics["total_parameters"] / 2

    office = load_domain("office", data_dir=str(data_dir)).catalog
    histories = [office.item_ids[:4], office.item_ids[20:22]]
    model = MMSRModel.from_pretrained(base_dir)
    base_top = model.recommend(histories, office, k=8)
    model.load_adapter(out)
    expected = model.recommend(histories, office, k=8)
    assert expected.item_ids != base_top.item_ids  # it trained

    assert publish_main(["--folder", str(base_dir), "--repo_id", "org/side-base"]) == 0
    argv = ["--folder", str(out), "--repo_id", "org/side-office", "--base_repo_id", "org/side-base"]
    assert publish_main(argv) == 0
    remote = MMSRModel.from_pretrained("org/side-base")
    remote.load_adapter("org/side-office", adapter_name="office")
    top = remote.recommend(histories, office, k=8)
    assert top.item_ids == expected.item_ids
    torch.testing.assert_close(top.scores, expected.scores, rtol=1e-5, atol=1e-5)


def test_side_method_refuses_lora_options(data_dir):
    with pytest.raises(ValueError, match="--components applies to"):
        AdaptArguments(target="office", data_dir=str(data_dir), method="side", components=["text"])
    with pytest.raises(ValueError, match="--side_width"):
        AdaptArguments(target="office", data_dir=str(data_dir), method="side", side_width=0)


def test_adapt_returns_the_side_row_and_keeps_the_base(base_dir, data_dir, tmp_path):
    adapt_args = AdaptArguments(target="arts", base=str(base_dir), data_dir=str(data_dir), method="side")
    before = MMSRModel.from_pretrained(base_dir).base_fingerprint
    model, results = adapt(adapt_args, TrainingArguments(output_dir=str(tmp_path / "a"), num_epochs=1, batch_size=16))
    assert set(results) == {"random", "zero-shot base", "side adapter"}
    assert MMSRModel.from_pretrained(base_dir).base_fingerprint == before
    state = base_state_dict(model)
    original = MMSRModel.from_pretrained(base_dir).state_dict()
    assert all(torch.equal(state[k], original[k]) for k in original)
