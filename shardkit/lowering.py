"""`sk.lower`: compile a graph back to a JAX callable with the original function's calling convention."""
from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding

from shardkit.ir import Graph, Interpreter, LoweringError, MeshShape, ShardingError
from shardkit.ir.printer import type_text
from shardkit.mesh import resolve_mesh


class LoweredFunction:
    """A graph compiled through `jax.jit`; call it like the function it was captured from."""

    def __init__(self, graph: Graph, mesh=None, interpreter: type[Interpreter] = Interpreter):
        self.graph = graph
        self.mesh = resolve_mesh(mesh, graph.mesh)
        if self.mesh is not None:
            _check_shardings(graph, MeshShape.of(self.mesh))
        self._interpreter_class = interpreter
        in_shardings = self._shardings(graph.inputs)
        out_shardings = self._shardings(graph.outputs)
        self.jitted = jax.jit(self._run_flat, in_shardings=in_shardings, out_shardings=out_shardings)

    def _shardings(self, values):
        if self.mesh is None or not values:
            return None
        if any(v.type.sharding is None or any(d.is_open for d in v.type.sharding.dims) for v in values):
            return None  # left to XLA; the values that have shardings are constrained inside
        return tuple(NamedSharding(self.mesh, v.type.sharding.to_partition_spec()) for v in values)

    def _run_flat(self, *flat):
        interp = self._interpreter_class(mesh=self.mesh)
        return tuple(interp.run(self.graph, flat, constrain_inputs=True))

    def _flatten(self, args, kwargs) -> list:
        flat, tree = jax.tree_util.tree_flatten((args, kwargs))
        expected = self.graph.in_tree
        if expected is not None and tree != expected:
            raise LoweringError(f"arguments have structure {tree}, but @{self.graph.name} was captured "
                                f"with {expected}; call it the way the captured function was called")
        if expected is None:
            flat = jax.tree_util.tree_leaves(args)
        if len(flat) != len(self.graph.inputs):
            raise LoweringError(f"@{self.graph.name} takes {len(self.graph.inputs)} array arguments, "
                                f"got {len(flat)}")
        return flat

    def _unflatten(self, outs):
        if self.graph.out_tree is None:
            return outs[0] if len(outs) == 1 else tuple(outs)
        return jax.tree_util.tree_unflatten(self.graph.out_tree, list(outs))

    def __call__(self, *args, **kwargs) -> Any:
        flat = self._flatten(args, kwargs)
        return self._unflatten(self.jitted(*flat))

    def lower(self, *args, **kwargs) -> jax.stages.Lowered:
        """The jax.stages.Lowered of this call (`.compile().as_text()` shows XLA's HLO)."""
        return self.jitted.lower(*self._flatten(args, kwargs))


def lower(graph: Graph, mesh=None) -> LoweredFunction:
    """Compile `graph` with `jax.jit` over `mesh` (default: the mesh the graph was captured on)."""
    if not isinstance(graph, Graph):
        raise TypeError(f"sk.lower expects a shardkit.ir.Graph, got {type(graph).__name__}")
    return LoweredFunction(graph, mesh)


def _check_shardings(graph: Graph, mesh: MeshShape) -> None:
    for i, value in enumerate(graph.inputs):
        if value.type.sharding is not None:
            value.type.sharding.check(mesh, value.type.shape, value=f"input {i} ({type_text(value.type)})")
    for op in graph.walk():
        for j, value in enumerate(op.results):
            if value.type.sharding is not None:
                value.type.sharding.check(mesh, value.type.shape,
                                          value=f"result {j} of {op.name} ({type_text(value.type)})")
