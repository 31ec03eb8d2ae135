"""`sk.hint`: a user sharding hint inside a function; numerically the identity."""
from __future__ import annotations

import jax
from jax.sharding import NamedSharding, PartitionSpec

from shardkit.ir import ShardingError
from shardkit.axis_rules import resolve_spec
from shardkit.ir.ops.core import hint_primitive


def hint(x, spec, priority: int = 0):
    """Suggest that `x` be sharded as `spec` (a PartitionSpec); priority 0 is the strongest.

    Logical axis names are resolved through the active `sk.axis_rules` table. Works on arrays and
    on pytrees of arrays (the same spec for every leaf). Under `sk.jit` the hint
    seeds sharding propagation; under plain JAX it is the identity, and it passes through
    `jax.grad`, `jax.vmap` and `jax.jit` (tangents and cotangents get the same hint).
    """
    if isinstance(spec, NamedSharding):
        spec = spec.spec
    if spec is None:
        spec = PartitionSpec()
    if not isinstance(spec, PartitionSpec):
        raise ShardingError(f"sk.hint expects a PartitionSpec, got {spec!r}")
    spec = resolve_spec(spec)
    if not isinstance(priority, int) or priority < 0:
        raise ShardingError(f"sk.hint priority must be a non-negative int (0 is strongest), got {priority!r}")

    def one(leaf):
        rank = len(getattr(leaf, "shape", ()))
        if len(tuple(spec)) > rank:
            raise ShardingError(
                f"sk.hint: spec {spec} has {len(tuple(spec))} entries but the value has shape "
                f"{tuple(leaf.shape)} (rank {rank}); give at most one entry per dimension")
        return hint_primitive().bind(leaf, spec=spec, priority=priority)

    return jax.tree_util.tree_map(one, x)
