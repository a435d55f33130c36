"""A catalogue of bad inputs. Each one is refused at the boundary where it enters (a domain folder read by
`adapt`, a checkpoint or adapter read by `from_pretrained`/`load_adapter`, run arguments, `recommend`, a write to a
full disk) with a typed error whose message names the file, row or field and the offending value, and leaves no
output behind: the workspace holds the same files, byte for byte, as before the attempt."""

import errno
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mmsr_peft import Catalog, MMSRModel
from mmsr_peft.adaptation import AdaptArguments, adapt
from mmsr_peft.builder import ModelArguments, build_model
from mmsr_peft.errors import CheckpointError, DataError
from mmsr_peft.files import atomic_write_text
from mmsr_peft.lora import lora_target_modules
from mmsr_peft.training import TrainingArguments

ITEMS = [f"office-{i}" for i in range(6)]


@dataclass
class Bad:
    """A bad input: `action` must raise `error` whose message contains every one of `fragments`."""

    action: Callable[[], object]
    error: type[BaseException]
    fragments: tuple[str, ...]
    after: Callable[[], None] = field(default=lambda: None)  # extra checks once the attempt failed


@dataclass
class Workspace:
    root: Path  # everything a case writes lives here; it must be unchanged by the failed attempt
    base: Path  # a tiny base checkpoint (read only)
    monkeypatch: pytest.MonkeyPatch

    @property
    def domain(self) -> Path:
        return self.root / "data" / "synthetic" / "office"

    def adapt(self, **changes):
        """Runs `adapt` (what `mmsr-adapt --target office` runs) on the workspace's data, writing to `root/out`."""
        settings = {"target": "office", "base": str(self.base), "data_dir": str(self.root / "data"), **changes}
        training = TrainingArguments(output_dir=str(self.root / "out"), num_epochs=1, batch_size=4, seed=0)
        return lambda: adapt(AdaptArguments(**settings), training)


def tiny_model(seed: int = 0) -> MMSRModel:
    torch.manual_seed(seed)
    args = ModelArguments(
        text_model="tiny-bert", vision_model="micro-vit", image_size=32, hidden_size=32, max_len=8, text_max_length=16
    )
    return build_model(args).eval()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "base"
    tiny_model().save_pretrained(folder)
    return folder


@pytest.fixture
def ws(tmp_path, base, monkeypatch) -> Workspace:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))  # outside the workspace
    workspace = Workspace(tmp_path / "ws", base, monkeypatch)
    write_domain(workspace.domain)
    return workspace


