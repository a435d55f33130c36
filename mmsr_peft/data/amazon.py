"""Amazon Reviews 2018 and 2023 as processed domain folders, preprocessed as UniSRec's `process_amazon.py` does.

One category per domain (`mmsr_peft.domains.DOMAINS`, e.g. `office` -> `Office_Products`), read from two raw files
that are downloaded into `raw_dir` when missing (atomically: a `.part` file renamed when complete):

| version | reviews               | metadata                   | item id       | user id      | timestamp            |
|---------|-----------------------|----------------------------|---------------|--------------|----------------------|
| 2018    | `<Category>.json.gz`  | `meta_<Category>.json.gz`  | `asin`        | `reviewerID` | `unixReviewTime` (s) |
| 2023    | `<Category>.jsonl.gz` | `meta_<Category>.jsonl.gz` | `parent_asin` | `user_id`    | `timestamp` (ms)     |

Preprocessing, in this order:

1. a review repeating the user, item and written timestamp (in seconds) of an earlier one is a duplicate: the first
   is kept;
2. interactions with an item that has no metadata line, or whose cleaned title is empty (missing, `""`, only
   periods and spaces, or longer than `MAX_FIELD_CHARS`), are dropped: every item needs a title, because `image`
   stays null here (only `image_urls` is written; `scripts/download_images.py` fills `image` later);
3. iterative k-core: users with fewer than `user_k` and items with fewer than `item_k` interactions are removed,
   again and again until none is left (UniSRec's 5 and 5 by default);
4. interactions are written grouped by user, each user's in chronological order, ties broken by the raw line
   order. 2023 times are ordered in milliseconds and written in seconds (the loader's stable sort keeps the order).

Item text is UniSRec's recipe, title + categories + brand (2023: `categories` and `store`). Each field is
HTML-unescaped (`html.unescape`) and its runs of whitespace become one space; a list is joined with ", "; a field
longer than `MAX_FIELD_CHARS` (2000, UniSRec's bound) is dropped; each field kept ends with one period:
`"Pilot G2 Gel Pens. Office Products, Pens & Refills. PILOT."`.

`image_urls` lists an item's main image from the best to the worst resolution: 2023, `hi_res`, `large`, `thumb` of
the image whose `variant` is `"MAIN"` (else of the first image); 2018, `imageURLHighRes[0]` then `imageURL[0]`.

Bad input. An error (`DataError` naming the file, line, field and value; no folder is written): a line that is not
a JSON object, a review without a string user/item id or an integer timestamp, a metadata line without a string
item id, a title/brand that is not a string, categories or image fields of another shape than the schema's, a
truncated gzip file. A counted skip (manifest `counts`): duplicate reviews, metadata lines repeating an item already
read (the first wins, as in UniSRec), items without metadata or title, over-long fields; blank lines are
ignored.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import html
import http.client
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from ..domains import DOMAINS, domain_folder
from ..errors import DataError
from ..files import atomic_file
from .folder import INTERACTION_SCHEMA, ITEM_SCHEMA, new_domain_folder, write_manifest, write_table
from .json_lines import bad_field, json_lines, optional, required

# The McAuley lab's data host; https://mcauleylab.ucsd.edu/public_datasets/data mirrors it with the same layout.
HOST = "https://datarepo.eng.ucsd.edu/mcauley_group/data"
MAX_FIELD_CHARS = 2000
CHUNK_ROWS = 1 << 18  # raw lines parsed into Python objects before they are moved into Arrow arrays
META_TYPES = {
    "title": pa.string(),
    "categories": pa.list_(pa.string()),
    "brand": pa.string(),
    "image_urls": pa.list_(pa.string()),
}


@dataclass(frozen=True)
class Schema:
    """Where one version of the dump keeps what the preparer reads."""

    reviews: str  # path of the reviews file under the host; `{}` is the category
    meta: str  # path of the metadata file under the host
    user: str
    item: str  # the item id of both files
    timestamp: str
    per_second: int  # timestamp units per second
    categories: str
    brand: str


SCHEMAS = {
    "2018": Schema(
        "amazon_v2/categoryFiles/{}.json.gz",
        "amazon_v2/metaFiles2/meta_{}.json.gz",
        user="reviewerID",
        item="asin",
        timestamp="unixReviewTime",
        per_second=1,
        categories="category",
        brand="brand",
    ),
    "2023": Schema(
        "amazon_2023/raw/review_categories/{}.jsonl.gz",
        "amazon_2023/raw/meta_categories/meta_{}.jsonl.gz",
        user="user_id",
        item="parent_asin",
        timestamp="timestamp",
        per_second=1000,
        categories="categories",
        brand="store",
    ),
}


def prepare_amazon(
    domain: str,
    version: str,
    data_dir: str | os.PathLike = "data",
    raw_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    user_k: int = 5,
    item_k: int = 5,
    base_url: str = HOST,
) -> Path:
    """Writes `<data_dir>/amazon<version>/<domain>/` (atomically) from one category of Amazon Reviews 2018 or 2023.

    Args:
        domain (`str`): a registered domain with a category in that version (`office`, `arts`, ...).
        version (`str`): `"2018"` or `"2023"`.
        data_dir (`str`): root of the processed domains.
        raw_dir (`str`, *optional*): folder of the raw files; those missing are downloaded into it from `base_url`.
            Defaults to `<data_dir>/raw/amazon<version>`.
        overwrite (`bool`): replace an existing processed folder.
        user_k / item_k (`int`): k-core thresholds on users and items.
        base_url (`str`): host of the raw files, laid out as `HOST` is.

    Returns:
        `Path`: the processed folder.
    """
    version = str(version)
    if version not in SCHEMAS:
        raise ValueError(f"unknown Amazon Reviews version {version!r}; valid versions: {', '.join(SCHEMAS)}")
    if user_k < 1 or item_k < 1:
        raise ValueError(f"user_k and item_k must be >= 1, got {user_k} and {item_k}")
    schema, source = SCHEMAS[version], f"amazon{version}"
    target = domain_folder(domain, source, str(data_dir))
    category = getattr(DOMAINS[domain], source)
    raw_dir = Path(raw_dir) if raw_dir is not None else Path(data_dir) / "raw" / source
    with new_domain_folder(target, overwrite) as tmp:
        files = raw_files(schema, category, raw_dir, base_url)
        digests = {kind: hashlib.sha256() for kind in files}
        with _gc_paused():
            users, items, times = _read_reviews(files["reviews"][0], schema, digests["reviews"])
            counts = {"raw_reviews": len(times)}
            user_vocab, user_codes = _encode(users)
            item_vocab, item_codes = _encode(items)
            del users, items
            meta = _read_meta(files["meta"][0], version, item_vocab, digests["meta"], counts)
        seconds = times // schema.per_second  # what is written: duplicates are judged on it, the order on `times`
        rows, rounds = _filter(user_codes, item_codes, times, seconds, meta["state"], user_k, item_k, counts)
        if len(rows) == 0:
            raise DataError(
                f"{files['reviews'][0]}: no interaction is left after dropping items without metadata or title and "
                f"{user_k}/{item_k}-core filtering (counts: {counts})"
            )
        counts = {**_write(tmp, rows, user_vocab, user_codes, item_vocab, item_codes, seconds, meta), **counts}
        preprocessing = {
            "category": category,
            "user_k": user_k,
            "item_k": item_k,
            "k_core_rounds": rounds,
            **_RECIPE,
            "item_id": schema.item,
            "timestamp": f"{schema.timestamp} ({'ms, written in s' if schema.per_second > 1 else 's'})",
            "raw_files": {
                path.name: {"url": url, "bytes": path.stat().st_size, "sha256": digests[kind].hexdigest()}
                for kind, (path, url) in files.items()
            },
        }
        write_manifest(tmp, domain, source, version, counts, preprocessing)
    return target


# What the manifest says of the preprocessing beside the parameters of a run.
_RECIPE = {
    "text": "title. categories. brand. (2023: store); html.unescape, whitespace collapsed, lists joined with ', ', "
    "a field longer than max_field_chars dropped, each field ends with one period",
    "max_field_chars": MAX_FIELD_CHARS,
    "order": "grouped by user, each by (timestamp, raw line)",
    "duplicates": "same user, item and timestamp in seconds (as written): the first review kept",
    "image_urls": "2023: hi_res, large, thumb of the MAIN image (else the first); 2018: imageURLHighRes[0], imageURL[0]",
}


def raw_files(schema: Schema, category: str, raw_dir: Path, base_url: str) -> dict[str, tuple[Path, str]]:
    """`{"reviews": (path, url), "meta": (path, url)}`; the files missing from `raw_dir` are downloaded first."""
    files = {}
    for kind in ("reviews", "meta"):
        url = f"{base_url.rstrip('/')}/{getattr(schema, kind).format(category)}"
        files[kind] = (raw_dir / url.rsplit("/", 1)[1], url)
        if not files[kind][0].is_file():
            download(url, files[kind][0])
    return files


def item_text(title: str, categories: list[str] | None, brand: str | None) -> str:
    """`"Pilot G2 Gel Pens. Office Products, Pens & Refills. PILOT."` from cleaned fields (see `clean`)."""
    fields = (title, ", ".join(categories or ()), brand or "")
    return " ".join(f"{field}." for field in (f.rstrip(". ") for f in fields) if field)


def clean(value: str) -> str:
    """HTML-unescaped, whitespace runs as one space, stripped."""
    return re.sub(r"\s+", " ", html.unescape(value)).strip()


def download(url: str, path: Path) -> Path:
    """Downloads `url` to `path` with a progress bar, through a temporary file renamed when complete (an interrupted
    download leaves nothing)."""
    try:
        with (
            atomic_file(path) as (fd, _),
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=60) as response,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {path.name}") as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and bar.n != total:
                raise DataError(f"{url}: the download stopped after {bar.n} of {total} bytes; run again")
    except (OSError, http.client.HTTPException) as err:
        raise DataError(
            f"could not download {url} ({err}); without internet, fetch it elsewhere and pass the folder that "
            f"holds {path.name} as --raw_dir"
        ) from err
    return path


# ---------------------------------------------------------------- reading


@contextlib.contextmanager
def _gc_paused():
    """Python's cycle collector off for the block. Parsing allocates millions of dicts and lists, none in a cycle,
    and each collection traces every container still alive (the metadata chunk): reading 1 M reviews + 100 k
    metadata lines took 62 s with it, 35 s without. Nothing read here forms a cycle, so memory is unchanged."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_reviews(path: Path, schema: Schema, digest) -> tuple[pa.ChunkedArray, pa.ChunkedArray, np.ndarray]:
    """User ids, item ids (Arrow strings) and integer timestamps of every review, in line order."""
    users, items, times, chunks = [], [], [], ([], [], [])
    for number, record in json_lines(path, digest):
        users.append(required(record, schema.user, str, path, number))
        items.append(required(record, schema.item, str, path, number))
        times.append(required(record, schema.timestamp, int, path, number))
        if len(users) == CHUNK_ROWS:
            _flush(chunks, users, items, times)
    _flush(chunks, users, items, times)
    user_chunks, item_chunks, time_chunks = chunks
    times = np.concatenate(time_chunks) if time_chunks else np.zeros(0, np.int64)
    return pa.chunked_array(user_chunks, pa.string()), pa.chunked_array(item_chunks, pa.string()), times


