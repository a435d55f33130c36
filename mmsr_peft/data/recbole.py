"""RecBole atomic files to and from processed domain folders.

Import: `<name>.inter` (`user_id:token`, `item_id:token`, `timestamp:float`) and `<name>.item` (`item_id:token` and
text fields) become a processed domain folder `<data_dir>/recbole/<name>/`. Export: a processed domain and its
leave-one-out split become RecBole atomic files plus RecBole's sequential benchmark files, so that RecBole models
train and evaluate on exactly our split:

```
<OUT_DIR>/                      (RecBole: data_path = OUT_DIR's parent, dataset = <name> = OUT_DIR's name)
  <name>.inter                  user_id:token  item_id:token  timestamp:float      every row, original order
  <name>.item                   item_id:token  text:token_seq  [image:token]  [other string fields:token_seq]
  <name>.train.inter            user_id:token  item_id_list:token_seq  item_id:token   one row per training transition
  <name>.valid.inter            the same header: validation history -> validation target, one row per user
  <name>.test.inter             test history -> test target, one row per user
  mmsr_export.json              the domain's manifest, the split's parameters and a RecBole config that reads them
  images/                       the domain's images (when it has some)
```

Files are tab-separated with RecBole's `name:type` header; a value holding a tab, a newline or a double quote is
written CSV-quoted (`"..."`, inner quotes doubled), which RecBole's reader (pandas) and ours both parse back
exactly. Ids are refused when RecBole cannot read them back as the same token: empty, containing whitespace
(RecBole splits `item_id_list` on spaces), or a word pandas reads as missing (`NA`, `null`, `nan`, ...).
RecBole itself is never imported.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ..errors import DataError
from .folder import INTERACTION_SCHEMA, ITEM_SCHEMA, new_domain_folder, write_manifest, write_table
from .sequences import Sequences, Split

SOURCE = "recbole"
SPLITS = ("train", "valid", "test")
BENCHMARK_HEADER = ("user_id:token", "item_id_list:token_seq", "item_id:token")
FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
TEXT_TYPES = ("token", "token_seq")
EXPORT_MANIFEST = "mmsr_export.json"
# Values that pandas.read_csv (RecBole's reader) turns into NaN even for string columns.
MISSING_WORDS = frozenset(
    "#N/A|#N/A N/A|#NA|-1.#IND|-1.#QNAN|-NaN|-nan|1.#IND|1.#QNAN|<NA>|N/A|NA|NULL|NaN|None|n/a|nan|null".split("|")
)


def read_atomic_file(path: Path) -> tuple[list[tuple[str, str]], Iterator[tuple[int, dict[str, str]]]]:
    """The `(name, type)` header of a RecBole atomic file and an iterator of `(line, {name: value})` rows.

    Rows are parsed as RecBole parses them: tab-separated, a field may be CSV-quoted, blank lines are skipped.
    `line` is the file line where the row starts. A row with the wrong number of fields is a `DataError`.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8") as handle:
        fields = next(csv.reader(handle, delimiter="\t"), [])
    header = []
    for field in fields:
        name, _, kind = field.partition(":")
        if not name or kind not in FIELD_TYPES:
            raise DataError(f"{path}: line 1: header field {field!r} is not 'name:type' with a type in {FIELD_TYPES}")
        header.append((name, kind))
    if not header:
        raise DataError(f"{path}: empty file (expected a 'name:type' header line)")
    return header, _atomic_rows(path, [name for name, _ in header])


def _atomic_rows(path: Path, names: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)
        line = 2
        try:
            for values in reader:
                if values and len(values) != len(names):
                    raise DataError(f"{path}: line {line}: {len(values)} fields, expected {len(names)} ({names})")
                if values:  # pandas (RecBole's reader) skips blank lines too
                    yield line, dict(zip(names, values, strict=True))
                line = reader.line_num + 1
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: near line {line}: not UTF-8 text ({err})") from err


