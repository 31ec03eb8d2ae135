"""The federated JAX primitives and their rules: abstract evaluation, lowering, JVP, transpose, vmap.

Every primitive carries its placement in its params: `placement` (the name), `size` (how many
members it has), `axis` (the mesh axis its dimension is sharded over, or None) and `mesh` (the
concrete mesh given to `program`, or None for the mesh of the enclosing `jax.set_mesh`). The
placed dimension of a value is `dim` (0 unless vmap moved it).

    federated_broadcast  x[S]          -> [size, S]   (server to placement)
    federated_sum        x[size, S]    -> [S]         (placement to server)
    federated_mean       x[size, S]    -> [S]         integers: JAX's default float dtype
    federated_weighted_mean  v1[size, S1], ..., w[size, ...] -> [S1], ...   (one weight total)
    federated_map        per-client computation (a jaxpr) over placed operands

Federated AD: broadcast and sum transpose into each other, mean into broadcast of ct/size, map into
a map of the transposed client computation whose server (unplaced) operands are summed back over
the placement. JVPs and transposes are written with these primitives, so after `jax.grad` the
jaxpr still shows the communication instead of its array implementation.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from shardkit.ir import _jax

from .errors import FederatedError

BROADCAST = "federated_broadcast"
SUM = "federated_sum"
MEAN = "federated_mean"
WEIGHTED_MEAN = "federated_weighted_mean"
MAP = "federated_map"
NAMES = (BROADCAST, SUM, MEAN, WEIGHTED_MEAN, MAP)


# -- dtypes ---------------------------------------------------------------------------------------


def default_float():
    """JAX's default floating dtype: float32, or float64 under `jax_enable_x64`."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def default_int():
    return jax.dtypes.canonicalize_dtype(jnp.int64)


def mean_dtype(dtype):
    """The dtype `mean` returns: inexact dtypes are kept, integers and booleans give the default float."""
    return dtype if jnp.issubdtype(dtype, jnp.inexact) else default_float()


def sum_dtype(dtype):
    """The dtype `sum` returns: booleans are counted in the default int dtype, others are kept."""
    return default_int() if dtype == jnp.bool_ else dtype


# -- shapes and shardings ---------------------------------------------------------------------------


def insert_dim(shape: Sequence[int], dim: int, size: int) -> tuple[int, ...]:
    shape = tuple(shape)
    return shape[:dim] + (size,) + shape[dim:]


def drop_dim(shape: Sequence[int], dim: int | None) -> tuple[int, ...]:
    shape = tuple(shape)
    return shape if dim is None else shape[:dim] + shape[dim + 1:]


def _spec_entries(aval) -> list:
    spec = list(getattr(getattr(aval, "sharding", None), "spec", ()) or ())
    return spec + [None] * (len(aval.shape) - len(spec))


def _mentions(entry, axis) -> bool:
    return entry == axis or (isinstance(entry, tuple) and axis in entry)


def _typed(aval, shape, entries, dtype=None, weak_type=None):
    """`aval` with a new shape, spec entries (one per dim) and dtype; JAX drops non-Explicit axes."""
    sharding = getattr(aval, "sharding", None)
    kwargs = {}
    if sharding is not None:
        names = tuple(sharding.mesh.axis_names)
        entries = [e if e is None or all(a in names for a in (e if isinstance(e, tuple) else (e,))) else None
                   for e in entries]
        kwargs["sharding"] = sharding.update(spec=P(*entries))
    return aval.update(shape=tuple(shape), dtype=dtype if dtype is not None else aval.dtype,
                       weak_type=aval.weak_type if weak_type is None else weak_type, **kwargs)


def _placed_aval(aval, dim: int, size: int, axis: str | None):
    entries = _spec_entries(aval)
    if axis is not None and any(_mentions(e, axis) for e in entries):
        axis = None
    entries.insert(dim, axis)
    return _typed(aval, insert_dim(aval.shape, dim, size), entries)


def _unplaced_aval(aval, dim: int, dtype=None, weak_type=None):
    entries = _spec_entries(aval)
    del entries[dim]
    return _typed(aval, drop_dim(aval.shape, dim), entries, dtype, weak_type)


