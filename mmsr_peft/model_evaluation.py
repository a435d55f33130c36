"""Evaluating a saved model (a base, or a base with an adapter) on the test split of processed domains
(`mmsr-evaluate`): the same split, candidates, exclusions and tie rule as the run that trained it, without training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .adapters import adapter_config_file
from .arguments import DEVICE_HELP, SplitArguments, check_evaluation_args, resolve_device
from .domains import build_corpus, describe_data, load_domain
from .evaluation import PROTOCOL, evaluate_report, format_table, random_baseline
from .run_folders import check_output_dir, claim_output_dir
from .run_outputs import write_run_outputs


@dataclass(kw_only=True)
class EvaluateArguments(SplitArguments):
    """Which model to evaluate, on which domains (their data and split: `SplitArguments`), and where the results go."""

    model: str = field(
        metadata={"help": "Base model: a folder written by mmsr-pretrain or mmsr-adapt, or a Hub repo id."}
    )
    domains: list[str] = field(
        metadata={"help": "Domains whose test split is evaluated (the run's own, for its numbers)."}
    )
    adapter: str | None = field(default=None, metadata={"help": "An adapter folder or Hub repo id to activate."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) of --model."})
    force: bool = field(
        default=False, metadata={"help": "Load an adapter trained on another base (or without a record of it)."}
    )
    seed: int = field(
        default=42, metadata={"help": "The run's --seed: it draws the cold-start items (--cold_start_fraction)."}
    )
    output_dir: str = field(
        default="outputs/evaluate", metadata={"help": "Folder for metrics.json, test_ranks.npy and run_args.json."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the results that output_dir holds; without it, refused."}
    )
    eval_batch_size: int = field(default=256, metadata={"help": "Users (and items) per evaluation batch."})
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "Keep the frozen encoders' outputs here and reuse them across runs."}
    )
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})

    def __post_init__(self):
        super().__post_init__()
        check_evaluation_args(self)


def evaluate_model(args: EvaluateArguments) -> dict:
    """Loads `args.model` (with `args.adapter` active), evaluates it on the test split of `args.domains` and writes
    `metrics.json` (shaped like a training run's: the table's rows, the secondary exclusions, the popularity
    buckets), `test_ranks.npy` and `run_args.json` to `output_dir`. Returns the metrics. The model reads the split
    that the other flags give; the run's own flags (seed, cold-start and user fractions) reproduce its numbers."""
    from .model import MMSRModel
    from .training import precompute_frozen_states

    if Path(args.model).is_dir() and adapter_config_file(Path(args.model)) is not None:
        raise ValueError(
            f"--model {args.model} is an adapter folder: pass the base it was trained on as --model and this folder "
            "as --adapter"
        )
    device = resolve_device(args.device)
    protected = {"--model": args.model, "--adapter": args.adapter, "--data_dir": args.data_dir}
    check_output_dir(args.output_dir, protected, args.overwrite_output_dir)
    with claim_output_dir(args.output_dir, overwrite=args.overwrite_output_dir):
        began = time.perf_counter()
        model = MMSRModel.from_pretrained(args.model, revision=args.revision)
        if args.adapter:
            model.load_adapter(args.adapter, force=args.force)
        model.to(device).requires_grad_(False).eval()  # every encoder frozen: outputs computed (or read) once
        domains = [load_domain(name, args.data_source, args.data_dir) for name in args.domains]
        corpus = build_corpus(
            domains,
            model.config.sequence.max_len,
            args.cold_start_fraction,
            args.seed,
            args.train_user_fraction,
            args.train_stride,
        )
        print(describe_data(corpus.stats))
        records = corpus.catalog.records(range(len(corpus.catalog)))
        inputs = model.processor(records, progress=True, image_cache_dir=args.feature_cache_dir)
        inputs = precompute_frozen_states(model, inputs, args.eval_batch_size, args.feature_cache_dir)
        report = evaluate_report(model, inputs, corpus.test, args.eval_batch_size)
        results = report.main
        results["random"] = random_baseline(corpus.test)
        summary = {
            "model": args.model,
            "adapter": args.adapter,
            "protocol": PROTOCOL,
            "test": results,
            "test_other_exclusions": report.other_exclusions,
            "test_by_popularity": report.by_popularity,
            "data": corpus.stats,
            "wall_s": round(time.perf_counter() - began, 3),
        }
        write_run_outputs(args.output_dir, summary, (args,), test_ranks=report.ranks)
    print(f"\nTest split of {', '.join(args.domains)}. Protocol: {PROTOCOL}\n{format_table(results)}\n")
    return summary
