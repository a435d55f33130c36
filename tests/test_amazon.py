"""Amazon Reviews 2018 and 2023 -> processed domain folders, on hand-checked fixtures (tests/fixtures/amazon/)."""

import functools
import gzip
import hashlib
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmsr_peft.cli import data_main
from mmsr_peft.data import amazon
from mmsr_peft.data.amazon import HOST, SCHEMAS, item_text, prepare_amazon
from mmsr_peft.domains import domain_folder, load_domain, load_folder
from mmsr_peft.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "amazon"
IMG18, IMG23 = "https://images-na.ssl-images-amazon.com/images/I/", "https://m.media-amazon.com/images/I/"
ALICE, BOB, CAROL, DAVE, ERIN, HEIDI = (
    "A1ALICE7Q2ZK3M", "A2BOB0X9LR4TW", "A3CAROL5HN8PJ", "A4DAVE2KD7VQE", "A5ERIN6MU3YGS", "A8HEIDI8PF2RA"
)  # fmt: skip
PENS, PAPER, NOTES, STAPLER, BINDER = "B00PENS001", "B00PAPR002", "B00NOTE003", "B00STPL004", "B00BNDR005"
V1, V2, V3 = (f"AHV{i}ZENTNBQ7A7V7UXW5JJI6UGR{i}" for i in (1, 2, 3))
PEN, NOTEBOOK, MARKER, TAPE = "B0PGELPEN1", "B0PNOTEBK2", "B0PMARKER3", "B0PTAPE004"


def _gzip_lines(text: str) -> bytes:
    return gzip.compress(text.encode(), mtime=0)


