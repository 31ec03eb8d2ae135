"""The Pass base class: a frozen dataclass whose fields are its options, and whose `run` rewrites a graph.

    @dataclass(frozen=True)
    class MyPass(Pass):
        name = "my-pass"
        threshold: int = 4                       # an option: `my-pass{threshold=8}`

        def run(self, graph, ctx):
            return graph
"""
from __future__ import annotations

import abc
import dataclasses
import re
import typing
from typing import Any, ClassVar

from shardkit.ir import Graph

from . import options as _options
from .errors import PassOptionError

PASS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*")
"""What a pass name (and a pipeline alias) may look like."""

ALL_PROPERTIES: frozenset[str] = frozenset({"*"})
"""Use as `preserves` to say a pass keeps every property that held before it."""


@dataclasses.dataclass(frozen=True)
class Pass(abc.ABC):
    """A graph-to-graph transformation or analysis, configured by its dataclass fields (options).

    Class attributes: `name` (used in pipeline strings), `requires` (properties that must hold on
    the input), `guarantees` (properties that hold on the output) and `preserves` (properties that
    stay true if they held before; ALL_PROPERTIES for passes that never break any). A subclass
    that defines `__post_init__` must call `super().__post_init__()` (it checks the options).
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    guarantees: ClassVar[frozenset[str]] = frozenset()
    preserves: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        hints = option_types(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            try:
                coerced = _options.coerce(value, hints[field.name])
            except ValueError as e:
                raise _options.option_error(self.name or type(self).__name__,
                                            f"option '{field.name}' {e}", signature(type(self))) from None
            if coerced is not value:
                object.__setattr__(self, field.name, coerced)

    @abc.abstractmethod
    def run(self, graph: Graph, ctx) -> Graph:
        """Return the transformed graph (the same object when nothing changed)."""

    def options(self) -> dict[str, Any]:
        """The pass's options as a {name: value} dict, in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def changed_options(self) -> dict[str, Any]:
        """The options whose value differs from the default."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = _default_of(f)
            if default is dataclasses.MISSING or value != default:
                out[f.name] = value
        return out

    def __str__(self) -> str:
        return format_pass(self, self.changed_options())


def format_pass(p: Pass, opts: dict[str, Any]) -> str:
    """`name{key=value,...}` for the given options (just `name` when there are none)."""
    return format_entry(p.name, [(option_text_name(k), v) for k, v in opts.items()])


def format_entry(name: str, items: list[tuple[str, Any]]) -> str:
    """`name{key=value,...}` with the keys spelled exactly as given."""
    if not items:
        return name
    inner = ",".join(f"{key}={_options.format_value(value)}" for key, value in items)
    return f"{name}{{{inner}}}"


def option_text_name(field_name: str) -> str:
    """How an option is spelled in pipeline text: `respect_hints` reads `respect-hints`."""
    return field_name.replace("_", "-")


def _default_of(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


_HINTS: dict[type, dict[str, Any]] = {}


def option_types(cls: type) -> dict[str, Any]:
    """The resolved type of each option (dataclass field) of a pass class."""
    found = _HINTS.get(cls)
    if found is None:
        try:
            hints = typing.get_type_hints(cls)
        except NameError as e:
            raise PassOptionError(f"the option types of pass class {cls.__name__} cannot be resolved "
                                  f"({e}); define the types they name at module level") from None
        found = {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}
        _HINTS[cls] = found
    return found


def signature(cls: type) -> str:
    """A one-line description of a pass's options, e.g. `canonicalize{fold-limit: int = 16}`."""
    name = getattr(cls, "name", "") or cls.__name__
    fields = dataclasses.fields(cls)
    if not fields:
        return f"'{name}' takes no options"
    hints = option_types(cls)
    parts = []
    for f in fields:
        default = _default_of(f)
        text = f"{option_text_name(f.name)}: {_options.describe(hints[f.name])}"
        text += " (required)" if default is dataclasses.MISSING else f" = {_options.format_value(default)}"
        parts.append(text)
    return f"its options are {name}{{{', '.join(parts)}}}"


def make_pass(cls: type, raw_options: dict[str, Any]) -> Pass:
    """Build a pass from options read from pipeline text (values are raw strings or lists)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = option_types(cls)
    values = {}
    for written, raw in raw_options.items():
        key = written.replace("-", "_")  # pipeline text may spell options with hyphens
        if key not in fields:
            raise _options.option_error(cls.name, f"unknown option '{written}'", signature(cls))
        try:
            values[key] = _options.from_text(raw, hints[key])
        except ValueError as e:
            raise _options.option_error(cls.name, f"option '{written}' {e}", signature(cls)) from None
    missing = [n for n, f in fields.items() if n not in values and _default_of(f) is dataclasses.MISSING]
    if missing:
        raise _options.option_error(cls.name, f"missing required option(s) {', '.join(missing)}",
                                    signature(cls))
    return cls(**values)


def check_pass_class(cls: type) -> None:
    """Raise PassOptionError unless `cls` is a usable Pass class (frozen dataclass, name, option types)."""
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise PassOptionError(f"{cls!r} is not a subclass of shardkit.passes.Pass")
    if "__dataclass_fields__" not in vars(cls):
        raise PassOptionError(f"pass class {cls.__name__} must be decorated with "
                              f"@dataclasses.dataclass(frozen=True)")
    if not cls.__dataclass_params__.frozen:
        raise PassOptionError(f"pass class {cls.__name__} must be a frozen dataclass: "
                              f"use @dataclasses.dataclass(frozen=True)")
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not PASS_NAME.fullmatch(name):
        raise PassOptionError(f"pass class {cls.__name__} needs a class attribute `name` such as "
                              f"'my-pass' (letters, digits, '-', '_', '.'; starting with a letter), "
                              f"got {name!r}")
    options = {f.name for f in dataclasses.fields(cls)}
    for reserved in ("name", "requires", "guarantees", "preserves"):
        if reserved in options:
            raise PassOptionError(f"pass class {cls.__name__} declares '{reserved}' as a dataclass field; "
                                  f"write it as a plain class attribute (`{reserved} = ...`) or annotate "
                                  f"it ClassVar so it is not taken for an option")
    for field_name, hint in option_types(cls).items():
        if not _options.supported(hint):
            raise PassOptionError(f"option '{field_name}' of pass '{name}' has type {hint!r}, which "
                                  f"pipeline strings cannot express; use bool, int, float, str, "
                                  f"Literal, an Enum, tuple[T, ...] or T | None")