def import_recbole(
    atomic_dir: str | os.PathLike,
    name: str | None = None,
    data_dir: str | os.PathLike = "data",
    text_fields: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes `<data_dir>/recbole/<name>/` (atomically) from `<atomic_dir>/<name>.inter` and `<name>.item`.

    Args:
        atomic_dir: the folder of the atomic files (RecBole's `data_path/dataset`).
        name: the dataset name, the files' stem; defaults to the folder's name.
        data_dir: root of processed domains.
        text_fields: `.item` fields that make the item text. One field: its value is the text. Several:
            `"field: value; field: value"`, empty values left out. Default: `text` when the file has that field
            (files exported by `export_recbole`), else every token/token_seq field but `item_id` and `image`, in
            file order (ML-100k: `"movie_title: Toy Story; release_year: 1995; class: Animation Children's Comedy"`).
        overwrite: replace an existing folder.

    Every token and token_seq field of `.item` is kept as an extra string column; an `image` field holds image
    paths relative to `atomic_dir`, copied into the domain's `images/` (two values that would land on the same file
    there are refused). `.inter` keeps its row order, except that a user's rows within one second are put in the
    order of their fractional timestamps, which are then truncated to whole seconds; a row repeating the user, item
    and second of an earlier one is dropped (counted as `duplicate_interactions`); other `.inter` fields (e.g.
    `rating`) are dropped.
    """
    atomic_dir = Path(atomic_dir)
    name = name or atomic_dir.name
    target = Path(data_dir) / SOURCE / name
    origin = _read_export_manifest(atomic_dir)
    with new_domain_folder(target, overwrite, reads=atomic_dir) as tmp:
        items, fields = _import_items(atomic_dir / f"{name}.item", atomic_dir, tmp, text_fields)
        write_table(tmp / "items.parquet", items, ITEM_SCHEMA)
        interactions, dropped = _import_interactions(atomic_dir / f"{name}.inter", set(items["item_id"]))
        interactions, duplicates = _whole_seconds(interactions)
        write_table(tmp / "interactions.parquet", interactions, INTERACTION_SCHEMA)
        counts = {
            "items": len(items["item_id"]),
            "users": len(set(interactions["user_id"])),
            "interactions": len(interactions["user_id"]),
            "items_with_image": sum(image is not None for image in items["image"]),
            "duplicate_interactions": duplicates,
        }
        preprocessing = {
            "atomic_dir": str(atomic_dir),
            "text_fields": fields,
            "text": "the field's value" if len(fields) == 1 else "'field: value' pairs joined by '; '",
            "timestamps": "truncated to whole seconds, a user's rows within one second ordered by the fraction",
            "duplicates": "same user, item and second: the first row (by time) kept",
            "dropped_inter_fields": dropped,
        }
        manifest = write_manifest(tmp, name, SOURCE, "atomic files", counts, preprocessing)
        if origin is not None:  # a folder exported by mmsr_peft: keep what the data is (synthetic stays labelled)
            manifest.update(synthetic=bool(origin.get("synthetic", False)), origin=origin)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return target


def _read_export_manifest(atomic_dir: Path) -> dict | None:
    path = atomic_dir / EXPORT_MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["domain"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{path}: expected a JSON object with a 'domain' manifest ({err})") from err


def _import_items(path: Path, atomic_dir: Path, folder: Path, text_fields: list[str] | None) -> tuple[dict, list]:
    header, rows = read_atomic_file(path)
    types = dict(header)
    if types.get("item_id") != "token":
        raise DataError(f"{path}: line 1: expected an 'item_id:token' field (header: {_header_text(header)})")
    strings = [n for n, kind in header if kind in TEXT_TYPES and n not in ("item_id", "text", "image")]
    if text_fields is None:
        text_fields = ["text"] if "text" in types else strings
    unknown = [f for f in text_fields if f not in types or f == "item_id"]
    if unknown or not text_fields:
        valid = [n for n, _ in header if n != "item_id"]
        raise DataError(f"{path}: text fields {unknown or text_fields} are not in the file; choose among {valid}")
    columns = {column: [] for column in ("item_id", "text", "image", *strings)}
    first_line: dict[str, int] = {}
    copied: dict[str, tuple[int, str, str]] = {}  # image destination -> (line, item, value) that first wrote it
    for line, row in rows:
        item_id = row["item_id"]
        _check_id(path, line, "item_id", item_id, first_line)
        first_line[item_id] = line
        text = _compose_text(row, text_fields)
        image = _import_image(path, line, row.get("image", ""), atomic_dir, folder)
        if image is not None:
            _check_image_destination(path, line, item_id, row["image"], image, atomic_dir, copied)
        if not text.strip() and image is None:
            raise DataError(
                f"{path}: line {line}: item {item_id!r} has no text in fields {text_fields} and no image; "
                "an item needs at least one modality (choose other fields with --text_fields)"
            )
        for column, value in zip(("item_id", "text", "image"), (item_id, text, image), strict=True):
            columns[column].append(value)
        for column in strings:
            columns[column].append(row[column])
    if not first_line:
        raise DataError(f"{path}: no items (expected at least one row after the header)")
    return columns, list(text_fields)


def _compose_text(row: dict[str, str], fields: list[str]) -> str:
    if len(fields) == 1:
        return row[fields[0]]
    return "; ".join(f"{field}: {row[field]}" for field in fields if row[field].strip())


def _check_image_destination(
    path: Path, line: int, item_id: str, value: str, image: str, atomic_dir: Path, copied: dict
) -> None:
    """Refuses two image values that name different files but land on the same file of `images/` (`a.jpg` and
    `images/a.jpg`): the second copy would replace the first item's image. Items sharing one file are fine."""
    destination = os.path.normpath(image)
    if destination in copied:
        first, other, other_value = copied[destination]
        if (atomic_dir / other_value).resolve() != (atomic_dir / value).resolve():
            raise DataError(
                f"{path}: line {line}: item {item_id!r} field 'image' = {value!r} and line {first}: item {other!r} "
                f"field 'image' = {other_value!r} are different files that would both be copied to {destination}; "
                "rename one of them"
            )
    copied.setdefault(destination, (line, item_id, value))


def _import_image(path: Path, line: int, value: str, atomic_dir: Path, folder: Path) -> str | None:
    if not value:
        return None
    source = (atomic_dir / value).resolve()
    if not source.is_relative_to(atomic_dir.resolve()) or not source.is_file():
        raise DataError(f"{path}: line {line}: field 'image' = {value!r}: no such file under {atomic_dir}")
    relative = value if Path(value).parts[0] == "images" else f"images/{value}"
    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / relative)
    return relative


