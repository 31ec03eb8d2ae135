"""`cse`: common-subexpression elimination. Two ops with the same name, operands, params, regions and
result types compute the same values, so the later one is dropped and its uses read the earlier one.

Never merged: effectful ops, collectives and random-number ops (and ops containing any of those),
and ops without results. Regions are handled twice: each region is cleaned on its own (regions are
closed, so no value crosses into them), and ops with regions are compared by their regions' text.
"""
from __future__ import annotations

from dataclasses import dataclass

from shardkit.ir import Graph, Op, Value

from .base import ALL_PROPERTIES, Pass
from .effects import is_pure
from .registry import register


def eliminate_common_subexpressions(graph: Graph, recurse: bool = True) -> Graph:
    """`graph` with duplicate pure ops merged (the same object when there were none)."""
    mapping: dict[Value, Value] = {}
    seen: dict[tuple, Op] = {}
    ops: list[Op] = []
    changed = False
    for op in graph.ops:
        if mapping and any(v in mapping for v in op.operands):
            op = op.replace(operands=tuple(mapping.get(v, v) for v in op.operands))
            changed = True
        if recurse and op.regions:
            regions = tuple(eliminate_common_subexpressions(r) for r in op.regions)
            if any(a is not b for a, b in zip(regions, op.regions)):
                op = op.replace(regions=regions)
                changed = True
        key = _key(op)
        if key is not None:
            earlier = _find_or_add(seen, key, op)
            if earlier is not None:
                mapping.update(zip(op.results, earlier.results))
                changed = True
                continue
        ops.append(op)
    if not changed:
        return graph
    outputs = tuple(mapping.get(v, v) for v in graph.outputs)
    return graph.replace(ops=tuple(ops), outputs=outputs)


def _key(op: Op) -> tuple | None:
    """What makes two ops interchangeable, or None when `op` must never be merged."""
    if not op.results or not is_pure(op):
        return None
    regions = tuple(str(r) for r in op.regions) if op.regions else ()
    key = (op.name, op.operands, op.params, tuple(v.type for v in op.results), regions)
    try:
        hash(key)
    except TypeError:  # a param that cannot be compared safely: leave the op alone
        return None
    return key


def _find_or_add(seen: dict[tuple, Op], key: tuple, op: Op) -> Op | None:
    """The earlier op with this key, or None after recording `op` as the first one."""
    try:
        earlier = seen.get(key)
        if earlier is None:
            seen[key] = op
        return earlier
    except Exception:  # a param whose == does not give a bool: treat the op as distinct
        return None


@register
@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    """Merge ops that compute the same thing; random, effectful and collective ops are never merged."""

    name = "cse"
    preserves = ALL_PROPERTIES

    regions: bool = True

    def run(self, graph: Graph, ctx) -> Graph:
        return eliminate_common_subexpressions(graph, recurse=self.regions)
