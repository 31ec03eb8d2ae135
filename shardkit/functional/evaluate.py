"""Evaluate a Function graph on arrays, each shared node once per distinct arguments.

The evaluator memoises on (node, argument identities), so a node that several paths reach with the
same arguments is computed once. It serves the nodes that differentiate their inputs (nabla,
linearize, linear_transpose), which engine.py hands over; everything else is evaluated on whole
point sets there.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .errors import FunctionalError
from .function import Function

Memo = dict


def evaluate(f: Function, args: Sequence[Any], memo: Memo | None = None):
    """f(*args) for arrays (or tracers) shaped exactly as f's arguments."""
    return _eval(f, tuple(args), {} if memo is None else memo)


def _eval(f: Function, args: tuple, memo: Memo):
    key = (id(f), tuple(id(a) for a in args))
    hit = memo.get(key)
    if hit is not None:
        return hit[1]
    out = _RULES[f.kind](f, args, memo)
    memo[key] = (args, out)  # keeps the arguments alive, so their ids stay unique
    return out


def _fn(f, args, memo):
    out = jnp.asarray(f.params[0](*args))
    spec = f.spec
    if tuple(out.shape) != spec.ret:
        raise FunctionalError(f"function {f.params[0]!r} returned shape {tuple(out.shape)}, its spec "
                              f"says {spec}")
    return out.astype(spec.ret_dtype)


def _const(f, args, memo):
    return f.arrays[0]


def _unknown(f, args, memo):
    raise FunctionalError(f"a function {f.spec} whose structure is only known abstractly (a tangent "
                          f"type) cannot be evaluated")


def _compose(f, args, memo):
    outer = f.params[0]
    inners = f.children if outer is not None else f.children[1:]
    values = tuple(_eval(g, args, memo) for g in inners)
    if outer is None:
        return _eval(f.children[0], values, memo)
    out = jnp.asarray(outer(*values))
    return out.astype(f.spec.ret_dtype)


def _add(f, args, memo):
    total = None
    for g in f.children:
        value = _eval(g, args, memo)
        total = value if total is None else total + value
    return jnp.broadcast_to(total, f.spec.ret).astype(f.spec.ret_dtype)


def _nabla(f, args, memo):
    (child,), k = f.children, f.params[0]

    def at(x):
        return _eval(child, args[:k] + (x,) + args[k + 1:], memo)

    return jacobian(at, args[k])


def jacobian(fn: Callable, x):
    """d fn / d x, shaped fn(x).shape + x.shape: one JVP per input component (forward mode, as
    arguments are small), written with vmap and reshape only. The basis is a NumPy constant (a
    literal in the compiled program, not an iota/compare computed on every call)."""
    x = jnp.asarray(x)
    if x.ndim == 0:
        return jax.jvp(fn, (x,), (np.ones((), x.dtype),))[1]
    size = x.size
    basis = np.eye(size, dtype=x.dtype).reshape((size,) + x.shape)
    cols = jax.vmap(lambda t: jax.jvp(fn, (x,), (t,))[1])(basis)      # (size, *ret)
    ret_ndim = cols.ndim - 1
    cols = jnp.moveaxis(cols, 0, -1)                                   # (*ret, size)
    return jnp.reshape(cols, cols.shape[:ret_ndim] + x.shape)


def _linearize(f, args, memo):
    (child,), argnums = f.children, f.params[0]
    n = child.num_args
    primals, tangents = args[:n], args[n:]

    def at(*xs):
        full = list(primals)
        for a, x in zip(argnums, xs):
            full[a] = x
        return _eval(child, tuple(full), memo)

    sel = tuple(primals[a] for a in argnums)
    tangents = tuple(t.astype(jnp.result_type(p)) for t, p in zip(tangents, sel))
    return jax.jvp(at, sel, tangents)[1]


def _ltranspose(f, args, memo):
    (child,), (argnum, zero) = f.children, f.params
    spec = child.spec
    given = iter(args)
    full: list = []
    ct = None
    for position, shape in enumerate(spec.args):
        if position == argnum:
            ct = next(given)
            full.append(None)
        elif position in zero:
            full.append(jnp.zeros(shape, spec.dtype))
        else:
            full.append(next(given))

    def linear(t):
        return _eval(child, tuple(full[:argnum]) + (t,) + tuple(full[argnum + 1:]), memo)

    struct = jax.ShapeDtypeStruct(spec.args[argnum], spec.dtype)
    ct = jnp.asarray(ct, spec.ret_dtype)
    return jax.linear_transpose(linear, struct)(ct)[0]


def _permute(f, args, memo):
    (child,), (perm,) = f.children, f.params
    inner: list = [None] * len(perm)
    for i, p in enumerate(perm):
        inner[p] = args[i]
    return _eval(child, tuple(inner), memo)


def _partial(f, args, memo):
    (child,), (argnums,) = f.children, f.params
    inner, given, fixed = [], iter(args), dict(zip(argnums, f.arrays))
    for position in range(child.num_args):
        inner.append(fixed[position] if position in fixed else next(given))
    return _eval(child, tuple(inner), memo)


def _broadcast(f, args, memo):
    (child,), (argnums,) = f.children, f.params
    return _eval(child, tuple(args[a] for a in argnums), memo)


def _integrate(f, args, memo):
    (child,), (argnums,) = f.children, f.params
    grids = {a: (f.arrays[2 * k], f.arrays[2 * k + 1]) for k, a in enumerate(argnums)}
    rest = iter(args)
    slots = [None if position in grids else next(rest) for position in range(child.num_args)]
    return quadrature(lambda *points: _eval(child, _fill(slots, argnums, points), memo),
                      [grids[a] for a in argnums])


def _fill(slots, argnums, points):
    out = list(slots)
    for a, x in zip(argnums, points):
        out[a] = x
    return tuple(out)


def _measured(f, args, memo):
    return _eval(f.children[0], args, memo)


def _hole(f, args, memo):
    raise FunctionalError("internal: a pairing template was evaluated without its argument")


_RULES: dict[str, Callable] = {
    "fn": _fn, "const": _const, "unknown": _unknown, "compose": _compose, "add": _add,
    "nabla": _nabla, "linearize": _linearize, "ltranspose": _ltranspose, "permute": _permute,
    "partial": _partial, "broadcast": _broadcast, "integrate": _integrate, "measured": _measured,
    "hole": _hole,
}


def quadrature(integrand: Callable, grids: Sequence[tuple]):
    """sum over the tensor grid of w_1 ... w_k * integrand(x_1, ..., x_k)."""
    if not grids:
        return integrand()
    (nodes, weights), rest = grids[0], grids[1:]
    values = jax.vmap(lambda x: quadrature(lambda *more: integrand(x, *more), rest))(nodes)
    return jnp.tensordot(weights.astype(values.dtype), values, axes=1)
