"""The `auto-shard` pass: choose shardings with no hints by solving an integer linear program.

Model. Dimensions that an op's factor rule (or a region tie) says must be split alike are merged into
*classes* (union-find over value dimensions), so an element-wise chain or the batch dimension of a
whole network is one decision. Each class picks an ordered tuple of mesh axes (or none) whose product
divides its size. Every op — and every graph input — is a *site* that picks one joint candidate over
the classes it touches (no mesh axis twice), linked to the class choices by equality constraints, so
the costs below are exact per candidate and the program stays linear:

* compute: the op's flops divided by the shards of its factors;
* communication inside the op: an all-reduce over the axes of sharded reduction factors;
* resharding: a dimension the op needs whole (a replication factor, the minor part of a merged reshape
  dimension, an op without a rule, the stacked dimension of a scan's scanned operands) is
  all-gathered; a hint op reshards to its fixed sharding;
* memory: at each program point, per-device bytes as XLA's `memory_analysis()` counts them stay under
  `memory-limit`: arguments (the whole program), outputs (from their producer on; at the end with the
  partial sums of the all-reduces producing them), the materialised intermediates
  live there, the op's communication buffers (gathered copies, partial sums) under its candidate, and
  the peak of a region's temporaries at its op (auto_shard_memory). One continuous "fraction kept"
  variable per set of classes; points whose bytes another point's cover term by term are dropped.
  With a jax Mesh the pass also compiles its solution and re-solves with a calibrated limit until
  XLA's own numbers fit (auto_shard_verify; option `verify`).

Storage: each large graph input that feeds a dot_general and has no fixed sharding gets its own
storage value, linked to its use by a `sharding_constraint` op placed at the start of the program
(XLA gathers parameters early). The link's candidates only let storage add mesh axes the use leaves
free, so it costs an all-gather (an input stored sharded, FSDP-style) or nothing; arguments are counted
at their storage sharding and the gathered copy (always materialised) where it differs. When that model
finds the memory limit infeasible, the pass rebuilds it with internal links too: a free output's
storage may be a slice of its producer's result, a large dot_general result may be sliced finer for
its users (e.g. the loss's batch sharded while the matmuls' is not), and a large internal operand of
dot_generals may be all-gathered coarser for them (one copy shared by those dots). Internal links are
not in the first model because they multiply the solver's time on large programs. Links whose two
sides agree are removed from the result. Not modelled: a gather per use, and a producer's all-reduce
plus slice as a reduce-scatter (the all-reduce is costed; XLA may still emit a reduce-scatter).

Before modelling, every further use of an iota or a broadcast scalar gets its own copy: values that
only share such a constant (the zeros of two ReLU gradients after CSE) must not merge their classes.

Costs use the alpha-beta model (`objective=time`, the default) or bytes alone (`objective=comm`).
Scan bodies are one set of decisions weighted by the trip count, so a scan over layers is solved once.
User hints (and input specs) are hard constraints. The ILP is solved by scipy's HiGHS `milp` with a
time limit; if it finds nothing in time the pass warns and falls back to a greedy choice (shard the
largest class over every axis that divides it) completed by sharding propagation.
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from shardkit.ir import Graph, MeshShape, Op, Sharding, ShardingError, Value
from shardkit.ir.factors import Pin, Tie
from shardkit.ir.sharding import DimSharding

from .base import Pass
from .auto_shard_memory import memory_schedule
from .communication import CostModel, ring_bytes
from .registry import register
from .sharding_engine import propagate

_HINT_OPS = ("hint", "sharding_constraint")
_DOMINANCE_WINDOW = 256


class AutoShardInfeasible(ShardingError):
    """No sharding fits the memory limit; `smallest_limit` is the smallest per-device limit that does."""

    def __init__(self, message: str, smallest_limit: int | None, least: "AutoShardResult | None" = None):
        super().__init__(message)
        self.smallest_limit = smallest_limit
        self.least = least  # the solution with the least memory found (None if the solver found none)


@dataclass
class _Site:
    label: str
    op: Op | None
    classes: list[int]
    candidates: list[dict[int, tuple[str, ...]]] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    weight: float = 1.0


@dataclass
class AutoShardResult:
    """What auto-shard chose: axes per class, the objective value, and whether the solver proved it."""

    graph: Graph
    class_axes: dict[int, tuple[str, ...]]
    objective: float
    optimal: bool
    fallback: bool
    num_variables: int
    seconds: float
    memory_bytes: int | None = None  # per-device peak in the memory model (None: no limit was given)


@dataclass(frozen=True, eq=False)
class _Whole:
    """The cost rule of a value at the boundary of a region op: its `dims` are needed whole (a scan
    slices its stacked operands per iteration, so a sharded stacked dim is all-gathered first); with
    no dims it only gives the op's result a site (for the memory model)."""

    value: Value
    dims: tuple[int, ...]


class _UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


def _ordered_assignments(mesh: MeshShape, classes: list[int], sizes: dict[int, int],
                         fixed: dict[int, tuple[str, ...]], axes_allowed: tuple[str, ...]):
    """Every joint choice: each allowed mesh axis goes to at most one class (in mesh order)."""
    free = [c for c in classes if c not in fixed]
    used_fixed = {a for c in classes if c in fixed for a in fixed[c]}
    axes = [a for a in axes_allowed if a not in used_fixed]
    results = []
    for owners in itertools.product([None] + free, repeat=len(axes)):
        per_class: dict[int, list[str]] = {c: [] for c in free}
        for axis, owner in zip(axes, owners):
            if owner is not None:
                per_class[owner].append(axis)
        # axes keep mesh order within a class: other orders only permute devices, never bytes
        options = [[(c, tuple(per_class[c]))] for c in free]
        for combo in itertools.product(*options):
            choice = dict(fixed_item for fixed_item in fixed.items() if fixed_item[0] in classes)
            ok = True
            for c, perm in combo:
                if sizes[c] % math.prod(mesh.size(a) for a in perm):
                    ok = False
                    break
                choice[c] = tuple(perm)
            if ok:
                results.append(choice)
    return results


