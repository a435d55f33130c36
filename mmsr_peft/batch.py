"""`mmsr-recommend`: top-k recommendations for a file of histories, from a base (and an adapter), in batches.

Input, one of:
- JSONL (`.jsonl`): one object per line, `{"user_id": "u1", "history": ["item-3", "item-9"]}` (`user_id` optional:
  the line number stands in; a user_id on two lines is an error);
- CSV (`.csv`): one interaction per row with columns `user_id,item_id`, rows of a user in time order.

Output: JSONL, one line per user in input order, `{"user_id": ..., "items": [...], "scores": [...]}` (scores are
the model's similarities: cosines, or dot products for a `similarity="dot"` model), written whole or not at all.
An item id that is not in the catalog is an error naming the file and line, unless `--skip_unknown`: then it is left out of that history and listed in the line's `"unknown"`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .arguments import RecommendArguments
from .domains import load_domain
from .errors import DataError
from .files import atomic_write_text


def read_histories(path: str | Path) -> list[tuple[str, list[str], int]]:
    """`(user_id, history, line)` per user of a JSONL or CSV file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: no such file")
    users: dict[str, tuple[list[str], int]] = {}
    if path.suffix == ".jsonl":
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {number}: not valid JSON ({err.msg})") from None
            history = row.get("history") if isinstance(row, dict) else None
            if not isinstance(history, list) or not all(isinstance(item, str) for item in history):
                raise DataError(
                    f"{path}: line {number}: expected {{'user_id': ..., 'history': [item ids]}}, got {line[:80]!r}"
                )
            user = str(row.get("user_id", number))
            if user in users:  # one output line per input line: a repeat would replace the earlier history
                raise DataError(
                    f"{path}: lines {users[user][1]} and {number}: the same user_id {user!r} (a line without user_id "
                    "is keyed by its line number); give each history its own user_id"
                )
            users[user] = (history, number)
        return [(user, history, number) for user, (history, number) in users.items()]
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"user_id", "item_id"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected the columns user_id,item_id, got {reader.fieldnames}")
        for row in reader:
            history, _ = users.setdefault(row["user_id"], ([], reader.line_num))
            history.append(row["item_id"])
    return [(user, history, number) for user, (history, number) in users.items()]


def recommend_file(args: RecommendArguments) -> Path:
    """Ranks the catalog of `args.domain` for every history of `args.input`; writes `args.output`."""
    from .model import MMSRModel

    users = read_histories(args.input)
    if not users:
        raise DataError(f"{args.input}: no history in the file")
    catalog = load_domain(args.domain, args.data_source, args.data_dir).catalog
    lines, unknown = [], {}
    for user, history, number in users:
        missing = [item for item in history if item not in catalog.index]
        if missing and not args.skip_unknown:
            raise DataError(
                f"{args.input}: line {number}: item ids not in the catalog of {args.domain}: {missing[:5]} "
                "(pass --skip_unknown to leave them out)"
            )
        unknown[user] = missing
    model = MMSRModel.from_pretrained(args.model)
    if args.adapter:
        model.load_adapter(args.adapter, force=args.force)
    model.eval()
    with torch.no_grad():
        items = model.embed_catalog(model.processor(catalog.records(range(len(catalog))), progress=True))
    for first in tqdm(range(0, len(users), args.batch_size), desc="recommend", unit="batch"):
        batch = users[first : first + args.batch_size]
        histories = [[item for item in history if item in catalog.index] for _, history, _ in batch]
        top = model.recommend(histories, catalog, args.k, not args.include_history, catalog_embeddings=items)
        for (user, _, _), ids, scores in zip(batch, top.item_ids, top.scores.tolist(), strict=True):
            line = {"user_id": user, "items": ids, "scores": [round(score, 6) for score in scores[: len(ids)]]}
            if unknown[user]:
                line["unknown"] = unknown[user]
            lines.append(json.dumps(line))
    atomic_write_text(Path(args.output), "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} users' top {args.k} to {args.output}")
    return Path(args.output)
