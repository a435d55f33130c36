"""Parsing command lines into argument dataclasses (`HfArgumentParser`), optionally filled from `--config
file.yaml`, with renamed flags still accepted (a dataclass's `deprecated_flags`).

`parse_args` is what every command calls; `as_flags` turns settings back into flags (benchmark rows, configs)."""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

import yaml


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds `(default: X)` to a help text once, only where there is a default and the text does not give it."""

    def _get_help_string(self, action):
        if action.default is None or action.required or "(default" in (action.help or ""):
            return action.help
        if isinstance(action, argparse._StoreFalseAction):  # `--no_logq`: HfArgumentParser copies --logq's help
            return f"Turn off --{action.dest}."
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
    # renamed flags a dataclass still accepts (its `deprecated_flags`), on the line and as --config keys
    deprecated = {old: new for cls in dataclass_types for old, new in getattr(cls, "deprecated_flags", {}).items()}
    if known.config:
        valid = {f.name for cls in dataclass_types for f in dataclasses.fields(cls)} | set(deprecated)
        argv = config_flags(known.config, valid, parser, deprecated) + argv  # flags given later on the line win
    argv = rewrite_deprecated(argv, deprecated)
    parsed = parser.parse_args_into_dataclasses(argv)
    return [p for p in parsed if not isinstance(p, argparse.Namespace)]  # drop the namespace holding --config


def flag_tokens(value) -> list[str]:
    """A value as command-line tokens: `True` -> `["true"]`, `[1, 2]` -> `["1", "2"]`."""
    return [str(v).lower() if isinstance(v, bool) else str(v) for v in (value if isinstance(value, list) else [value])]


def as_flags(settings: dict) -> list[str]:
    """`{"domains": ["a"], "logq": False}` -> `["--domains", "a", "--logq", "false"]` (what `parse_args` reads)."""
    return [token for key, value in settings.items() for token in (f"--{key}", *flag_tokens(value))]


def config_flags(path: str, valid: set[str], parser: argparse.ArgumentParser, deprecated=()) -> list[str]:
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
        action = parser._option_string_actions.get(f"--{key}")
        if isinstance(value, dict) and isinstance(action, argparse._ExtendAction):  # `rank_pattern: {text: 16}`
            value = [f"{k}={','.join(flag_tokens(v))}" for k, v in value.items()]
        if isinstance(value, dict):
            parser.error(f"{path}: key {key!r} holds a mapping; expected a value or a list")
        if value is None:
            continue
        tokens = flag_tokens(value)
        if key in deprecated:  # checked when the flag is rewritten and parsed
            flags += [f"--{key}", *tokens]
            continue
        convert = action.type
        takes_bool = getattr(convert, "__name__", None) == "string_to_bool"
        if isinstance(value, bool) and not takes_bool:  # YAML reads a bare no/yes/off/on as a boolean
            parser.error(f"{path}: key {key!r}: {value} is a boolean; quote a text value (e.g. '{key}: \"no\"')")
        if isinstance(value, list) and action.nargs in (None, "?"):
            parser.error(f"{path}: key {key!r}: a list {value}; expected a single value")
        for token in tokens:  # what argparse would say, but naming the file and the key
            try:
                convert(token) if callable(convert) else token
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                parser.error(f"{path}: key {key!r}: invalid {getattr(convert, '__name__', 'value')} value {token!r}")
        flags += [f"--{key}", *tokens]
    return flags


def rewrite_deprecated(argv: list[str], deprecated: dict[str, tuple[str, str]]) -> list[str]:
    """Rewrites the `deprecated` flags of `argv` (`{old name: (new name, KEY)}`) into pairs of the new flag, with a
    FutureWarning each: `--text_lora_r 16` -> `--rank_pattern text=16`."""
    rewritten, i = [], 0
    while i < len(argv):
        flag, given, inline = argv[i].partition("=")  # `--text_lora_r=16` as well; `--text-lora-r` as well
        name = flag[2:].replace("-", "_") if flag.startswith("--") else None
        if name not in deprecated:
            rewritten.append(argv[i])
            i += 1
            continue
        values, i = ([inline] if given else []), i + 1
        while not given and i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
        pattern, component = deprecated[name]
        pair = f"{component}={','.join(values)}"
        warnings.warn(f"--{name} is deprecated; use --{pattern} {pair}", FutureWarning, stacklevel=3)
        rewritten += [f"--{pattern}", pair]
    return rewritten
