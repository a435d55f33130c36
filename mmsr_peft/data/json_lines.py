"""Reading gzip JSON-lines files record by record, and checking their fields, with errors that name the file, the
line, the field, the value and what was expected (`DataError`)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import DataError

_MISSING = object()  # a field the record does not have (not the same as a null value)


def json_lines(path: Path, digest) -> Iterator[tuple[int, dict]]:
    """`(line number, object)` of a gzip JSON-lines file, with a progress bar over its bytes; every byte of the file
    goes through `digest`."""
    with open(path, "rb") as raw, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name) as bar:
        tee = _Tee(raw, digest, bar)
        try:
            with gzip.open(tee, "rt", encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(
                            f"{path}: line {number}: not valid JSON ({err.msg} at column {err.colno}): "
                            f"{show(line.rstrip())}"
                        ) from None
                    if not isinstance(record, dict):
                        raise DataError(f"{path}: line {number}: expected a JSON object, got {show(record)}")
                    yield number, record
        except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as err:
            raise DataError(
                f"{path}: not a complete gzip file of UTF-8 JSON lines ({err}); delete it and fetch it again"
            ) from err
        while tee.read(1 << 20):  # hash what gzip left unread
            pass


class _Tee:
    """A binary file for `gzip` that feeds each byte read to a hash and a progress bar."""

    def __init__(self, handle, digest, bar):
        self.handle, self.digest, self.bar = handle, digest, bar

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        self.bar.update(len(data))
        return data


def required(record: dict, field: str, kind: type, path: Path, number: int):
    value = record.get(field)
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value):
        expected = "a non-empty string" if kind is str else "an integer"
        raise bad_field(path, number, field, value if field in record else _MISSING, expected)
    return value


def optional(record: dict, field: str, kind: type, path: Path, number: int):
    value = record.get(field)
    if value is not None and not isinstance(value, kind):
        raise bad_field(path, number, field, value, f"a {kind.__name__} or null")
    return value


def bad_field(path: Path, number: int, field: str, value, expected: str) -> DataError:
    got = "missing" if value is _MISSING else show(value)
    return DataError(f"{path}: line {number}: field {field!r} is {got}, expected {expected}")


def show(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
