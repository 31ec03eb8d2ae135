"""Capture: turn a JAX function into a Graph by reading its closed jaxpr, one equation per op.

Jaxpr-valued params (the bodies of jit, scan, while, cond, custom_jvp/vjp, remat, shard_map, and of
any other primitive) become op regions and the param is replaced by `#region(i)`. A primitive with no
dedicated op definition is kept as a generic op holding the primitive's name and params.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding

from . import _jax
from .errors import CaptureError, ShardingError
from .graph import Graph, Op, Params, TensorType, Value
from .ops.core import make_constant
from .params import ArrayValue, RegionRef, normalize
from .registry import has_op
from .sharding import MeshShape, Sharding


def capture(fn: Callable, *args, **kwargs) -> Graph:
    """Capture `fn(*args, **kwargs)` into a Graph. Args may be arrays, ShapeDtypeStructs or pytrees.

    Inputs that carry a NamedSharding (sharded jax.Arrays, ShapeDtypeStructs with `sharding=`) keep
    it on the graph's input values; the graph then records the mesh's axis names and sizes.
    """
    try:
        closed, out_shape = _jax.trace(fn, args, kwargs)
    except ShardingError:
        raise
    flat, in_tree = jax.tree_util.tree_flatten((args, kwargs))
    out_tree = jax.tree_util.tree_structure(out_shape)
    builder = _Builder()
    jaxpr, consts = _jax.closed_parts(closed)
    graph = builder.graph(jaxpr, consts, name=getattr(fn, "__name__", "main") or "main")
    mesh = builder.mesh
    shardings = [_input_sharding(x) for x in flat]
    if len(shardings) == len(graph.inputs) and any(s is not None for s, _ in shardings):
        types = {}
        for value, (sharding, arg_mesh) in zip(graph.inputs, shardings):
            if sharding is None:
                continue
            mesh = _merge_mesh(mesh, arg_mesh)
            types[value] = value.type.with_sharding(sharding)
        graph = graph.with_types(types)
    return graph.replace(mesh=mesh, in_tree=in_tree, out_tree=out_tree)


def _input_sharding(x):
    sharding = getattr(x, "sharding", None)
    if not isinstance(sharding, NamedSharding) or sharding.mesh.size <= 1:
        return None, None
    return Sharding.from_partition_spec(sharding.spec, len(x.shape)), MeshShape.of(sharding.mesh)


def _merge_mesh(current: MeshShape | None, new: MeshShape | None) -> MeshShape | None:
    if new is None or current is None or current == new:
        return current or new
    raise CaptureError(f"the program uses two different meshes ({current}) and ({new}); "
                       f"shardkit graphs are sharded over one mesh")


# Ops whose errors point at user code (a conflicting hint should name the line that wrote it).
_LOCATED = frozenset({"hint", "sharding_constraint"})


@functools.lru_cache(maxsize=1)
def _own_dirs() -> tuple[str, ...]:
    """shardkit's own source folders (ir/, passes/, the shardkit package): frames there are not
    the user's code."""
    here = os.path.dirname(os.path.abspath(__file__))
    dirs = {here, os.path.join(os.path.dirname(here), "passes")}
    spec = importlib.util.find_spec("shardkit")
    if spec is not None:
        dirs.update(spec.submodule_search_locations or ())
    return tuple(sorted(d.rstrip(os.sep) + os.sep for d in dirs))


