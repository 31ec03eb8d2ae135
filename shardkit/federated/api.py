"""The federated operations users call inside a `program`: broadcast, map, sum, mean, weighted_mean.

Each works on pytrees, leaf by leaf. A value placed at a placement of n members has a leading
dimension of n; a server value has none.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from . import primitives as prims
from .context import Placement, inside, resolve
from .errors import FederatedError


def _leaves(tree, what: str) -> tuple[list, Any]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = []
    for leaf in leaves:
        try:
            out.append(jnp.asarray(leaf))
        except TypeError:
            raise FederatedError(f"{what}: {type(leaf).__name__} is not an array; federated values are "
                                 f"pytrees of arrays")
    return out, treedef


def _check_leading(leaves, placement: Placement, what: str) -> None:
    for leaf in leaves:
        if leaf.ndim == 0 or leaf.shape[0] != placement.size:
            raise FederatedError(
                f"{what}: placement {placement.name!r} has {placement.size} members, but a value of shape "
                f"{tuple(leaf.shape)} was given; values placed there have a leading dimension of "
                f"{placement.size}")


def _place(x, where: Placement):
    """Constrain a placed value's leading dimension to the placement's mesh axis (a sharding
    constraint in the jaxpr, so jit, AD and vmap carry it along)."""
    return prims.constrain(x, 0, where.axis, where.mesh)


def broadcast(x, *, placement: str | None = None):
    """Send a server value to every member of a placement: each leaf gains a leading dimension of n."""
    where = resolve("broadcast", placement)
    leaves, treedef = _leaves(x, "broadcast")
    out = [_place(prims.broadcast_p.bind(leaf, dim=0, **where.params()), where) for leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, out)


def sum(x, *, placement: str | None = None):  # noqa: A001  (the federated sum)
    """Add up a placed value over the members of its placement (placement to server)."""
    where = resolve("sum", placement)
    leaves, treedef = _leaves(x, "sum")
    _check_leading(leaves, where, "sum")
    out = [prims.sum_p.bind(leaf, dim=0, **where.params()) for leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, out)


def mean(x, *, placement: str | None = None):
    """Average a placed value over the members of its placement (placement to server).

    Integer and boolean values are averaged in JAX's default float dtype (float32, float64 under
    jax_enable_x64), the same under eager execution, `jax.eval_shape` and `jax.jit`.
    """
    where = resolve("mean", placement)
    leaves, treedef = _leaves(x, "mean")
    _check_leading(leaves, where, "mean")
    out = [prims.mean_p.bind(leaf, dim=0, **where.params()) for leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, out)


def weighted_mean(values, weights, *, placement: str | None = None):
    """sum_i w_i x_i / sum_i w_i over the members of a placement (placement to server).

    `weights` is one array for every leaf of `values` (shape (n,) for one weight per member, or any
    leading part of a leaf's shape), or a pytree with the structure of `values`. Integer values and
    weights are computed in the default float dtype; otherwise in the values' dtype.
    """
    where = resolve("weighted_mean", placement)
    leaves, treedef = _leaves(values, "weighted_mean values")
    _check_leading(leaves, where, "weighted_mean values")
    weight_leaves, weight_tree = _leaves(weights, "weighted_mean weights")
    if len(weight_leaves) == 1 and weight_tree.num_nodes == 1:
        weight_leaves = weight_leaves * len(leaves)
    elif weight_tree != treedef:
        raise FederatedError(f"weighted_mean: weights must be one array or a pytree shaped like the values; "
                             f"values have structure {treedef}, weights {weight_tree}")
    _check_leading(weight_leaves, where, "weighted_mean weights")
    # leaves that share a weights array (and a dtype) are averaged together: one weight total for all
    groups: dict[tuple, list[int]] = {}
    for i, (v, w) in enumerate(zip(leaves, weight_leaves)):
        prims.check_weights(v.shape, w.shape, 0)
        groups.setdefault((id(w), prims.mean_dtype(v.dtype)), []).append(i)
    out = [None] * len(leaves)
    for (_, dtype), members in groups.items():
        w = weight_leaves[members[0]].astype(dtype)
        values = [leaves[i].astype(dtype) for i in members]
        for i, result in zip(members, prims.weighted_mean_p.bind(*values, w, dim=0, **where.params())):
            out[i] = result
    return jax.tree_util.tree_unflatten(treedef, out)


def map(fn: Callable, args, *, placement: str | None = None):  # noqa: A001  (the federated map)
    """Run `fn` once per member of a placement on that member's slice of `args` (a tuple is unpacked).

    Every leaf of `args` must be placed (leading dimension n); server values `fn` closes over are read
    by every member. The result is placed. In shardkit's IR the client computation is one region.
    """
    where = resolve("map", placement)
    leaves, in_tree = _leaves(args, "map")
    _check_leading(leaves, where, "map")
    if not leaves:
        raise FederatedError("map: args has no arrays; pass the placed values the computation works on")
    out_tree = []

    def client(*slices):
        rebuilt = jax.tree_util.tree_unflatten(in_tree, list(slices))
        with inside(where):
            result = fn(*rebuilt) if isinstance(rebuilt, tuple) else fn(rebuilt)
        flat, tree = jax.tree_util.tree_flatten(result)
        out_tree.append(tree)
        return [jnp.asarray(x) for x in flat]

    leaves = [_place(leaf, where) for leaf in leaves]
    outs = prims.bind_map(client, leaves, [0] * len(leaves), 0, where.params())
    return jax.tree_util.tree_unflatten(out_tree[-1], [_place(o, where) for o in outs])
