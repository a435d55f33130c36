"""Statistics of a processed domain folder: the numbers papers print in their dataset table, and what was dropped.

mmsr-data stats data/movielens/ml-100k
mmsr-data stats data/movielens/ml-100k --json
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .sequences import MIN_INTERACTIONS


def domain_stats(folder: str | os.PathLike) -> dict:
    """Counts of a processed domain folder, after loading it as training does (so it is also checked).

    Args:
        folder (`str` or `os.PathLike`): a processed domain folder.

    Returns:
        `dict` (JSON-serialisable): `users`, `items` and `interactions` as in the files; `users_kept` (at least 3
        interactions: one each to train, validate and test) and `interactions_kept` (theirs); `users_dropped`
        (how many, why, and how many had 1, 2 interactions); `density` = interactions of kept users /
        (kept users x items); `sequence_length` of kept users (min, p25, median, p75, p90, max, mean; percentiles
        interpolated linearly); `items_with_text` (non-empty text), `items_with_image`, `items_never_interacted`
        (in no interaction) and `items_not_in_kept_sequences`; `time_span` of the timestamps (UTC).
    """
    from ..domains import load_folder  # imports torch (evaluation): only when called, so mmsr-data starts fast

    domain = load_folder(folder)
    catalog, sequences = domain.catalog, domain.sequences
    rows = pq.read_table(Path(folder) / "interactions.parquet", columns=["user_id", "item_id", "timestamp"])
    per_user = pc.value_counts(rows["user_id"]).field("counts").to_numpy()
    short = Counter(int(n) for n in per_user[per_user < MIN_INTERACTIONS])
    assert sum(short.values()) == sequences.stats["users_dropped_short"]
    lengths = np.array([len(items) for items in sequences.items])
    p25, median, p75, p90 = (float(p) for p in np.percentile(lengths, [25, 50, 75, 90]))
    first, last = (int(t) for t in pc.min_max(rows["timestamp"]).values())
    kept_items = np.unique(np.concatenate(sequences.items))
    return {
        "name": domain.name,
        "folder": str(folder),
        "source": domain.manifest.get("source", "unknown"),
        "synthetic": domain.synthetic,
        "users": sequences.stats["users"],
        "users_kept": len(sequences),
        "users_dropped": {
            "total": sequences.stats["users_dropped_short"],
            "reason": f"fewer than {MIN_INTERACTIONS} interactions (one each is needed to train, validate and test)",
            "by_interactions": {str(n): short[n] for n in range(1, MIN_INTERACTIONS)},
        },
        "items": len(catalog),
        "items_with_text": sum(bool(text.strip()) for text in catalog.texts),
        "items_with_image": sum(image is not None for image in catalog.images),
        "items_never_interacted": len(catalog) - pc.count_distinct(rows["item_id"]).as_py(),
        "items_not_in_kept_sequences": len(catalog) - len(kept_items),
        "interactions": sequences.stats["interactions"],
        "interactions_kept": int(lengths.sum()),
        "density": float(lengths.sum() / (len(sequences) * len(catalog))),
        "sequence_length": {
            "min": int(lengths.min()),
            "p25": p25,
            "median": median,
            "p75": p75,
            "p90": p90,
            "max": int(lengths.max()),
            "mean": float(lengths.mean()),
        },
        "time_span": {"first": _utc(first), "last": _utc(last), "days": (last - first) / 86400},
    }


def _utc(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()


def _number(value) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.2f}"


def format_stats(stats: dict) -> str:
    """`domain_stats` as an aligned table."""
    items, dropped, span = stats["items"], stats["users_dropped"], stats["time_span"]
    by_count = ", ".join(f"{n} had {k}" for k, n in dropped["by_interactions"].items())
    rows = [
        ("users", stats["users"], ""),
        ("  kept", stats["users_kept"], f"at least {MIN_INTERACTIONS} interactions"),
        ("  dropped", dropped["total"], f"fewer than {MIN_INTERACTIONS} interactions ({by_count})"),
        ("items", items, ""),
        ("  with text", stats["items_with_text"], f"{100 * stats['items_with_text'] / items:5.1f} %"),
        ("  with an image", stats["items_with_image"], f"{100 * stats['items_with_image'] / items:5.1f} %"),
        ("  never interacted", stats["items_never_interacted"], ""),
        ("  not in kept sequences", stats["items_not_in_kept_sequences"], ""),
        ("interactions", stats["interactions"], ""),
        ("  of kept users", stats["interactions_kept"], ""),
        ("density", f"{100 * stats['density']:.4f} %", "interactions of kept users / (kept users x items)"),
        ("sequence length", "", "of kept users"),
        *((f"  {key}", value, "") for key, value in stats["sequence_length"].items()),
        ("time span (days)", f"{span['days']:,.1f}", f"{span['first']} .. {span['last']}"),
    ]
    rows = [(label, value if isinstance(value, str) else _number(value), note) for label, value, note in rows]
    label_width = max(len(label) for label, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    kind = "synthetic" if stats["synthetic"] else "real data"
    lines = [f"{stats['name']} ({stats['source']}, {kind}): {stats['folder']}"]
    lines += [f"  {label:<{label_width}}  {value:>{value_width}}  {note}".rstrip() for label, value, note in rows]
    return "\n".join(lines)


def add_command(commands) -> None:
    """`mmsr-data stats DOMAIN` (a processed folder, or a registered name with `--data_source`)."""
    parser = commands.add_parser("stats", help="Users, items, interactions, lengths, coverage of a domain.")
    parser.add_argument("domain", help="A processed domain folder, or a domain name (e.g. ml-100k, office).")
    parser.add_argument(
        "--data_source", default=None, help="Source of a domain name (default: movielens for ml-100k, else synthetic)."
    )
    parser.add_argument("--data_dir", default="data", help="Root of processed domains, for a domain name.")
    parser.add_argument("--json", action="store_true", help="Print the statistics as JSON instead of a table.")
    parser.set_defaults(handler=_run_command)


def _run_command(args) -> None:
    from ..domains import DOMAINS, domain_folder, no_data_error

    folder = args.domain
    if not Path(folder).is_dir() and folder in DOMAINS:
        source = args.data_source or ("movielens" if DOMAINS[folder].movielens else "synthetic")
        folder = domain_folder(folder, source, args.data_dir)
        if not (folder / "items.parquet").is_file():
            raise no_data_error(args.domain, source, args.data_dir)
    stats = domain_stats(folder)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