class _Model:
    def __init__(self, graph: Graph, mesh: MeshShape, cost: CostModel, objective: str, flops_per_s: float,
                 axes_allowed: tuple[str, ...]):
        self.graph, self.mesh, self.cost = graph, mesh, cost
        self.objective, self.flops_per_s = objective, flops_per_s
        self.axes_allowed = axes_allowed
        self.uf = _UnionFind()
        self.fixed_units: dict[tuple, tuple[str, ...]] = {}
        self.sites: list[_Site] = []
        self.pending: list[tuple] = []
        self.values: list[Value] = []
        self.build_seconds = 0.0
        self.memory_rows = None
        self.storage_kinds: dict[int, str] = {}  # id of a storage op -> "input" / "output"

    # -- structure ------------------------------------------------------------------------------
    def unit(self, value: Value, dim: int):
        return ("v", id(value), dim)

    def collect(self, graph: Graph, weight: float, where: str = "") -> None:
        for v in graph.inputs:
            self.add_value(v)
        for index, op in enumerate(graph.ops):
            label = f"{where}{op.name}#{index}"
            for v in op.results:
                self.add_value(v)
            definition = op.definition
            if definition.region_ties is not None:
                ties = definition.region_ties(op)
                for item in ties:
                    if isinstance(item, Pin):
                        for d, ds in enumerate(item.sharding.dims):
                            self.fixed_units[self.unit(item.value, d)] = ds.axes
                    elif isinstance(item, Tie):
                        off = 1 if item.stacked else 0
                        for v in (item.outer, item.inner):
                            self.add_value(v)
                        for d in range(item.inner.type.rank):
                            self.uf.union(self.unit(item.outer, d + off), self.unit(item.inner, d))
                if op.name != "shard_map":
                    inner = weight * (int(op.params["length"]) if op.name == "scan" else 1)
                    for r, region in enumerate(op.regions):
                        self.collect(region, inner, f"{label}/region{r}/")
                    for item in ties:
                        if isinstance(item, Tie) and item.stacked and item.outer in op.operands:
                            self.pending.append((op, _Whole(item.outer, (0,)), label, weight))
                    for v in op.results:
                        self.pending.append((op, _Whole(v, ()), label, weight))
                continue
            rule = definition.sharding_rule(op) if definition.sharding_rule is not None else None
            self.pending.append((op, rule, label, weight))
            if op.name in _HINT_OPS:
                sharding = op.results[0].type.sharding
                if sharding is not None:
                    for d, ds in enumerate(sharding.dims):
                        if not ds.is_open:
                            self.fixed_units[self.unit(op.results[0], d)] = ds.axes
                continue
            if rule is None:
                continue
            for value, mapping in zip(list(op.operands) + list(op.results), list(rule.operands) + list(rule.results)):
                for d, factors in enumerate(mapping):
                    if factors:
                        self.uf.union(self.unit(value, d), ("f", id(op), factors[0]))

    def add_value(self, value: Value) -> None:
        if ("seen", id(value)) in self.uf.parent:
            return
        self.uf.parent[("seen", id(value))] = ("seen", id(value))
        self.values.append(value)
        sharding = value.type.sharding
        for d in range(value.type.rank):
            self.uf.find(self.unit(value, d))
            if sharding is not None and not sharding.dims[d].is_open and sharding.priority in (0, None) \
                    and value in self.graph.inputs:
                self.fixed_units[self.unit(value, d)] = sharding.dims[d].axes

    def build_classes(self) -> None:
        roots = {}
        self.class_of: dict[tuple, int] = {}
        self.size: dict[int, int] = {}
        self.fixed: dict[int, tuple[str, ...]] = {}
        for value in self.values:
            for d, n in enumerate(value.type.shape):
                u = self.unit(value, d)
                root = self.uf.find(u)
                c = roots.setdefault(root, len(roots))
                self.class_of[u] = c
                self.size[c] = math.gcd(self.size.get(c, 0), n)
                if u in self.fixed_units:
                    self.fixed.setdefault(c, self.fixed_units[u])

    def classes_of(self, value: Value) -> list[int]:
        return [self.class_of[self.unit(value, d)] for d in range(value.type.rank)]

    # -- costs --------------------------------------------------------------------------------------
    def dims_under(self, value: Value, choice: dict[int, tuple[str, ...]]) -> list[tuple[str, ...]]:
        return [choice.get(c, ()) for c in self.classes_of(value)]

    def local_bytes(self, value: Value, dims) -> float:
        return value.type.nbytes / math.prod(self.mesh.size(a) for d in dims for a in d)

    def comm(self, kind: str, axes, operand: float, result: float) -> float:
        n = math.prod(self.mesh.size(a) for a in axes)
        b = ring_bytes(kind, n, operand, result)
        if self.objective == "comm":
            return b
        return self.cost.latency_us * 1e-6 + b / (self.cost.default_bandwidth_gbps * 1e9) if b else 0.0

    def gather_cost(self, value: Value, dims, needs_whole: set[int]) -> float:
        axes = tuple(a for d in needs_whole for a in dims[d])
        if not axes:
            return 0.0
        kept = [d if k not in needs_whole else () for k, d in enumerate(dims)]
        result = self.local_bytes(value, kept)
        return self.comm("all-gather", axes, result / math.prod(self.mesh.size(a) for a in axes), result)

    def op_cost(self, op: Op, rule, choice) -> float:
        if isinstance(rule, _Whole):
            return self.gather_cost(rule.value, self.dims_under(rule.value, choice), set(rule.dims))
        cost = 0.0
        tensors = list(op.operands) + list(op.results)
        if op.name in _HINT_OPS:
            have = self.dims_under(op.operands[0], choice)
            need = self.dims_under(op.results[0], choice)
            from .communication import reshard_collectives
            for c in reshard_collectives(op.operands[0], have, need, self.mesh, ""):
                cost += self.comm(c.kind, c.axes, c.bytes, c.bytes) if self.objective != "comm" else c.bytes
            return cost
        if rule is None:
            for v in op.operands:
                dims = self.dims_under(v, choice)
                cost += self.gather_cost(v, dims, set(range(v.type.rank)))
            return cost + self.compute(op, None, choice)
        mappings = list(rule.operands) + list(rule.results)
        for value, mapping in zip(tensors, mappings):
            dims = self.dims_under(value, choice)
            whole = {d for d, fs in enumerate(mapping) if fs and (fs[0] in rule.replication or
                                                                   (len(fs) > 1 and dims[d]))}
            whole |= {d for d, fs in enumerate(mapping) if not fs and dims[d]}
            cost += self.gather_cost(value, dims, whole)
        reduced = []
        for f in rule.reduction:
            for value, mapping in zip(op.operands, rule.operands):
                for d, fs in enumerate(mapping):
                    if fs and fs[0] == f:
                        reduced.extend(a for a in choice.get(self.class_of[self.unit(value, d)], ())
                                       if a not in reduced)
        if reduced:
            for value in op.results:
                local = self.local_bytes(value, self.dims_under(value, choice))
                cost += self.comm("all-reduce", reduced, local, local)
        return cost + self.compute(op, rule, choice)

    def copy_bytes(self, value: Value, dims, needs_whole: set[int]) -> float:
        """Per-device bytes of the copy of `value` with `needs_whole` dims gathered (0: none needed)."""
        if not any(dims[d] for d in needs_whole):
            return 0.0
        return self.local_bytes(value, [d if k not in needs_whole else () for k, d in enumerate(dims)])

    def buffer_bytes(self, op: Op, rule, choice) -> float:
        """Per-device bytes of the buffers the op's communication needs besides its results under a
        candidate (see auto_shard_memory): gathered copies of what it needs whole, and the partial
        sums of sharded reduction factors."""
        if isinstance(rule, _Whole):
            return self.copy_bytes(rule.value, self.dims_under(rule.value, choice), set(rule.dims))
        if op.name in _HINT_OPS:
            return 0.0  # the resharded copy is the hint's result
        if rule is None:
            return sum(self.copy_bytes(v, self.dims_under(v, choice), set(range(v.type.rank)))
                       for v in op.operands)
        total = 0.0
        for value, mapping in zip(list(op.operands) + list(op.results), list(rule.operands) + list(rule.results)):
            dims = self.dims_under(value, choice)
            whole = {d for d, fs in enumerate(mapping) if fs and (fs[0] in rule.replication or
                                                                   (len(fs) > 1 and dims[d]))}
            whole |= {d for d, fs in enumerate(mapping) if not fs and dims[d]}
            total += self.copy_bytes(value, dims, whole)
        return total + self.partial_bytes(op, rule, choice)

    def partial_bytes(self, op: Op, rule, choice) -> float:
        """Per-device bytes of the partial sums the op's all-reduce reads under a candidate (0: none)."""
        if rule is None or isinstance(rule, _Whole) or op.name in _HINT_OPS:
            return 0.0
        reduced = any(choice.get(self.class_of[self.unit(value, d)], ())
                      for f in rule.reduction for value, mapping in zip(op.operands, rule.operands)
                      for d, fs in enumerate(mapping) if fs and fs[0] == f)
        if not reduced:
            return 0.0
        return sum(self.local_bytes(v, self.dims_under(v, choice)) for v in op.results)

    def compute(self, op: Op, rule, choice) -> float:
        if rule is not None:
            flops = math.prod(n for _, n in rule.sizes) * (2 if rule.reduction else 1)
        else:
            flops = max([v.type.size for v in list(op.operands) + list(op.results)] or [0])
        used = {a for c in choice.values() for a in c}
        shards = math.prod(self.mesh.size(a) for a in used) if rule is not None else 1
        seconds = flops / shards / self.flops_per_s
        return seconds if self.objective == "time" else seconds * 1e-3  # comm objective: tie-break only

    def make_sites(self) -> None:
        """One site per input and per op; ops over the same classes share a site (costs summed),
        which is exact (their joint choices coincide) and keeps element-wise chains to one decision."""
        cache: dict[tuple, list] = {}

        def candidates(classes):
            key = tuple(classes)
            if key not in cache:
                cache[key] = _ordered_assignments(self.mesh, classes, self.size, self.fixed, self.axes_allowed)
            return cache[key]

        for v in self.graph.inputs:
            classes = sorted(set(self.classes_of(v)))
            site = _Site("input", None, classes)
            site.candidates = candidates(classes)
            site.costs = [0.0] * len(site.candidates)
            self.sites.append(site)
        self.site_of_op: dict[int, int] = {}
        self.op_entries: dict[int, list[tuple[int, object]]] = {}
        self.producer_site: dict[Value, int] = {}
        by_classes: dict[tuple, int] = {}
        for op, rule, label, weight in self.pending:
            touched = [rule.value] if isinstance(rule, _Whole) else list(op.operands) + list(op.results)
            classes = sorted({c for v in touched for c in self.classes_of(v)})
            kind = self.storage_kinds.get(id(op))
            options = _storage_candidates(self, op, kind) if kind else candidates(classes)
            costs = [weight * self.op_cost(op, rule, ch) for ch in options]
            key = ("storage", id(op)) if kind else tuple(classes)
            if key in by_classes:
                site = self.sites[by_classes[key]]
                site.costs = [a + b for a, b in zip(site.costs, costs)]
            else:
                by_classes[key] = len(self.sites)
                site = _Site(label, op, classes, options, costs, weight)
                self.sites.append(site)
                if kind == "input":  # the input's own site: the storage choices that op allows
                    k = self.graph.inputs.index(op.operands[0])
                    mine = self.sites[k].classes
                    unique = list({tuple((c, ch[c]) for c in mine): None for ch in options})
                    self.sites[k].candidates = [dict(u) for u in unique]
                    self.sites[k].costs = [0.0] * len(unique)
            if not isinstance(rule, _Whole):
                self.site_of_op[id(op)] = by_classes[key]
            self.op_entries.setdefault(id(op), []).append((by_classes[key], rule))
            for v in touched:
                if v in op.results:
                    self.producer_site[v] = by_classes[key]

    def class_candidates(self) -> dict[int, list[tuple[str, ...]]]:
        out: dict[int, set] = {c: set() for c in self.size}
        for site in self.sites:
            for ch in site.candidates:
                for c in site.classes:
                    out[c].add(ch[c])
        for c in out:
            if not out[c]:
                out[c] = {self.fixed.get(c, ())}
        return {c: sorted(v) for c, v in out.items()}