def raw_files(folder: Path, version: str, replace: dict | None = None) -> Path:
    """Gzips the fixtures of `version` into `folder` (a raw dir); `replace` maps (file, line) -> new line text."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in sorted((FIXTURES / version).iterdir()):
        lines = source.read_text().splitlines()
        for (name, number), line in (replace or {}).items():
            if name == source.name:
                lines[number - 1] = line
        (folder / f"{source.name}.gz").write_bytes(_gzip_lines("\n".join(lines) + "\n"))
    return folder


def sequences(domain) -> dict[str, list[str]]:
    ids = domain.catalog.item_ids
    pairs = zip(domain.sequences.user_ids, domain.sequences.items, strict=True)
    return {user: [ids[i] for i in items] for user, items in pairs}


def items_table(folder: Path) -> dict[str, dict]:
    table = pq.read_table(folder / "items.parquet").to_pylist()
    return {row["item_id"]: row for row in table}


def test_2018_default_5_core_is_the_hand_checked_folder(tmp_path):
    raw = raw_files(tmp_path / "raw", "2018")
    folder = prepare_amazon("office", "2018", tmp_path / "data", raw_dir=raw)
    assert folder == tmp_path / "data" / "amazon2018" / "office"
    domain = load_folder(folder)
    manifest = domain.manifest
    assert (manifest["name"], manifest["source"], manifest["version"], manifest["synthetic"]) == (
        "office", "amazon2018", "2018", False
    )  # fmt: skip
    assert manifest["counts"] == {
        "users": 5,
        "items": 5,
        "interactions": 25,
        "items_with_image_url": 4,
        "raw_reviews": 37,
        "meta_lines": 10,
        "meta_duplicate_lines": 1,
        "fields_too_long": 1,
        "duplicate_reviews": 1,
        "interactions_dropped": {"no_metadata": 1, "no_title": 2, "k_core": 8},
        "items_dropped": {"no_metadata": 1, "no_title": 2, "k_core": 1},
    }
    prep = manifest["preprocessing"]
    assert (prep["user_k"], prep["item_k"], prep["k_core_rounds"], prep["max_field_chars"]) == (5, 5, 1, 2000)
    for name, kind in (("Office_Products.json.gz", "reviews"), ("meta_Office_Products.json.gz", "meta")):
        entry = prep["raw_files"][name]
        assert entry["sha256"] == hashlib.sha256((raw / name).read_bytes()).hexdigest()
        assert entry["url"] == f"{HOST}/{getattr(SCHEMAS['2018'], kind).format('Office_Products')}"
    # chronological per user; equal timestamps keep the raw line order (Bob: stapler before notes; Dave's days)
    assert sequences(domain) == {
        DAVE: [PAPER, NOTES, PENS, STAPLER, BINDER],
        ALICE: [PENS, PAPER, NOTES, STAPLER, BINDER],
        BOB: [BINDER, STAPLER, NOTES, PENS, PAPER],
        ERIN: [STAPLER, BINDER, PENS, PAPER, NOTES],
        CAROL: [NOTES, PENS, PAPER, BINDER, STAPLER],  # her lines are newest first in the file
    }
    items = items_table(folder)
    assert list(items) == [PAPER, PENS, BINDER, NOTES, STAPLER]  # first appearance in the reviews file
    assert items[PENS]["text"] == (
        "Pilot G2 Retractable Gel Pens, Fine Point, Black Ink, 12 Pack. Office Products, Office & School Supplies, "
        "Writing & Correction Supplies, Pens & Refills. PILOT."
    )
    assert (
        items[BINDER]["text"]
        == 'Avery 1" Durable View Binder. Office Products, Office & School Supplies, Binders. Avery.'
    )
    assert items[NOTES]["text"] == "Post-it Super Sticky Notes, 3 x 3 in."  # no category, no brand
    # the 2100-character brand is dropped; the title's newline is one space
    assert items[STAPLER]["text"] == (
        "Swingline Stapler, Desktop Stapler, 20 Sheet Capacity. Office Products, Office & School Supplies."
    )
    assert items[STAPLER]["brand"] is None and items[PAPER]["brand"] is None  # "" is no brand
    assert {item: row["image_urls"] for item, row in items.items()} == {
        PENS: [IMG18 + "41pensLarge.jpg", IMG18 + "41pensSmall._SS40_.jpg"],  # imageURLHighRes, then imageURL
        PAPER: [IMG18 + "51paperSmall._SS40_.jpg"],
        NOTES: [],
        STAPLER: [IMG18 + "31staplerLarge.jpg", IMG18 + "31staplerSmall._SS40_.jpg"],
        BINDER: [IMG18 + "61binderLarge.jpg"],
    }
    assert all(row["image"] is None for row in items.values())
    assert domain.catalog.images == [None] * 5


def test_2018_3_core_removes_in_rounds(tmp_path):
    raw = raw_files(tmp_path / "raw", "2018")
    folder = prepare_amazon("office", "2018", tmp_path / "data", raw_dir=raw, user_k=3, item_k=3)
    domain = load_folder(folder)
    counts = domain.manifest["counts"]
    assert (counts["users"], counts["items"], counts["interactions"]) == (6, 5, 28)
    assert counts["interactions_dropped"]["k_core"] == 5
    # round 1 drops Grace (2) and the clips (2 reviews); round 2 Frank, left with pens and paper
    assert domain.manifest["preprocessing"]["k_core_rounds"] == 2
    assert sequences(domain)[HEIDI] == [PENS, PAPER, NOTES]


def test_reading_in_small_chunks_gives_the_same_folder(tmp_path, monkeypatch):
    """Lines are parsed in chunks of CHUNK_ROWS; a repeated metadata line in a later chunk is still a repeat."""
    raw = raw_files(tmp_path / "raw", "2018")
    whole = prepare_amazon("office", "2018", tmp_path / "whole", raw_dir=raw, user_k=3, item_k=3)
    monkeypatch.setattr(amazon, "CHUNK_ROWS", 4)
    chunked = prepare_amazon("office", "2018", tmp_path / "chunked", raw_dir=raw, user_k=3, item_k=3)
    for name in ("items.parquet", "interactions.parquet"):
        assert pq.read_table(chunked / name).equals(pq.read_table(whole / name))
    assert load_folder(chunked).manifest["counts"] == load_folder(whole).manifest["counts"]


def test_2023_through_the_cli(tmp_path):
    raw = raw_files(tmp_path / "raw", "2023")
    data = tmp_path / "data"
    argv = ["amazon", "--domain", "office", "--version", "2023", "--raw_dir", str(raw), "--data_dir", str(data)]
    assert data_main([*argv, "--user_k", "3", "--item_k", "3"]) == 0
    domain = load_domain("office", source="amazon2023", data_dir=str(data))
    counts = domain.manifest["counts"]
    assert (counts["users"], counts["items"], counts["interactions"], counts["duplicate_reviews"]) == (3, 4, 12, 1)
    assert counts["interactions_dropped"] == {"no_metadata": 1, "no_title": 1, "k_core": 1}
    assert sequences(domain) == {
        V1: [PEN, MARKER, NOTEBOOK, TAPE],  # marker and notebook in one second, ordered by milliseconds
        V2: [TAPE, PEN, NOTEBOOK, MARKER],  # tape and pen at the same millisecond: line order
        V3: [MARKER, NOTEBOOK, PEN, TAPE],
    }
    table = pq.read_table(domain.folder / "interactions.parquet").to_pydict()
    assert table["timestamp"][:2] == [1600000001, 1600086400]  # milliseconds written as seconds
    items = items_table(domain.folder)
    assert items[PEN]["text"] == (
        "Pilot G2 Gel Pens & Refills, 0.7 mm. Office Products, Office & School Supplies, "
        "Writing & Correction Supplies. PILOT."
    )
    assert items[NOTEBOOK]["text"] == "Five Star Spiral Notebook, 1 Subject. Five Star."  # no categories
    assert items[MARKER]["text"] == "Sharpie Permanent Markers, Fine Point. Office Products, Office & School Supplies."
    assert items[TAPE]["text"] == (  # &#8211; is an en dash
        "Scotch Magic Tape, 6 Rolls \u2013 Invisible. Office Products, Office & School Supplies, Tape. Scotch."
    )
    assert {item: row["image_urls"] for item, row in items.items()} == {
        PEN: [IMG23 + "pen1Hi._SL1500_.jpg", IMG23 + "pen1.jpg", IMG23 + "pen1._SS40_.jpg"],  # the MAIN image
        NOTEBOOK: [IMG23 + "note1.jpg", IMG23 + "note1._SS40_.jpg"],  # hi_res null
        MARKER: [IMG23 + "mark1.jpg", IMG23 + "mark1._SS40_.jpg"],  # no MAIN: the first image
        TAPE: [],
    }
    assert data_main(argv) == 2  # the folder exists: refused without --overwrite
    assert data_main([*argv, "--overwrite"]) == 2  # 5-core leaves nothing: an error, the old folder stays
    assert load_folder(domain.folder).manifest["counts"]["interactions"] == 12


def test_2023_reviews_of_an_item_within_one_second_are_duplicates(tmp_path):
    """Times are written in seconds: two reviews of one item in the same second would be the same interaction to the
    loader, so they are de-duplicated (and k-core counted) on seconds, not milliseconds."""
    line = json.loads((FIXTURES / "2023" / "Office_Products.jsonl").read_text().splitlines()[3])
    assert (line["user_id"], line["parent_asin"], line["timestamp"]) == (V1, PEN, 1600000001000)  # repeats line 1
    raw = raw_files(
        tmp_path / "raw", "2023", {("Office_Products.jsonl", 4): json.dumps({**line, "timestamp": 1600000001500})}
    )
    folder = prepare_amazon("office", "2023", tmp_path / "data", raw_dir=raw, user_k=3, item_k=3)
    domain = load_folder(folder)
    counts = domain.manifest["counts"]
    assert (counts["interactions"], counts["duplicate_reviews"]) == (12, 1)
    assert sequences(domain)[V1] == [PEN, MARKER, NOTEBOOK, TAPE]
    expected = prepare_amazon(
        "office", "2023", tmp_path / "exact", raw_dir=raw_files(tmp_path / "raw0", "2023"), user_k=3, item_k=3
    )
    assert pq.read_table(folder / "interactions.parquet").equals(pq.read_table(expected / "interactions.parquet"))


def test_a_title_of_only_periods_and_spaces_is_no_title(tmp_path):
    """`item_text` strips trailing periods and spaces: such a title would leave no text, so the item is dropped as
    untitled instead of a folder that fails to load."""
    line = json.loads((FIXTURES / "2023" / "meta_Office_Products.jsonl").read_text().splitlines()[4])
    assert line["parent_asin"] == TAPE
    bare = {**line, "title": " . . ", "categories": [], "store": None}
    raw = raw_files(tmp_path / "raw", "2023", {("meta_Office_Products.jsonl", 5): json.dumps(bare)})
    domain = load_folder(prepare_amazon("office", "2023", tmp_path / "data", raw_dir=raw, user_k=1, item_k=1))
    assert domain.manifest["counts"]["items_dropped"]["no_title"] == 2  # the tape and the fixture's untitled item
    assert TAPE not in domain.catalog.item_ids and all(domain.catalog.texts)


BAD_CASES = {
    "missing user": (
        "2023", "Office_Products.jsonl", 5,
        lambda row: {k: v for k, v in row.items() if k != "user_id"},
        r"line 5: field 'user_id' is missing, expected a non-empty string",
    ),
    "timestamp as text": (
        "2023", "Office_Products.jsonl", 7, lambda row: {**row, "timestamp": "1600086400100"},
        r"line 7: field 'timestamp' is '1600086400100', expected an integer",
    ),
    "category as text": (
        "2018", "meta_Office_Products.json", 2, lambda row: {**row, "category": "Office Products"},
        r"line 2: field 'category' is 'Office Products', expected a list or null",
    ),
    "images of another shape": (
        "2023", "meta_Office_Products.jsonl", 3, lambda row: {**row, "images": ["https://x/y.jpg"]},
        r"line 3: field 'images' is \['https://x/y.jpg'\], expected a list of \{hi_res, large, thumb, variant\}",
    ),
    "meta without item id": (
        "2018", "meta_Office_Products.json", 4, lambda row: {k: v for k, v in row.items() if k != "asin"},
        r"line 4: field 'asin' is missing",
    ),
    "not an object": ("2018", "Office_Products.json", 9, lambda row: [row["asin"]], r"line 9: expected a JSON object"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_lines_fail_naming_file_line_field_value_and_leave_no_folder(tmp_path, case):
    version, name, number, change, message = BAD_CASES[case]
    row = json.loads((FIXTURES / version / name).read_text().splitlines()[number - 1])
    raw = raw_files(tmp_path / "raw", version, {(name, number): json.dumps(change(row))})
    with pytest.raises(DataError, match=message) as error:
        prepare_amazon("office", version, tmp_path / "data", raw_dir=raw, user_k=3, item_k=3)
    assert f"{name}.gz" in str(error.value)
    assert not (tmp_path / "data").exists()  # no folder, no temporary folder, no empty parent folders


def test_malformed_and_truncated_files_fail(tmp_path):
    raw = raw_files(tmp_path / "raw", "2018")
    (raw / "Office_Products.json.gz").write_bytes(_gzip_lines((FIXTURES / "bad" / "Office_Products.json").read_text()))
    with pytest.raises(DataError, match=r"Office_Products.json.gz: line 2: not valid JSON .*'\{\"overall\": 5.0"):
        prepare_amazon("office", "2018", tmp_path / "data", raw_dir=raw)
    whole = (raw / "meta_Office_Products.json.gz").read_bytes()
    raw_files(raw, "2018")
    (raw / "meta_Office_Products.json.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"meta_Office_Products.json.gz: not a complete gzip file"):
        prepare_amazon("office", "2018", tmp_path / "data", raw_dir=raw)
    assert not (tmp_path / "data").exists()


@pytest.fixture
def file_server(tmp_path):
    """A local HTTP server over `tmp_path / "www"` (the same layout as the real host)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_missing_raw_files_are_downloaded_atomically(tmp_path, file_server):
    www, url = file_server
    local = raw_files(tmp_path / "fixture", "2023")
    for kind in ("reviews", "meta"):
        path = www / getattr(SCHEMAS["2023"], kind).format("Office_Products")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((local / path.name).read_bytes())
    raw = tmp_path / "downloads"
    folder = prepare_amazon("office", "2023", tmp_path / "data", raw_dir=raw, user_k=3, item_k=3, base_url=url)
    assert sorted(p.name for p in raw.iterdir()) == ["Office_Products.jsonl.gz", "meta_Office_Products.jsonl.gz"]
    assert all((raw / p.name).read_bytes() == p.read_bytes() for p in local.iterdir())
    files = load_folder(folder).manifest["preprocessing"]["raw_files"]
    assert (
        files["Office_Products.jsonl.gz"]["url"] == f"{url}/amazon_2023/raw/review_categories/Office_Products.jsonl.gz"
    )
    expected = prepare_amazon("office", "2023", tmp_path / "local", raw_dir=local, user_k=3, item_k=3)
    for name in ("items.parquet", "interactions.parquet"):
        assert pq.read_table(folder / name).equals(pq.read_table(expected / name))
    # a file the server does not have: an error naming the URL and --raw_dir, no partial file, no folder
    with pytest.raises(
        DataError, match=r"could not download http://127.0.0.1:\d+/amazon_v2/categoryFiles/Office_Pr.*--raw_dir"
    ):
        prepare_amazon("office", "2018", tmp_path / "data", raw_dir=raw, base_url=url)
    assert len(list(raw.iterdir())) == 2 and not (tmp_path / "data" / "amazon2018" / "office").exists()


def test_registry_knows_both_versions(tmp_path):
    assert domain_folder("pantry", "amazon2018", "d") == Path("d/amazon2018/pantry")
    with pytest.raises(DataError, match="source 'amazon2023' has no domain 'pantry'; its domains: arts, "):
        prepare_amazon("pantry", "2023", tmp_path)
    with pytest.raises(DataError, match="mmsr-data amazon --domain office --version 2018"):
        load_domain("office", source="amazon2018", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="valid versions: 2018, 2023"):
        prepare_amazon("office", "2014", tmp_path)


def test_item_text():
    assert item_text("Heat", ["Movies", "Action"], "Warner") == "Heat. Movies, Action. Warner."
    assert item_text("Pens...", [], None) == "Pens."
