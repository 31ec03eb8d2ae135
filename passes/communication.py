"""Communication and memory model: the collectives a sharded graph needs, and per-device peak memory.

For each op with a factor rule, the factors' mesh axes are read from its results (reduction factors
from its operands); every operand whose sharding differs from what those factors need is resharded
(axes it has but must not: all-gather; axes on another dimension: all-to-all; axes it lacks: a free
local slice), and sharded reduction factors leave partial sums that are all-reduced. Control-flow
ties and ops without a rule (operands gathered to replicated) are charged the same way. Costs use
the ring model for bytes and an alpha-beta model per mesh axis for time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from shardkit.ir import Graph, MeshShape, Op, Value
from shardkit.ir.factors import Pin, Tie

from .base import Pass
from .registry import register


@dataclass(frozen=True)
class Collective:
    """One collective: kind, mesh axes, group size, per-device bytes on the wire, and where it is."""

    kind: str
    axes: tuple[str, ...]
    group_size: int
    bytes: float
    where: str = ""

    def __str__(self) -> str:
        axes = "+".join(self.axes) or "?"
        return f"{self.kind} over {axes} (n={self.group_size}): {self.bytes:,.0f} B at {self.where}"


def ring_bytes(kind: str, n: int, operand_bytes: float, result_bytes: float) -> float:
    """Per-device wire bytes (ring model): all-reduce 2(n-1)/n of its operand, all-gather (n-1)/n of
    its result, reduce-scatter and all-to-all (n-1)/n of the operand, collective-permute its operand."""
    if n <= 1:
        return 0.0
    if kind == "all-reduce":
        return 2 * (n - 1) / n * operand_bytes
    if kind == "all-gather":
        return (n - 1) / n * result_bytes
    if kind in ("reduce-scatter", "all-to-all"):
        return (n - 1) / n * operand_bytes
    return float(operand_bytes)


@dataclass(frozen=True)
class CostModel:
    """Alpha-beta time model: seconds = latency + bytes / bandwidth, per mesh axis (GB/s)."""

    bandwidth_gbps: dict = field(default_factory=dict)
    default_bandwidth_gbps: float = 50.0
    latency_us: float = 5.0

    def seconds(self, c: Collective) -> float:
        bw = min((self.bandwidth_gbps.get(a, self.default_bandwidth_gbps) for a in c.axes),
                 default=self.default_bandwidth_gbps)
        return self.latency_us * 1e-6 + c.bytes / (bw * 1e9)


def _product(mesh: MeshShape, axes) -> int:
    n = 1
    for a in axes:
        n *= mesh.size(a)
    return n


def _dims(value: Value) -> list[tuple[str, ...]]:
    s = value.type.sharding
    return [d.axes for d in s.dims] if s is not None else [() for _ in value.type.shape]


def _local_bytes(value: Value, mesh: MeshShape, dims) -> float:
    return value.type.nbytes / _product(mesh, [a for d in dims for a in d])


def reshard_collectives(value: Value, have, need, mesh: MeshShape, where: str) -> list[Collective]:
    """What moving `value` from dim axes `have` to dim axes `need` costs."""
    have_all = {a for d in have for a in d}
    need_all = {a for d in need for a in d}
    out = []
    moved = tuple(a for k, d in enumerate(have) for a in d if a in need_all and a not in need[k])
    gathered = tuple(a for d in have for a in d if a not in need_all)
    if moved:
        n = _product(mesh, moved)
        local = _local_bytes(value, mesh, have)
        out.append(Collective("all-to-all", moved, n, ring_bytes("all-to-all", n, local, local), where))
    if gathered:
        n = _product(mesh, gathered)
        kept = [tuple(a for a in d if a not in gathered) for d in have]
        result = _local_bytes(value, mesh, kept)
        out.append(Collective("all-gather", gathered, n, ring_bytes("all-gather", n, result / n, result), where))
    return out


def _factor_axes(rule, op: Op, mesh: MeshShape) -> dict[str, tuple[str, ...]]:
    axes: dict[str, tuple[str, ...]] = {f: () for f in rule.replication}
    used: set[str] = set()
    sizes = rule.size_of

    def read(value, mapping):
        for d, factors in enumerate(mapping):
            have = list(_dims(value)[d])
            for f in factors:
                taken, product = [], 1
                while have and sizes[f] % (product * mesh.size(have[0])) == 0 and product < sizes[f]:
                    product *= mesh.size(have[0])
                    taken.append(have.pop(0))
                if f not in axes:  # results first; an axis serves one factor (operands holding it elsewhere move)
                    kept = []
                    for axis in taken:
                        if axis in used:
                            break
                        kept.append(axis)
                    axes[f] = tuple(kept)
                    used.update(kept)

    for value, mapping in zip(op.results, rule.results):
        read(value, mapping)
    for value, mapping in zip(op.operands, rule.operands):
        read(value, mapping)
    return axes


def op_collectives(op: Op, mesh: MeshShape, label: str, seen: set | None = None) -> list[Collective]:
    """Collectives one op needs, given the shardings on its operands and results.

    `seen` holds (value, sharding) reshards already charged: a value moved to the same sharding twice
    is moved once (XLA's CSE merges the two collectives)."""
    seen = set() if seen is None else seen

    def reshard(value, have, need, where):
        key = (value, tuple(tuple(d) for d in need))
        if key in seen:
            return []
        seen.add(key)
        return reshard_collectives(value, have, need, mesh, where)

    definition = op.definition
    rule = definition.sharding_rule(op) if definition.sharding_rule is not None else None
    out: list[Collective] = []
    if definition.region_ties is not None:
        for item in definition.region_ties(op):
            if isinstance(item, Tie):
                have = _dims(item.outer)[1:] if item.stacked else _dims(item.outer)
                need = _dims(item.inner)
                if list(have) != list(need):
                    out += reshard(item.inner, have, need, f"{label} (region edge)")
            elif isinstance(item, Pin):
                have = _dims(item.value)
                need = [h if d.is_open and not d.axes else d.axes for d, h in zip(item.sharding.dims, have)]
                if have != need and item.value in op.operands:
                    out += reshard(item.value, have, need, label)
        if rule is None:
            return out
    if rule is None:
        for i, v in enumerate(op.operands):
            if any(_dims(v)):
                out += reshard(v, _dims(v), [() for _ in v.type.shape], f"{label} operand {i} (no sharding rule)")
        return out
    axes = _factor_axes(rule, op, mesh)
    for i, (value, mapping) in enumerate(zip(op.operands, rule.operands)):
        need = []
        for factors in mapping:
            dim = []
            for f in factors:
                dim.extend(axes.get(f, ()))
                if _product(mesh, axes.get(f, ())) < rule.size_of[f]:
                    break
            need.append(tuple(dim))
        have = _dims(value)
        if list(have) != need:
            out += reshard(value, have, need, f"{label} operand {i}")
    reduced = tuple(a for f in sorted(rule.reduction) for a in axes.get(f, ()))
    if reduced:
        n = _product(mesh, reduced)
        for value in op.results:
            local = _local_bytes(value, mesh, _dims(value))
            out.append(Collective("all-reduce", reduced, n, ring_bytes("all-reduce", n, local, local), label))
    return out


def graph_collectives(graph: Graph, mesh: MeshShape, where: str = "", seen: set | None = None) -> list[Collective]:
    """Every collective the sharded graph needs, regions included (shard_map bodies excepted)."""
    seen = set() if seen is None else seen
    out = []
    for index, op in enumerate(graph.ops):
        label = f"{where}{op.name}#{index}"
        out += op_collectives(op, mesh, label, seen)
        if op.name != "shard_map":
            for r, region in enumerate(op.regions):
                out += graph_collectives(region, mesh, f"{label}/region{r}/", seen)
    return out


def peak_memory(graph: Graph, mesh: MeshShape) -> int:
    """Predicted per-device bytes as XLA's memory_analysis() counts them: arguments and outputs for the
    whole program plus the peak of materialised temporaries and collective buffers (auto_shard_memory)."""
    from .auto_shard_memory import estimate_memory
    return estimate_memory(graph, mesh)


@dataclass(frozen=True)
class CommunicationReport:
    collectives: tuple[Collective, ...]
    peak_bytes: int
    seconds: float

    @property
    def total_bytes(self) -> float:
        return sum(c.bytes for c in self.collectives)


@register
@dataclass(frozen=True)
class AnalyzeCommunication(Pass):
    """Analysis: predicted collectives, bytes and time (alpha-beta), and peak per-device memory.

    The CommunicationReport is cached in ctx.analyses and summarised in the diagnostics.
    """

    name: ClassVar[str] = "analyze-communication"
    preserves: ClassVar[frozenset[str]] = frozenset({"*"})
    bandwidth_gbps: float = 50.0
    latency_us: float = 5.0

    def run(self, graph: Graph, ctx) -> Graph:
        mesh = ctx.mesh_shape if ctx is not None and ctx.mesh is not None else graph.mesh
        if mesh is None:
            return graph
        report = communication_report(graph, mesh, CostModel({}, self.bandwidth_gbps, self.latency_us))
        if ctx is not None:
            ctx.analyses.put(CommunicationReport, graph, report)
            ctx.diagnostics.note(f"{len(report.collectives)} collectives, {report.total_bytes:,.0f} B per "
                                 f"device, ~{report.seconds * 1e6:.1f} us; peak memory {report.peak_bytes:,} B")
        return graph


def communication_report(graph: Graph, mesh: MeshShape, model: CostModel | None = None) -> CommunicationReport:
    model = model or CostModel()
    collectives = tuple(graph_collectives(graph, mesh))
    return CommunicationReport(collectives, peak_memory(graph, mesh), sum(model.seconds(c) for c in collectives))