def _solve(model: _Model, memory_limit: float | None, time_limit: float, minimize_memory: bool = False,
           mip_gap: float = 0.01):
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    class_cands = model.class_candidates()
    x_index: dict[tuple[int, tuple], int] = {}
    for c, cands in class_cands.items():
        for a in cands:
            x_index[(c, a)] = len(x_index)
    y_index = []
    n = len(x_index)
    for site in model.sites:
        y_index.append(list(range(n, n + len(site.candidates))))
        n += len(site.candidates)
    memory = None
    if memory_limit is not None or minimize_memory:
        if getattr(model, "memory_rows", None) is None or model.memory_rows.first != n:
            model.memory_rows = _memory_model(model, y_index, n)  # independent of the limit: built once
        memory = model.memory_rows
    if memory is not None:
        n += len(memory.links)
    extra = 1 if minimize_memory else 0
    total = n + extra
    rows, lo, hi = [], [], []

    def row(coeffs: dict[int, float], low: float, high: float):
        rows.append(coeffs)
        lo.append(low)
        hi.append(high)

    for c, cands in class_cands.items():
        row({x_index[(c, a)]: 1.0 for a in cands}, 1, 1)
    for site, ys in zip(model.sites, y_index):
        if not ys:
            raise ShardingError(f"auto-shard: no valid sharding candidate for {site.label}")
        row({y: 1.0 for y in ys}, 1, 1)
        for c in site.classes:
            for a in class_cands[c]:
                coeffs = {y: 1.0 for y, ch in zip(ys, site.candidates) if ch[c] == a}
                coeffs[x_index[(c, a)]] = coeffs.get(x_index[(c, a)], 0.0) - 1.0
                row(coeffs, 0, 0)
    for coeffs in memory.links if memory is not None else []:
        row(coeffs, 0, 0)
    for coeffs in memory.rows if memory is not None else []:
        if minimize_memory:
            coeffs = dict(coeffs)
            coeffs[total - 1] = -1.0
            row(coeffs, -np.inf, 0)
        elif memory_limit is not None:
            row(coeffs, -np.inf, memory_limit)
    r_idx, c_idx, vals = [], [], []
    for i, coeffs in enumerate(rows):
        for j, v in coeffs.items():
            r_idx.append(i)
            c_idx.append(j)
            vals.append(v)
    A = coo_matrix((vals, (r_idx, c_idx)), shape=(len(rows), total))
    cost = np.zeros(total)
    if minimize_memory:
        cost[total - 1] = 1.0
    else:
        for site, ys in zip(model.sites, y_index):
            for y, value in zip(ys, site.costs):
                cost[y] = value
        scale = max(float(np.max(np.abs(cost))), 1e-30)
        cost = cost / scale
    integrality = np.ones(total)
    upper = np.ones(total)
    if memory is not None:
        integrality[memory.first:memory.first + len(memory.links)] = 0
    if minimize_memory:
        integrality[-1] = 0
        upper[-1] = np.inf
    res = milp(cost, integrality=integrality, bounds=Bounds(np.zeros(total), upper),
               constraints=LinearConstraint(A.tocsr(), np.array(lo), np.array(hi)),
               options={"time_limit": time_limit, "disp": False, "mip_rel_gap": mip_gap,
                        # HiGHS's presolve (probing) can spend the whole time limit on these models,
                        # whose root LP is usually already integral: solving directly is far faster
                        "presolve": False})
    return res, x_index, total, memory


