"""`mmsr-data split`: one domain into several by an item column, for transfer between them."""

import json

import pyarrow.parquet as pq
import pytest

from mmsr_peft.cli import data_main
from mmsr_peft.data.split import assign_groups, parse_group
from mmsr_peft.domains import load_domain


@pytest.fixture
def movies(data_dir, tmp_path):
    """A copy of the synthetic `movies` domain, alone under its own data dir (the split writes beside it)."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_dir / "synthetic" / "movies", root / "synthetic" / "movies")
    return root


def split(root, *groups, extra=()):
    argv = ["split", "--data_dir", str(root), "--data_source", "synthetic", "--domain", "movies", "--column", "brand"]
    return data_main([*argv, *[f"--group={g}" for g in groups], *extra])


def test_split_partitions_items_and_interactions_and_each_part_loads_as_a_domain(movies):
    items = pq.read_table(movies / "synthetic" / "movies" / "items.parquet").to_pydict()
    brand = items["brand"][0]
    assert split(movies, f"first-brand={brand}", "other=*") == 0
    parts = {
        name: pq.read_table(movies / "synthetic" / name / "items.parquet").to_pydict()
        for name in ("first-brand", "other")
    }
    assert set(parts["first-brand"]["brand"]) == {brand} and brand not in parts["other"]["brand"]
    assert sorted(parts["first-brand"]["item_id"] + parts["other"]["item_id"]) == sorted(items["item_id"])
    inter = pq.read_table(movies / "synthetic" / "movies" / "interactions.parquet").to_pydict()
    total = 0
    for name, part in parts.items():
        rows = pq.read_table(movies / "synthetic" / name / "interactions.parquet").to_pydict()
        assert set(rows["item_id"]) <= set(part["item_id"])
        total += len(rows["item_id"])
        for image in part["image"]:  # each image travels with its item
            assert image is None or (movies / "synthetic" / name / image).is_file()
        manifest = json.loads((movies / "synthetic" / name / "manifest.json").read_text())
        assert manifest["preprocessing"]["split_of"]["domain"] == "movies" and manifest["name"] == name
        domain = load_domain(name, "synthetic", str(movies))
        assert len(domain.catalog) == len(part["item_id"]) and len(domain.sequences) > 0
    assert total == len(inter["item_id"])  # every interaction lands in exactly one part


def test_first_matching_group_wins_and_words_are_split_on_spaces_commas_and_bars():
    groups = dict(parse_group(g) for g in ("action=Action,Thriller", "drama=Drama", "rest=*"))
    assert groups == {"action": ("Action", "Thriller"), "drama": ("Drama",), "rest": ("*",)}
    assert assign_groups(["Drama Thriller", "Drama", "Comedy|Action", "Comedy", None], groups) == [
        "action",
        "drama",
        "action",
        "rest",
        "rest",
    ]
    assert assign_groups(["Comedy"], {"action": ("Action",), "drama": ("Drama",)}) == [None]


@pytest.mark.parametrize(
    "groups, message",
    [
        (["only=*"], "at least two --group"),
        (["rest=*", "b=X"], "must come last"),
        (["a=NoSuchBrand", "rest=*"], "--group a=NoSuchBrand: no item"),
        (["movies=X", "rest=*"], "the name of the domain being split"),
        (["bad name=X", "rest=*"], "expected NAME=VALUE"),
        (["a=X", "a=*"], "--group names must differ"),
    ],
)
def test_bad_splits_are_refused_before_anything_is_written(movies, groups, message, capsys):
    assert split(movies, *groups) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in (movies / "synthetic").iterdir()) == ["movies"]


def test_an_existing_part_is_kept_without_overwrite(movies, capsys):
    brand = pq.read_table(movies / "synthetic" / "movies" / "items.parquet").column("brand")[0].as_py()
    assert split(movies, f"a={brand}", "b=*") == 0
    before = (movies / "synthetic" / "a" / "items.parquet").read_bytes()
    assert split(movies, f"a={brand}", "b=*") == 2 and "already exists" in capsys.readouterr().err
    assert split(movies, "x=NoSuchBrand", "b=*", extra=["--column", "no_column"]) == 2
    assert "no column 'no_column'" in capsys.readouterr().err
    assert (movies / "synthetic" / "a" / "items.parquet").read_bytes() == before