def _flush(chunks, users: list, items: list, times: list) -> None:
    if users:
        chunks[0].append(pa.array(users, pa.string()))
        chunks[1].append(pa.array(items, pa.string()))
        chunks[2].append(np.asarray(times, dtype=np.int64))
        for values in (users, items, times):
            values.clear()


def _encode(values: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Distinct values in order of first appearance, and each row's index into them."""
    vocab = pc.unique(values)
    return vocab, pc.index_in(values, value_set=vocab).to_numpy().astype(np.int32)


def _read_meta(path: Path, version: str, item_vocab: pa.Array, digest, counts: dict) -> dict:
    """Cleaned title, categories, brand and image URLs of the reviewed items (the first line of each wins), and
    `state` per item code: 0 no metadata, 1 no usable title, 2 kept."""
    schema, images = SCHEMAS[version], {"2018": _images_2018, "2023": _images_2023}[version]
    seen = np.zeros(len(item_vocab), dtype=bool)
    pending, parts = [], {key: [] for key in ("codes", *META_TYPES)}
    counts.update(meta_lines=0, meta_duplicate_lines=0, fields_too_long=0)
    for number, record in json_lines(path, digest):
        item = required(record, schema.item, str, path, number)
        title = optional(record, "title", str, path, number)
        categories = optional(record, schema.categories, list, path, number) or []
        brand = optional(record, schema.brand, str, path, number)
        if not all(isinstance(c, str) for c in categories):
            raise bad_field(path, number, schema.categories, record[schema.categories], "a list of strings")
        pending.append((item, title, categories, brand, images(record, path, number)))
        counts["meta_lines"] += 1
        if len(pending) == CHUNK_ROWS:
            _flush_meta(pending, item_vocab, seen, parts, counts)
    _flush_meta(pending, item_vocab, seen, parts, counts)
    codes = np.concatenate(parts.pop("codes") or [np.zeros(0, np.int32)])
    meta = {key: pa.concat_arrays(chunks or [pa.array([], META_TYPES[key])]) for key, chunks in parts.items()}
    meta["row"] = np.full(len(item_vocab), -1)
    meta["row"][codes] = np.arange(len(codes))
    meta["state"] = np.zeros(len(item_vocab), dtype=np.int8)
    meta["state"][codes] = np.where(meta["title"].is_null().to_numpy(zero_copy_only=False), 1, 2)
    return meta


def _flush_meta(pending: list, item_vocab: pa.Array, seen: np.ndarray, parts: dict, counts: dict) -> None:
    """Keeps the lines of reviewed items not seen before, cleaned, as Arrow arrays."""
    if not pending:
        return
    ids = pa.array([p[0] for p in pending], pa.string())
    codes = pc.fill_null(pc.index_in(ids, value_set=item_vocab), -1).to_numpy().astype(np.int32)
    rows = np.flatnonzero(codes >= 0)
    first = rows[np.sort(np.unique(codes[rows], return_index=True)[1])]
    new = first[~seen[codes[first]]]
    counts["meta_duplicate_lines"] += len(rows) - len(new)
    seen[codes[new]] = True
    columns = {key: [] for key in META_TYPES}
    for row in new:
        _, title, categories, brand, image_urls = pending[row]
        categories = [c for c in map(clean, categories) if c]
        title = _field(title, counts)
        columns["title"].append(title if title and title.rstrip(". ") else None)  # "..." makes no text (`item_text`)
        columns["categories"].append(categories if _field(", ".join(categories), counts) else [])
        columns["brand"].append(_field(brand, counts))
        columns["image_urls"].append(image_urls)
    parts["codes"].append(codes[new])
    for key, values in columns.items():
        parts[key].append(pa.array(values, META_TYPES[key]))
    pending.clear()


def _field(value: str | None, counts: dict) -> str | None:
    """A cleaned field, or None when empty or longer than `MAX_FIELD_CHARS` (counted)."""
    value = clean(value) if value is not None else ""
    if len(value) > MAX_FIELD_CHARS:
        counts["fields_too_long"] += 1
        return None
    return value or None


def _images_2018(record: dict, path: Path, number: int) -> list[str]:
    urls = []
    for key in ("imageURLHighRes", "imageURL"):
        values = optional(record, key, list, path, number) or []
        if not all(isinstance(v, str) for v in values):
            raise bad_field(path, number, key, values, "a list of strings")
        urls += values[:1]
    return [url for url in urls if url]


def _images_2023(record: dict, path: Path, number: int) -> list[str]:
    images = optional(record, "images", list, path, number) or []
    if not all(isinstance(i, dict) and all(isinstance(v, str | None) for v in i.values()) for i in images):
        raise bad_field(path, number, "images", images, "a list of {hi_res, large, thumb, variant} strings or nulls")
    main = next((i for i in images if i.get("variant") == "MAIN"), images[0] if images else {})
    return [main[key] for key in ("hi_res", "large", "thumb") if main.get(key)]


# ---------------------------------------------------------------- filtering and writing


def _filter(users, items, times, seconds, state, user_k: int, item_k: int, counts: dict) -> tuple[np.ndarray, int]:
    """Row indices kept by de-duplication, the metadata/title rule and the k-core, ordered by (user, time, row).

    Duplicates are judged on `seconds`, the timestamps as written (two reviews of an item in one second would be the
    same interaction to the loader); the order follows the finer `times`."""
    order = np.lexsort((np.arange(len(users)), times, items, users))  # last key sorts first
    same = (np.diff(users[order]) == 0) & (np.diff(items[order]) == 0) & (np.diff(seconds[order]) == 0)
    rows = np.sort(np.delete(order, np.flatnonzero(same) + 1))
    counts["duplicate_reviews"] = len(users) - len(rows)
    reviewed = _distinct(items[rows], len(state))
    row_state = state[items[rows]]
    counts["interactions_dropped"] = {
        "no_metadata": int((row_state == 0).sum()),
        "no_title": int((row_state == 1).sum()),
    }
    counts["items_dropped"] = {
        "no_metadata": int((state[reviewed] == 0).sum()),
        "no_title": int((state[reviewed] == 1).sum()),
    }
    rows = rows[row_state == 2]
    before_items = len(_distinct(items[rows], len(state)))
    rows, rounds = k_core(users, items, rows, user_k, item_k)
    counts["interactions_dropped"]["k_core"] = int((row_state == 2).sum()) - len(rows)
    counts["items_dropped"]["k_core"] = before_items - len(_distinct(items[rows], len(state)))
    return rows[np.lexsort((rows, times[rows], users[rows]))], rounds


def _distinct(codes: np.ndarray, size: int) -> np.ndarray:
    """`np.unique` of codes in `[0, size)`, by counting: linear, where numpy 2's hashing `np.unique` took 10 s (and
    up to a minute on a busy machine) for the 10 M item codes of a large category."""
    return np.flatnonzero(np.bincount(codes, minlength=size))


def k_core(users: np.ndarray, items: np.ndarray, rows: np.ndarray, user_k: int, item_k: int) -> tuple[np.ndarray, int]:
    """The `rows` left once every user has at least `user_k` and every item at least `item_k` of them, and the
    number of removal rounds it took."""
    rounds = 0
    while len(rows):
        u, i = users[rows], items[rows]
        weak = (np.bincount(u)[u] < user_k) | (np.bincount(i)[i] < item_k)
        if not weak.any():
            break
        rows, rounds = rows[~weak], rounds + 1
    return rows, rounds


def _write(folder: Path, rows, user_vocab, user_codes, item_vocab, item_codes, seconds, meta: dict) -> dict:
    kept = _distinct(item_codes[rows], len(item_vocab))  # catalog order: first appearance in the reviews file
    take = pa.array(meta["row"][kept])
    titles, categories, brands = (meta[key].take(take) for key in ("title", "categories", "brand"))
    columns = (titles.to_pylist(), categories.to_pylist(), brands.to_pylist())
    texts = [item_text(*fields) for fields in zip(*columns, strict=True)]
    image_urls = meta["image_urls"].take(take)
    items = {
        "item_id": item_vocab.take(pa.array(kept)),
        "text": pa.array(texts, pa.string()),
        "image": pa.nulls(len(kept), pa.string()),
        "title": titles,
        "categories": categories,
        "brand": brands,
        "image_urls": image_urls,
    }
    write_table(folder / "items.parquet", items, ITEM_SCHEMA)
    interactions = {
        "user_id": user_vocab.take(pa.array(user_codes[rows])),
        "item_id": item_vocab.take(pa.array(item_codes[rows])),
        "timestamp": pa.array(seconds[rows], pa.int64()),
    }
    write_table(folder / "interactions.parquet", interactions, INTERACTION_SCHEMA)
    return {
        "users": len(_distinct(user_codes[rows], len(user_vocab))),
        "items": len(kept),
        "interactions": len(rows),
        "items_with_image_url": int((pc.list_value_length(image_urls).to_numpy() > 0).sum()),
    }


def add_command(commands) -> None:
    """`mmsr-data amazon`."""
    parser = commands.add_parser("amazon", help="A category of Amazon Reviews 2018 or 2023 (real data).")
    names = sorted(name for name, spec in DOMAINS.items() if spec.amazon2018 or spec.amazon2023)
    parser.add_argument(
        "--domain", required=True, help=f"A domain with a category in that version: {', '.join(names)}."
    )
    parser.add_argument("--version", required=True, choices=sorted(SCHEMAS), help="Amazon Reviews version.")
    parser.add_argument("--data_dir", default="data", help="Root of processed domains (writes <data_dir>/amazon<v>).")
    parser.add_argument(
        "--raw_dir",
        default=None,
        help="Folder of the raw files (<Category>.json.gz + meta_<Category>.json.gz for 2018, .jsonl.gz for 2023); "
        "missing ones are downloaded into it. Default: <data_dir>/raw/amazon<version>.",
    )
    parser.add_argument("--base_url", default=HOST, help="Host of the raw files (or a mirror with the same layout).")
    parser.add_argument("--user_k", type=int, default=5, help="k-core: minimum interactions per user.")
    parser.add_argument("--item_k", type=int, default=5, help="k-core: minimum interactions per item.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing folder.")
    parser.set_defaults(handler=_run_command)


def _run_command(args) -> None:
    folder = prepare_amazon(
        args.domain,
        args.version,
        args.data_dir,
        raw_dir=args.raw_dir,
        overwrite=args.overwrite,
        user_k=args.user_k,
        item_k=args.item_k,
        base_url=args.base_url,
    )
    print(f"wrote {folder}")
