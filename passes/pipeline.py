"""Pipelines: an ordered list of configured passes, read from and written as a string.

    dce,cse,canonicalize{fold-limit=64,erase-dead=false},print{label="after cleanup"}

Grammar: entries separated by commas; an entry is a pass name or a pipeline alias (like `default`),
optionally followed by `{key=value,...}`; a value is a bare word, a "quoted string" or `[v1,v2]`.
Option keys are the pass's field names, written with hyphens (`fold-limit`) or as in Python
(`fold_limit`); a parsed pipeline prints them as written, a built one with hyphens.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Iterator, Sequence

from shardkit.ir import Graph

from .base import Pass, format_entry, make_pass
from .errors import PipelineError
from .options import Quoted
from .registry import alias_text, get_pass, unknown_pass_error

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*")
_BARE_VALUE = re.compile(r"[^,{}\[\]=\"\s]+")


class Pipeline:
    """An immutable sequence of passes; `Pipeline.parse(text)` and `str(pipeline)` round-trip."""

    def __init__(self, passes: Iterable[Pass] = (), *, _items: Sequence[tuple[str, tuple[Pass, ...]]] | None = None):
        if _items is None:
            items = []
            for p in passes:
                if not isinstance(p, Pass):
                    raise PipelineError(f"a Pipeline holds Pass instances, got {p!r}; build one from "
                                        f"a string with Pipeline.parse(...)")
                items.append((str(p), (p,)))
            _items = items
        self._items = tuple((text, tuple(ps)) for text, ps in _items)
        self.passes: tuple[Pass, ...] = tuple(p for _, ps in self._items for p in ps)

    @classmethod
    def parse(cls, text: str) -> "Pipeline":
        """Read a pipeline string; unknown passes and bad options raise errors listing the valid ones."""
        if isinstance(text, Pipeline):
            return text
        if not isinstance(text, str):
            raise PipelineError(f"a pipeline string is expected, got {type(text).__name__}")
        return cls(_items=_Reader(text).entries())

    def run(self, graph: Graph, mesh: Any = None, **manager_options: Any) -> Graph:
        """Run the passes in order; keyword options go to PassManager (verify=, print_after=, ctx=, ...)."""
        from .manager import PassManager
        return PassManager(self, **manager_options).run(graph, mesh=mesh)

    def __str__(self) -> str:
        return ",".join(text for text, _ in self._items)

    def __repr__(self) -> str:
        return f"Pipeline.parse({str(self)!r})"

    def __iter__(self) -> Iterator[Pass]:
        return iter(self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    def __getitem__(self, index: int) -> Pass:
        return self.passes[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.passes == other.passes

    def __hash__(self) -> int:
        return hash(self.passes)

    def __add__(self, other: "Pipeline | Pass | str") -> "Pipeline":
        if isinstance(other, str):
            other = Pipeline.parse(other)
        elif isinstance(other, Pass):
            other = Pipeline([other])
        if not isinstance(other, Pipeline):
            return NotImplemented
        return Pipeline(_items=self._items + other._items)

    def tail(self, start: int) -> "Pipeline":
        """The pipeline from pass number `start` (0-based) on, written pass by pass."""
        return Pipeline(self.passes[start:])


class _Reader:
    """A small recursive-descent reader of pipeline text with column-accurate errors."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.expanding: tuple[str, ...] = ()

    def fail(self, message: str, pos: int | None = None) -> PipelineError:
        pos = self.pos if pos is None else pos
        return PipelineError(f"{message} at column {pos + 1} of pipeline {self.text!r}\n"
                             f"  {self.text}\n  {' ' * pos}^")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "end of pipeline"
            raise self.fail(f"expected {char!r}, found {found}")
        self.pos += 1

    def entries(self) -> list[tuple[str, tuple[Pass, ...]]]:
        items: list[tuple[str, tuple[Pass, ...]]] = []
        if self.peek() == "":
            return items
        while True:
            items.append(self.entry())
            if self.peek() == "":
                return items
            self.expect(",")

    def entry(self) -> tuple[str, tuple[Pass, ...]]:
        self.skip_ws()
        start = self.pos
        match = _NAME.match(self.text, self.pos)
        if match is None:
            raise self.fail("expected a pass name")
        name = match.group()
        self.pos = match.end()
        raw: dict[str, Any] = {}
        if self.peek() == "{":
            raw = self.options(name)
        alias = alias_text(name)
        if alias is not None:
            if raw:
                raise self.fail(f"pipeline alias '{name}' takes no options", start)
            if name in self.expanding:
                raise self.fail(f"pipeline alias '{name}' refers to itself", start)
            inner = _Reader(alias)
            inner.expanding = self.expanding + (name,)
            return name, tuple(p for _, ps in inner.entries() for p in ps)
        try:
            cls = get_pass(name)
        except KeyError:
            raise unknown_pass_error(name, f" at column {start + 1} of pipeline {self.text!r}") from None
        p = make_pass(cls, raw)
        explicit = [(key, getattr(p, key.replace("-", "_"))) for key in raw]  # spelled as written
        return format_entry(p.name, explicit), (p,)

    def options(self, pass_name: str) -> dict[str, Any]:
        self.expect("{")
        raw: dict[str, Any] = {}
        if self.peek() == "}":
            self.pos += 1
            return raw
        while True:
            self.skip_ws()
            key_pos = self.pos
            match = _NAME.match(self.text, self.pos)
            if match is None:
                raise self.fail(f"expected an option name for pass '{pass_name}'")
            key = match.group()
            self.pos = match.end()
            if any(k.replace("-", "_") == key.replace("-", "_") for k in raw):
                raise self.fail(f"option '{key}' of pass '{pass_name}' is given twice", key_pos)
            self.expect("=")
            raw[key] = self.value()
            if self.peek() == "}":
                self.pos += 1
                return raw
            self.expect(",")

    def value(self):
        char = self.peek()
        if char == "[":
            self.pos += 1
            items = []
            if self.peek() == "]":
                self.pos += 1
                return items
            while True:
                items.append(self.value())
                if self.peek() == "]":
                    self.pos += 1
                    return items
                self.expect(",")
        if char == '"':
            return Quoted(self.string())
        match = _BARE_VALUE.match(self.text, self.pos)
        if match is None:
            raise self.fail("expected an option value (a word, a \"quoted string\" or [a,b])")
        self.pos = match.end()
        return match.group()

    def string(self) -> str:
        start = self.pos
        self.pos += 1
        chars = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                chars.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            if char == '"':
                self.pos += 1
                return "".join(chars)
            chars.append(char)
            self.pos += 1
        raise self.fail("unterminated string", start)
