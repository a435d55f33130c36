"""Pretraining a base model on source domains (the library side of `recipes/pretrain.py`)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from .arguments import DataArguments
from .builder import ModelArguments, build_model
from .domains import build_corpus, describe_data, load_domain
from .evaluation import evaluate_report, format_table, random_baseline
from .model import MMSRModel
from .run_folders import check_output_dir, claim_output_dir
from .run_outputs import write_run_outputs
from .train_state import training_record
from .training import (
    TrainingArguments,
    make_accelerator,
    precompute_frozen_states,
    train,
)


def prepare_synthetic(data_args: DataArguments, accelerator=None) -> None:
    """Generates the domains of the embedded synthetic world (all six, seconds) whose folders are missing (with
    several processes, the main one first)."""
    if data_args.data_source != "synthetic":
        return
    from .data.synthetic import SYNTHETIC_DOMAINS, generate_world

    root = Path(data_args.data_dir) / "synthetic"
    missing = [name for name in SYNTHETIC_DOMAINS if not (root / name / "items.parquet").is_file()]
    if missing:
        with accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext():
            generate_world(root, missing)


def pretrain(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> tuple[MMSRModel, dict]:
    """Trains a base model on `data_args.domains` and writes it, its metrics and run arguments to `output_dir`.

    Returns the trained model (best validation weights) and its test metrics per domain (full ranking,
    leave-one-out), with those of a random ranking.
    """
    from accelerate.utils import set_seed

    args.output_dir = args.output_dir or "outputs/pretrain"
    check_output_dir(args.output_dir, {"--data_dir": data_args.data_dir}, args.overwrite_output_dir, args.resume)
    accelerator = make_accelerator(args, model_args.item_tower, model_args.fusion)
    claim = claim_output_dir(args.output_dir, accelerator.is_main_process, args.overwrite_output_dir, args.resume)
    with claim:  # one run writes the folder at a time, and it holds that run alone
        started = time.perf_counter()
        set_seed(args.seed)
        prepare_synthetic(data_args, accelerator)
        domains = [load_domain(name, data_args.data_source, data_args.data_dir) for name in data_args.domains]
        corpus = build_corpus(
            domains,
            model_args.max_len,
            data_args.cold_start_fraction,
            args.seed,
            data_args.train_user_fraction,
            data_args.train_stride,
        )
        model = build_model(model_args, item_vocab=corpus.catalog.item_ids)
        records = corpus.catalog.records(range(len(corpus.catalog)))
        encoding = time.perf_counter()
        catalog_inputs = model.processor(
            records, progress=True, image_cache_dir=args.feature_cache_dir, accelerator=accelerator
        )
        catalog_inputs = precompute_frozen_states(
            model, catalog_inputs, args.eval_batch_size, args.feature_cache_dir, accelerator, args.cache_frozen_blocks
        )
        encode_s = time.perf_counter() - encoding  # tokenising, hashing and encoding the catalog
        accelerator.print(describe_data(corpus.stats))
        accelerator.print(
            f"pretraining on {', '.join(corpus.stats)}: {len(corpus.catalog)} items, {len(corpus.train)} training "
            f"sequences; {sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters"
        )
        prepare_s = time.perf_counter() - started  # data, item inputs, frozen encoders' outputs (or the cache)
        state = train(
            model,
            corpus.train,
            catalog_inputs,
            corpus.valid,
            args,
            accelerator,
            on_best=lambda m, _: m.save_pretrained(args.output_dir),
            candidates=corpus.negative_candidates(),
            train_skip=corpus.train_skip,
        )
        tested = time.perf_counter()
        report = evaluate_report(model, catalog_inputs, corpus.test, args.eval_batch_size, accelerator)
        results = report.main
        test_s = time.perf_counter() - tested
        results["random"] = random_baseline(corpus.test)
        table = format_table(results)
        if accelerator.is_main_process:
            model.save_pretrained(args.output_dir)
            summary = {"test": results, **training_record(state, args), "data": corpus.stats}
            summary["test_other_exclusions"] = report.other_exclusions
            summary["test_by_popularity"] = report.by_popularity
            summary["total_parameters"] = sum(p.numel() for p in model.parameters())
            summary["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            summary["runtime"].update(
                prepare_s=round(prepare_s, 3), encode_s=round(encode_s, 3), test_s=round(test_s, 3)
            )
            arguments = (model_args, data_args, args)
            write_run_outputs(args.output_dir, summary, arguments, state, card="base", test_ranks=report.ranks)
            print(f"\nTest, per source domain ({'; '.join(corpus.stats)}):\n{table}\n")
            print(f"Base model written to {args.output_dir}")
        accelerator.wait_for_everyone()
    return model, results
