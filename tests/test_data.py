import json
import os
from itertools import pairwise

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from mmsr_peft.data.catalog import Catalog
from mmsr_peft.data.collate import TrainCollator, pad_histories
from mmsr_peft.data.image_files import load_image
from mmsr_peft.data.processing import ItemInputs
from mmsr_peft.data.sequences import Sequences, Split
from mmsr_peft.domains import DOMAINS, load_domain
from mmsr_peft.errors import DataError


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    """`read_parquet` converts every file into `datasets`' cache; keep those copies out of the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _items(item_ids, texts=None, images=None):
    return pa.table(
        {
            "item_id": pa.array(item_ids, pa.string()),
            "text": pa.array(texts if texts is not None else [f"text of {i}" for i in item_ids], pa.string()),
            "image": pa.array(images if images is not None else [None] * len(item_ids), pa.string()),
        }
    )


def _interactions(rows):
    users, items, timestamps = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "timestamp": pa.array(timestamps, pa.int64()),
        }
    )


def _write(folder, items=None, interactions=None, manifest=None):
    folder.mkdir(parents=True, exist_ok=True)
    if items is not None:
        pq.write_table(items, folder / "items.parquet")
    if interactions is not None:
        pq.write_table(interactions, folder / "interactions.parquet")
    if manifest is not None:
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _png(path, size=(8, 8), color=(255, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# ---------------------------------------------------------------- catalog


def test_catalog_from_folder_resolves_images_and_reads_manifest_name(tmp_path):
    folder = tmp_path / "dom"
    _png(folder / "images" / "a.png")
    _write(
        folder,
        _items(["a", "b", "c"], texts=["alpha", None, "gamma"], images=["images/a.png", "images/a.png", None]),
        manifest={"name": "office"},
    )
    catalog = Catalog.from_folder(folder)
    assert catalog.name == "office"
    assert catalog.item_ids == ["a", "b", "c"]
    assert catalog.texts == ["alpha", "", "gamma"]  # null text is "" (b has an image)
    image = str((folder / "images" / "a.png").resolve())
    assert catalog.images == [image, image, None]
    assert catalog.index == {"a": 0, "b": 1, "c": 2}
    assert catalog.records([2, 0]) == [
        {"item_id": "c", "text": "gamma", "image": None},
        {"item_id": "a", "text": "alpha", "image": image},
    ]


def test_a_replaced_items_file_is_read_anew_even_with_the_old_modification_time(tmp_path):
    folder = _write(tmp_path / "dom", _items(["a", "b"]))
    stat = (folder / "items.parquet").stat()
    assert Catalog.from_folder(folder).item_ids == ["a", "b"]
    _write(folder, _items(["c", "d"]))  # restored as `cp -a` or `rsync -a` would: same path, same time
    os.utime(folder / "items.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert Catalog.from_folder(folder).item_ids == ["c", "d"]


def test_catalog_name_defaults_to_folder(tmp_path):
    folder = _write(tmp_path / "arts", _items(["a"]))
    assert Catalog.from_folder(folder).name == "arts"


def test_duplicate_item_id(tmp_path):
    folder = _write(tmp_path / "dom", _items(["a", "b", "a"]))
    with pytest.raises(DataError) as err:
        Catalog.from_folder(folder)
    message = str(err.value)
    assert "items.parquet" in message and "row 2" in message and "'a'" in message and "row 0" in message


@pytest.mark.parametrize("image, reason", [("../../etc/passwd", "outside"), ("images/b.png", "not found")])
def test_bad_image_path(tmp_path, image, reason):
    folder = _write(tmp_path / "dom", _items(["a", "b"], images=[None, image]))
    with pytest.raises(DataError) as err:
        Catalog.from_folder(folder)
    message = str(err.value)
    assert "items.parquet" in message and "row 1" in message and repr(image) in message and reason in message


def test_item_without_any_modality(tmp_path):
    folder = _write(tmp_path / "dom", _items(["a", "b"], texts=["fine", "  "], images=[None, None]))
    with pytest.raises(DataError) as err:
        Catalog.from_folder(folder)
    message = str(err.value)
    assert "items.parquet" in message and "row 1" in message and "'b'" in message
    assert "text" in message and "image" in message


def test_empty_item_id(tmp_path):
    folder = _write(tmp_path / "dom", _items(["a", ""]))
    with pytest.raises(DataError, match=r"items\.parquet: row 1: field 'item_id' is empty"):
        Catalog.from_folder(folder)


def test_missing_required_column(tmp_path):
    folder = _write(tmp_path / "dom", _items(["a"]).drop_columns(["text"]))
    with pytest.raises(DataError) as err:
        Catalog.from_folder(folder)
    message = str(err.value)
    assert "items.parquet" in message and "missing required column 'text'" in message


def test_wrong_column_type(tmp_path):
    folder = _write(tmp_path / "dom", _items(["a", "b", "c"]))
    pq.write_table(
        pa.table({"user_id": ["u"] * 3, "item_id": ["a", "b", "c"], "timestamp": ["1", "2", "3"]}),
        folder / "interactions.parquet",
    )
    with pytest.raises(DataError) as err:
        Sequences.from_folder(folder, Catalog.from_folder(folder))
    message = str(err.value)
    assert "interactions.parquet" in message and "'timestamp'" in message
    assert "string" in message and "int64" in message


def test_int32_timestamps_are_accepted(tmp_path):
    folder = _write(tmp_path / "dom", _items(["a", "b", "c"]))
    pq.write_table(
        pa.table({"user_id": ["u"] * 3, "item_id": ["c", "a", "b"], "timestamp": pa.array([3, 1, 2], pa.int32())}),
        folder / "interactions.parquet",
    )
    sequences = Sequences.from_folder(folder, Catalog.from_folder(folder))
    assert [seq.tolist() for seq in sequences.items] == [[0, 1, 2]]


def test_not_a_parquet_file(tmp_path):
    folder = tmp_path / "dom"
    folder.mkdir()
    (folder / "items.parquet").write_text("item_id,text,image\n")
    with pytest.raises(DataError, match=r"items\.parquet: not a readable parquet file"):
        Catalog.from_folder(folder)


def test_missing_items_file(tmp_path):
    (tmp_path / "dom").mkdir()
    with pytest.raises(DataError, match=r"items\.parquet: file not found"):
        Catalog.from_folder(tmp_path / "dom")


def test_empty_items_file(tmp_path):
    folder = _write(tmp_path / "dom", _items([]))
    with pytest.raises(DataError) as err:
        Catalog.from_folder(folder)
    message = str(err.value)
    assert "items.parquet" in message
    assert "no rows" in message, message


def test_empty_interactions_file(tmp_path):
    folder = _write(tmp_path / "dom", _items(["a"]), _interactions([]))
    with pytest.raises(DataError) as err:
        Sequences.from_folder(folder, Catalog.from_folder(folder))
    message = str(err.value)
    assert "interactions.parquet" in message
    assert "no rows" in message, message


def test_catalog_concat():
    office = Catalog(["a", "b"], ["ta", "tb"], ["/x/a.png", None], name="office")
    arts = Catalog(["c"], ["tc"], [None], name="arts")
    joined = Catalog.concat([office, arts])
    assert joined.name == "office+arts"
    assert joined.item_ids == ["a", "b", "c"]
    assert joined.texts == ["ta", "tb", "tc"]
    assert joined.images == ["/x/a.png", None, None]
    assert joined.index == {"a": 0, "b": 1, "c": 2}
    with pytest.raises(DataError, match=r"duplicate item id 'a'"):
        Catalog.concat([office, Catalog(["a"], ["again"], [None], name="arts")])


# ---------------------------------------------------------------- sequences


def test_sequences_order_by_timestamp_ties_by_row_and_drop_short_users(tmp_path):
    rows = [
        ("u1", "c", 5),  # row 0: tie at 5 with row 2, comes first
        ("u2", "a", 1),
        ("u1", "b", 5),  # row 2
        ("u1", "a", 1),
        ("short", "a", 1),
        ("u2", "c", 2),
        ("u1", "d", 3),
        ("u2", "b", 2),  # tie at 2 with row 5, comes after it
        ("short", "b", 2),
    ]
    folder = _write(tmp_path / "dom", _items(["a", "b", "c", "d"]), _interactions(rows))
    sequences = Sequences.from_folder(folder, Catalog.from_folder(folder))
    by_user = {user: items.tolist() for user, items in zip(sequences.user_ids, sequences.items, strict=True)}
    assert by_user == {"u1": [0, 3, 2, 1], "u2": [0, 2, 1]}  # a, d, c, b and a, c, b
    assert len(sequences) == 2
    assert sequences.stats == {"interactions": 9, "users": 3, "users_kept": 2, "users_dropped_short": 1}


def test_unknown_item_in_interactions(tmp_path):
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "zzz", 3)]
    folder = _write(tmp_path / "dom", _items(["a", "b"]), _interactions(rows))
    with pytest.raises(DataError) as err:
        Sequences.from_folder(folder, Catalog.from_folder(folder))
    message = str(err.value)
    assert "interactions.parquet" in message and "row 2" in message and "'zzz'" in message


def test_null_timestamp_is_rejected(tmp_path):
    folder = _write(tmp_path / "dom", _items(["a", "b", "c"]))
    table = pa.table(
        {"user_id": ["u"] * 3, "item_id": ["a", "b", "c"], "timestamp": pa.array([1, None, 3], pa.int64())}
    )
    pq.write_table(table, folder / "interactions.parquet")
    catalog = Catalog.from_folder(folder)
    with pytest.raises(DataError) as err:
        Sequences.from_folder(folder, catalog)
    message = str(err.value)
    assert "interactions.parquet" in message and "row 1" in message and "timestamp" in message


def test_null_user_id_is_rejected(tmp_path):
    folder = _write(tmp_path / "dom", _items(["a", "b", "c"]))
    table = pa.table({"user_id": ["u", None, "u", "u"], "item_id": ["a", "b", "c", "a"], "timestamp": [1, 2, 3, 4]})
    pq.write_table(table, folder / "interactions.parquet")
    catalog = Catalog.from_folder(folder)
    with pytest.raises(Exception) as err:
        Sequences.from_folder(folder, catalog)
    assert isinstance(err.value, DataError), f"got {type(err.value).__name__}: {err.value}"
    message = str(err.value)
    assert "interactions.parquet" in message and "row 1" in message and "user_id" in message


def test_sequences_concat_offsets_items():
    office = Sequences(["u1"], [np.array([0, 1, 2])], {"interactions": 3, "users": 1})
    arts = Sequences(["v1", "v2"], [np.array([0, 1, 0]), np.array([1, 1, 0])], {"interactions": 6, "users": 2})
    joined = Sequences.concat([office, arts], offsets=[0, 3])
    assert joined.user_ids == ["u1", "v1", "v2"]
    assert [s.tolist() for s in joined.items] == [[0, 1, 2], [3, 4, 3], [4, 4, 3]]
    assert joined.stats == {"interactions": 9, "users": 3}


# ---------------------------------------------------------------- leave-one-out


def test_leave_one_out_twelve_interactions_max_len_4():
    seq = np.array([11, 3, 7, 0, 5, 9, 2, 8, 1, 6, 4, 10])  # catalog indices in time order
    short = np.array([20, 21, 22])
    split = Split.leave_one_out(Sequences(["long", "short"], [seq, short]), max_len=4)

    assert split.users == ["long", "short"]
    assert split.test_targets.tolist() == [10, 22]
    assert split.valid_targets.tolist() == [4, 21]
    assert [h.tolist() for h in split.test_histories] == [[8, 1, 6, 4], [20, 21]]  # last 4 before the target
    assert [h.tolist() for h in split.valid_histories] == [[2, 8, 1, 6], [20]]
    # everything before the target, which the main protocol excludes from the candidates
    assert [k.tolist() for k in split.test_known] == [seq[:-1].tolist(), [20, 21]]
    assert [k.tolist() for k in split.valid_known] == [seq[:-2].tolist(), [20]]
    assert split.evaluation("valid")[1] is split.valid_targets
    assert split.evaluation("test")[0] is split.test_histories

    # the 10 training items (the short user has no training transition) in windows of <= 5 sharing one item
    windows = [w.tolist() for w in split.train]
    assert windows == [[11, 3], [3, 7, 0, 5, 9], [9, 2, 8, 1, 6]]
    assert all(2 <= len(w) <= 5 for w in windows)
    assert all(prev[-1] == nxt[0] for prev, nxt in pairwise(windows))
    transitions = [pair for w in windows for pair in pairwise(w)]
    assert sorted(transitions) == sorted(pairwise(seq[:-2].tolist()))  # each training transition exactly once
    assert (6, 4) not in transitions  # the validation target is never trained on


@pytest.mark.parametrize("max_len", [1, 2, 3, 5, 8])
def test_leave_one_out_windows_cover_every_transition_once(max_len):
    rng = np.random.default_rng(max_len)
    sequences = [rng.permutation(100)[:length] for length in range(3, 30)]
    split = Split.leave_one_out(Sequences([str(i) for i in range(len(sequences))], sequences), max_len=max_len)
    transitions = [tuple(pair) for w in split.train for pair in pairwise(w.tolist())]
    expected = [tuple(pair) for seq in sequences for pair in pairwise(seq[:-2].tolist())]
    assert sorted(transitions) == sorted(expected)
    assert all(2 <= len(w) <= max_len + 1 for w in split.train)
    assert all(len(h) <= max_len for h in split.valid_histories + split.test_histories)
    for seq, history in zip(sequences, split.test_histories, strict=True):
        assert history.tolist() == seq[:-1][-max_len:].tolist()


@pytest.mark.parametrize("max_len, stride", [(4, 1), (4, 2), (5, 3), (8, 8), (1, 1)])
def test_overlapping_windows_train_every_target_once_with_more_history(max_len, stride):
    """`stride` < max_len: windows end `stride` items apart and train only their last `stride` targets, so each
    target is trained once, with at least max_len - stride + 1 items before it (or all the user has)."""
    rng = np.random.default_rng(max_len * 10 + stride)
    for length in range(3, 30):
        seq = rng.permutation(100)[:length]
        split = Split.leave_one_out(Sequences(["u"], [seq]), max_len, stride=stride)
        trained = {}  # target position in seq -> the history it is trained with
        for window, skip in zip(split.train, split.train_skip, strict=True):
            assert 2 <= len(window) <= max_len + 1 and 0 <= skip < len(window) - 1
            start = int(np.flatnonzero(seq == window[0])[0])  # a user's items are distinct
            for j in range(1 + skip, len(window)):
                assert start + j not in trained  # once
                trained[start + j] = window[:j].tolist()
        assert sorted(trained) == list(range(1, length - 2))  # every training target, never a held-out one
        for position, history in trained.items():
            assert history == seq[position - len(history) : position].tolist()  # the items just before it
            assert len(history) >= min(position, max_len - stride + 1)
        if stride == max_len:  # the default: consecutive windows sharing one item, nothing skipped
            default = Split.leave_one_out(Sequences(["u"], [seq]), max_len)
            assert [w.tolist() for w in split.train] == [w.tolist() for w in default.train]
            assert not split.train_skip.any()
    with pytest.raises(
        ValueError,
        match=rf"training stride \(--train_stride\) must be in \[1, max_len = {max_len}\], got {max_len + 1}",
    ):
        Split.leave_one_out(Sequences(["u"], [seq]), max_len, stride=max_len + 1)


def test_train_stride_reaches_pretraining(data_dir, tmp_path):
    """`--train_stride 1` with `--max_len 3`: a window for each training target past the first window, which
    holds a user's first 4 training items."""
    import json

    from conftest import tiny_pretrain_argv

    from mmsr_peft.cli import pretrain_main

    sequences = {}
    for stride in ("3", "1"):
        out = tmp_path / stride
        argv = tiny_pretrain_argv(data_dir, "--max_len", "3", "--train_stride", stride, "--num_epochs", "1")
        assert pretrain_main([*argv, "--output_dir", str(out)]) == 0
        sequences[stride] = json.loads((out / "metrics.json").read_text())["data"]["food"]["train_sequences"]
    domain = load_domain("food", data_dir=str(data_dir))
    training_items = [len(seq) - 2 for seq in domain.sequences.items]
    assert sequences["1"] == sum(max(1, n - 3) for n in training_items) > sequences["3"]


