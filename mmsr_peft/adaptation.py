"""Adapting a base model to a target domain with LoRA (the library side of `mmsr-adapt` and `recipes/adapt.py`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .adapters import COMPONENTS, lora_target_modules, model_components
from .arguments import save_run_args
from .cards import adapter_card, base_card
from .domains import DEFAULT_DATA_DIR, DOMAINS, build_corpus, load_domain
from .evaluation import evaluate, format_table, random_baseline
from .io import atomic_write_text
from .model import MMSRModel
from .training import TrainingArguments, make_accelerator, precompute_frozen_states, train

METHODS = {"lora": "LoRA", "full": "full fine-tuning", "frozen": "frozen encoders", "scratch": "from scratch"}


@dataclass
class AdaptArguments:
    """What to adapt, to which domain, and how."""

    target: str = field(metadata={"help": f"Target domain, one of: {', '.join(sorted(DOMAINS))}."})
    base: str = field(default="outputs/pretrain", metadata={"help": "Base model: local folder or Hub repo id."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) of --base."})
    data_source: str = field(default="synthetic", metadata={"help": "Where the target's processed data comes from."})
    data_dir: str = field(default=DEFAULT_DATA_DIR, metadata={"help": "Root of processed domain folders."})
    components: list[str] | None = field(
        default=None, metadata={"help": f"Components that get LoRA, any of {COMPONENTS} (default: all the base has)."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    adapter_name: str | None = field(default=None, metadata={"help": "Name of the adapter (default: the target)."})
    method: str = field(
        default="lora",
        metadata={
            "help": "lora (adapters, the base unchanged), full (fine-tune everything), frozen (encoders frozen, the "
            "rest trains) or scratch (same architecture, random init, target data only); all but lora write a model."
        },
    )

    def __post_init__(self):
        if self.target not in DOMAINS:
            raise ValueError(f"unknown --target {self.target!r}; valid targets: {', '.join(sorted(DOMAINS))}")
        unknown = sorted(set(self.components or []) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown --components {unknown}; valid components: {', '.join(COMPONENTS)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown --method {self.method!r}; valid methods: {', '.join(METHODS)}")
        if self.lora_r < 1:
            raise ValueError(f"--lora_r must be >= 1, got {self.lora_r}")
        self.adapter_name = self.adapter_name or self.target


def prepare_method(model: MMSRModel, adapt_args: AdaptArguments) -> tuple[MMSRModel, str]:
    """Marks what trains for `adapt_args.method`; returns the model to train and its row name in the table."""
    from peft import LoraConfig

    method = adapt_args.method
    if method == "lora":
        lora = LoraConfig(
            r=adapt_args.lora_r,
            lora_alpha=adapt_args.lora_alpha,
            lora_dropout=adapt_args.lora_dropout,
            target_modules=lora_target_modules(model, adapt_args.components),
        )
        model.add_adapter(lora, adapt_args.adapter_name)
        return model, f"LoRA ({'+'.join(adapt_args.components)})"
    if method == "scratch":  # the same architecture, new random weights, trained on the target alone
        model = MMSRModel(model.config, model.processor)
    model.requires_grad_(True)
    if method == "frozen":
        for encoder in (model.item_tower.text, model.item_tower.vision):
            if encoder is not None:
                encoder.requires_grad_(False)
    return model, METHODS[method]


def _save(model: MMSRModel, folder: str, adapt_args: AdaptArguments) -> None:
    if adapt_args.method == "lora":
        model.save_adapter(folder, adapt_args.adapter_name)
    else:
        model.save_pretrained(folder)


def adapt(adapt_args: AdaptArguments, args: TrainingArguments) -> tuple[MMSRModel, dict]:
    """Loads the base, evaluates it zero-shot on the target, trains a LoRA adapter, evaluates it, and writes the
    adapter (peft layout + model card), its metrics and run arguments to `output_dir`.

    Returns the base model with the trained adapter active, and the test metrics of each row of the table.
    """
    from accelerate.utils import set_seed

    default = f"outputs/adapters/{adapt_args.adapter_name}" if adapt_args.method == "lora" else None
    args.output_dir = args.output_dir or default or f"outputs/adapted/{adapt_args.target}-{adapt_args.method}"
    domain = load_domain(adapt_args.target, adapt_args.data_source, adapt_args.data_dir)
    model = MMSRModel.from_pretrained(adapt_args.base, revision=adapt_args.revision)
    accelerator = make_accelerator(args, model.config.item_tower, model.config.fusion.type)
    set_seed(args.seed)
    if model.config.item_tower == "id":
        raise ValueError(f"{adapt_args.base} is an ID-based model: its item table cannot represent new items")
    adapt_args.components = adapt_args.components or model_components(model)
    corpus = build_corpus([domain], model.config.sequence.max_len)
    catalog_inputs = model.processor(corpus.catalog.records(range(len(corpus.catalog))), progress=True)
    results = {"random": random_baseline(corpus.test)}
    results["zero-shot base"] = evaluate(model, catalog_inputs, corpus.test, batch_size=args.eval_batch_size)["all"]

    model, row = prepare_method(model, adapt_args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    catalog_inputs = precompute_frozen_states(model, catalog_inputs, args.eval_batch_size)
    state = train(
        model,
        corpus.train,
        catalog_inputs,
        corpus.valid,
        args,
        accelerator,
        on_best=lambda m, _: _save(m, args.output_dir, adapt_args),
    )
    results[row] = evaluate(model, catalog_inputs, corpus.test, batch_size=args.eval_batch_size)["all"]
    share = {name: {"trainable": "-"} for name in results}
    share["zero-shot base"] = {"trainable": "0 %"}
    share[next(reversed(results))] = {"trainable": f"{trainable:,} ({100 * trainable / total:.2f} %)"}
    table = format_table(results, extra=share)
    if accelerator.is_main_process:
        _save(model, args.output_dir, adapt_args)
        summary = {"test": results, "trainable_parameters": trainable, "total_parameters": total}
        summary.update(best_epoch=state.best_epoch, history=state.history, data=corpus.stats, trainable_column=share)
        atomic_write_text(Path(args.output_dir) / "metrics.json", json.dumps(summary, indent=2) + "\n")
        save_run_args(args.output_dir, adapt_args, args)
        if adapt_args.method == "lora":
            card = adapter_card(args.output_dir, repo_id=args.output_dir, base_model=str(adapt_args.base))
        else:
            card = base_card(args.output_dir, repo_id=args.output_dir)
        atomic_write_text(Path(args.output_dir) / "README.md", card)
        kind = "synthetic" if domain.synthetic else adapt_args.data_source
        print(
            f"\nTarget {adapt_args.target} ({kind}), test split. Protocol: full ranking, leave-one-out, "
            f"history excluded, ties pessimistic.\n{table}\n"
        )
        what = f"Adapter {adapt_args.adapter_name!r}" if adapt_args.method == "lora" else f"Model ({row})"
        print(f"{what} written to {args.output_dir}")
    accelerator.wait_for_everyone()
    return model, results
