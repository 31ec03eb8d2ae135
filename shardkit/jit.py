"""`sk.jit`: capture a function, run a pass pipeline that partitions it, lower it over a mesh."""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import jax
from jax.sharding import NamedSharding, PartitionSpec

from shardkit.ir import Graph, MeshShape, Op, Sharding, ShardingError, Value, capture
from shardkit.ir.sharding import spec_to_sharding
from shardkit.lowering import LoweredFunction
from shardkit.mesh import resolve_mesh

DEFAULT_PIPELINE = "default"


def _is_spec(x) -> bool:
    return x is None or isinstance(x, (PartitionSpec, NamedSharding, Sharding))


def broadcast_specs(specs, tree, what: str) -> list:
    """One spec per leaf of `tree`, from `specs` (a pytree prefix of `tree`, leaves PartitionSpec/None)."""
    if specs is None:
        return [None] * len(jax.tree_util.tree_leaves(tree))
    try:
        per_leaf = jax.tree_util.tree_map(
            lambda spec, sub: _Group([spec] * len(jax.tree_util.tree_leaves(sub))), specs, tree, is_leaf=_is_spec)
    except ValueError as e:
        raise ShardingError(f"{what} do not match the structure of the values they describe: {e}")
    return [s for group in jax.tree_util.tree_leaves(per_leaf, is_leaf=lambda x: isinstance(x, _Group))
            for s in group.specs]


class _Group:
    """The specs of one spec-tree leaf's subtree (an opaque pytree leaf, unlike a list, which specs
    trees may themselves contain)."""

    def __init__(self, specs: list):
        self.specs = specs


