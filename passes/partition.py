"""The `partition` pass: shardkit's own SPMD partitioner.

It rewrites a graph whose values carry closed shardings (after `propagate-sharding`) into one
`shard_map` op whose region is the per-device program: every op works on local blocks, and explicit
collectives (ir/ops/collectives.py: `spmd.all_gather`, `spmd.psum`, `spmd.psum_scatter`,
`spmd.all_to_all`, `spmd.ppermute`, `spmd.shard_slice`) move data where layouts change.

How an op is partitioned: its factor rule (ir/factors.py) ties operand and result dimensions to
factors. Candidate assignments of mesh axes to factors are read from the result's propagated
sharding and from each operand's current layout (as GSPMD's dot handler does); each is costed as the
wire bytes of resharding the operands to it plus those of bringing its result to the propagated
sharding, and the cheapest wins (ties: less local compute). Sharded reduction factors leave pending
sums on the result, resolved as late as possible: ops linear in an operand carry them through, and a
consumer that wants the value sharded gets a reduce-scatter instead of an all-reduce and a slice.
Sharded convolution windows exchange halos with their neighbours (`spmd.ppermute`). Ops that cannot
run on local blocks (no sharding rule, or params the local rules cannot express) are run on
gathered operands on every device, with a warning. Calls (jit, custom_jvp/vjp, remat) are inlined;
scan, while and cond are partitioned region by region with loop-carried layouts fixed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

from shardkit.ir import Graph, MeshShape, Op, Params, TensorType, Value
from shardkit.ir.factors import FactorRule
from shardkit.ir.ops.collectives import COLLECTIVE_KINDS, collective_bytes, spmd_mesh
from shardkit.ir.registry import RANDOM_PRIMITIVES

from .base import Pass
from .communication import Collective, ring_bytes
from .inline import INLINABLE, inline_calls
from .partition_layout import Layout, PartitionError, Step, apply_step, plan, plan_cost
from .partition_local import (HALO_OPS, REDUCE_KIND, conv_halo, forced_unsharded, linear_operands,
                              localize_params)
from .propagate_sharding import complete_shardings
from .registry import register

PARTITIONED = "partitioned"
"""The shard_map param that marks a program made by this pass (so it is never partitioned twice)."""

_STEP_OPS = {"slice": "spmd.shard_slice", "psum_scatter": "spmd.psum_scatter", "all_to_all": "spmd.all_to_all",
             "all_gather": "spmd.all_gather"}
_REDUCE_OPS = {"sum": "spmd.psum", "max": "spmd.pmax", "min": "spmd.pmin"}


@dataclass
class _Scope:
    """One region being built: its local ops, and per global value its home layout and local versions."""

    ops: list[Op] = field(default_factory=list)
    homes: dict[Value, Layout] = field(default_factory=dict)
    versions: dict[Value, dict[Layout, Value]] = field(default_factory=dict)
    uses: dict[Value, int] = field(default_factory=dict)

    def define(self, value: Value, layout: Layout, local: Value) -> None:
        self.homes[value] = layout
        self.versions.setdefault(value, {})[layout] = local


@dataclass
class _Choice:
    assignment: dict[str, tuple[str, ...]]
    needs: list[Layout]
    results: list[Layout]
    halos: list
    key: tuple


class Partitioner:
    """Builds the per-device program of a sharded graph (see the module docstring)."""

    def __init__(self, mesh: MeshShape, mesh_param=None, warn: Callable[..., object] | None = None):
        self.mesh = mesh
        self.mesh_param = mesh_param if mesh_param is not None else spmd_mesh(mesh)
        self.warn = warn or (lambda message, op=None: None)

    # -- entry point ---------------------------------------------------------------------------
    def partition(self, graph: Graph) -> Graph:
        graph = inline_calls(graph, INLINABLE)
        in_layouts = [self.declared(v, f"input {i}", boundary=True) for i, v in enumerate(graph.inputs)]
        out_layouts: list[Layout] = []
        body = self.region(graph, in_layouts, out_layouts, "")
        params = Params((
            ("mesh", self.mesh_param),
            ("in_specs", tuple(l.to_sharding().to_partition_spec() for l in in_layouts)),
            ("out_specs", tuple(l.to_sharding().to_partition_spec() for l in out_layouts)),
            ("check_vma", False),
            ("manual_axes", self.mesh.names),
            (PARTITIONED, True),
        ))
        results = tuple(Value(TensorType(v.type.shape, v.type.dtype, v.type.sharding or l.to_sharding()))
                        for v, l in zip(graph.outputs, out_layouts))
        op = Op("shard_map", graph.inputs, results, params, (body.replace(name=f"{graph.name}_local"),))
        return graph.replace(ops=(op,), outputs=results)

    def declared(self, value: Value, where: str, boundary: bool = False) -> Layout:
        """The layout the value's (propagated) sharding asks for; checked to divide evenly."""
        sharding = value.type.sharding
        if sharding is not None and any(d.is_open for d in sharding.dims):
            raise PartitionError(f"{where} ({value.type}) still has an open sharding; run "
                                 f"propagate-sharding before partition")
        layout = Layout.of(sharding, value.type.rank)
        if layout.partial:
            if boundary:
                raise PartitionError(f"{where} ({value.type}) is unreduced over {'+'.join(layout.partial)}; "
                                     f"lowering='spmd' takes and returns reduced values only: drop "
                                     f"`unreduced` from the spec or use lowering='xla'")
            layout = layout.without_partial()
        bad = layout.divides(value.type.shape, self.mesh)
        if bad is not None:
            axes = layout.dims[bad]
            count = _product(self.mesh, axes)
            raise PartitionError(
                f"{where}: dimension {bad} of size {value.type.shape[bad]} does not divide over "
                f"{'+'.join(axes)} ({count} devices); the SPMD partitioner does not pad: pad the "
                f"dimension to a multiple of {count}, shard another dimension, or use lowering='xla'")
        return layout

    # -- regions -------------------------------------------------------------------------------
    def region(self, graph: Graph, in_layouts: list[Layout], out_layouts: list[Layout], where: str) -> Graph:
        """The local program of `graph` with inputs in `in_layouts` and outputs brought to
        `out_layouts` (an empty list is filled with the outputs' own shardings, once the ops are done)."""
        scope = _Scope()
        for op in graph.ops:
            for v in set(op.operands):
                scope.uses[v] = scope.uses.get(v, 0) + 1
        for v in graph.outputs:
            scope.uses[v] = scope.uses.get(v, 0) + 1
        inputs = []
        for value, layout in zip(graph.inputs, in_layouts):
            local = Value(TensorType(layout.local_shape(value.type.shape, self.mesh), value.type.dtype))
            scope.define(value, layout, local)
            inputs.append(local)
        for index, op in enumerate(graph.ops):
            self.op(op, scope, f"{where}{op.name}#{index}")
        if not out_layouts:
            out_layouts += [self.declared(v, f"output {i}", boundary=True) for i, v in enumerate(graph.outputs)]
        outputs = [self.get(scope, v, layout) for v, layout in zip(graph.outputs, out_layouts)]
        return Graph(tuple(inputs), tuple(scope.ops), tuple(outputs), name=graph.name)

    # -- values in layouts ---------------------------------------------------------------------
    def _plan_from(self, scope: _Scope, value: Value, layout: Layout):
        best = None
        itemsize = _itemsize(value.type.dtype)
        for have, local in scope.versions[value].items():
            try:
                steps = plan(value.type.shape, itemsize, have, layout, self.mesh)
            except PartitionError:
                continue
            cost = plan_cost(steps)
            if best is None or cost < best[0]:
                best = (cost, have, local, steps)
        return best

    def cost(self, scope: _Scope, value: Value, layout: Layout) -> float | None:
        """Wire bytes to get `value` in `layout` from its cheapest version (None: impossible)."""
        if layout in scope.versions[value]:
            return 0.0
        found = self._plan_from(scope, value, layout)
        return None if found is None else found[0]

    def get(self, scope: _Scope, value: Value, layout: Layout) -> Value:
        """The local value of `value` in `layout`, emitting the collectives that produce it."""
        versions = scope.versions[value]
        if layout in versions:
            return versions[layout]
        found = self._plan_from(scope, value, layout)
        if found is None:
            raise PartitionError(f"cannot bring {value.type} from {scope.homes[value]} to layout {layout}")
        _, have, local, steps = found
        for step in steps:
            local = self.emit_step(scope, local, step)
            have = apply_step(have, step)
            versions.setdefault(have, local)
        return local

    def emit_step(self, scope: _Scope, local: Value, step: Step) -> Value:
        params: list[tuple] = [("axes", step.axes)]
        if step.kind == "all_reduce":
            name = _REDUCE_OPS[step.reduce]
        elif step.kind == "all_to_all":
            name = _STEP_OPS[step.kind]
            params += [("split_dim", step.dim), ("concat_dim", step.src_dim)]
        else:
            name = _STEP_OPS[step.kind]
            params.append(("dim", step.dim))
        params.append(("group_size", step.group_size))
        return self.emit(scope, name, (local,), Params(params))

    def emit(self, scope: _Scope, name: str, operands, params: Params) -> Value:
        """Append a single-result local op (its type from the op's type rule)."""
        from shardkit.ir import get_op_def
        probe = Op(name, tuple(operands), (), params)
        (shape, dtype), = get_op_def(name).type_rule(probe)
        result = Value(TensorType(tuple(shape), dtype))
        scope.ops.append(Op(name, tuple(operands), (result,), params))
        return result

    # -- ops -----------------------------------------------------------------------------------
    def op(self, op: Op, scope: _Scope, label: str) -> None:
        for value in op.operands:
            if value not in scope.homes:
                raise PartitionError(f"{label}: op '{op.name}' uses a value ({value.type}) that is not "
                                     f"defined before it in its region; regions must be closed (pass "
                                     f"outer values as operands); run graph.verify() to locate it")
        name = op.name
        if name in ("hint", "sharding_constraint"):
            for operand, result in zip(op.operands, op.results):
                layout = self.declared(result, f"result of {label}")
                scope.define(result, layout, self.get(scope, operand, layout))
            return
        if name == "constant":
            self.replicated_op(op, scope, label, None)
            return
        if name == "shard_map":
            raise PartitionError(f"{label}: the function already contains a shard_map; lowering='spmd' "
                                 f"partitions whole programs only: use lowering='xla' for it")
        if name in ("scan", "while", "cond"):
            getattr(self, f"_{name}")(op, scope, label)
            return
        definition = op.definition
        if name in RANDOM_PRIMITIVES and name != "threefry2x32":
            # random bits depend on the global shape: a local call would draw different numbers
            self.replicated_op(op, scope, label, "draws random numbers for the whole value")
            return
        if op.regions and definition.region_ties is not None:
            self.replicated_op(op, scope, label, "has regions the partitioner does not enter")
            return
        rule = definition.sharding_rule(op) if definition.sharding_rule is not None else None
        if rule is None:
            self.replicated_op(op, scope, label, "has no sharding rule")
            return
        if not self.factor_op(op, rule, scope, label):
            self.replicated_op(op, scope, label, "cannot run on local blocks")

    def replicated_op(self, op: Op, scope: _Scope, label: str, reason: str | None) -> None:
        """Run `op` whole on every device: gather its operands, keep its results replicated."""
        moved = any(scope.homes[v].used or scope.homes[v].partial for v in op.operands)
        wanted = any(self.declared(v, label).used for v in op.results)
        operands = tuple(self.get(scope, v, Layout.replicated(v.type.rank)) for v in op.operands)
        results = tuple(Value(TensorType(v.type.shape, v.type.dtype)) for v in op.results)
        params = localize_params(op, [v.type.shape for v in op.operands], [v.type.shape for v in op.results])
        scope.ops.append(op.replace(operands=operands, results=results, params=params))
        for value, local in zip(op.results, results):
            scope.define(value, Layout.replicated(value.type.rank), local)
        if reason is not None and (moved or wanted):
            self.warn(f"{label}: op '{op.name}' {reason}: its operands are gathered and it runs "
                      f"unpartitioned on every device", op)

    # -- ops with a factor rule ----------------------------------------------------------------
    def factor_op(self, op: Op, rule: FactorRule, scope: _Scope, label: str) -> bool:
        forced = forced_unsharded(op, rule)
        homes = [scope.homes[v] for v in op.operands]
        partial = {i: h.partial for i, h in enumerate(homes) if h.partial and h.reduce == "sum"}
        # a pending sum rides through a linear op only into its value's sole use: a value that other
        # ops need reduced anyway would otherwise be reduced twice (once here, once downstream)
        carry = all(scope.uses.get(op.operands[i], 0) <= 1 for i in partial)
        declared_out = [self.declared(v, f"result {r} of {label}") for r, v in enumerate(op.results)]
        declared_in = [self.declared(v, f"operand {i} of {label}") for i, v in enumerate(op.operands)]
        outs = [(l.dims, m) for l, m in zip(declared_out, rule.results)]
        sources = [outs + [(l.dims, m) for l, m in zip(declared_in, rule.operands)]]
        sources += [[(h.dims, rule.operands[i])] + outs for i, h in enumerate(homes)]
        candidates: list[dict] = []
        for source in sources:
            found = self.read_assignment(source, rule, forced)
            if found not in candidates:
                candidates.append(found)
        for base in list(candidates):
            unreduced = {f: (() if f in rule.reduction else axes) for f, axes in base.items()}
            if unreduced not in candidates:
                candidates.append(unreduced)
        variants = (True, False) if carry and linear_operands(op, partial) else (False,)
        best = None
        for assignment in candidates:
            for keep in variants:
                choice = self.evaluate(op, rule, assignment, keep, partial, declared_out, scope)
                if choice is not None and (best is None or choice.key < best.key):
                    best = choice
        if best is None:
            return False
        return self.emit_factor_op(op, best, scope)

    def read_assignment(self, source, rule: FactorRule, forced: set[str]) -> dict[str, tuple[str, ...]]:
        """Mesh axes per factor, read from (dims, factor mapping) pairs in order; first reader wins."""
        sizes = rule.size_of
        assignment: dict[str, tuple[str, ...]] = {}
        used: set[str] = set()
        for dims, mapping in source:
            for d, factors in enumerate(mapping):
                have = list(dims[d]) if d < len(dims) else []
                for f in factors:
                    if f in forced:
                        assignment.setdefault(f, ())
                        product = 1
                    elif f in assignment:
                        got = assignment[f]
                        if tuple(have[:len(got)]) != got:
                            break
                        del have[:len(got)]
                        product = _product(self.mesh, got)
                    else:
                        taken, product = [], 1
                        while have and have[0] not in used and product < sizes[f] \
                                and sizes[f] % (product * self.mesh.size(have[0])) == 0:
                            product *= self.mesh.size(have[0])
                            taken.append(have.pop(0))
                        assignment[f] = tuple(taken)
                        used.update(taken)
                    if product < sizes[f]:
                        break
        for f in rule.factors:
            assignment.setdefault(f, ())
        self._normalize(assignment, rule)
        return assignment

    def _normalize(self, assignment: dict, rule: FactorRule) -> None:
        """In a dimension made of several factors, a factor after one that is not fully split must
        stay unsharded (its blocks would not be contiguous)."""
        sizes = rule.size_of
        changed = True
        while changed:
            changed = False
            for mapping in rule.operands + rule.results:
                for factors in mapping:
                    cut = False
                    for f in factors:
                        if cut and assignment[f] and sizes[f] > 1:
                            assignment[f] = ()
                            changed = True
                        if _product(self.mesh, assignment[f]) < sizes[f]:
                            cut = True

    def _dims(self, assignment: dict, mapping) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(a for f in factors for a in assignment[f]) for factors in mapping)

    def evaluate(self, op: Op, rule: FactorRule, assignment: dict, keep: bool, partial: dict,
                 declared_out: list[Layout], scope: _Scope) -> _Choice | None:
        """The cost of running `op` with these factor axes (None when it cannot)."""
        kind = REDUCE_KIND.get(op.name, "sum")
        passed = sorted({a for axes in partial.values() for a in axes}) if keep else []
        used = {a for axes in assignment.values() for a in axes}
        if used & set(passed):
            return None
        reduced = [a for f in rule.factors if f in rule.reduction for a in assignment[f]]
        if reduced and passed and kind != "sum":
            return None
        comm = 0.0
        needs = []
        for i, value in enumerate(op.operands):
            layout = Layout(self._dims(assignment, rule.operands[i]))
            if keep and i in partial:
                layout = layout.with_partial(partial[i])
            cost = self.cost(scope, value, layout)
            if cost is None:
                return None
            comm += cost
            needs.append(layout)
        result_partial = tuple(a for a in self.mesh.names if a in set(reduced) | set(passed))
        results = []
        for r, value in enumerate(op.results):
            layout = Layout(self._dims(assignment, rule.results[r])).with_partial(
                result_partial, kind if reduced else "sum")
            try:
                steps = plan(value.type.shape, _itemsize(value.type.dtype), layout, declared_out[r], self.mesh)
            except PartitionError:
                return None
            comm += plan_cost(steps)
            results.append(layout)
        halos = []
        if op.name in HALO_OPS:
            lhs = op.operands[0]
            local = needs[0].local_shape(lhs.type.shape, self.mesh)
            halos = conv_halo(op, rule, assignment, local, self.mesh)
            if halos is None:
                return None
            row_bytes = _itemsize(lhs.type.dtype)
            for n in local:
                row_bytes *= n
            for dim, _, low, high in halos:
                comm += row_bytes // local[dim] * (low + high)
        compute = 1
        for f, size in rule.sizes:
            compute *= size // _product(self.mesh, assignment[f])
        return _Choice(assignment, needs, results, halos, (round(comm, 3), compute))

    def emit_factor_op(self, op: Op, choice: _Choice, scope: _Scope) -> bool:
        in_shapes = [l.local_shape(v.type.shape, self.mesh) for v, l in zip(op.operands, choice.needs)]
        out_shapes = [l.local_shape(v.type.shape, self.mesh) for v, l in zip(op.results, choice.results)]
        if choice.halos:
            lhs = list(in_shapes[0])
            for dim, _, low, high in choice.halos:
                lhs[dim] += low + high
            in_shapes[0] = tuple(lhs)
        params = localize_params(op, in_shapes, out_shapes)
        if choice.halos:
            params = _unpad(op, params, choice.halos)
        probe = Op(op.name, tuple(Value(TensorType(s, v.type.dtype)) for s, v in zip(in_shapes, op.operands)),
                   tuple(Value(TensorType(s, v.type.dtype)) for s, v in zip(out_shapes, op.results)), params,
                   op.regions)
        try:
            expected = op.definition.type_rule(probe)
        except Exception:  # the op rejects local shapes: run it whole instead
            return False
        if [(tuple(s), d) for s, d in expected] != [(s, v.type.dtype) for s, v in zip(out_shapes, op.results)]:
            return False
        operands = [self.get(scope, v, l) for v, l in zip(op.operands, choice.needs)]
        if choice.halos:
            operands[0] = self.exchange_halos(scope, operands[0], choice.halos)
        results = tuple(Value(TensorType(s, v.type.dtype)) for s, v in zip(out_shapes, op.results))
        scope.ops.append(Op(op.name, tuple(operands), results, params, op.regions))
        for value, layout, local in zip(op.results, choice.results, results):
            scope.define(value, layout, local)
        return True

    def exchange_halos(self, scope: _Scope, local: Value, halos: list) -> Value:
        """Extend `local` along each sharded window dim by the neighbours' border rows (zeros at the
        edges of the mesh, which is the convolution's zero padding)."""
        for dim, axes, low, high in halos:
            n = _product(self.mesh, axes)
            size = local.type.shape[dim]
            parts = []
            if low:
                slab = self.emit_slice(scope, local, dim, size - low, size)
                parts.append(self.emit(scope, "spmd.ppermute", (slab,), Params((
                    ("axes", axes), ("perm", tuple((i, i + 1) for i in range(n - 1))), ("group_size", n)))))
            parts.append(local)
            if high:
                slab = self.emit_slice(scope, local, dim, 0, high)
                parts.append(self.emit(scope, "spmd.ppermute", (slab,), Params((
                    ("axes", axes), ("perm", tuple((i, i - 1) for i in range(1, n))), ("group_size", n)))))
            local = self.emit(scope, "concatenate", tuple(parts), Params((("dimension", dim),)))
        return local

    def emit_slice(self, scope: _Scope, local: Value, dim: int, start: int, limit: int) -> Value:
        shape = local.type.shape
        starts = tuple(start if d == dim else 0 for d in range(len(shape)))
        limits = tuple(limit if d == dim else n for d, n in enumerate(shape))
        return self.emit(scope, "slice", (local,), Params((("start_indices", starts), ("limit_indices", limits),
                                                          ("strides", None))))

    # -- control flow --------------------------------------------------------------------------
    def _region_layouts(self, values, label: str) -> list[Layout]:
        return [self.declared(v, f"{label} region value {i}") for i, v in enumerate(values)]

    def _finish(self, op: Op, scope: _Scope, operands, regions, layouts: list[Layout]) -> None:
        results = tuple(Value(TensorType(l.local_shape(v.type.shape, self.mesh), v.type.dtype))
                        for v, l in zip(op.results, layouts))
        scope.ops.append(op.replace(operands=tuple(operands), results=results, regions=tuple(regions)))
        for value, layout, local in zip(op.results, layouts, results):
            scope.define(value, layout, local)

    def _scan(self, op: Op, scope: _Scope, label: str) -> None:
        consts, carries = int(op.params["num_consts"]), int(op.params["num_carry"])
        body = op.regions[0]
        inner_in = self._region_layouts(body.inputs, label)
        carry = inner_in[consts:consts + carries]
        inner_out = carry + self._region_layouts(body.outputs[carries:], label)
        stacked = lambda l: Layout(((),) + l.dims)  # noqa: E731  (the scanned dimension stays whole)
        needs = inner_in[:consts + carries] + [stacked(l) for l in inner_in[consts + carries:]]
        operands = [self.get(scope, v, l) for v, l in zip(op.operands, needs)]
        region = self.region(body, inner_in, inner_out, f"{label}/")
        self._finish(op, scope, operands, [region], carry + [stacked(l) for l in inner_out[carries:]])

    def _while(self, op: Op, scope: _Scope, label: str) -> None:
        cond_n, body_n = int(op.params["cond_nconsts"]), int(op.params["body_nconsts"])
        cond, body = op.regions
        carry = self._region_layouts(body.inputs[body_n:], label)
        cond_in = self._region_layouts(cond.inputs[:cond_n], label) + carry
        body_in = self._region_layouts(body.inputs[:body_n], label) + carry
        needs = cond_in[:cond_n] + body_in[:body_n] + carry
        operands = [self.get(scope, v, l) for v, l in zip(op.operands, needs)]
        cond_region = self.region(cond, cond_in, [Layout.replicated(v.type.rank) for v in cond.outputs],
                                  f"{label}/cond/")
        body_region = self.region(body, body_in, carry, f"{label}/body/")
        self._finish(op, scope, operands, [cond_region, body_region], carry)

    def _cond(self, op: Op, scope: _Scope, label: str) -> None:
        branches = op.regions
        in_layouts = self._region_layouts(branches[0].inputs, label)
        out_layouts = [self.declared(v, f"result {r} of {label}") for r, v in enumerate(op.results)]
        index = op.operands[0]
        operands = [self.get(scope, index, Layout.replicated(index.type.rank))]
        operands += [self.get(scope, v, l) for v, l in zip(op.operands[1:], in_layouts)]
        regions = [self.region(b, in_layouts, out_layouts, f"{label}/branch{i}/") for i, b in enumerate(branches)]
        self._finish(op, scope, operands, regions, out_layouts)