def test_the_collator_trains_no_target_of_a_windows_context():
    catalog = _catalog_inputs(12)
    sequences = [np.array([0, 1, 2, 3, 4]), np.array([5, 6, 7])]
    plain = TrainCollator(catalog, num_negatives=0)(sequences)
    skipped = TrainCollator(catalog, num_negatives=0)(list(zip(sequences, [2, 0], strict=True)))
    assert torch.equal(skipped.inputs, plain.inputs)  # the context is still read
    expected = plain.targets.clone()
    expected[0, :2] = -1
    assert torch.equal(skipped.targets, expected)


def test_leave_one_out_rejects_bad_arguments():
    sequences = Sequences(["u"], [np.array([0, 1, 2])])
    with pytest.raises(ValueError, match="max_len"):
        Split.leave_one_out(sequences, max_len=0)
    with pytest.raises(ValueError, match="'valid' or 'test'"):
        Split.leave_one_out(sequences, max_len=2).evaluation("train")


# ---------------------------------------------------------------- domains


def test_load_domain_unknown_name_lists_valid_domains(tmp_path):
    with pytest.raises(DataError) as err:
        load_domain("offce", data_dir=str(tmp_path))
    message = str(err.value)
    assert "'offce'" in message
    assert all(name in message for name in DOMAINS)


