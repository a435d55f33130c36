"""Scale check: a generated Amazon-2023-sized category processed and loaded with bounded memory.

Generates raw Amazon Reviews 2023 files of one category (`Office_Products.jsonl.gz` with `--interactions` review
lines, `meta_Office_Products.jsonl.gz` with `--items` items), with the skew of the real dumps: item popularity is
Zipf-like (exponent 0.9), reviews per user follow a zeta law (exponent 2.4: 72 % of users review once, 6 % five
times or more), 1 % of the items have no metadata line, 1.5 % an empty title, 0.3 % of the reviews repeat an earlier
one. Then each stage runs in its own fresh (spawned) process, so its peak RSS is its own:

1. `generate`: the raw files (vectorised, written in chunks of 2^18 lines, gzip level 1);
2. `prepare`: `prepare_amazon(..., version="2023")` with the k-core of `--k` (UniSRec's 5 by default);
3. `load`: `load_folder` (catalog + per-user sequences);
4. `split`: `load_folder` then `build_corpus` (leave-one-out, `--max_len`); its time is `build_corpus` alone;
5. `catalog inputs`: `Catalog.from_folder` then the default model's `ItemProcessor` (MiniLM tokenizer, 32 tokens,
   64 px image slots), which training and evaluation apply to the whole catalog. No encoder runs.

    python scripts/benchmark_scale.py                                            # 10 M reviews, 1 M items
    python scripts/benchmark_scale.py --interactions 100000 --items 10000        # smoke run, about a minute
    python scripts/benchmark_scale.py --work_dir /data/scale                     # keep the files there

Prints a Markdown table and writes it, with the raw figures, the command and the machine, to
`<output_dir>/scale.{md,json}`. Without `--work_dir` the files go to a temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import shlex
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from runner import machine, peak_rss_mib
from transformers import AutoTokenizer

from mmsr_peft.builder import ModelArguments, minilm_path
from mmsr_peft.data.amazon import prepare_amazon
from mmsr_peft.data.catalog import Catalog
from mmsr_peft.data.processing import ItemProcessor
from mmsr_peft.domains import build_corpus, load_folder
from mmsr_peft.files import atomic_write_text

DOMAIN, CATEGORY = "office", "Office_Products"
CHUNK_LINES = 1 << 18
ITEM_ALPHA = 0.9  # item popularity: P(rank r) proportional to r^-0.9
USER_ZETA = 2.4  # reviews per user: P(n) proportional to n^-2.4, capped at MAX_USER_REVIEWS
MAX_USER_REVIEWS = 1000
NO_META, NO_TITLE, DUPLICATES = 0.01, 0.015, 0.003
FIRST_MS, LAST_MS = 1_262_304_000_000, 1_693_526_400_000  # 2010-01-01 .. 2023-09-01
ALPHABET = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
STAGES = ("generate", "prepare", "load", "split", "catalog inputs")


# ---------------------------------------------------------------- generating the raw files


def generate_raw(raw_dir: Path, interactions: int, items: int, seed: int = 0) -> dict:
    """Writes `<raw_dir>/<CATEGORY>.jsonl.gz` and `meta_<CATEGORY>.jsonl.gz` in the Amazon 2023 schema."""
    rng = np.random.default_rng(seed)
    raw_dir.mkdir(parents=True, exist_ok=True)
    pool = _text_pool(rng, min(20_000, max(1_000, interactions // 10)))
    item_ids = _ids(items, "B0", 8, rng)
    lengths = _user_lengths(interactions, rng)
    user_ids = _ids(len(lengths), "A", 27, rng)
    users = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    rng.shuffle(users)  # the dump's line order mixes users
    weights = np.arange(1, items + 1, dtype=np.float64) ** -ITEM_ALPHA
    cdf = np.cumsum(weights) / weights.sum()
    rank_to_item = rng.permutation(items).astype(np.int32)  # popular items are scattered over the catalog
    reviewed = rank_to_item[np.minimum(np.searchsorted(cdf, rng.random(interactions)), items - 1)]
    times = rng.integers(FIRST_MS, LAST_MS, interactions)
    copies = np.flatnonzero(rng.random(interactions) < DUPLICATES)
    originals = rng.integers(0, np.maximum(copies, 1))  # an earlier line (line 0 repeats itself)
    users[copies], reviewed[copies], times[copies] = users[originals], reviewed[originals], times[originals]
    reviews_path = raw_dir / f"{CATEGORY}.jsonl.gz"
    with gzip.open(reviews_path, "wb", compresslevel=1) as out:
        for start in range(0, interactions, CHUNK_LINES):
            rows = slice(start, min(start + CHUNK_LINES, interactions))
            _write_lines(out, _review_lines(users[rows], reviewed[rows], times[rows], user_ids, item_ids, pool, rng))
    described = rng.permutation(items)[: items - int(NO_META * items)]
    meta_path = raw_dir / f"meta_{CATEGORY}.jsonl.gz"
    with gzip.open(meta_path, "wb", compresslevel=1) as out:
        for start in range(0, len(described), CHUNK_LINES):
            _write_lines(out, _meta_lines(item_ids.take(described[start : start + CHUNK_LINES]), pool, rng))
    return {
        "review_lines": interactions,
        "meta_lines": len(described),
        "users": len(lengths),
        "items_reviewed": len(np.unique(reviewed)),
        "bytes": {path.name: path.stat().st_size for path in (reviews_path, meta_path)},
    }


def _user_lengths(interactions: int, rng) -> np.ndarray:
    """Reviews per user, zeta-distributed, summing to `interactions`."""
    lengths = np.minimum(rng.zipf(USER_ZETA, interactions), MAX_USER_REVIEWS)
    total = np.cumsum(lengths)
    count = int(np.searchsorted(total, interactions)) + 1
    lengths = lengths[:count]
    lengths[-1] -= total[count - 1] - interactions
    return lengths


def _ids(count: int, prefix: str, width: int, rng) -> pa.Array:
    """`count` distinct ids, `prefix` + `width` upper-case letters and digits: the first 8 are a bijection of the
    row (multiplication by a prime modulo 36^8), the rest random."""
    codes = (np.arange(count, dtype=np.uint64) * np.uint64(1_000_000_007)) % np.uint64(36**8)
    chars = np.empty((count, len(prefix) + width), dtype=np.uint8)
    chars[:, : len(prefix)] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    for column in range(len(prefix), len(prefix) + 8):
        chars[:, column] = ALPHABET[codes % np.uint64(36)]
        codes //= np.uint64(36)
    chars[:, len(prefix) + 8 :] = ALPHABET[rng.integers(0, 36, (count, width - 8))]
    offsets = np.arange(count + 1, dtype=np.int32) * chars.shape[1]
    return pa.StringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(chars))


def _text_pool(rng, size: int) -> dict[str, pa.Array]:
    """Review texts, titles, stores, category lists and JSON lists of sentences, all JSON-safe (no quotes)."""
    syllables = np.array(["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "pe", "da", "gen", "tor", "lin", "ex"])
    vocabulary = np.array(["".join(rng.choice(syllables, n)) for n in rng.integers(1, 5, 5_000)] + ["&amp;"])
    frequency = np.arange(1, len(vocabulary) + 1) ** -1.0
    frequency /= frequency.sum()

    def sentences(count, mean_words):
        lengths = np.clip(rng.lognormal(np.log(mean_words), 0.8, count).astype(int), 1, 400)
        words, ends = rng.choice(vocabulary, lengths.sum(), p=frequency).tolist(), np.cumsum(lengths).tolist()
        return [
            " ".join(words[end - n : end]).capitalize() + "." for n, end in zip(lengths.tolist(), ends, strict=True)
        ]

    titles = [t.rstrip(".").title() for t in sentences(size, 8)]
    categories = [", ".join(f'"{w.title()}"' for w in rng.choice(vocabulary, n)) for n in rng.integers(1, 4, 500)]
    counts = rng.integers(0, 6, size)  # sentences per feature / description list
    flat, ends = sentences(counts.sum(), 12), np.cumsum(counts).tolist()
    lists = [flat[end - n : end] for n, end in zip(counts.tolist(), ends, strict=True)]
    return {
        "text": pa.array(sentences(size, 35)),
        "title": pa.array([""] + titles),  # row 0: the empty title
        "store": pa.array([t.split(" ")[0] for t in titles[: size // 10]]),
        "categories": pa.array([f'["Office Products", {c}]' for c in categories]),
        "list": pa.array([json.dumps(group) for group in lists]),
        "word": pa.array(vocabulary[:100]),
    }


def _review_lines(users, items, times, user_ids, item_ids, pool, rng) -> pa.Array:
    count = len(users)
    asin = item_ids.take(items)
    fields = [
        '{"rating": ', pc.cast(pa.array(rng.integers(1, 6, count)), pa.string()),
        '.0, "title": "', _sample(pool["title"], count, rng, start=1),
        '", "text": "', _sample(pool["text"], count, rng),
        '", "images": [], "asin": "', asin, '", "parent_asin": "', asin,
        '", "user_id": "', user_ids.take(users),
        '", "timestamp": ', pc.cast(pa.array(times), pa.string()),
        ', "helpful_vote": ', pc.cast(pa.array(rng.geometric(0.6, count) - 1), pa.string()),
        ', "verified_purchase": true}\n',
    ]  # fmt: skip
    return pc.binary_join_element_wise(*fields, "")


def _meta_lines(asin, pool, rng) -> pa.Array:
    count = len(asin)
    title = _sample(pool["title"], count, rng, start=1)
    title = pc.if_else(pa.array(rng.random(count) < NO_TITLE), "", title)
    store = _sample(pool["store"], count, rng)
    url = pc.binary_join_element_wise("https://m.media-amazon.com/images/I/", asin, "._AC_", "")
    hi_res = pc.binary_join_element_wise('"', url, 'SL1500_.jpg"', "")
    hi_res = pc.if_else(pa.array(rng.random(count) < 0.3), "null", hi_res)
    price = pc.cast(pa.array(np.round(rng.lognormal(3, 1, count), 2)), pa.string())
    fields = [
        '{"main_category": "Office Products", "title": "', title,
        '", "average_rating": ', pc.cast(pa.array(np.round(rng.uniform(1, 5, count), 1)), pa.string()),
        ', "rating_number": ', pc.cast(pa.array(rng.geometric(0.02, count)), pa.string()),
        ', "features": ', _sample(pool["list"], count, rng),
        ', "description": ', _sample(pool["list"], count, rng),
        ', "price": ', pc.if_else(pa.array(rng.random(count) < 0.4), "null", price),
        ', "images": [{"thumb": "', url, 'US40_.jpg", "large": "', url, 'SL500_.jpg", "variant": "MAIN", "hi_res": ',
        hi_res, '}], "videos": [], "store": "', store,
        '", "categories": ', _sample(pool["categories"], count, rng),
        ', "details": {"Brand": "', store, '", "Color": "', _sample(pool["word"], count, rng),
        '"}, "parent_asin": "', asin, '", "bought_together": null}\n',
    ]  # fmt: skip
    return pc.binary_join_element_wise(*fields, "")


def _sample(values: pa.Array, count: int, rng, start: int = 0) -> pa.Array:
    return values.take(rng.integers(start, len(values), count))


def _write_lines(out, lines: pa.Array) -> None:
    """Writes the concatenated values of a string array: its data buffer between the first and last offsets."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + len(lines) + 1]
    out.write(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]])


