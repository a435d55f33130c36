"""RecBole atomic files: export -> import round trips, the benchmark files hold our split, bad input is named."""

import importlib.util
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmsr_peft.cli import data_main
from mmsr_peft.data.folder import INTERACTION_SCHEMA, ITEM_SCHEMA, new_domain_folder, write_manifest, write_table
from mmsr_peft.data.movielens import prepare_movielens, recbole_files
from mmsr_peft.data.recbole import BENCHMARK_HEADER, export_recbole, import_recbole, read_atomic_file
from mmsr_peft.data.sequences import Split
from mmsr_peft.domains import load_folder
from mmsr_peft.errors import DataError


def write_domain(folder, items: dict, interactions: dict):
    with new_domain_folder(folder) as tmp:
        write_table(tmp / "items.parquet", items, ITEM_SCHEMA)
        write_table(tmp / "interactions.parquet", interactions, INTERACTION_SCHEMA)
        write_manifest(tmp, folder.name, "handmade", "1", {}, {})
    return folder


def rows(path):
    header, lines = read_atomic_file(path)
    return header, [row for _, row in lines]


def test_export_then_import_is_lossless(data_dir, tmp_path):
    source = data_dir / "synthetic" / "office"
    export_recbole(source, tmp_path / "office")
    target = import_recbole(tmp_path / "office", data_dir=tmp_path / "data")
    assert target == tmp_path / "data" / "recbole" / "office"
    before, after = load_folder(source), load_folder(target)
    assert after.catalog.item_ids == before.catalog.item_ids
    assert after.catalog.texts == before.catalog.texts
    assert [p is None for p in after.catalog.images] == [p is None for p in before.catalog.images]
    pairs = [(a, b) for a, b in zip(before.catalog.images, after.catalog.images, strict=True) if a is not None]
    assert pairs and all(open(a, "rb").read() == open(b, "rb").read() for a, b in pairs)
    assert after.sequences.user_ids == before.sequences.user_ids
    assert [s.tolist() for s in after.sequences.items] == [s.tolist() for s in before.sequences.items]
    for name in ("items.parquet", "interactions.parquet"):  # every row and column, in order (extras included)
        assert pq.read_table(target / name).to_pydict() == pq.read_table(source / name).to_pydict()
    assert after.synthetic and after.manifest["origin"]["name"] == "office"  # still labelled synthetic


def test_benchmark_files_hold_exactly_our_split(data_dir, tmp_path):
    domain = load_folder(data_dir / "synthetic" / "food")
    manifest = export_recbole(domain.folder, tmp_path / "food", max_len=4)  # short: users span several windows
    split = Split.leave_one_out(domain.sequences, max_len=4)
    ids = domain.catalog.item_ids

    def cases(path):
        header, lines = rows(path)
        assert tuple(f"{n}:{t}" for n, t in header) == BENCHMARK_HEADER
        return [(r["user_id"], r["item_id_list"].split(" "), r["item_id"]) for r in lines]

    for stage in ("valid", "test"):
        histories, targets = split.evaluation(stage)
        expected = [(u, [ids[i] for i in h], ids[t]) for u, h, t in zip(split.users, histories, targets, strict=True)]
        assert cases(tmp_path / "food" / f"food.{stage}.inter") == expected
    train = cases(tmp_path / "food" / "food.train.inter")
    expected = [([ids[i] for i in w[:j]], ids[w[j]]) for w in split.train for j in range(1, len(w))]
    assert [(h, t) for _, h, t in train] == expected  # every training transition once, with its window's context
    assert max(len(h) for _, h, _ in train) == 4 and manifest["split"]["rows"]["train"] == len(expected)
    # each training row belongs to the user whose training items hold it (history then target, contiguous)
    sequences = zip(domain.sequences.user_ids, domain.sequences.items, strict=True)
    training = {u: " " + " ".join(ids[i] for i in seq[:-2]) + " " for u, seq in sequences}
    assert all(f" {' '.join([*h, t])} " in training[u] for u, h, t in train)
    config = json.loads((tmp_path / "food" / "mmsr_export.json").read_text())["recbole_config"]
    assert config["MAX_ITEM_LIST_LENGTH"] == 4 and config["benchmark_filename"] == ["train", "valid", "test"]