def _unpad(op: Op, params: Params, halos: list) -> Params:
    """Convolution params once halos are exchanged: no padding on the sharded window dims."""
    spatial = list(op.params["dimension_numbers"].lhs_spec[2:])
    padding = [tuple(p) for p in params["padding"]]
    for dim, _, _, _ in halos:
        padding[spatial.index(dim)] = (0, 0)
    return params.set(padding=tuple(padding))


def _itemsize(dtype) -> int:
    return TensorType((), dtype).nbytes


def _product(mesh: MeshShape, axes) -> int:
    n = 1
    for a in axes:
        n *= mesh.size(a)
    return n


def is_partitioned(graph: Graph) -> bool:
    """Whether `graph` is already a per-device program made by the partition pass."""
    return len(graph.ops) == 1 and graph.ops[0].name == "shard_map" and \
        bool(graph.ops[0].params.get(PARTITIONED, False))


def partition_graph(graph: Graph, mesh, mesh_param=None, warn: Callable[..., object] | None = None) -> Graph:
    """The per-device program of `graph` over `mesh` (shardings are completed by propagation first)."""
    mesh_shape = MeshShape.of(mesh)
    if is_partitioned(graph):
        return graph
    graph, _ = complete_shardings(graph.replace(mesh=mesh_shape), mesh_shape)
    return Partitioner(mesh_shape, mesh_param if mesh_param is not None else spmd_mesh(mesh), warn).partition(graph)


