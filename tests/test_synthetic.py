import dataclasses
import json
import shutil
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmsr_peft.data import synthetic
from mmsr_peft.data.synthetic import (
    SOURCE_DOMAINS,
    SYNTHETIC_DOMAINS,
    TARGET_DOMAINS,
    SyntheticWorldConfig,
    generate_domain,
    generate_world,
)

TINY = SyntheticWorldConfig(num_items=60, num_users=40, min_len=5, max_len=20)


@pytest.fixture(scope="module")
def office(tmp_path_factory):
    return generate_domain("office", tmp_path_factory.mktemp("world"), TINY)


def _rows(folder, table):
    return pq.read_table(folder / f"{table}.parquet").to_pylist()


def _sequences(folder):
    """user -> list of (item index, timestamp) in row order."""
    sequences = {}
    for row in _rows(folder, "interactions"):
        sequences.setdefault(row["user_id"], []).append((int(row["item_id"].split("-")[1]), row["timestamp"]))
    return sequences


def test_domain_names():
    assert set(SYNTHETIC_DOMAINS) == set(SOURCE_DOMAINS) | set(TARGET_DOMAINS)


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path, office):
    again = generate_domain("office", tmp_path / "a", TINY)
    other = generate_domain("office", tmp_path / "b", dataclasses.replace(TINY, seed=1))
    for name in ("items.parquet", "interactions.parquet"):
        assert (again / name).read_bytes() == (office / name).read_bytes()
        assert (other / name).read_bytes() != (office / name).read_bytes()
    images = sorted(p.name for p in (office / "images").iterdir())
    assert images == sorted(p.name for p in (again / "images").iterdir())
    assert all((again / "images" / p).read_bytes() == (office / "images" / p).read_bytes() for p in images)


def test_schema(office):
    items = pq.read_schema(office / "items.parquet")
    for name in ("item_id", "text", "image", "title", "brand", "category"):
        assert items.field(name).type == pa.string(), name
    interactions = pq.read_schema(office / "interactions.parquet")
    assert [interactions.field(n).type for n in ("user_id", "item_id", "timestamp")] == [
        pa.string(),
        pa.string(),
        pa.int64(),
    ]


def test_images_decode_and_modalities(office):
    items = _rows(office, "items")
    assert [row["item_id"] for row in items] == [f"office-{i:04d}" for i in range(TINY.num_items)]
    for row in items:
        assert row["text"] != "" or row["image"] is not None, row
        if row["image"] is not None:
            with Image.open(office / row["image"]) as image:
                assert image.size == (64, 64) and image.mode == "RGB"
        if row["text"] == "":
            assert row["title"] == "" and row["brand"] == ""
    with_image = sum(row["image"] is not None for row in items)
    assert len(list((office / "images").iterdir())) == with_image


def test_missing_rates_roughly_as_configured():
    catalog = synthetic._sample_catalog("home", SyntheticWorldConfig(num_items=5000, max_len=10))
    assert abs(1 - catalog.has_text.mean() - 0.08) < 0.02
    assert abs(1 - catalog.has_image.mean() - 0.08) < 0.02
    assert (catalog.has_text | catalog.has_image).all()


def test_manifest(office):
    manifest = json.loads((office / "manifest.json").read_text())
    assert manifest["synthetic"] is True and manifest["source"] == "synthetic" and manifest["name"] == "office"
    items, interactions = _rows(office, "items"), _rows(office, "interactions")
    assert manifest["counts"] == {
        "items": len(items),
        "users": len({row["user_id"] for row in interactions}),
        "interactions": len(interactions),
        "items_with_text": sum(row["text"] != "" for row in items),
        "items_with_image": sum(row["image"] is not None for row in items),
    }
    assert manifest["counts"]["users"] == TINY.num_users
    assert dataclasses.asdict(TINY).items() <= manifest["preprocessing"].items()


def test_sequences_no_repeats_ordered_timestamps_with_ties(office):
    sequences = _sequences(office)
    ties = 0
    for user, events in sequences.items():
        assert user.startswith("office-u")
        items, times = zip(*events, strict=True)
        assert len(set(items)) == len(items), user
        assert TINY.min_len <= len(items) <= TINY.max_len
        assert all(a <= b for a, b in pairwise(times)), user
        ties += sum(a == b for a, b in pairwise(times))
    assert ties > 0


def test_colour_wheel_habit(office):
    colour = synthetic._sample_catalog("office", TINY).colour
    pairs = [(a, b) for events in _sequences(office).values() for (a, _), (b, _) in pairwise(events)]
    follows = np.mean([colour[b] == (colour[a] + 1) % 8 for a, b in pairs])
    assert follows > 0.4  # chance is 1/8


def test_unknown_domain_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="books") as error:
        generate_domain("books", tmp_path)
    assert all(name in str(error.value) for name in SYNTHETIC_DOMAINS)
    with pytest.raises(ValueError, match="books"):
        generate_world(tmp_path, domains=["office", "books"])
    assert list(tmp_path.iterdir()) == []  # validated before writing anything


def test_config_validation():
    with pytest.raises(ValueError, match="num_items"):
        SyntheticWorldConfig(num_items=0)
    with pytest.raises(ValueError, match="max_len"):
        SyntheticWorldConfig(num_items=20, max_len=30)
    with pytest.raises(ValueError, match="missing_image_rate"):
        SyntheticWorldConfig(missing_text_rate=0.6, missing_image_rate=0.6)
    with pytest.raises(TypeError):
        SyntheticWorldConfig(colours=3)


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    render, calls = synthetic._render_item_image, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("boom")
        return render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_render_item_image", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        generate_domain("arts", tmp_path, TINY)
    assert list(tmp_path.iterdir()) == []


def test_existing_folder(tmp_path):
    folder = generate_domain("food", tmp_path, TINY)
    marker = folder / "marker"
    marker.touch()
    assert generate_domain("food", tmp_path, TINY) == folder and marker.exists()  # same parameters: kept
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_domain("food", tmp_path, dataclasses.replace(TINY, seed=3))
    generate_domain("food", tmp_path, dataclasses.replace(TINY, seed=3), overwrite=True)
    assert not marker.exists()
    assert json.loads((folder / "manifest.json").read_text())["preprocessing"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["food"]


def test_concurrent_writer_of_same_folder_wins(tmp_path, monkeypatch):
    write = synthetic._write_domain

    def write_then_race(folder, name, config):
        write(folder, name, config)
        shutil.copytree(folder, folder.parent / name)  # another process renamed its copy into place first

    monkeypatch.setattr(synthetic, "_write_domain", write_then_race)
    assert generate_domain("home", tmp_path, TINY) == tmp_path / "home"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_generate_world_ids_unique_across_domains(tmp_path):
    paths = generate_world(tmp_path, domains=["movies", "scientific"], config=TINY)
    assert [p.name for p in paths] == ["movies", "scientific"]
    item_ids = [row["item_id"] for p in paths for row in _rows(p, "items")]
    user_ids = {row["user_id"] for p in paths for row in _rows(p, "interactions")}
    assert len(set(item_ids)) == len(item_ids) == 2 * TINY.num_items
    assert len(user_ids) == 2 * TINY.num_users
