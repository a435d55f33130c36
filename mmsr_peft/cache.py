"""On-disk cache of frozen encoder outputs, so a frozen encoder runs over each item once across epochs and runs.

One safetensors file per encoder and kind of output: `<kind>-<encoder digest[:16]>.safetensors` (the digest of the
encoder's weights, its configuration, pooling included, and `OUTPUT_VERSION`: `encoder_digest`) holds,
for every item encoded so far, the sha256 of exactly what the encoder read (token ids and mask, or uint8 pixels)
and the encoder's output (`text`, `image`: `pooled`, `tokens`, `mask`; `text_pooled`, `image_pooled`: the pooled
vector alone, as a one-token output, for models that read no token states; `text_layers`, `image_layers`: the
per-layer states that side adapters read). Loading keeps the rows whose content digest matches an item of the
catalog and encodes only the others, so:

- other weights (a different base, a fine-tuned encoder) or another pooling use another file: nothing stale is
  ever read;
- an item whose text, image, tokenizer or image size changed has another digest and is encoded again;
- items are matched by content, not by id or position, so catalogs that share items share the work.

Files are written through a temporary file and a rename: a reader sees the old file or the new one. Under several
processes (an Accelerate run), each process encodes its share of the missing items, every process gets them all,
and the main process alone writes the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.image_files import DIGEST_BYTES, ImageCache, digest_keys  # noqa: F401 (ImageCache: its old home)
from .data.processing import ItemInputs
from .encoders import EncoderOutput, LayerStates
from .files import atomic_save_tensors, read_tensors
from .sharding import Shards

logger = logging.getLogger(__name__)


# Raised when the outputs of an encoder with the same weights and configuration change meaning, so that files of
# older versions are not read: 2, CLIP text's `cls` pooling reads its end-of-text token (it read the first token).
OUTPUT_VERSION = 2


def encoder_digest(encoder: torch.nn.Module) -> str:
    """sha256 of what decides an encoder's outputs for given inputs: its weights (`weights_digest`), its
    configuration (`encoder.config`: pooling, normalisation, ...), which of its loaded LoRA adapters run
    (`adapter_state`) and `OUTPUT_VERSION`."""
    config = getattr(encoder, "config", None)
    settings = config.to_dict() if hasattr(config, "to_dict") else {"config": repr(config)}
    settings.pop("source", None)  # where the architecture was read from (a Hub name or a path): provenance only
    adapters = adapter_state(encoder)
    if adapters:  # absent without adapters: a plain encoder keeps the file it had
        settings["adapters"] = adapters
    described = json.dumps(settings, sort_keys=True)
    text = f"{weights_digest(encoder)};{described};{OUTPUT_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()


def adapter_state(module: torch.nn.Module) -> list:
    """For each peft adapter layer inside `module`: its name, the adapters it runs (none when disabled) and their
    scaling. Every loaded adapter's weights are in the state dict whichever one runs, so the weights alone do not
    tell `set_adapter("a")` from `set_adapter("b")` or `disable_adapters()`."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [
        [name, [] if layer.disable_adapters else list(layer.active_adapters), getattr(layer, "scaling", {})]
        for name, layer in module.named_modules()
        if isinstance(layer, BaseTunerLayer)
    ]


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
    if not len(inputs):  # an empty share of a sharded catalog
        return torch.empty(0, DIGEST_BYTES, dtype=torch.uint8)
    # each item's bytes, part after part, in one row: the digest of a row is that of its parts fed in turn
    rows = np.concatenate(
        [part.reshape(len(inputs), -1).cpu().contiguous().view(torch.uint8).numpy() for part in parts], axis=1
    )
    digests = b"".join(hashlib.sha256(row).digest() for row in rows)
    return torch.frombuffer(bytearray(digests), dtype=torch.uint8).reshape(len(inputs), DIGEST_BYTES)