class _Builder:
    def __init__(self):
        self.mesh: MeshShape | None = None

    def graph(self, jaxpr, consts, name: str) -> Graph:
        constvars, invars, outvars, eqns = _jax.open_parts(jaxpr)
        env: dict[Any, Value] = {}
        ops: list[Op] = []
        literals: dict[tuple, Value] = {}
        for var, const in zip(constvars, consts):
            env[var] = self._constant(ops, const, _type_of(var))
        inputs = []
        for var in invars:
            value = Value(_type_of(var))
            env[var] = value
            inputs.append(value)

        def read(atom) -> Value:
            if _jax.is_literal(atom):
                return self._literal(ops, literals, atom)
            return env[atom]

        for eqn in eqns:
            prim, eq_in, eq_out, params = _jax.eqn_parts(eqn)
            operands = [read(a) for a in eq_in]
            results = [Value(_type_of(v)) for v in eq_out]
            op = self.op(prim, operands, results, params)
            if op.name in _LOCATED:
                op = op.replace(loc=_jax.eqn_location(eqn, _own_dirs()))
            for var, value in zip(eq_out, op.results):
                if not _jax.is_drop_var(var):
                    env[var] = value
            ops.append(op)
        outputs = [read(v) for v in outvars]
        return Graph(inputs, ops, outputs, name=name)

    def op(self, prim, operands, results, params) -> Op:
        name = prim.name
        if name == "sharding_constraint":
            return self._sharding_constraint(operands, results, params)
        if name == "shardkit_hint":
            return self._hint(operands, results, params)
        if not has_op(name):
            _jax.remember_primitive(prim)
            if not has_op(name):
                raise CaptureError(f"primitive {name!r} cannot be resolved by name")
        regions: list[Graph] = []
        converted = [(key, self._param(value, regions)) for key, value in params.items()]
        if name in ("jit", "pjit"):
            self._apply_jit_shardings(regions, params)
        return Op(name, tuple(operands), tuple(results), Params(converted), tuple(regions))

    def _param(self, value, regions: list):
        if _jax.is_closed_jaxpr(value) or _jax.is_open_jaxpr(value):
            value = _jax.discharge_refs(value)
        if _jax.is_closed_jaxpr(value):
            jaxpr, consts = _jax.closed_parts(value)
            regions.append(self.graph(jaxpr, consts, name="region"))
            return RegionRef(len(regions) - 1, closed=True)
        if _jax.is_open_jaxpr(value):
            constvars = _jax.open_parts(value)[0]
            if constvars:
                raise CaptureError("an open jaxpr param with constvars cannot be captured")
            regions.append(self.graph(value, (), name="region"))
            return RegionRef(len(regions) - 1, closed=False)
        if isinstance(value, (tuple, list)) and any(_jax.is_closed_jaxpr(v) or _jax.is_open_jaxpr(v) for v in value):
            converted = tuple(self._param(v, regions) for v in value)
            if hasattr(type(value), "_fields"):  # a NamedTuple of jaxprs (custom_linear_solve)
                return type(value)(*converted)
            return converted
        if isinstance(value, NamedSharding) and value.mesh.size > 1:
            self.mesh = _merge_mesh(self.mesh, MeshShape.of(value.mesh))
        return normalize(value)

    def _apply_jit_shardings(self, regions, params) -> None:
        in_shardings = params.get("in_shardings") or ()
        region = regions[0]
        types = {}
        for value, sharding in zip(region.inputs, in_shardings):
            if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
                self.mesh = _merge_mesh(self.mesh, MeshShape.of(sharding.mesh))
                types[value] = value.type.with_sharding(
                    Sharding.from_partition_spec(sharding.spec, value.type.rank))
        if types:
            regions[0] = region.with_types(types)

    def _sharding_constraint(self, operands, results, params) -> Op:
        (value,), (result,) = operands, results
        sharding = params["sharding"]
        rank = result.type.rank
        if isinstance(sharding, NamedSharding):
            spec = Sharding.from_partition_spec(sharding.spec, rank, priority=0)
            unconstrained = params.get("unconstrained_dims") or ()
            if unconstrained:
                dims = list(spec.dims)
                for d in unconstrained:
                    dims[d] = type(dims[d])(dims[d].axes, True)
                spec = Sharding(tuple(dims), spec.replicated, spec.unreduced, spec.priority)
            if sharding.mesh.size > 1:
                self.mesh = _merge_mesh(self.mesh, MeshShape.of(sharding.mesh))
            result = result.replace(type=result.type.with_sharding(spec))
            results[0] = result
        return Op("sharding_constraint", (value,), (result,))

    def _hint(self, operands, results, params) -> Op:
        (value,), (result,) = operands, results
        sharding = Sharding.from_partition_spec(params["spec"], result.type.rank,
                                                priority=int(params["priority"]), value="sk.hint")
        result = result.replace(type=result.type.with_sharding(sharding))
        results[0] = result
        return Op("hint", (value,), (result,))

    def _constant(self, ops, const, type_: TensorType) -> Value:
        value = Value(type_)
        ops.append(Op("constant", (), (value,), Params(make_constant(const))))
        return value

    def _literal(self, ops, cache, atom) -> Value:
        type_ = _type_of(atom)
        raw = _jax.literal_value(atom)
        array = np.asarray(raw, dtype=type_.dtype) if not _is_key(type_) else raw
        key = None
        if not _is_key(type_):
            key = (str(array.dtype), array.shape, array.tobytes())
            if key in cache:
                return cache[key]
        value = self._constant(ops, array, type_)
        if key is not None:
            cache[key] = value
        return value


def _is_key(type_: TensorType) -> bool:
    return _jax.is_key_dtype(type_.dtype)


def _type_of(atom) -> TensorType:
    try:
        shape, dtype = _jax.aval_of(atom)
    except TypeError as e:
        raise CaptureError(f"cannot capture a value of abstract type {atom.aval!r}: shardkit's IR "
                           f"holds arrays only ({e})")
    return TensorType(shape, dtype)
