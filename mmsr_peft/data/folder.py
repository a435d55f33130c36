"""Writing processed domain folders: `items.parquet`, `interactions.parquet`, `images/`, `manifest.json`.

Every preparer (synthetic, MovieLens, Amazon, RecBole import) writes through `new_domain_folder`, so a folder is
either the complete previous version or the complete new one, never half of each.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..files import current_umask, replace_directory

DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a domain folder's name: letters, digits, . _ -
ITEM_SCHEMA = pa.schema([("item_id", pa.string()), ("text", pa.string()), ("image", pa.string())])
INTERACTION_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64())])


@contextlib.contextmanager
def new_domain_folder(target: str | os.PathLike, overwrite: bool = False, reads: str | os.PathLike | None = None):
    """Yields an empty temporary folder (with `images/`) beside `target`; when the block succeeds it replaces
    `target` by a rename, when it fails `target` is untouched and the temporary folder is removed. `reads`: the
    folder the new one is made from, which `target` must neither be nor hold (replacing it would delete it)."""
    target = Path(target)
    if reads is not None and target.resolve() in (Path(reads).resolve(), *Path(reads).resolve().parents):
        raise ValueError(f"{target}: the folder to write is, or holds, {reads}, which it is made from; choose another")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite to prepare it again")
    created = next((folder for folder in reversed(target.parents) if not folder.exists()), None)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; a plain mkdir would honour the umask
    done = False
    try:
        (tmp / "images").mkdir()
        yield tmp
        replace_directory(tmp, target)
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done and created is not None and not any(path.is_file() for path in created.rglob("*")):
            shutil.rmtree(created, ignore_errors=True)  # the empty parent folders made above


def write_table(path: Path, columns: dict | pa.Table, schema: pa.Schema) -> None:
    """Writes `columns` (a dict of lists or an Arrow table) to parquet; the schema's columns come first, in its
    order and types, any other column follows as given."""
    table = columns if isinstance(columns, pa.Table) else pa.table(columns)
    arrays = [table[name].cast(field.type) for field, name in zip(schema, schema.names, strict=True)]
    extra = [name for name in table.column_names if name not in schema.names]
    table = pa.table(arrays + [table[name] for name in extra], names=schema.names + extra)
    pq.write_table(table, path)


def write_manifest(
    folder: Path,
    name: str,
    source: str,
    version: str,
    counts: dict,
    preprocessing: dict,
    description: str | None = None,
) -> dict:
    """Writes (and returns) the `manifest.json` of a domain folder: what the data is and how it was made."""
    manifest = {
        "name": name,
        "source": source,
        "version": version,
        "created": datetime.now(timezone.utc).date().isoformat(),
        "synthetic": source == "synthetic",
        **({"description": description} if description else {}),
        "counts": counts,
        "preprocessing": preprocessing,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
