"""Sharding rules for the jax.lax primitives, family by family, each next to the ops it covers.

These primitives keep their generic definition (abstract-eval type rule, lowering by binding the
primitive); this module attaches the factor rule that sharding propagation and the communication
model read. A primitive not listed here has no rule: propagation keeps its operands replicated.
"""
from __future__ import annotations

from ..factors import FactorRule, RuleBuilder
from ..registry import update_op


def _builder(op) -> RuleBuilder:
    return RuleBuilder(len(op.operands), [v.type.rank for v in op.operands], [v.type.rank for v in op.results])


def _attach(names, rule) -> None:
    from .. import _jax
    for name in names:
        if _jax.primitive(name) is not None:
            update_op(name, sharding_rule=rule)


# -- element-wise: every non-scalar operand and result share one factor per dimension ------------

def elementwise_rule(op) -> FactorRule | None:
    shape = op.results[0].type.shape
    if any(r.type.shape != shape for r in op.results):
        return None
    b = _builder(op)
    factors = [b.factor(n) for n in shape]
    for i, v in enumerate(op.operands):
        if v.type.rank == 0 and shape:
            continue
        if v.type.rank != len(shape) or any(n != m and n != 1 for n, m in zip(v.type.shape, shape)):
            return None
        for d, f in enumerate(factors):
            if v.type.shape[d] == shape[d]:  # a size-1 dim broadcast against a larger one stays unmapped
                b.operand(i, d, f)
    for i in range(len(op.results)):
        for d, f in enumerate(factors):
            b.result(i, d, f)
    return b.build()


ELEMENTWISE = (
    "abs", "acos", "acosh", "add", "add_any", "and", "asin", "asinh", "atan", "atan2", "atanh",
    "bessel_i0e", "bessel_i1e", "cbrt", "ceil", "clamp", "clz", "complex", "conj", "convert_element_type",
    "copy", "copy_p", "cos", "cosh", "digamma", "div", "eq", "erf", "erf_inv", "erfc", "exp", "exp2",
    "expm1", "floor", "ge", "gt", "igamma", "igammac", "imag", "integer_pow", "is_finite", "le", "lgamma",
    "log", "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg", "nextafter", "not", "or",
    "polygamma", "population_count", "pow", "real", "reduce_precision", "rem", "round", "rsqrt",
    "select_n", "shift_left", "shift_right_arithmetic", "shift_right_logical", "sign", "sin", "sinh",
    "sqrt", "square", "stop_gradient", "sub", "tan", "tanh", "xor", "zeta", "reshard",
    "regularized_incomplete_beta", "random_gamma_grad", "bitcast_convert_type",
)
_attach(ELEMENTWISE, elementwise_rule)


def optimization_barrier_rule(op) -> FactorRule:
    b = _builder(op)
    for i, v in enumerate(op.operands):
        for d, n in enumerate(v.type.shape):
            f = b.factor(n)
            b.operand(i, d, f)
            b.result(i, d, f)
    return b.build()


_attach(("optimization_barrier",), optimization_barrier_rule)


# -- dot_general: batch and free dims pass through, contracting dims are reduction factors -------

def dot_general_rule(op) -> FactorRule:
    (lc, rc), (lb, rb) = op.params["dimension_numbers"]
    lhs, rhs = op.operands
    b = _builder(op)
    out = 0
    for l, r in zip(lb, rb):
        f = b.factor(lhs.type.shape[l])
        b.operand(0, l, f)
        b.operand(1, r, f)
        b.result(0, out, f)
        out += 1
    for d in range(lhs.type.rank):
        if d not in lb and d not in lc:
            f = b.factor(lhs.type.shape[d])
            b.operand(0, d, f)
            b.result(0, out, f)
            out += 1
    for d in range(rhs.type.rank):
        if d not in rb and d not in rc:
            f = b.factor(rhs.type.shape[d])
            b.operand(1, d, f)
            b.result(0, out, f)
            out += 1
    for l, r in zip(lc, rc):
        f = b.factor(lhs.type.shape[l])
        b.operand(0, l, f)
        b.operand(1, r, f)
    return b.build()


_attach(("dot_general",), dot_general_rule)


