"""`inline`: replace call-like ops (`jit`, `pjit`, `closed_call`, `core_call`) by the ops of their region.

Shardings the call imposed survive: when a region argument carries a sharding its operand does not,
or the call fixed an output sharding (`out_shardings`), a `sharding_constraint` op keeps it. Calls
nested in regions (a jit inside a scan body) are inlined into that region. `marked-only=true`
inlines only calls that JAX itself marked `inline=True`.
"""
from __future__ import annotations

from dataclasses import dataclass

from jax.sharding import NamedSharding

from shardkit.ir import Graph, Op, Sharding, Value

from .base import ALL_PROPERTIES, Pass
from .errors import PassOptionError
from .registry import register

CALL_OPS = ("jit", "pjit", "closed_call", "core_call")
INLINABLE = CALL_OPS + ("remat2", "custom_jvp_call", "custom_vjp_call")
"""Ops whose single region computes exactly their results from their operands (the ones `ops` may
name). Inlining the last three keeps the values but drops rematerialisation or custom derivatives."""


def clone_graph(graph: Graph) -> Graph:
    """A copy of `graph` (regions included) whose values are all new objects: safe to splice twice."""
    mapping: dict[Value, Value] = {}
    return _clone(graph, mapping)


def _clone(graph: Graph, mapping: dict[Value, Value]) -> Graph:
    def fresh(v: Value) -> Value:
        new = Value(v.type, v.hint)
        mapping[v] = new
        return new

    inputs = tuple(fresh(v) for v in graph.inputs)
    ops = []
    for op in graph.ops:
        regions = tuple(_clone(r, mapping) for r in op.regions)
        operands = tuple(mapping.get(v, v) for v in op.operands)
        ops.append(op.replace(operands=operands, results=tuple(fresh(v) for v in op.results),
                              regions=regions))
    outputs = tuple(mapping.get(v, v) for v in graph.outputs)
    return graph.replace(inputs=inputs, ops=tuple(ops), outputs=outputs)


def _constraint(value: Value, sharding: Sharding) -> tuple[Op, Value]:
    result = Value(value.type.with_sharding(sharding))
    return Op("sharding_constraint", (value,), (result,)), result


def _out_shardings(op: Op) -> list[Sharding | None]:
    out = []
    params = op.params.get("out_shardings") or ()
    for i, result in enumerate(op.results):
        entry = params[i] if i < len(params) else None
        if isinstance(entry, NamedSharding) and entry.mesh.size > 1:
            out.append(Sharding.from_partition_spec(entry.spec, result.type.rank))
        else:
            out.append(None)
    return out


class _Inliner:
    def __init__(self, names: tuple[str, ...], marked_only: bool):
        self.names = names
        self.marked_only = marked_only
        self.spliced: set[int] = set()
        self.count = 0

    def wants(self, op: Op) -> bool:
        if op.name not in self.names or len(op.regions) != 1:
            return False
        region = op.regions[0]
        if len(region.inputs) != len(op.operands) or len(region.outputs) != len(op.results):
            return False
        return not self.marked_only or bool(op.params.get("inline", False))

    def graph(self, graph: Graph) -> Graph:
        mapping: dict[Value, Value] = {}
        ops: list[Op] = []
        changed = False
        for op in graph.ops:
            if mapping and any(v in mapping for v in op.operands):
                op = op.replace(operands=tuple(mapping.get(v, v) for v in op.operands))
                changed = True
            if op.regions:
                regions = tuple(self.graph(r) for r in op.regions)
                if any(a is not b for a, b in zip(regions, op.regions)):
                    op = op.replace(regions=regions)
                    changed = True
            if self.wants(op):
                self.splice(op, ops, mapping)
                changed = True
            else:
                ops.append(op)
        if not changed:
            return graph
        outputs = tuple(mapping.get(v, v) for v in graph.outputs)
        return graph.replace(ops=tuple(ops), outputs=outputs)

    def splice(self, op: Op, ops: list[Op], mapping: dict[Value, Value]) -> None:
        region = op.regions[0]
        if id(region) in self.spliced:
            region = clone_graph(region)
        self.spliced.add(id(region))
        inner: dict[Value, Value] = {}
        for arg, operand in zip(region.inputs, op.operands):
            wanted = arg.type.sharding
            if wanted is not None and wanted != operand.type.sharding:
                constraint, operand = _constraint(operand, wanted)
                ops.append(constraint)
            inner[arg] = operand
        for inner_op in region.ops:
            if any(v in inner for v in inner_op.operands):
                inner_op = inner_op.replace(operands=tuple(inner.get(v, v) for v in inner_op.operands))
            ops.append(inner_op)
        for result, out, forced in zip(op.results, region.outputs, _out_shardings(op)):
            value = inner.get(out, out)
            wanted = forced if forced is not None else result.type.sharding
            if wanted is not None and wanted != value.type.sharding:
                constraint, value = _constraint(value, wanted)
                ops.append(constraint)
            mapping[result] = value
        self.count += 1


def inline_calls(graph: Graph, names: tuple[str, ...] = CALL_OPS, marked_only: bool = False) -> Graph:
    """`graph` with every call op named in `names` replaced by its region's ops."""
    return _Inliner(tuple(names), marked_only).graph(graph)


@register
@dataclass(frozen=True)
class Inline(Pass):
    """Inline the regions of call ops (jit, pjit, closed_call) into the graph that calls them."""

    name = "inline"
    preserves = ALL_PROPERTIES

    ops: tuple[str, ...] = CALL_OPS
    marked_only: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [name for name in self.ops if name not in INLINABLE]
        if unknown:
            raise PassOptionError(f"pass 'inline': option 'ops' names {', '.join(unknown)}, which cannot "
                                  f"be inlined; choose from {', '.join(INLINABLE)}")

    def run(self, graph: Graph, ctx) -> Graph:
        return inline_calls(graph, self.ops, self.marked_only)
