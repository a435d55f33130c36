"""MMSRModel: item tower (text encoder + vision encoder + fusion, or an ID table) and a sequence encoder."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import adapters
from .checkpoints import CONFIG_FILE, PICKLE_FILES, WEIGHTS_FILE, file_sha256, load_weights, resolve_checkpoint
from .configuration import MMSRConfig, load_config
from .data.catalog import Catalog
from .data.collate import pad_histories
from .data.processing import ITEM_VOCAB_FILE, PROCESSOR_FILE, ItemInputs, ItemProcessor
from .errors import CheckpointError
from .evaluation import chunked_topk, with_item_bias
from .files import atomic_directory
from .item_tower import ItemTower
from .losses import bce_loss, softmax_loss
from .sequence_encoders import SEQUENCE_CLASSES

__all__ = ["MMSRConfig", "MMSRModel", "MMSROutput", "Recommendations"]

# dropout probabilities that encoders keep as float attributes rather than in an `nn.Dropout` (see set_encoder_dropout)
FLOAT_DROPOUTS = ("attention_dropout", "dropout", "drop_prob")
# the files a base save writes, or an earlier save may have written (a tokenizer of another kind, pickle weights):
# a new save replaces them all, and keeps the rest of the folder (training states, metrics, a card)
TOKENIZER_FILES = (
    "tokenizer*.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.model",
)
BASE_FILES = (CONFIG_FILE, WEIGHTS_FILE, *PICKLE_FILES, PROCESSOR_FILE, ITEM_VOCAB_FILE, *TOKENIZER_FILES)


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
    """Top-k items per history: `item_ids[b]` are ids of the catalog, best first; `scores` is `(B, min(k, N))` for a
    catalog of N items, -inf where a history left fewer than k candidates (its `item_ids[b]` is then shorter)."""

    item_ids: list[list[str]]
    scores: torch.Tensor


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

    def _encoders(self) -> list[nn.Module]:
        """The text and vision encoders this model has."""
        return [e for e in (self.item_tower.text, self.item_tower.vision) if e is not None]

    def gradient_checkpointing_enable(self) -> None:
        """Gradient checkpointing in the text and vision encoders: less activation memory, one more forward."""
        for encoder in self._encoders():
            encoder.gradient_checkpointing_enable()

    def feed_forward_checkpointing_enable(self) -> int:
        """Recomputes the 4x-wide feed-forward activations of the text and vision encoders in the backward pass
        (`checkpoint_feed_forward`): a lighter form of gradient checkpointing. Returns the blocks it applies to."""
        from .encoders.common import checkpoint_feed_forward

        return sum(checkpoint_feed_forward(encoder) for encoder in self._encoders())

    def set_encoder_dropout(self, p: float) -> None:
        """Sets the dropout inside the text and vision encoders to `p` for this run: every `nn.Dropout` of their
        backbones, and the probabilities kept as plain floats (`FLOAT_DROPOUTS`: the attention dropout of Hugging
        Face ViT, BEiT, Swin, ViT-MAE and CLIP and of `nn.MultiheadAttention`, the stochastic depth of BEiT, Swin and
        ConvNeXt). LoRA's own dropout is the adapter's setting and is left alone. The saved config keeps the
        encoders' own. A model trained on frozen, cached features never saw the encoders' dropout; with `p = 0`,
        fine-tuning feeds the layers above the encoders the kind of features they were trained on."""
        from peft.tuners.lora import LoraLayer

        if not 0 <= p < 1:
            raise ValueError(f"encoder dropout must be in [0, 1), got {p}")
        for encoder in self._encoders():
            lora = [layer.lora_dropout for layer in encoder.modules() if isinstance(layer, LoraLayer)]
            lora_dropouts = {id(module) for dropouts in lora for module in dropouts.modules()}
            for module in encoder.modules():
                if id(module) in lora_dropouts:
                    continue
                if isinstance(module, nn.Dropout):
                    module.p = p
                for name in FLOAT_DROPOUTS:  # read in forward; only the module's own (a peft wrapper forwards reads)
                    if isinstance(module.__dict__.get(name), float):
                        setattr(module, name, p)

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
        the sequence encoder can skip the others). The sequence encoder reads `item_embeddings` in its own dtype
        (`embed_catalog` gives float32, also for a model cast to bfloat16)."""
        last = (histories >= 0).sum(1).clamp(min=1) - 1  # (B,)
        item_embeddings = item_embeddings.to(next(self.sequence_encoder.parameters()).dtype)
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
        candidate_mask: torch.Tensor | None = None,
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
            candidate_mask (`torch.BoolTensor` of shape `(N,)`, *optional*): False for the items that only pad the
                batch to a steady size (`--pad_items_to_multiple_of`): encoded, never scored.
        """
        table = item_table is not None and from_table is not None and bool(from_table.any())
        scored = candidate_mask  # of the items the item tower encodes, for the alignment loss
        if table:  # the batch's own items go through the item tower; the negatives that are only negatives do not
            encoded, looked_up = torch.nonzero(~from_table).squeeze(1), torch.nonzero(from_table).squeeze(1)
            items = items.select(encoded)
            scored = None if candidate_mask is None else candidate_mask[encoded]
        alignment = None
        if targets is not None and self.config.itc_weight > 0:
            tower = self.item_tower
            items = items.with_states(tower.encode_text(items), tower.encode_image(items))  # encode once for both
            alignment = tower.alignment_loss(items, scored)
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
            loss = softmax_loss(
                sequence_output, item_embeddings, targets, self.config.temperature, logq, candidate_mask
            )
        if alignment is not None:
            loss = loss + self.config.itc_weight * alignment
        return MMSROutput(loss, item_embeddings, sequence_output)

    @torch.no_grad()
    def embed_catalog(self, catalog_inputs: ItemInputs, batch_size: int = 256) -> torch.Tensor:
        """`(N, D)` embeddings of a whole catalog, computed in chunks."""
        device = next(self.parameters()).device
        chunks = [torch.empty(0, self.config.hidden_size, device=device)]  # a process's share may be empty
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
        expected = (len(catalog), self.config.hidden_size)
        if catalog_embeddings is not None and tuple(catalog_embeddings.shape) != expected:
            raise ValueError(
                f"catalog_embeddings: shape {tuple(catalog_embeddings.shape)}, expected {expected} (embed_catalog of "
                f"catalog {catalog.name!r}: one row per item, the model's hidden size)"
            )
        was_training = self.training
        self.eval()
        try:
            item_embeddings = catalog_embeddings
            if item_embeddings is None:
                item_embeddings = self.embed_catalog(self.processor(catalog.records(range(len(catalog)))))
            known = pad_histories(rows).to(item_embeddings.device)  # (B, longest history)
            read = pad_histories([row[-self.config.sequence.max_len :] for row in rows]).to(item_embeddings.device)
            # user embeddings are scored in the catalog's dtype (float32 from `embed_catalog`)
            users = self.user_embeddings(item_embeddings, read).to(item_embeddings.dtype)
            if new_items and self.config.new_item_boost:
                bias = torch.zeros(len(catalog), device=item_embeddings.device)
                bias[[catalog.index[item] for item in new_items]] = self.config.new_item_boost
                users, item_embeddings = with_item_bias(users, item_embeddings, bias)
            values, indices = chunked_topk(users, item_embeddings, k, known if exclude_history else None)
        finally:
            self.train(was_training)
        # a user with fewer than k candidates (the catalog minus the history) gets fewer items; their scores are -inf
        ids = [
            [catalog.item_ids[i] for i, score in zip(row, scores, strict=True) if score != -math.inf]
            for row, scores in zip(indices.tolist(), values.tolist(), strict=True)
        ]
        return Recommendations(ids, values)

    def save_pretrained(self, folder: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Writes `config.json`, `model.safetensors` and the processor files (tokenizer, image size) atomically. The
        model files of a previous save in `folder` are replaced (`BASE_FILES`); its other files are kept.

        Adapters are not part of the base: save them with `save_adapter`. `state_dict` replaces the model's own
        base weights in the file (`save_merged` passes the merged ones).
        """
        from safetensors.torch import save_file

        state_dict = adapters.base_state_dict(self) if state_dict is None else state_dict
        with atomic_directory(folder, owned=BASE_FILES) as tmp:
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


def _version() -> str:
    from . import __version__

    return __version__


def _history_states(item_embeddings: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
    """`(B, T, D)`: the embedding of each history item, zeros at the padding (-1)."""
    return item_embeddings[histories.clamp(min=0)] * (histories >= 0).unsqueeze(-1)
