"""Command-line entry points. Each is `main(argv=None) -> int`, so tests call them directly."""

from __future__ import annotations

import argparse
import sys

from .errors import CheckpointError, DataError

USAGE_ERRORS = (DataError, CheckpointError, ValueError, FileNotFoundError, ImportError)


def _run(function, argv, dataclass_types, description, extra_errors=()) -> int:
    from .arguments import parse_args

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
    """Pretraining of a base model on source domains (also `accelerate launch recipes/pretrain.py`)."""
    from .arguments import DataArguments
    from .builder import ModelArguments
    from .pretraining import pretrain
    from .training import TrainingArguments

    return _run(pretrain, argv, (ModelArguments, DataArguments, TrainingArguments), pretrain_main.__doc__)


def publish_main(argv=None) -> int:
    """`mmsr-publish`: push a base checkpoint or an adapter to the Hugging Face Hub with its model card."""
    from huggingface_hub.errors import HfHubHTTPError

    from .hub import PublishArguments, publish

    return _run(publish, argv, (PublishArguments,), publish_main.__doc__, extra_errors=(HfHubHTTPError,))


def data_main(argv=None) -> int:
    """`mmsr-data`: prepare processed domain folders."""
    from pathlib import Path

    from .data.movielens import prepare_movielens
    from .data.synthetic import SYNTHETIC_DOMAINS, SyntheticWorldConfig, generate_world

    parser = argparse.ArgumentParser(prog="mmsr-data", description=data_main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    synthetic = commands.add_parser("synthetic", help="Generate the embedded synthetic world (labelled synthetic).")
    synthetic.add_argument(
        "--data_dir", default="data", help="Root of processed domains (writes <data_dir>/synthetic)."
    )
    synthetic.add_argument("--domains", nargs="+", default=None, help=f"Subset of {sorted(SYNTHETIC_DOMAINS)}.")
    synthetic.add_argument("--seed", type=int, default=0, help="Seed of the world.")
    synthetic.add_argument("--overwrite", action="store_true", help="Replace existing folders.")
    movielens = commands.add_parser("movielens", help="MovieLens-100k (real data, from the recbole wheel's files).")
    movielens.add_argument(
        "--data_dir", default="data", help="Root of processed domains (writes <data_dir>/movielens)."
    )
    movielens.add_argument("--posters", default=None, help="Folder of <item_id>.jpg posters to use as item images.")
    movielens.add_argument("--overwrite", action="store_true", help="Replace an existing folder.")
    args = parser.parse_args(argv)
    try:
        if args.command == "movielens":
            paths = [prepare_movielens(args.data_dir, args.posters, args.overwrite)]
        else:
            world = SyntheticWorldConfig(seed=args.seed)
            paths = generate_world(Path(args.data_dir) / "synthetic", args.domains, world, args.overwrite)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0