# -- reductions: reduced dims are reduction factors (argmin/argmax need them replicated) ---------

def _reduce_rule(op, replicate: bool) -> FactorRule:
    axes = set(op.params["axes"])
    b = _builder(op)
    out = 0
    for d, n in enumerate(op.operands[0].type.shape):
        f = b.factor(n, replication=replicate and d in axes)
        for i in range(len(op.operands)):
            b.operand(i, d, f)
        if d not in axes:
            for r in range(len(op.results)):
                b.result(r, out, f)
            out += 1
    return b.build()


_attach(("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
         "reduce_xor"), lambda op: _reduce_rule(op, replicate=False))
_attach(("argmax", "argmin"), lambda op: _reduce_rule(op, replicate=True))


def _along_axis_rule(op, axes) -> FactorRule:
    """Same-shape ops that run along some dims (cumsum, sort, top_k, fft): those dims stay whole."""
    b = _builder(op)
    shape = op.operands[0].type.shape
    for d, n in enumerate(shape):
        if d in axes:
            for i, v in enumerate(op.operands):
                if v.type.rank == len(shape):
                    b.operand(i, d, b.factor(v.type.shape[d], replication=True))
            for r, v in enumerate(op.results):
                if v.type.rank == len(shape):
                    b.result(r, d, b.factor(v.type.shape[d], replication=True))
            continue
        f = b.factor(n)
        for i, v in enumerate(op.operands):
            if v.type.rank == len(shape):
                b.operand(i, d, f)
        for r, v in enumerate(op.results):
            if v.type.rank == len(shape):
                b.result(r, d, f)
    return b.build()


_attach(("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"),
        lambda op: _along_axis_rule(op, {op.params["axis"]}))
_attach(("sort",), lambda op: _along_axis_rule(op, {op.params["dimension"]}))
_attach(("top_k",), lambda op: _along_axis_rule(
    op, {op.params.get("axis", op.operands[0].type.rank - 1) % max(op.operands[0].type.rank, 1)}))
_attach(("fft",), lambda op: _along_axis_rule(
    op, set(range(op.operands[0].type.rank - len(op.params["fft_lengths"]), op.operands[0].type.rank))))


def _matrix_rule(op) -> FactorRule:
    """Batched linear algebra: leading batch dims pass through, the matrix dims stay whole."""
    batch = op.operands[0].type.shape[:max(op.operands[0].type.rank - 2, 0)]
    b = _builder(op)
    factors = [b.factor(n) for n in batch]
    for group, values, put in ((0, op.operands, b.operand), (1, op.results, b.result)):
        for i, v in enumerate(values):
            for d, n in enumerate(v.type.shape):
                if d < len(factors) and v.type.shape[:len(factors)] == tuple(batch):
                    put(i, d, factors[d])
                else:
                    put(i, d, b.factor(n, replication=True))
    return b.build()


_attach(("cholesky", "eigh", "qr", "householder_product", "lu", "svd", "triangular_solve", "eig",
         "schur", "tridiagonal", "tridiagonal_solve", "hessenberg", "lu_pivots_to_permutation"), _matrix_rule)


# -- shape ops -----------------------------------------------------------------------------------

def broadcast_in_dim_rule(op) -> FactorRule:
    operand, result = op.operands[0], op.results[0]
    b = _builder(op)
    mapped = dict(zip(op.params["broadcast_dimensions"], range(operand.type.rank)))
    for d, n in enumerate(result.type.shape):
        f = b.factor(n)
        b.result(0, d, f)
        src = mapped.get(d)
        if src is not None and operand.type.shape[src] == n:
            b.operand(0, src, f)
    return b.build()


_attach(("broadcast_in_dim",), broadcast_in_dim_rule)


