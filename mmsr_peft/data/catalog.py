"""The items of a domain: ids, text and image paths, read from a processed domain folder."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from ..errors import DataError

ITEM_COLUMNS = {"item_id": "string", "text": "string", "image": "string"}


def read_parquet(path: Path, required: dict[str, str], nullable: tuple[str, ...] = ()) -> datasets.Dataset:
    """Reads a parquet file into a `datasets.Dataset` (an in-memory Arrow table) after checking that it has rows,
    the required columns with the expected types, and no nulls outside the `nullable` columns. Not through
    `Dataset.from_parquet`: its Arrow cache is keyed by the file's path and modification time, so a file replaced
    by one with the same time (`cp -a`, `rsync -a`, coarse file-system clocks) would be read as the old one."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        schema, num_rows = pq.read_schema(path), pq.ParquetFile(path).metadata.num_rows
    except Exception as err:  # pyarrow raises several unrelated types for unreadable files
        raise DataError(f"{path}: not a readable parquet file ({err})") from err
    if num_rows == 0:
        raise DataError(f"{path}: no rows (expected at least one)")
    for name, dtype in required.items():
        if name not in schema.names:
            raise DataError(
                f"{path}: missing required column {name!r} (columns: {schema.names}; expected {sorted(required)})"
            )
        found = str(schema.field(name).type)
        allowed = {"string": {"string", "large_string"}, "int64": {"int64", "int32"}}[dtype]
        if found not in allowed and not (found == "null" and name in nullable):
            row, value = _offending_value(path, name, dtype)
            raise DataError(
                f"{path}: column {name!r} has type {found}, expected {dtype} (row {row}: {name!r} = {value!r})"
            )
    table = datasets.Dataset(datasets.table.InMemoryTable(pq.read_table(path)))
    for name in required:
        column = table.data.column(name)
        if name not in nullable and column.null_count:
            row = column.is_null().to_pylist().index(True)
            raise DataError(f"{path}: row {row}: field {name!r} is null, expected a {required[name]} value")
    return table


def _offending_value(path: Path, name: str, dtype: str) -> tuple[int, object]:
    """The first row of column `name` whose value is not a `dtype` (not an integer, for int64), else row 0."""
    import pyarrow.parquet as pq

    first, row = None, 0
    for batch in pq.ParquetFile(path).iter_batches(columns=[name], batch_size=65536):
        for value in batch.column(0).to_pylist():
            first = (row, value) if first is None else first
            if dtype == "int64" and not _is_integer(value):
                return row, value
            row += 1
        if dtype != "int64":
            break
    return first or (0, None)


def _is_integer(value) -> bool:
    if isinstance(value, str):
        return value.strip().removeprefix("-").isdigit()
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()


@dataclass
class Catalog:
    """Items known by content only.

    Args:
        item_ids (`list[str]`): unique item ids, in catalog order (row `i` of every item tensor is item `i`).
        texts (`list[str]`): item text, `""` when an item has none.
        images (`list[str | None]`): absolute image paths, `None` when an item has none.
        name (`str`): the domain (or `+`-joined domains) the items come from.
    """

    item_ids: list[str]
    texts: list[str]
    images: list[str | None]
    name: str = "catalog"
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        if not len(self.item_ids) == len(self.texts) == len(self.images):
            raise ValueError("item_ids, texts and images must have the same length")
        self.index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        if len(self.index) != len(self.item_ids):
            seen = set()
            duplicate = next(i for i in self.item_ids if i in seen or seen.add(i))
            raise DataError(f"catalog {self.name!r}: duplicate item id {duplicate!r}")

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> Catalog:
        """Reads `items.parquet` of a processed domain folder, checking ids, text and image paths."""
        folder = Path(folder).resolve()
        path = folder / "items.parquet"
        table = read_parquet(path, ITEM_COLUMNS, nullable=("text", "image"))
        # Whole Arrow columns to Python at once: iterating `table[name]` formats one row at a time (~0.2 ms each).
        item_ids, texts, images = (table.data.column(name).to_pylist() for name in ("item_id", "text", "image"))
        ids, text_list, image_list = [], [], []
        seen: dict[str, int] = {}
        for row, (item_id, text, image) in enumerate(zip(item_ids, texts, images, strict=True)):
            if not item_id:
                raise DataError(f"{path}: row {row}: field 'item_id' is empty, expected a non-empty string")
            if item_id in seen:
                raise DataError(f"{path}: row {row}: duplicate item_id {item_id!r} (first at row {seen[item_id]})")
            seen[item_id] = row
            text = text or ""
            if image is not None:
                image = _resolve_image(folder, path, row, image)
            if not text.strip() and image is None:
                raise DataError(
                    f"{path}: row {row}: item {item_id!r} has empty 'text' and null 'image'; "
                    "an item needs at least one modality"
                )
            ids.append(item_id)
            text_list.append(text)
            image_list.append(image)
        return cls(ids, text_list, image_list, name=_domain_name(folder))

    @classmethod
    def concat(cls, catalogs: list[Catalog]) -> Catalog:
        """Joins the catalogs of several domains (item ids must be unique across them)."""
        return cls(
            [i for c in catalogs for i in c.item_ids],
            [t for c in catalogs for t in c.texts],
            [p for c in catalogs for p in c.images],
            name="+".join(c.name for c in catalogs),
        )

    def records(self, indices) -> list[dict]:
        """The items at `indices` as `{"item_id", "text", "image"}` dicts."""
        return [{"item_id": self.item_ids[i], "text": self.texts[i], "image": self.images[i]} for i in indices]


def _resolve_image(folder: Path, path: Path, row: int, image: str) -> str:
    resolved = (folder / image).resolve()
    if not resolved.is_relative_to(folder):
        raise DataError(f"{path}: row {row}: field 'image' = {image!r} points outside the domain folder {folder}")
    if not resolved.is_file():
        raise DataError(f"{path}: row {row}: field 'image' = {image!r}: file not found under {folder}")
    return str(resolved)


def _domain_name(folder: Path) -> str:
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            return json.loads(manifest.read_text())["name"]
        except (json.JSONDecodeError, KeyError) as err:
            raise DataError(f"{manifest}: expected a JSON object with a 'name' field ({err})") from err
    return folder.name
