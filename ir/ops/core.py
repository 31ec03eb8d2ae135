"""Ops that are shardkit's own: constants and sharding constraints."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..params import ArrayValue, KeyArrayValue
from ..registry import OpDef, register_op


def _constant_type(op):
    value = op.params["value"]
    if isinstance(value, KeyArrayValue):
        from .. import _jax
        impl = _jax.prng_impl(value.impl)
        key_rank = len(impl.key_shape)
        shape = value.data.array.shape
        return [(tuple(shape[:len(shape) - key_rank]), _jax.key_dtype(impl.name))]
    return [(tuple(value.array.shape), value.array.dtype)]


def _constant_lower(interp, op, args):
    value = op.params["value"]
    if isinstance(value, KeyArrayValue):
        return [jax.random.wrap_key_data(jnp.asarray(value.data.array), impl=value.impl)]
    return [jnp.asarray(value.array)]


CONSTANT = register_op(OpDef(
    "constant", type_rule=_constant_type, lower=_constant_lower,
    doc="A literal or closed-over array: param `value` holds it."))


def _identity_type(op):
    return [(v.type.shape, v.type.dtype) for v in op.operands]


def _identity_lower(interp, op, args):
    return list(args)  # the interpreter applies the result's sharding


SHARDING_CONSTRAINT = register_op(OpDef(
    "sharding_constraint", type_rule=_identity_type, lower=_identity_lower,
    doc="Identity whose result carries a user sharding (from with_sharding_constraint)."))


def make_constant(array) -> tuple:
    """Params for a constant op holding `array` (jax arrays, numpy arrays and key arrays)."""
    if hasattr(array, "dtype") and jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(array))
        return (("value", KeyArrayValue(impl, ArrayValue(jax.device_get(jax.random.key_data(array))))),)
    import numpy as np
    return (("value", ArrayValue(np.asarray(array))),)
