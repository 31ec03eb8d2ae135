"""Typed pass options: checking Python values, reading them from pipeline text, writing them back.

Supported option types: bool, int, float, str, Literal[...], Enum subclasses, tuple[T, ...] and
`T | None`. In a pipeline string they read `true`/`false`, `16`, `0.5`, `word` or `"any text"`,
`[a,b]` for tuples (a single value is a one-element tuple) and `none`.
"""
from __future__ import annotations

import enum
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from .errors import PassOptionError

_BARE = re.compile(r"[A-Za-z0-9_.\-+/:@%*]+\Z")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Quoted:
    """A string that was written in double quotes in the pipeline text (never a keyword like none)."""

    text: str


def _origin(hint):
    return typing.get_origin(hint)


def _args(hint):
    return typing.get_args(hint)


def _is_optional(hint) -> bool:
    return _origin(hint) in (Union, types.UnionType) and type(None) in _args(hint)


def _without_none(hint):
    rest = tuple(a for a in _args(hint) if a is not type(None))
    return rest[0] if len(rest) == 1 else Union[rest]


def describe(hint) -> str:
    """A short human name of an option type, for help texts and errors."""
    if hint is bool:
        return "bool"
    if hint is int:
        return "int"
    if hint is float:
        return "float"
    if hint is str:
        return "str"
    if _origin(hint) is Literal:
        return "one of " + "|".join(str(a) for a in _args(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + "|".join(m.name for m in hint)
    if _origin(hint) is tuple:
        return f"list of {describe(_args(hint)[0])}"
    if _is_optional(hint):
        return f"{describe(_without_none(hint))} or none"
    return getattr(hint, "__name__", str(hint))


def supported(hint) -> bool:
    """Whether options of this type can be written in a pipeline string."""
    if hint in (bool, int, float, str) or _origin(hint) is Literal:
        return True
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return True
    if _origin(hint) is tuple:
        args = _args(hint)
        return len(args) == 2 and args[1] is Ellipsis and supported(args[0])
    if _is_optional(hint):
        return supported(_without_none(hint))
    return False


def coerce(value: Any, hint) -> Any:
    """`value` as an option of type `hint` (ints widen to float, lists become tuples); ValueError if not."""
    if _is_optional(hint):
        return None if value is None else coerce(value, _without_none(hint))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif _origin(hint) is Literal:
        if value in _args(hint):
            return value
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return value
    elif _origin(hint) is tuple:
        if isinstance(value, (tuple, list)):
            return tuple(coerce(v, _args(hint)[0]) for v in value)
    else:
        return value  # a type pipelines cannot express: accepted as given from Python
    raise ValueError(f"expected {describe(hint)}, got {value!r}")


def from_text(raw, hint) -> Any:
    """Convert a parsed pipeline value (a bare str, a Quoted, or a list of those) to type `hint`."""
    if _is_optional(hint):
        if isinstance(raw, str) and raw.lower() == "none":
            return None
        return from_text(raw, _without_none(hint))
    if _origin(hint) is tuple:
        items = raw if isinstance(raw, list) else [raw]
        return tuple(from_text(item, _args(hint)[0]) for item in items)
    if isinstance(raw, list):
        raise ValueError(f"expected {describe(hint)}, got a list")
    quoted = isinstance(raw, Quoted)
    text = raw.text if quoted else raw
    if hint is str:
        return text
    if quoted:
        raise ValueError(f"expected {describe(hint)}, got the quoted string {format_value(raw.text)}")
    if hint is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
    elif hint is int:
        try:
            return int(text)
        except ValueError:
            pass
    elif hint is float:
        try:
            return float(text)
        except ValueError:
            pass
    elif _origin(hint) is Literal:
        for choice in _args(hint):
            if str(choice) == text or (isinstance(choice, bool) and text.lower() == str(choice).lower()):
                return choice
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        for member in hint:
            if member.name == text or str(member.value) == text:
                return member
    else:
        raise ValueError(f"options of type {describe(hint)} cannot be given in a pipeline string")
    raise ValueError(f"expected {describe(hint)}, got {text!r}")


def format_value(value: Any) -> str:
    """The pipeline-text form of an option value (inverse of `from_text`)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    text = str(value)
    if _BARE.match(text) and text.lower() != "none":
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def option_error(pass_name: str, message: str, signature: str) -> PassOptionError:
    """A PassOptionError that says which pass, what is wrong, and what options the pass takes."""
    return PassOptionError(f"pass '{pass_name}': {message}; {signature}")