def test_load_domain_not_in_synthetic_world(tmp_path):
    with pytest.raises(DataError) as err:
        load_domain("pantry", data_dir=str(tmp_path))
    message = str(err.value)
    assert "'pantry'" in message and "office" in message and "instruments" not in message


def test_load_domain_missing_folder_says_the_command(tmp_path):
    with pytest.raises(DataError) as err:
        load_domain("office", data_dir=str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "synthetic" / "office") in message
    assert f"mmsr-data synthetic --data_dir {tmp_path} --domains office" in message


def test_load_domain_reads_the_processed_folder(tmp_path):
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("v", "a", 1)]
    _write(
        tmp_path / "synthetic" / "office",
        _items(["a", "b", "c"]),
        _interactions(rows),
        manifest={"name": "office", "synthetic": True},
    )
    domain = load_domain("office", data_dir=str(tmp_path))
    assert domain.name == "office" and domain.synthetic
    assert domain.catalog.item_ids == ["a", "b", "c"]
    assert domain.sequences.user_ids == ["u"]
    assert domain.sequences.stats["users_dropped_short"] == 1


# ---------------------------------------------------------------- collate


def test_pad_histories():
    padded = pad_histories([np.array([1, 2, 3]), np.array([], dtype=np.int64), np.array([4])])
    assert padded.dtype == torch.long
    assert padded.tolist() == [[1, 2, 3], [-1, -1, -1], [4, -1, -1]]
    assert pad_histories([np.array([], dtype=np.int64)] * 2).tolist() == [[-1], [-1]]


