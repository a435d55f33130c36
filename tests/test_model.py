"""The model: save/load round trips, strict loading, unsafe weights, LoRA adapters, recommend."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmsr_peft import Catalog, MMSRModel
from mmsr_peft.builder import ModelArguments, build_model
from mmsr_peft.data.collate import TrainCollator, pad_histories
from mmsr_peft.data.processing import ItemInputs
from mmsr_peft.encoders import OPENAI_MEAN, OPENAI_STD
from mmsr_peft.errors import CheckpointError
from mmsr_peft.lora import lora_target_modules

ITEM_IDS = [f"it-{i}" for i in range(12)]


def tiny(item_tower="multimodal", fusion="concat", **kwargs) -> MMSRModel:
    torch.manual_seed(0)
    args = ModelArguments(
        **kwargs,
        item_tower=item_tower,
        text_model="tiny-bert",
        vision_model="micro-vit",
        image_size=32,
        hidden_size=32,
        max_len=8,
        fusion=fusion,
        text_max_length=16,
    )
    return build_model(args, item_vocab=ITEM_IDS).eval()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    images = []
    for i in range(len(ITEM_IDS)):
        if i % 4 == 3:  # some items have no image
            images.append(None)
            continue
        path = folder / f"{i}.png"
        Image.new("RGB", (40, 32), (20 * i, 255 - 20 * i, 90)).save(path)
        images.append(str(path))
    texts = [f"a {c} striped notebook number {i}" if i % 5 else "" for i, c in enumerate(["red", "blue", "green"] * 4)]
    return Catalog(ITEM_IDS, texts, images, name="tiny")


def batch_of(model, catalog):
    inputs = model.processor(catalog.records(range(len(catalog))))
    sequences = [torch.tensor([0, 1, 2, 3]).numpy(), torch.tensor([4, 5, 6, 7, 8, 9]).numpy()]
    return TrainCollator(inputs, num_negatives=3, seed=0)(sequences)


@pytest.mark.parametrize(
    "item_tower, fusion",
    [
        ("multimodal", "concat"),
        ("multimodal", "merge_attention"),
        ("text", "concat"),
        ("image", "concat"),
        ("id", "concat"),
    ],
)
def test_save_then_load_gives_identical_outputs(item_tower, fusion, catalog, tmp_path):
    model = tiny(item_tower, fusion)
    batch = batch_of(model, catalog)
    before = model(batch.items, batch.inputs, batch.targets)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = MMSRModel.from_pretrained(tmp_path / "ckpt")
    after = loaded(batch.items, batch.inputs, batch.targets)
    # exact: the same forward on identical weights
    assert torch.equal(before.sequence_output, after.sequence_output)
    assert torch.equal(before.loss, after.loss)
    assert loaded.config == model.config
    histories = [ITEM_IDS[:3], ITEM_IDS[5:7]]  # exact below too: the same forward, so the same scores and order
    assert loaded.recommend(histories, catalog, k=4).item_ids == model.recommend(histories, catalog, k=4).item_ids


@pytest.mark.parametrize(
    "item_tower, fusion", [("multimodal", "gated"), ("multimodal", "merge_attention"), ("text", "concat")]
)
def test_feature_dropout_acts_in_training_only_and_is_saved_with_the_model(item_tower, fusion, catalog, tmp_path):
    model = tiny(item_tower, fusion, feature_dropout=0.5)
    inputs = model.processor(catalog.records(range(len(catalog))))
    tower = model.item_tower
    # exact below: one code path run twice, deterministic outside training
    assert torch.equal(model.embed_catalog(inputs), model.embed_catalog(inputs))
    tower.train()
    assert not torch.equal(tower(inputs), tower(inputs))  # a fresh dropout mask per call
    tower.text.eval()  # as when a cache is filled (encode_catalog): the tower trains, the encoder is in eval mode
    assert torch.equal(tower.encode_text(inputs).pooled, tower.encode_text(inputs).pooled)  # no feature dropout
    model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["feature_dropout"] == 0.5
    assert MMSRModel.from_pretrained(tmp_path / "ckpt").config.feature_dropout == 0.5
    with pytest.raises(ValueError, match="feature_dropout must be in"):
        tiny("id", feature_dropout=0.5)
    with pytest.raises(ValueError, match="feature_dropout must be in"):
        tiny(feature_dropout=1.0)


def test_new_item_boost_lifts_the_new_items_of_recommend_and_is_saved(catalog, tmp_path):
    model = tiny(new_item_boost=2.0)  # scores are cosines (spread 2): a boost of 2 puts new items first
    history, new = [ITEM_IDS[:3]], ["it-9", "it-11"]
    plain = model.recommend(history, catalog, k=3)
    boosted = model.recommend(history, catalog, k=3, new_items=new)
    assert set(boosted.item_ids[0][:2]) == set(new) and boosted.item_ids != plain.item_ids
    model.save_pretrained(tmp_path / "ckpt")
    assert MMSRModel.from_pretrained(tmp_path / "ckpt").config.new_item_boost == 2.0
    with pytest.raises(ValueError, match="new_items: item ids not in catalog"):
        model.recommend(history, catalog, new_items=["nope"])
    with pytest.raises(ValueError, match="new_item_boost must be >= 0"):
        tiny(new_item_boost=-1.0)


def test_missing_keys_and_unexpected_keys_are_listed(catalog, tmp_path):
    tiny().save_pretrained(tmp_path / "ckpt")
    weights_path = tmp_path / "ckpt" / "model.safetensors"
    weights = load_file(weights_path)
    weights.pop("sequence_encoder.position.weight")
    weights["extra.weight"] = torch.zeros(2)
    save_file(weights, weights_path)
    with pytest.raises(CheckpointError) as err:
        MMSRModel.from_pretrained(tmp_path / "ckpt")
    assert "sequence_encoder.position.weight" in str(err.value) and "extra.weight" in str(err.value)


def test_pickle_weights_are_refused_unless_allowed(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "ckpt" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        MMSRModel.from_pretrained(tmp_path / "ckpt")
    loaded = MMSRModel.from_pretrained(tmp_path / "ckpt", allow_pickle=True)
    # exact: the weights are copied
    assert torch.equal(loaded.sequence_encoder.position.weight, model.sequence_encoder.position.weight)


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    tiny().save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        MMSRModel.from_pretrained(tmp_path / "ckpt")


def test_config_json_with_unknown_key_is_refused(tmp_path):
    tiny().save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    config = json.loads(path.read_text())
    config["fusion"]["kind"] = "concat"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="kind"):
        MMSRModel.from_pretrained(tmp_path / "ckpt")


def test_lora_adapters_train_alone_change_outputs_switch_and_round_trip(catalog, tmp_path):
    from peft import LoraConfig, PeftModel

    model = tiny()
    batch = batch_of(model, catalog)
    base = model(batch.items, batch.inputs).sequence_output
    targets = lora_target_modules(model)
    model.add_adapter(LoraConfig(r=4, target_modules=targets, init_lora_weights=False), "office")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert any(".text." in n for n in trainable) and any(".vision." in n for n in trainable)
    assert any(".fusion." in n for n in trainable)
    office = model(batch.items, batch.inputs).sequence_output
    assert not torch.allclose(office, base)

    model.add_adapter(LoraConfig(r=2, target_modules=targets, init_lora_weights=False), "arts")
    arts = model(batch.items, batch.inputs).sequence_output
    assert model.list_adapters() == ["office", "arts"] and not torch.allclose(arts, office)
    model.set_adapter("office")
    assert torch.allclose(model(batch.items, batch.inputs).sequence_output, office, atol=1e-5)
    model.disable_adapters()
    assert torch.allclose(model(batch.items, batch.inputs).sequence_output, base, atol=1e-5)  # MHA-LoRA merges

    model.save_pretrained(tmp_path / "base")
    model.save_adapter(tmp_path / "office", "office")
    assert {p.name for p in (tmp_path / "office").iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "mmsr_adapter.json",
    }
    fresh = MMSRModel.from_pretrained(tmp_path / "base")
    assert torch.allclose(fresh(batch.items, batch.inputs).sequence_output, base, atol=1e-5)  # base holds no adapter
    fresh.load_adapter(tmp_path / "office", adapter_name="office")
    assert torch.allclose(fresh(batch.items, batch.inputs).sequence_output, office, atol=1e-6)
    # users of plain peft get the same model
    plain = PeftModel.from_pretrained(MMSRModel.from_pretrained(tmp_path / "base"), str(tmp_path / "office")).eval()
    assert torch.allclose(plain(batch.items, batch.inputs).sequence_output, office, atol=1e-6)


def test_adapter_for_another_architecture_is_refused(tmp_path):
    from peft import LoraConfig

    other = tiny(fusion="merge_attention")
    other.add_adapter(LoraConfig(r=4, target_modules=lora_target_modules(other)), "x")
    other.save_adapter(tmp_path / "x", "x")
    model = tiny()
    with pytest.raises(CheckpointError, match="does not fit"):
        model.load_adapter(tmp_path / "x")
    assert model.list_adapters() == []


@pytest.mark.parametrize(
    "item_tower, fusion",
    [("multimodal", "concat"), ("multimodal", "merge_attention"), ("text", "concat"), ("image", "concat")],
)
def test_default_lora_targets_match_modules_of_every_component(item_tower, fusion):
    import re

    model = tiny(item_tower, fusion)
    pattern = lora_target_modules(model)
    matched = [name for name, _ in model.named_modules() if re.fullmatch(pattern, name)]
    if item_tower in ("multimodal", "text"):
        assert any(n.startswith("item_tower.text.") for n in matched)
    if item_tower in ("multimodal", "image"):
        assert any(n.startswith("item_tower.vision.") for n in matched)
    assert any(n.startswith(("item_tower.fusion.", "item_tower.head.")) for n in matched)
    with pytest.raises(ValueError, match="unknown component 'audio'"):
        lora_target_modules(model, ["fusion", "audio"])
    if item_tower != "multimodal":
        missing = "vision" if item_tower == "text" else "text"
        with pytest.raises(ValueError, match=f"component '{missing}' does not exist"):
            lora_target_modules(model, [missing])


def test_missing_image_is_masked_not_read(catalog):
    model = tiny(fusion="merge_attention")
    inputs = model.processor(catalog.records([3, 7]))  # both have no image
    assert not inputs.has_image.any()
    first = model.embed_items(inputs)
    inputs.pixel_values = torch.randint(0, 255, inputs.pixel_values.shape, dtype=torch.uint8)
    assert torch.allclose(model.embed_items(inputs), first, atol=1e-6)


def test_recommend_excludes_history_and_rejects_bad_input(catalog):
    model = tiny()
    top = model.recommend([ITEM_IDS[:5]], catalog, k=7)
    assert len(top.item_ids[0]) == 7 and not set(top.item_ids[0]) & set(ITEM_IDS[:5])
    assert torch.all(top.scores[:, :-1] >= top.scores[:, 1:])
    # a history longer than max_len (8): the model reads the last 8 items, and none of the 10 comes back
    long = model.recommend([ITEM_IDS[:10]], catalog, k=2)
    assert sorted(long.item_ids[0]) == sorted(ITEM_IDS[10:])
    window = model.recommend([ITEM_IDS[2:10]], catalog, k=4)  # the same user state, 2 more candidates
    assert [i for i in window.item_ids[0] if i in ITEM_IDS[10:]] == long.item_ids[0]
    with pytest.raises(ValueError, match="positive integer"):
        model.recommend([ITEM_IDS[:2]], catalog, k=0)
    with pytest.raises(ValueError, match="'nope'"):
        model.recommend([["it-1", "nope"]], catalog, k=3)


def test_padding_never_changes_a_user_embedding():
    model = tiny()
    items = torch.nn.functional.normalize(torch.randn(10, 32), dim=-1)
    short = pad_histories([torch.tensor([1, 2, 3]).numpy()])
    padded = pad_histories([torch.tensor([1, 2, 3]).numpy(), torch.arange(8).numpy()])
    assert torch.allclose(model.user_embeddings(items, short)[0], model.user_embeddings(items, padded)[0], atol=1e-6)


@pytest.mark.parametrize(
    "tower",
    [
        {"layers": 2, "width": 32, "head_width": 16, "patch_size": 8},  # ViT: pooled + patch tokens
        {"layers": [1, 1, 1, 1], "width": 16, "head_width": 8},  # ModifiedResNet: pooled only
    ],
)
def test_vision_tower_from_config_is_filled_from_a_local_open_clip_file(tower, tmp_path):
    from mmsr_peft.encoders import VisionEncoder, VisionEncoderConfig
    from mmsr_peft.fusion import FusionConfig, build_fusion

    config = VisionEncoderConfig(tower=tower, embed_dim=24, image_size=64)
    source = VisionEncoder(config).eval()
    # an open_clip checkpoint names the tower `visual.*` next to the text tower
    state = {f"visual.{k}": v for k, v in source.tower.state_dict().items()}
    state["token_embedding.weight"] = torch.zeros(3, 4)
    torch.save(state, tmp_path / "open_clip.pt")
    target = VisionEncoder(config).eval()
    target.load_backbone(str(tmp_path / "open_clip.pt"))
    pixels = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    expected, loaded = source(pixels), target(pixels)
    # exact: the same forward on identical weights
    assert torch.equal(expected.pooled, loaded.pooled) and expected.pooled.shape == (2, 24)
    assert loaded.tokens.shape[-1] == target.token_size
    fusion = build_fusion(FusionConfig(type="merge_attention"), (16, 16), (24, target.token_size), 16)
    text = type(loaded)(torch.randn(2, 16), torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool))
    assert fusion(text, loaded, torch.tensor([True, True]), torch.tensor([True, False])).shape == (2, 16)


@pytest.mark.parametrize("name", ["ViT-B-32-quickgelu", "ViT-B-32"])
def test_an_open_clip_name_builds_the_activation_of_open_clip_s_own_model(name):
    import open_clip

    from mmsr_peft.encoders import VisionEncoder, VisionEncoderConfig

    config = VisionEncoderConfig.from_open_clip(name)
    assert config.quick_gelu == name.endswith("-quickgelu")
    ours = VisionEncoder(config).tower.transformer.resblocks[0].mlp.gelu
    theirs = open_clip.create_model(name, pretrained=None).visual.transformer.resblocks[0].mlp.gelu
    assert type(ours) is type(theirs)
    # a config.json saved before the field existed loads as the GELU tower it was built as
    saved = {key: value for key, value in config.to_dict().items() if key != "quick_gelu"}
    assert VisionEncoderConfig.from_dict(saved).quick_gelu is False


@pytest.mark.parametrize(
    "name, mean, std",
    [
        ("ViT-B-16-SigLIP", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # every tag of the name: SigLIP's
        ("MobileCLIP-S1", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        ("ViT-B-32", OPENAI_MEAN, OPENAI_STD),
        ("ViT-L-14", OPENAI_MEAN, OPENAI_STD),  # its tags disagree (OpenAI's, DFN's 0.5): OpenAI's
    ],
)
def test_an_open_clip_name_normalises_pixels_as_its_pretrained_weights_expect(name, mean, std):
    from mmsr_peft.encoders import VisionEncoderConfig

    config = VisionEncoderConfig.from_open_clip(name)
    assert (config.image_mean, config.image_std) == (mean, std)


def test_merged_export_scores_like_the_adapted_model(catalog, tmp_path):
    from peft import LoraConfig

    model = tiny()
    model.save_pretrained(tmp_path / "base")
    model.add_adapter(LoraConfig(r=4, target_modules=lora_target_modules(model), init_lora_weights=False), "office")
    batch = batch_of(model, catalog)
    adapted = model(batch.items, batch.inputs).sequence_output
    model.save_merged(tmp_path / "merged", "office")
    with pytest.raises(FileExistsError, match="already holds a model"):  # not over a model, its own base included
        model.save_merged(tmp_path / "base", "office")
    model.save_merged(tmp_path / "merged", "office", overwrite=True)
    merged = MMSRModel.from_pretrained(tmp_path / "merged")
    assert merged.list_adapters() == []
    assert torch.allclose(merged(batch.items, batch.inputs).sequence_output, adapted, atol=1e-5)
    # the adapted model itself is unchanged: still adapted, and its base is still the saved base
    assert torch.allclose(model(batch.items, batch.inputs).sequence_output, adapted, atol=1e-5)
    assert model.base_fingerprint == MMSRModel.from_pretrained(tmp_path / "base").base_fingerprint


def test_adapter_for_another_base_is_refused_unless_forced(tmp_path):
    from peft import LoraConfig

    first, second = tiny(), tiny()
    torch.nn.init.normal_(second.sequence_encoder.position.weight)  # same architecture, other weights
    first.save_pretrained(tmp_path / "first")
    second.save_pretrained(tmp_path / "second")
    base = MMSRModel.from_pretrained(tmp_path / "first")
    base.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(base)), "office")
    base.save_adapter(tmp_path / "office", "office")
    record = json.loads((tmp_path / "office" / "mmsr_adapter.json").read_text())
    assert record["base_model"] == str(tmp_path / "first") and len(record["base_sha256"]) == 64
    MMSRModel.from_pretrained(tmp_path / "first").load_adapter(tmp_path / "office")  # its own base: fine
    other = MMSRModel.from_pretrained(tmp_path / "second")
    with pytest.raises(CheckpointError, match="trained on base"):
        other.load_adapter(tmp_path / "office")
    assert other.list_adapters() == []
    assert other.load_adapter(tmp_path / "office", force=True) == "office"
    (tmp_path / "office" / "mmsr_adapter.json").unlink()  # plain peft's layout: no record of the base
    with pytest.raises(CheckpointError, match="no mmsr_adapter.json"):
        MMSRModel.from_pretrained(tmp_path / "first").load_adapter(tmp_path / "office")
    assert MMSRModel.from_pretrained(tmp_path / "first").load_adapter(tmp_path / "office", force=True) == "office"


@pytest.mark.parametrize("fusion", ["concat", "merge_attention"])
def test_texts_encoded_in_groups_of_similar_length_embed_like_one_padded_batch(fusion, catalog):
    model = tiny(fusion=fusion)
    inputs = model.processor(catalog.records(range(len(catalog))))
    encoder = model.item_tower.text
    with torch.no_grad():
        encoder.length_bucket = 0  # the whole batch at once, every text padded to max_length
        whole = model.embed_catalog(inputs)
        encoder.length_bucket = 3  # 12 texts in 4 groups, each cut after its longest
        grouped = model.embed_catalog(inputs)
        states = encoder(inputs.input_ids, inputs.attention_mask)
        encoder.length_bucket = 3
        left = encoder(inputs.input_ids.flip(1), inputs.attention_mask.flip(1))  # left padding: run as it is
    assert int(inputs.attention_mask.sum(1).max()) < inputs.input_ids.shape[1]  # so there is padding to cut
    assert torch.allclose(grouped, whole, atol=1e-5)
    assert not states.tokens[~states.mask].any()  # padding positions come back as zeros
    assert left.tokens[~left.mask].any()  # nothing was cut or zeroed


def test_an_empty_share_of_the_catalog_embeds_to_no_rows():
    model = tiny()
    inputs = ItemInputs(item_index=torch.arange(0))
    embeddings = model.embed_catalog(inputs)
    assert embeddings.shape == (0, model.config.hidden_size) and embeddings.dtype == torch.float32
