"""Splitting one processed domain into several by an item attribute (MovieLens genres, say): a source and a target
domain for transfer experiments that share nothing but their users' tastes.

    mmsr-data split --domain ml-100k --data_source movielens --column genres \\
        --group ml-100k-action=Action,Adventure,Sci-Fi,Thriller,Crime,War,Western,Horror,Mystery,Fantasy \\
        --group ml-100k-drama=*

An item goes to the first group that lists one of its values (the column's whitespace- or comma-separated words);
`*` takes every item no earlier group took. Each group becomes a domain folder beside the source, with its items
(images included) and the interactions with them; users left with fewer than 3 interactions drop out when it is
loaded, as in any domain.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DataError
from .catalog import Catalog
from .folder import DOMAIN_NAME, INTERACTION_SCHEMA, ITEM_SCHEMA, new_domain_folder, write_manifest, write_table
from .sequences import Sequences

EVERY_OTHER = "*"


def parse_group(text: str) -> tuple[str, tuple[str, ...]]:
    """`"name=a,b,c"` -> `("name", ("a", "b", "c"))`; `"name=*"` -> `("name", ("*",))`."""
    name, sep, values = text.partition("=")
    words = tuple(v.strip() for v in values.split(",") if v.strip())
    if not sep or not DOMAIN_NAME.fullmatch(name) or not words:
        raise DataError(f"--group {text!r}: expected NAME=VALUE[,VALUE...] or NAME=* (NAME: letters, digits, . _ -)")
    return name, words


def assign_groups(values: list[str | None], groups: dict[str, tuple[str, ...]]) -> list[str | None]:
    """The group of each item (None: no group takes it): the first group listing one of its words."""
    assigned = []
    for value in values:
        words = set(re.split(r"[\s,|]+", value.strip())) if value else set()
        assigned.append(next((n for n, v in groups.items() if v == (EVERY_OTHER,) or words & set(v)), None))
    return assigned


def split_domain(
    source: str | Path, column: str, groups: dict[str, tuple[str, ...]], overwrite: bool = False
) -> dict[str, dict]:
    """Writes one domain folder per group beside `source` (a processed domain folder); returns each new domain's
    counts."""
    source = Path(source)
    if len(groups) < 2:
        raise DataError(f"a split needs at least two --group, got {len(groups)}")
    if any(v == (EVERY_OTHER,) for v in list(groups.values())[:-1]):
        raise DataError(f"--group NAME={EVERY_OTHER} takes every item left: it must come last")
    catalog = Catalog.from_folder(source)  # checks the items, and that every image lies inside the folder
    Sequences.from_folder(source, catalog)  # checks the interactions
    items, interactions = (pq.read_table(source / f"{name}.parquet") for name in ("items", "interactions"))
    if column not in items.column_names:
        raise DataError(f"{source / 'items.parquet'}: no column {column!r}; columns: {items.column_names}")
    # image paths as the catalog checked them, relative to the folder (so the same inside each new folder)
    images = [None if path is None else Path(path).relative_to(source.resolve()).as_posix() for path in catalog.images]
    items = items.set_column(items.schema.get_field_index("image"), "image", pa.array(images, pa.string()))
    assigned = pa.array(assign_groups(items.column(column).cast(pa.string()).to_pylist(), groups), pa.string())
    manifest = json.loads((source / "manifest.json").read_text())
    parent = {
        "domain": manifest.get("name", source.name),
        "manifest_sha256": hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest(),
    }
    chosen = {name: items.filter(pc.equal(assigned, name)) for name in groups}
    for name, mine in chosen.items():  # every check before the first folder is written
        if name == source.name:
            raise DataError(f"--group {name}: the name of the domain being split; choose another")
        if not len(mine):
            raise DataError(f"--group {name}={','.join(groups[name])}: no item of {source} has one of these {column}")
        if (source.parent / name).exists() and not overwrite:
            raise FileExistsError(f"{source.parent / name} already exists; pass --overwrite to split again")
    written = {}
    for name, mine in chosen.items():
        rows = interactions.filter(pc.is_in(interactions.column("item_id"), value_set=mine.column("item_id")))
        with new_domain_folder(source.parent / name, overwrite) as tmp:
            for image in mine.column("image").to_pylist():
                if image is not None:
                    (tmp / image).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source / image, tmp / image)
            write_table(tmp / "items.parquet", mine, ITEM_SCHEMA)
            write_table(tmp / "interactions.parquet", rows, INTERACTION_SCHEMA)
            counts = {
                "items": len(mine),
                "users": len(pc.unique(rows.column("user_id"))),
                "interactions": len(rows),
                "items_with_image": int(pc.sum(pc.is_valid(mine.column("image"))).as_py() or 0),
            }
            rule = {"split_of": parent, "column": column, "values": list(groups[name]), "groups": list(groups)}
            write_manifest(
                tmp, name, manifest.get("source", "unknown"), manifest.get("version", "unknown"), counts, rule
            )
        written[name] = counts
    return written


def add_command(commands) -> None:
    """`mmsr-data split`."""
    parser = commands.add_parser(
        "split", help="Split a domain into several by an item column (source and target domains for transfer)."
    )
    parser.add_argument(
        "--domain", required=True, help="The domain to split (a folder <data_dir>/<data_source>/NAME)."
    )
    parser.add_argument("--data_source", default="movielens", help="Folder of the domain under --data_dir.")
    parser.add_argument("--data_dir", default="data", help="Root of processed domains.")
    parser.add_argument("--column", default="genres", help="Item column whose words pick the group.")
    parser.add_argument(
        "--group",
        dest="groups",
        action="append",
        required=True,
        metavar="NAME=VALUE[,VALUE...]",
        help=f"A new domain and the column values that send an item to it (first match wins; NAME={EVERY_OTHER}: "
        "every item left, last only). Give it twice or more.",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace existing domain folders.")
    parser.set_defaults(handler=_run)


def _run(args) -> None:
    groups = dict(parse_group(text) for text in args.groups)
    if len(groups) < len(args.groups):
        raise DataError(f"--group names must differ, got {[text.partition('=')[0] for text in args.groups]}")
    source = Path(args.data_dir) / args.data_source / args.domain
    if not (source / "items.parquet").is_file():
        raise DataError(f"--domain {args.domain}: no processed domain at {source} (no items.parquet)")
    for name, counts in split_domain(source, args.column, groups, args.overwrite).items():
        print(f"wrote {source.parent / name}: " + ", ".join(f"{value:,} {key}" for key, value in counts.items()))