def _catalog_inputs(n):
    return ItemInputs(item_index=torch.arange(n))  # items.item_index gives back catalog rows


def test_train_collator_unique_items_and_shifted_targets():
    sequences = [np.array([3, 5, 7]), np.array([5, 9, 2, 4, 3]), np.array([8, 8])]
    batch = TrainCollator(_catalog_inputs(12), num_negatives=0)(sequences)
    rows = batch.items.item_index
    assert sorted(rows.tolist()) == [2, 3, 4, 5, 7, 8, 9]  # each distinct item exactly once
    assert batch.inputs.shape == batch.targets.shape == (3, 4)
    for b, seq in enumerate(sequences):
        n = len(seq)
        inputs, targets = batch.inputs[b], batch.targets[b]
        assert rows[inputs[: n - 1]].tolist() == seq[:-1].tolist()
        assert rows[targets[: n - 1]].tolist() == seq[1:].tolist()  # targets are inputs shifted by one
        assert (targets[n - 1 :] == -1).all()
        assert (inputs[n:] == -1).all()


def test_train_collator_includes_negatives():
    sequences = [np.array([1, 2])]
    batch = TrainCollator(_catalog_inputs(10), num_negatives=200, seed=0)(sequences)
    rows = batch.items.item_index.tolist()
    assert sorted(rows) == list(range(10))  # 200 uniform draws from 10 items cover the catalog
    assert [rows[i] for i in batch.inputs[0, :1].tolist()] == [1]
    assert [rows[i] for i in batch.targets[0, :1].tolist()] == [2]