def reshape_rule(op) -> FactorRule:
    """Split and merged dims become compound factors; groups that do not nest are kept whole."""
    src, dst = op.operands[0].type.shape, op.results[0].type.shape
    b = _builder(op)
    i = j = 0
    while i < len(src) or j < len(dst):
        if i < len(src) and src[i] == 1:
            i += 1
            continue
        if j < len(dst) and dst[j] == 1:
            j += 1
            continue
        gi, gj = [i], [j]
        pi, pj = src[i], dst[j]
        while pi != pj:
            if pi < pj:
                i += 1
                gi.append(i)
                pi *= src[i]
            else:
                j += 1
                gj.append(j)
                pj *= dst[j]
        i += 1
        j += 1
        gi = [d for d in gi if src[d] != 1]
        gj = [d for d in gj if dst[d] != 1]
        if len(gi) == 1:
            factors = [b.factor(dst[d]) for d in gj]
            b.operand(0, gi[0], *factors)
            for d, f in zip(gj, factors):
                b.result(0, d, f)
        elif len(gj) == 1:
            factors = [b.factor(src[d]) for d in gi]
            b.result(0, gj[0], *factors)
            for d, f in zip(gi, factors):
                b.operand(0, d, f)
        else:
            for d in gi:
                b.operand(0, d, b.factor(src[d], replication=True))
            for d in gj:
                b.result(0, d, b.factor(dst[d], replication=True))
    return b.build()


_attach(("reshape",), reshape_rule)


def transpose_rule(op) -> FactorRule:
    perm = op.params["permutation"]
    b = _builder(op)
    for out, src in enumerate(perm):
        f = b.factor(op.operands[0].type.shape[src])
        b.operand(0, src, f)
        b.result(0, out, f)
    return b.build()


_attach(("transpose",), transpose_rule)


def squeeze_rule(op) -> FactorRule:
    removed = {d % max(op.operands[0].type.rank, 1) for d in op.params["dimensions"]}
    b = _builder(op)
    out = 0
    for d, n in enumerate(op.operands[0].type.shape):
        if d in removed:
            continue
        f = b.factor(n)
        b.operand(0, d, f)
        b.result(0, out, f)
        out += 1
    return b.build()


_attach(("squeeze",), squeeze_rule)


def _dims_whole_rule(op, whole: set, tensors=None) -> FactorRule:
    """Operands/results of the result's shape share factors, except `whole` dims (kept replicated)."""
    b = _builder(op)
    result = op.results[0].type
    for d, n in enumerate(result.shape):
        if d in whole:
            for i, v in enumerate(op.operands):
                if v.type.rank == result.rank and (tensors is None or i in tensors):
                    b.operand(i, d, b.factor(v.type.shape[d], replication=True))
            b.result(0, d, b.factor(n, replication=True))
            continue
        f = b.factor(n)
        for i, v in enumerate(op.operands):
            if v.type.rank == result.rank and (tensors is None or i in tensors):
                b.operand(i, d, f)
        b.result(0, d, f)
    return b.build()


_attach(("concatenate",), lambda op: _dims_whole_rule(op, {op.params["dimension"]}))


def split_rule(op) -> FactorRule:
    """The pieces keep every dimension's factor but the split one, which stays whole."""
    axis = op.params["axis"]
    b = _builder(op)
    for d, n in enumerate(op.operands[0].type.shape):
        if d == axis:
            b.operand(0, d, b.factor(n, replication=True))
            for i, piece in enumerate(op.results):
                b.result(i, d, b.factor(piece.type.shape[d], replication=True))
            continue
        f = b.factor(n)
        b.operand(0, d, f)
        for i in range(len(op.results)):
            b.result(i, d, f)
    return b.build()


_attach(("split",), split_rule)
_attach(("pad",), lambda op: _dims_whole_rule(
    op, {d for d, cfg in enumerate(op.params["padding_config"]) if tuple(cfg) != (0, 0, 0)}, {0}))
_attach(("rev",), lambda op: _dims_whole_rule(op, set(op.params["dimensions"])))


def slice_rule(op) -> FactorRule:
    shape = op.operands[0].type.shape
    strides = op.params["strides"] or (1,) * len(shape)
    whole = {d for d in range(len(shape)) if op.params["start_indices"][d] != 0
             or op.params["limit_indices"][d] != shape[d] or strides[d] != 1}
    return _dims_whole_rule(op, whole, {0})


_attach(("slice",), slice_rule)


def dynamic_slice_rule(op) -> FactorRule:
    shape = op.operands[0].type.shape
    whole = {d for d, n in enumerate(op.params["slice_sizes"]) if n != shape[d]}
    return _dims_whole_rule(op, whole, {0})