class FeatureCache:
    """The cache folder. `encode(kind, encoder, run, inputs)` returns the encoder's outputs for `inputs`, reading
    the rows it has and computing (then storing) the others; `encode_together` does so for several kinds that one
    pass of the encoder gives (its output and its per-layer states). Kinds `text`, `image`, `text_pooled` and
    `image_pooled` hold `EncoderOutput`s, `text_layers` and `image_layers` hold `LayerStates`.

    Args:
        folder (`str` or `os.PathLike`): where the files live; created when first written.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.last_hits = 0  # items found in the cache by the last `encode`
        self.last_misses = 0

    def paths(self, kinds: tuple[str, ...], encoder: torch.nn.Module) -> list[Path]:
        """The files of several kinds of one encoder's outputs (its weights hashed once for all of them)."""
        digest = encoder_digest(encoder)[:16]
        return [self.folder / f"{kind}-{digest}.safetensors" for kind in kinds]

    def encode(
        self, kind: str, encoder: torch.nn.Module, run, inputs: ItemInputs, batch_size: int, accelerator=None
    ) -> EncoderOutput | LayerStates:
        """`run(inputs)` is the encoder's forward on an `ItemInputs` batch (e.g. `ItemTower.encode_text`); with
        `accelerator`, its processes share the encoding and its main process writes the file."""
        return self.encode_together((kind,), encoder, lambda items: (run(items),), inputs, batch_size, accelerator)[0]

    def encode_together(
        self,
        kinds: tuple[str, ...],
        encoder: torch.nn.Module,
        run,
        inputs: ItemInputs,
        batch_size: int,
        accelerator=None,
    ) -> tuple:
        """`encode` for several kinds of output of one pass of the encoder (e.g. `("text", "text_layers")`: its
        output and its per-layer states), `run` giving one per kind: an item missing from any of their files runs
        through the encoder once for all of them."""
        modality = {kind.partition("_")[0] for kind in kinds}
        if len(modality) != 1:
            raise ValueError(f"kinds of one encoder's outputs share its modality, got {kinds}")
        shards = Shards(accelerator)  # each process hashes its share of the items
        start, stop = shards.range(len(inputs))
        own = content_digests(inputs.select(torch.arange(start, stop)), modality.pop())
        digests = shards.gather(own, len(inputs))  # of what the text or image encoder reads
        keys = digest_keys(digests)
        position, first = {}, []  # items with identical content (e.g. no text) are encoded once
        for i, key in enumerate(keys):
            if key not in position:
                position[key] = len(first)
                first.append(i)
        distinct = [keys[i] for i in first]
        first = torch.tensor(first, dtype=torch.long)
        expand = torch.tensor([position[key] for key in keys], dtype=torch.long)
        paths = self.paths(kinds, encoder)
        stored = [read_tensors(path) for path in paths]
        found = []  # per kind: each distinct item's row in that kind's file, or None
        for tensors in stored:
            rows = {key: i for i, key in enumerate(digest_keys(tensors["digests"]))} if tensors else {}
            found.append([rows.get(key) for key in distinct])
        missing = [i for i in range(len(distinct)) if any(rows[i] is None for rows in found)]
        if shards.count > 1 and not shards.all_equal(_fingerprint(missing)):
            # the processes would share out different items and wait on each other for ever
            raise ValueError(
                f"feature cache {paths[0]}: the processes of this run do not find the same items in it (this one "
                f"finds {len(distinct) - len(missing)} of {len(distinct)}); --feature_cache_dir must be one folder "
                "that every machine of the run shares (or none), and not written by another run meanwhile"
            )
        cached = torch.ones(len(distinct), dtype=torch.bool)
        cached[missing] = False
        self.last_hits = int(cached[expand].sum())
        self.last_misses = len(keys) - self.last_hits
        logger.info(
            "feature cache %s: %d items cached, %d to encode",
            ", ".join(path.name for path in paths),
            self.last_hits,
            self.last_misses,
        )
        computed = (None,) * len(kinds)
        if missing:
            desc = f"encode {' and '.join(kinds)}"
            computed = encode_catalog(run, encoder, inputs.select(first[missing]), batch_size, desc, accelerator)
        where = {item: j for j, item in enumerate(missing)}  # row of each encoded item in `computed`
        results = []
        for kind, path, tensors, rows, output in zip(kinds, paths, stored, found, computed, strict=True):
            output_type = LayerStates if kind.endswith("_layers") else EncoderOutput
            lacking = [i for i in missing if rows[i] is None]  # missing from this kind's file
            if lacking and len(lacking) < len(missing):  # the pass also encoded items that this file has
                output = output.select(torch.tensor([where[i] for i in lacking], dtype=torch.long))
            outputs = {
                name: _gather(tensors, rows, lacking, name, getattr(output, name) if lacking else None)
                for name in _fields(output_type)
            }
            if lacking and shards.is_main:
                self._write(path, tensors, digests[first], rows, outputs)
            results.append(output_type(*(outputs[name][expand] for name in _fields(output_type))))
        return tuple(results)

    def _write(self, path: Path, stored, digests, found, outputs) -> None:
        """Stores the current items plus the previously cached items this catalog did not use."""
        tensors = {"digests": digests, **outputs}
        if stored is not None:
            used = torch.zeros(len(stored["digests"]), dtype=torch.bool)
            used[[row for row in found if row is not None]] = True
            tensors = {name: torch.cat([value, stored[name][~used]]) for name, value in tensors.items()}
        atomic_save_tensors(path, tensors)


def _fingerprint(rows: list[int]) -> torch.Tensor:
    """`(32,)` uint8 sha256 of a list of row numbers, to compare it across processes."""
    return torch.frombuffer(bytearray(hashlib.sha256(repr(rows).encode()).digest()), dtype=torch.uint8)


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


@torch.no_grad()
def encode_catalog(run, encoder, inputs: ItemInputs, batch_size: int, desc: str = "encode", accelerator=None) -> tuple:
    """`run` (an encoder's forward on `ItemInputs`, giving a tuple of `EncoderOutput`s or `LayerStates` from one
    pass) over `inputs` in batches, in eval mode, gathered on the CPU: the tuple, for all of `inputs`. With
    `accelerator`, each process encodes a contiguous share and every process gets the whole, in order."""
    shards = Shards(accelerator)
    first, last = shards.range(len(inputs))
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device

    def encode(rows: torch.Tensor) -> tuple:  # each batch's parts kept without the states they were read from
        return tuple(part.to("cpu").compact() for part in run(inputs.select(rows).to(device)))

    chunks = [
        encode(torch.arange(i, min(i + batch_size, last)))
        for i in tqdm(range(first, last, batch_size), desc=desc, leave=False, disable=not shards.is_main)
    ]
    if not chunks:  # a process whose share is empty still joins the gather: no rows, with the shapes `run` gives
        chunks = [tuple(part.select(torch.arange(0)) for part in encode(torch.arange(1)))]
    encoder.train(was_training)
    own = tuple(type(parts[0]).cat(list(parts)) for parts in zip(*chunks, strict=True))
    if shards.count > 1:
        own = tuple(
            type(part)(*(shards.gather(getattr(part, name), len(inputs)) for name in _fields(part))) for part in own
        )
    return own


def _fields(output) -> list[str]:
    """The tensors an `EncoderOutput` or `LayerStates` (class or instance) is made of, in constructor order."""
    return [f.name for f in dataclasses.fields(output)]
