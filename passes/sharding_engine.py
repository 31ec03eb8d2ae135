"""The sharding-propagation engine behind the `propagate-sharding` pass.

Shardy-style factor propagation. Every op with a factor rule (ir/factors.py) and every tie between an
op and its regions becomes a *constraint* over some values. Each value dimension holds a sharding
state: ordered mesh axes, open or closed, a priority (0 strongest; user hints are 0) and where it came
from. Propagation runs priority level by priority level and, within a level, in stages (element-wise
ops and region ties first, then the rest, broadcasts last), sweeping forward and backward until
nothing changes. A factor's axes are chosen from its candidates: the strongest priority wins; among
equals, compatible candidates (one a prefix of the other) merge to the longer one; conflicts are
skipped in `basic` mode and go to the larger tensor in `aggressive` mode (so the smaller one moves).
Closed dims never change. Finally every open dimension is closed with the axes it reached.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shardkit.ir import Graph, MeshShape, Sharding, ShardingError, Value
from shardkit.ir.factors import FactorRule, Pin, Tie
from shardkit.ir.printer import type_text
from shardkit.ir.sharding import DimSharding

UNSET = 1 << 30
_BROADCAST_OPS = frozenset({"broadcast_in_dim", "iota", "constant"})


@dataclass
class DimState:
    axes: tuple[str, ...] = ()
    closed: bool = False
    priority: int = UNSET
    source: str = ""                 # the hint or spec these axes came from
    path: tuple[str, ...] = ()       # the ops propagation went through, in order

    @property
    def origin(self) -> str:
        if not self.path:
            return self.source
        hops = self.path if len(self.path) <= 4 else self.path[:1] + ("...",) + self.path[-2:]
        return f"{self.source} via {' -> '.join(hops)}" + (f" ({len(self.path)} ops)" if len(self.path) > 4 else "")


@dataclass
class Constraint:
    """Values that share factors: operands first, then results (for ties: outer, inner)."""

    values: list[Value]
    mappings: list[tuple[tuple[str, ...], ...]]
    sizes: dict[str, int]
    replication: frozenset[str]
    num_operands: int
    stage: int
    label: str
    is_hint: bool = False


@dataclass
class PropagationResult:
    graph: Graph
    origins: dict[Value, list[str]]          # per value of `graph`, per dim: where its axes came from
    unruled: list[str]                       # ops without a sharding rule (treated as replicated)
    constraints: list[Constraint] = field(default_factory=list)


def propagate(graph: Graph, mesh: MeshShape, mode: str = "aggressive", respect_hints: bool = True,
              max_sweeps: int = 64) -> PropagationResult:
    """Give every value of `graph` a sharding over `mesh`; returns the new graph and provenance."""
    if mode not in ("basic", "aggressive"):
        raise ShardingError(f"propagate-sharding: mode must be 'basic' or 'aggressive', got {mode!r}")
    engine = _Engine(mesh, aggressive=mode == "aggressive", respect_hints=respect_hints)
    engine.collect(graph)
    engine.run(max_sweeps)
    final = engine.finalize(graph)
    origins = {new: [ds.origin for ds in engine.state[old]]
               for old, new in zip(value_order(graph), value_order(final)) if old in engine.state}
    return PropagationResult(final, origins, engine.unruled, engine.constraints)


def value_order(graph: Graph) -> list[Value]:
    """Every value of the graph, regions included, in a fixed order (inputs, then each op's results
    followed by its regions' values)."""
    out = list(graph.inputs)
    for op in graph.ops:
        out.extend(op.results)
        for region in op.regions:
            out.extend(value_order(region))
    return out


class _Engine:
    def __init__(self, mesh: MeshShape, aggressive: bool, respect_hints: bool):
        self.mesh = mesh
        self.aggressive = aggressive
        self.respect_hints = respect_hints
        self.state: dict[Value, list[DimState]] = {}
        self.constraints: list[Constraint] = []
        self.unruled: list[str] = []
        self.names: dict[Value, str] = {}

    # -- building constraints -----------------------------------------------------------------
    def collect(self, graph: Graph, where: str = "") -> None:
        for i, value in enumerate(graph.inputs):
            self.init_value(value, f"{where}input {i}")
        for index, op in enumerate(graph.ops):
            label = f"{where}{op.name}#{index}"
            for j, value in enumerate(op.results):
                where_made = f" at {op.loc}" if op.loc else ""
                self.init_value(value, f"{label} result {j}{where_made}")
            definition = op.definition
            if definition.region_ties is not None:
                for item in definition.region_ties(op):
                    if isinstance(item, Pin):
                        self.pin(item.value, item.sharding, label)
                    else:
                        self.tie(item, label)
            if op.name == "shard_map":
                continue  # the region works on per-device values: nothing to propagate inside
            for r, region in enumerate(op.regions):
                self.collect(region, f"{label}/region{r}/")
            rule = definition.sharding_rule(op) if definition.sharding_rule is not None else None
            if rule is None:
                if definition.region_ties is None and (op.operands or op.results):
                    self.unruled.append(label)
                continue
            self.add_rule(op, rule, label)

    def init_value(self, value: Value, name: str) -> None:
        if value in self.state:
            return
        self.names[value] = name
        sharding = value.type.sharding
        dims = []
        for d in range(value.type.rank):
            if sharding is None:
                dims.append(DimState())
                continue
            ds = sharding.dims[d]
            informative = bool(ds.axes) or not ds.is_open
            priority = sharding.priority if sharding.priority is not None else 0
            closed = not ds.is_open and (self.respect_hints or priority != 0)
            dims.append(DimState(ds.axes, closed, priority if informative else UNSET,
                                 f"sharding of {name}" if informative else ""))
        self.state[value] = dims

    def pin(self, value: Value, sharding: Sharding, label: str) -> None:
        """Fix the value's dims to the pin's axes; an open dim without axes stays free to propagate."""
        current = self.state.get(value) or [DimState() for _ in sharding.dims]
        self.state[value] = [current[d] if ds.is_open and not ds.axes
                             else DimState(ds.axes, not ds.is_open, 0, f"{label} spec")
                             for d, ds in enumerate(sharding.dims)]

    def tie(self, tie: Tie, label: str) -> None:
        outer, inner = tie.outer, tie.inner
        offset = 1 if tie.stacked else 0
        sizes, outer_map, inner_map = {}, [], []
        if tie.stacked:
            sizes["s"] = outer.type.shape[0]
            outer_map.append(("s",))
        for d, n in enumerate(inner.type.shape):
            sizes[f"t{d}"] = n
            outer_map.append((f"t{d}",))
            inner_map.append((f"t{d}",))
        for v in (outer, inner):
            self.init_value(v, label)
        self.constraints.append(Constraint([outer, inner], [tuple(outer_map), tuple(inner_map)], sizes,
                                           frozenset({"s"}) if offset else frozenset(), 1, 0, label))

    def add_rule(self, op, rule: FactorRule, label: str) -> None:
        values = list(op.operands) + list(op.results)
        mappings = list(rule.operands) + list(rule.results)
        if op.name in _BROADCAST_OPS:
            stage = 2
        elif all(len(m) == len(mappings[-1]) for m in mappings) and not rule.reduction and \
                all(len(d) <= 1 for m in mappings for d in m):
            stage = 0
        else:
            stage = 1
        self.constraints.append(Constraint(values, mappings, rule.size_of, rule.replication,
                                           len(op.operands), stage, label,
                                           is_hint=op.name in ("hint", "sharding_constraint")))

    # -- propagation --------------------------------------------------------------------------
    def run(self, max_sweeps: int) -> None:
        levels = sorted({ds.priority for dims in self.state.values() for ds in dims if ds.priority < UNSET})
        for level in levels or [0]:
            for stage in (0, 1, 2):
                active = [c for c in self.constraints if c.stage <= stage]
                for _ in range(max_sweeps):
                    changed = False
                    for c in active:
                        changed |= self.step(c, level)
                    for c in reversed(active):
                        changed |= self.step(c, level)
                    if not changed:
                        break

    def _split(self, axes: tuple[str, ...], factors: tuple[str, ...], sizes) -> list[tuple[str, ...]]:
        """Distribute a dim's axes over its (compound) factors, major factor first."""
        parts, i = [], 0
        for f in factors:
            size, taken, product = sizes[f], [], 1
            while i < len(axes) and size % (product * self.mesh.size(axes[i])) == 0 \
                    and product < size:
                product *= self.mesh.size(axes[i])
                taken.append(axes[i])
                i += 1
            parts.append(tuple(taken))
            if product < size:
                break
        parts += [()] * (len(factors) - len(parts))
        if i < len(axes) and parts:
            parts[-1] = parts[-1] + axes[i:]
        return parts

    def step(self, c: Constraint, level: int) -> bool:
        candidates: dict[str, list] = {}
        for t, (value, mapping) in enumerate(zip(c.values, c.mappings)):
            dims = self.state[value]
            nbytes = value.type.nbytes
            for d, factors in enumerate(mapping):
                if not factors:
                    continue
                ds = dims[d]
                if ds.priority > level:
                    continue
                parts = self._split(ds.axes, factors, c.sizes)
                for f, part in zip(factors, parts):
                    candidates.setdefault(f, []).append((ds.priority, -nbytes, part, ds.closed, ds, t))
        if not candidates:
            return False
        chosen: dict[str, tuple] = {}
        used: set[str] = set()
        claims: dict[str, str] = {}
        contested = False
        for f, cands in candidates.items():
            for cand in cands:
                for axis in cand[2]:
                    contested |= claims.setdefault(axis, f) != f
        # the order only matters when factors compete for an axis (the first one takes it)
        order = sorted(candidates, key=lambda f: self._factor_key(c, candidates, f)) if contested \
            else list(candidates)
        for f in order:
            cands = sorted(candidates[f], key=lambda x: (x[0], x[1]))
            if f in c.replication:
                chosen[f] = ((), cands[0][0], cands[0][4])
                continue
            best_priority = cands[0][0]
            axes, origin = cands[0][2], cands[0][4]
            for priority, _, part, closed, org, t in cands[1:]:
                if priority != best_priority:
                    break
                if part[:len(axes)] == axes:
                    if len(part) > len(axes):
                        axes, origin = part, org
                elif axes[:len(part)] == part:
                    continue
                else:
                    self._check_hint_conflict(c, cands[0], (priority, _, part, closed, org, t))
                    if not self.aggressive:
                        axes = None
                        break
            if axes is None:
                continue
            kept, product = [], 1
            for axis in axes:
                size = self.mesh.size(axis)
                if axis in used or c.sizes[f] % (product * size):
                    break
                kept.append(axis)
                product *= size
            used.update(kept)
            chosen[f] = (tuple(kept), best_priority, origin)
        return self.project(c, chosen)

    def _factor_key(self, c: Constraint, candidates: dict, f: str) -> tuple:
        """Which factor picks its axes first when factors compete for a mesh axis: the strongest
        priority, then (aggressive mode) the one whose axes are dearest to take away, i.e. the bytes of
        resharding the tensors that carry them (moving an axis to another dim of the same tensor is an
        all-to-all; dropping it is an all-gather, n times dearer), then the larger tensor."""
        best = min((p, b) for p, b, *_ in candidates[f])
        if not self.aggressive:
            return best + (0.0,)
        cost = 0.0
        for priority, _, part, _, _, t in candidates[f]:
            if priority != best[0] or not part:
                continue
            value = c.values[t]
            n = 1
            for axis in part:
                n *= self.mesh.size(axis)
            held = [a for ds in self.state[value] for a in ds.axes]
            local = value.type.nbytes
            for axis in held:
                local /= self.mesh.size(axis)
            mapped = {g for dim in c.mappings[t] for g in dim}
            movable = any(g != f and g in mapped and any(set(q[2]) & set(part) for q in candidates[g])
                          for g in candidates)
            cost += local * (n - 1) / n * (1 if movable else n)
        return (best[0], -cost, best[1])

    def _check_hint_conflict(self, c: Constraint, a, b) -> None:
        if c.is_hint or not (a[3] and b[3] and a[0] == 0 and b[0] == 0):
            return
        va, vb = c.values[a[5]], c.values[b[5]]
        route = lambda ds: " -> ".join(ds.path + (c.label,)) if ds.path else c.label
        raise ShardingError(
            f"conflicting sharding hints meet at {c.label}: {a[4].source or self.names.get(va)} "
            f"({type_text(va.type.with_sharding(self._sharding_of(va)))}) wants axes {a[2]} where "
            f"{b[4].source or self.names.get(vb)} ({type_text(vb.type.with_sharding(self._sharding_of(vb)))}) "
            f"wants {b[2]}; paths: [{route(a[4])}] and [{route(b[4])}]; make one of the hints open "
            f"(PartitionSpec.UNCONSTRAINED) or agree on the axes")

    def project(self, c: Constraint, chosen: dict) -> bool:
        changed = False
        for value, mapping in zip(c.values, c.mappings):
            dims = self.state[value]
            for d, factors in enumerate(mapping):
                # a compound dim takes the axes of its leading chosen factors: a minor factor nobody
                # has sharded yet (not chosen) ends the dim's axes there, it does not block the major ones
                if not factors or dims[d].closed or factors[0] not in chosen:
                    continue
                new, priority, origin, unknown = [], UNSET, None, False
                for f in factors:
                    if f not in chosen:
                        unknown = True
                        break
                    axes, p, org = chosen[f]
                    new.extend(axes)
                    if p < priority:
                        priority, origin = p, org
                    product = 1
                    for axis in axes:
                        product *= self.mesh.size(axis)
                    if product < c.sizes[f]:
                        break
                new = tuple(new)
                ds = dims[d]
                if new == ds.axes or unknown and not new:
                    continue
                others = {a for k, o in enumerate(dims) if k != d for a in o.axes}
                if any(a in others for a in new):
                    continue
                if ds.axes == new[:len(ds.axes)] or priority < ds.priority:
                    if not new and ds.priority <= priority:
                        continue
                    source = origin.source if origin is not None else c.label
                    path = origin.path if origin is not None else ()
                    if not path or path[-1] != c.label:
                        path = path + (c.label,)
                    dims[d] = DimState(new, False, min(priority, ds.priority), source, path[-64:])
                    changed = True
        return changed

    # -- results ------------------------------------------------------------------------------
    def _sharding_of(self, value: Value) -> Sharding:
        dims = self.state[value]
        old = value.type.sharding
        priority = min((ds.priority for ds in dims), default=UNSET)
        return Sharding(tuple(DimSharding(ds.axes, False) for ds in dims),
                        old.replicated if old else (), old.unreduced if old else (),
                        priority if priority < UNSET and old is not None else (old.priority if old else None))

    def finalize(self, graph: Graph) -> Graph:
        types = {v: v.type.with_sharding(self._sharding_of(v)) for v in graph.inputs}
        ops = []
        for op in graph.ops:
            regions = op.regions if op.name == "shard_map" else tuple(self.finalize(r) for r in op.regions)
            op_types = {v: v.type.with_sharding(self._sharding_of(v)) for v in op.results}
            types.update(op_types)
            ops.append(op.replace(regions=regions) if regions != op.regions else op)
        return graph.replace(ops=tuple(ops)).with_types(types)
