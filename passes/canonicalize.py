"""`canonicalize`: algebraic identities, constant folding of small constants, and no-op removal.

Rewrites (each only when the replacement has the result's exact shape and dtype and no sharding is
lost): x*1, 1*x, x+0, 0+x, x-0, x/1, x**1 -> x; reshapes, transposes, converts, broadcasts, squeezes,
reversals, slices, reductions and copies that do nothing -> their operand; a pure op whose operands
are all small constants -> a constant. Regions are canonicalized too; dead pure ops are erased.
The patterns are exported (CANONICALIZATION_PATTERNS) so other passes can compose them with theirs.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from shardkit.ir import Graph, Interpreter, Op, Params, Value
from shardkit.ir.ops.core import make_constant

from .base import ALL_PROPERTIES, Pass
from .effects import is_pure
from .registry import register
from .rewrite import PatternSet, Replace, Rewriter, apply_patterns, pattern, same_type


def _is(rw: Rewriter, value: Value, number) -> bool:
    found = rw.splat(value)
    return found is not None and not isinstance(found, bool) and found == number


def _no_sharding_params(op: Op) -> bool:
    return op.params.get("sharding") is None and op.params.get("out_sharding") is None


# -- algebraic identities -----------------------------------------------------------------------


@pattern("mul")
def mul_by_one(op: Op, rw: Rewriter):
    """x * 1 -> x and 1 * x -> x."""
    x, y = op.operands
    if _is(rw, y, 1) and same_type(x, op.result):
        return [x]
    if _is(rw, x, 1) and same_type(y, op.result):
        return [y]
    return None


@pattern("add", "add_any")
def add_zero(op: Op, rw: Rewriter):
    """x + 0 -> x and 0 + x -> x."""
    x, y = op.operands
    if _is(rw, y, 0) and same_type(x, op.result):
        return [x]
    if _is(rw, x, 0) and same_type(y, op.result):
        return [y]
    return None


@pattern("sub")
def sub_zero(op: Op, rw: Rewriter):
    """x - 0 -> x."""
    x, y = op.operands
    return [x] if _is(rw, y, 0) and same_type(x, op.result) else None


@pattern("div")
def div_by_one(op: Op, rw: Rewriter):
    """x / 1 -> x."""
    x, y = op.operands
    return [x] if _is(rw, y, 1) and same_type(x, op.result) else None


@pattern("integer_pow")
def pow_one(op: Op, rw: Rewriter):
    """x ** 1 -> x."""
    (x,) = op.operands
    return [x] if op.params.get("y") == 1 and same_type(x, op.result) else None


# -- ops that do nothing --------------------------------------------------------------------------


def _identity_if(condition: bool, op: Op):
    x = op.operands[0]
    return [x] if condition and _no_sharding_params(op) and same_type(x, op.result) else None


@pattern("reshape")
def noop_reshape(op: Op, rw: Rewriter):
    """A reshape to the operand's own shape."""
    x = op.operands[0]
    return _identity_if(len(op.operands) == 1 and op.params.get("dimensions") is None
                        and tuple(op.params.get("new_sizes", ())) == x.type.shape, op)


@pattern("transpose")
def noop_transpose(op: Op, rw: Rewriter):
    """A transpose by the identity permutation."""
    x = op.operands[0]
    return _identity_if(tuple(op.params.get("permutation", ())) == tuple(range(x.type.rank)), op)


@pattern("convert_element_type")
def noop_convert(op: Op, rw: Rewriter):
    """A conversion to the dtype the value already has."""
    return _identity_if(op.params.get("new_dtype") == op.operands[0].type.dtype, op)


@pattern("broadcast_in_dim")
def noop_broadcast(op: Op, rw: Rewriter):
    """A broadcast to the operand's own shape along the identity dimensions."""
    x = op.operands[0]
    return _identity_if(len(op.operands) == 1 and tuple(op.params.get("shape", ())) == x.type.shape
                        and tuple(op.params.get("broadcast_dimensions", ())) == tuple(range(x.type.rank)),
                        op)


