"""Command-line arguments: dataclasses parsed by `HfArgumentParser`, optionally filled from `--config file.yaml`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .domains import DEFAULT_DATA_DIR, SOURCES


@dataclass
class DataArguments:
    """Where the training data comes from."""

    domains: list[str] = field(
        default_factory=lambda: ["food", "home", "movies"], metadata={"help": "Source domains to pretrain on."}
    )
    data_source: str = field(
        default="synthetic", metadata={"help": f"Where processed domains come from, one of: {', '.join(SOURCES)}."}
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

    def __post_init__(self):
        if not 0 <= self.cold_start_fraction < 1:
            raise ValueError(f"--cold_start_fraction must be in [0, 1), got {self.cold_start_fraction}")
        if not 0 < self.train_user_fraction <= 1:
            raise ValueError(f"--train_user_fraction must be in (0, 1], got {self.train_user_fraction}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds `(default: X)` to a help text once, only where there is a default and the text does not give it."""

    def _get_help_string(self, action):
        if action.default is None or action.required or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parse_args(dataclass_types, argv=None, description: str | None = None):
    """Parses `argv` into one instance of each dataclass. `--config file.yaml` gives arguments that flags on the
    command line override; its values go through the same parsing and checks as flags (a key that is no argument,
    or a value of the wrong type, is an error naming the file)."""
    import sys

    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types, description=description, formatter_class=HelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file whose keys fill the arguments; flags win.")
    config_only = argparse.ArgumentParser(add_help=False)  # read --config before required flags are checked
    config_only.add_argument("--config", default=None)
    argv = list(sys.argv[1:] if argv is None else argv)
    known, _ = config_only.parse_known_args(argv)
    if known.config:
        valid = {f.name for cls in dataclass_types for f in dataclasses.fields(cls)}
        argv = config_flags(known.config, valid, parser) + argv  # flags given later on the line win
    parsed = parser.parse_args_into_dataclasses(argv)
    return [p for p in parsed if not isinstance(p, argparse.Namespace)]  # drop the namespace holding --config


def flag_tokens(value) -> list[str]:
    """A value as command-line tokens: `True` -> `["true"]`, `[1, 2]` -> `["1", "2"]`."""
    return [str(v).lower() if isinstance(v, bool) else str(v) for v in (value if isinstance(value, list) else [value])]


def as_flags(settings: dict) -> list[str]:
    """`{"domains": ["a"], "logq": False}` -> `["--domains", "a", "--logq", "false"]` (what `parse_args` reads)."""
    return [token for key, value in settings.items() for token in (f"--{key}", *flag_tokens(value))]


def config_flags(path: str, valid: set[str], parser: argparse.ArgumentParser) -> list[str]:
    """The command-line flags that the YAML file `path` stands for (`lr: 1e-4` -> `["--lr", "1e-4"]`)."""
    try:
        settings = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        parser.error(f"--config {path}: cannot read it ({err.strerror})")
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        parser.error(f"--config {path}: not valid YAML{line} ({getattr(err, 'problem', None) or err})")
    if not isinstance(settings, dict):
        parser.error(f"{path}: expected a mapping of argument names to values")
    unknown = sorted(set(settings) - valid)
    if unknown:
        parser.error(f"{path}: unknown keys {unknown}; valid keys: {sorted(valid)}")
    flags = []
    for key, value in settings.items():
        if isinstance(value, dict):
            parser.error(f"{path}: key {key!r} holds a mapping; expected a value or a list")
        if value is None:
            continue
        tokens = flag_tokens(value)
        convert = parser._option_string_actions[f"--{key}"].type
        for token in tokens:  # what argparse would say, but naming the file and the key
            try:
                convert(token) if callable(convert) else token
            except (TypeError, ValueError):
                parser.error(f"{path}: key {key!r}: invalid {getattr(convert, '__name__', 'value')} value {token!r}")
        flags += [f"--{key}", *tokens]
    return flags


def save_run_args(folder: str | Path, *arguments) -> None:
    """Writes the run's arguments (not the architecture) to `run_args.json`."""
    from .io import atomic_write_text

    merged = {name: value for args in arguments for name, value in dataclasses.asdict(args).items()}
    atomic_write_text(Path(folder) / "run_args.json", json.dumps(merged, indent=2) + "\n")
