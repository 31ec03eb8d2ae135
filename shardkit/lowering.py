"""`sk.lower`: compile a graph back to a JAX callable with the original function's calling convention."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from shardkit.ir import Graph, Interpreter, LoweringError, MeshShape, ShardingError
from shardkit.ir.printer import type_text
from shardkit.mesh import auto_axes, resolve_mesh


class LoweredFunction:
    """A graph compiled through `jax.jit`; call it like the function it was captured from."""

    def __init__(self, graph: Graph, mesh=None, interpreter: type[Interpreter] = Interpreter):
        self.graph = graph
        self.mesh = resolve_mesh(mesh, graph.mesh)
        if self.mesh is not None:
            self.mesh = auto_axes(self.mesh)
        if self.mesh is not None:
            _check_shardings(graph, MeshShape.of(self.mesh))
        self._interpreter_class = interpreter
        in_shardings = self._shardings(graph.inputs)
        out_shardings = self._shardings(graph.outputs)
        self.in_shardings = in_shardings
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
            where = _structure_difference(tree, expected) or f"got {_short(tree)}, expected {_short(expected)}"
            raise LoweringError(f"arguments do not match the structure @{self.graph.name} was captured "
                                f"with: {where}; call it the way the captured function was called")
        if expected is None:
            flat = jax.tree_util.tree_leaves(args)
        if len(flat) != len(self.graph.inputs):
            raise LoweringError(f"@{self.graph.name} takes {len(self.graph.inputs)} array arguments, "
                                f"got {len(flat)}")
        for i, (leaf, value) in enumerate(zip(flat, self.graph.inputs)):
            if not _fits(leaf, value.type):
                keys = jax.tree_util.tree_flatten_with_path((args, kwargs))[0][i][0]
                path = ("args" if keys[0].idx == 0 else "kwargs") + jax.tree_util.keystr(tuple(keys[1:]))
                raise LoweringError(
                    f"argument {path} (input {i} of @{self.graph.name}) is {_leaf_text(leaf)}, but the graph "
                    f"was captured for {type_text(value.type)}; capture again for new shapes or dtypes")
        return flat

    def _unflatten(self, outs):
        if self.graph.out_tree is None:
            return outs[0] if len(outs) == 1 else tuple(outs)
        return jax.tree_util.tree_unflatten(self.graph.out_tree, list(outs))

    def __call__(self, *args, **kwargs) -> Any:
        return self.call_flat(self._flatten(args, kwargs))

    def call_flat(self, flat: list) -> Any:
        """Run on already checked flat arguments (the leaves of `(args, kwargs)`)."""
        if self.in_shardings is not None:
            flat = self._place(flat)
        return self._unflatten(self.jitted(*flat))

    def _place(self, flat: list) -> list:
        """Move arrays that sit elsewhere (committed to other devices or shardings) onto their input
        sharding, in one batched transfer; arrays already in place are passed through untouched."""
        moving = [i for i, (x, s) in enumerate(zip(flat, self.in_shardings))
                  if hasattr(x, "shape") and not _placed(x, s)]
        if not moving:
            return flat
        flat = list(flat)
        moved = jax.device_put([flat[i] for i in moving], [self.in_shardings[i] for i in moving])
        for i, x in zip(moving, moved):
            flat[i] = x
        return flat

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


# -- argument checks ------------------------------------------------------------------------------


def _placed(x, sharding: NamedSharding) -> bool:
    """Whether array `x` already lies the way `sharding` asks (P('data') and P('data', None) agree)."""
    current = getattr(x, "sharding", None)
    if current is None:
        return False
    return current == sharding or current.is_equivalent_to(sharding, len(x.shape))


def _fits(leaf, type_) -> bool:
    """Whether an argument has the shape and (canonical) dtype the graph's input was captured with."""
    shape = getattr(leaf, "shape", None)
    if shape is None:
        shape = np.shape(leaf)
    if tuple(shape) != tuple(type_.shape):
        return False
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or dtype == type_.dtype:
        return True  # Python scalars take the graph's dtype, as under jax.jit
    try:
        return jax.dtypes.canonicalize_dtype(dtype) == type_.dtype
    except (TypeError, ValueError):
        return False


def _leaf_text(leaf) -> str:
    dtype = getattr(leaf, "dtype", None)
    shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
    return f"{dtype}{list(shape)}" if dtype is not None else f"{type(leaf).__name__} of shape {shape}"


def _short(tree, limit: int = 200) -> str:
    text = str(tree)
    return text if len(text) <= limit else text[:limit] + "..."


def _structure_difference(got, expected) -> str | None:
    """Where two `(args, kwargs)` pytree structures first differ, as 'args[0]['w']: expected ..., got ...'."""
    got_parts, expected_parts = got.children(), expected.children()
    if len(got_parts) != 2 or len(expected_parts) != 2:
        return None
    got_args, expected_args = got_parts[0].children(), expected_parts[0].children()
    if len(got_args) != len(expected_args):
        return f"expected {len(expected_args)} positional arguments, got {len(got_args)}"
    for i, (g, e) in enumerate(zip(got_args, expected_args)):
        found = _node_difference(g, e, f"args[{i}]")
        if found:
            return found
    return _node_difference(got_parts[1], expected_parts[1], "kwargs")


def _node_difference(got, expected, path: str) -> str | None:
    got_data, expected_data = got.node_data(), expected.node_data()
    try:
        same = got_data == expected_data
    except Exception:  # node metadata that does not compare (e.g. arrays): fall back to the text
        same = str(got_data) == str(expected_data)
    got_children, expected_children = got.children(), expected.children()
    if not same or len(got_children) != len(expected_children):
        return f"{path}: expected {_node_text(expected)}, got {_node_text(got)}"
    for i, (g, e) in enumerate(zip(got_children, expected_children)):
        found = _node_difference(g, e, path + _child_path(expected_data, i, len(expected_children)))
        if found:
            return found
    return None


def _node_text(tree) -> str:
    data = tree.node_data()
    if data is None:
        return "an array"
    kind, aux = data
    keys = _keys(kind, aux, len(tree.children()))
    if kind is type(None):
        return "None"
    if keys is not None:
        return f"{kind.__name__} with keys {list(keys)}"
    if kind in (tuple, list):
        return f"a {kind.__name__} of {len(tree.children())}"
    return kind.__name__


def _keys(kind, aux, n: int):
    if kind is dict or (isinstance(aux, (tuple, list)) and len(aux) == n and n
                        and all(isinstance(k, (str, int)) for k in aux)):
        return tuple(aux)
    return None


def _child_path(data, i: int, n: int) -> str:
    kind, aux = data
    if hasattr(kind, "_fields") and len(kind._fields) == n:
        return f".{kind._fields[i]}"
    keys = _keys(kind, aux, n)
    if keys is not None and kind not in (tuple, list):
        return f"[{keys[i]!r}]"
    return f"[{i}]"
