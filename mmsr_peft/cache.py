"""On-disk cache of frozen encoder outputs, so a frozen encoder runs over each item once across epochs and runs.

One safetensors file per encoder and weights: `<kind>-<weights sha256[:16]>.safetensors` holds, for every item
encoded so far, the sha256 of exactly what the encoder read (token ids and mask, or uint8 pixels) and the
encoder's output (`pooled`, `tokens`, `mask`). Loading keeps the rows whose content digest matches an item of the
catalog and encodes only the others, so:

- other weights (a different base, a fine-tuned encoder) use another file: nothing stale is ever read;
- an item whose text, image, tokenizer or image size changed has another digest and is encoded again;
- items are matched by content, not by id or position, so catalogs that share items share the work.

Files are written through a temporary file and a rename: a reader sees the old file or the new one.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from .data.collate import ItemInputs
from .encoders import EncoderOutput
from .errors import DataError
from .io import atomic_save_tensors

logger = logging.getLogger(__name__)

DIGEST_BYTES = 32


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # reshape: 0-dim buffers too
    return digest.hexdigest()


def content_digests(inputs: ItemInputs, kind: str) -> torch.Tensor:
    """`(N, 32)` uint8 sha256 of what the `kind` (`"text"` or `"image"`) encoder reads for each item."""
    if kind == "text":
        parts = (inputs.input_ids, inputs.attention_mask, inputs.has_text)
    elif kind == "image":
        parts = (inputs.pixel_values, inputs.has_image)
    else:
        raise ValueError(f"kind must be 'text' or 'image', got {kind!r}")
    rows = [part.reshape(len(inputs), -1).cpu().contiguous() for part in parts]
    digests = torch.empty(len(inputs), DIGEST_BYTES, dtype=torch.uint8)
    for i in range(len(inputs)):
        digest = hashlib.sha256()
        for row in rows:
            digest.update(row[i].numpy().tobytes())
        digests[i] = torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8)
    return digests


class FeatureCache:
    """The cache folder. `encode(kind, encoder, run, inputs)` returns the encoder's outputs for `inputs`, reading
    the rows it has and computing (then storing) the others.

    Args:
        folder (`str` or `os.PathLike`): where the files live; created when first written.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.last_hits = 0  # items found in the cache by the last `encode`
        self.last_misses = 0

    def path(self, kind: str, encoder: torch.nn.Module) -> Path:
        return self.folder / f"{kind}-{weights_digest(encoder)[:16]}.safetensors"

    def encode(self, kind: str, encoder: torch.nn.Module, run, inputs: ItemInputs, batch_size: int) -> EncoderOutput:
        """`run(inputs)` is the encoder's forward on an `ItemInputs` batch (e.g. `ItemTower.encode_text`)."""
        from .training import encode_catalog

        path = self.path(kind, encoder)
        digests = content_digests(inputs, kind)
        keys = [bytes(d.tolist()) for d in digests]
        position, first = {}, []  # items with identical content (e.g. no text) are encoded once
        for i, key in enumerate(keys):
            if key not in position:
                position[key] = len(first)
                first.append(i)
        distinct = [keys[i] for i in first]
        first = torch.tensor(first, dtype=torch.long)
        expand = torch.tensor([position[key] for key in keys], dtype=torch.long)
        stored = _read_tensors(path)
        rows = {bytes(d.tolist()): i for i, d in enumerate(stored["digests"])} if stored else {}
        found = [rows.get(key) for key in distinct]
        missing = [i for i, row in enumerate(found) if row is None]
        self.last_hits = sum(found[i] is not None for i in expand.tolist())
        self.last_misses = len(keys) - self.last_hits
        logger.info("feature cache %s: %d items cached, %d to encode", path.name, self.last_hits, self.last_misses)
        outputs = {}
        if missing:
            missing_items = inputs.select(first[missing])
            computed = encode_catalog(run, encoder, missing_items, batch_size, desc=f"encode {kind}")
        for name in ("pooled", "tokens", "mask"):
            outputs[name] = _gather(stored, found, missing, name, getattr(computed, name) if missing else None)
        if missing:
            self._write(path, stored, digests[first], found, outputs)
        return EncoderOutput(*(outputs[name][expand] for name in ("pooled", "tokens", "mask")))

    def _write(self, path: Path, stored, digests, found, outputs) -> None:
        """Stores the current items plus the previously cached items this catalog did not use."""
        tensors = {"digests": digests, **outputs}
        if stored is not None:
            used = torch.zeros(len(stored["digests"]), dtype=torch.bool)
            used[[row for row in found if row is not None]] = True
            tensors = {name: torch.cat([value, stored[name][~used]]) for name, value in tensors.items()}
        atomic_save_tensors(path, tensors)