def mesh_with_axis(mesh, axis: str | None):
    """The mesh a placement dimension is sharded on (the given one or the enclosing set_mesh), or None."""
    if axis is None:
        return None
    target = mesh if mesh is not None else _jax.abstract_mesh()
    if target is None or axis not in target.axis_names:
        return None
    return target


def constrain(x, dim: int, axis: str | None, mesh):
    """Shard dimension `dim` of `x` over mesh `axis` and leave its other dimensions to the compiler."""
    target = mesh_with_axis(mesh, axis)
    if target is None:
        return x
    kind = dict(zip(target.axis_names, target.axis_types))[axis]
    if kind == AxisType.Auto:
        entries = [P.UNCONSTRAINED] * x.ndim
        entries[dim] = axis
        spec = P(*entries)
        return jax.lax.with_sharding_constraint(x, NamedSharding(target, spec) if mesh is not None else spec)
    if kind == AxisType.Explicit:
        entries = [None if _mentions(e, axis) else e for e in _spec_entries(jax.typeof(x))]
        entries[dim] = axis
        spec = P(*entries)
        return jax.sharding.reshard(x, NamedSharding(target, spec) if mesh is not None else spec)
    return x  # a Manual axis (inside shard_map): the value is already local


# -- array implementations (the lowering of each primitive) ----------------------------------------


def broadcast_array(x, *, size: int, dim: int, axis=None, mesh=None, **_):
    x = jnp.asarray(x)
    return jnp.broadcast_to(jnp.expand_dims(x, dim), insert_dim(x.shape, dim, size))


def sum_array(x, *, dim: int, **_):
    return jnp.sum(x, axis=dim, dtype=sum_dtype(x.dtype))


def mean_array(x, *, dim: int, size: int, **_):
    dtype = mean_dtype(x.dtype)
    return (jnp.sum(x.astype(dtype), axis=dim) / jnp.asarray(size, dtype)).astype(dtype)


def align(w, rank: int):
    """`w` with trailing unit dimensions so it broadcasts against a value of `rank` dimensions."""
    return jnp.reshape(w, tuple(w.shape) + (1,) * (rank - w.ndim))


def weighted_mean_array(*args, dim: int, **_):
    """Weighted means of every value operand with the last operand as weights; the weights are
    totalled once, so aggregating a whole model moves its size plus one weight total."""
    *values, w = args
    weight = jnp.sum(w, axis=dim)
    outs = []
    for v in values:
        total = jnp.sum(v * align(w, v.ndim), axis=dim)
        outs.append(total / align(weight, total.ndim))
    return outs


def map_array(*args, jaxpr, in_dims, out_dims, size: int, axis=None, mesh=None, **_):
    """vmap of the client computation over the placed dimension; sharding constraints inside it gain
    the placement axis at the placed dimension."""
    spmd = axis if mesh_with_axis(mesh, axis) is not None else None
    fn = functools.partial(_jax.eval_jaxpr, jaxpr)
    outs = jax.vmap(lambda *xs: fn(xs), in_axes=tuple(in_dims), out_axes=list(out_dims), axis_size=size,
                    spmd_axis_name=spmd)(*args)
    return list(outs)


# -- checks -----------------------------------------------------------------------------------------


def _check_placed(aval, dim: int, size: int, placement: str, what: str) -> None:
    if len(aval.shape) <= dim or aval.shape[dim] != size:
        raise FederatedError(
            f"{what}: a value placed at {placement!r} has {size} members along dimension {dim}, but this "
            f"one has shape {tuple(aval.shape)}; give it a leading dimension of {size} (e.g. with "
            f"broadcast) or use the placement it belongs to")


# -- abstract evaluation -----------------------------------------------------------------------------


def _broadcast_abstract(x, *, size, dim, axis, **_):
    return _placed_aval(x, dim, size, axis)


def _sum_abstract(x, *, placement, size, dim, **_):
    _check_placed(x, dim, size, placement, "sum")
    dtype = sum_dtype(x.dtype)
    return _unplaced_aval(x, dim, dtype, x.weak_type and dtype == x.dtype)


