"""Turning raw items into model inputs, and batches of sequences into unique items + indices into them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..sharding import Shards
from .image_files import ImageCache, load_image  # noqa: F401 (load_image: also imported from here)

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

    def __call__(
        self, records: list[dict], progress: bool = False, image_cache_dir=None, accelerator=None
    ) -> ItemInputs:
        """`ItemInputs` of `records`. With `image_cache_dir`, decoded and resized images are read from (and added
        to) an on-disk `ImageCache` (`mmsr_peft.data.image_files`) there instead of being decoded again. With an
        `accelerator` of several processes, each tokenises its share of the texts and every process gets them all
        (the same tensors as one process alone)."""
        item_ids = [r["item_id"] for r in records]
        inputs = ItemInputs(
            item_index=torch.tensor([self._vocab_index.get(i, -1) for i in item_ids], dtype=torch.long)
        )
        if self.tokenizer is not None:
            texts = [r.get("text") or "" for r in records]
            inputs.input_ids, inputs.attention_mask = self._tokenize(texts, Shards(accelerator))
            inputs.has_text = torch.tensor([bool(t.strip()) for t in texts])
        if self.image_size is not None and image_cache_dir is not None:
            paths = [record.get("image") for record in records]
            inputs.pixel_values, inputs.has_image = ImageCache(image_cache_dir).load(paths, self.image_size, progress)
        elif self.image_size is not None:
            pixels = torch.zeros(len(records), 3, self.image_size, self.image_size, dtype=torch.uint8)
            has_image = torch.zeros(len(records), dtype=torch.bool)
            for i, record in enumerate(tqdm(records, desc="images", disable=not progress, leave=False)):
                if record.get("image"):
                    pixels[i] = load_image(record["image"], self.image_size)
                    has_image[i] = True
            inputs.pixel_values, inputs.has_image = pixels, has_image
        return inputs

    def _tokenize(self, texts: list[str], shards: Shards) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask of `texts`, `(N, max_length)` each, this process tokenising its share."""
        first, last = shards.range(len(texts))
        if first < last:
            encoded = self.tokenizer(
                texts[first:last],
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            ids, mask = encoded["input_ids"], encoded["attention_mask"]
        else:  # an empty share still joins the gather
            ids = mask = torch.zeros(0, self.max_length, dtype=torch.long)
        return shards.gather(ids, len(texts)), shards.gather(mask, len(texts))

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
        settings = json.loads((folder / PROCESSOR_FILE).read_text())
        tokenizer = AutoTokenizer.from_pretrained(folder) if with_tokenizer else None
        vocab_path = folder / ITEM_VOCAB_FILE
        item_vocab = json.loads(vocab_path.read_text()) if vocab_path.is_file() else None
        return cls(tokenizer, settings["max_length"], settings["image_size"], item_vocab)


def pad_histories(histories: list[np.ndarray]) -> torch.Tensor:
    """Right-pads index sequences with -1 into a `(B, T)` LongTensor (T = longest sequence)."""
    length = max(1, max(len(h) for h in histories))
    out = torch.full((len(histories), length), -1, dtype=torch.long)
    for row, history in enumerate(histories):
        out[row, : len(history)] = torch.as_tensor(history, dtype=torch.long)
    return out


@dataclass
class TrainBatch:
    """One training batch. `items` holds each distinct item of the batch once; the other tensors index it.

    Attributes:
        items (`ItemInputs` of N unique items): the positives of the batch plus sampled negatives.
        inputs (`torch.LongTensor` of shape `(B, T)`): history items as rows of `items`, -1 for padding.
        targets (`torch.LongTensor` of shape `(B, T)`): the next item at every position, -1 where none.
        negatives (`torch.LongTensor` of shape `(B, T)`, *optional*): one sampled negative per position (`bce`).
        logq (`torch.FloatTensor` of shape `(N,)`, *optional*): log probability that each candidate is among the
            step's candidates (`sampled_softmax`'s correction, see `log_inclusion`).
        catalog_rows (`torch.LongTensor` of shape `(N,)`, *optional*): each item's row in the catalog (with a
            negative table).
        from_table (`torch.BoolTensor` of shape `(N,)`, *optional*): True for the items that are only sampled
            negatives, which a negative table scores instead of the encoders.
    """

    items: ItemInputs
    inputs: torch.Tensor
    targets: torch.Tensor
    negatives: torch.Tensor | None = None
    logq: torch.Tensor | None = None
    catalog_rows: torch.Tensor | None = None
    from_table: torch.Tensor | None = None

    def to(self, device) -> TrainBatch:
        return TrainBatch(*(None if v is None else v.to(device) for v in self.__dict__.values()))


class TrainCollator:
    """Collates training sequences (each `max_len + 1` items at most) into a `TrainBatch` for `loss`.

    Every distinct item of the batch is encoded once. `sampled_softmax` adds `num_negatives` catalog items drawn
    uniformly to the candidates, with each candidate's log inclusion probability (`log_inclusion`; from
    `item_counts`, the items' frequencies in the training data; no correction without them); `full_ce` makes the
    whole catalog the candidates; `bce` draws one uniform negative per position.

    `candidates` (catalog indices, *optional*) restricts negatives (and `full_ce`'s softmax) to those items: with a
    cold-start split, the cold items must never enter training, not even as negatives.

    With `negative_table`, each batch also says which items are only sampled negatives (`from_table`) and where
    each item is in the catalog (`catalog_rows`), so the model can score those from a table of embeddings.
    """

    def __init__(
        self,
        catalog_inputs: ItemInputs,
        loss: str = "sampled_softmax",
        num_negatives: int = 0,
        item_counts=None,
        seed=0,
        candidates=None,
        negative_table: bool = False,
    ):
        if negative_table and loss == "full_ce":
            raise ValueError("a negative table scores sampled negatives; the full_ce loss samples none")
        self.negative_table = negative_table
        self.catalog_inputs = catalog_inputs
        self.loss = loss
        self.num_negatives = num_negatives
        self.seed = seed
        self.candidates = None
        if candidates is not None:
            candidates = np.unique(np.asarray(candidates, dtype=np.int64))
            if not len(candidates):
                raise ValueError("candidates is empty: training needs at least one item to draw negatives from")
            if candidates[0] < 0 or candidates[-1] >= len(catalog_inputs):
                raise ValueError(
                    f"candidates must be catalog indices in [0, {len(catalog_inputs)}), got indices from "
                    f"{candidates[0]} to {candidates[-1]}"
                )
            self.candidates = torch.as_tensor(candidates)
            # full_ce's candidates: catalog index -> row of `candidate_inputs`, -1 for an excluded item
            self.candidate_rows = torch.full((len(catalog_inputs),), -1, dtype=torch.long)
            self.candidate_rows[self.candidates] = torch.arange(len(self.candidates))
            if loss == "full_ce":
                self.candidate_inputs = catalog_inputs.select(self.candidates)
        self.batch_index = 0  # negatives of batch i come from (seed, i): a resumed run draws the same ones
        self.item_share = None
        if item_counts is not None:
            counts = torch.as_tensor(item_counts, dtype=torch.float64)
            self.item_share = counts / counts.sum()

    def __call__(self, sequences: list[np.ndarray]) -> TrainBatch:
        padded = pad_histories(sequences)  # (B, T + 1)
        valid = padded >= 0
        num_items = len(self.catalog_inputs)
        if self.candidates is not None:
            items = padded[valid]
            outside = self.candidate_rows[items] < 0
            if outside.any():
                item = int(items[outside][0])
                raise ValueError(f"training sequences hold catalog item {item}, which is not among the candidates")
        if self.loss == "full_ce":
            if self.candidates is None:
                return TrainBatch(self.catalog_inputs, inputs=padded[:, :-1], targets=padded[:, 1:])
            rows = torch.where(valid, self.candidate_rows[padded.clamp(min=0)], -1)
            return TrainBatch(self.candidate_inputs, inputs=rows[:, :-1], targets=rows[:, 1:])
        rng = np.random.default_rng([*np.atleast_1d(self.seed), self.batch_index])
        self.batch_index += 1
        pool = num_items if self.candidates is None else len(self.candidates)
        extra = torch.as_tensor(rng.integers(0, pool, padded.shape if self.loss == "bce" else self.num_negatives))
        if self.candidates is not None:
            extra = self.candidates[extra]
        unique, inverse = torch.unique(torch.cat([padded[valid], extra.flatten()]), return_inverse=True)
        rows = torch.full_like(padded, -1)
        rows[valid] = inverse[: int(valid.sum())]
        batch = TrainBatch(self.catalog_inputs.select(unique), inputs=rows[:, :-1], targets=rows[:, 1:])
        if self.negative_table:
            batch.catalog_rows = unique
            batch.from_table = torch.ones(len(unique), dtype=torch.bool)
            batch.from_table[inverse[: int(valid.sum())]] = False  # the batch's own items go through the encoders
        if self.loss == "bce":
            batch.negatives = inverse[int(valid.sum()) :].view(padded.shape)[:, 1:]
        elif self.item_share is not None:
            batch.logq = log_inclusion(self.item_share[unique], int(valid.sum()), self.num_negatives, pool).float()
        return batch


def log_inclusion(share: torch.Tensor, positions: int, num_negatives: int, pool: int) -> torch.Tensor:
    """Log probability that each item is among a step's deduplicated candidates: the `positions` items of the
    batch, taken as draws from the items' training shares, plus `num_negatives` uniform draws from `pool` items.

    The candidates are unique, so the logQ correction is the log of the probability that an item is *included*,
    `1 - (1 - share)^positions (1 - 1/pool)^num_negatives`, not of its expected count (which exceeds 1 for
    popular items and would push their logits down by more than sampling explains).
    """
    log_miss = positions * torch.log1p(-share.double())  # (N,)
    if num_negatives:
        log_miss = log_miss + num_negatives * math.log1p(-1 / pool)
    # an item with no share and no negative draws cannot be included: keep its log finite
    return (-torch.expm1(log_miss)).clamp_min(torch.finfo(torch.float64).tiny).log()
