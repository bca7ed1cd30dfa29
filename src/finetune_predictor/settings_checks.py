"""How a settings group is checked: the field metadata of allowed values and ranges, the conversion of one value
to its field's type, and the problems of one group, each naming the full setting
(``data.train_per_class must be an integer, got 'abc'``).

:class:`SettingsGroup` gives a settings dataclass its ``from_params``: unknown keys are refused (listing the known
ones, and the closest one for a typo), each value is checked against the field's type, and what the command line or
YAML spelt loosely is converted (a number for a text label, a quoted number, a list for a tuple). The groups
themselves live in ``settings_schema.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Literal, Union

from finetune_predictor.errors import UserFacingError


class SettingsError(UserFacingError, ValueError):
    """One or more settings that cannot work; ``settings`` names each one (``data.train_per_class``)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        names = list(dict.fromkeys(setting for setting, _ in problems))
        example = names[0] if names and "." in names[0] else None
        fix = (f"correct it in conf/base/parameters_{example.split('.')[0]}.yml (or conf/local/) or on the command "
               f"line: kedro run --params \"{example}=...\"" if example else None)
        super().__init__("; ".join(message for _, message in problems if message), ", ".join(names), fix)


class _Invalid(Exception):
    """A value that does not fit its field; the message completes 'SETTING must ...'."""


def choices(module: str, name: str) -> dict[str, Any]:
    """Field metadata: the allowed values are ``module.name`` (read when checking, so no import cycle)."""
    return {"choices": lambda: tuple(getattr(importlib.import_module(module), name))}


def one_of(*values: str) -> dict[str, Any]:
    return {"choices": lambda: values}


def at_least(low: float, **more: Any) -> dict[str, Any]:
    return {"min": low, **more}


def between(low: float, high: float, closed_high: bool = False) -> dict[str, Any]:
    """The interval (low, high), or (low, high] with ``closed_high``."""
    return {"above": low, "max" if closed_high else "below": high}


