"""Local-shape rules for the SPMD partitioner: what each op needs to run on per-device blocks.

An op with a factor rule runs on local blocks once its operands are laid out as the chosen factor
axes say; what changes is (1) params that spell out global sizes (`reshape.new_sizes`,
`broadcast_in_dim.shape`, `slice.limit_indices`, ...), localised here, (2) which factors may be
sharded at all (`forced_unsharded`), (3) what a sharded reduction factor leaves behind (`REDUCE_KIND`:
partial sums, or partial max/min), and (4) which operands may carry pending sums straight through the
op (`linear_operands`: the op is linear in them, so the reduction can wait until later).
"""
from __future__ import annotations

import numpy as np

from shardkit.ir import Op, Params, TensorType
from shardkit.ir.factors import FactorRule

REDUCE_KIND: dict[str, str] = {
    "dot_general": "sum",
    "conv_general_dilated": "sum",
    "reduce_sum": "sum",
    "reduce_max": "max",
    "reduce_min": "min",
}
"""Ops whose sharded reduction factors leave a pending reduction of this kind on their results. Any
other op's reduction factors stay unsharded (e.g. scatter: sharding its updates is not a partial sum
of its result, because every device would add the operand again)."""

SCATTER_OPS = frozenset({"scatter", "scatter-add", "scatter_add", "scatter-mul", "scatter_mul", "scatter-min",
                         "scatter_min", "scatter-max", "scatter_max", "scatter_sub", "scatter-sub"})
"""Ops with scatter dimension numbers: their indexed operand dims stay whole on local blocks."""

HALO_OPS = frozenset({"conv_general_dilated"})
"""Ops whose halo factors may be sharded: neighbours exchange borders (see `conv_halo`)."""

_UNARY_LINEAR = frozenset({
    "neg", "copy", "copy_p", "reduce_sum", "transpose", "reshape", "squeeze", "broadcast_in_dim",
    "slice", "rev", "real", "imag", "conj", "dynamic_slice", "cumsum", "reshard",
})
_ANY_ONE_LINEAR = {"mul": None, "div": (0,), "dot_general": None, "conv_general_dilated": None}
_ALL_LINEAR = frozenset({"add", "sub", "add_any", "concatenate"})


def forced_unsharded(op: Op, rule: FactorRule) -> set[str]:
    """Factors that must not be sharded when `op` runs on local blocks."""
    out = set(rule.replication)
    if op.name not in HALO_OPS:
        out |= set(rule.halo)
    if op.name not in REDUCE_KIND:
        out |= set(rule.reduction)
    if op.name == "iota":  # the values along the iota dimension depend on the global position
        dim = int(op.params["dimension"])
        out.update(rule.results[0][dim])
    if op.name in SCATTER_OPS:  # local scatters would apply global indices to a local block
        dn = op.params["dimension_numbers"]
        for dim in set(dn.inserted_window_dims) | set(dn.scatter_dims_to_operand_dims):
            out.update(rule.operands[0][dim])
    return out


def linear_operands(op: Op, partial: dict[int, tuple]) -> bool:
    """Whether `op` may take the operands in `partial` (index -> pending-sum axes) as they are and
    leave the same pending sums on its results."""
    if not partial:
        return False
    name = op.name
    if name == "convert_element_type":
        src, dst = op.operands[0].type, op.results[0].type
        # summing partials in a narrower type would lose precision the unpartitioned program keeps
        return _is_float(src.dtype) and _is_float(dst.dtype) and \
            TensorType((), dst.dtype).nbytes >= TensorType((), src.dtype).nbytes
    if name in _UNARY_LINEAR:
        return set(partial) == {0}
    if name in _ANY_ONE_LINEAR:
        allowed = _ANY_ONE_LINEAR[name]
        return len(partial) == 1 and (allowed is None or set(partial) <= set(allowed))
    if name in _ALL_LINEAR:
        axes = set(partial.values())
        return len(partial) == len(op.operands) and len(axes) == 1
    return False


def _is_float(dtype) -> bool:
    try:
        return np.issubdtype(np.dtype(dtype), np.inexact)
    except TypeError:
        return False


def localize_params(op: Op, local_in: list[tuple[int, ...]], local_out: list[tuple[int, ...]]) -> Params:
    """`op`'s params for operands and results of the given local shapes."""
    params = dict(op.params.items())
    for key in ("sharding", "out_sharding"):
        if key in params:
            params[key] = None
    name = op.name
    global_in = [v.type.shape for v in op.operands]
    if name == "reshape":
        params["new_sizes"] = tuple(local_out[0])
        params["dimensions"] = None
    elif name in ("broadcast_in_dim", "iota"):
        params["shape"] = tuple(local_out[0])
    elif name == "slice":
        start, limit = list(params["start_indices"]), list(params["limit_indices"])
        for d, (g, n) in enumerate(zip(global_in[0], local_in[0])):
            if g != n and start[d] == 0 and limit[d] == g:
                limit[d] = n
        params["limit_indices"] = tuple(limit)
    elif name in ("dynamic_slice", "gather"):
        sizes = list(params["slice_sizes"])
        for d, (g, n) in enumerate(zip(global_in[0], local_in[0])):
            if g != n and sizes[d] == g:
                sizes[d] = n
        params["slice_sizes"] = tuple(sizes)
    return Params(params)


def conv_halo(op: Op, rule: FactorRule, assignment: dict, local_lhs: tuple[int, ...], mesh) -> list | None:
    """For each sharded spatial (halo) factor of a convolution: (lhs dim, axes, low, high) rows to
    fetch from the neighbours before and after; None when a halo is wider than the local block."""
    dn = op.params["dimension_numbers"]
    out = []
    for i, l in enumerate(dn.lhs_spec[2:]):
        factors = rule.operands[0][l]
        if len(factors) != 1 or factors[0] not in rule.halo or not assignment.get(factors[0]):
            continue
        low, high = (int(x) for x in op.params["padding"][i])
        if low < 0 or high < 0 or low > local_lhs[l] or high > local_lhs[l]:
            return None
        out.append((l, tuple(assignment[factors[0]]), low, high))
    return out
