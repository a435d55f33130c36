"""Text and vision encoders: built from their architecture config, optionally filled from pretrained weights.

`text` holds the Hugging Face text encoder, `vision` the open_clip / torchvision / Hugging Face vision encoder, and
`common` what both share (their outputs, which blocks train). Everything is importable from here.
"""

from .common import (
    BLOCK_LAYOUT,
    FINETUNE_REGIMES,
    RESNETS,
    TORCHVISION_CNNS,
    BlockInputs,
    EncoderOutput,
    LayerStates,
    encoder_blocks,
    first_trainable_block,
    quiet_from_pretrained,
    set_finetuning,
)
from .text import POOLINGS, TextEncoder, TextEncoderConfig
from .vision import (
    HF_VISION_TYPES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_MEAN,
    OPENAI_STD,
    VISION_BACKENDS,
    VISION_PRESETS,
    VisionEncoder,
    VisionEncoderConfig,
)

__all__ = [
    "BLOCK_LAYOUT",
    "FINETUNE_REGIMES",
    "HF_VISION_TYPES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "POOLINGS",
    "RESNETS",
    "TORCHVISION_CNNS",
    "VISION_BACKENDS",
    "VISION_PRESETS",
    "BlockInputs",
    "EncoderOutput",
    "LayerStates",
    "TextEncoder",
    "TextEncoderConfig",
    "VisionEncoder",
    "VisionEncoderConfig",
    "encoder_blocks",
    "first_trainable_block",
    "quiet_from_pretrained",
    "set_finetuning",
]
