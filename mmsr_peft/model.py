"""MMSRModel: item tower (text encoder + vision encoder + fusion, or an ID table) and a sequence encoder."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import adapters
from .config import ConfigMixin
from .data.catalog import Catalog
from .data.collate import PROCESSOR_FILE, ItemInputs, ItemProcessor, pad_histories
from .encoders import EncoderOutput, LayerStates, TextEncoder, TextEncoderConfig, VisionEncoder, VisionEncoderConfig
from .errors import CheckpointError
from .evaluation import chunked_topk, with_item_bias
from .fusion import FusionConfig, ModalityProjection, build_fusion
from .io import atomic_directory, check_finite, is_local_path
from .losses import LOSSES, bce_loss, softmax_loss
from .sequence import SEQUENCE_CLASSES, SequenceEncoderConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PICKLE_FILES = ("pytorch_model.bin", "model.pt", "model.pth")
SIMILARITIES = ("cosine", "dot")
ITEM_TOWERS = ("modal", "text", "image", "id")
REQUIRED_CONFIG_KEYS = ("item_tower", "hidden_size", "fusion", "sequence")  # the architecture; the rest has defaults


@dataclass
class MMSRConfig(ConfigMixin):
    """Architecture of an MMSR model (run arguments such as learning rate or data live elsewhere).

    Args:
        item_tower (`str`): how items are embedded: `"modal"` (text + image, fused), `"text"`, `"image"`, or `"id"`
            (a learned embedding per item id: the ID-based baseline, which cannot rank unseen items).
        hidden_size (`int`): width D of item and user embeddings.
        text (`TextEncoderConfig`, *optional*): the text encoder (needed by `modal` and `text`).
        vision (`VisionEncoderConfig`, *optional*): the vision encoder (needed by `modal` and `image`).
        fusion (`FusionConfig`): how text and image are fused (`modal` only).
        sequence (`SequenceEncoderConfig`): the sequence encoder.
        num_items (`int`): size of the item-id table (`id` only).
        similarity (`str`): how a user state scores an item: `"cosine"` (both L2-normalised; ours) or `"dot"` (the raw
            inner product, as in the MMSR paper, whose BCE loss reads it at temperature 1).
        temperature (`float`): scores (`similarity`) are divided by this in the training loss.
        loss (`str`): training loss: `"sampled_softmax"` (batch items + uniform negatives, logQ-corrected),
            `"full_ce"` (softmax over the whole catalog) or `"bce"` (one sampled negative per position).
        itc_weight (`float`): weight of an auxiliary image-text contrastive loss (ALBEF's ITC) between each item's
            text and image during training (`modal` only; 0 turns it off).
        feature_dropout (`float`): dropout on the encoders' outputs (pooled vectors and token states) before the
            fusion or projection, in training only. The pretrained features are wider than a catalog is long (MiniLM
            384 + MobileNetV2 1280 dimensions for 1682 MovieLens movies), so without it the first linear layer can
            learn a lookup table of the training items, and items it never saw (cold start) rank at the bottom.
        new_item_boost (`float`): added to the score of every item without training interactions (new
            arrivals) when ranking: by `evaluate` (items whose training count is 0) and by `recommend(new_items=...)`.
            The model learns popularity, which new items cannot have; the boost is their prior, bought with accuracy
            on known items (see docs/adaptation.md, cold start). 0: off.
    """

    item_tower: str = "modal"  # "modal" | "text" | "image" | "id"
    hidden_size: int = 64  # width of item and user embeddings
    text: TextEncoderConfig | None = None  # text encoder (modal, text)
    vision: VisionEncoderConfig | None = None  # vision encoder (modal, image)
    fusion: FusionConfig = field(default_factory=FusionConfig)  # fusion module (modal)
    sequence: SequenceEncoderConfig = field(default_factory=SequenceEncoderConfig)  # sequence encoder
    num_items: int = 0  # id table size (id)
    similarity: str = "cosine"  # "cosine" | "dot": the score of an item for a user state
    temperature: float = 0.07  # divides the scores in the training loss
    loss: str = "sampled_softmax"  # "sampled_softmax" | "full_ce" | "bce" (see mmsr_peft/losses.py)
    itc_weight: float = 0.0  # weight of the image-text contrastive auxiliary loss (modal only; 0: off)
    feature_dropout: float = 0.0  # dropout on the encoders' outputs in training (content towers; 0: off)
    new_item_boost: float = 0.0  # added to the score of items without training interactions (0: off)

    def __post_init__(self):
        if self.item_tower not in ITEM_TOWERS:
            raise ValueError(f"item_tower must be one of {ITEM_TOWERS}, got {self.item_tower!r}")
        if self.item_tower in ("modal", "text") and self.text is None:
            raise ValueError(f"item_tower={self.item_tower!r} needs a text encoder config (`text`)")
        if self.item_tower in ("modal", "image") and self.vision is None:
            raise ValueError(f"item_tower={self.item_tower!r} needs a vision encoder config (`vision`)")
        if self.item_tower == "id" and self.num_items < 1:
            raise ValueError(f"item_tower='id' needs num_items >= 1, got {self.num_items}")
        if self.itc_weight < 0 or (self.itc_weight > 0 and self.item_tower != "modal"):
            raise ValueError(f"itc_weight must be >= 0 and needs item_tower='modal', got {self.itc_weight}")
        if not 0 <= self.feature_dropout < 1 or (self.feature_dropout and self.item_tower == "id"):
            raise ValueError(
                f"feature_dropout must be in [0, 1) and needs a content item tower, got {self.feature_dropout}"
            )
        if self.new_item_boost < 0:
            raise ValueError(f"new_item_boost must be >= 0, got {self.new_item_boost}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.sequence.type == "sasrec" and self.hidden_size % self.sequence.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by sequence.num_heads {self.sequence.num_heads}: "
                "SASRec's attention splits the width across its heads"
            )
        if self.hidden_size < 1 or self.temperature <= 0:
            raise ValueError(
                f"hidden_size must be >= 1 and temperature > 0, got {self.hidden_size}, {self.temperature}"
            )

    @property
    def uses_text(self) -> bool:
        return self.item_tower in ("modal", "text")

    @property
    def uses_vision(self) -> bool:
        return self.item_tower in ("modal", "image")


@dataclass
class MMSROutput:
    """Output of `MMSRModel.forward`.

    Attributes:
        loss (`torch.FloatTensor` scalar, *optional*): softmax cross-entropy of each target against the batch's items.
        item_embeddings (`torch.FloatTensor` of shape `(N, D)`): L2-normalised embeddings of the batch's items.
        sequence_output (`torch.FloatTensor` of shape `(B, T, D)`): L2-normalised user state after each position.
    """

    loss: torch.Tensor | None
    item_embeddings: torch.Tensor
    sequence_output: torch.Tensor


@dataclass
class Recommendations:
    """Top-k items per history: `item_ids[b]` are ids of the catalog, best first; `scores` is `(B, k)`."""

    item_ids: list[list[str]]
    scores: torch.Tensor


class ItemTower(nn.Module):
    """Embeds items from their content (or their id, for the `id` baseline)."""

    def __init__(self, config: MMSRConfig):
        super().__init__()
        self.config = config
        self.text = TextEncoder(config.text) if config.uses_text else None
        self.vision = VisionEncoder(config.vision) if config.uses_vision else None
        d = config.hidden_size
        if config.item_tower == "id":
            self.embedding = nn.Embedding(config.num_items, d)
        elif config.item_tower == "text":
            self.head = ModalityProjection(self.text.hidden_size, d)
        elif config.item_tower == "image":
            self.head = ModalityProjection(self.vision.hidden_size, d)
        else:
            text_dims = (self.text.hidden_size, self.text.hidden_size)
            image_dims = (self.vision.hidden_size, self.vision.token_size)
            self.fusion = build_fusion(config.fusion, text_dims, image_dims, d)
            if config.itc_weight > 0:  # heads of the image-text contrastive auxiliary loss
                self.itc_text = nn.Linear(self.text.hidden_size, d)
                self.itc_image = nn.Linear(self.vision.hidden_size, d)
        self.side_adapters = nn.ModuleDict()  # side adapters by name (`AdapterMixin` manages them)
        self.active_side: str | None = None

    def encode_text(self, items: ItemInputs) -> EncoderOutput:
        return items.text_states if items.text_states is not None else self.text(items.input_ids, items.attention_mask)

    def encode_image(self, items: ItemInputs) -> EncoderOutput:
        return items.image_states if items.image_states is not None else self.vision(items.pixel_values)

    def content(self, items: ItemInputs) -> tuple[EncoderOutput | None, EncoderOutput | None]:
        """What the heads read: the text and image encodings (None for a modality the tower does not use), with
        `feature_dropout` in training. (`encode_text` / `encode_image` stay deterministic: they fill caches.)"""
        text = self.encode_text(items) if self.config.uses_text else None
        image = self.encode_image(items) if self.config.uses_vision else None
        if not (self.training and self.config.feature_dropout):
            return text, image
        return _dropped(text, self.config.feature_dropout), _dropped(image, self.config.feature_dropout)

    def alignment_loss(self, items: ItemInputs) -> torch.Tensor:
        """Image-text contrastive loss of the items that have both modalities (ALBEF's ITC): each item's text must
        pick its own image among the batch's, and back."""
        text, image = self.encode_text(items), self.encode_image(items)
        both = items.has_text & items.has_image
        if int(both.sum()) < 2:
            return text.pooled.sum() * 0.0
        t = F.normalize(self.itc_text(text.pooled[both]), dim=-1)
        v = F.normalize(self.itc_image(image.pooled[both]), dim=-1)
        logits = t @ v.T / self.config.temperature  # (M, M): the diagonal pairs are the positives
        labels = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits.float(), labels) + F.cross_entropy(logits.T.float(), labels)) / 2

    def forward(self, items: ItemInputs) -> torch.Tensor:
        mode = self.config.item_tower
        if mode == "id":
            if (items.item_index < 0).any():
                raise ValueError("the id tower cannot embed items outside the vocabulary it was trained on")
            return self.embedding(items.item_index)
        side = self.side_adapters[self.active_side] if self.active_side is not None else None
        if side is not None:
            items = self.with_layer_states(items)
        text, image = self.content(items)
        if mode == "text":
            embeddings = self.head(text, items.has_text)
        elif mode == "image":
            embeddings = self.head(image, items.has_image)
        else:
            embeddings = self.fusion(text, image, items.has_text, items.has_image)
        if side is None:
            return embeddings
        text_layers, image_layers = (None if s is None else s.states for s in (items.text_layers, items.image_layers))
        return embeddings + side(text_layers, image_layers, items.has_text, items.has_image)

    def with_layer_states(self, items: ItemInputs) -> ItemInputs:
        """`items` with each encoder's per-layer states (and its output, if missing) attached, from one pass of the
        encoder where they were not precomputed."""
        updates = {}
        for modality, encoder in (("text", self.text), ("image", self.vision)):
            if encoder is None or getattr(items, f"{modality}_layers") is not None:
                continue
            output, updates[f"{modality}_layers"] = self.encode_layers(items, modality)
            if getattr(items, f"{modality}_states") is None:
                updates[f"{modality}_states"] = output
        return replace(items, **updates) if updates else items

    def encode_layers(self, items: ItemInputs, modality: str) -> tuple[EncoderOutput, LayerStates]:
        """One pass of the `modality` (`"text"` or `"image"`) encoder: its output and its per-layer states."""
        if modality == "text":
            inputs, encoder = (items.input_ids, items.attention_mask), self.text
        else:
            inputs, encoder = (items.pixel_values,), self.vision
        if inputs[0] is None:
            raise ValueError(f"the side adapter needs the {modality} encoder's layer states or its inputs")
        output, layers = encoder.encode_layers(*inputs)
        return output, LayerStates.from_layers(layers)


