"""`mmsr-recommend`: top-k recommendations for a file of histories, from a base (and an adapter), in batches.

Input, one of:
- JSONL (`.jsonl`): one object per line, `{"user_id": "u1", "history": ["item-3", "item-9"]}` (`user_id`: a string
  or an integer, optional: the line number stands in; a user_id on two lines, `7` and `"7"` included, is an error);
- CSV (`.csv`): one interaction per row with columns `user_id,item_id`, rows of a user in time order (a row without
  a user_id or an item_id is an error).
Both UTF-8, with or without a byte order mark.

Output: JSONL, one line per user in input order, `{"user_id": ..., "items": [...], "scores": [...]}` (`user_id` as
given, or the line number as a string; scores are the model's similarities: cosines, or dot products for a
`similarity="dot"` model), written whole or not at all.
An item id that is not in the catalog is an error naming the file and line (a CSV: its row), unless `--skip_unknown`:
then it is left out of that history and listed in the line's `"unknown"`.
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


def read_histories(path: str | Path) -> list[tuple[str | int, list[str], list[int]]]:
    """`(user_id, history, lines)` per user of a JSONL or CSV file (see the module docstring); `lines`: the line
    of each item of the history."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: no such file")
    try:
        return _read_histories(path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason}); save it as UTF-8") from None


def _read_histories(path: Path) -> list[tuple[str | int, list[str], list[int]]]:
    if path.suffix.lower() == ".jsonl":
        found: dict[str, tuple[str | int, list[str], int]] = {}  # by str(user_id): 7 and "7" are the same user
        # lines end at "\n" only: U+2028, U+0085 and the like may stand in a JSON string (str.splitlines splits there)
        with open(path, encoding="utf-8-sig", newline="\n") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: line {number}: not valid JSON ({err.msg})") from None
                history = row.get("history") if isinstance(row, dict) else None
                if not isinstance(history, list) or not all(isinstance(item, str) for item in history):
                    raise DataError(
                        f"{path}: line {number}: expected {{'user_id': ..., 'history': [item ids]}}, "
                        f"got {line.rstrip()[:80]!r}"
                    )
                user = row.get("user_id", str(number))
                if isinstance(user, bool) or not isinstance(user, str | int):
                    raise DataError(
                        f"{path}: line {number}: user_id {json.dumps(user)}: expected a string or an integer (or no "
                        "user_id: the line number stands in)"
                    )
                key = str(user)
                if key in found:  # one output line per input line: a repeat would replace the earlier history
                    raise DataError(
                        f"{path}: lines {found[key][2]} and {number}: the same user_id {key!r} (a line without "
                        "user_id is keyed by its line number); give each history its own user_id"
                    )
                found[key] = (user, history, number)
        return [(user, history, [number] * len(history)) for user, history, number in found.values()]
    users: dict[str, tuple[str, list[str], list[int]]] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"user_id", "item_id"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected the columns user_id,item_id, got {reader.fieldnames}")
        for row in reader:
            user, item = row["user_id"], row["item_id"]  # None: the row is short of the column
            if not user or not item:
                raise DataError(
                    f"{path}: line {reader.line_num}: expected a user_id and an item_id, got user_id={user!r}, "
                    f"item_id={item!r}"
                )
            _, history, lines = users.setdefault(user, (user, [], []))
            history.append(item)
            lines.append(reader.line_num)
    return list(users.values())


def recommend_file(args: RecommendArguments) -> Path:
    """Ranks the catalog of `args.domain` for every history of `args.input`; writes `args.output`."""
    from .arguments import resolve_device
    from .model import MMSRModel

    device = resolve_device(args.device)
    users = read_histories(args.input)
    if not users:
        raise DataError(f"{args.input}: no history in the file")
    catalog = load_domain(args.domain, args.data_source, args.data_dir).catalog
    lines, unknown = [], []
    for _, history, numbers in users:
        missing = [(item, number) for item, number in zip(history, numbers, strict=True) if item not in catalog.index]
        if missing and not args.skip_unknown:
            where = list(dict.fromkeys(number for _, number in missing[:5]))
            raise DataError(
                f"{args.input}: line{'s' if len(where) > 1 else ''} {', '.join(map(str, where))}: item ids not in the "
                f"catalog of {args.domain}: {[item for item, _ in missing[:5]]} (pass --skip_unknown to leave them out)"
            )
        unknown.append([item for item, _ in missing])
    model = MMSRModel.from_pretrained(args.model)
    if args.adapter:
        model.load_adapter(args.adapter, force=args.force)
    model.to(device).eval()
    with torch.no_grad():
        items = model.embed_catalog(model.processor(catalog.records(range(len(catalog))), progress=True))
    for first in tqdm(range(0, len(users), args.batch_size), desc="recommend", unit="batch"):
        batch = users[first : first + args.batch_size]
        histories = [[item for item in history if item in catalog.index] for _, history, _ in batch]
        top = model.recommend(histories, catalog, args.k, not args.include_history, catalog_embeddings=items)
        for (user, _, _), left_out, ids, scores in zip(
            batch, unknown[first : first + args.batch_size], top.item_ids, top.scores.tolist(), strict=True
        ):
            line = {"user_id": user, "items": ids, "scores": [round(score, 6) for score in scores[: len(ids)]]}
            if left_out:
                line["unknown"] = left_out
            lines.append(json.dumps(line))
    atomic_write_text(Path(args.output), "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} users' top {args.k} to {args.output}")
    return Path(args.output)