def _mean_abstract(x, *, placement, size, dim, **_):
    _check_placed(x, dim, size, placement, "mean")
    dtype = mean_dtype(x.dtype)
    return _unplaced_aval(x, dim, dtype, x.weak_type and dtype == x.dtype)


def _weighted_mean_abstract(*avals, placement, size, dim, **_):
    *values, w = avals
    _check_placed(w, dim, size, placement, "weighted_mean weights")
    for v in values:
        _check_placed(v, dim, size, placement, "weighted_mean values")
        check_weights(v.shape, w.shape, dim)
        if v.dtype != w.dtype or not jnp.issubdtype(v.dtype, jnp.inexact):
            raise FederatedError(f"weighted_mean: values ({v.dtype}) and weights ({w.dtype}) must share one "
                                 f"floating dtype; shardkit.federated.weighted_mean converts them for you")
    return [_unplaced_aval(v, dim) for v in values]


def check_weights(value_shape, weight_shape, dim: int) -> None:
    value_shape, weight_shape = tuple(value_shape), tuple(weight_shape)
    if len(weight_shape) <= dim or value_shape[:len(weight_shape)] != weight_shape:
        raise FederatedError(
            f"weighted_mean: weights of shape {weight_shape} do not fit values of shape {value_shape}; "
            f"give one weight per member (shape {value_shape[:dim + 1]}) or weights whose shape is a "
            f"leading part of the values' shape")


def _map_abstract(*avals, jaxpr, in_dims, out_dims, placement, size, axis, **_):
    inner = _jax.jaxpr_in_avals(jaxpr)
    if len(inner) != len(avals) or len(in_dims) != len(avals):
        raise FederatedError(f"map: the client computation takes {len(inner)} arguments but was given "
                             f"{len(avals)} operands ({len(in_dims)} placement dims)")
    for i, (aval, d, want) in enumerate(zip(avals, in_dims, inner)):
        if d is not None:
            _check_placed(aval, d, size, placement, f"map operand {i}")
        if drop_dim(aval.shape, d) != tuple(want.shape):
            raise FederatedError(f"map operand {i} has shape {tuple(aval.shape)}; the client computation "
                                 f"expects {tuple(want.shape)} per member of {placement!r}")
    return [_placed_aval(out, d, size, axis) for out, d in zip(_jax.jaxpr_out_avals(jaxpr), out_dims)]


# -- the primitives -----------------------------------------------------------------------------------


def _eager(name):
    """Eager evaluation compiles the primitive's lowering, as JAX does for its own primitives."""
    def impl(*args, **params):
        return _jax.apply_primitive(PRIMITIVES[name], *args, **params)
    return impl


def _zero(aval):
    return _jax.zero_like_aval(aval)


def _zero_of(value):
    return _jax.zero_like_aval(jax.typeof(value))


def _bind(name, *args, **params):
    return PRIMITIVES[name].bind(*args, **params)


def _placement_params(params: dict) -> dict:
    return {k: params[k] for k in ("placement", "size", "axis", "mesh")}


# broadcast ---------------------------------------------------------------------------------------------

def _broadcast_jvp(primals, tangents, **params):
    (x,), (t,) = primals, tangents
    out = _bind(BROADCAST, x, **params)
    return out, (_zero_of(out) if _jax.is_zero(t) else _bind(BROADCAST, t, **params))


def _broadcast_transpose(ct, x, **params):
    if _jax.is_zero(ct):
        return [_zero(_jax.undefined_aval(x))]
    return [_bind(SUM, ct, **params)]


def _moved_dim(d, dim):
    """Where the placement dim sits in a batched operand, and the batch dim of a dim-free result."""
    placed = dim + 1 if d <= dim else dim
    return placed, (d if d < placed else d - 1)


def _broadcast_batch(args, dims, *, dim, **params):
    (x,), (d,) = args, dims
    if d is None:
        return _bind(BROADCAST, x, dim=dim, **params), None
    if d <= dim:
        return _bind(BROADCAST, x, dim=dim + 1, **params), d
    return _bind(BROADCAST, x, dim=dim, **params), d + 1


