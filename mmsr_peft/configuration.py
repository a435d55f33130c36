"""MMSRConfig: the architecture of an MMSR model, as saved in its `config.json` (the components' configs live with
their modules; `config.py` holds the strict dict conversion they all share)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoints import read_json
from .config import ConfigMixin
from .encoders import TextEncoderConfig, VisionEncoderConfig
from .errors import CheckpointError
from .fusion import FusionConfig
from .losses import LOSSES
from .sequence_encoders import SequenceEncoderConfig

SIMILARITIES = ("cosine", "dot")
ITEM_TOWERS = ("multimodal", "text", "image", "id")
# Item towers renamed since: their old names are still read (with a FutureWarning), so that configs, commands and
# checkpoints saved before keep working.
RENAMED_ITEM_TOWERS = {"modal": "multimodal"}


def item_tower_name(value: str) -> str:
    """The current name of item tower `value` (an old name warns)."""
    if value in RENAMED_ITEM_TOWERS:
        warnings.warn(
            f"item_tower {value!r} is now called {RENAMED_ITEM_TOWERS[value]!r}; the old name will stop working in a "
            "future release (a saved model's config.json is updated when it is saved again)",
            FutureWarning,
            stacklevel=4,  # past __post_init__ and the dataclass's __init__: where the config is made
        )
        return RENAMED_ITEM_TOWERS[value]
    return value


REQUIRED_CONFIG_KEYS = ("item_tower", "hidden_size", "fusion", "sequence")  # the architecture; the rest has defaults


@dataclass
class MMSRConfig(ConfigMixin):
    """Architecture of an MMSR model (run arguments such as learning rate or data live elsewhere).

    Args:
        item_tower (`str`): how items are embedded: `"multimodal"` (text + image, fused; `"modal"` before, still
            read), `"text"`, `"image"`, or `"id"` (a learned embedding per item id: the ID-based baseline, which
            cannot rank unseen items).
        hidden_size (`int`): width D of item and user embeddings.
        text (`TextEncoderConfig`, *optional*): the text encoder (needed by `multimodal` and `text`).
        vision (`VisionEncoderConfig`, *optional*): the vision encoder (needed by `multimodal` and `image`).
        fusion (`FusionConfig`): how text and image are fused (`multimodal` only).
        sequence (`SequenceEncoderConfig`): the sequence encoder.
        num_items (`int`): size of the item-id table (`id` only).
        similarity (`str`): how a user state scores an item: `"cosine"` (both L2-normalised; ours) or `"dot"` (the raw
            inner product, as in the MMSR paper, whose BCE loss reads it at temperature 1).
        temperature (`float`): scores (`similarity`) are divided by this in the training loss.
        loss (`str`): training loss: `"sampled_softmax"` (batch items + uniform negatives, logQ-corrected),
            `"full_ce"` (softmax over the whole catalog) or `"bce"` (one sampled negative per position).
        itc_weight (`float`): weight of an auxiliary image-text contrastive loss (ALBEF's ITC) between each item's
            text and image during training (`multimodal` only; 0 turns it off).
        feature_dropout (`float`): dropout on the encoders' outputs (pooled vectors and token states) before the
            fusion or projection, in training only. The pretrained features are wider than a catalog is long (MiniLM
            384 + MobileNetV2 1280 dimensions for 1682 MovieLens movies), so without it the first linear layer can
            learn a lookup table of the training items, and items it never saw (cold start) rank at the bottom.
        new_item_boost (`float`): added to the score of every item without training interactions (new
            arrivals) when ranking: by `evaluate` (items whose training count is 0) and by `recommend(new_items=...)`.
            The model learns popularity, which new items cannot have; the boost is their prior, bought with accuracy
            on known items (see docs/adaptation.md, cold start). 0: off.
    """

    item_tower: str = "multimodal"  # "multimodal" | "text" | "image" | "id"
    hidden_size: int = 64  # width of item and user embeddings
    text: TextEncoderConfig | None = None  # text encoder (multimodal, text)
    vision: VisionEncoderConfig | None = None  # vision encoder (multimodal, image)
    fusion: FusionConfig = field(default_factory=FusionConfig)  # fusion module (multimodal)
    sequence: SequenceEncoderConfig = field(default_factory=SequenceEncoderConfig)  # sequence encoder
    num_items: int = 0  # id table size (id)
    similarity: str = "cosine"  # "cosine" | "dot": the score of an item for a user state
    temperature: float = 0.07  # divides the scores in the training loss
    loss: str = "sampled_softmax"  # "sampled_softmax" | "full_ce" | "bce" (see mmsr_peft/losses.py)
    itc_weight: float = 0.0  # weight of the image-text contrastive auxiliary loss (multimodal only; 0: off)
    feature_dropout: float = 0.0  # dropout on the encoders' outputs in training (content towers; 0: off)
    new_item_boost: float = 0.0  # added to the score of items without training interactions (0: off)

    def __post_init__(self):
        self.item_tower = item_tower_name(self.item_tower)
        if self.item_tower not in ITEM_TOWERS:
            raise ValueError(f"item_tower must be one of {ITEM_TOWERS}, got {self.item_tower!r}")
        if self.item_tower in ("multimodal", "text") and self.text is None:
            raise ValueError(f"item_tower={self.item_tower!r} needs a text encoder config (`text`)")
        if self.item_tower in ("multimodal", "image") and self.vision is None:
            raise ValueError(f"item_tower={self.item_tower!r} needs a vision encoder config (`vision`)")
        if self.item_tower == "id" and self.num_items < 1:
            raise ValueError(f"item_tower='id' needs num_items >= 1, got {self.num_items}")
        if not 0 <= self.itc_weight < math.inf or (self.itc_weight > 0 and self.item_tower != "multimodal"):
            raise ValueError(f"itc_weight must be >= 0 and needs item_tower='multimodal', got {self.itc_weight}")
        if not 0 <= self.feature_dropout < 1 or (self.feature_dropout and self.item_tower == "id"):
            raise ValueError(
                f"feature_dropout must be in [0, 1) and needs a content item tower, got {self.feature_dropout}"
            )
        if not 0 <= self.new_item_boost < math.inf:
            raise ValueError(f"new_item_boost must be >= 0 and finite, got {self.new_item_boost}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.sequence.type == "sasrec" and self.hidden_size % self.sequence.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by sequence.num_heads {self.sequence.num_heads}: "
                "SASRec's attention splits the width across its heads"
            )
        if self.hidden_size < 1 or not 0 < self.temperature < math.inf:
            raise ValueError(
                f"hidden_size must be >= 1 and temperature > 0 and finite, got {self.hidden_size}, {self.temperature}"
            )

    @property
    def uses_text(self) -> bool:
        return self.item_tower in ("multimodal", "text")

    @property
    def uses_vision(self) -> bool:
        return self.item_tower in ("multimodal", "image")


def load_config(path: Path) -> MMSRConfig:
    """Reads a `config.json`; a file that is not valid JSON or not a valid config is an error naming it."""
    settings = read_json(path)
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