def _dropped(states: EncoderOutput | None, p: float) -> EncoderOutput | None:
    return (
        None
        if states is None
        else EncoderOutput(F.dropout(states.pooled, p), F.dropout(states.tokens, p), states.mask)
    )


class MMSRModel(nn.Module, adapters.AdapterMixin):
    """An ID-agnostic multi-modal sequential recommender.

    Items are embedded by `item_tower` from their text and image; a history of item embeddings is read by the
    sequence encoder; the user state after the last item scores every candidate by cosine similarity (or, as in the paper, the dot product: `similarity`).

    Args:
        config (`MMSRConfig`): the architecture.
        processor (`ItemProcessor`, *optional*): turns item records into inputs (tokenizer, image size, id vocab);
            needed by `recommend` and saved with the model.
    """

    def __init__(self, config: MMSRConfig, processor: ItemProcessor | None = None):
        super().__init__()
        self.config = config
        self.processor = processor
        self.item_tower = ItemTower(config)
        self.sequence_encoder = SEQUENCE_CLASSES[config.sequence.type](config.sequence, config.hidden_size)
        self.name_or_path: str | None = None
        self.base_fingerprint: str | None = None  # sha256 of the model.safetensors it was loaded from / saved to

    def gradient_checkpointing_enable(self) -> None:
        """Gradient checkpointing in the text and vision encoders: less activation memory, one more forward."""
        for encoder in (self.item_tower.text, self.item_tower.vision):
            if encoder is not None:
                encoder.gradient_checkpointing_enable()

    def _scoring(self, vectors: torch.Tensor) -> torch.Tensor:
        """`vectors` as they enter a score: L2-normalised under cosine similarity, unchanged under dot."""
        return F.normalize(vectors, dim=-1) if self.config.similarity == "cosine" else vectors

    def embed_items(self, items: ItemInputs) -> torch.Tensor:
        """`(N, D)` item embeddings (L2-normalised under cosine similarity)."""
        return self._scoring(self.item_tower(items))

    def encode_sequences(self, item_embeddings: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
        """User state after each position: `(B, T, D)` (L2-normalised under cosine similarity).

        Args:
            item_embeddings: `(N, D)`; histories: `(B, T)` rows of `item_embeddings`, right-padded with -1.
        """
        return self._scoring(self.sequence_encoder(_history_states(item_embeddings, histories)))

    def user_embeddings(self, item_embeddings: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
        """`(B, D)`: the state after the last real item of each history (only that position is computed where
        the sequence encoder can skip the others)."""
        last = (histories >= 0).sum(1).clamp(min=1) - 1  # (B,)
        states = self.sequence_encoder.last_states(_history_states(item_embeddings, histories), last)
        return self._scoring(states)

    def forward(
        self,
        items: ItemInputs,
        inputs: torch.Tensor,
        targets: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
        logq: torch.Tensor | None = None,
        catalog_rows: torch.Tensor | None = None,
        from_table: torch.Tensor | None = None,
        item_table: torch.Tensor | None = None,
    ) -> MMSROutput:
        """Next-item prediction at every position (a `TrainBatch` holds these arguments).

        Args:
            items (`ItemInputs`): the N distinct items of the batch (each encoded once).
            inputs (`torch.LongTensor` of shape `(B, T)`): histories as rows of `items`, -1 for padding.
            targets (`torch.LongTensor` of shape `(B, T)`, *optional*): next item at every position, -1 to ignore.
            negatives (`torch.LongTensor` of shape `(B, T)`, *optional*): one negative per position (`bce` loss).
            logq (`torch.FloatTensor` of shape `(N,)`, *optional*): logQ correction (`sampled_softmax` loss).
            catalog_rows, from_table, item_table: with a negative table (`--negative_table`), the items where
                `from_table` is True are not encoded: their embeddings are rows `catalog_rows` of `item_table`
                (`(catalog size, D)`, from `embed_catalog`, no gradient).
        """
        table = item_table is not None and from_table is not None and bool(from_table.any())
        if table:  # the batch's own items go through the item tower; the negatives that are only negatives do not
            encoded, looked_up = torch.nonzero(~from_table).squeeze(1), torch.nonzero(from_table).squeeze(1)
            items = items.select(encoded)
        alignment = None
        if targets is not None and self.config.itc_weight > 0:
            tower = self.item_tower
            items = items.with_states(tower.encode_text(items), tower.encode_image(items))  # encode once for both
            alignment = tower.alignment_loss(items)
        item_embeddings = self.embed_items(items)  # (N, D)
        if table:
            rows = item_table[catalog_rows[looked_up]].to(item_embeddings.dtype)
            order = torch.argsort(torch.cat([encoded, looked_up]))  # back to the batch's item order
            item_embeddings = torch.cat([item_embeddings, rows])[order]
        sequence_output = self.encode_sequences(item_embeddings, inputs)  # (B, T, D)
        loss = None
        if targets is not None and self.config.loss == "bce":
            if negatives is None:
                raise ValueError("the bce loss needs one negative per position (`negatives`)")
            loss = bce_loss(sequence_output, item_embeddings, targets, negatives, self.config.temperature)
        elif targets is not None:
            loss = softmax_loss(sequence_output, item_embeddings, targets, self.config.temperature, logq)
        if alignment is not None:
            loss = loss + self.config.itc_weight * alignment
        return MMSROutput(loss, item_embeddings, sequence_output)

    @torch.no_grad()
    def embed_catalog(self, catalog_inputs: ItemInputs, batch_size: int = 256) -> torch.Tensor:
        """`(N, D)` embeddings of a whole catalog, computed in chunks."""
        device = next(self.parameters()).device
        chunks = []
        for start in range(0, len(catalog_inputs), batch_size):
            index = torch.arange(start, min(start + batch_size, len(catalog_inputs)))
            chunks.append(self.embed_items(catalog_inputs.select(index).to(device)).float())
        return torch.cat(chunks)

    @torch.no_grad()
    def recommend(
        self,
        histories: list[list[str]],
        catalog: Catalog,
        k: int = 10,
        exclude_history: bool = True,
        new_items: list[str] | None = None,
        catalog_embeddings: torch.Tensor | None = None,
    ) -> Recommendations:
        """Top-`k` items of `catalog` for each history (a list of item ids of `catalog`, oldest first). The model
        reads the last `max_len` items; with `exclude_history`, no item of the whole history is recommended, so a
        user with fewer than `k` other items gets fewer (their places in `scores` hold -inf). The scores of
        `new_items` (ids of `catalog` without training interactions) get the config's `new_item_boost`.
        `catalog_embeddings` (`embed_catalog` of `catalog`) spares embedding the catalog again for every call.

        Example:
        ```python
        >>> top = model.recommend([["office-0001", "office-0042"]], catalog, k=10)
        >>> top.item_ids[0][:3]
        ```
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if self.processor is None:
            raise ValueError("this model has no processor; load it with MMSRModel.from_pretrained or pass one")
        if isinstance(histories, str) or not all(isinstance(h, (list, tuple)) for h in histories):
            raise ValueError(f"histories must be a list of lists of item ids (one list per user), got {histories!r}")
        if not histories:
            raise ValueError("histories is empty: give one list of item ids per user (an empty list for a new user)")
        rows = []
        for b, history in enumerate(histories):
            unknown = [item for item in history if item not in catalog.index]
            if unknown:
                raise ValueError(f"history {b}: item ids not in catalog {catalog.name!r}: {unknown[:5]}")
            rows.append([catalog.index[item] for item in history])
        unknown = [item for item in new_items or [] if item not in catalog.index]
        if unknown:
            raise ValueError(f"new_items: item ids not in catalog {catalog.name!r}: {unknown[:5]}")
        was_training = self.training
        self.eval()
        item_embeddings = catalog_embeddings
        if item_embeddings is None:
            item_embeddings = self.embed_catalog(self.processor(catalog.records(range(len(catalog)))))
        known = pad_histories(rows).to(item_embeddings.device)  # (B, longest history)
        read = pad_histories([row[-self.config.sequence.max_len :] for row in rows]).to(item_embeddings.device)
        users = self.user_embeddings(item_embeddings, read)
        if new_items and self.config.new_item_boost:
            bias = torch.zeros(len(catalog), device=item_embeddings.device)
            bias[[catalog.index[item] for item in new_items]] = self.config.new_item_boost
            users, item_embeddings = with_item_bias(users, item_embeddings, bias)
        values, indices = chunked_topk(users, item_embeddings, k, known if exclude_history else None)
        self.train(was_training)
        # a user with fewer than k candidates (the catalog minus the history) gets fewer items; their scores are -inf
        ids = [
            [catalog.item_ids[i] for i, score in zip(row, scores, strict=True) if score != -math.inf]
            for row, scores in zip(indices.tolist(), values.tolist(), strict=True)
        ]
        return Recommendations(ids, values)

    def save_pretrained(self, folder: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Writes `config.json`, `model.safetensors` and the processor files (tokenizer, image size) atomically.

        Adapters are not part of the base: save them with `save_adapter`. `state_dict` replaces the model's own
        base weights in the file (`save_merged` passes the merged ones).
        """
        from safetensors.torch import save_file

        state_dict = adapters.base_state_dict(self) if state_dict is None else state_dict
        with atomic_directory(folder) as tmp:
            config = {"mmsr_peft_version": _version(), **self.config.to_dict()}
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
            state = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
            save_file(state, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
            if self.processor is not None:
                self.processor.save_pretrained(tmp)
        self.base_fingerprint = file_sha256(Path(folder) / WEIGHTS_FILE)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, revision: str | None = None, allow_pickle: bool = False
    ) -> MMSRModel:
        """Loads a base model from a local folder or a Hub repo id (downloaded with `huggingface_hub`).

        The architecture is built from `config.json` and filled from `model.safetensors`; a missing or unexpected
        key is an error that lists them. Pickle weights are refused unless `allow_pickle=True`.
        """
        folder = resolve_checkpoint(name_or_path, revision, allow_pickle)
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            raise CheckpointError(f"{folder}: no {CONFIG_FILE}; is this an mmsr_peft base checkpoint?")
        config = load_config(config_path)
        has_processor = (folder / PROCESSOR_FILE).is_file()  # a model saved without one cannot `recommend`
        processor = ItemProcessor.from_pretrained(folder, with_tokenizer=config.uses_text) if has_processor else None
        model = cls(config, processor)
        weights = load_weights(folder, allow_pickle)
        try:
            model.load_state_dict(weights)
        except CheckpointError as err:
            source = folder / WEIGHTS_FILE if (folder / WEIGHTS_FILE).is_file() else folder
            raise CheckpointError(f"{source}: {err} (architecture from {config_path})") from None
        model.name_or_path = str(name_or_path)
        if (folder / WEIGHTS_FILE).is_file():
            model.base_fingerprint = file_sha256(folder / WEIGHTS_FILE)
        return model.eval()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Loads base weights by their plain names (also while adapters are attached). With `strict=True`
        (the default, used by `from_pretrained`) any missing or unexpected key is an error listing them."""
        if strict:
            expected = set(adapters.base_state_dict(self))
            missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
            if missing or unexpected:
                raise CheckpointError(
                    f"checkpoint does not match the architecture: {len(missing)} missing keys {_preview(missing)}, "
                    f"{len(unexpected)} unexpected keys {_preview(unexpected)}"
                )
            own = adapters.base_state_dict(self)
            wrong = [
                f"{k}: {tuple(v.shape)}, expected {tuple(own[k].shape)}"
                for k, v in state_dict.items()
                if tuple(v.shape) != tuple(own[k].shape)
            ]
            if wrong:
                raise CheckpointError(
                    f"checkpoint does not match the architecture: {len(wrong)} keys have another shape {_preview(wrong)}"
                )
        names = adapters.base_key_map(self)
        renamed = {names.get(k, k): v for k, v in state_dict.items()}
        return super().load_state_dict(renamed, strict=False, assign=assign)


def _preview(keys: list[str], limit: int = 20) -> str:
    return str(keys[:limit])[:-1] + (", ...]" if len(keys) > limit else "]")


def resolve_checkpoint(
    name_or_path: str | os.PathLike, revision: str | None = None, allow_pickle: bool = False
) -> Path:
    """A local folder as is; anything else is a Hub repo id, downloaded (or read from the cache). Pickle weights
    are only downloaded with `allow_pickle=True`."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if is_local_path(name_or_path):
        raise CheckpointError(f"{name_or_path}: not a checkpoint folder, and not a Hub repo id ('org/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.txt", "*.md", "*.model", *(PICKLE_FILES if allow_pickle else ())]
    try:
        folder = Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=patterns))
    except RepositoryNotFoundError as err:
        raise CheckpointError(
            f"{name_or_path}: no local folder {path.resolve()}, and no such repo on the Hub"
        ) from err
    except (HfHubHTTPError, OSError, ValueError) as err:  # offline cache misses, connection errors, bad ids
        raise CheckpointError(
            f"{name_or_path}: no local folder {path.resolve()}, and not available from the Hub as a repo id ({err})"
        ) from err
    if not (folder / WEIGHTS_FILE).is_file() and not allow_pickle:
        from huggingface_hub import HfApi

        offered = [f for f in HfApi().list_repo_files(str(name_or_path), revision=revision) if f in PICKLE_FILES]
        if offered:
            raise CheckpointError(
                f"{name_or_path}: the repo offers only pickle weights ({offered[0]}); pickle can run arbitrary code, "
                "so it is refused. Ask for safetensors, or pass allow_pickle=True if you trust its author."
            )
    return folder


