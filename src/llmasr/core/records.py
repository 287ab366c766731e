"""Typed records from plain data: the one way YAML (recipes, profiles) and JSON configs become dataclasses.

A record's dataclass defaults are its only defaults; a mapping lists what it changes. Values are checked
against the field annotations (numbers, booleans, strings, lists, optional fields, nested records), and an
error names the dotted key (`stages.1.lr: expected a number, got 'fast'`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

from llmasr.core.errors import LlmasrError


class RecordError(LlmasrError):
    """Plain data that does not fit a record; names the key."""


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def split_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, allows None) for `X | None` / Optional[X]."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), len(args) < len(typing.get_args(tp))
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` as type `tp` (dataclass, list[X], dict, scalar); RecordError naming `key` if it cannot be."""
    inner, optional = split_optional(tp)
    if value is None:
        if optional:
            return None
        raise RecordError(f"{key}: may not be null")
    if dataclasses.is_dataclass(inner):
        if isinstance(value, inner):
            return value
        if not isinstance(value, dict):
            raise RecordError(f"{key}: expected a mapping, got {value!r}")
        return build_record(inner, value, key)
    origin = typing.get_origin(inner)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(inner) or (Any,)
        return [_coerce(v, item, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict or inner is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if inner is Any:
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise RecordError(f"{key}: expected true or false, got {value!r}")
    if inner in (int, float):
        if isinstance(value, bool):
            raise RecordError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise RecordError(f"{key}: expected a number, got {value!r}") from None
        if inner is int:
            if not number.is_integer():
                raise RecordError(f"{key}: expected a whole number, got {value!r}")
            return int(number)
        return number
    if inner is str:
        if isinstance(value, (dict, list)):
            raise RecordError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def build_record(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """An instance of dataclass `cls` from plain data (parsed YAML, JSON): fields typed by the
    annotations, nested dataclasses built recursively, missing fields left at their defaults. Raises
    RecordError naming the dotted key of the first value that does not fit."""
    hints = field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise RecordError(
            f"unknown key '{prefix + '.' if prefix else ''}{unknown[0]}'; allowed: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix + '.' if prefix else ''}{k}") for k, v in data.items()}
    return cls(**kwargs)
