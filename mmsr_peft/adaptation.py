"""Adapting a base model to a target domain with LoRA, a side adapter or (full, partial) fine-tuning (the library
side of `mmsr-adapt` and `recipes/adapt.py`)."""

from __future__ import annotations

from .adapters import is_adapter_key
from .arguments import ADAPTER_METHODS, METHODS, AdaptArguments
from .domains import build_corpus, describe_data, load_domain
from .evaluation import COLD_SHELF, evaluate, evaluate_report, format_table, random_baseline
from .lora import component_modules, lora_target_patterns, model_components
from .model import MMSRModel
from .quantization import quantize_encoders
from .run_folders import check_output_dir, claim_output_dir
from .run_outputs import write_run_outputs
from .side import SideAdapterConfig
from .train_state import training_record
from .training import (
    TrainingArguments,
    make_accelerator,
    precompute_frozen_states,
    train,
)


def lora_config(model: MMSRModel, adapt_args: AdaptArguments):
    """The `LoraConfig` of `adapt_args` for `model` (per-component ranks and alphas as peft's `rank_pattern` and
    `alpha_pattern`), and the LoRA settings recorded with the adapter (with the per-component dropout that
    `add_adapter` applies)."""
    from peft import LoraConfig

    settings = {c: s for c, s in adapt_args.lora_settings().items() if c in adapt_args.components}
    targets = {c: s["target_modules"] for c, s in settings.items() if s["target_modules"]}
    top_k = {c: s["top_k"] for c, s in settings.items()}
    patterns = lora_target_patterns(model, adapt_args.components, targets, top_k)
    config = LoraConfig(
        r=adapt_args.lora_r,
        lora_alpha=adapt_args.lora_alpha,
        lora_dropout=adapt_args.lora_dropout,
        target_modules="|".join(f"({p})" for p in patterns.values()),
        rank_pattern={patterns[c]: s["r"] for c, s in settings.items() if s["r"] != adapt_args.lora_r},
        alpha_pattern={
            patterns[c]: s["lora_alpha"] for c, s in settings.items() if s["lora_alpha"] != adapt_args.lora_alpha
        },
        modules_to_save=adapt_args.modules_to_save,
    )
    record = {
        "components": {c: {**s, "target_modules": patterns[c]} for c, s in settings.items()},
        "modules_to_save": adapt_args.modules_to_save or [],
        "dropout_pattern": {
            patterns[c]: s["lora_dropout"] for c, s in settings.items() if s["lora_dropout"] != adapt_args.lora_dropout
        },
    }
    return config, record


def prepare_method(
    model: MMSRModel, adapt_args: AdaptArguments, metadata: dict | None = None
) -> tuple[MMSRModel, str]:
    """Marks what trains for `adapt_args.method`; returns the model to train and its row name in the table.

    LoRA with `quantize` is QLoRA: the encoders are quantized where the model lies (move it to its device first)
    and frozen with peft's `prepare_model_for_kbit_training` (its gradient checkpointing is left to
    `--gradient_checkpointing`, which `train` applies), then the adapter is added on top.
    """
    method = adapt_args.method
    for name in adapt_args.modules_to_save or []:
        if name not in dict(model.named_modules()):
            top = [n for n, _ in model.named_children()] + [n for n, _ in model.item_tower.named_children()]
            raise ValueError(f"--modules_to_save: no module {name!r} in the model; e.g. {sorted(top)}")
    if method == "lora":
        components = adapt_args.components or model_components(model)
        adapt_args.components = components
        if adapt_args.quantize:
            from peft import prepare_model_for_kbit_training

            quantize_encoders(model, adapt_args.quantize)
            prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        config, settings = lora_config(model, adapt_args)
        model.add_adapter(config, adapt_args.adapter_name, {**(metadata or {}), "lora": settings})
        kind = f"QLoRA {adapt_args.quantize}" if adapt_args.quantize else "LoRA"
        return model, f"{kind} ({'+'.join(components)})"
    if method == "side":  # the base frozen whole; a side network over its encoders' layer states trains
        config = SideAdapterConfig(
            width=adapt_args.side_width,
            dropout=adapt_args.side_dropout,
            modules_to_save=adapt_args.modules_to_save or [],
        )
        model.add_adapter(config, adapt_args.adapter_name, metadata)
        return model, METHODS[method]
    if method == "scratch":  # the same architecture, new random weights, trained on the target alone
        model = MMSRModel(model.config, model.processor)
    model.requires_grad_(True)
    if method == "frozen":
        for encoder in (model.item_tower.text, model.item_tower.vision):
            if encoder is not None:
                encoder.requires_grad_(False)
    if method == "full" and adapt_args.components:  # only the components named train, in full
        model.requires_grad_(False)
        for module in component_modules(model, adapt_args.components):
            module.requires_grad_(True)
        return model, f"{METHODS[method]} ({'+'.join(adapt_args.components)})"
    return model, METHODS[method]


