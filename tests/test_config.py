import json
import os
import stat

import open_clip.model  # noqa: F401  (VisionEncoderConfig imports it lazily: ~2 s, paid here once, not in a test)
import pytest

from mmsr_peft.encoders import TextEncoderConfig, VisionEncoderConfig
from mmsr_peft.files import atomic_directory, atomic_file, atomic_save_tensors, atomic_write_text
from mmsr_peft.fusion import FusionConfig
from mmsr_peft.model import MMSRConfig
from mmsr_peft.sequence_encoders import SequenceEncoderConfig

TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "vocab_size": 99,
}


def _modal_config():
    return MMSRConfig(
        item_tower="multimodal",
        hidden_size=32,
        text=TextEncoderConfig(backbone=dict(TINY_BERT), pooling="cls", max_length=16, source="tiny-bert"),
        vision=VisionEncoderConfig(image_size=32, image_mean=(0.5, 0.5, 0.5)),
        fusion=FusionConfig(type="merge_attention", num_layers=2),
        sequence=SequenceEncoderConfig(num_layers=1, max_len=20),
        temperature=0.1,
    )


# ---------------------------------------------------------------- round trip


def test_round_trip_id_config():
    config = MMSRConfig(item_tower="id", num_items=10)
    data = config.to_dict()
    assert data["item_tower"] == "id" and data["num_items"] == 10 and data["text"] is None
    assert data["fusion"] == {
        "type": "concat",
        "num_layers": 1,
        "num_heads": 2,
        "dropout": 0.1,
        "intermediate_size": None,
        "condition": "text",
        "init_from": None,
    }
    restored = MMSRConfig.from_dict(json.loads(json.dumps(data)))
    assert restored == config
    assert isinstance(restored.fusion, FusionConfig) and isinstance(restored.sequence, SequenceEncoderConfig)


def test_round_trip_nested_configs_through_json():
    config = _modal_config()
    data = json.loads(json.dumps(config.to_dict()))  # as saved in config.json: tuples become lists
    assert data["text"]["backbone"] == TINY_BERT
    assert data["vision"]["image_mean"] == [0.5, 0.5, 0.5]
    restored = MMSRConfig.from_dict(data)
    assert restored == config
    assert isinstance(restored.text, TextEncoderConfig) and isinstance(restored.vision, VisionEncoderConfig)
    assert restored.vision.image_mean == (0.5, 0.5, 0.5)  # back to a tuple
    assert restored.to_dict() == config.to_dict()


def test_from_dict_accepts_config_objects_and_int_for_float():
    fusion = FusionConfig(type="merge_attention")
    config = MMSRConfig.from_dict({"item_tower": "id", "num_items": 3, "fusion": fusion, "temperature": 1})
    assert config.fusion is fusion
    assert config.temperature == 1


# ---------------------------------------------------------------- unknown keys and wrong types


def test_unknown_top_level_key():
    with pytest.raises(ValueError) as err:
        MMSRConfig.from_dict({"item_tower": "id", "num_items": 10, "hiden_size": 32})
    message = str(err.value)
    assert "MMSRConfig" in message and "'hiden_size'" in message
    assert all(name in message for name in ("hidden_size", "item_tower", "temperature", "fusion"))


@pytest.mark.parametrize(
    "field, data, valid",
    [
        ("fusion", {"typ": "concat"}, ["type", "num_layers", "num_heads", "dropout"]),
        ("sequence", {"max_length": 20}, ["max_len", "num_layers"]),
        ("text", {"backbone": TINY_BERT, "pool": "mean"}, ["backbone", "pooling", "max_length", "source"]),
    ],
)
def test_unknown_nested_key(field, data, valid):
    with pytest.raises(ValueError) as err:
        MMSRConfig.from_dict({"item_tower": "id", "num_items": 10, field: data})
    message = str(err.value)
    unknown = next(iter(set(data) - set(valid)))
    assert f"MMSRConfig.{field}" in message and repr(unknown) in message
    assert all(name in message for name in valid)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("hidden_size", "64", "int"),
        ("hidden_size", 64.0, "int"),
        ("hidden_size", True, "int"),
        ("temperature", "abc", "float"),
        ("fusion", ["concat"], "mapping"),
        ("hidden_size", None, "int"),
    ],
)
def test_wrong_type_names_the_field(key, value, expected):
    with pytest.raises(ValueError) as err:
        MMSRConfig.from_dict({"item_tower": "id", "num_items": 10, key: value})
    message = str(err.value)
    assert f"MMSRConfig.{key}" in message and expected in message


