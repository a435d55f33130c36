"""Shared behaviour of the config dataclasses: strict `from_dict` (unknown keys, wrong types) and `to_dict`."""

from __future__ import annotations

import dataclasses
import types
import typing


class ConfigMixin:
    """Mixed into every config dataclass. `from_dict` rebuilds nested configs and rejects unknown keys."""

    @classmethod
    def from_dict(cls, data: dict, where: str | None = None):
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; valid keys: {names}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in data.items():
            kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _convert(value, hint, where: str):
    """Checks `value` against a simple type hint, rebuilding nested config dataclasses from dicts."""
    options = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"{where}: got null, expected {_name(hint)}")
    for option in options:
        if isinstance(option, type) and issubclass(option, ConfigMixin):
            if isinstance(value, option):
                return value
            return option.from_dict(value, where)
    if any(_matches(value, option) for option in options):
        return tuple(value) if typing.get_origin(hint) is tuple and isinstance(value, list) else value
    raise ValueError(f"{where}: got {type(value).__name__} {value!r}, expected {_name(hint)}")


def _matches(value, option) -> bool:
    origin = typing.get_origin(option) or option
    if option is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, (tuple, list))
    return isinstance(origin, type) and isinstance(value, origin)


def _name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