def _import_interactions(path: Path, item_ids: set[str]) -> tuple[dict, list[str]]:
    header, rows = read_atomic_file(path)
    names = [n for n, _ in header]
    missing = [f for f in ("user_id", "item_id", "timestamp") if f not in names]
    if missing:
        raise DataError(
            f"{path}: line 1: missing fields {missing}; expected user_id:token, item_id:token, timestamp:float "
            f"(header: {_header_text(header)})"
        )
    columns = {"user_id": [], "item_id": [], "timestamp": []}
    for line, row in rows:
        user_id, item_id, timestamp = row["user_id"], row["item_id"], row["timestamp"]
        _check_id(path, line, "user_id", user_id)
        if item_id not in item_ids:
            raise DataError(f"{path}: line {line}: field 'item_id' = {item_id!r} is not an item of {path.stem}.item")
        try:
            seconds = float(timestamp)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds):
            raise DataError(f"{path}: line {line}: field 'timestamp' = {timestamp!r}, expected a number of seconds")
        columns["user_id"].append(user_id)
        columns["item_id"].append(item_id)
        columns["timestamp"].append(seconds)
    if not columns["user_id"]:
        raise DataError(f"{path}: no interactions (expected at least one row after the header)")
    return columns, [n for n in names if n not in columns]


def _whole_seconds(columns: dict) -> tuple[dict, int]:
    """`columns` with their float timestamps truncated to whole seconds, as the folder stores them, and the number
    of rows dropped.

    The loader orders a user's rows by (second, row), so the rows of a user within one second are first put in the
    order of their fractional times (each group keeps the rows' places in the file: other rows do not move). A row
    repeating the user, item and second of an earlier one is dropped, as the Amazon preparer drops a duplicate
    review: the loader refuses such a repeat.
    """
    users = np.unique(columns["user_id"], return_inverse=True)[1]
    items = np.unique(columns["item_id"], return_inverse=True)[1]
    times = np.asarray(columns["timestamp"], dtype=np.float64)
    seconds, rows = np.trunc(times), np.arange(len(times))
    slots = np.lexsort((rows, seconds, users))  # rows grouped by (user, second), each group in file order
    order = np.empty_like(rows)
    order[slots] = np.lexsort((rows, times, seconds, users))  # the same groups, each in time order
    key = np.stack([users[order], items[order], seconds[order].astype(np.int64)], axis=1)  # (R, 3)
    first = np.sort(np.unique(key, axis=0, return_index=True)[1])  # the earliest row of each (user, item, second)
    kept = order[first]
    whole = {name: [values[row] for row in kept] for name, values in columns.items()}
    whole["timestamp"] = [int(value) for value in whole["timestamp"]]
    return whole, len(rows) - len(kept)


