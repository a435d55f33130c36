"""A screenshot of `mmsr-app`, taken by a real headless browser (`make app-screenshot`).

Serves the page in this process on a free local port with a starting history, opens it in headless Chromium
through Playwright, waits until every gallery image of the history and the top-k has loaded, saves the PNG and stops
the app. Chromium comes from the system's packages (Debian: `apt-get install chromium`; `--chromium` names another
binary); Playwright from PyPI (`pip install playwright`, no browser download: it drives that Chromium).

    python scripts/app_screenshot.py --model outputs/app/ml-100k --domain ml-100k --data_source movielens \\
        --history 50 172 181 --output outputs/app/ml-100k.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from runner import free_port

from mmsr_peft.app import serve
from mmsr_peft.arguments import AppArguments

# what keeps a headless Chromium quiet on a machine without internet (no background connections, no sandbox as root)
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def wait_until_served(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.5)


def screenshot(url: str, output: Path, chromium: str, size: tuple[int, int], images: int, timeout_s: float) -> None:
    """Opens `url`, waits until `images` gallery images have loaded, writes `output` (whole or not at all)."""
    from playwright.sync_api import sync_playwright

    loaded = (
        f"Array.from(document.querySelectorAll('img')).filter(i => i.complete && i.naturalWidth).length >= {images}"
    )
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="mmsr-shot-") as scratch:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.goto(url)
            page.wait_for_function(loaded, timeout=timeout_s * 1000)
            page.wait_for_timeout(500)  # the galleries' layout settles after the last image
            partial = Path(scratch) / "page.png"
            page.screenshot(path=partial, full_page=True)
        finally:
            browser.close()
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(partial, output)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Base model folder or Hub repo id.")
    parser.add_argument("--adapters", nargs="*", default=[], help="Adapter folders or Hub repo ids.")
    parser.add_argument("--domain", required=True)
    parser.add_argument("--data_source", default="synthetic")
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--history", nargs="*", default=[], help="Item ids the page starts with.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--output", required=True, help="Where the PNG goes.")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument(
        "--size", default="1400,900", help="Viewport width,height in pixels (the page is taken whole)."
    )
    parser.add_argument("--timeout_s", type=float, default=120, help="How long the page may take to show its images.")
    args = parser.parse_args(argv)
    if not shutil.which(args.chromium):
        print(f"error: no Chromium at {args.chromium!r} (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    port = free_port()
    app_args = AppArguments(
        model=args.model, adapters=args.adapters, domain=args.domain, data_source=args.data_source,
        data_dir=args.data_dir, history=args.history, k=args.k, port=port,
    )  # fmt: skip
    app = serve(app_args, block=False)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_served(url)
        width, height = (int(side) for side in args.size.split(","))
        images = len(args.history) + args.k * (2 if args.adapters else 1)  # history, top-k (and the base's top-k)
        screenshot(url, Path(args.output), args.chromium, (width, height), images, args.timeout_s)
    finally:
        app.close()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
