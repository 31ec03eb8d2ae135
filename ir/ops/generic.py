"""The generic op: any JAX primitive, typed by its abstract evaluation and lowered by binding it."""
from __future__ import annotations

from .. import _jax
from ..params import RegionRef, denormalize


def jax_params(op, interp=None) -> dict:
    """The op's params as JAX expects them; regions become freshly traced jaxprs (needs `interp`)."""
    params = {}
    for key, value in op.params.items():
        params[key] = _to_jax(value, op, interp)
    return params


def _to_jax(value, op, interp):
    if isinstance(value, RegionRef):
        if interp is None:
            raise ValueError("a region param needs an interpreter to be traced")
        region = op.regions[value.index]
        # a region of scalars is a reducer or comparator (scatter, reduce, sort): sharding constraints
        # inside it would only stop XLA from recognising the reduction (e.g. scatter-add's all-reduce)
        scalar = all(v.type.rank == 0 for v in region.inputs + region.outputs)
        fn = interp.region_fn(region, apply_shardings=False if scalar else None)
        types = [(v.type.shape, v.type.dtype) for v in region.inputs]
        return _jax.make_closed_jaxpr(fn, types) if value.closed else _jax.make_open_jaxpr(fn, types)
    if type(value) is tuple:
        return tuple(_to_jax(v, op, interp) for v in value)
    if isinstance(value, tuple) and hasattr(type(value), "_fields") and any(
            isinstance(v, RegionRef) for v in value):  # a NamedTuple of regions
        return type(value)(*(_to_jax(v, op, interp) for v in value))
    return denormalize(value)


def primitive_of(op):
    prim = op.definition.primitive
    if prim is None:
        prim = _jax.primitive(op.name)
    return prim


def generic_lower(interp, op, args):
    return _jax.bind(primitive_of(op), args, jax_params(op, interp))


def generic_type_rule(op):
    if op.regions:
        return eval_shape_rule(op)
    types = [(v.type.shape, v.type.dtype) for v in op.operands]
    return _jax.abstract_eval(primitive_of(op), types, jax_params(op))


def eval_shape_rule(op):
    """Type rule for any op: abstract-evaluate its lowering (used for ops with regions)."""
    import jax
    from ..interpreter import Interpreter

    structs = [jax.ShapeDtypeStruct(v.type.shape, v.type.dtype) for v in op.operands]

    def run(*args):
        return op.definition.lower(Interpreter(mesh=None, apply_shardings=False), op, list(args))

    out = jax.eval_shape(run, *structs)
    return [(tuple(o.shape), o.dtype) for o in out]
