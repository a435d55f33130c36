"""`mmsr-data stats`: exact counts on a hand-made folder and the published MovieLens-100k numbers."""

import json

import pytest
from PIL import Image

from mmsr_peft.cli import data_main
from mmsr_peft.data.folder import INTERACTION_SCHEMA, ITEM_SCHEMA, new_domain_folder, write_manifest, write_table
from mmsr_peft.data.stats import domain_stats, format_stats

# user -> items in time order; u4 and u5 are too short (1 and 2 interactions); i6 is in no interaction and i7 only
# in the dropped users' ones; i4 has an image but no text, i5 both.
SEQUENCES = {
    "u1": ["i1", "i2", "i3", "i4"],
    "u2": ["i2", "i3", "i5"],
    "u3": ["i1", "i2", "i3", "i4", "i5"],
    "u4": ["i7"],
    "u5": ["i1", "i7"],
    "u6": ["i1", "i2", "i3", "i4", "i5", "i1"],
}
DAY = 86400


@pytest.fixture
def folder(tmp_path):
    target = tmp_path / "hand"
    ids = [f"i{n}" for n in range(1, 8)]
    with new_domain_folder(target) as tmp:
        for item in ("i4", "i5"):
            Image.new("RGB", (8, 8)).save(tmp / "images" / f"{item}.png")
        items = {
            "item_id": ids,
            "text": ["" if i == "i4" else f"item {i}" for i in ids],
            "image": [f"images/{i}.png" if i in ("i4", "i5") else None for i in ids],
        }
        write_table(tmp / "items.parquet", items, ITEM_SCHEMA)
        pairs = [(user, item) for user, items in SEQUENCES.items() for item in items]
        rows = {
            "user_id": [u for u, _ in pairs],
            "item_id": [i for _, i in pairs],
            "timestamp": [10 * DAY + row * DAY // 4 for row in range(len(pairs))],  # 21 rows over 5 days
        }
        write_table(tmp / "interactions.parquet", rows, INTERACTION_SCHEMA)
        write_manifest(tmp, "hand", "test", "1", {}, {})
    return target


def test_exact_counts_of_a_hand_made_folder(folder):
    stats = domain_stats(folder)
    assert stats == {
        "name": "hand",
        "folder": str(folder),
        "source": "test",
        "synthetic": False,
        "users": 6,
        "users_kept": 4,
        "users_dropped": {
            "total": 2,
            "reason": "fewer than 3 interactions (one each is needed to train, validate and test)",
            "by_interactions": {"1": 1, "2": 1},
        },
        "items": 7,
        "items_with_text": 6,
        "items_with_image": 2,
        "items_never_interacted": 1,
        "items_not_in_kept_sequences": 2,
        "interactions": 21,
        "interactions_kept": 18,
        "density": 18 / (4 * 7),
        # kept lengths 4, 3, 5, 6
        "sequence_length": {"min": 3, "p25": 3.75, "median": 4.5, "p75": 5.25, "p90": 5.7, "max": 6, "mean": 4.5},
        "time_span": {"first": "1970-01-11T00:00:00+00:00", "last": "1970-01-16T00:00:00+00:00", "days": 5.0},
    }
    lines = {line.strip().split("  ")[0]: " ".join(line.split()) for line in format_stats(stats).splitlines()[1:]}
    assert lines["dropped"] == "dropped 2 fewer than 3 interactions (1 had 1, 1 had 2)"
    assert lines["with text"] == "with text 6 85.7 %" and lines["p90"] == "p90 5.70"
    assert lines["density"] == "density 64.2857 % interactions of kept users / (kept users x items)"


def test_cli_prints_a_table_or_json(folder, capsys):
    assert data_main(["stats", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == format_stats(domain_stats(folder))
    assert data_main(["stats", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == domain_stats(folder)
    assert data_main(["stats", str(folder / "missing")]) == 2
    assert "items.parquet: file not found" in capsys.readouterr().err


def test_movielens_100k_numbers(tmp_path, capsys):
    from mmsr_peft.data.movielens import prepare_movielens

    folder = prepare_movielens(tmp_path)
    assert data_main(["stats", "ml-100k", "--data_dir", str(tmp_path)]) == 0  # by name, as a user types it
    assert capsys.readouterr().out.startswith(f"ml-100k (movielens, real data): {folder}")
    assert data_main(["stats", str(folder)]) == 0
    table = capsys.readouterr().out
    for label, value in [("users", "943"), ("items", "1,682"), ("interactions", "100,000"), ("density", "6.3047 %")]:
        assert any(line.split()[:2] == [label, value.split()[0]] for line in table.splitlines()), (label, table)
    stats = domain_stats(folder)
    assert (stats["users"], stats["users_kept"], stats["items"], stats["interactions"]) == (943, 943, 1682, 100000)
    assert stats["users_dropped"]["total"] == 0 and stats["items_never_interacted"] == 0
    assert stats["sequence_length"]["min"] == 20 and stats["sequence_length"]["max"] == 737
    assert stats["time_span"]["first"] == "1997-09-20T03:05:10+00:00"
    assert stats["time_span"]["last"] == "1998-04-22T23:10:38+00:00"
