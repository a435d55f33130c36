"""Item images as model input: decoding one file to fixed-size pixels (`load_image`), and an on-disk cache of the
decoded pixels (`ImageCache`) so each image file is decoded and resized once across runs."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..files import atomic_save_tensors, read_tensors
from ..sharding import Shards

logger = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 50_000_000  # larger images are refused before their pixels are decoded
DIGEST_BYTES = hashlib.sha256().digest_size


def digest_keys(digests: torch.Tensor) -> list[bytes]:
    """The rows of an `(N, 32)` uint8 tensor of sha256 digests as `bytes`, to look items up by."""
    return np.ascontiguousarray(digests.numpy()).view(f"V{DIGEST_BYTES}").ravel().tolist()


def load_image(path: str, size: int) -> torch.Tensor:
    """Decodes an image file to a `(3, size, size)` uint8 tensor: RGB, shorter side resized, centre-cropped."""
    try:
        with Image.open(path) as image:  # reads the header only
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"{path}: image of {image.width}x{image.height} pixels exceeds the limit of {MAX_IMAGE_PIXELS:,} "
                    "(a decompression bomb, or a file to downscale first)"
                )
            image = image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot decode image ({err})") from err
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # (3, H, W)


class ImageCache:
    """Decoded, resized images kept on disk, so each image file is decoded and resized once across runs.

    `images-<side>px.safetensors` in `folder` holds, for every image seen at that side, the sha256 of the file's
    bytes and its `(3, side, side)` uint8 pixels. A file whose bytes changed has another digest and is decoded
    again; a damaged cache file is ignored and rewritten; writes are atomic (temporary file + rename). Under
    Accelerate, the processes share the work out and the main process alone writes.

    Args:
        folder (`str` or `os.PathLike`): where the files live (the same folder as a `FeatureCache` is fine).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.last_hits = 0  # images found in the cache by the last `load`
        self.last_misses = 0

    def path(self, side: int) -> Path:
        return self.folder / f"images-{side}px.safetensors"

    def load(
        self, paths: list[str | None], side: int, progress: bool = False, shards: Shards | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(N, 3, side, side)` uint8 pixels and `(N,)` has-image flags for `paths` (None: the item has no image).
        With `shards` of several processes, each reads (or decodes) its share of the images and every process
        gets them all; the main process alone writes the new ones to the cache."""
        from tqdm.auto import tqdm

        shards = shards or Shards()
        path = self.path(side)
        stored = read_tensors(path)
        rows = {key: i for i, key in enumerate(digest_keys(stored["digests"]))} if stored else {}
        first, last = shards.range(len(paths))
        pixels = torch.zeros(last - first, 3, side, side, dtype=torch.uint8)
        has_image = torch.zeros(last - first, dtype=torch.bool)
        digests = torch.zeros(last - first, DIGEST_BYTES, dtype=torch.uint8)
        decoded = {}  # digest -> the share's row of the first item with that image, for images not in the cache
        share = paths[first:last]
        for i, image in enumerate(tqdm(share, desc="images", disable=not progress or not shards.is_main, leave=False)):
            if not image:
                continue
            try:
                digest = hashlib.sha256(Path(image).read_bytes()).digest()
            except OSError as err:
                raise DataError(f"{image}: cannot read image ({err})") from err
            digests[i] = torch.frombuffer(bytearray(digest), dtype=torch.uint8)
            has_image[i] = True
            if digest in rows:
                pixels[i] = stored["pixels"][rows[digest]]
            elif digest in decoded:
                pixels[i] = pixels[decoded[digest]]
            else:
                pixels[i] = load_image(image, side)
                decoded[digest] = i
        pixels, has_image, digests = (shards.gather(t, len(paths)) for t in (pixels, has_image, digests))
        new = {}  # over all shares: digest -> the first item with that image, for images not in the cache
        keys = digest_keys(digests)
        for i in torch.nonzero(has_image).flatten().tolist():
            if keys[i] not in rows:
                new.setdefault(keys[i], i)
        self.last_hits, self.last_misses = int(has_image.sum()) - len(new), len(new)
        logger.info("image cache %s: %d images cached, %d decoded", path.name, self.last_hits, self.last_misses)
        if new and shards.is_main:
            first_items = torch.tensor(list(new.values()), dtype=torch.long)
            tensors = {"digests": digests[first_items], "pixels": pixels[first_items]}
            if stored is not None:
                tensors = {name: torch.cat([value, stored[name]]) for name, value in tensors.items()}
            atomic_save_tensors(path, tensors)
        return pixels, has_image