def _warm_and_cold(label: str, metrics: dict, domain: str) -> dict:
    """`{"<label>, warm targets": ..., "<label>, cold targets": ..., "<label>, cold targets among cold items":
    ...}` when `metrics` has a cold-start split."""
    parts = {"warm": "warm targets", "cold": "cold targets", COLD_SHELF: "cold targets among cold items"}
    return {
        f"{label}, {name}": metrics[f"{domain} {part}"]
        for part, name in parts.items()
        if f"{domain} {part}" in metrics
    }


def _save(model: MMSRModel, folder: str, adapt_args: AdaptArguments, metadata: dict | None = None) -> None:
    if adapt_args.method in ADAPTER_METHODS:
        model.save_adapter(folder, adapt_args.adapter_name, metadata)
    else:
        model.save_pretrained(folder)


def adapt(adapt_args: AdaptArguments, args: TrainingArguments) -> tuple[MMSRModel, dict]:
    """Loads the base, evaluates it zero-shot on the target, trains an adapter (LoRA or side) or a model (the other
    methods), evaluates it, and writes the adapter (peft layout or the side adapter's + `mmsr_adapter.json` + model
    card), its metrics and run arguments to `output_dir`.

    Returns the base model with the trained adapter active, and the test metrics of each row of the table.
    """

    default = f"outputs/adapters/{adapt_args.adapter_name}" if adapt_args.method in ADAPTER_METHODS else None
    args.output_dir = args.output_dir or default or f"outputs/adapted/{adapt_args.target}-{adapt_args.method}"
    protected = {"--base": adapt_args.base, "--data_dir": adapt_args.data_dir}
    check_output_dir(args.output_dir, protected, args.overwrite_output_dir, args.resume)
    domain = load_domain(adapt_args.target, adapt_args.data_source, adapt_args.data_dir)
    model = MMSRModel.from_pretrained(adapt_args.base, revision=adapt_args.revision)
    accelerator = make_accelerator(args, model.config.item_tower, model.config.fusion.type)
    claim = claim_output_dir(args.output_dir, accelerator.is_main_process, args.overwrite_output_dir, args.resume)
    with claim:  # one run writes the folder at a time, and it holds that run alone
        return _adapt(adapt_args, args, domain, model, accelerator)


