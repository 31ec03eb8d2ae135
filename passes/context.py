"""The context a pass runs in: the mesh, pipeline-wide options, a diagnostics sink and an analysis cache."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, TextIO, TypeVar

from shardkit.ir import Graph, MeshShape, Op

T = TypeVar("T")

SEVERITIES = ("note", "warning", "error")


@dataclass(frozen=True)
class Diagnostic:
    """One message from a pass: severity, text, the pass that said it and optionally the op concerned."""

    severity: str
    message: str
    pass_name: str | None = None
    op_name: str | None = None

    def __str__(self) -> str:
        where = f"[{self.pass_name}] " if self.pass_name else ""
        about = f" (op '{self.op_name}')" if self.op_name else ""
        return f"{self.severity}: {where}{self.message}{about}"


class Diagnostics:
    """Collects notes, warnings and errors from passes; the PassManager fails a pass that reports errors."""

    def __init__(self) -> None:
        self._items: list[Diagnostic] = []
        self.current_pass: str | None = None

    def emit(self, severity: str, message: str, op: Op | None = None) -> Diagnostic:
        """Record a diagnostic of the given severity ('note', 'warning' or 'error')."""
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
        item = Diagnostic(severity, message, self.current_pass, op.name if op is not None else None)
        self._items.append(item)
        return item

    def note(self, message: str, op: Op | None = None) -> Diagnostic:
        """Record an informational message."""
        return self.emit("note", message, op)

    def warning(self, message: str, op: Op | None = None) -> Diagnostic:
        """Record a warning (the pipeline continues)."""
        return self.emit("warning", message, op)

    def error(self, message: str, op: Op | None = None) -> Diagnostic:
        """Record an error: the PassManager stops after the current pass and reports it."""
        return self.emit("error", message, op)

    def errors(self, pass_name: str | None = None) -> list[Diagnostic]:
        """The error diagnostics, optionally only those from one pass."""
        return [d for d in self._items
                if d.severity == "error" and (pass_name is None or d.pass_name == pass_name)]

    def __iter__(self) -> Iterator[Diagnostic]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __str__(self) -> str:
        return "\n".join(str(d) for d in self._items)


class AnalysisCache:
    """Results of analyses keyed by (analysis, graph object); valid as long as graphs are immutable.

    `get(count_flops, graph)` computes `count_flops(graph)` once and returns the cached result after.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, int], tuple[Graph, Any]] = {}

    def get(self, analysis: Callable[[Graph], T], graph: Graph) -> T:
        """The cached result of `analysis(graph)`, computing it on first use."""
        key = (analysis, id(graph))
        entry = self._entries.get(key)
        if entry is not None and entry[0] is graph:
            return entry[1]
        value = analysis(graph)
        self._entries[key] = (graph, value)
        return value

    def put(self, analysis: Any, graph: Graph, value: Any) -> None:
        """Store a result computed elsewhere (e.g. by a pass) under `analysis` for `graph`."""
        self._entries[(analysis, id(graph))] = (graph, value)

    def peek(self, analysis: Any, graph: Graph, default: Any = None) -> Any:
        """The cached result for `graph`, or `default` when nothing is cached (never computes)."""
        entry = self._entries.get((analysis, id(graph)))
        return entry[1] if entry is not None and entry[0] is graph else default

    def keep_only(self, graph: Graph) -> None:
        """Drop results of every graph but `graph` (called by the PassManager when a pass changes it)."""
        self._entries = {k: v for k, v in self._entries.items() if v[0] is graph}

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class PassContext:
    """What every pass receives besides the graph.

    mesh: the jax Mesh (or MeshShape / {axis: size}) the pipeline runs for, or None;
    options: pipeline-wide settings any pass may read; diagnostics: messages from passes;
    analyses: a cache of analysis results shared between passes; out: where IR dumps go
    (None: sys.stdout at the time of printing); debug: extra checking requested.
    """

    mesh: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    analyses: AnalysisCache = field(default_factory=AnalysisCache)
    out: TextIO | None = None
    debug: bool = False

    @property
    def mesh_shape(self) -> MeshShape | None:
        """The mesh's axis names and sizes, or None when the pipeline has no mesh."""
        return None if self.mesh is None else MeshShape.of(self.mesh)

    @property
    def current_pass(self) -> str | None:
        """The name of the pass now running (None between passes)."""
        return self.diagnostics.current_pass

    def write(self, text: str) -> None:
        """Write text to the context's output stream."""
        stream = self.out if self.out is not None else sys.stdout
        stream.write(text)
        if not text.endswith("\n"):
            stream.write("\n")