def write_domain(folder: Path, items: dict | None = None, interactions: dict | None = None) -> None:
    """A valid tiny `office` domain (6 items, 3 users with 4 interactions each), with the given columns replaced."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (80 * i, 0, 0)).save(folder / "images" / f"{i}.png")
    columns = {"item_id": ITEMS, "text": [f"a red mug number {i}" for i in range(6)]}
    columns["image"] = [f"images/{i}.png" if i < 3 else None for i in range(6)]
    pq.write_table(pa.table({**columns, **(items or {})}), folder / "items.parquet")
    rows = [(f"u{u}", ITEMS[(u + j) % 6], 100 * u + j) for u in range(3) for j in range(4)]
    columns = dict(zip(("user_id", "item_id", "timestamp"), map(list, zip(*rows, strict=True)), strict=True))
    pq.write_table(pa.table({**columns, **(interactions or {})}), folder / "interactions.parquet")
    (folder / "manifest.json").write_text(json.dumps({"name": "office", "source": "synthetic", "synthetic": True}))


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with the sha256 of its content (folders and links by their kind)."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = f"link:{os.readlink(path)}"
        elif path.is_file():
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[key] = "dir"
    return out


CASES: dict[str, Callable[[Workspace], Bad]] = {}


def case(function):
    CASES[function.__name__] = function
    return function


# ------------------------------------------------------------------ domain folders (read by mmsr-adapt / pretraining)


@case
def manifest_with_a_malformed_json_line(ws):
    (ws.domain / "manifest.json").write_text('{"name": "office",\n "source": synthetic}\n')
    return Bad(ws.adapt(), DataError, ("manifest.json", "not valid JSON", "line 2"))


@case
def items_missing_a_required_column(ws):
    table = pq.read_table(ws.domain / "items.parquet").drop(["text"])
    pq.write_table(table, ws.domain / "items.parquet")
    return Bad(ws.adapt(), DataError, ("items.parquet", "missing required column 'text'"))


@case
def items_column_of_the_wrong_type(ws):
    write_domain(ws.domain, items={"item_id": list(range(6))})
    return Bad(ws.adapt(), DataError, ("items.parquet", "'item_id'", "type int64, expected string", "row 0", "= 0"))


@case
def non_numeric_timestamp(ws):
    write_domain(ws.domain, interactions={"timestamp": ["100", "101", "102", "103", "yesterday"] + ["1"] * 7})
    return Bad(
        ws.adapt(), DataError, ("interactions.parquet", "'timestamp'", "expected int64", "row 4", "'yesterday'")
    )


@case
def null_timestamp(ws):
    write_domain(ws.domain, interactions={"timestamp": pa.array([1, 2, None] + [3] * 9, pa.int64())})
    return Bad(ws.adapt(), DataError, ("interactions.parquet", "row 2", "'timestamp' is null"))


@case
def negative_timestamp(ws):
    write_domain(ws.domain, interactions={"timestamp": [100, 101, 102, -5] + [200] * 8})
    return Bad(ws.adapt(), DataError, ("interactions.parquet", "row 3", "timestamp -5 is negative"))


@case
def repeated_interaction_rows(ws):
    rows = [(f"u{u}", ITEMS[(u + j) % 6], 100 * u + j) for u in range(3) for j in range(4)]
    rows[5] = rows[4]  # u1 rated office-1 at 100 twice
    columns = dict(zip(("user_id", "item_id", "timestamp"), map(list, zip(*rows, strict=True)), strict=True))
    write_domain(ws.domain, interactions=columns)
    return Bad(ws.adapt(), DataError, ("interactions.parquet", "rows 4 and 5 are the same interaction", "100"))


@case
def unknown_item_id_in_interactions(ws):
    write_domain(ws.domain, interactions={"item_id": ITEMS[:5] + ["office-99"] + ITEMS * 1})
    return Bad(ws.adapt(), DataError, ("interactions.parquet", "row 5", "'office-99'", "not in items.parquet"))


@case
def item_with_empty_text_and_no_image(ws):
    texts = ["mug", "cup", "", "pen", "ink", "pad"]
    write_domain(ws.domain, items={"text": texts, "image": ["images/0.png", "images/1.png", None, None, None, None]})
    return Bad(ws.adapt(), DataError, ("items.parquet", "row 2", "'office-2'", "empty 'text' and null 'image'"))


@case
def image_path_escaping_the_domain_folder(ws):
    write_domain(ws.domain, items={"image": ["images/0.png", "../../etc/passwd", None, None, None, None]})
    return Bad(ws.adapt(), DataError, ("items.parquet", "row 1", "'image' = '../../etc/passwd'", "outside"))


@case
def absolute_image_path(ws):
    write_domain(ws.domain, items={"image": ["images/0.png", "/etc/passwd", None, None, None, None]})
    return Bad(ws.adapt(), DataError, ("items.parquet", "row 1", "'/etc/passwd'", "outside"))


@case
def image_symlink_leading_outside(ws):
    (ws.domain / "images" / "evil.png").symlink_to("/etc/passwd")
    write_domain(ws.domain, items={"image": ["images/0.png", "images/evil.png", None, None, None, None]})
    return Bad(ws.adapt(), DataError, ("items.parquet", "row 1", "'images/evil.png'", "outside"))


@case
def missing_image_file(ws):
    write_domain(ws.domain, items={"image": ["images/0.png", "images/nope.png", None, None, None, None]})
    return Bad(ws.adapt(), DataError, ("items.parquet", "row 1", "'images/nope.png'", "not found"))


@case
def duplicate_item_ids(ws):
    write_domain(ws.domain, items={"item_id": ITEMS[:3] + ["office-0"] + ITEMS[4:]})
    return Bad(ws.adapt(), DataError, ("items.parquet", "row 3", "duplicate item_id 'office-0'", "first at row 0"))


@case
def users_with_one_interaction(ws):
    rows = {"user_id": ["u0", "u1", "u2"], "item_id": ITEMS[:3], "timestamp": [1, 2, 3]}
    write_domain(ws.domain, interactions=rows)
    return Bad(ws.adapt(), DataError, ("interactions.parquet", "no user has at least 3 interactions"))


@case
def empty_domain(ws):
    empty = {
        "item_id": pa.array([], pa.string()),
        "text": pa.array([], pa.string()),
        "image": pa.array([], pa.string()),
    }
    pq.write_table(pa.table(empty), ws.domain / "items.parquet")
    return Bad(ws.adapt(), DataError, ("items.parquet", "no rows"))


@case
def corrupt_image_bytes(ws):
    (ws.domain / "images" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    return Bad(ws.adapt(), DataError, (str(ws.domain / "images" / "1.png"), "cannot decode image"))


@case
def decompression_bomb_image(ws):
    # a 12000 x 12000 PNG header (144 M pixels) in a few bytes: PIL only warns below 179 M pixels and allocates
    # the whole image before it finds the data missing; it must be refused from its header, naming its size
    (ws.domain / "images" / "1.png").write_bytes(_png_header(12000, 12000))
    return Bad(ws.adapt(), DataError, (str(ws.domain / "images" / "1.png"), "12000x12000"))


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------ run arguments


@case
def unknown_target(ws):
    return Bad(ws.adapt(target="nonsense"), ValueError, ("--target 'nonsense'", "office", "scientific"))


@case
def missing_target_data(ws):
    data_dir = ws.root / "nodata"
    return Bad(
        ws.adapt(data_dir=str(data_dir)),
        DataError,
        (
            "'office'",
            str(data_dir / "synthetic" / "office"),
            f"mmsr-data synthetic --data_dir {data_dir} --domains office",
        ),
    )


@case
def output_dir_equal_to_the_base(ws):
    def attempt():
        training = TrainingArguments(output_dir=str(ws.base), num_epochs=1, batch_size=4, seed=0)
        adapt(
            AdaptArguments(target="office", base=str(ws.base), data_dir=str(ws.root / "data"), method="frozen"),
            training,
        )

    before = {p.name: p.read_bytes() for p in ws.base.iterdir() if p.is_file()}
    after = lambda: assert_unchanged(ws.base, before)  # noqa: E731
    return Bad(attempt, ValueError, (f"--output_dir {ws.base} is the --base folder", "would write over it"), after)


@case
def hidden_size_the_attention_heads_cannot_split(ws):
    args = ModelArguments(text_model="tiny-bert", vision_model="micro-vit", image_size=32, hidden_size=63)
    return Bad(lambda: build_model(args), ValueError, ("hidden_size 63 is not divisible by sequence.num_heads 2",))


@case
def text_model_that_is_a_missing_folder(ws):
    args = ModelArguments(text_model="./missing-model", vision_model="micro-vit", image_size=32, hidden_size=32)
    return Bad(lambda: build_model(args), ValueError, ("--text_model ./missing-model: no folder at", "missing-model"))


@case
def feature_cache_dir_that_is_a_file(ws):
    (ws.root / "cache").write_text("a file")
    fragments = (f"--feature_cache_dir {ws.root / 'cache'} is a file, not a folder",)
    return Bad(lambda: TrainingArguments(feature_cache_dir=str(ws.root / "cache")), ValueError, fragments)


@case
def output_dir_that_is_a_file(ws):
    (ws.root / "out").write_text("a file")
    return Bad(ws.adapt(), ValueError, (f"--output_dir {ws.root / 'out'} is a file, not a folder",))


@case
def components_naming_an_unknown_part(ws):
    return Bad(ws.adapt(components=["text", "audio"]), ValueError, ("--components ['audio']", "text", "vision"))


# ------------------------------------------------------------------ checkpoints and adapters


def _copy_base(ws) -> Path:
    import shutil

    return Path(shutil.copytree(ws.base, ws.root / "base"))


@case
def config_json_with_a_malformed_line(ws):
    folder = _copy_base(ws)
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text.replace('"hidden_size": 32', '"hidden_size": 32,,', 1))
    return Bad(lambda: MMSRModel.from_pretrained(folder), CheckpointError, ("config.json", "not valid JSON", "line"))


@case
def config_json_with_an_unknown_key(ws):
    folder = _copy_base(ws)
    config = json.loads((folder / "config.json").read_text())
    config["hiden_size"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    return Bad(
        lambda: MMSRModel.from_pretrained(folder), CheckpointError, ("config.json", "unknown keys ['hiden_size']")
    )


@case
def config_json_missing_an_architecture_key(ws):
    folder = _copy_base(ws)
    config = json.loads((folder / "config.json").read_text())
    del config["hidden_size"]  # a default of 64 would build another model than the one the weights belong to
    (folder / "config.json").write_text(json.dumps(config))
    fragments = ("config.json", "missing ['hidden_size']")
    return Bad(lambda: MMSRModel.from_pretrained(folder), CheckpointError, fragments)


@case
def config_json_with_a_wrong_type(ws):
    folder = _copy_base(ws)
    config = json.loads((folder / "config.json").read_text())
    config["sequence"]["num_layers"] = "two"
    (folder / "config.json").write_text(json.dumps(config))
    fragments = ("config.json.sequence.num_layers", "got str 'two'", "expected int")
    return Bad(lambda: MMSRModel.from_pretrained(folder), CheckpointError, fragments)


@case
def config_json_with_an_invalid_choice(ws):
    folder = _copy_base(ws)
    config = json.loads((folder / "config.json").read_text())
    config["item_tower"] = "telepathy"
    (folder / "config.json").write_text(json.dumps(config))
    return Bad(
        lambda: MMSRModel.from_pretrained(folder), CheckpointError, ("config.json", "'telepathy'", "'multimodal'")
    )


def _edit_weights(folder: Path, edit) -> None:
    state = {k: v.clone() for k, v in load_file(folder / "model.safetensors").items()}  # not a map of the file
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@case
def checkpoint_with_missing_keys(ws):
    folder = _copy_base(ws)
    _edit_weights(folder, lambda state: state.pop("sequence_encoder.position.weight"))
    fragments = ("model.safetensors", "1 missing keys", "'sequence_encoder.position.weight'", "0 unexpected")
    return Bad(lambda: MMSRModel.from_pretrained(folder), CheckpointError, fragments)


@case
def checkpoint_with_unexpected_keys(ws):
    folder = _copy_base(ws)
    _edit_weights(folder, lambda state: state.update({"extra.head.weight": torch.zeros(2)}))
    fragments = ("model.safetensors", "0 missing keys", "1 unexpected keys", "'extra.head.weight'")
    return Bad(lambda: MMSRModel.from_pretrained(folder), CheckpointError, fragments)


@case
def checkpoint_with_a_wrong_shape(ws):
    folder = _copy_base(ws)
    _edit_weights(folder, lambda state: state.update({"sequence_encoder.position.weight": torch.zeros(3, 32)}))
    fragments = ("model.safetensors", "sequence_encoder.position.weight: (3, 32), expected (8, 32)")
    return Bad(lambda: MMSRModel.from_pretrained(folder), CheckpointError, fragments)


def assert_unchanged(folder: Path, before: dict[str, bytes]) -> None:
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def _nan_in_position(state):
    state["sequence_encoder.position.weight"][1, :3] = float("nan")


@case
def checkpoint_with_nan_weights(ws):
    folder = _copy_base(ws)
    _edit_weights(folder, _nan_in_position)
    fragments = ("model.safetensors", "tensor 'sequence_encoder.position.weight'", "3 NaN or infinite values")
    return Bad(lambda: MMSRModel.from_pretrained(folder), CheckpointError, fragments)


@case
def publishing_nan_weights(ws):
    from mmsr_peft.hub import PublishArguments, publish

    folder = _copy_base(ws)
    _edit_weights(folder, _nan_in_position)
    fragments = ("model.safetensors", "3 NaN or infinite values")
    return Bad(lambda: publish(PublishArguments(str(folder), "org/base", dry_run=True)), CheckpointError, fragments)


@case
def publishing_truncated_weights(ws):
    from mmsr_peft.hub import PublishArguments, publish

    folder = _copy_base(ws)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    fragments = (str(weights), "unreadable safetensors file")
    return Bad(lambda: publish(PublishArguments(str(folder), "org/base", dry_run=True)), CheckpointError, fragments)


@case
def pickle_offered_as_weights(ws):
    folder = _copy_base(ws)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    fragments = (str(folder), "pytorch_model.bin", "pickle can run arbitrary code", "allow_pickle=True")
    return Bad(lambda: MMSRModel.from_pretrained(folder), CheckpointError, fragments)


@case
def pickle_named_model_safetensors(ws):
    folder = _copy_base(ws)
    state = {k: v.clone() for k, v in load_file(folder / "model.safetensors").items()}
    torch.save(state, folder / "model.safetensors")
    fragments = (str(folder / "model.safetensors"), "unreadable safetensors file")
    return Bad(lambda: MMSRModel.from_pretrained(folder), CheckpointError, fragments)


@case
def truncated_safetensors(ws):
    folder = _copy_base(ws)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return Bad(lambda: MMSRModel.from_pretrained(folder), CheckpointError, (str(path), "unreadable safetensors file"))


@case
def hub_id_that_does_not_exist(ws):
    from huggingface_hub.constants import HF_HUB_CACHE

    def nothing_cached():
        assert not list(Path(HF_HUB_CACHE).glob("models--org--no-such-model*/snapshots/*/*"))

    fragments = ("org/no-such-model", "no such repo on the Hub")
    return Bad(lambda: MMSRModel.from_pretrained("org/no-such-model"), CheckpointError, fragments, nothing_cached)


def _adapter(ws, base_folder: Path, r: int = 4) -> Path:
    from peft import LoraConfig

    model = MMSRModel.from_pretrained(base_folder)
    model.add_adapter(LoraConfig(r=r, target_modules=lora_target_modules(model), init_lora_weights=False), "office")
    model.save_adapter(ws.root / "adapter", "office")
    return ws.root / "adapter"


@case
def adapter_for_a_different_base(ws):
    adapter = _adapter(ws, ws.base)
    other = ws.root / "other-base"
    tiny_model(seed=1).save_pretrained(other)  # same architecture, other weights
    model = MMSRModel.from_pretrained(other)
    fragments = (str(adapter), f"trained on base {str(ws.base)!r}", f"this model is {str(other)!r}", "force=True")
    return Bad(lambda: model.load_adapter(adapter), CheckpointError, fragments, lambda: _no_adapter(model))


@case
def adapter_rank_mismatch(ws):
    adapter = _adapter(ws, ws.base, r=4)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["r"] = 8  # the config says rank 8, the weights have rank 4
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    model = MMSRModel.from_pretrained(ws.base)
    fragments = (str(adapter), "does not fit this base model", "lora_A", "[4, ", "[8, ", "more)")

    def one_sentence():
        with pytest.raises(CheckpointError) as info:
            model.load_adapter(adapter)
        assert len(str(info.value).splitlines()) == 1  # not one line per mismatched tensor
        _no_adapter(model)

    return Bad(lambda: model.load_adapter(adapter), CheckpointError, fragments, one_sentence)


@case
def adapter_config_with_a_malformed_line(ws):
    adapter = _adapter(ws, ws.base)
    (adapter / "adapter_config.json").write_text('{"r": 4,\n "peft_type": LORA}')
    model = MMSRModel.from_pretrained(ws.base)
    fragments = (str(adapter), "line 2")
    return Bad(lambda: model.load_adapter(adapter), CheckpointError, fragments, lambda: _no_adapter(model))


@case
def adapter_record_with_a_malformed_line(ws):
    adapter = _adapter(ws, ws.base)
    (adapter / "mmsr_adapter.json").write_text('{"base_model": "x",\n "base_sha256": }')
    model = MMSRModel.from_pretrained(ws.base)
    fragments = (str(adapter / "mmsr_adapter.json"), "line 2")
    return Bad(lambda: model.load_adapter(adapter), CheckpointError, fragments, lambda: _no_adapter(model))


@case
def adapter_without_its_base_record(ws):
    adapter = _adapter(ws, ws.base)
    (adapter / "mmsr_adapter.json").unlink()  # as plain peft saves it: nothing says which base it belongs to
    model = MMSRModel.from_pretrained(ws.base)
    fragments = (str(adapter), "no mmsr_adapter.json", "force=True")
    return Bad(lambda: model.load_adapter(adapter), CheckpointError, fragments, lambda: _no_adapter(model))


@case
def output_dir_holding_another_run(ws):
    out = ws.root / "out"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text("{}")  # an earlier run's files: a new run would mix its files with these
    (out / "model.safetensors").write_bytes(b"weights")
    fragments = (str(out), "already holds a run", "metrics.json", "--overwrite_output_dir", "--resume")
    return Bad(ws.adapt(method="frozen"), ValueError, fragments)


@case
def output_dir_being_written_by_another_run(ws):
    from mmsr_peft.errors import RunFolderBusy
    from mmsr_peft.run_folders import RunFolderLock

    lock = RunFolderLock(ws.root / "out")  # what a run started a moment earlier holds
    return Bad(
        ws.adapt(method="frozen"), RunFolderBusy, (str(ws.root / "out"), "another run is writing"), lock.release
    )


@case
def mistyped_local_adapter_path(ws):
    model = MMSRModel.from_pretrained(ws.base)
    path = "./outputs/adapters/ofice"
    return Bad(lambda: model.load_adapter(path), CheckpointError, (path, "no adapter folder at"))


@case
def truncated_adapter_weights(ws):
    folder = _adapter(ws, ws.base)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    model = MMSRModel.from_pretrained(ws.base)
    return Bad(lambda: model.load_adapter(folder), CheckpointError, (str(folder), "cannot read a peft adapter"))


@case
def adapter_with_nan_weights(ws):
    folder = _adapter(ws, ws.base)
    weights = folder / "adapter_model.safetensors"
    state = {k: v.clone() for k, v in load_file(weights).items()}
    name = sorted(state)[0]
    state[name][0, :2] = float("nan")
    save_file(state, weights, metadata={"format": "pt"})
    model = MMSRModel.from_pretrained(ws.base)
    fragments = (str(weights), f"tensor {name!r}", "2 NaN or infinite values")
    return Bad(lambda: model.load_adapter(folder), CheckpointError, fragments, lambda: _no_adapter(model))


@case
def adapter_with_pickle_weights_only(ws):
    folder = _adapter(ws, ws.base)
    torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")  # peft's pickle file
    (folder / "adapter_model.safetensors").unlink()
    model = MMSRModel.from_pretrained(ws.base)

    def after():
        _no_adapter(model)
        assert model.load_adapter(folder, allow_pickle=True) == "adapter"  # loads when the user opts in

    fragments = (str(folder), "adapter_model.bin", "arbitrary code", "allow_pickle=True")
    return Bad(lambda: model.load_adapter(folder), CheckpointError, fragments, after)


def _no_adapter(model):
    assert model.list_adapters() == []
    assert not [name for name, _ in model.named_parameters() if "lora_" in name]


# ------------------------------------------------------------------ disk full while writing


class _FullDisk:
    """A file object whose disk fills up after `room` bytes: `write` stores what fits, then raises ENOSPC."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data):
        self.handle.write(data[: self.room])
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return len(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@case
def disk_full_while_writing_a_results_file(ws):
    path = ws.root / "out" / "metrics.json"
    atomic_write_text(path, '{"ndcg@10": 0.1}\n')  # the previous version
    real_fdopen = os.fdopen

    def write():
        with ws.monkeypatch.context() as patch:
            patch.setattr(os, "fdopen", lambda fd, *a, **k: _FullDisk(real_fdopen(fd, *a, **k), room=10))
            atomic_write_text(path, json.dumps({"ndcg@10": 0.2, "history": list(range(1000))}))

    fragments = ("No space left on device", str(path), "previous version is unchanged")
    return Bad(write, OSError, fragments, lambda: _no_temporaries(ws.root))


@case
def disk_full_while_saving_a_checkpoint(ws):
    folder = _copy_base(ws)  # the previous version, next to other run files that must survive
    (folder / "metrics.json").write_text("{}")
    model = tiny_model(seed=2)

    def half_written(tensors, path, metadata=None):
        save_file(tensors, path, metadata)
        Path(path).write_bytes(Path(path).read_bytes()[:1000])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def save():
        with ws.monkeypatch.context() as patch:
            patch.setattr("safetensors.torch.save_file", half_written)
            model.save_pretrained(folder)

    fragments = ("No space left on device", str(folder), "previous version is unchanged")
    return Bad(save, OSError, fragments, lambda: _no_temporaries(ws.root))


@case
def disk_full_while_saving_an_adapter(ws):
    from peft import LoraConfig

    adapter = _adapter(ws, ws.base)  # the previous version
    model = MMSRModel.from_pretrained(ws.base)
    model.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(model)), "office")

    def save():
        with ws.monkeypatch.context() as patch:  # peft writes adapter_config.json with open(); fill the disk there
            patch.setattr("builtins.open", _filling_open())
            model.save_adapter(adapter, "office")

    fragments = ("No space left on device", str(adapter), "previous version is unchanged")
    return Bad(save, OSError, fragments, lambda: _no_temporaries(ws.root))


