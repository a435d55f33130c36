"""Item images downloaded into a processed domain folder from the URLs its `items.parquet` lists.

A preparer that knows where images live (e.g. Amazon 2023: `hi_res`, then `large`, then `thumb`) writes an extra
column `image_urls` (`list<string>`, ordered fallbacks) and leaves `image` null; `download_images` then fetches
one image per item into `images/`, checks it, fills `image` and writes a coverage report:

    mmsr-data images data/amazon2023/office --workers 32 --max_side 512

What is guaranteed:
- resumable: an item whose `images/` file exists and decodes is not downloaded again, so an interrupted run
  (Ctrl-C, lost connection) is finished by running the same command again; a file that no longer decodes is
  fetched again;
- every file is whole: written to a temporary file and renamed, and `items.parquet` is replaced the same way;
- every file is an image: at most `max_bytes` are read, the declared size (`width x height`) is checked against
  `max_pixels` before any pixel is decoded (decompression bombs are refused), then the file is decoded once in
  full (`verify` + `load`) with Pillow, restricted to common web formats (JPEG, PNG, WebP, GIF, BMP);
- only `http(s)` URLs are fetched, redirects included; file names come from item ids through a sanitised stem and
  a hash, so no id can write outside `images/` and two ids never share a file;
- connection errors, timeouts, 408, 429 and 5xx are retried with exponential backoff; other HTTP errors (404, 403,
  ...) are not, and the next URL of the item is tried.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..errors import DataError
from ..files import atomic_file, atomic_write_text
from .folder import ITEM_SCHEMA, write_table

URL_COLUMN = "image_urls"
REPORT_FILE = "images_report.json"
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")  # Pillow decoders tried; exotic ones (EPS runs Ghostscript) never are
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


@dataclass
class ImageDownloadConfig:
    """How images are fetched and checked.

    Args:
        workers (`int`): concurrent downloads (threads).
        timeout (`float`): seconds to wait for a connection or for data before the attempt counts as a timeout.
        retries (`int`): further attempts of a URL after a connection error, timeout, 408, 429 or 5xx.
        backoff (`float`): seconds before the first retry; doubled for each further one (with +-50 % jitter).
        max_bytes (`int`): a larger file is refused (`too_large`) without being decoded.
        max_pixels (`int`): an image whose header declares more pixels (`width * height`) is refused
            (`too_many_pixels`) before its pixels are decoded.
        max_side (`int | None`): when set, images whose longer side is larger are downscaled to it (Lanczos) and
            stored as JPEG (quality 90), which saves most of the disk of full-resolution product photos; models
            resize to their own input size (e.g. 224 px) anyway. `None` keeps the resolution served.
        user_agent (`str`): the `User-Agent` header sent with every request.
    """

    workers: int = 16
    timeout: float = 20.0
    retries: int = 3
    backoff: float = 1.0
    max_bytes: int = 20 * 2**20
    max_pixels: int = 50_000_000
    max_side: int | None = None
    user_agent: str = "mmsr-peft/0.1 (image download for recommendation research; python-urllib)"

    def __post_init__(self):
        for name in ("workers", "max_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout <= 0 or self.retries < 0 or self.backoff < 0:
            raise ValueError(
                f"expected timeout > 0, retries >= 0 and backoff >= 0, got {self.timeout}, {self.retries}, {self.backoff}"
            )
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"max_side must be >= 1 or None, got {self.max_side}")


class ImageRejected(Exception):
    """A URL or file that gave no usable image. `reason` is a short key counted in the report (`http_404`,
    `timeout`, `connection_error`, `too_large`, `too_many_pixels`, `not_an_image`, `corrupt_image`,
    `cannot_convert`, `bad_url`, `bad_redirect`); the message holds the details."""

    def __init__(self, reason: str, detail: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(detail)
        self.reason, self.retryable, self.retry_after = reason, retryable, retry_after


def image_file_name(item_id: str) -> str:
    """The file of `item_id` in `images/`: the id with every character but letters, digits, `_` and `-` replaced by
    `_` (at most 64 of them), `-`, then 16 hex digits of the id's SHA-256. No id can name a path outside
    `images/`, and distinct ids get distinct names, also on case-insensitive file systems."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", item_id)[:64]
    return f"{stem}-{hashlib.sha256(item_id.encode()).hexdigest()[:16]}.jpg"


