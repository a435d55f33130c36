"""Turning raw items (`{"item_id", "text", "image"}` records) into model inputs: `ItemProcessor` -> `ItemInputs`."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoints import read_json
from ..errors import CheckpointError
from ..sharding import Shards
from .image_files import ImageCache, load_image

PROCESSOR_FILE = "processor_config.json"
ITEM_VOCAB_FILE = "item_ids.json"


@dataclass
class ItemInputs:
    """Model inputs for N items; every tensor's first dimension is N.

    Attributes:
        item_index (`torch.LongTensor` of shape `(N,)`): row of each item in the model's id vocabulary (`id` tower)
            or `-1` when the item is unknown to it.
        input_ids / attention_mask (`torch.LongTensor` of shape `(N, L)`): tokenized text.
        has_text (`torch.BoolTensor` of shape `(N,)`): False where an item has no text.
        pixel_values (`torch.ByteTensor` of shape `(N, 3, H, W)`): RGB images, uint8 (normalised by the encoder).
        has_image (`torch.BoolTensor` of shape `(N,)`): False where an item has no image.
        text_states / image_states: precomputed outputs of a frozen encoder, used instead of running it.
        text_layers / image_layers: precomputed per-layer states of a frozen encoder (`LayerStates`), read by side
            adapters.
        text_blocks / image_blocks: precomputed states entering the lowest trainable block of an encoder whose
            lower blocks are frozen (`BlockInputs`): the encoder runs from that block on.
    """

    item_index: torch.Tensor
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    has_text: torch.Tensor | None = None
    pixel_values: torch.Tensor | None = None
    has_image: torch.Tensor | None = None
    text_states: object | None = None
    image_states: object | None = None
    text_layers: object | None = None
    image_layers: object | None = None
    text_blocks: object | None = None
    image_blocks: object | None = None

    def __len__(self) -> int:
        return len(self.item_index)

    def select(self, index: torch.Tensor) -> ItemInputs:
        """The inputs of the items at `index` (a LongTensor of rows)."""
        return ItemInputs(**{f.name: _take(getattr(self, f.name), index) for f in fields(self)})

    def to(self, device) -> ItemInputs:
        return ItemInputs(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})

    def with_states(self, text_states=None, image_states=None) -> ItemInputs:
        return replace(self, text_states=text_states, image_states=image_states)


def _take(value, index):
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value[index]
    return value.select(index)  # an EncoderOutput of precomputed states


def _move(value, device):
    return None if value is None else value.to(device)


class ItemProcessor:
    """Turns item records (`{"item_id", "text", "image"}`) into `ItemInputs`.

    Args:
        tokenizer (`PreTrainedTokenizerBase`, *optional*): tokenizer of the text encoder (None: no text tower).
        max_length (`int`): text truncation length in tokens.
        image_size (`int`, *optional*): side of the square images fed to the vision encoder (None: no vision tower).
        item_vocab (`list[str]`, *optional*): item ids known to an `id` tower, in embedding-row order.
    """

    def __init__(self, tokenizer=None, max_length: int = 32, image_size: int | None = None, item_vocab=None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.image_size = image_size
        self.item_vocab = list(item_vocab) if item_vocab is not None else None
        self._vocab_index = {item_id: i for i, item_id in enumerate(self.item_vocab or [])}
        self._backend_key = self._backend_copy = None  # see `_backend`

    def __call__(
        self, records: list[dict], progress: bool = False, image_cache_dir=None, accelerator=None
    ) -> ItemInputs:
        """`ItemInputs` of `records`. With `image_cache_dir`, decoded and resized images are read from (and added
        to) an on-disk `ImageCache` (`mmsr_peft.data.image_files`) there instead of being decoded again. With an
        `accelerator` of several processes, each tokenises its share of the texts and decodes its share of the
        images, and every process gets them all (the same tensors as one process alone)."""
        item_ids = [r["item_id"] for r in records]
        inputs = ItemInputs(
            item_index=torch.tensor([self._vocab_index.get(i, -1) for i in item_ids], dtype=torch.long)
        )
        shards = Shards(accelerator)
        if self.tokenizer is not None:
            texts = [r.get("text") or "" for r in records]
            inputs.input_ids, inputs.attention_mask = self._tokenize(texts, shards)
            inputs.has_text = torch.tensor([bool(t.strip()) for t in texts])
        paths = [record.get("image") for record in records]
        if self.image_size is not None and image_cache_dir is not None:
            cache = ImageCache(image_cache_dir)
            inputs.pixel_values, inputs.has_image = cache.load(paths, self.image_size, progress, shards)
        elif self.image_size is not None:
            inputs.pixel_values, inputs.has_image = self._load_images(paths, shards, progress)
        return inputs

    def _load_images(
        self, paths: list[str | None], shards: Shards, progress: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels and has-image flags of `paths`, this process decoding its share."""
        first, last = shards.range(len(paths))
        pixels = torch.zeros(last - first, 3, self.image_size, self.image_size, dtype=torch.uint8)
        has_image = torch.zeros(last - first, dtype=torch.bool)
        share = paths[first:last]
        for i, image in enumerate(tqdm(share, desc="images", disable=not progress or not shards.is_main, leave=False)):
            if image:
                pixels[i], has_image[i] = load_image(image, self.image_size), True
        return shards.gather(pixels, len(paths)), shards.gather(has_image, len(paths))

    def _tokenize(self, texts: list[str], shards: Shards) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask of `texts`, `(N, max_length)` each, this process tokenising its share."""
        first, last = shards.range(len(texts))
        backend = self._backend()
        if first == last:  # an empty share still joins the gather
            ids = mask = torch.zeros(0, self.max_length, dtype=torch.long)
        elif backend is not None:
            encodings = backend.encode_batch(texts[first:last])
            ids = torch.from_numpy(np.array([e.ids for e in encodings], dtype=np.int64))
            mask = torch.from_numpy(np.array([e.attention_mask for e in encodings], dtype=np.int64))
        else:
            encoded = self.tokenizer(
                texts[first:last],
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            ids, mask = encoded["input_ids"], encoded["attention_mask"]
        return shards.gather(ids, len(texts)), shards.gather(mask, len(texts))

    def _backend(self):
        """A fast tokenizer's Rust tokenizer, set to pad and truncate to `max_length` as `self.tokenizer(...,
        padding="max_length", truncation=True)` does, or None for a slow tokenizer (or one without a padding
        token). Called directly, it gives the same ids without transformers' conversion of every item's encoding to
        Python lists, which costs as much as the tokenizing itself on large catalogs. A copy, so the user's
        tokenizer keeps its settings."""
        tokenizer = self.tokenizer
        if not getattr(tokenizer, "is_fast", False) or tokenizer.pad_token is None:  # the tokenizer's own error
            return None
        key = (id(tokenizer.backend_tokenizer), self.max_length, tokenizer.padding_side, tokenizer.truncation_side)
        if self._backend_key != key:
            backend = copy.deepcopy(tokenizer.backend_tokenizer)
            backend.enable_truncation(self.max_length, direction=tokenizer.truncation_side)
            backend.enable_padding(
                length=self.max_length,
                direction=tokenizer.padding_side,
                pad_id=tokenizer.pad_token_id,
                pad_type_id=tokenizer.pad_token_type_id,
                pad_token=tokenizer.pad_token,
            )
            self._backend_key, self._backend_copy = key, backend
        return self._backend_copy

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        (folder / PROCESSOR_FILE).write_text(
            json.dumps({"max_length": self.max_length, "image_size": self.image_size}, indent=2) + "\n"
        )
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)
        if self.item_vocab is not None:
            (folder / ITEM_VOCAB_FILE).write_text(json.dumps(self.item_vocab) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path, with_tokenizer: bool) -> ItemProcessor:
        from transformers import AutoTokenizer

        folder = Path(folder)
        settings = _read_settings(folder / PROCESSOR_FILE)
        tokenizer = AutoTokenizer.from_pretrained(folder) if with_tokenizer else None
        vocab_path = folder / ITEM_VOCAB_FILE
        item_vocab = _read_item_vocab(vocab_path) if vocab_path.is_file() else None
        return cls(tokenizer, settings["max_length"], settings["image_size"], item_vocab)


# the keys of a `processor_config.json` (all written by `save_pretrained`) and what each must hold
PROCESSOR_KEYS = {"max_length": "an integer >= 1", "image_size": "an integer >= 1, or null (no vision tower)"}


def _read_settings(path: Path) -> dict:
    """A `processor_config.json`: an object with `PROCESSOR_KEYS`, each of the right type, and no other key."""
    settings = read_json(path)
    if not isinstance(settings, dict):
        raise CheckpointError(
            f"{path}: expected a JSON object with keys {list(PROCESSOR_KEYS)}, got {type(settings).__name__} "
            f"{str(settings)[:200]}"
        )
    unknown = sorted(set(settings) - set(PROCESSOR_KEYS))
    missing = [key for key in PROCESSOR_KEYS if key not in settings]
    if unknown or missing:
        problems = [f"{what} keys {keys}" for what, keys in (("unknown", unknown), ("missing", missing)) if keys]
        raise CheckpointError(f"{path}: {', '.join(problems)}; expected exactly the keys {list(PROCESSOR_KEYS)}")
    for key, expected in PROCESSOR_KEYS.items():
        value = settings[key]
        if value is None and key == "image_size":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckpointError(f"{path}: {key} is {value!r}, expected {expected}")
    return settings


def _read_item_vocab(path: Path) -> list:
    """An `item_ids.json`: the item ids of an `id` tower, in embedding-row order (a JSON list)."""
    item_vocab = read_json(path)
    if not isinstance(item_vocab, list):
        raise CheckpointError(f"{path}: expected a JSON list of item ids, got {str(item_vocab)[:200]}")
    return item_vocab
