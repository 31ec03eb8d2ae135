"""Per-device memory as XLA's `memory_analysis()` counts it: arguments + outputs + peak temporaries.

XLA keeps every argument for the whole program (nothing is donated) and gives every output its own
buffer, live from the op that produces it to the end (before that, its space holds temporaries). The
end of the program holds the arguments, the outputs and the partial sums of the all-reduces that
produce outputs (XLA combines those all-reduces into one at the end, so their inputs live together).
Temporaries are the intermediate values XLA materialises, live from their producer to their last
use, plus, at each op, the buffers its communication needs: a gathered (or otherwise resharded) copy
of an operand and the partial sums an all-reduce reads. An op with regions adds the peak of its
region's temporaries at its point (a loop body's temporaries live while the loop runs). A value is
*not* materialised when XLA fuses it into its only user: a constant, iota or broadcast scalar
(recomputed inside every user), or an element-wise result whose single user is element-wise or a
reduction, or any result whose single user is a layout change (a transpose or reshape XLA folds into
the producer or makes a bitcast); the fused value's operands then live until that user runs.

`memory_schedule` gives the schedule in this form; `estimate_memory` evaluates it for a graph whose
values carry shardings (what `peak_memory` reports); auto-shard builds its memory rows from the
same schedule (passes/auto_shard.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from shardkit.ir import Graph, MeshShape, Op, Value

_CHEAP = ("constant", "iota")
_FUSING_USERS = ("transpose", "reshape", "convert_element_type", "squeeze", "expand_dims")


def _rule(op: Op):
    definition = op.definition
    return definition.sharding_rule(op) if definition.sharding_rule is not None else None


def is_elementwise(op: Op) -> bool:
    """An op whose every result element depends on the same element of each (same-shaped) operand."""
    if op.regions or not op.results:
        return False
    shape = op.results[0].type.shape
    if any(r.type.shape != shape for r in op.results):
        return False
    if any(v.type.shape != shape and v.type.rank != 0 for v in op.operands):
        return False
    rule = _rule(op)
    return rule is not None and not rule.reduction and not rule.replication


def is_cheap(op: Op) -> bool:
    """A constant, an iota or a broadcast scalar: XLA recomputes it inside each user."""
    return len(op.results) == 1 and (op.name in _CHEAP or (
        op.name == "broadcast_in_dim" and all(v.type.rank == 0 for v in op.operands)))


def _fuses_into(user: Op) -> bool:
    return is_elementwise(user) or user.name.startswith("reduce_") or user.name in _FUSING_USERS


@dataclass
class Schedule:
    """One graph's memory schedule: `always` values (arguments, and outputs no op produces, at the top
    level), per op the materialised intermediates live at it (its results included) and the outputs
    produced so far, and `end_ops`: the ops whose collective buffers are live at the end of the program
    (the all-reduces producing outputs, which XLA combines)."""

    graph: Graph
    always: list[Value]
    live: list[list[Value]] = field(default_factory=list)
    outputs: list[list[Value]] = field(default_factory=list)
    end_ops: list[Op] = field(default_factory=list)

    @property
    def all_outputs(self) -> list[Value]:
        """Every output some op produces (all of them are live at the end)."""
        return self.outputs[-1] if self.outputs else []


def memory_schedule(graph: Graph, top: bool = True, links: frozenset[int] = frozenset(),
                    gathers: frozenset[int] = frozenset()) -> Schedule:
    """The schedule of `graph` in program order. At the top level arguments and outputs are `always`
    live; in a region they are the region op's operands and results, counted outside. `links`: ids of
    ops that, like a layout change, fold into their operand's producer (auto-shard's storage links of
    outputs: a slice of the producer's result, or the result itself); `gathers`: ids of ops whose
    result a collective materialises (auto-shard's all-gather links), never fused into a user."""
    uses: dict[Value, list[int]] = {}
    for index, op in enumerate(graph.ops):
        for v in op.operands:
            uses.setdefault(v, []).append(index)
    boundary = set(graph.inputs) | set(graph.outputs)
    producer: dict[Value, int] = {}
    fused: set[Value] = set()
    for index, op in enumerate(graph.ops):
        for v in op.results:
            producer[v] = index
            if v in boundary or id(op) in gathers:
                continue
            users = uses.get(v, [])
            single = graph.ops[users[0]] if len(users) == 1 else None
            if is_cheap(op) or (single is not None and (single.name in _FUSING_USERS or id(single) in links or (
                    is_elementwise(op) and _fuses_into(single)))):
                fused.add(v)
    # a fused value's operands live until the op it is fused into runs
    last: dict[Value, int] = {}
    for index, op in enumerate(graph.ops):
        for v in op.operands:
            last[v] = max(last.get(v, -1), index)
    for index in range(len(graph.ops) - 1, -1, -1):
        op = graph.ops[index]
        for v in op.results:
            if v in fused and not is_cheap(op):
                for u in op.operands:
                    last[u] = max(last.get(u, -1), last.get(v, index))
    produced = [v for v in dict.fromkeys(graph.outputs) if v in producer and v not in graph.inputs] if top else []
    always = (list(graph.inputs) + [v for v in dict.fromkeys(graph.outputs)
                                    if v not in produced and v not in graph.inputs]) if top else []
    schedule = Schedule(graph, always)
    schedule.live = [[] for _ in graph.ops]
    schedule.outputs = [[v for v in produced if producer[v] <= index] for index in range(len(graph.ops))]
    end: dict[int, Op] = {}
    for v in produced:
        index = producer[v]
        # through layout changes XLA folds into the producer, back to the op whose all-reduce it is
        while (graph.ops[index].name in _FUSING_USERS or id(graph.ops[index]) in links) \
                and len(graph.ops[index].operands) == 1 \
                and graph.ops[index].operands[0] in producer:
            index = producer[graph.ops[index].operands[0]]
        end.setdefault(index, graph.ops[index])
    schedule.end_ops = [end[k] for k in sorted(end)]
    for v, start in producer.items():
        if v not in boundary and v not in fused:
            for index in range(start, max(last.get(v, -1), start) + 1):
                schedule.live[index].append(v)
    return schedule


def _local(value: Value, mesh: MeshShape, dims) -> float:
    return value.type.nbytes / math.prod(mesh.size(a) for d in dims for a in d)


def _dims(value: Value):
    s = value.type.sharding
    return [d.axes for d in s.dims] if s is not None else [() for _ in value.type.shape]


def collective_buffers(op: Op, mesh: MeshShape) -> float:
    """Per-device bytes of the buffers the op's own collectives need besides its results: the
    resharded copy of an operand (all-gather, all-to-all) and the partial sums an all-reduce reads."""
    from .communication import op_collectives
    total = 0.0
    for c in op_collectives(op, mesh, op.name):
        n = c.group_size
        if n <= 1:
            continue
        if c.kind == "all-reduce":
            total += c.bytes * n / (2 * (n - 1))
        elif c.kind in ("all-gather", "all-to-all", "reduce-scatter"):
            total += c.bytes * n / (n - 1)
        else:
            total += c.bytes
    return total


def _region_peak(op: Op, mesh: MeshShape) -> float:
    if op.name == "shard_map":
        return 0.0
    return max((_peak(memory_schedule(r, top=False), mesh) for r in op.regions), default=0.0)


def _peak(schedule: Schedule, mesh: MeshShape) -> float:
    base = sum(_local(v, mesh, _dims(v)) for v in schedule.always)
    peak = base
    for index, op in enumerate(schedule.graph.ops):
        live = sum(_local(v, mesh, _dims(v)) for v in schedule.live[index] + schedule.outputs[index])
        peak = max(peak, base + live + collective_buffers(op, mesh) + _region_peak(op, mesh))
    end = sum(_local(v, mesh, _dims(v)) for v in schedule.all_outputs) \
        + sum(_reduction_buffers(op, mesh) for op in schedule.end_ops)
    return max(peak, base + end)


def _reduction_buffers(op: Op, mesh: MeshShape) -> float:
    """Per-device bytes of the partial sums the op's all-reduces read."""
    from .communication import op_collectives
    return sum(c.bytes * c.group_size / (2 * (c.group_size - 1)) for c in op_collectives(op, mesh, op.name)
               if c.kind == "all-reduce" and c.group_size > 1)


def estimate_memory(graph: Graph, mesh: MeshShape) -> int:
    """Predicted per-device bytes of the compiled program (arguments + outputs + peak temporaries)."""
    return int(math.ceil(_peak(memory_schedule(graph), mesh)))