def test_a_stride_one_export_gives_every_training_target_its_last_max_len_items(data_dir, tmp_path):
    """`--train_stride 1`: RecBole's own augmentation, every target once with the max_len items before it."""
    domain = load_folder(data_dir / "synthetic" / "food")
    out = tmp_path / "food"
    assert data_main(["recbole-export", str(domain.folder), str(out), "--max_len", "4", "--train_stride", "1"]) in (
        0,
        None,
    )
    ids = domain.catalog.item_ids
    header, lines = rows(out / "food.train.inter")
    train = [(r["user_id"], r["item_id_list"].split(" "), r["item_id"]) for r in lines]
    expected = [
        (user, [ids[i] for i in seq[max(0, j - 4) : j]], ids[seq[j]])
        for user, seq in zip(domain.sequences.user_ids, domain.sequences.items, strict=True)
        for j in range(1, len(seq) - 2)
    ]
    assert sorted(train) == sorted(expected)
    manifest = json.loads((out / "mmsr_export.json").read_text())
    assert manifest["split"]["train_stride"] == 1 and manifest["split"]["rows"]["train"] == len(expected)


def test_text_with_tabs_newlines_and_quotes_survives_both_readers(tmp_path):
    texts = ["a\ttab and a\nnewline", '"Quoted" at the start', 'inner "quote"', "", "plain"]
    items = {"item_id": ["i1", "i2", "i3", "i4", "i5"], "text": texts, "image": [None] * 4 + [None]}
    items["text"][3] = "x"  # every item needs a modality
    items["brand"] = ["b\tb", "", None, "d", "e"]
    interactions = {"user_id": ["u1"] * 5, "item_id": items["item_id"], "timestamp": [1, 2, 3, 4, 5]}
    source = write_domain(tmp_path / "odd", items, interactions)
    export_recbole(source, tmp_path / "out" / "odd")
    target = import_recbole(tmp_path / "out" / "odd", data_dir=tmp_path / "data")
    table = pq.read_table(target / "items.parquet").to_pydict()
    assert table["text"] == items["text"] and table["brand"] == ["b\tb", "", "", "d", "e"]
    # RecBole reads atomic files with pandas (python engine, tab separator, CSV quoting): the same values
    import pandas as pd

    frame = pd.read_csv(tmp_path / "out" / "odd" / "odd.item", delimiter="\t", dtype=str, engine="python")
    assert frame["text:token_seq"].tolist() == items["text"]


def test_unsafe_ids_are_refused_on_export(tmp_path):
    items = {"item_id": ["a", "b", "c"], "text": ["x", "y", "z"], "image": [None] * 3}
    spaced = {"user_id": ["user 1"] * 3, "item_id": ["a", "b", "c"], "timestamp": [1, 2, 3]}
    with pytest.raises(DataError, match=r"interactions.parquet: row 0: field 'user_id' = 'user 1' contains whitesp"):
        export_recbole(write_domain(tmp_path / "spaced", items, spaced), tmp_path / "out1")
    missing = {"item_id": ["a", "NA", "c"], "text": ["x", "y", "z"], "image": [None] * 3}
    plain = {"user_id": ["u"] * 3, "item_id": ["a", "NA", "c"], "timestamp": [1, 2, 3]}
    with pytest.raises(DataError, match=r"items.parquet: row 1: field 'item_id' = 'NA' is a word"):
        export_recbole(write_domain(tmp_path / "na", missing, plain), tmp_path / "out2")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()  # nothing half-written


def write_atomic(folder, name, item_lines, inter_lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.item").write_text("\n".join(item_lines) + "\n")
    (folder / f"{name}.inter").write_text("\n".join(inter_lines) + "\n")
    return folder


ITEMS = ["item_id:token\ttitle:token_seq\tbrand:token\tprice:float", "1\tRed Pen\tAcme\t2.5", "2\tBlue Ink\t\t1"]
INTER = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"] + [
    f"u\t{i}\t5\t{t}.0" for i, t in (("1", 10), ("2", 20), ("1", 30))
]


def test_import_composes_text_from_chosen_fields(tmp_path):
    atomic = write_atomic(tmp_path / "shop", "shop", ITEMS, INTER)
    domain = load_folder(import_recbole(atomic, data_dir=tmp_path / "data"))
    assert domain.catalog.texts == ["title: Red Pen; brand: Acme", "title: Blue Ink"]  # empty values left out
    assert domain.manifest["preprocessing"]["dropped_inter_fields"] == ["rating"]
    assert not domain.synthetic and domain.manifest["source"] == "recbole"
    assert [domain.catalog.item_ids[i] for i in domain.sequences.items[0]] == ["1", "2", "1"]
    assert pq.read_table(domain.folder / "interactions.parquet")["timestamp"].to_pylist() == [10, 20, 30]
    one = load_folder(import_recbole(atomic, "shop", tmp_path / "data", ["title"], overwrite=True))
    assert one.catalog.texts == ["Red Pen", "Blue Ink"]


