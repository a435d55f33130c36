"""`mmsr-data images`: real HTTP against a local server serving images, 404s, damaged files, a decompression bomb,
a slow URL and a flaky one."""

import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmsr_peft.cli import data_main
from mmsr_peft.data.catalog import Catalog
from mmsr_peft.data.folder import INTERACTION_SCHEMA, ITEM_SCHEMA, new_domain_folder, write_manifest, write_table
from mmsr_peft.data.images import ImageDownloadConfig, download_images, format_report, image_file_name
from mmsr_peft.domains import load_folder
from mmsr_peft.errors import DataError

# Tiny backoff and timeout keep the retries and the timeout case well under a second.
FAST = ["--workers", "4", "--timeout", "0.3", "--retries", "2", "--backoff", "0.01"]
FAST += ["--max_bytes", "20000", "--max_pixels", "10000"]


def encoded(image_format: str, size=(32, 24), noise=False) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) if noise else None
    image = Image.fromarray(pixels) if noise else Image.new("RGB", size, (200, 40, 90))
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


JPEG, PNG = encoded("JPEG"), encoded("PNG")
ROUTES = {  # path -> (status, body)
    "/a.jpg": (200, JPEG),
    "/b.png": (200, PNG),
    "/large.jpg": (200, encoded("JPEG", (40, 30))),
    "/truncated.jpg": (200, JPEG[: len(JPEG) // 2]),
    "/page.html": (200, b"<html><body>not found, but with status 200</body></html>"),
    "/bomb.png": (200, encoded("PNG", (200, 200))),  # 40,000 pixels > --max_pixels 10000
    "/heavy.png": (200, encoded("PNG", (128, 128), noise=True)),  # ~49 kB > --max_bytes 20000
}
# item id -> image_urls (ordered fallbacks); every item has text, so the folder loads with or without images
ITEMS = {
    "jpeg": ["/a.jpg"],
    "png": ["/b.png"],
    "fallback": ["/hi_res-missing.jpg", "/large.jpg", "/a.jpg"],
    "flaky": ["/flaky.jpg"],
    "../../escape/me": ["/a.jpg"],
    "truncated": ["/truncated.jpg"],
    "html": ["/page.html"],
    "bomb": ["/bomb.png"],
    "heavy": ["/heavy.png"],
    "gone": ["/gone.jpg"],
    "slow": ["/slow.jpg"],
    "local-file": ["file:///etc/hostname"],
    "to-local-file": ["/to-file"],
    "no-host": ["http://"],
    "moved": ["/moved"],
    "no-url": [],
    "null-url": None,
}
DOWNLOADED = {"jpeg", "png", "fallback", "flaky", "../../escape/me", "moved"}
REDIRECTS = {"/moved": "/large.jpg", "/to-file": "file:///etc/hostname"}


class ImageServer(ThreadingHTTPServer):
    """Serves ROUTES; `/flaky.jpg` answers 500 twice before the image, `/slow.jpg` never answers in time."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits, self.lock = Counter(), threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return path if ":" in path else f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request, client_address):
        pass  # the slow route writes to a socket the client already closed


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        with self.server.lock:
            self.server.hits[self.path] += 1
            hits = self.server.hits[self.path]
        if self.path == "/slow.jpg":
            time.sleep(1.0)
        status, body = ROUTES.get(self.path, (404, b"no such file"))
        if self.path == "/flaky.jpg":
            status, body = (500, b"try again") if hits <= 2 else (200, JPEG)
        self.send_response(302 if self.path in REDIRECTS else status)
        if self.path in REDIRECTS:
            self.send_header("Location", REDIRECTS[self.path])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = ImageServer()
    yield server
    server.shutdown()
    server.server_close()


def make_folder(root: Path, server: ImageServer) -> Path:
    """A processed folder as a preparer leaves it: `image_urls` filled, `image` null, an extra `title` column."""
    folder = root / "shop"
    ids = list(ITEMS)
    with new_domain_folder(folder) as tmp:
        items = {
            "item_id": ids,
            "text": [f"item {i}" for i in ids],
            "image": pa.nulls(len(ids), pa.string()),
            "image_urls": pa.array([None if u is None else [server.url(p) for p in u] for u in ITEMS.values()]),
            "title": [f"title {i}" for i in ids],
        }
        write_table(tmp / "items.parquet", items, ITEM_SCHEMA)
        users = [f"u{n}" for n in range(4) for _ in range(len(ids))]
        rows = {"user_id": users, "item_id": ids * 4, "timestamp": list(range(len(users)))}
        write_table(tmp / "interactions.parquet", rows, INTERACTION_SCHEMA)
        write_manifest(tmp, "shop", "test", "1", {"items": len(ids)}, {})
    return folder


def test_download_fallback_retry_limits_report_and_resume(tmp_path, server, capsys):
    folder = make_folder(tmp_path, server)
    started = time.monotonic()
    assert data_main(["images", str(folder), *FAST]) == 0
    assert time.monotonic() - started < 5

    report = json.loads((folder / "images_report.json").read_text())
    reasons = {f["item_id"]: f["reason"] for f in report["failures"]}
    assert reasons == {
        "truncated": "corrupt_image",
        "html": "not_an_image",
        "bomb": "too_many_pixels",
        "heavy": "too_large",
        "gone": "http_404",
        "slow": "timeout",
        "local-file": "bad_url",
        "to-local-file": "bad_redirect",
        "no-host": "bad_url",
    }
    assert {
        k: report[k] for k in ("items", "with_image", "downloaded", "already_present", "without_url", "failed")
    } == {
        "items": 17,
        "with_image": 6,
        "downloaded": 6,
        "already_present": 0,
        "without_url": 2,
        "failed": 9,
    }
    assert report["failure_reasons"] == Counter(reasons.values())
    fallback = next(f for f in report["failures"] if f["item_id"] == "gone")["attempts"]
    assert fallback == [{"url": server.url("/gone.jpg"), "reason": "http_404", "detail": "HTTP 404 Not Found"}]
    # retries: the flaky URL succeeded on its third request; the slow one was tried 1 + 2 times; a 404 only once
    assert server.hits["/flaky.jpg"] == 3 and server.hits["/slow.jpg"] == 3 and server.hits["/gone.jpg"] == 1
    # fallback: hi_res missing, large taken, the third URL never requested
    assert server.hits["/hi_res-missing.jpg"] == 1 and server.hits["/large.jpg"] == 2  # also redirected to
    assert report["requests"] == sum(server.hits.values()) - 1  # the redirect followed from /moved is not counted
    printed = capsys.readouterr().out
    assert "with an image" in printed and "too_many_pixels" in printed and format_report(report) in printed

    # the rewritten items.parquet: images filled for successes, other columns and rows kept, loadable
    table = pq.read_table(folder / "items.parquet").to_pydict()
    assert table["item_id"] == list(ITEMS) and table["title"] == [f"title {i}" for i in ITEMS]
    assert table["image_urls"][0] == [server.url("/a.jpg")]
    assert {i for i, p in zip(table["item_id"], table["image"], strict=True) if p} == DOWNLOADED
    domain = load_folder(folder)
    assert domain.manifest["counts"]["items_with_image"] == 6
    catalog = Catalog.from_folder(folder)
    images = {i: p for i, p in zip(catalog.item_ids, catalog.images, strict=True) if p}
    assert all(Path(p).parent == (folder / "images").resolve() for p in images.values())  # the "../" id included
    with Image.open(images["fallback"]) as image:
        assert image.size == (40, 30)  # from large.jpg, not the later /a.jpg
    with Image.open(images["png"]) as image:
        assert image.format == "JPEG" and image.size == (32, 24)  # re-encoded to match its .jpg name
    assert Path(images["jpeg"]).read_bytes() == JPEG  # a JPEG is stored as served

    # resume: valid files make no request; a file damaged on disk is fetched again; failures are retried
    Path(images["jpeg"]).write_bytes(JPEG[:100])
    server.hits.clear()
    config = ImageDownloadConfig(timeout=0.3, retries=0, max_bytes=20000, max_pixels=10000)
    report = download_images(folder, config, progress=False)
    assert server.hits["/a.jpg"] == 1 and server.hits["/flaky.jpg"] == 0 and server.hits["/b.png"] == 0
    assert server.hits["/large.jpg"] == 0 and server.hits["/hi_res-missing.jpg"] == 0
    assert (report["downloaded"], report["already_present"], report["with_image"]) == (1, 5, 6)
    assert Path(images["jpeg"]).read_bytes() == JPEG
    assert report["failure_reasons"] == Counter(reasons.values())
    assert Catalog.from_folder(folder).images == catalog.images


def test_max_side_downscales(tmp_path, server):
    folder = make_folder(tmp_path, server)
    config = ImageDownloadConfig(workers=2, timeout=0.3, retries=0, max_side=16)
    report = download_images(folder, config, progress=False)
    assert report["with_image"] == 7  # bomb and heavy are within the default limits; flaky needs a retry
    assert report["failure_reasons"]["http_500"] == 1
    with Image.open(folder / "images" / image_file_name("fallback")) as image:
        assert image.size == (16, 12)


def test_file_names_are_safe_and_distinct():
    names = {image_file_name(i) for i in ["a", "A", "a/b", "a_b", "../x", "..", ".", "x" * 500]}
    assert len(names) == 8
    assert all("/" not in n and not n.startswith(".") and len(n) <= 64 + 21 for n in names)
    assert image_file_name("B00005N5PF").startswith("B00005N5PF-")


def test_bad_folders_fail_with_the_file_and_column(tmp_path):
    folder = tmp_path / "plain"
    with new_domain_folder(folder) as tmp:
        write_table(tmp / "items.parquet", {"item_id": ["1"], "text": ["t"], "image": [None]}, ITEM_SCHEMA)
    with pytest.raises(DataError, match="missing column 'image_urls'"):
        download_images(folder, progress=False)
    write_table(
        folder / "items.parquet", {"item_id": ["1"], "text": ["t"], "image": [None], "image_urls": ["u"]}, ITEM_SCHEMA
    )
    with pytest.raises(DataError, match="expected list<string>"):
        download_images(folder, progress=False)
    assert data_main(["images", str(folder), "--workers", "0"]) == 2