@dataclass
class _Memory:
    """The memory constraints in compact form. A continuous variable per distinct set of classes holds
    the fraction of a value's bytes one device keeps (linked to a site's choice by an equality row), so
    a program point's row is live bytes per class set times those fractions; only undominated program
    points are kept (a row no larger, term by term, than another one is implied by it)."""

    first: int
    links: list[dict[int, float]]
    rows: list[dict[int, float]]


def _memory_model(model: _Model, y_index, first: int) -> _Memory:
    """Rows of per-device bytes per program point, as XLA's memory_analysis counts them (see
    auto_shard_memory): arguments and outputs everywhere, the live materialised intermediates, the
    op's communication buffers under its site's candidate, and the peak of its regions' temporaries."""
    producer_site: dict[Value, int] = dict(model.producer_site)
    for k, v in enumerate(model.graph.inputs):
        producer_site[v] = k
    links: list[dict[int, float]] = []
    z_of: dict[frozenset, int] = {}

    def fraction_var(value: Value) -> int | None:
        s = producer_site.get(value)
        if s is None:
            return None
        key = frozenset(model.classes_of(value))
        if key not in z_of:
            z_of[key] = first + len(links)
            coeffs = {z_of[key]: 1.0}
            for y, ch in zip(y_index[s], model.sites[s].candidates):
                axes = {a for c in key for a in ch.get(c, ())}
                coeffs[y] = -1.0 / math.prod(model.mesh.size(a) for a in axes)
            links.append(coeffs)
        return z_of[key]

    terms: dict[Value, list[tuple[int, float]]] = {}
    gathered: dict[Value, int] = {}  # the use of a graph input -> its storage site
    gathered_from: dict[Value, Value] = {}
    for op in model.graph.ops:
        if model.storage_kinds.get(id(op)) in ("input", "gather"):
            gathered[op.results[0]] = model.site_of_op[id(op)]
            gathered_from[op.results[0]] = op.operands[0]

    def add_values(row: dict[int, float], values) -> None:
        for v in values:
            if v not in terms:
                if v in gathered:  # a gathered copy only where the use is less sharded than the storage
                    s = gathered[v]
                    terms[v] = []
                    for y, ch in zip(y_index[s], model.sites[s].candidates):
                        use = model.dims_under(v, ch)
                        if use != model.dims_under(gathered_from[v], ch):
                            terms[v].append((y, model.local_bytes(v, use)))
                    continue
                z, nbytes = fraction_var(v), v.type.nbytes
                terms[v] = [(z, float(nbytes))] if z is not None and nbytes else []
            for j, b in terms[v]:
                row[j] = row.get(j, 0.0) + b

    buffers: dict[tuple[int, bool], list[tuple[int, float]]] = {}

    def add_buffers(row: dict[int, float], op: Op, partial_only: bool = False) -> None:
        key = (id(op), partial_only)
        if key not in buffers:
            buffers[key] = []
            for s, rule in model.op_entries.get(id(op), []):
                for y, ch in zip(y_index[s], model.sites[s].candidates):
                    b = model.partial_bytes(op, rule, ch) if partial_only else model.buffer_bytes(op, rule, ch)
                    if b:
                        buffers[key].append((y, b))
        for y, b in buffers[key]:
            row[y] = row.get(y, 0.0) + b

    output_links = frozenset(k for k, kind in model.storage_kinds.items() if kind == "output")
    gather_links = frozenset(k for k, kind in model.storage_kinds.items() if kind in ("input", "gather"))

    def rows_of(graph: Graph, top: bool) -> list[dict[int, float]]:
        schedule = memory_schedule(graph, top, output_links, gather_links)
        base: dict[int, float] = {}
        add_values(base, schedule.always)
        rows = []
        for index, op in enumerate(graph.ops):
            row = dict(base)
            add_values(row, schedule.live[index] + schedule.outputs[index])
            add_buffers(row, op)
            inner = [r for region in (op.regions if op.name != "shard_map" else ()) for r in rows_of(region, False)]
            if inner:
                for r in inner:
                    combined = dict(row)
                    for j, b in r.items():
                        combined[j] = combined.get(j, 0.0) + b
                    rows.append(combined)
            else:
                rows.append(row)
        if top:  # the end: every output, and the partial sums of the (combined) all-reduces making them
            end = dict(base)
            add_values(end, schedule.all_outputs)
            for op in schedule.end_ops:
                add_buffers(end, op, partial_only=True)
            rows.append(end)
        if not rows and base:
            rows.append(base)
        return _undominated(rows)

    return _Memory(first, links, rows_of(model.graph, True))


