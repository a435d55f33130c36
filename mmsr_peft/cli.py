"""Command-line entry points. Each is `main(argv=None) -> int`, so tests call them directly."""

from __future__ import annotations

import argparse
import sys

from .errors import CheckpointError, DataError, RunFolderBusy

# what a user can fix (a bad value, a missing or unwritable file, a busy folder): one line, exit status 2
USAGE_ERRORS = (DataError, CheckpointError, ValueError, OSError, ImportError, RunFolderBusy)


def _run(function, argv, dataclass_types, description, extra_errors=()) -> int:
    from .parsing import parse_args

    try:
        parsed = parse_args(dataclass_types, argv, description=description)
        function(*parsed)
    except (*USAGE_ERRORS, *extra_errors) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def adapt_main(argv=None) -> int:
    """`mmsr-adapt`: LoRA adaptation of a base model to a target domain."""
    from .adaptation import AdaptArguments, adapt
    from .training import TrainingArguments

    return _run(adapt, argv, (AdaptArguments, TrainingArguments), adapt_main.__doc__)


def pretrain_main(argv=None) -> int:
    """`mmsr-pretrain`: pretraining of a base model on source domains (in a clone: `accelerate launch
    recipes/pretrain.py`; several processes without one: `accelerate launch --multi_gpu $(which mmsr-pretrain)`)."""
    from .arguments import DataArguments
    from .builder import ModelArguments
    from .pretraining import pretrain
    from .training import TrainingArguments

    return _run(pretrain, argv, (ModelArguments, DataArguments, TrainingArguments), pretrain_main.__doc__)


def baseline_main(argv=None) -> int:
    """`mmsr-baseline`: a simple ranker (popularity, untrained content-kNN) evaluated like a trained model."""
    from .arguments import DataArguments
    from .baselines import BaselineArguments, run_baseline
    from .builder import ModelArguments

    return _run(run_baseline, argv, (BaselineArguments, ModelArguments, DataArguments), baseline_main.__doc__)


def evaluate_main(argv=None) -> int:
    """`mmsr-evaluate`: a saved model (with an adapter) on the test split of processed domains, as its run did."""
    from .model_evaluation import EvaluateArguments, evaluate_model

    return _run(evaluate_model, argv, (EvaluateArguments,), evaluate_main.__doc__)


def recommend_main(argv=None) -> int:
    """`mmsr-recommend`: top-k recommendations for a file of histories (JSONL or CSV in, JSONL out)."""
    from .batch import RecommendArguments, recommend_file

    return _run(recommend_file, argv, (RecommendArguments,), recommend_main.__doc__)


def app_main(argv=None) -> int:
    """`mmsr-app`: a page to try a model: build a history, see the top-k with images, switch adapters."""
    from .app import serve
    from .arguments import AppArguments

    return _run(serve, argv, (AppArguments,), app_main.__doc__)


def publish_main(argv=None) -> int:
    """`mmsr-publish`: push a base checkpoint or an adapter to the Hugging Face Hub with its model card."""
    from huggingface_hub.errors import HfHubHTTPError

    from .hub import PublishArguments, publish

    errors = (HfHubHTTPError, ConnectionError)
    return _run(publish, argv, (PublishArguments,), publish_main.__doc__, extra_errors=errors)


# Modules of `mmsr_peft.data` that add a `mmsr-data` sub-command: each defines `add_command(commands)`, which adds
# its sub-parser and sets `handler`, a function of the parsed arguments that does the work and prints the result.
DATA_COMMANDS = ("synthetic", "movielens", "amazon", "images", "stats", "recbole", "split")


def data_parser() -> argparse.ArgumentParser:
    """The parser of `mmsr-data`, with one sub-command per module of `DATA_COMMANDS`."""
    import importlib

    parser = argparse.ArgumentParser(prog="mmsr-data", description=data_main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in DATA_COMMANDS:
        importlib.import_module(f".data.{name}", __package__).add_command(commands)
    return parser


def data_main(argv=None) -> int:
    """`mmsr-data`: prepare, import, export and describe processed domain folders."""
    args = data_parser().parse_args(argv)
    try:
        args.handler(args)
    except USAGE_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
