"""`mmsr-recommend`'s input files: byte order marks, line breaks inside JSON strings, user ids as given, CSV rows."""

import json

import pytest

from mmsr_peft import load_domain
from mmsr_peft.cli import recommend_main


def run(base_dir, data_dir, source, output, *extra):
    argv = ["--model", str(base_dir), "--domain", "office", "--data_dir", str(data_dir), "--k", "3"]
    return recommend_main([*argv, "--input", str(source), "--output", str(output), "--device", "cpu", *extra])


def read_output(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def item_ids(data_dir):
    return load_domain("office", data_dir=str(data_dir)).catalog.item_ids


def test_a_byte_order_mark_is_read_past(base_dir, data_dir, tmp_path, item_ids):
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("\ufeff" + json.dumps({"user_id": "u1", "history": item_ids[:2]}) + "\n", encoding="utf-8")
    assert run(base_dir, data_dir, jsonl, tmp_path / "jsonl.out") == 0
    assert [line["user_id"] for line in read_output(tmp_path / "jsonl.out")] == ["u1"]
    csv = tmp_path / "in.csv"
    csv.write_text(f"\ufeffuser_id,item_id\n007,{item_ids[0]}\n007,{item_ids[1]}\n", encoding="utf-8")
    assert run(base_dir, data_dir, csv, tmp_path / "csv.out") == 0
    assert [line["user_id"] for line in read_output(tmp_path / "csv.out")] == ["007"]  # a CSV's ids stay strings


def test_json_lines_break_at_newlines_only(base_dir, data_dir, tmp_path, item_ids, capsys):
    """U+2028, U+2029 and U+0085 may stand inside a JSON string; CRLF line ends are fine."""
    users = ["a\u2028b", "c\u2029d", "e\x85f"]
    rows = [json.dumps({"user_id": user, "history": item_ids[:2]}, ensure_ascii=False) for user in users]
    source = tmp_path / "in.jsonl"
    source.write_text("\r\n".join(rows) + "\r\n", encoding="utf-8", newline="")
    output = tmp_path / "out.jsonl"
    assert run(base_dir, data_dir, source, output) == 0
    assert [line["user_id"] for line in read_output(output)] == users
    # the line numbers that follow such a line are still the file's
    bad = json.dumps({"user_id": "x", "history": ["no-such-item"]})
    source.write_text("\n".join([*rows, bad]) + "\n", encoding="utf-8")
    assert run(base_dir, data_dir, source, output) == 2
    assert f"{source}: line 4: item ids not in the catalog of office: ['no-such-item']" in capsys.readouterr().err


def test_user_ids_come_back_as_given(base_dir, data_dir, tmp_path, item_ids):
    rows = [{"user_id": 7, "history": item_ids[:2]}, {"user_id": "b", "history": item_ids[3:5]}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in [*rows, {"history": item_ids[5:6]}]))
    output = tmp_path / "out.jsonl"
    assert run(base_dir, data_dir, source, output) == 0
    assert [line["user_id"] for line in read_output(output)] == [7, "b", "3"]  # no user_id: the line number


@pytest.mark.parametrize(
    "user_id, message",
    [
        (None, "line 2: user_id null: expected a string or an integer"),
        (True, "line 2: user_id true: expected a string or an integer"),
        ([1], "line 2: user_id [1]: expected a string or an integer"),
        (7, "lines 1 and 2: the same user_id '7'"),  # 7 and "7" are one user
    ],
)
def test_a_user_id_that_is_not_an_id_is_refused_naming_the_line(
    base_dir, data_dir, tmp_path, capsys, user_id, message
):
    lines = [json.dumps({"user_id": "7", "history": []}), json.dumps({"user_id": user_id, "history": []})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    assert run(base_dir, data_dir, tmp_path / "in.jsonl", tmp_path / "out.jsonl") == 2
    assert f"{tmp_path / 'in.jsonl'}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_an_unknown_csv_item_is_reported_on_its_own_row(base_dir, data_dir, tmp_path, item_ids, capsys):
    source = tmp_path / "in.csv"
    rows = [("u1", item_ids[0]), ("u2", item_ids[1]), ("u1", item_ids[2]), ("u1", "nope")]
    source.write_text("user_id,item_id\n" + "".join(f"{user},{item}\n" for user, item in rows))
    assert run(base_dir, data_dir, source, tmp_path / "out.jsonl") == 2
    assert f"{source}: line 5: item ids not in the catalog of office: ['nope']" in capsys.readouterr().err
    source.write_text(source.read_text() + "u2,gone\nu1,lost\n")
    assert run(base_dir, data_dir, source, tmp_path / "out.jsonl") == 2
    assert f"{source}: lines 5, 7: item ids not in the catalog of office: ['nope', 'lost']" in capsys.readouterr().err


@pytest.mark.parametrize(
    "row, got",
    [("u1", "user_id='u1', item_id=None"), ("u1,", "user_id='u1', item_id=''"), (",{item}", "user_id='', item_id=")],
)
def test_a_csv_row_without_user_or_item_is_refused_naming_the_line(
    base_dir, data_dir, tmp_path, item_ids, capsys, row, got
):
    source = tmp_path / "in.csv"
    source.write_text(f"user_id,item_id\nu1,{item_ids[0]}\n{row.format(item=item_ids[1])}\nu2,{item_ids[2]}\n")
    for extra in ([], ["--skip_unknown"]):
        assert run(base_dir, data_dir, source, tmp_path / "out.jsonl", *extra) == 2
        error = capsys.readouterr().err
        assert f"{source}: line 3: expected a user_id and an item_id, got {got}" in error
    assert not (tmp_path / "out.jsonl").exists()


def test_an_upper_case_suffix_is_read_and_a_file_that_is_not_utf8_is_named(
    base_dir, data_dir, tmp_path, item_ids, capsys
):
    source = tmp_path / "IN.JSONL"
    source.write_text(json.dumps({"user_id": "a", "history": item_ids[:2]}) + "\n")
    assert run(base_dir, data_dir, source, tmp_path / "out.jsonl") == 0
    assert [line["user_id"] for line in read_output(tmp_path / "out.jsonl")] == ["a"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes(f"user_id,item_id\nJos\xe9,{item_ids[0]}\n".encode("latin-1"))
    assert run(base_dir, data_dir, latin, tmp_path / "latin.jsonl") == 2
    assert f"{latin}: not UTF-8 text (invalid continuation byte); save it as UTF-8" in capsys.readouterr().err