# sum and mean ------------------------------------------------------------------------------------------

def _linear_jvp(name):
    def jvp(primals, tangents, **params):
        (x,), (t,) = primals, tangents
        out = _bind(name, x, **params)
        if _jax.is_zero(t) or not jnp.issubdtype(jax.typeof(out).dtype, jnp.inexact) \
                or not jnp.issubdtype(jax.typeof(t).dtype, jnp.inexact):
            return out, _zero_of(out)
        return out, _bind(name, t, **params)
    return jvp


def _sum_transpose(ct, x, **params):
    if _jax.is_zero(ct):
        return [_zero(_jax.undefined_aval(x))]
    return [_bind(BROADCAST, ct, **params)]


def _mean_transpose(ct, x, *, size, **params):
    if _jax.is_zero(ct):
        return [_zero(_jax.undefined_aval(x))]
    return [_bind(BROADCAST, ct / jnp.asarray(size, ct.dtype), size=size, **params)]


def _reduce_batch(name):
    def batch(args, dims, *, dim, **params):
        (x,), (d,) = args, dims
        if d is None:
            return _bind(name, x, dim=dim, **params), None
        placed, out_dim = _moved_dim(d, dim)
        return _bind(name, x, dim=placed, **params), out_dim
    return batch


# weighted mean ------------------------------------------------------------------------------------------

def _weighted_mean_jvp(primals, tangents, *, dim, **params):
    *values, w = primals
    *dvalues, dw = tangents
    outs = _bind(WEIGHTED_MEAN, *values, w, dim=dim, **params)
    terms: list[list] = [[] for _ in outs]
    live = [i for i, t in enumerate(dvalues) if not _jax.is_zero(t)]
    if live:
        for i, t in zip(live, _bind(WEIGHTED_MEAN, *[dvalues[i] for i in live], w, dim=dim, **params)):
            terms[i].append(t)
    if not _jax.is_zero(dw):
        # d/dw_i (sum_j w_j v_j / W) = (v_i - mean) / W: each member scales its own deviation by dw_i
        k = len(values)

        def client(dw_i, *rest):
            return [align(dw_i, v.ndim) * (v - m) for v, m in zip(rest[:k], rest[k:])]
        deviations = bind_map(client, [dw, *values, *outs], [dim] * (k + 1) + [None] * k, dim,
                              _placement_params(params))
        weight = _bind(SUM, w, dim=dim, **params)
        for i, deviation in enumerate(deviations):
            total = _bind(SUM, deviation, dim=dim, **params)
            terms[i].append(total / align(weight, total.ndim))
    tangents_out = []
    for out, parts in zip(outs, terms):
        tangents_out.append(_zero_of(out) if not parts else parts[0] if len(parts) == 1 else parts[0] + parts[1])
    return outs, tangents_out


def _weighted_mean_transpose(cts, *args, dim, **params):
    *values, w = args
    if _jax.is_undefined(w):
        raise FederatedError("weighted_mean is linear in its values only, not in its weights; it cannot be "
                             "transposed with respect to the weights")
    result = [_zero(_jax.undefined_aval(v)) if _jax.is_undefined(v) else None for v in values] + [None]
    live = [i for i, (v, ct) in enumerate(zip(values, cts)) if _jax.is_undefined(v) and not _jax.is_zero(ct)]
    if not live:
        return result
    weight = _bind(SUM, w, dim=dim, **params)
    scaled = [cts[i] / align(weight, cts[i].ndim) for i in live]

    def client(w_i, *s):
        return [align(w_i, x.ndim) * x for x in s]
    for i, ct in zip(live, bind_map(client, [w, *scaled], [dim] + [None] * len(scaled), dim,
                                    _placement_params(params))):
        result[i] = ct
    return result


def _weighted_mean_batch(args, dims, *, dim, size, **params):
    batch = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    moved = [jnp.moveaxis(a, d, 0) if d is not None else jnp.broadcast_to(a, (batch,) + a.shape)
             for a, d in zip(args, dims)]
    outs = _bind(WEIGHTED_MEAN, *moved, dim=dim + 1, size=size, **params)
    return outs, [0] * len(outs)