# --- checking one value against its type ----------------------------------------------------------------


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (tuple, list):
        return f"a list of {_describe(args[0])}s" if args else "a list"
    if origin in (dict, Mapping) or hint is dict:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return "a mapping of settings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _scalar(value: Any, hint: type, strict: bool) -> Any:
    """``value`` as a bool, int, float or str. A value of the right kind is returned unchanged (an int stays
    an int in a float field, so run names and configuration hashes do not change); text that spells a number
    is read as one, and a number given for a text field (a label ``1`` on the command line) becomes text."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Invalid
    if hint is str:
        if isinstance(value, str) or not strict:
            return str(value)
        raise _Invalid
    if isinstance(value, int) or (hint is float and isinstance(value, float)):
        return value
    if strict:
        raise _Invalid
    if isinstance(value, float):  # an integral float for an integer field (100.0)
        if value.is_integer():
            return int(value)
        raise _Invalid
    text = value.strip()
    try:
        return int(text) if hint is int else float(text)
    except ValueError:
        raise _Invalid from None


def _item(value: Any, hint: Any, name: str) -> Any:
    """One element of a list or mapping setting; a wrong one is named itself (``data.label_map.x``)."""
    try:
        return _convert(value, hint, name)
    except _Invalid:
        raise SettingsError([(name, f"{name} must be {_describe(hint)}, got {value!r}")]) from None


def _convert(value: Any, hint: Any, name: str, strict: bool = False) -> Any:
    """``value`` as ``hint`` says (tuple for a list, dataclass for a mapping), or :class:`_Invalid`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        for member_strict in (True, False):  # an exact match first: 3 stays an int in `str | int`
            for member in members:
                try:
                    return _convert(value, member, name, member_strict)
                except _Invalid:
                    continue
        raise _Invalid
    if origin is Literal:
        if value in args or str(value) in args:
            return str(value) if str(value) in args else value
        raise _Invalid
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise _Invalid
        return tuple(_item(item, args[0] if args else Any, f"{name}[{i}]") for i, item in enumerate(value))
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise _Invalid
        value_hint = args[1] if len(args) == 2 else Any
        return {str(k): _item(v, value_hint, f"{name}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if value is None:
            return hint()
        if not isinstance(value, Mapping):
            raise _Invalid
        return _from_mapping(hint, value, name)
    return _scalar(value, hint, strict)


_LIMITS = {"min": (lambda v, b: v >= b, ">="), "max": (lambda v, b: v <= b, "<="),
           "above": (lambda v, b: v > b, ">"), "below": (lambda v, b: v < b, "<")}


def _bounds(value: Any, meta: Mapping[str, Any], name: str) -> str | None:
    """The problem with ``value`` against its field's allowed values and range, if any."""
    if value is None:
        return None
    allowed = meta.get("choices")
    items = value if isinstance(value, tuple) else (value,)
    if allowed is not None and any(item not in allowed() for item in items):
        return f"{name} must be one of {', '.join(map(str, allowed()))}, got {value!r}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        for key, (holds, sign) in _LIMITS.items():
            if key in meta and not holds(value, meta[key]):
                return f"{name} must be {sign} {meta[key]}, got {value!r}"
    return None


# --- checking one group ---------------------------------------------------------------------------------


def _unknown_keys(cls: type, values: Mapping[str, Any], prefix: str) -> list[tuple[str, str]]:
    """One problem per unknown key; the first carries the message that lists them all beside the known ones
    (the others have an empty message: they are named in ``where`` but not repeated)."""
    known = sorted(f.name for f in fields(cls))
    unknown = sorted(set(map(str, values)) - set(known))
    if not unknown:
        return []
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        named.append(f"{prefix}.{key}" + (f" (did you mean {prefix}.{close[0]}?)" if close else ""))
    message = f"Unknown setting(s) {', '.join(named)}; known: {', '.join(known)}"
    return [(f"{prefix}.{key}", message if index == 0 else "") for index, key in enumerate(unknown)]


def _problems_and_values(cls: type, values: Mapping[str, Any] | None,
                         prefix: str) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    values = dict(values or {})
    problems = _unknown_keys(cls, values, prefix)
    hints = typing.get_type_hints(cls)
    converted: dict[str, Any] = {}
    for item in fields(cls):
        if item.name not in values:
            continue
        name = f"{prefix}.{item.name}"
        try:
            converted[item.name] = _convert(values[item.name], hints[item.name], name)
        except SettingsError as nested:  # a nested group: its own problems, named in full
            problems.extend(nested.problems)
            continue
        except _Invalid:
            problems.append((name, f"{name} must be {_describe(hints[item.name])}, got {values[item.name]!r}"))
            continue
        problem = _bounds(converted[item.name], item.metadata, name)
        if problem:
            problems.append((name, problem))
    return problems, converted


def group_problems(cls: type, values: Mapping[str, Any] | None, prefix: str) -> tuple[list[tuple[str, str]], Any]:
    """The problems of one group, and its settings object when there are none (range checks between
    fields, in ``__post_init__``, run only on values of the right types)."""
    problems, converted = _problems_and_values(cls, values, prefix)
    if problems:
        return problems, None
    try:
        return [], cls(**converted)
    except SettingsError as error:
        return error.problems, None


def _from_mapping(cls: type, values: Mapping[str, Any] | None, prefix: str) -> Any:
    problems, settings = group_problems(cls, values, prefix)
    if problems:
        raise SettingsError(problems)
    return settings


class SettingsGroup:
    """``from_params`` for a settings dataclass whose group is ``PREFIX``."""

    PREFIX = ""

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None) -> Any:
        """The group's settings from ``values`` (None: the defaults), or :class:`SettingsError` naming every problem."""
        return _from_mapping(cls, values, cls.PREFIX)
