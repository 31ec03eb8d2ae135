"""`dce`: dead-code elimination. Removes ops whose results are unused, keeping effects and collectives.

An op is kept when one of its results is used (by a kept op or a graph output) or when it must stay
regardless: it is effectful, a collective, or has an op like that in one of its regions. Regions are
cleaned too; their arguments and results stay as they are (the op that owns them fixes those).
"""
from __future__ import annotations

from dataclasses import dataclass

from shardkit.ir import Graph

from .base import ALL_PROPERTIES, Pass
from .effects import must_keep
from .registry import register


def eliminate_dead_code(graph: Graph, recurse: bool = True) -> Graph:
    """`graph` without dead ops (the same object when nothing was dead)."""
    live = set(graph.outputs)
    kept = []
    changed = False
    for op in reversed(graph.ops):
        if not must_keep(op) and not any(v in live for v in op.results):
            changed = True
            continue
        if recurse and op.regions:
            regions = tuple(eliminate_dead_code(r) for r in op.regions)
            if any(a is not b for a, b in zip(regions, op.regions)):
                op = op.replace(regions=regions)
                changed = True
        live.update(op.operands)
        kept.append(op)
    if not changed:
        return graph
    kept.reverse()
    return graph.replace(ops=tuple(kept))


@register
@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Remove ops whose results nobody uses; effectful ops and collectives always stay."""

    name = "dce"
    preserves = ALL_PROPERTIES

    regions: bool = True

    def run(self, graph: Graph, ctx) -> Graph:
        return eliminate_dead_code(graph, recurse=self.regions)