# map ----------------------------------------------------------------------------------------------------

def bind_map(fn, operands: Sequence[Any], in_dims: Sequence[int | None], out_dims, params: dict) -> list:
    """Trace `fn` (per-member slices in, list out) and bind federated_map over `operands`.

    `in_dims[i]` is operand i's placed dimension, or None for a server value every member reads;
    `out_dims` gives each output's placed dimension (an int applies to all outputs). Values `fn`
    closes over become server operands.
    """
    types = [(drop_dim(np.shape(x), d), jax.typeof(x).dtype) for x, d in zip(operands, in_dims)]
    closed, hoisted = _jax.trace_hoisted(lambda *xs: list(fn(*xs)), types)
    num_out = len(_jax.jaxpr_out_avals(closed))
    if isinstance(out_dims, int):
        out_dims = (out_dims,) * num_out
    return _bind(MAP, *hoisted, *operands, jaxpr=closed, in_dims=(None,) * len(hoisted) + tuple(in_dims),
                 out_dims=tuple(out_dims), **params)


def _is_zero_tangent(t) -> bool:
    return _jax.is_zero(t) or jax.typeof(t).dtype == jax.dtypes.float0


def _map_jvp(primals, tangents, *, jaxpr, in_dims, out_dims, **params):
    nonzero = [not _is_zero_tangent(t) for t in tangents]
    if not any(nonzero):
        outs = _bind(MAP, *primals, jaxpr=jaxpr, in_dims=in_dims, out_dims=out_dims, **params)
        return outs, [_zero_of(o) for o in outs]
    primal_jaxpr, num_res, nonzero_out, forwarded, tangent_jaxpr = _jax.linearize_jaxpr(jaxpr, nonzero)
    count = len(out_dims)
    both = _bind(MAP, *primals, jaxpr=primal_jaxpr, in_dims=in_dims,
                 out_dims=tuple(out_dims) + (0,) * num_res, **params)
    outs, fresh = both[:count], iter(both[count:])
    residuals, residual_dims = [], []
    for f in forwarded:
        residuals.append(next(fresh) if f is None else primals[f])
        residual_dims.append(0 if f is None else in_dims[f])
    live = [t for t, nz in zip(tangents, nonzero) if nz]
    live_dims = [d for d, nz in zip(in_dims, nonzero) if nz]
    produced = iter(())
    if any(nonzero_out):
        produced = iter(_bind(MAP, *residuals, *live, jaxpr=tangent_jaxpr,
                              in_dims=tuple(residual_dims + live_dims),
                              out_dims=tuple(d for d, nz in zip(out_dims, nonzero_out) if nz), **params))
    tangents_out = [next(produced) if nz else _zero_of(o) for o, nz in zip(outs, nonzero_out)]
    return outs, tangents_out


def _map_transpose(cts, *args, jaxpr, in_dims, out_dims, **params):
    linear = [_jax.is_undefined(a) for a in args]
    in_avals = _jax.jaxpr_in_avals(jaxpr)
    out_avals = _jax.jaxpr_out_avals(jaxpr)
    live = [not _jax.is_zero(c) for c in cts]
    zeros = [_zero(_jax.undefined_aval(a)) if lin else None for a, lin in zip(args, linear)]
    if not any(live) or not any(linear):
        return zeros
    known = [a for a, lin in zip(args, linear) if not lin]
    known_dims = [d for d, lin in zip(in_dims, linear) if not lin]
    cts_live = [c for c, nz in zip(cts, live) if nz]
    cts_dims = [d for d, nz in zip(out_dims, live) if nz]
    lin_structs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a, lin in zip(in_avals, linear) if lin]

    def client(*xs):
        fixed, given = list(xs[:len(known)]), iter(xs[len(known):])
        full = [next(given) if nz else _zeros(a) for a, nz in zip(out_avals, live)]

        def forward(*lin_values):
            values, held = iter(lin_values), iter(fixed)
            return _jax.eval_jaxpr(jaxpr, [next(values) if lin else next(held) for lin in linear])

        return list(jax.linear_transpose(forward, *lin_structs)(full))

    lin_dims = [d for d, lin in zip(in_dims, linear) if lin]
    outs = iter(bind_map(client, known + cts_live, known_dims + cts_dims,
                         [0 if d is None else d for d in lin_dims], _placement_params(params)))
    result = []
    for arg, lin, d in zip(args, linear, in_dims):
        if not lin:
            result.append(None)
            continue
        ct = next(outs)
        # a server value every member read: its cotangent is the sum of the members' cotangents
        result.append(_bind(SUM, ct, dim=0, **_placement_params(params)) if d is None else ct)
    return result


