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

    def __post_init__(self):
        if not 0 <= self.cold_start_fraction < 1:
            raise ValueError(f"--cold_start_fraction must be in [0, 1), got {self.cold_start_fraction}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds `(default: X)` to a help text once, only where there is a default and the text does not give it."""

    def _get_help_string(self, action):
        if action.default is None or action.required or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parse_args(dataclass_types, argv=None, description: str | None = None):
    """Parses `argv` into one instance of each dataclass. `--config file.yaml` sets defaults that flags override;
    a key of the YAML file that is no argument is an error."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types, description=description, formatter_class=HelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file whose keys fill the arguments; flags win.")
    config_only = argparse.ArgumentParser(add_help=False)  # read --config before required flags are checked
    config_only.add_argument("--config", default=None)
    known, _ = config_only.parse_known_args(argv)
    if known.config:
        settings = yaml.safe_load(Path(known.config).read_text()) or {}
        if not isinstance(settings, dict):
            parser.error(f"{known.config}: expected a mapping of argument names to values")
        valid = {f.name for cls in dataclass_types for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - valid)
        if unknown:
            parser.error(f"{known.config}: unknown keys {unknown}; valid keys: {sorted(valid)}")
        parser.set_defaults(**settings)
        for action in parser._actions:  # a required flag given by the file is no longer required on the line
            if action.dest in settings:
                action.required = False
    parsed = parser.parse_args_into_dataclasses(argv)
    return [p for p in parsed if not isinstance(p, argparse.Namespace)]  # drop the namespace holding --config


def save_run_args(folder: str | Path, *arguments) -> None:
    """Writes the run's arguments (not the architecture) to `run_args.json`."""
    from .io import atomic_write_text

    merged = {name: value for args in arguments for name, value in dataclasses.asdict(args).items()}
    atomic_write_text(Path(folder) / "run_args.json", json.dumps(merged, indent=2) + "\n")