def _read_tensors(path: Path) -> dict | None:
    """The tensors of a cache file; None when it is missing or damaged (a damaged file is recomputed, never trusted)."""
    if not path.is_file():
        return None
    try:
        return load_file(path)
    except Exception as err:
        logger.warning("cache file %s is unreadable (%s); computing its rows again", path, err)
        return None


def _gather(stored, found, missing, name, computed) -> torch.Tensor:
    """The `name` output of each distinct item: cached rows where found, freshly computed rows at `missing`."""
    hits = [i for i, row in enumerate(found) if row is not None]
    reference = computed if computed is not None else stored[name]
    out = reference.new_zeros((len(found), *reference.shape[1:]))
    if missing:
        out[torch.tensor(missing, dtype=torch.long)] = computed
    if hits:
        out[torch.tensor(hits, dtype=torch.long)] = stored[name][torch.tensor([found[i] for i in hits])]
    return out


class ImageCache:
    """Decoded, resized images kept on disk, so each image file is decoded and resized once across runs.

    `images-<side>px.safetensors` in `folder` holds, for every image seen at that side, the sha256 of the file's
    bytes and its `(3, side, side)` uint8 pixels. A file whose bytes changed has another digest and is decoded
    again; a damaged cache file is ignored and rewritten; writes are atomic (temporary file + rename).

    Args:
        folder (`str` or `os.PathLike`): where the files live (the same folder as a `FeatureCache` is fine).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.last_hits = 0  # images found in the cache by the last `load`
        self.last_misses = 0

    def path(self, side: int) -> Path:
        return self.folder / f"images-{side}px.safetensors"

    def load(self, paths: list[str | None], side: int, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """`(N, 3, side, side)` uint8 pixels and `(N,)` has-image flags for `paths` (None: the item has no image)."""
        from tqdm.auto import tqdm

        from .data.collate import load_image

        path = self.path(side)
        stored = _read_tensors(path)
        rows = {bytes(d.tolist()): i for i, d in enumerate(stored["digests"])} if stored else {}
        pixels = torch.zeros(len(paths), 3, side, side, dtype=torch.uint8)
        has_image = torch.zeros(len(paths), dtype=torch.bool)
        digests = torch.zeros(len(paths), DIGEST_BYTES, dtype=torch.uint8)
        new = {}  # digest -> index of the first item with that image, for images not in the cache
        for i, image in enumerate(tqdm(paths, desc="images", disable=not progress, leave=False)):
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
            elif digest in new:
                pixels[i] = pixels[new[digest]]
            else:
                pixels[i] = load_image(image, side)
                new[digest] = i
        self.last_hits, self.last_misses = int(has_image.sum()) - len(new), len(new)
        logger.info("image cache %s: %d images cached, %d decoded", path.name, self.last_hits, self.last_misses)
        if new:
            first = torch.tensor(list(new.values()), dtype=torch.long)
            tensors = {"digests": digests[first], "pixels": pixels[first]}
            if stored is not None:
                tensors = {name: torch.cat([value, stored[name]]) for name, value in tensors.items()}
            atomic_save_tensors(path, tensors)
        return pixels, has_image