def check_image(data: bytes, config: ImageDownloadConfig) -> Image.Image:
    """Decodes `data` in full and returns the loaded image, or raises `ImageRejected` saying why it is no image."""
    if len(data) > config.max_bytes:
        raise ImageRejected("too_large", f"{len(data)} bytes > max_bytes {config.max_bytes}")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:  # reads the header only
            if image.width * image.height > config.max_pixels:
                raise ImageRejected(
                    "too_many_pixels", f"{image.width}x{image.height} pixels > max_pixels {config.max_pixels}"
                )
            image.verify()
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # verify() leaves the image unusable: open again
        image.load()
    except Image.DecompressionBombError as err:
        raise ImageRejected("too_many_pixels", str(err)) from None
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", f"not a {'/'.join(FORMATS)} image ({data[:16]!r}...)") from None
    except ImageRejected:
        raise
    except Exception as err:  # Pillow raises OSError, SyntaxError, struct.error, ... for damaged files
        raise ImageRejected("corrupt_image", f"{type(err).__name__}: {err}") from None
    return image


def encode_image(data: bytes, image: Image.Image, max_side: int | None) -> bytes:
    """The bytes to store: a JPEG within `max_side` as served; anything else as RGB JPEG (transparency on white),
    downscaled to `max_side` when it is larger."""
    if image.format == "JPEG" and (max_side is None or max(image.size) <= max_side):
        return data
    try:
        if image.mode in ("RGBA", "LA", "PA", "P"):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, "white")
            image.paste(rgba, mask=rgba.getchannel("A"))
        else:
            image = image.convert("RGB")
        if max_side is not None and max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
    except Exception as err:  # e.g. a pixel mode Pillow cannot convert
        raise ImageRejected("cannot_convert", f"{image.format} {image.mode}: {err}") from None
    return buffer.getvalue()


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise ImageRejected("bad_redirect", f"redirect to {newurl!r} refused: only http(s) is fetched")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def http_opener() -> urllib.request.OpenerDirector:
    """An opener that speaks http and https only (no `file:`, `ftp:` or `data:`), honouring proxy variables."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        _HttpOnlyRedirects(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


class _Client:
    """Fetches URLs with retries and backoff; counts the requests made (from any thread)."""

    def __init__(self, config: ImageDownloadConfig, opener: urllib.request.OpenerDirector | None):
        self.config, self.opener = config, opener or http_opener()
        self.requests, self._lock = 0, threading.Lock()

    def get(self, url: str) -> bytes:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImageRejected("bad_url", f"{url!r}: only http(s) URLs with a host are fetched")
        for attempt in range(self.config.retries):
            try:
                return self._get_once(url)
            except ImageRejected as rejected:
                if not rejected.retryable:
                    raise
                delay = self.config.backoff * 2**attempt * random.uniform(0.5, 1.5)
                time.sleep(max(delay, min(rejected.retry_after or 0.0, 60.0)))  # a server's Retry-After, capped
        return self._get_once(url)

    def _get_once(self, url: str) -> bytes:
        with self._lock:
            self.requests += 1
        request = urllib.request.Request(url, headers={"User-Agent": self.config.user_agent})
        limit = self.config.max_bytes
        try:
            with self.opener.open(request, timeout=self.config.timeout) as response:
                length = response.headers.get("Content-Length", "")
                if length.isdigit() and int(length) > limit:
                    raise ImageRejected("too_large", f"Content-Length {length} > max_bytes {limit}")
                data = response.read(limit + 1)
        except urllib.error.HTTPError as err:
            err.close()
            after = err.headers.get("Retry-After", "") if err.headers else ""
            if 300 <= err.code < 400:  # urllib refused to follow it: a loop, or a target that is not http(s)
                raise ImageRejected("bad_redirect", f"HTTP {err.code}: {err.reason}") from None
            retry_after = float(after) if after.isdigit() else None
            raise ImageRejected(
                f"http_{err.code}", f"HTTP {err.code} {err.reason}", err.code in RETRY_STATUSES, retry_after
            ) from None
        except urllib.error.URLError as err:
            reason = "timeout" if isinstance(err.reason, TimeoutError) else "connection_error"
            raise ImageRejected(reason, str(err.reason), retryable=True) from None
        except TimeoutError as err:
            raise ImageRejected("timeout", f"no data for {self.config.timeout} s ({err})", retryable=True) from None
        except (ValueError, http.client.InvalidURL) as err:  # e.g. no host, spaces or non-ASCII characters
            raise ImageRejected("bad_url", f"{url!r}: {err}") from None
        except (http.client.HTTPException, OSError) as err:
            raise ImageRejected("connection_error", f"{type(err).__name__}: {err}", retryable=True) from None
        if len(data) > limit:
            raise ImageRejected("too_large", f"more than max_bytes {limit} bytes")
        return data


def _fetch_item(item_id: str, urls: list[str], images: Path, client: _Client) -> dict:
    """One item: keeps its file when it decodes, else tries its URLs in order until one gives an image."""
    name = image_file_name(item_id)
    path = images / name
    if not urls:
        return {"status": "without_url"}
    if path.is_file():
        try:
            check_image(path.read_bytes(), client.config)
            return {"status": "already_present", "image": f"images/{name}"}
        except ImageRejected:
            pass  # damaged (e.g. a run killed by the OS before a rename was flushed): fetch it again
    attempts = []
    for url in urls:
        try:
            data = client.get(url)
            stored = encode_image(data, check_image(data, client.config), client.config.max_side)
        except ImageRejected as rejected:
            attempts.append({"url": url, "reason": rejected.reason, "detail": str(rejected)})
            continue
        _write_bytes(path, stored)
        return {"status": "downloaded", "image": f"images/{name}", "url": url}
    path.unlink(missing_ok=True)  # a damaged file left behind would be mistaken for this item's image
    return {"status": "failed", "reason": attempts[-1]["reason"], "attempts": attempts}


def _write_bytes(path: Path, data: bytes) -> None:
    # No fsync per image (millions of files): a file damaged by a power cut fails check_image and is fetched again.
    with atomic_file(path) as (fd, _):
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)


def _bounded_map(function, jobs, workers: int):
    """`function(*job)` for each job on `workers` threads, yielding `(job, result)` as they finish, with at most
    `4 * workers` jobs queued (a catalog of millions of items does not become millions of futures at once)."""
    pool, pending = ThreadPoolExecutor(max_workers=workers), {}
    try:
        for job in jobs:
            if len(pending) >= 4 * workers:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
            pending[pool.submit(function, *job)] = job
        for future in list(pending):
            yield pending.pop(future), future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C, queued items are not started


def read_image_urls(path: Path) -> pa.Table:
    """`items.parquet` with its `image_urls` column checked: `list<string>`, nulls allowed; item ids non-empty and
    unique."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types for unreadable files
        raise DataError(f"{path}: not a readable parquet file ({err})") from err
    for name in ("item_id", "text", "image", URL_COLUMN):
        if name not in table.column_names:
            expected = "a list<string> of image URLs per item" if name == URL_COLUMN else "an item column"
            raise DataError(f"{path}: missing column {name!r} ({expected}; columns: {table.column_names})")
    url_type = table.schema.field(URL_COLUMN).type
    if not (pa.types.is_list(url_type) or pa.types.is_large_list(url_type)) or not (
        pa.types.is_string(url_type.value_type) or pa.types.is_large_string(url_type.value_type)
    ):
        raise DataError(f"{path}: column {URL_COLUMN!r} has type {url_type}, expected list<string>")
    seen: dict[str, int] = {}
    for row, item_id in enumerate(table["item_id"].to_pylist()):
        if not item_id:
            raise DataError(f"{path}: row {row}: field 'item_id' is empty, expected a non-empty string")
        if item_id in seen:
            raise DataError(f"{path}: row {row}: duplicate item_id {item_id!r} (first at row {seen[item_id]})")
        seen[item_id] = row
    return table