def test_fractional_timestamps_order_a_users_rows_within_a_second_and_repeats_in_one_second_are_dropped(tmp_path):
    """Timestamps are stored in whole seconds and the loader breaks ties by row order: rows of a user within one
    second are put in the order of their fractions first; a second row of the same item in that second is dropped."""
    inter = ["user_id:token\titem_id:token\ttimestamp:float"] + [
        f"{user}\t{item}\t{time}" for user, item, time in [
            ("u", "1", 1.0), ("v", "2", 5.0), ("u", "2", 2.7), ("v", "1", 6.0), ("u", "1", 2.2), ("u", "1", 2.9),
            ("v", "2", 7.0),
        ]
    ]  # fmt: skip
    domain = load_folder(import_recbole(write_atomic(tmp_path / "shop", "shop", ITEMS, inter), data_dir=tmp_path))
    table = pq.read_table(domain.folder / "interactions.parquet").to_pydict()
    # u's rows in second 2 swap places (2.2 before 2.7); 2.9 repeats item 1 in second 2; v's rows do not move
    assert list(zip(*table.values(), strict=True)) == [
        ("u", "1", 1), ("v", "2", 5), ("u", "1", 2), ("v", "1", 6), ("u", "2", 2), ("v", "2", 7),
    ]  # fmt: skip
    assert [domain.catalog.item_ids[i] for i in domain.sequences.items[0]] == ["1", "1", "2"]
    assert domain.manifest["counts"]["duplicate_interactions"] == 1