def _arg_names(fn, count: int) -> list[str]:
    try:
        names = [p.name for p in inspect.signature(fn).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        names = []
    return [names[i] if i < len(names) else f"arg{i}" for i in range(count)]


@dataclass(frozen=True)
class Build:
    """One specialisation of an sk.jit function: final graph, compiled callable, pass context and
    the propagation result (provenance of every sharding) when propagation ran last."""

    graph: Graph
    lowered: LoweredFunction
    ctx: Any
    propagation: Any
    propagated: Graph | None = None
    """With lowering="spmd": the sharded graph before partitioning (`graph` is the per-device program)."""


class ShardedFunction:
    """The result of `sk.jit`: call it, `.lower(*args)` it, or look at `.graph(*args)`."""

    def __init__(self, fn: Callable, mesh, in_specs=None, out_specs=None, pipeline: str = DEFAULT_PIPELINE,
                 lowering: str = "xla", allow_uneven: bool = False, axis_rules=None):
        if lowering not in ("xla", "spmd"):
            raise ShardingError(f"sk.jit: lowering={lowering!r} is not available; use lowering='xla' "
                                f"(XLA's partitioner) or lowering='spmd' (shardkit's own)")
        self.lowering = lowering
        self.fn = fn
        self.mesh = resolve_mesh(mesh)
        if self.mesh is None:
            raise ShardingError("sk.jit needs a mesh: sk.jit(fn, mesh=sk.make_mesh({'data': 8}), ...)")
        self.mesh_shape = MeshShape.of(self.mesh)
        self.in_specs = in_specs
        self.out_specs = out_specs
        self.pipeline = pipeline
        self.allow_uneven = allow_uneven
        self.axis_rules = axis_rules
        self._cache: dict[Any, Build] = {}
        self.__name__ = getattr(fn, "__name__", "fn")
        self.__doc__ = getattr(fn, "__doc__", None)

    # -- building ------------------------------------------------------------------------------
    def _key(self, args, kwargs):
        return _signature(*jax.tree_util.tree_flatten((args, kwargs)))

    def _resolve(self, spec):
        from shardkit.axis_rules import active_rules
        rules = self.axis_rules or active_rules()
        if rules is None or not isinstance(spec, (PartitionSpec, NamedSharding)):
            return spec
        spec = spec.spec if isinstance(spec, NamedSharding) else spec
        return rules.resolve(spec, self.mesh_shape.names)

    def _capture(self, args, kwargs) -> Graph:
        abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=getattr(x, "weak_type", False)) \
            if hasattr(x, "shape") and hasattr(x, "dtype") else x
        args, kwargs = jax.tree_util.tree_map(abstract, (args, kwargs))
        # under the mesh's abstract mesh, ops that place values by axis name (federated
        # placements, for instance) see this mesh's axes
        with contextlib.ExitStack() as stack:
            stack.enter_context(jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh))
            if self.axis_rules is not None:
                stack.enter_context(self.axis_rules)
            graph = capture(self.fn, *args, **kwargs)
        graph = self._seed_inputs(graph, args, kwargs)
        graph = self._seed_outputs(graph)
        return graph.replace(mesh=self.mesh_shape)

    def _seed_inputs(self, graph: Graph, args, kwargs) -> Graph:
        if self.in_specs is None:
            return graph
        specs = self.in_specs
        if not isinstance(specs, tuple) or len(args) == 1 and _is_spec(specs):
            specs = (specs,) if len(args) == 1 and not isinstance(specs, tuple) else specs
        if len(specs) != len(args):
            raise ShardingError(f"sk.jit: in_specs has {len(specs)} entries but {self.__name__} was called "
                                f"with {len(args)} positional arguments; give one spec (or None) per argument")
        names = _arg_names(self.fn, len(args))
        per_leaf, labels = [], []
        for i, (spec, arg) in enumerate(zip(specs, args)):
            leaves = jax.tree_util.tree_leaves(arg)
            per_leaf += broadcast_specs(spec, arg, f"in_specs[{i}] ({names[i]})")
            labels += [f"argument {names[i]}" + (f" leaf {j}" if len(leaves) > 1 else "") for j in range(len(leaves))]
        per_leaf += [None] * (len(graph.inputs) - len(per_leaf))
        labels += [f"keyword argument leaf {j}" for j in range(len(graph.inputs) - len(labels))]
        types = {}
        for value, spec, label in zip(graph.inputs, per_leaf, labels):
            if spec is None:
                continue
            spec = self._resolve(spec)
            sharding = spec_to_sharding(spec, value.type.rank, self.mesh_shape, label, priority=0)
            sharding.check(self.mesh_shape, value.type.shape, value=f"{label} {value.type.shape}",
                           allow_uneven=self.allow_uneven)
            types[value] = value.type.with_sharding(sharding)
        return graph.with_types(types)

    def _seed_outputs(self, graph: Graph) -> Graph:
        if self.out_specs is None:
            return graph
        out_tree = graph.out_tree
        skeleton = jax.tree_util.tree_unflatten(out_tree, list(range(out_tree.num_leaves)))
        specs = broadcast_specs(self.out_specs, skeleton, "out_specs")
        ops, outputs = list(graph.ops), []
        for i, (value, spec) in enumerate(zip(graph.outputs, specs)):
            if spec is None:
                outputs.append(value)
                continue
            spec = self._resolve(spec)
            sharding = spec_to_sharding(spec, value.type.rank, self.mesh_shape, f"output {i}", priority=0)
            sharding.check(self.mesh_shape, value.type.shape, value=f"output {i} {value.type.shape}",
                           allow_uneven=self.allow_uneven)
            hinted = Value(value.type.with_sharding(sharding))
            ops.append(Op("hint", (value,), (hinted,)))
            outputs.append(hinted)
        return graph.replace(ops=tuple(ops), outputs=tuple(outputs))

    def build(self, *args, **kwargs) -> "Build":
        """Capture, run the pipeline, complete shardings and lower (cached per argument shapes)."""
        key = self._key(args, kwargs)
        if key not in self._cache:
            from shardkit.passes import PassContext, Pipeline
            from shardkit.passes.propagate_sharding import complete_shardings
            from shardkit.passes.sharding_engine import PropagationResult
            graph = self._capture(args, kwargs)
            ctx = PassContext(mesh=self.mesh)
            graph = Pipeline.parse(self.pipeline).run(graph, mesh=self.mesh, ctx=ctx)
            graph, completed = complete_shardings(graph, self.mesh_shape)
            propagation = completed or ctx.analyses.peek(PropagationResult, graph)
            propagated = None
            if self.lowering == "spmd":
                from shardkit.passes.partition import is_partitioned
                if not is_partitioned(graph):
                    propagated = graph
                    graph = Pipeline.parse("partition").run(graph, mesh=self.mesh, ctx=ctx)
            self._cache[key] = Build(graph, LoweredFunction(graph, self.mesh), ctx, propagation, propagated)
        return self._cache[key]

    # -- public -----------------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        leaves, tree = jax.tree_util.tree_flatten((args, kwargs))
        build = self._cache.get(_signature(leaves, tree))
        if build is None:
            return self.build(*args, **kwargs).lowered(*args, **kwargs)
        return build.lowered.call_flat(leaves)  # the signature matched a checked build: skip the checks

    def lower(self, *args, **kwargs) -> jax.stages.Lowered:
        """The jax.stages.Lowered for these arguments (`.compile().as_text()` is XLA's HLO)."""
        return self.build(*args, **kwargs).lowered.lower(*args, **kwargs)

    def graph(self, *args, **kwargs) -> Graph:
        """The IR after the pipeline: every value carries a sharding."""
        return self.build(*args, **kwargs).graph


def _signature(leaves, tree) -> tuple:
    """What a build depends on: the argument structure and each leaf's shape and dtype."""
    sig = []
    for x in leaves:
        try:
            sig.append((x.shape, x.dtype))
        except AttributeError:
            sig.append(((), type(x)))
    return tree, tuple(sig)


def jit(fn: Callable, *, mesh, in_specs=None, out_specs=None, pipeline: str = DEFAULT_PIPELINE,
        lowering: str = "xla", allow_uneven: bool = False, axis_rules=None) -> ShardedFunction:
    """Partition `fn` over `mesh`: in_specs/out_specs (one PartitionSpec or None per argument/output,
    pytree prefixes allowed) and any `sk.hint` inside seed sharding propagation; the pass pipeline
    ("default", or e.g. "default,my-pass") runs on the captured IR, open shardings are completed,
    and the result is lowered through jax.jit with explicit shardings. Specs may use logical axis
    names, resolved by `axis_rules` (or the active `with sk.axis_rules(...)` table)."""
    return ShardedFunction(fn, mesh, in_specs, out_specs, pipeline, lowering, allow_uneven, axis_rules)