def _filling_open():
    import builtins

    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return _FullDisk(handle, room=5) if "w" in mode and str(file).endswith(".json") else handle

    return fake_open


def _no_temporaries(root: Path):
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


# ------------------------------------------------------------------ recommend


def _recommend(ws, histories, k):
    model = MMSRModel.from_pretrained(ws.base)
    items = Catalog(ITEMS, [f"a red mug number {i}" for i in range(6)], [None] * 6, name="office")
    return lambda: model.recommend(histories, items, k=k)


@case
def k_zero_in_recommend(ws):
    return Bad(_recommend(ws, [ITEMS[:2]], k=0), ValueError, ("k must be a positive integer", "got 0"))


@case
def k_negative_in_recommend(ws):
    return Bad(_recommend(ws, [ITEMS[:2]], k=-3), ValueError, ("k must be a positive integer", "got -3"))


@case
def history_with_items_not_in_the_catalog(ws):
    histories = [ITEMS[:2], ["office-1", "office-404", "nope"]]
    return Bad(_recommend(ws, histories, k=3), ValueError, ("history 1", "catalog 'office'", "['office-404', 'nope']"))


@case
def history_not_a_list_of_lists(ws):
    fragments = ("histories must be a list of lists", "['office-0', 'office-1']")
    return Bad(_recommend(ws, ITEMS[:2], k=3), ValueError, fragments)