def _undominated(points: list[dict[int, float]]) -> list[dict[int, float]]:
    """The rows not implied by another row (every coefficient of the other is at least as large)."""
    points = [p for p in points if p]
    if len(points) <= 1:
        return points
    columns = sorted({j for p in points for j in p})
    where = {j: k for k, j in enumerate(columns)}
    dense = np.zeros((len(points), len(columns)))
    for i, point in enumerate(points):
        for j, b in point.items():
            dense[i, where[j]] = b
    kept: list[int] = []
    for i in np.argsort(-dense.sum(axis=1), kind="stable"):
        # against the largest kept rows only: bounds the work; a row kept needlessly is just redundant
        if kept and np.any(np.all(dense[kept[:_DOMINANCE_WINDOW]] >= dense[i], axis=1)):
            continue
        kept.append(int(i))
    return [points[i] for i in sorted(kept)]


def auto_shard(graph: Graph, mesh: MeshShape, memory_limit: float | None = None, objective: str = "time",
               time_limit: float = 20.0, mesh_axes: tuple[str, ...] = (), flops_per_s: float = 1e12,
               bandwidth_gbps: float = 50.0, latency_us: float = 1.0) -> AutoShardResult:
    """Choose shardings for every value of `graph` over `mesh` (see the module docstring)."""
    def solve(internal: bool) -> AutoShardResult:
        model = build_model(graph, mesh, objective, mesh_axes, flops_per_s, bandwidth_gbps, latency_us, internal)
        return solve_model(model, memory_limit, time_limit)

    return _with_internal_links(solve, memory_limit)