_attach(("dynamic_slice",), dynamic_slice_rule)


def dynamic_update_slice_rule(op) -> FactorRule:
    shape = op.operands[0].type.shape
    update = op.operands[1].type.shape
    whole = {d for d in range(len(shape)) if update[d] != shape[d]}
    b = _builder(op)
    for d, n in enumerate(shape):
        f = b.factor(n, replication=d in whole)
        b.operand(0, d, f)
        b.result(0, d, f)
        b.operand(1, d, f if d not in whole else b.factor(update[d], replication=True))
    return b.build()


_attach(("dynamic_update_slice",), dynamic_update_slice_rule)


def iota_rule(op) -> FactorRule:
    b = _builder(op)
    for d, n in enumerate(op.results[0].type.shape):
        b.result(0, d, b.factor(n))
    return b.build()


_attach(("iota",), iota_rule)


# -- gather / scatter: batch dims of the indices and full-size window dims pass through ----------

def gather_rule(op) -> FactorRule:
    dn = op.params["dimension_numbers"]
    operand, indices = op.operands[0].type, op.operands[1].type
    result = op.results[0].type
    b = _builder(op)
    batch_out = [d for d in range(result.rank) if d not in dn.offset_dims]
    index_dims = list(range(indices.rank - 1))  # the last indices dim holds the index vector
    for out_d, idx_d in zip(batch_out, index_dims):
        f = b.factor(result.shape[out_d])
        b.result(0, out_d, f)
        b.operand(1, idx_d, f)
        if idx_d in dn.start_indices_batching_dims:
            src = dn.operand_batching_dims[list(dn.start_indices_batching_dims).index(idx_d)]
            b.operand(0, src, f)
    window = [d for d in range(operand.rank) if d not in dn.collapsed_slice_dims
              and d not in dn.operand_batching_dims]
    for out_d, src in zip(dn.offset_dims, window):
        full = op.params["slice_sizes"][src] == operand.shape[src] and src not in dn.start_index_map
        f = b.factor(result.shape[out_d], replication=not full)
        b.result(0, out_d, f)
        if full:
            b.operand(0, src, f)
    for d in range(operand.rank):
        if not b.operands[0][d]:
            # an indexed dim read one element at a time may stay sharded: each shard gathers the indices
            # that fall in its range (zeros elsewhere) and the partial results are summed, which is how
            # XLA partitions it; as a factor of the operand alone it is a reduction factor
            trivial = d in dn.start_index_map and op.params["slice_sizes"][d] == 1
            b.operand(0, d, b.factor(operand.shape[d], replication=not trivial))
    return b.build()


_attach(("gather",), gather_rule)


def scatter_rule(op) -> FactorRule:
    dn = op.params["dimension_numbers"]
    operand, indices, updates = (v.type for v in op.operands[:3])
    b = _builder(op)
    scattered = set(dn.inserted_window_dims) | set(dn.scatter_dims_to_operand_dims)
    # a dim written one element at a time (inserted and indexed) may stay sharded: each shard applies
    # the updates whose indices fall in its range, which is how XLA partitions it (the SPMD
    # partitioner keeps it whole: see passes/partition_local.forced_unsharded)
    trivial = set(dn.inserted_window_dims) & set(dn.scatter_dims_to_operand_dims)
    op_factors = []
    for d, n in enumerate(operand.shape):
        f = b.factor(n, replication=d in scattered and d not in trivial)
        op_factors.append(f)
        b.operand(0, d, f)
        b.result(0, d, f)
    update_scatter = [d for d in range(updates.rank) if d not in dn.update_window_dims]
    for upd_d, idx_d in zip(update_scatter, range(indices.rank - 1)):
        f = b.factor(updates.shape[upd_d])
        b.operand(2, upd_d, f)
        b.operand(1, idx_d, f)
        if idx_d in dn.scatter_indices_batching_dims:
            src = dn.operand_batching_dims[list(dn.scatter_indices_batching_dims).index(idx_d)]
            b.operands[0][src] = ()
            b.operand(0, src, f)
            b.result(0, src, f)
    window = [d for d in range(operand.rank) if d not in dn.inserted_window_dims
              and d not in dn.operand_batching_dims]
    for upd_d, src in zip(dn.update_window_dims, window):
        if updates.shape[upd_d] == operand.shape[src] and src not in scattered:
            b.operand(2, upd_d, op_factors[src])
        else:
            b.operand(2, upd_d, b.factor(updates.shape[upd_d], replication=True))
    for i, v in enumerate(op.operands):
        for d in range(v.type.rank):
            if not b.operands[i][d]:
                b.operand(i, d, b.factor(v.type.shape[d], replication=True))
    return b.build()


