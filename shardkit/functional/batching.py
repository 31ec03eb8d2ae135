"""vmap over Functions: a batch of functions is one Function whose batched leaves carry a leading axis.

A batched Function has the structure of each of its members; `f.batch = (size, mask)` says which of
its leaves (in program order) have the leading batch axis (the others are shared by every member).
`jax.vmap` maps it like an array with `in_axes=0`; inside, each member is an ordinary Function.

Batching rules come in two kinds:

* operators that build functions (compose, nabla, partial, ...) build the member structure once, on
  stand-ins for the members' leaves, and put the batched leaves back: nothing is evaluated;
* operators that produce arrays (integrate, evaluation at points, array cotangents) run their
  ordinary implementation under `jax.vmap` over the leaves, so XLA sees one batched computation.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .errors import FunctionalError
from .function import Function, ShapedArray, leaf_aval, rebuild, structure


def batch_mask(f: Function, dim) -> tuple:
    """Which leaves of `f` (program order) carry the batch axis, for a vmap operand with dim `dim`."""
    leaves = structure(f)[1]
    if dim is None or f.batch is None:
        return (False,) * len(leaves)
    return f.batch[1]


def mark(f: Function, size: int, mask: Sequence[bool]) -> tuple[Function, Any]:
    """(f, its vmap dim): `f` marked as a batch of `size` functions when any leaf is batched."""
    mask = tuple(bool(m) for m in mask)
    if not any(mask):
        return f, None
    f.batch = (int(size), mask)
    return f, 0


def unbatched_program(program: tuple, mask: Sequence[bool]) -> tuple:
    """The program of one member of a batch: the leading axis dropped from the batched leaves."""
    it = iter(mask)
    out = []
    for kind, params, kids, avals, spec in program:
        avals = tuple(ShapedArray(tuple(a.shape[1:]), a.dtype) if next(it) else a for a in avals)
        out.append((kind, params, kids, avals, spec))
    return tuple(out)


def _size(values, dims) -> int:
    for v, d in zip(values, dims):
        if d is None:
            continue
        if isinstance(v, Function):
            if v.batch is not None:
                return v.batch[0]
        elif isinstance(d, int):
            return v.shape[d]
    raise FunctionalError("internal: a batching rule found no batched operand")


def _function_operand(op: str, v, d) -> Function:
    """The Function a batching rule works on. A function traced by an enclosing jax.jit is taken
    apart into its leaves (its type knows its structure); under an enclosing jax.grad it cannot be."""
    if isinstance(v, Function):
        return v
    t = v.aval
    if not t.has_structure:
        raise FunctionalError(
            f"{op}: under jax.vmap, a function {t.spec} whose structure is not known here (a tangent "
            f"or cotangent of an enclosing jax.grad / jax.jvp) cannot be combined with batched "
            f"values. Put jax.vmap outside the differentiation, or differentiate with respect to "
            f"arrays.")
    from .primitives import leaves_p
    f = rebuild(t.program, leaves_p.bind(v))
    source = t.abstract_function()
    if d is not None and source.batch is not None:
        f.batch = source.batch
    return f


def structure_rule(op: str, build: Callable) -> Callable:
    """The batching rule of an operator that builds a Function: `build` runs once on stand-ins for
    the members' leaves, and the batched leaves are put back into the structure it made."""
    def rule(values, dims, **params):
        if all(d is None for d in dims):
            return build(*values, **params), None
        size = _size(values, dims)
        stand, found = [], {}
        for v, d in zip(values, dims):
            if isinstance(v, Function) or _is_traced_function(v):
                f = _function_operand(op, v, d)
                program, leaves = structure(f)
                mask = batch_mask(f, d)
                avals = []
                for leaf, m in zip(leaves, mask):
                    a = leaf_aval(leaf)
                    a = _slot(a.shape[1:] if m else a.shape, a.dtype)
                    found[id(a)] = (leaf, m)
                    avals.append(a)
                stand.append(rebuild(program, avals))
            elif d is None:
                stand.append(v)
            else:
                x = jnp.moveaxis(v, d, 0)
                a = _slot(x.shape[1:], x.dtype)
                found[id(a)] = (x, True)
                stand.append(a)
        out = build(*stand, **params)
        program, leaves = structure(out)
        real, mask = [], []
        for leaf in leaves:
            hit = found.get(id(leaf))
            real.append(leaf if hit is None else hit[0])
            mask.append(False if hit is None else hit[1])
        return mark(rebuild(program, real), size, mask)
    return rule


def _slot(shape, dtype):
    """A stand-in leaf of a given shape, distinct from every other (abstract values are interned, so
    they cannot tell leaves apart): a zero-size-cost numpy view."""
    return np.broadcast_to(np.zeros((), dtype), tuple(shape))


def evaluate_rule(impl: Callable) -> Callable:
    """The batching rule of an operator whose result is an array: its implementation under jax.vmap
    over the batched leaves and arrays."""
    def rule(values, dims, **params):
        if all(d is None for d in dims):
            return impl(*values, **params), None
        flat, axes, parts = [], [], []
        for v, d in zip(values, dims):
            if isinstance(v, Function) or _is_traced_function(v):
                f = _function_operand("vmap", v, d)
                program, leaves = structure(f)
                mask = batch_mask(f, d)
                parts.append(("function", unbatched_program(program, mask), len(flat), len(leaves)))
                flat += leaves
                axes += [0 if m else None for m in mask]
            elif d is None:
                parts.append(("closed", v))
            else:
                parts.append(("array", len(flat)))
                flat.append(v)
                axes.append(d)

        def run(*xs):
            operands = []
            for part in parts:
                if part[0] == "function":
                    _, program, start, n = part
                    operands.append(rebuild(program, list(xs[start:start + n])))
                elif part[0] == "closed":
                    operands.append(part[1])
                else:
                    operands.append(xs[part[1]])
            return impl(*operands, **params)

        return jax.vmap(run, in_axes=tuple(axes))(*flat), 0
    return rule


def _is_traced_function(v) -> bool:
    from .types import FunctionType
    return isinstance(v, jax.core.Tracer) and isinstance(v.aval, FunctionType)


def vmapped(make: Callable, operands: Sequence) -> Any:
    """`make(*operands)` where some operands are concrete batched Functions (made by jax.vmap and
    returned from it): the operator is mapped over the batch, giving a batch of results."""
    axes = tuple(0 if isinstance(x, Function) and x.batch is not None else None for x in operands)
    sizes = {x.batch[0] for x in operands if isinstance(x, Function) and x.batch is not None}
    if len(sizes) > 1:
        raise FunctionalError(f"batches of functions of different sizes {sorted(sizes)} combined")
    return jax.vmap(make, in_axes=axes)(*operands)