def _zeros(aval):
    dtype = _jax.tangent_aval(aval).dtype
    if dtype == jax.dtypes.float0:
        return np.zeros(aval.shape, dtype)
    return jnp.zeros(aval.shape, dtype)


def _map_batch(args, dims, *, jaxpr, in_dims, out_dims, **params):
    batch = next(np.shape(a)[d] for a, d in zip(args, dims) if d is not None)
    operands, new_in_dims, region_axes = [], [], []
    for a, d, p in zip(args, dims, in_dims):
        if d is None:
            operands.append(a)
            new_in_dims.append(p)
            region_axes.append(None)
            continue
        operands.append(jnp.moveaxis(a, d, 0))
        new_in_dims.append(None if p is None else p + 1)
        region_axes.append(0)
    inner = functools.partial(_jax.eval_jaxpr, jaxpr)
    batched = jax.vmap(lambda *xs: inner(xs), in_axes=tuple(region_axes), out_axes=0, axis_size=batch)
    types = [(drop_dim(np.shape(x), d), jax.typeof(x).dtype) for x, d in zip(operands, new_in_dims)]
    closed, hoisted = _jax.trace_hoisted(lambda *xs: list(batched(*xs)), types)
    outs = _bind(MAP, *hoisted, *operands, jaxpr=closed,
                 in_dims=(None,) * len(hoisted) + tuple(new_in_dims),
                 out_dims=tuple(d + 1 for d in out_dims), **params)
    return outs, [0] * len(outs)


PRIMITIVES: dict[str, Any] = {}


def _define() -> None:
    PRIMITIVES[BROADCAST] = _jax.define_primitive(
        BROADCAST, impl=_eager(BROADCAST), abstract_eval=_broadcast_abstract, lowering=broadcast_array,
        jvp=_broadcast_jvp, transpose=_broadcast_transpose, batch=_broadcast_batch)
    PRIMITIVES[SUM] = _jax.define_primitive(
        SUM, impl=_eager(SUM), abstract_eval=_sum_abstract, lowering=sum_array,
        jvp=_linear_jvp(SUM), transpose=_sum_transpose, batch=_reduce_batch(SUM))
    PRIMITIVES[MEAN] = _jax.define_primitive(
        MEAN, impl=_eager(MEAN), abstract_eval=_mean_abstract, lowering=mean_array,
        jvp=_linear_jvp(MEAN), transpose=_mean_transpose, batch=_reduce_batch(MEAN))
    PRIMITIVES[WEIGHTED_MEAN] = _jax.define_primitive(
        WEIGHTED_MEAN, impl=_eager(WEIGHTED_MEAN), abstract_eval=_weighted_mean_abstract,
        lowering=weighted_mean_array, multiple_results=True, jvp=_weighted_mean_jvp, transpose=_weighted_mean_transpose,
        batch=_weighted_mean_batch)
    PRIMITIVES[MAP] = _jax.define_primitive(
        MAP, impl=_eager(MAP), abstract_eval=_map_abstract, lowering=map_array, multiple_results=True,
        jvp=_map_jvp, transpose=_map_transpose, batch=_map_batch)


_define()

broadcast_p = PRIMITIVES[BROADCAST]
sum_p = PRIMITIVES[SUM]
mean_p = PRIMITIVES[MEAN]
weighted_mean_p = PRIMITIVES[WEIGHTED_MEAN]
map_p = PRIMITIVES[MAP]