def _with_internal_links(solve, memory_limit) -> AutoShardResult:
    """`solve(False)`; when that finds the memory limit infeasible, `solve(True)` (a model that may also
    reshard inside the program: slices after matmuls, gathers before them, stored outputs). The larger
    model is only built when needed, as it can multiply the solver's time, and not for a limit under
    half the smallest feasible one found (resharding temporaries cannot save that much). Of two
    failures, the one with the smaller feasible limit is raised."""
    try:
        return solve(False)
    except AutoShardInfeasible as first:
        if not memory_limit or (first.smallest_limit and memory_limit < first.smallest_limit / 2):
            raise
        try:
            return solve(True)
        except AutoShardInfeasible as second:
            a, b = first.smallest_limit, second.smallest_limit
            raise second if a is None or (b is not None and b < a) else first


def build_model(graph: Graph, mesh: MeshShape, objective: str = "time", mesh_axes: tuple[str, ...] = (),
                flops_per_s: float = 1e12, bandwidth_gbps: float = 50.0, latency_us: float = 1.0,
                internal_links: bool = False) -> _Model:
    """The classes, sites and costs of `graph` (independent of the memory limit, so re-solving is cheap).
    `internal_links`: also let values inside the program reshard (see `_insert_storage_ops`)."""
    import time
    if objective not in ("time", "comm"):
        raise ShardingError(f"auto-shard: objective must be 'time' or 'comm', got {objective!r}")
    axes_allowed = tuple(mesh_axes) or mesh.names
    for a in axes_allowed:
        mesh.size(a)
    started = time.perf_counter()
    graph = _unshare_cheap_values(graph)
    graph, storage = _insert_storage_ops(graph, internal_links)
    model = _Model(graph, mesh, CostModel({}, bandwidth_gbps, latency_us), objective, flops_per_s, axes_allowed)
    model.storage_kinds = storage
    model.collect(graph, 1.0)
    model.build_classes()
    model.make_sites()
    model.build_seconds = time.perf_counter() - started
    return model


def _chosen(res, x_index) -> dict[int, tuple[str, ...]]:
    return {c: a for (c, a), i in x_index.items() if res.x[i] > 0.5}


def _peak_at(memory: _Memory | None, x) -> int | None:
    if memory is None or x is None:
        return None
    return int(math.ceil(max((sum(b * x[j] for j, b in row.items()) for row in memory.rows), default=0.0)))


def least_memory(model: _Model, time_limit: float) -> AutoShardResult | None:
    """The solution with the least per-device memory in the memory model (None if none is found)."""
    import time
    started = time.perf_counter()
    best, index, total, memory = _solve(model, None, time_limit, minimize_memory=True)
    if best.x is None:
        return None
    chosen = _chosen(best, index)
    return AutoShardResult(_apply(model, model.graph, chosen), chosen, float("nan"), False, False, total,
                           time.perf_counter() - started, _peak_at(memory, best.x))


def solve_model(model: _Model, memory_limit: float | None, time_limit: float) -> AutoShardResult:
    """Solve the ILP of `model` under `memory_limit` (per-device bytes in the memory model, or None).

    Raises AutoShardInfeasible (with the smallest feasible limit and the least-memory solution) when
    nothing fits; falls back to a greedy choice with a warning when the solver runs out of time."""
    import time
    started = time.perf_counter() - model.build_seconds
    res, x_index, total, memory = _solve(model, memory_limit, time_limit)
    fallback = False
    if res.x is None:
        if res.status == 2 or (memory_limit is not None and res.status not in (1,)):
            best, best_index, _, best_memory = _solve(model, None, time_limit, minimize_memory=True)
            smallest = int(math.ceil(best.x[-1])) if best.x is not None else None
            if res.status == 2:
                least = None
                if best.x is not None:
                    least = AutoShardResult(_apply(model, model.graph, _chosen(best, best_index)),
                                            _chosen(best, best_index), float("nan"), False, False, total,
                                            time.perf_counter() - started, _peak_at(best_memory, best.x))
                raise AutoShardInfeasible(
                    f"auto-shard: no sharding fits memory-limit={int(memory_limit or 0)} bytes per device; "
                    f"the smallest feasible limit found is {smallest} bytes", smallest, least)
        warnings.warn(f"auto-shard: the ILP solver found no solution within {time_limit}s "
                      f"({res.message}); falling back to greedy data parallelism plus propagation")
        fallback = True
        chosen = _greedy(model)
        objective_value = float("nan")
    else:
        chosen = _chosen(res, x_index)
        objective_value = float(res.fun)
    sharded = _apply(model, model.graph, chosen)
    return AutoShardResult(sharded, chosen, objective_value, res.status == 0, fallback, total,
                           time.perf_counter() - started, _peak_at(memory, res.x))


def _is_cheap(op: Op) -> bool:
    """An op whose result any device can make locally in any sharding: an iota or a broadcast scalar."""
    return len(op.results) == 1 and (op.name == "iota" or (
        op.name == "broadcast_in_dim" and all(v.type.rank == 0 for v in op.operands)))


def _unshare_cheap_values(graph: Graph) -> Graph:
    """Give every further use of a cheap value (`_is_cheap`) its own copy, so that unrelated values
    that only share, say, the zeros of a ReLU gradient after CSE do not merge their dimensions into
    one class; each copy is then sharded like its user, at no communication."""
    def rewrite(g: Graph) -> Graph:
        cheap: dict[Value, Op] = {}
        used: set[Value] = set()
        ops: list[Op] = []
        changed = False
        for op in g.ops:
            regions = op.regions if op.name == "shard_map" else tuple(rewrite(r) for r in op.regions)
            operands = list(op.operands)
            for k, v in enumerate(operands):
                if v in cheap and v in used:
                    copy = Value(v.type)
                    ops.append(cheap[v].replace(results=(copy,)))
                    operands[k] = copy
                used.add(v)
            if regions != op.regions or tuple(operands) != op.operands:
                op = op.replace(operands=tuple(operands), regions=regions)
                changed = True
            ops.append(op)
            if _is_cheap(op):
                cheap[op.results[0]] = op
        return g.replace(ops=tuple(ops)) if changed else g

    return rewrite(graph)