def test_train_collator_selects_every_input_field():
    catalog = ItemInputs(item_index=torch.arange(5), has_text=torch.tensor([True, False, True, False, True]))
    batch = TrainCollator(catalog)([np.array([4, 1])])
    assert batch.items.item_index.tolist() == [1, 4]
    assert batch.items.has_text.tolist() == [False, True]
    assert batch.items.pixel_values is None


def test_load_image_non_square(tmp_path):
    path = tmp_path / "wide.png"
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    image.save(path)
    pixels = load_image(str(path), 16)
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.uint8
    # shorter side resized to 16 (32 x 16), then the centre 16 x 16 cropped: still red left, blue right
    assert pixels[0, :, 0].min() > 200 and pixels[2, :, 0].max() < 50
    assert pixels[2, :, -1].min() > 200 and pixels[0, :, -1].max() < 50


def test_load_image_grayscale_and_tall(tmp_path):
    path = tmp_path / "tall.png"
    Image.new("L", (10, 30), 128).save(path)
    pixels = load_image(str(path), 8)
    assert pixels.shape == (3, 8, 8) and pixels.dtype == torch.uint8
    assert (pixels == 128).all()


def test_load_image_corrupt_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(DataError) as err:
        load_image(str(path), 8)
    assert str(path) in str(err.value)


def test_prepared_folders_get_the_umask_permissions_not_mkdtemp_ones(tmp_path):
    import os
    import stat

    from mmsr_peft.data.folder import new_domain_folder
    from mmsr_peft.files import current_umask

    with new_domain_folder(tmp_path / "d") as tmp:
        (tmp / "x").write_text("1")
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o777 & ~current_umask()


def test_a_failed_domain_write_removes_the_parent_folders_it_made(tmp_path):
    from mmsr_peft.data.folder import new_domain_folder

    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "other.txt").write_text("1")
    for target, made in ((tmp_path / "a" / "b" / "d", tmp_path / "a"), (tmp_path / "kept" / "c" / "d", None)):
        with pytest.raises(RuntimeError, match="interrupted"), new_domain_folder(target) as tmp:
            (tmp / "items.parquet").write_text("partial")
            raise RuntimeError("interrupted")
        assert not target.exists()
        assert made is None or not made.exists()
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["other.txt"]