def download_images(
    folder: str | os.PathLike,
    config: ImageDownloadConfig | None = None,
    opener: urllib.request.OpenerDirector | None = None,
    progress: bool = True,
) -> dict:
    """Downloads the images of a processed domain folder and fills its `image` column.

    Args:
        folder (`str` or `os.PathLike`): a processed domain folder whose `items.parquet` has an `image_urls`
            column (`list<string>`, tried in order).
        config ([`ImageDownloadConfig`], *optional*): limits, retries and concurrency.
        opener (`urllib.request.OpenerDirector`, *optional*): defaults to [`http_opener`].
        progress (`bool`): show a progress bar.

    Returns:
        `dict`: the coverage report, also written to `<folder>/images_report.json`: `items`, `with_image` (items
        whose `image` is set after the run), how many were `downloaded`, `already_present` (valid file on disk, no
        request), `without_url` and `failed`; `failure_reasons` (failed items per reason of their last URL),
        `failures` (each failed item with every URL tried, its reason and details), `without_text_or_image`
        (items `Catalog.from_folder` will refuse), `requests` (HTTP requests made, redirects not counted) and
        `config`.

    The `image` column of an item with URLs becomes `images/<name>.jpg` when its image is on disk after the run and
    null otherwise; items without URLs keep theirs. Every other column and the row order are kept.
    `manifest.json`, when present, gets `counts.items_with_image` and the settings under
    `preprocessing.images`.
    """
    folder, config = Path(folder), config or ImageDownloadConfig()
    items_path = folder / "items.parquet"
    table = read_image_urls(items_path)
    item_ids = table["item_id"].to_pylist()
    url_lists = [list(dict.fromkeys(u for u in urls or [] if u)) for urls in table[URL_COLUMN].to_pylist()]
    images = folder / "images"
    images.mkdir(exist_ok=True)
    client = _Client(config, opener)
    results: dict[str, dict] = {}
    jobs = ((item_id, urls, images, client) for item_id, urls in zip(item_ids, url_lists, strict=True))
    counts = Counter()
    with tqdm(total=len(item_ids), desc=f"images of {folder.name}", unit="item", disable=not progress) as bar:
        for job, result in _bounded_map(_fetch_item, jobs, config.workers):
            results[job[0]] = result
            counts[result["status"]] += 1
            bar.update()
            bar.set_postfix(
                ok=counts["downloaded"] + counts["already_present"], failed=counts["failed"], refresh=False
            )

    paths = [
        results[item_id].get("image") if urls else old
        for item_id, urls, old in zip(item_ids, url_lists, table["image"].to_pylist(), strict=True)
    ]
    table = table.set_column(table.column_names.index("image"), "image", pa.array(paths, pa.string()))
    with atomic_file(items_path) as (fd, tmp):
        os.close(fd)  # parquet writes the file by its path
        write_table(tmp, table, ITEM_SCHEMA)
    texts = table["text"].to_pylist()
    report = _report(folder, config, item_ids, results, paths, texts, client.requests)
    atomic_write_text(folder / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    _update_manifest(folder, report, config)
    return report


def _report(folder, config, item_ids, results, paths, texts, requests) -> dict:
    statuses = Counter(result["status"] for result in results.values())
    failures = [{"item_id": i, **results[i]} for i in item_ids if results[i]["status"] == "failed"]
    for failure in failures:
        del failure["status"]
    return {
        "folder": str(folder),
        "items": len(item_ids),
        "with_image": sum(p is not None for p in paths),
        **{status: statuses[status] for status in ("downloaded", "already_present", "without_url", "failed")},
        "failure_reasons": dict(Counter(f["reason"] for f in failures).most_common()),
        "without_text_or_image": sum(p is None and not (t or "").strip() for p, t in zip(paths, texts, strict=True)),
        "requests": requests,
        "config": asdict(config),
        "failures": failures,
    }


def _update_manifest(folder: Path, report: dict, config: ImageDownloadConfig) -> None:
    path = folder / "manifest.json"
    if not path.is_file():
        return
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    manifest.setdefault("counts", {})["items_with_image"] = report["with_image"]
    settings = {key: getattr(config, key) for key in ("max_bytes", "max_pixels", "max_side")}
    manifest.setdefault("preprocessing", {})["images"] = {"from": URL_COLUMN, **settings}
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def format_report(report: dict) -> str:
    """The coverage report as an aligned table."""
    total = report["items"]
    rows = [
        ("items", total, ""),
        ("with an image", report["with_image"], f"{100 * report['with_image'] / max(total, 1):5.1f} %"),
        ("  downloaded", report["downloaded"], ""),
        ("  already on disk", report["already_present"], ""),
        ("without any URL", report["without_url"], ""),
        ("failed", report["failed"], ""),
        *((f"  {reason}", count, "") for reason, count in report["failure_reasons"].items()),
        ("HTTP requests", report["requests"], ""),
    ]
    if report["without_text_or_image"]:
        rows.append(("neither text nor image", report["without_text_or_image"], "(such items cannot be loaded)"))
    width = max(len(label) for label, _, _ in rows)
    lines = [f"images of {report['folder']} (details: {REPORT_FILE})"]
    lines += [f"  {label:<{width}}  {value:>9,}  {note}".rstrip() for label, value, note in rows]
    return "\n".join(lines)


def add_command(commands) -> None:
    """`mmsr-data images DOMAIN_FOLDER`."""
    defaults = ImageDownloadConfig()
    parser = commands.add_parser(
        "images",
        help="Download item images from the image_urls column of a processed domain folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("folder", help="Processed domain folder whose items.parquet has an image_urls column.")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="Concurrent downloads.")
    parser.add_argument("--timeout", type=float, default=defaults.timeout, help="Seconds per connection or read.")
    parser.add_argument("--retries", type=int, default=defaults.retries, help="Retries on timeouts, 429 and 5xx.")
    parser.add_argument("--backoff", type=float, default=defaults.backoff, help="Seconds before the first retry.")
    parser.add_argument("--max_bytes", type=int, default=defaults.max_bytes, help="Larger files are refused.")
    parser.add_argument("--max_pixels", type=int, default=defaults.max_pixels, help="Larger images are refused.")
    parser.add_argument("--max_side", type=int, default=None, help="Downscale larger images to this side (JPEG).")
    parser.add_argument("--user_agent", default=defaults.user_agent, help="User-Agent header of the requests.")
    parser.set_defaults(handler=_run_command)


def _run_command(args) -> None:
    config = ImageDownloadConfig(**{f.name: getattr(args, f.name) for f in fields(ImageDownloadConfig)})
    print(format_report(download_images(args.folder, config)))
