"""The op registry: one definition per op, holding its rules side by side.

An `OpDef` holds the op's type rule (result types from operand types and params), its sharding
rule (a factor mapping or code; filled in by the propagation layer), its lowering to JAX, and an
optional custom print format. Any JAX primitive without a dedicated definition gets a generic one
that abstract-evaluates and binds the primitive itself, so capture never fails on a valid program.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from . import _jax
from .errors import ShardkitError


@dataclass(frozen=True)
class OpDef:
    """Everything shardkit knows about one op, kept together.

    type_rule(op) -> list of (shape, dtype) for the results, from operand types, params, regions.
    lower(interp, op, args) -> list of JAX values; `interp` evaluates regions (`interp.call_region`).
    sharding_rule(op) -> FactorRule (see factors.py), or None when the op has no rule (then
        propagation treats its operands as replicated and `explain` reports it).
    region_ties(op) -> list of Tie: for ops with regions, which outer and inner values share dims.
    effectful: whether the op must be kept even when its results are unused.
    traced_regions: the region's ops can be typed only in the context the op's lowering sets up (the
        manual mesh axes and varying-axes types of shard_map), so the verifier type-checks them by
        tracing the op's lowering rather than one op at a time.
    """

    name: str
    type_rule: Callable[[Any], list] | None = None
    lower: Callable[..., list] | None = None
    sharding_rule: Any = None
    region_ties: Callable[[Any], list] | None = None
    primitive: Any = None
    effectful: bool = False
    is_collective: bool = False
    traced_regions: bool = False
    print_format: Callable[[Any], str] | None = None
    generic: bool = False
    doc: str = ""


_DEFS: dict[str, OpDef] = {}
_GENERIC_CACHE: dict[str, OpDef] = {}

# Primitives whose binding has effects beyond its results (kept by dce, never merged by cse).
EFFECTFUL_PRIMITIVES = frozenset({
    "debug_callback", "debug_print", "io_callback", "ffi_call", "custom_call", "rng_uniform",
    "infeed", "outfeed", "after_all", "create_token", "optimization_barrier",
})
RANDOM_PRIMITIVES = frozenset({"rng_uniform", "rng_bit_generator", "random_bits", "random_seed",
                               "random_split", "random_fold_in", "threefry2x32"})
COLLECTIVE_PRIMITIVES = frozenset({
    "psum", "pmax", "pmin", "pmean", "all_gather", "all_to_all", "ppermute", "psum_scatter",
    "reduce_scatter", "pbroadcast", "axis_index", "psum_invariant", "all_gather_invariant",
    "pvary", "collective_permute",
})


def register_op(definition: OpDef, *, replace_existing: bool = False) -> OpDef:
    """Add an op definition; the name must be new unless `replace_existing`."""
    if definition.name in _DEFS and not replace_existing:
        raise ShardkitError(f"op {definition.name!r} is already registered; pass replace_existing=True "
                            f"to override it")
    _DEFS[definition.name] = definition
    _GENERIC_CACHE.pop(definition.name, None)
    return definition


def update_op(name: str, **changes) -> OpDef:
    """Change fields of a registered (or generic) op definition, e.g. attach a sharding rule."""
    current = get_op_def(name)
    updated = replace(current, generic=False, **changes)
    _DEFS[name] = updated
    return updated


def get_op_def(name: str) -> OpDef:
    """The definition of op `name`: a dedicated one, or a generic one for a known JAX primitive."""
    found = _DEFS.get(name)
    if found is not None:
        return found
    found = _GENERIC_CACHE.get(name)
    if found is not None:
        return found
    prim = _jax.primitive(name)
    if prim is None:
        raise KeyError(name)
    found = generic_op_def(prim)
    _GENERIC_CACHE[name] = found
    return found


def has_op(name: str) -> bool:
    try:
        get_op_def(name)
        return True
    except KeyError:
        return False


def registered_ops() -> dict[str, OpDef]:
    """The dedicated op definitions (generic ones are made on demand)."""
    return dict(_DEFS)


def generic_op_def(prim) -> OpDef:
    """A definition for a JAX primitive with no dedicated one: abstract-eval to type, bind to lower."""
    from .ops.generic import generic_lower, generic_type_rule
    return OpDef(prim.name, type_rule=generic_type_rule, lower=generic_lower, primitive=prim,
                 effectful=prim.name in EFFECTFUL_PRIMITIVES,
                 is_collective=prim.name in COLLECTIVE_PRIMITIVES, generic=True)