def test_wrong_type_in_nested_config_names_the_path():
    with pytest.raises(ValueError, match=r"MMSRConfig\.fusion\.num_heads: got str '2', expected int"):
        MMSRConfig.from_dict({"item_tower": "id", "num_items": 10, "fusion": {"num_heads": "2"}})


def test_non_mapping_config():
    with pytest.raises(ValueError, match="MMSRConfig: expected a mapping, got list"):
        MMSRConfig.from_dict([("item_tower", "id")])


# ---------------------------------------------------------------- invalid values


def test_invalid_item_tower_lists_choices():
    with pytest.raises(ValueError) as err:
        MMSRConfig.from_dict({"item_tower": "nonsense"})
    message = str(err.value)
    assert "'nonsense'" in message
    assert all(tower in message for tower in ("multimodal", "text", "image", "id"))


def test_invalid_fusion_type_lists_choices():
    with pytest.raises(ValueError) as err:
        MMSRConfig.from_dict({"item_tower": "id", "num_items": 10, "fusion": {"type": "nope"}})
    message = str(err.value)
    assert "fusion.type" in message and "'nope'" in message and "concat" in message and "merge_attention" in message


@pytest.mark.parametrize(
    "data, needed",
    [
        ({"item_tower": "multimodal", "vision": {}}, "text"),
        ({"item_tower": "text"}, "text"),
        ({"item_tower": "image"}, "vision"),
        ({"item_tower": "multimodal", "text": {"backbone": TINY_BERT}}, "vision"),
    ],
)
def test_tower_without_its_encoder_config(data, needed):
    with pytest.raises(ValueError) as err:
        MMSRConfig.from_dict(data)
    message = str(err.value)
    assert repr(data["item_tower"]) in message and f"(`{needed}`)" in message


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"item_tower": "id"}, "num_items"),
        ({"item_tower": "id", "num_items": 3, "temperature": 0.0}, "temperature"),
        ({"item_tower": "id", "num_items": 3, "hidden_size": 0}, "hidden_size"),
        ({"item_tower": "text", "text": {"backbone": {"hidden_size": 32}}}, "model_type"),
        ({"item_tower": "text", "text": {"backbone": TINY_BERT, "pooling": "max"}}, "'mean'"),
        ({"item_tower": "image", "vision": {"tower": {"layrs": 2}}}, "'layrs'"),
        ({"item_tower": "id", "num_items": 3, "sequence": {"type": "gru"}}, "sasrec"),
    ],
)
def test_invalid_values(data, fragment):
    with pytest.raises(ValueError, match=fragment):
        MMSRConfig.from_dict(data)


# ---------------------------------------------------------------- atomic writes


def _temp_leftovers(parent):
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name]


def _existing_folder(tmp_path):
    folder = tmp_path / "model"
    (folder / "state").mkdir(parents=True)
    (folder / "config.json").write_text("old config")
    (folder / "keep.txt").write_text("keep")
    (folder / "state" / "optimizer.bin").write_text("optimizer")
    return folder


def test_atomic_directory_failure_leaves_folder_unchanged(tmp_path):
    folder = _existing_folder(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(folder) as tmp:
            assert tmp.parent == folder.parent and tmp != folder
            (tmp / "config.json").write_text("new config")
            (tmp / "weights.bin").write_text("half written")
            raise RuntimeError("boom")
    assert (folder / "config.json").read_text() == "old config"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "keep.txt", "state"]
    assert (folder / "state" / "optimizer.bin").read_text() == "optimizer"
    assert _temp_leftovers(tmp_path) == []


def test_atomic_directory_failure_creates_nothing(tmp_path):
    folder = tmp_path / "out" / "model"
    with pytest.raises(RuntimeError):
        with atomic_directory(folder) as tmp:
            (tmp / "config.json").write_text("new")
            raise RuntimeError("boom")
    assert not folder.exists()
    assert _temp_leftovers(folder.parent) == []