_attach(("scatter", "scatter-add", "scatter_add", "scatter-mul", "scatter_mul", "scatter-min",
         "scatter_min", "scatter-max", "scatter_max", "scatter_sub", "scatter-sub"), scatter_rule)


# -- windows: convolution and reduce_window ------------------------------------------------------

def conv_rule(op) -> FactorRule:
    """Batch passes through, input features contract (reduction), spatial dims need halos."""
    dn = op.params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    lhs, rhs, out = op.operands[0].type, op.operands[1].type, op.results[0].type
    groups = op.params["feature_group_count"] * op.params["batch_group_count"]
    b = _builder(op)
    batch = b.factor(out.shape[out_spec[0]], replication=op.params["batch_group_count"] != 1)
    b.result(0, out_spec[0], batch)
    if lhs.shape[lhs_spec[0]] == out.shape[out_spec[0]]:
        b.operand(0, lhs_spec[0], batch)
    else:
        b.operand(0, lhs_spec[0], b.factor(lhs.shape[lhs_spec[0]], replication=True))
    feature_out = b.factor(out.shape[out_spec[1]], replication=groups != 1)
    b.result(0, out_spec[1], feature_out)
    b.operand(1, rhs_spec[0], feature_out)
    contract = b.factor(lhs.shape[lhs_spec[1]], replication=groups != 1)
    b.operand(0, lhs_spec[1], contract)
    if rhs.shape[rhs_spec[1]] == lhs.shape[lhs_spec[1]]:
        b.operand(1, rhs_spec[1], contract)
    else:
        b.operand(1, rhs_spec[1], b.factor(rhs.shape[rhs_spec[1]], replication=True))
    for i, (l, r, o) in enumerate(zip(lhs_spec[2:], rhs_spec[2:], out_spec[2:])):
        same = lhs.shape[l] == out.shape[o] and op.params["window_strides"][i] == 1 and \
            tuple(op.params["lhs_dilation"])[i] == 1
        kernel = rhs.shape[r]
        if same:
            f = b.factor(out.shape[o], halo=kernel > 1)
            b.operand(0, l, f)
            b.result(0, o, f)
        else:
            b.operand(0, l, b.factor(lhs.shape[l], replication=True))
            b.result(0, o, b.factor(out.shape[o], replication=True))
        b.operand(1, r, b.factor(kernel, replication=True))
    return b.build()


_attach(("conv_general_dilated",), conv_rule)


def reduce_window_rule(op) -> FactorRule:
    p = op.params
    shape = op.operands[0].type.shape
    whole = set()
    for d in range(len(shape)):
        pad = tuple(p["padding"][d]) if "padding" in p else (0, 0)
        if p["window_dimensions"][d] != 1 or p["window_strides"][d] != 1 or pad != (0, 0) \
                or (p.get("base_dilation") or (1,) * len(shape))[d] != 1:
            whole.add(d)
    b = _builder(op)
    for d, n in enumerate(shape):
        if d in whole:
            for i, v in enumerate(op.operands):
                if v.type.rank == len(shape):
                    b.operand(i, d, b.factor(v.type.shape[d], replication=True))
            for r, v in enumerate(op.results):
                b.result(r, d, b.factor(v.type.shape[d], replication=True))
            continue
        f = b.factor(n)
        for i, v in enumerate(op.operands):
            if v.type.rank == len(shape):
                b.operand(i, d, f)
        for r in range(len(op.results)):
            b.result(r, d, f)
    return b.build()


_attach(("reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window",
         "select_and_scatter_add", "select_and_gather_add"), reduce_window_rule)