# ---------------------------------------------------------------- stages


def stage_imports(work_dir: Path, args: dict) -> dict:
    return {}  # a fresh process that imported this script: the floor of every other stage's peak


def stage_generate(work_dir: Path, args: dict) -> dict:
    return generate_raw(work_dir / "raw", args["interactions"], args["items"], args["seed"])


def stage_prepare(work_dir: Path, args: dict) -> dict:
    folder = prepare_amazon(
        DOMAIN, "2023", work_dir / "data", work_dir / "raw", overwrite=True, user_k=args["k"], item_k=args["k"]
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    sizes = {path.name: path.stat().st_size for path in sorted(folder.glob("*.parquet"))}
    return {**manifest["counts"], "k_core_rounds": manifest["preprocessing"]["k_core_rounds"], "bytes": sizes}


def stage_load(work_dir: Path, args: dict) -> dict:
    domain = load_folder(_folder(work_dir))
    return {"items": len(domain.catalog), **domain.sequences.stats}


def stage_split(work_dir: Path, args: dict) -> dict:
    start = time.perf_counter()
    domain = load_folder(_folder(work_dir))
    loaded = time.perf_counter()
    corpus = build_corpus([domain], args["max_len"])
    return {
        "load_seconds": loaded - start,
        "seconds": time.perf_counter() - loaded,  # the stage's time: build_corpus alone
        "train_sequences": len(corpus.train),
        "train_items": int(sum(len(seq) for seq in corpus.train)),
        "valid_cases": len(corpus.valid[0].targets),
        "test_cases": len(corpus.test[0].targets),
    }


def stage_catalog_inputs(work_dir: Path, args: dict) -> dict:
    defaults = ModelArguments()
    catalog = Catalog.from_folder(_folder(work_dir))
    processor = ItemProcessor(AutoTokenizer.from_pretrained(minilm_path()), defaults.text_max_length, 64)
    inputs = processor(catalog.records(range(len(catalog))))
    tensors = {name: value for name, value in vars(inputs).items() if value is not None}
    return {
        "items": len(inputs),
        "tensor_bytes": {name: value.element_size() * value.nelement() for name, value in tensors.items()},
    }


def _folder(work_dir: Path) -> Path:
    return work_dir / "data" / "amazon2023" / DOMAIN


STAGE_FUNCTIONS = {
    "imports": stage_imports,
    "generate": stage_generate,
    "prepare": stage_prepare,
    "load": stage_load,
    "split": stage_split,
    "catalog inputs": stage_catalog_inputs,
}


def run_stage(name: str, work_dir: Path, args: dict, same_process: bool) -> dict:
    """Runs a stage in a fresh spawned process (or this one); adds its wall time and the process's peak RSS."""
    if same_process:
        return _measured(name, work_dir, args)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measured, name, work_dir, args).result()