def spmd_collectives(graph: Graph, where: str = "") -> list[Collective]:
    """Every collective op of a partitioned graph (regions included), with ring-model bytes: the
    communication the program performs, exactly."""
    out = []
    for index, op in enumerate(graph.ops):
        label = f"{where}{op.name}#{index}"
        if op.name in COLLECTIVE_KINDS:
            kind, operand_bytes, result_bytes = collective_bytes(op)
            n = int(op.params["group_size"])
            out.append(Collective(kind, tuple(op.params["axes"]), n,
                                  ring_bytes(kind, n, operand_bytes, result_bytes), label))
        for r, region in enumerate(op.regions):
            out += spmd_collectives(region, f"{label}/region{r}/")
    return out


@register
@dataclass(frozen=True)
class Partition(Pass):
    """Rewrite the sharded graph into one shard_map whose region is the per-device program, with
    explicit collectives (what `sk.jit(..., lowering="spmd")` runs after the pipeline)."""

    name: ClassVar[str] = "partition"

    def run(self, graph: Graph, ctx) -> Graph:
        mesh = ctx.mesh if ctx is not None and ctx.mesh is not None else graph.mesh
        if mesh is None:
            raise PartitionError("partition needs a mesh: run the pipeline with mesh=... or give the "
                                 "graph a mesh")
        warn = None
        if ctx is not None:
            warn = ctx.diagnostics.warning
        return partition_graph(graph, mesh, warn=warn)