def load_config(path: Path) -> MMSRConfig:
    """Reads a `config.json`; a file that is not valid JSON or not a valid config is an error naming it."""
    try:
        settings = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if isinstance(settings, dict):
        settings.pop("mmsr_peft_version", None)
        missing = [key for key in REQUIRED_CONFIG_KEYS if key not in settings]
        if missing:  # a default would silently build another architecture than the one the weights belong to
            raise CheckpointError(
                f"{path}: missing {missing}; a saved config.json has every one of {REQUIRED_CONFIG_KEYS}"
            )
    try:
        return MMSRConfig.from_dict(settings, where=str(path))
    except ValueError as err:  # from_dict names the field; a check of __post_init__ does not name the file
        message = str(err) if str(err).startswith(str(path)) else f"{path}: {err}"
        raise CheckpointError(message) from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights(folder: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Reads `model.safetensors` (every float tensor must be finite); a pickle file is only read with
    `allow_pickle=True` (it can run code)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    if path.is_file():
        try:
            return check_finite(load_file(path), path)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: unreadable safetensors file ({err})") from err
    pickles = [folder / name for name in PICKLE_FILES if (folder / name).is_file()]
    if pickles and not allow_pickle:
        raise CheckpointError(
            f"{folder}: only pickle weights ({pickles[0].name}) found; pickle can run arbitrary code, so it is "
            "refused. Convert it to safetensors, or pass allow_pickle=True if you trust its author."
        )
    if pickles:
        import pickle

        try:  # weights_only: even an allowed pickle may hold tensors only, never code
            return check_finite(torch.load(pickles[0], map_location="cpu", weights_only=True), pickles[0])
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
            raise CheckpointError(f"{pickles[0]}: unreadable weights file ({err})") from err
    raise CheckpointError(f"{folder}: no {WEIGHTS_FILE}")


def _version() -> str:
    from . import __version__

    return __version__


def _history_states(item_embeddings: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
    """`(B, T, D)`: the embedding of each history item, zeros at the padding (-1)."""
    return item_embeddings[histories.clamp(min=0)] * (histories >= 0).unsqueeze(-1)