def _measured(name: str, work_dir: Path, args: dict) -> dict:
    start = time.perf_counter()
    result = STAGE_FUNCTIONS[name](work_dir, args)
    result.setdefault("seconds", time.perf_counter() - start)
    result["peak_rss_bytes"] = peak_rss_mib() * 2**20
    return result


# ---------------------------------------------------------------- report


def describe(name: str, result: dict) -> tuple[str, str]:
    """The counts and disk cells of a stage's row."""
    disk = ", ".join(f"{file} {_size(size)}" for file, size in result.get("bytes", {}).items())
    if name == "imports":
        return "a fresh process importing this script (`mmsr_peft`, torch): part of every peak below", ""
    if name == "generate":
        return (
            f"{result['review_lines']:,} review lines ({result['users']:,} users, {result['items_reviewed']:,} items "
            f"reviewed), {result['meta_lines']:,} metadata lines"
        ), disk
    if name == "prepare":
        dropped = result["interactions_dropped"]
        return (
            f"{result['raw_reviews']:,} reviews -> {result['users']:,} users, {result['items']:,} items, "
            f"{result['interactions']:,} interactions ({result['duplicate_reviews']:,} duplicates, "
            f"{dropped['no_metadata'] + dropped['no_title']:,} without metadata/title, {dropped['k_core']:,} by the "
            f"k-core in {result['k_core_rounds']} rounds)"
        ), disk
    if name == "load":
        return (
            f"{result['items']:,} items, {result['users_kept']:,} users, {result['interactions']:,} interactions"
        ), disk
    if name == "split":
        return (
            f"{result['train_sequences']:,} training windows ({result['train_items']:,} items), "
            f"{result['valid_cases']:,} valid + {result['test_cases']:,} test cases; load_folder before it took "
            f"{result['load_seconds']:.1f} s"
        ), disk
    tensors = ", ".join(f"{name} {_size(size)}" for name, size in result["tensor_bytes"].items())
    return f"{result['items']:,} items: {tensors}", disk


