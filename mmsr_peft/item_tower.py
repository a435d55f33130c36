"""The item tower: embeds items from their text and image (encoders, then the fusion or a projection), or from
their id for the ID-based baseline; side adapters add to its output."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import MMSRConfig
from .data.processing import ItemInputs
from .encoders import EncoderOutput, LayerStates, TextEncoder, VisionEncoder
from .fusion import ModalityProjection, build_fusion
from .losses import similarity_matrix


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
        if items.text_states is not None:
            return items.text_states
        if items.text_blocks is not None:
            return self.text.encode_from(items.text_blocks)
        return self.text(items.input_ids, items.attention_mask)

    def encode_image(self, items: ItemInputs) -> EncoderOutput:
        if items.image_states is not None:
            return items.image_states
        present = items.has_image
        if self.vision.batch_statistics() and not present.all() and present.any():
            # a BatchNorm that trains normalises by the batch and updates its running statistics from it: the
            # placeholder pixels of items without an image must not take part (their rows, zeros here, are masked
            # out by every head)
            if items.image_blocks is not None:
                return self.vision.encode_from(items.image_blocks.select(present)).spread(present)
            return self.vision(items.pixel_values[present]).spread(present)
        if items.image_blocks is not None:
            return self.vision.encode_from(items.image_blocks)
        return self.vision(items.pixel_values)

    def content(self, items: ItemInputs) -> tuple[EncoderOutput | None, EncoderOutput | None]:
        """What the heads read: the text and image encodings (None for a modality the tower does not use), with
        `feature_dropout` in training. (`encode_text` / `encode_image` stay deterministic: they fill caches.)"""
        text = self.encode_text(items) if self.config.uses_text else None
        image = self.encode_image(items) if self.config.uses_vision else None
        if not (self.training and self.config.feature_dropout):
            return text, image
        return _dropped(text, self.config.feature_dropout), _dropped(image, self.config.feature_dropout)

    def alignment_loss(self, items: ItemInputs, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Image-text contrastive loss of the items that have both modalities (ALBEF's ITC): each item's text must
        pick its own image among the batch's, and back. `keep` (`(N,)` bools): the items that take part (None:
        all; rows that only pad a batch to a steady size do not)."""
        text, image = self.encode_text(items), self.encode_image(items)
        both = items.has_text & items.has_image
        if keep is not None:
            both = both & keep
        if int(both.sum()) < 2:
            return text.pooled.sum() * 0.0
        t = F.normalize(self.itc_text(text.pooled[both]), dim=-1)
        v = F.normalize(self.itc_image(image.pooled[both]), dim=-1)
        logits = similarity_matrix(t, v) / self.config.temperature  # (M, M), float32: the diagonal pairs are positives
        labels = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

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
