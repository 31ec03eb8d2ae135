"""`sk.explain`: why every value is sharded the way it is, and what communication that costs,
predicted by shardkit's model next to what XLA actually compiled."""
from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from shardkit.hlo import collectives_from_hlo
from shardkit.ir import Graph, MeshShape
from shardkit.ir.printer import type_text
from shardkit.jit import DEFAULT_PIPELINE, ShardedFunction
from shardkit.passes.communication import Collective, graph_collectives, peak_memory
from shardkit.passes.partition import is_partitioned, spmd_collectives
from shardkit.passes.sharding_engine import value_order


@dataclass(frozen=True)
class ValueRow:
    name: str
    type: str
    origin: str


@dataclass
class ExplainReport:
    """Per-value shardings with their provenance; predicted and compiled collectives side by side."""

    graph: Graph
    mesh: MeshShape
    values: list[ValueRow]
    collectives: list[Collective]
    compiled_collectives: list[Collective]
    unruled: list[str] = field(default_factory=list)
    peak_bytes: int = 0
    hlo: str = ""
    warnings: list[str] = field(default_factory=list)
    lowering: str = "xla"
    """"spmd": `collectives` are the collective ops of shardkit's partitioned program, exact, not predicted."""

    @staticmethod
    def totals(collectives) -> dict[str, tuple[int, float]]:
        out: dict[str, list] = defaultdict(lambda: [0, 0.0])
        for c in collectives:
            out[c.kind][0] += 1
            out[c.kind][1] += c.bytes
        return {k: (v[0], v[1]) for k, v in out.items()}

    @property
    def predicted_bytes(self) -> float:
        return sum(c.bytes for c in self.collectives)

    @property
    def compiled_bytes(self) -> float:
        return sum(c.bytes for c in self.compiled_collectives)

    def disagreements(self, tolerance: float = 0.10) -> list[str]:
        """Collective kinds where prediction and XLA differ by more than `tolerance` in bytes."""
        predicted, compiled = self.totals(self.collectives), self.totals(self.compiled_collectives)
        out = []
        for kind in sorted(set(predicted) | set(compiled)):
            p, c = predicted.get(kind, (0, 0.0)), compiled.get(kind, (0, 0.0))
            if abs(p[1] - c[1]) > tolerance * max(p[1], c[1], 1.0):
                out.append(f"{kind}: predicted {p[0]} moving {p[1]:,.0f} B, XLA compiled {c[0]} moving {c[1]:,.0f} B")
        return out

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table

        values = Table(title=f"shardings over mesh ({self.mesh})", show_lines=False)
        values.add_column("value")
        values.add_column("type and sharding")
        values.add_column("from")
        for row in self.values:
            values.add_row(row.name, row.type, row.origin)
        source = "shardkit's program" if self.lowering == "spmd" else "predicted"
        side = Table(title=f"collectives: {source} vs compiled by XLA")
        short = "program" if self.lowering == "spmd" else "predicted"
        for col in ("kind", f"{short} #", f"{short} bytes", "XLA #", "XLA bytes", ""):
            side.add_column(col, justify="right" if col not in ("kind", "") else "left")
        predicted, compiled = self.totals(self.collectives), self.totals(self.compiled_collectives)
        for kind in sorted(set(predicted) | set(compiled)):
            p, c = predicted.get(kind, (0, 0.0)), compiled.get(kind, (0, 0.0))
            flag = "" if abs(p[1] - c[1]) <= 0.10 * max(p[1], c[1], 1.0) else "differs"
            side.add_row(kind, str(p[0]), f"{p[1]:,.0f}", str(c[0]), f"{c[1]:,.0f}", flag)
        side.add_row("total", str(len(self.collectives)), f"{self.predicted_bytes:,.0f}",
                     str(len(self.compiled_collectives)), f"{self.compiled_bytes:,.0f}", "")
        detail = Table(title="collectives in shardkit's program" if self.lowering == "spmd"
                       else "predicted collectives")
        for col in ("kind", "axes", "bytes", "where"):
            detail.add_column(col)
        for c in self.collectives:
            detail.add_row(c.kind, "+".join(c.axes), f"{c.bytes:,.0f}", c.where)
        parts = [values, side, detail]
        notes = [f"peak per-device memory of live values: {self.peak_bytes:,} B"]
        notes += [f"no sharding rule (operands kept replicated): {u}" for u in self.unruled]
        notes += [f"warning: {w}" for w in self.warnings]
        from rich.text import Text
        parts += [Text(n) for n in notes]
        return Group(*parts)

    def __str__(self) -> str:
        from rich.console import Console
        buffer = io.StringIO()
        Console(file=buffer, width=160, force_terminal=False, color_system=None).print(self)
        return buffer.getvalue()


def explain(fn: Callable, *, mesh, in_specs=None, out_specs=None, pipeline: str = DEFAULT_PIPELINE,
            allow_uneven: bool = False, axis_rules=None, lowering: str = "xla") -> Callable[..., ExplainReport]:
    """Same arguments as `sk.jit`; calling the result on example arguments returns an ExplainReport.
    With lowering="spmd" the collectives are those of shardkit's partitioned program, counted exactly."""
    sharded = ShardedFunction(fn, mesh, in_specs, out_specs, pipeline, lowering=lowering,
                              allow_uneven=allow_uneven, axis_rules=axis_rules)

    def run(*args, **kwargs) -> ExplainReport:
        build = sharded.build(*args, **kwargs)
        program = build.graph
        graph = build.propagated if build.propagated is not None else program
        hlo = build.lowered.lower(*args, **kwargs).compile().as_text()
        origins = build.propagation.origins if build.propagation is not None else {}
        rows = []
        for index, value in enumerate(value_order(graph)):
            dims = origins.get(value, [])
            origin = "; ".join(sorted({o for o in dims if o})) or ("-" if value.type.rank else "")
            rows.append(ValueRow(f"%{index}", type_text(value.type), origin))
        unruled = build.propagation.unruled if build.propagation is not None else []
        spmd = is_partitioned(program)
        collectives = spmd_collectives(program) if spmd else graph_collectives(graph, sharded.mesh_shape)
        warnings = [d.message for d in build.ctx.diagnostics if d.severity == "warning"]
        return ExplainReport(graph, sharded.mesh_shape, rows, collectives,
                             collectives_from_hlo(hlo, sharded.mesh), list(unruled),
                             peak_memory(graph, sharded.mesh_shape), hlo, warnings,
                             "spmd" if spmd else "xla")

    return run