def test_atomic_directory_success_replaces_written_files_and_keeps_others(tmp_path):
    folder = _existing_folder(tmp_path)
    with atomic_directory(folder) as tmp:
        (tmp / "config.json").write_text("new config")
        (tmp / "weights.bin").write_text("weights")
        (tmp / "state").mkdir()
        (tmp / "state" / "scheduler.json").write_text("scheduler")
        (tmp / "tokenizer").mkdir()
        (tmp / "tokenizer" / "vocab.txt").write_text("vocab")
    assert (folder / "config.json").read_text() == "new config"
    assert (folder / "weights.bin").read_text() == "weights"
    assert (folder / "keep.txt").read_text() == "keep"
    assert (folder / "state" / "optimizer.bin").read_text() == "optimizer"
    assert (folder / "state" / "scheduler.json").read_text() == "scheduler"
    assert (folder / "tokenizer" / "vocab.txt").read_text() == "vocab"
    assert _temp_leftovers(tmp_path) == []


def test_atomic_directory_drops_the_owned_entries_the_block_did_not_write(tmp_path):
    folder = _existing_folder(tmp_path)
    (folder / "weights.bin").write_text("old weights")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "merges.txt").write_text("old merges")
    with atomic_directory(folder, owned=["config.json", "*.bin", "tokenizer"]) as tmp:
        (tmp / "tokenizer").mkdir()
        (tmp / "tokenizer" / "vocab.txt").write_text("vocab")
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt", "state", "tokenizer"]
    assert [p.name for p in (folder / "tokenizer").iterdir()] == ["vocab.txt"]  # replaced, not merged
    assert (folder / "state" / "optimizer.bin").read_text() == "optimizer"  # patterns name top-level entries


def test_save_pretrained_replaces_the_model_files_of_an_earlier_save(tmp_path):
    from test_model import tiny

    folder = tmp_path / "model"
    tiny().save_pretrained(folder)
    (folder / "metrics.json").write_text("{}\n")
    model = tiny()
    model.processor = None  # a model that cannot `recommend` must not load with the earlier one's processor
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]


def test_atomic_directory_creates_a_new_folder(tmp_path):
    folder = tmp_path / "a" / "b" / "model"
    with atomic_directory(folder) as tmp:
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in folder.iterdir()] == ["config.json"]
    assert (folder / "config.json").read_text() == "{}"
    assert _temp_leftovers(folder.parent) == []


def test_atomic_write_text(tmp_path):
    path = tmp_path / "sub" / "card.md"
    atomic_write_text(path, "first")
    assert path.read_text() == "first"
    atomic_write_text(path, "second ünïcode")
    assert path.read_text() == "second ünïcode"
    assert sorted(p.name for p in path.parent.iterdir()) == ["card.md"]


def test_atomic_write_text_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "card.md"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_text(path, 123)  # write() of a non-str fails after the temp file exists
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.md"]


def test_atomic_writes_keep_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "card.md", "text")
        with atomic_directory(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(umask)
    file_mode = stat.S_IMODE((tmp_path / "card.md").stat().st_mode)
    folder_mode = stat.S_IMODE((tmp_path / "model").stat().st_mode)
    assert file_mode == 0o644, f"atomic_write_text made a {oct(file_mode)} file, expected 0o644"
    assert folder_mode == 0o755, f"atomic_directory made a {oct(folder_mode)} folder, expected 0o755"


def test_every_atomic_file_gets_the_umask_permissions_not_mkstemp_ones(tmp_path):
    """Downloads, cache files and rewritten items.parquet go through `atomic_file`, by its descriptor or its path."""
    import torch

    umask = os.umask(0o027)
    try:
        with atomic_file(tmp_path / "image.jpg") as (fd, _), os.fdopen(fd, "wb") as handle:
            handle.write(b"jpeg")
        atomic_save_tensors(tmp_path / "cache.safetensors", {"x": torch.zeros(2)})
    finally:
        os.umask(umask)
    modes = {name: oct(stat.S_IMODE((tmp_path / name).stat().st_mode)) for name in ("image.jpg", "cache.safetensors")}
    assert modes == {"image.jpg": "0o640", "cache.safetensors": "0o640"}
