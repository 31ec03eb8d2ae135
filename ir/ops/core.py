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


def _constant_rule(op):
    from .lax import iota_rule
    return iota_rule(op)


CONSTANT = register_op(OpDef(
    "constant", type_rule=_constant_type, lower=_constant_lower, sharding_rule=_constant_rule,
    doc="A literal or closed-over array: param `value` holds it."))


def _identity_type(op):
    return [(v.type.shape, v.type.dtype) for v in op.operands]


def _identity_lower(interp, op, args):
    return list(args)  # the interpreter applies the result's sharding


def _identity_rule(op):
    from .lax import elementwise_rule
    return elementwise_rule(op)


SHARDING_CONSTRAINT = register_op(OpDef(
    "sharding_constraint", type_rule=_identity_type, lower=_identity_lower, sharding_rule=_identity_rule,
    doc="Identity whose result carries a user sharding (from with_sharding_constraint)."))

HINT = register_op(OpDef(
    "hint", type_rule=_identity_type, lower=_identity_lower, sharding_rule=_identity_rule,
    doc="Identity whose result carries a user sharding hint (sk.hint), with its priority."))


def make_constant(array) -> tuple:
    """Params for a constant op holding `array` (jax arrays, numpy arrays and key arrays)."""
    if hasattr(array, "dtype") and jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(array))
        return (("value", KeyArrayValue(impl, ArrayValue(jax.device_get(jax.random.key_data(array))))),)
    import numpy as np
    return (("value", ArrayValue(np.asarray(array))),)


hint_p = None


def hint_primitive():
    """The JAX primitive behind `sk.hint` (made once, on first use)."""
    global hint_p
    if hint_p is None:
        from .. import _jax
        hint_p = _jax.make_hint_primitive()
    return hint_p