def _check_id(path: Path, line: int, field: str, value: str, seen: dict[str, int] | None = None) -> None:
    if not value:
        raise DataError(f"{path}: line {line}: field {field!r} is empty, expected an id")
    if seen is not None and value in seen:
        raise DataError(f"{path}: line {line}: field {field!r} = {value!r} repeats line {seen[value]}")


def _header_text(header: list[tuple[str, str]]) -> str:
    return "\t".join(f"{n}:{kind}" for n, kind in header)


def export_recbole(
    domain_folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str | None = None,
    max_len: int = 50,
    overwrite: bool = False,
    train_stride: int | None = None,
) -> dict:
    """Writes a processed domain and its leave-one-out split as RecBole atomic and benchmark files (see the
    module docstring), replacing `out_dir` as a whole. Returns the export manifest (also in `mmsr_export.json`).

    Args:
        domain_folder: a processed domain folder.
        out_dir: the folder to write; RecBole finds the files as `data_path=<parent>`, `dataset=<name>`.
        name: the files' stem; defaults to `out_dir`'s name (RecBole requires the two to be equal).
        max_len: history length of the split (`Split.leave_one_out`): histories are the last `max_len` items.
        overwrite: replace an existing `out_dir`.
        train_stride: the split's training windows (`Split.leave_one_out`'s `stride`, default `max_len`); 1 gives
            every training target its last `max_len` items, as RecBole's own prefix augmentation does.

    The benchmark files hold exactly `Split.leave_one_out(sequences, max_len, stride=train_stride)`:
    `valid`/`test` one row per user (history -> target); `train` one row per training transition, each trained
    item of each training window predicted from the window's items before it, as our models train on them.
    """
    from ..domains import load_folder
    from ..evaluation import PROTOCOL

    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    domain_folder, out_dir = Path(domain_folder), Path(out_dir)
    name = name or out_dir.name
    domain = load_folder(domain_folder)  # checks the folder: ids, images, items of every interaction
    with new_domain_folder(out_dir, overwrite, reads=domain_folder) as tmp:
        images = _export_items(domain_folder, tmp / f"{name}.item")
        if images:
            shutil.copytree(domain_folder / "images", tmp / "images", dirs_exist_ok=True)
        else:
            (tmp / "images").rmdir()
        _export_interactions(domain_folder / "interactions.parquet", tmp / f"{name}.inter")
        rows = _export_split(domain.sequences, domain.catalog.item_ids, max_len, tmp, name, train_stride)
        manifest = {
            "name": name,
            "domain": domain.manifest,
            "split": {
                "method": "leave_one_out",
                "max_len": max_len,
                "train_stride": train_stride or max_len,
                "rows": rows,
                **domain.sequences.stats,
            },
            "protocol": PROTOCOL,
            "recbole_config": {
                "data_path": str(out_dir.resolve().parent),
                "dataset": name,
                "benchmark_filename": list(SPLITS),
                "load_col": {"inter": ["user_id", "item_id_list", "item_id"], "item": ["item_id"]},
                # without it RecBole remaps the history tokens with a vocabulary of their own, so an item's id in a
                # history differs from its id as a target and SASRec's shared embedding table pairs wrong items
                "alias_of_item_id": ["item_id_list"],
                "MAX_ITEM_LIST_LENGTH": max_len,
                "eval_args": {"order": "TO", "mode": "full"},
            },
        }
        (tmp / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _export_items(domain_folder: Path, out: Path) -> int:
    """Writes `<name>.item`; returns the number of items with an image."""
    path = domain_folder / "items.parquet"
    table = pq.read_table(path)
    extra = [c for c in table.column_names if c not in ITEM_SCHEMA.names]
    for column in extra:
        if not column or any(c.isspace() or c == ":" for c in column):
            raise DataError(f"{path}: column name {column!r} cannot be a RecBole field name (no spaces or ':')")
    columns = table.to_pydict()
    with_image = sum(image is not None for image in columns["image"])
    fields = ["item_id", "text", *(["image"] if with_image else []), *extra]
    types = {"item_id": "token", "image": "token"}
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow([f"{f}:{types.get(f, 'token_seq')}" for f in fields])
        for row in range(table.num_rows):
            _check_token(path, row, "item_id", columns["item_id"][row])
            writer.writerow(["" if columns[f][row] is None else str(columns[f][row]) for f in fields])
    return with_image


def _export_interactions(path: Path, out: Path) -> None:
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["user_id:token", "item_id:token", "timestamp:float"])
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(columns=["user_id", "item_id", "timestamp"]):
            columns = batch.to_pydict()
            for user_id, item_id, timestamp in zip(*columns.values(), strict=True):
                _check_token(path, row, "user_id", user_id)
                writer.writerow([user_id, item_id, timestamp])
                row += 1