@case
def no_history_at_all_in_recommend(ws):
    return Bad(_recommend(ws, [], k=3), ValueError, ("histories is empty", "one list of item ids per user"))


def test_recommend_never_pads_a_short_list_with_history_items(base):
    model = MMSRModel.from_pretrained(base)
    items = Catalog(ITEMS, [f"a red mug number {i}" for i in range(6)], [None] * 6, name="office")
    top = model.recommend([ITEMS[:2], []], items, k=100000)  # k far above the 6 items
    assert sorted(top.item_ids[0]) == sorted(ITEMS[2:]) and sorted(top.item_ids[1]) == sorted(ITEMS)
    assert torch.isinf(top.scores[0, 4:]).all() and torch.isfinite(top.scores[1]).all()


# ------------------------------------------------------------------ the test

XFAIL = {}  # cases that are known to fail: name -> the change that would fix it


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=XFAIL[n])) if n in XFAIL else n for n in CASES],
)
def test_bad_input_is_refused_naming_it_and_leaves_nothing_behind(name, ws):
    bad = CASES[name](ws)
    before = snapshot(ws.root)
    with pytest.raises(bad.error) as info:
        bad.action()
    message = str(info.value)
    for fragment in bad.fragments:
        assert fragment in message, f"{fragment!r} not in the message: {message}"
    assert snapshot(ws.root) == before  # no output, no half-written file, the previous version intact
    bad.after()


def test_the_catalogue_covers_at_least_25_bad_inputs():
    assert len(CASES) - len(XFAIL) >= 25


def test_a_user_with_one_interaction_is_dropped_and_counted(ws):
    from mmsr_peft.domains import load_folder

    rows = [("u0", ITEMS[0], 1)] + [(f"u{u}", ITEMS[(u + j) % 6], 100 * u + j) for u in (1, 2) for j in range(4)]
    columns = dict(zip(("user_id", "item_id", "timestamp"), map(list, zip(*rows, strict=True)), strict=True))
    write_domain(ws.domain, interactions=columns)
    stats = load_folder(ws.domain).sequences.stats
    assert (stats["users"], stats["users_kept"], stats["users_dropped_short"]) == (3, 2, 1)
    from mmsr_peft.domains import build_corpus, describe_data

    line = describe_data(build_corpus([load_folder(ws.domain)], max_len=4, cold_start_fraction=0.2).stats)
    assert "2 users" in line and "1 user dropped (fewer than 3 interactions)" in line and "held out" in line