@pattern("squeeze", "rev")
def noop_dimensions(op: Op, rw: Rewriter):
    """A squeeze or reversal of no dimensions."""
    return _identity_if(tuple(op.params.get("dimensions", (None,))) == (), op)


@pattern("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or")
def noop_reduce(op: Op, rw: Rewriter):
    """A reduction over no axes."""
    return _identity_if(tuple(op.params.get("axes", (None,))) == (), op)


@pattern("slice")
def noop_slice(op: Op, rw: Rewriter):
    """A slice that takes the whole operand."""
    x = op.operands[0]
    strides = op.params.get("strides")
    whole = (tuple(op.params.get("start_indices", ())) == (0,) * x.type.rank
             and tuple(op.params.get("limit_indices", ())) == x.type.shape
             and (strides is None or all(s == 1 for s in strides)))
    return _identity_if(whole, op)


@pattern("copy")
def noop_copy(op: Op, rw: Rewriter):
    """A copy: values are immutable, so the operand serves."""
    return _identity_if(True, op)


@pattern("select_n")
def single_case_select(op: Op, rw: Rewriter):
    """select_n with one case always picks it."""
    if len(op.operands) == 2 and same_type(op.operands[1], op.result):
        return [op.operands[1]]
    return None


# -- constant folding --------------------------------------------------------------------------


def _foldable_dtype(dtype) -> bool:
    try:
        return bool(jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_))
    except TypeError:
        return False


def constant_folding(limit: int = 16):
    """A pattern evaluating pure ops whose operands are constants of at most `limit` elements."""
    interpreter = Interpreter(mesh=None, apply_shardings=False)

    @pattern(name="fold_constants", benefit=0)
    def fold_constants(op: Op, rw: Rewriter):
        if op.name == "constant" or op.regions or not op.results:
            return None
        arrays = []
        for v in op.operands:
            array = rw.constant(v)
            if array is None or array.size > limit:
                return None
            arrays.append(array)
        if any(r.type.size > limit or not _foldable_dtype(r.type.dtype) for r in op.results):
            return None
        if not is_pure(op):
            return None
        try:
            with jax.default_device(jax.devices("cpu")[0]):
                outs = interpreter.run_op(op, [jnp.asarray(a) for a in arrays])
            outs = [np.asarray(jax.device_get(o)) for o in outs]
        except Exception:  # an op that cannot be evaluated eagerly is simply not folded
            return None
        new_ops, values = [], []
        for result, out in zip(op.results, outs):
            if tuple(out.shape) != result.type.shape or out.dtype != result.type.dtype:
                return None
            value = Value(result.type)
            new_ops.append(Op("constant", (), (value,), Params(make_constant(out))))
            values.append(value)
        return Replace(values, new_ops)

    return fold_constants


CANONICALIZATION_PATTERNS = PatternSet([
    mul_by_one, add_zero, sub_zero, div_by_one, pow_one, noop_reshape, noop_transpose, noop_convert,
    noop_broadcast, noop_dimensions, noop_reduce, noop_slice, noop_copy, single_case_select,
])
"""The identity and no-op patterns of `canonicalize` (constant folding is added by the pass)."""


@register
@dataclass(frozen=True)
class Canonicalize(Pass):
    """Simplify the graph with local rewrites until none applies (see the module docstring)."""

    name = "canonicalize"
    preserves = ALL_PROPERTIES

    fold_limit: int = 16
    erase_dead: bool = True
    max_rewrites: int | None = None
    trace: bool = False

    def run(self, graph: Graph, ctx) -> Graph:
        patterns = CANONICALIZATION_PATTERNS
        if self.fold_limit > 0:
            patterns = patterns + [constant_folding(self.fold_limit)]
        result = apply_patterns(graph, patterns, ctx=ctx, erase_dead=self.erase_dead,
                                max_rewrites=self.max_rewrites, trace=self.trace)
        if self.trace and ctx is not None:
            for fired in result.trace or ():
                ctx.diagnostics.note(f"fired {fired}")
        return result.graph