def _adapt(adapt_args: AdaptArguments, args: TrainingArguments, domain, model: MMSRModel, accelerator):
    from accelerate.utils import set_seed

    set_seed(args.seed)
    if model.config.item_tower == "id":
        raise ValueError(f"{adapt_args.base} is an ID-based model: its item table cannot represent new items")
    corpus = build_corpus(
        [domain],
        model.config.sequence.max_len,
        adapt_args.cold_start_fraction,
        args.seed,
        adapt_args.train_user_fraction,
        adapt_args.train_stride,
    )
    accelerator.print(describe_data(corpus.stats))
    records = corpus.catalog.records(range(len(corpus.catalog)))
    catalog_inputs = model.processor(
        records, progress=True, image_cache_dir=args.feature_cache_dir, accelerator=accelerator
    )
    results = {"random": random_baseline(corpus.test)}
    # on the accelerator's device from here on: the zero-shot pass encodes the whole catalog, and bitsandbytes
    # quantizes (`--quantize`) on the device the weights lie on
    model.to(accelerator.device)
    zero_shot = evaluate(model, catalog_inputs, corpus.test, batch_size=args.eval_batch_size, accelerator=accelerator)
    results["zero-shot base"] = zero_shot["all"]
    by_target = _warm_and_cold("zero-shot base", zero_shot, domain.name)  # with --cold_start_fraction only

    stats = corpus.stats[domain.name]
    metadata = {
        "target": adapt_args.target,
        "method": adapt_args.method,
        "quantization": adapt_args.quantize,
        "data": {"name": domain.name, **{k: stats[k] for k in ("source", "version", "manifest_sha256", "synthetic")}},
    }
    base_parameters = sum(p.numel() for p in model.parameters())  # counted before 4-bit packing halves them
    model, row = prepare_method(model, adapt_args, metadata)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = base_parameters + sum(p.numel() for n, p in model.named_parameters() if is_adapter_key(n))
    catalog_inputs = precompute_frozen_states(
        model, catalog_inputs, args.eval_batch_size, args.feature_cache_dir, accelerator, args.cache_frozen_blocks
    )
    state = train(
        model,
        corpus.train,
        catalog_inputs,
        corpus.valid,
        args,
        accelerator,
        on_best=lambda m, valid: _save(m, args.output_dir, adapt_args, {"metrics": {"valid": valid["all"]}}),
        candidates=corpus.negative_candidates(),
        train_skip=corpus.train_skip,
    )
    report = evaluate_report(model, catalog_inputs, corpus.test, args.eval_batch_size, accelerator)
    adapted = report.main
    results[row] = adapted["all"]
    by_target.update(_warm_and_cold(row, adapted, domain.name))
    share = {name: {"trainable": "-"} for name in results}
    share["zero-shot base"] = {"trainable": "0 %"}
    share[next(reversed(results))] = {"trainable": f"{trainable:,} ({100 * trainable / total:.2f} %)"}
    table = format_table(results, extra=share)
    if accelerator.is_main_process:
        best = next((h for h in state.history if h["epoch"] == state.best_epoch), {})
        valid = {k.removeprefix("valid_"): v for k, v in best.items() if k.startswith("valid_")}
        metrics = {"valid": valid, "test": results[row], "best_epoch": state.best_epoch}
        _save(model, args.output_dir, adapt_args, {"metrics": metrics})
        summary = {"test": results, "trainable_parameters": trainable, "total_parameters": total}
        summary.update(training_record(state, args), data=corpus.stats, trainable_column=share)
        summary["test_adapted"] = adapted  # per domain, warm and cold targets (the table's row is its "all")
        summary["test_other_exclusions"] = report.other_exclusions
        summary["test_by_popularity"] = report.by_popularity
        if by_target:
            summary["test_by_target"] = by_target
            table += f"\n\nCold start: {len(corpus.cold_items)} items held out of training.\n{format_table(by_target)}"
        card = "adapter" if adapt_args.method in ADAPTER_METHODS else "base"
        write_run_outputs(
            args.output_dir, summary, (adapt_args, args), state, card, str(adapt_args.base), report.ranks
        )
        kind = "synthetic" if domain.synthetic else adapt_args.data_source
        print(
            f"\nTarget {adapt_args.target} ({kind}), test split. Protocol: full ranking, leave-one-out, "
            f"the whole history excluded, ties pessimistic.\n{table}\n"
        )
        what = f"Adapter {adapt_args.adapter_name!r}" if adapt_args.method in ADAPTER_METHODS else f"Model ({row})"
        print(f"{what} written to {args.output_dir}")
    accelerator.wait_for_everyone()
    return model, results