def report(results: dict, command: str, info: dict, same_process: bool) -> str:
    memory = f", {_size(info['memory_bytes'])} RAM" if info["memory_bytes"] else ""
    lines = [
        "# Scale: one Amazon 2023 category",
        "",
        f"`{command}`",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores{memory}, load average {info['load_average']:.1f} at "
        f"the end (shared machine: times are upper bounds). Peak RSS is "
        + ("the whole process's so far (all stages ran in one process)." if same_process else "each stage's own "
           "fresh process's (`VmHWM`: not the peak it inherits from this one), imports included."),
        "",
        "| Stage | Wall time (s) | Peak RSS | Counts | Disk |",
        "|---|---:|---:|---|---|",
    ]  # fmt: skip
    for name, result in results.items():
        counts, disk = describe(name, result)
        lines.append(f"| {name} | {result['seconds']:.1f} | {_size(result['peak_rss_bytes'])} | {counts} | {disk} |")
    return "\n".join(lines) + "\n"


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interactions", type=int, default=10_000_000, help="Review lines generated.")
    parser.add_argument("--items", type=int, default=1_000_000, help="Items of the generated catalog.")
    parser.add_argument("--k", type=int, default=5, help="k-core threshold on users and items.")
    parser.add_argument("--max_len", type=int, default=50, help="Sequence length of the leave-one-out split.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the generated files.")
    parser.add_argument("--work_dir", default=None, help="Where the files go (kept). Default: a temporary folder.")
    parser.add_argument("--output_dir", default="results", help="Where scale.md/json go.")
    parser.add_argument(
        "--same_process",
        action="store_true",
        help="Run every stage in this process (quick checks, profiling); peak RSS is then cumulative.",
    )
    args = parser.parse_args(argv)
    if args.interactions < 1 or args.items < 1:
        parser.error(f"--interactions and --items must be >= 1, got {args.interactions} and {args.items}")
    command = shlex.join(["python", "scripts/benchmark_scale.py", *(sys.argv[1:] if argv is None else argv)])
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="mmsr-scale-"))
    results = {}
    try:
        for name in ("imports", *STAGES):
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
            results[name] = run_stage(name, work_dir, vars(args), args.same_process)
            print(
                f"    {results[name]['seconds']:.1f} s, peak RSS {_size(results[name]['peak_rss_bytes'])}", flush=True
            )
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    info = machine()
    text = report(results, command, info, args.same_process)
    print("\n" + text)
    atomic_write_text(Path(args.output_dir) / "scale.md", text)
    payload = {"command": command, "machine": info, "args": vars(args), "results": results}
    atomic_write_text(Path(args.output_dir) / "scale.json", json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