def test_two_image_values_that_land_on_one_file_are_refused(tmp_path):
    from PIL import Image

    atomic = tmp_path / "shop"
    (atomic / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(atomic / "a.jpg")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(atomic / "images" / "a.jpg")
    header = "item_id:token\ttitle:token_seq\timage:token"
    shared = [header, "1\tred\ta.jpg", "2\tred too\ta.jpg", "3\tblue\t"]  # one file for two items: fine
    write_atomic(atomic, "shop", shared, INTER)
    domain = load_folder(import_recbole(atomic, data_dir=tmp_path / "data"))
    assert domain.catalog.images[:2] == [str(domain.folder / "images" / "a.jpg")] * 2
    write_atomic(atomic, "shop", [header, "1\tred\ta.jpg", "2\tblue\timages/a.jpg"], INTER)
    with pytest.raises(DataError) as error:
        import_recbole(atomic, data_dir=tmp_path / "data", overwrite=True)
    assert str(error.value) == (
        f"{atomic / 'shop.item'}: line 3: item '2' field 'image' = 'images/a.jpg' and line 2: item '1' field "
        "'image' = 'a.jpg' are different files that would both be copied to images/a.jpg; rename one of them"
    )
    assert load_folder(domain.folder).catalog.item_ids == ["1", "2", "3"]  # the previous folder stays


@pytest.mark.parametrize(
    "items, inter, message",
    [
        (ITEMS, INTER[:1] + ["u\t1\t5\tsoon"], r"shop.inter: line 2: field 'timestamp' = 'soon', expected a number"),
        (ITEMS, INTER[:1] + ["u\t9\t5\t1"], r"shop.inter: line 2: field 'item_id' = '9' is not an item of shop.item"),
        (ITEMS, INTER[:1] + ["\t1\t5\t1"], r"shop.inter: line 2: field 'user_id' is empty"),
        (ITEMS, INTER[:1] + ["u\t1\t5"], r"shop.inter: line 2: 3 fields, expected 4"),
        (ITEMS + ["1\tAgain\tAcme\t1"], INTER, r"shop.item: line 4: field 'item_id' = '1' repeats line 2"),
        (  # a quoted value spanning two lines, a blank line: lines are counted in the file
            ITEMS + ['3\t"two\nlines"\tAcme\t1', "", "3\tdup\tx\t1"],
            INTER,
            r"shop.item: line 7: field 'item_id' = '3' repeats line 4",
        ),
        (["item_id:token\ttitle:text"], INTER, r"shop.item: line 1: header field 'title:text' is not 'name:type'"),
        (ITEMS, ["user_id:token\titem_id:token"], r"shop.inter: line 1: missing fields \['timestamp'\]"),
    ],
)
def test_bad_atomic_files_name_file_line_field_and_value(tmp_path, items, inter, message):
    atomic = write_atomic(tmp_path / "shop", "shop", items, inter)
    with pytest.raises(DataError, match=message):
        import_recbole(atomic, data_dir=tmp_path / "data")
    assert not (tmp_path / "data" / "recbole" / "shop").exists()


def test_cli_errors_and_unknown_text_fields(tmp_path, capsys):
    atomic = write_atomic(tmp_path / "shop", "shop", ITEMS, INTER)
    argv = ["recbole-import", str(atomic), "--data_dir", str(tmp_path / "data"), "--text_fields", "colour"]
    assert data_main(argv) == 2
    assert (
        "text fields ['colour'] are not in the file; choose among ['title', 'brand', 'price']"
        in capsys.readouterr().err
    )
    assert data_main(["recbole-import", str(tmp_path / "nowhere"), "--data_dir", str(tmp_path / "data")]) == 2
    assert "nowhere.item: file not found" in capsys.readouterr().err
    assert data_main(argv[:-2]) == 0 and data_main(argv[:-2]) == 2  # exists: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_movielens_from_recbole_files_and_export(tmp_path):
    """ML-100k straight from the recbole wheel's atomic files equals `mmsr-data movielens`, and exports whole."""
    imported = import_recbole(recbole_files(), data_dir=tmp_path / "data")
    prepared = prepare_movielens(tmp_path / "data")
    interactions = [pq.read_table(f / "interactions.parquet").to_pydict() for f in (imported, prepared)]
    assert interactions[0] == interactions[1] and len(interactions[0]["user_id"]) == 100000
    items = [pq.read_table(f / "items.parquet").to_pydict() for f in (imported, prepared)]
    assert items[0]["item_id"] == items[1]["item_id"] and len(items[0]["item_id"]) == 1682
    assert items[0]["text"][0] == "movie_title: Toy Story; release_year: 1995; class: Animation Children's Comedy"
    assert data_main(["recbole-export", str(prepared), str(tmp_path / "ml-100k")]) == 0
    manifest = json.loads((tmp_path / "ml-100k" / "mmsr_export.json").read_text())
    assert manifest["split"]["rows"] == {"train": 100000 - 3 * 943, "valid": 943, "test": 943}
    assert len(rows(tmp_path / "ml-100k" / "ml-100k.inter")[1]) == 100000


def test_recbole_sasrec_script_refuses_the_project_environment(data_dir, tmp_path, capsys):
    """scripts/recbole_sasrec.py runs in .venv-recbole only; here it stops before importing RecBole."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "recbole_sasrec.py"
    spec = importlib.util.spec_from_file_location("recbole_sasrec", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    export_recbole(data_dir / "synthetic" / "arts", tmp_path / "arts")
    assert script.main([str(tmp_path / "arts"), "--epochs", "1"]) == 2
    assert "make recbole-venv" in capsys.readouterr().err
    assert script.main([str(tmp_path)]) == 2 and "mmsr-data recbole-export" in capsys.readouterr().err
    # its test ranks come out in the export's row order (our split's), whatever order RecBole evaluated them in
    users = script.export_users(tmp_path / "arts" / "arts.test.inter")
    header, test_rows = rows(tmp_path / "arts" / "arts.test.inter")
    assert users == [row[header[0][0]] for row in test_rows] and len(users) > 10
    ids = {token: 1 + number for number, token in enumerate(reversed(users))}  # RecBole's own numbering
    evaluated = [ids[u] for u in users[::2]] + [ids[u] for u in users[1::2]]  # its batches: another order
    ranks = [10 * ids[u] for u in users[::2]] + [10 * ids[u] for u in users[1::2]]
    assert script.in_order(evaluated, ranks, [ids[u] for u in users]) == [10 * ids[u] for u in users]
    with pytest.raises(RuntimeError, match="no test row of 1 exported users"):
        script.in_order(evaluated[1:], ranks[1:], [ids[u] for u in users])


def test_export_and_import_never_replace_the_folder_they_read(data_dir, tmp_path):
    shutil.copytree(data_dir / "synthetic", tmp_path / "synthetic")
    source = tmp_path / "synthetic" / "office"
    for target in (source, tmp_path / "synthetic"):  # the domain itself, or the folder of every domain
        with pytest.raises(ValueError, match=rf"{target}: the folder to write is, or holds, {source}, which it is"):
            export_recbole(source, target, overwrite=True)
    assert load_folder(source).catalog.item_ids and (tmp_path / "synthetic" / "food").is_dir()
    export_recbole(source, tmp_path / "data" / "recbole" / "office" / "atomic")
    with pytest.raises(ValueError, match="which it is made from"):  # atomic files inside the folder made from them
        import_recbole(
            tmp_path / "data" / "recbole" / "office" / "atomic", "office", data_dir=tmp_path / "data", overwrite=True
        )
    assert (tmp_path / "data" / "recbole" / "office" / "atomic" / "atomic.inter").is_file()