_STORAGE = "sharding_constraint"  # the op that links a graph input/output's storage to its use/producer


_LINK_FRACTION = 64  # internal links only on values of at least 1/64 of the largest graph input


def _insert_storage_ops(graph: Graph, internal: bool = False) -> tuple[Graph, dict[int, str]]:
    """Give every free graph input (no fixed sharding, used by an op) and every free output an op
    produced a separate *storage* value, linked by a resharding op: the input is stored as chosen and
    resharded (all-gathered) just before its first use; the producer's result is resharded (sliced) to
    the output's storage. Only inputs that feed a dot_general get one (`input`). With `internal`, free
    outputs get one too (`output`) and so do large internal values: a dot_general's result may be
    sliced finer for its users (`slice`), and an operand of dot_generals may be all-gathered coarser
    for them (`gather`, one copy shared by those dots). Returns the graph and the link ops' kinds."""
    def free(v: Value) -> bool:
        s = v.type.sharding
        return v.type.rank > 0 and (s is None or all(d.is_open for d in s.dims) or s.priority not in (0, None))

    produced = {v for op in graph.ops for v in op.results}
    outputs = set(graph.outputs)
    largest = max((v.type.nbytes for v in graph.inputs), default=0)
    threshold = max(1, largest // _LINK_FRACTION)
    dot_operands = {v for op in graph.ops if op.name == "dot_general" for v in op.operands}
    inputs = [v for v in dict.fromkeys(graph.inputs) if v in dot_operands and free(v) and v not in outputs
              and v.type.nbytes >= threshold]

    def big(v: Value) -> bool:
        return v.type.rank > 0 and v.type.nbytes >= threshold and free(v)

    kinds: dict[int, str] = {}
    before: dict[int, list[Op]] = {}
    use_of: dict[Value, Value] = {}
    for v in inputs:
        use = Value(v.type.with_sharding(None))
        op = Op(_STORAGE, (v,), (use,))
        kinds[id(op)] = "input"
        use_of[v] = use
        before.setdefault(0, []).append(op)  # XLA gathers a parameter early: live from the start
    stored: dict[Value, Value] = {}
    for v in dict.fromkeys(graph.outputs):
        if internal and v in produced and v not in graph.inputs and free(v):
            stored[v] = Value(v.type.with_sharding(None))
    ops: list[Op] = []
    gathered: dict[Value, Value] = {}  # an internal operand of dots -> its gathered copy
    for index, op in enumerate(graph.ops):
        ops.extend(before.get(index, ()))
        operands = tuple(use_of.get(v, v) for v in op.operands)
        if op.name == "dot_general" and not op.regions:
            linked = []
            for v in operands:
                if internal and v in produced and v not in gathered and big(v) and not any(
                        v is u for u in use_of.values()):
                    link = Op(_STORAGE, (v,), (Value(v.type.with_sharding(None)),))
                    kinds[id(link)] = "gather"
                    gathered[v] = link.results[0]
                    ops.append(link)
                linked.append(gathered.get(v, v))
            operands = tuple(linked)
        if operands != op.operands:
            op = op.replace(operands=operands)
        ops.append(op)
        for v in op.results:
            if v in stored:
                link = Op(_STORAGE, (v,), (stored[v],))
                kinds[id(link)] = "output"
                ops.append(link)
            elif internal and op.name == "dot_general" and not op.regions and big(v):
                link = Op(_STORAGE, (v,), (Value(v.type.with_sharding(None)),))
                kinds[id(link)] = "slice"
                use_of[v] = link.results[0]
                produced.add(link.results[0])
                ops.append(link)
    if not kinds:
        return graph, kinds
    return graph.replace(ops=tuple(ops), outputs=tuple(stored.get(v, v) for v in graph.outputs)), kinds


def _storage_candidates(model: "_Model", op: Op, kind: str) -> list[dict[int, tuple[str, ...]]]:
    """Joint (use, storage) choices of a storage op: the storage keeps the use's axes on every dim
    and may add axes the use leaves free (as minor axes), so the link is an all-gather (input) or a
    local slice (output)."""
    fine_operand = kind in ("input", "gather")
    stored, use = (op.operands[0], op.results[0]) if fine_operand else (op.results[0], op.operands[0])
    use_classes = sorted(set(model.classes_of(use)))
    stored_classes = model.classes_of(stored)
    out = []
    for choice in _ordered_assignments(model.mesh, use_classes, model.size, model.fixed, model.axes_allowed):
        dims = [choice.get(c, ()) for c in model.classes_of(use)]
        used = {a for d in dims for a in d}
        spare = [a for a in model.axes_allowed if a not in used]
        for owners in itertools.product([None] + list(range(len(dims))), repeat=len(spare)):
            new = [list(d) for d in dims]
            for axis, owner in zip(spare, owners):
                if owner is not None:
                    new[owner].append(axis)
            joint = dict(choice)
            ok = True
            for d, c in enumerate(stored_classes):
                axes = tuple(new[d])
                if stored.type.shape[d] % math.prod(model.mesh.size(a) for a in axes) or \
                        (c in model.fixed and model.fixed[c] != axes) or joint.get(c, axes) != axes:
                    ok = False
                    break
                joint[c] = axes
            if ok:
                out.append(joint)
    return out


def _greedy(model: _Model) -> dict[int, tuple[str, ...]]:
    weight: dict[int, float] = {}
    for v in model.values:
        for c in model.classes_of(v):
            weight[c] = weight.get(c, 0.0) + v.type.nbytes
    chosen = dict(model.fixed)
    if weight:
        best = max((c for c in weight if c not in chosen), key=lambda c: weight[c], default=None)
        if best is not None:
            axes, product = [], 1
            for a in model.axes_allowed:
                if model.size[best] % (product * model.mesh.size(a)) == 0:
                    axes.append(a)
                    product *= model.mesh.size(a)
            chosen[best] = tuple(axes)
    return chosen


def _apply(model: _Model, graph: Graph, chosen: dict[int, tuple[str, ...]]) -> Graph:
    """Graph whose values carry the chosen axes as open shardings of priority 1 (hints keep theirs)."""
    def sharding_for(value: Value) -> Sharding | None:
        old = value.type.sharding
        if old is not None and old.priority == 0:
            return old
        dims, used = [], set()
        for c in model.classes_of(value):
            axes = tuple(a for a in chosen.get(c, ()) if a not in used)
            used.update(axes)
            dims.append(DimSharding(axes, is_open=False))
        return Sharding(tuple(dims), priority=1)

    def rebuild(g: Graph) -> Graph:
        types = {v: v.type.with_sharding(sharding_for(v)) for v in g.inputs}
        ops = []
        for op in g.ops:
            regions = op.regions if op.name == "shard_map" else tuple(rebuild(r) for r in op.regions)
            types.update({v: v.type.with_sharding(sharding_for(v)) for v in op.results})
            ops.append(op.replace(regions=regions) if regions != op.regions else op)
        return g.replace(ops=tuple(ops)).with_types(types)

    return _drop_idle_storage(model, rebuild(graph))


def _drop_idle_storage(model: _Model, graph: Graph) -> Graph:
    """Remove the storage ops (see `_insert_storage_ops`) whose two sides got the same sharding."""
    storage_at = {k for k, op in enumerate(model.graph.ops) if id(op) in model.storage_kinds}
    if not storage_at:
        return graph
    same: dict[Value, Value] = {}
    ops = []
    for k, op in enumerate(graph.ops):
        if k in storage_at:
            a, b = op.operands[0].type.sharding, op.results[0].type.sharding
            if a is not None and b is not None and [d.axes for d in a.dims] == [d.axes for d in b.dims]:
                same[op.results[0]] = same.get(op.operands[0], op.operands[0])
                continue
        if any(v in same for v in op.operands):
            op = op.replace(operands=tuple(same.get(v, v) for v in op.operands))
        ops.append(op)
    return graph.replace(ops=tuple(ops), outputs=tuple(same.get(v, v) for v in graph.outputs))


@register
@dataclass(frozen=True)
class AutoShard(Pass):
    """Choose a sharding for every value with no hints needed (ILP over factor classes; see module doc).

    memory_limit: per-device bytes (0 = no limit); objective: `time` (alpha-beta + compute) or `comm`
    (bytes); mesh_axes: restrict which axes may be used; time_limit: solver seconds before fallback;
    verify: with a memory limit and a jax Mesh, hold the limit against XLA's compiled memory_analysis()
    (compile, re-solve with a calibrated limit; see auto_shard_verify).
    """

    name: ClassVar[str] = "auto-shard"
    guarantees: ClassVar[frozenset[str]] = frozenset({"sharded"})
    memory_limit: int = 0
    objective: str = "time"
    mesh_axes: tuple[str, ...] = ()
    time_limit: float = 20.0
    verify: bool = True

    def run(self, graph: Graph, ctx) -> Graph:
        mesh = ctx.mesh_shape if ctx is not None and ctx.mesh is not None else graph.mesh
        if mesh is None:
            raise ShardingError("auto-shard needs a mesh: run the pipeline with mesh=...")
        jax_mesh = ctx.mesh if ctx is not None and hasattr(ctx.mesh, "devices") else None
        propagated: dict[int, object] = {}

        def complete(result: AutoShardResult):
            if id(result) not in propagated:
                propagated[id(result)] = (result, propagate(result.graph, mesh))
            return propagated[id(result)][1]

        verified = ""

        def solve(internal: bool) -> AutoShardResult:
            nonlocal verified
            model = build_model(graph.replace(mesh=mesh), mesh, self.objective, self.mesh_axes,
                                internal_links=internal)
            if self.memory_limit and self.verify and jax_mesh is not None:
                from .auto_shard_verify import compiled_memory, solve_verified
                result, measured, compiles = solve_verified(
                    model, self.memory_limit, self.time_limit,
                    lambda r: compiled_memory(complete(r).graph, jax_mesh))
                if measured is not None:
                    verified = f"; compiled memory {measured:,} B per device (limit {self.memory_limit:,}, " \
                               f"{compiles} compile{'s' if compiles > 1 else ''})"
                return result
            return solve_model(model, self.memory_limit or None, self.time_limit)

        result = _with_internal_links(solve, self.memory_limit)
        if ctx is not None:
            ctx.analyses.put(AutoShardResult, result.graph, result)
            ctx.diagnostics.note(
                f"auto-shard: {result.num_variables} variables, objective {result.objective:.4g}, "
                f"{'optimal' if result.optimal else 'fallback' if result.fallback else 'time-limited'} "
                f"in {result.seconds:.2f}s{verified}")
        completed = complete(result)
        if ctx is not None:
            from .sharding_engine import PropagationResult
            ctx.analyses.put(PropagationResult, completed.graph, completed)
            ctx.analyses.put(AutoShardResult, completed.graph, result)  # what the pass chose, for its output
        return completed.graph