def _export_split(
    sequences: Sequences, item_ids: list[str], max_len: int, folder: Path, name: str, stride: int | None
) -> dict:
    """Writes the three benchmark files; returns their row counts."""
    counts = dict.fromkeys(SPLITS, 0)
    handles = {split: open(folder / f"{name}.{split}.inter", "w", newline="", encoding="utf-8") for split in SPLITS}
    try:
        writers = {split: csv.writer(handle, delimiter="\t", lineterminator="\n") for split, handle in handles.items()}
        for writer in writers.values():
            writer.writerow(BENCHMARK_HEADER)
        for user_id, items in zip(sequences.user_ids, sequences.items, strict=True):
            # the user's own split, by the same code as the models' (the user's rows come out together)
            split = Split.leave_one_out(Sequences([user_id], [items]), max_len, stride=stride)
            cases = {
                "train": [
                    (window[:j], window[j])
                    for window, skip in zip(split.train, split.train_skip, strict=True)
                    for j in range(1 + skip, len(window))
                ],
                "valid": [(split.valid_histories[0], split.valid_targets[0])],
                "test": [(split.test_histories[0], split.test_targets[0])],
            }
            for stage, pairs in cases.items():
                for history, target in pairs:
                    writers[stage].writerow([user_id, " ".join(item_ids[i] for i in history), item_ids[target]])
                counts[stage] += len(pairs)
    finally:
        for handle in handles.values():
            handle.close()
    return counts


def _check_token(path: Path, row: int, field: str, value: str) -> None:
    """Refuses an id that RecBole would not read back as the same token."""
    if not value:
        problem = "is empty"
    elif any(c.isspace() for c in value):
        problem = "contains whitespace (RecBole splits item_id_list on spaces)"
    elif value in MISSING_WORDS:
        problem = "is a word RecBole's reader (pandas) takes for a missing value"
    else:
        return
    raise DataError(f"{path}: row {row}: field {field!r} = {value!r} {problem}; it cannot be a RecBole token")


def add_command(commands) -> None:
    """`mmsr-data recbole-import` and `mmsr-data recbole-export`."""
    parser = commands.add_parser("recbole-import", help="A RecBole dataset (atomic .inter + .item files).")
    parser.add_argument("atomic_dir", help="Folder of <name>.inter and <name>.item.")
    parser.add_argument("--name", default=None, help="Dataset name (the files' stem); default: the folder's name.")
    parser.add_argument("--data_dir", default="data", help="Root of processed domains (writes <data_dir>/recbole).")
    parser.add_argument(
        "--text_fields",
        nargs="+",
        default=None,
        help="Fields of <name>.item that make the item text (several: 'field: value; ...'). "
        "Default: 'text' if present, else every token/token_seq field but item_id and image.",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing folder.")
    parser.set_defaults(
        handler=lambda args: print(
            f"wrote {import_recbole(args.atomic_dir, args.name, args.data_dir, args.text_fields, args.overwrite)}"
        )
    )
    parser = commands.add_parser(
        "recbole-export", help="A processed domain + its leave-one-out split as RecBole atomic and benchmark files."
    )
    parser.add_argument("domain_folder", help="Processed domain folder (items.parquet, interactions.parquet).")
    parser.add_argument("out_dir", help="Folder to write (replaced as a whole); RecBole's data_path/dataset.")
    parser.add_argument("--name", default=None, help="The files' stem; default: OUT_DIR's name (RecBole needs that).")
    parser.add_argument("--max_len", type=int, default=50, help="History length of the leave-one-out split.")
    parser.add_argument(
        "--train_stride",
        type=int,
        default=None,
        help="Training windows every N items (as the models' --train_stride; default max_len); 1: every target with "
        "its last max_len items, RecBole's own augmentation.",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing OUT_DIR.")
    parser.set_defaults(handler=_run_export)


def _run_export(args) -> None:
    manifest = export_recbole(
        args.domain_folder, args.out_dir, args.name, args.max_len, args.overwrite, args.train_stride
    )
    rows = ", ".join(f"{split} {count}" for split, count in manifest["split"]["rows"].items())
    print(f"wrote {args.out_dir} (benchmark rows: {rows}; RecBole: {json.dumps(manifest['recbole_config'])})")
