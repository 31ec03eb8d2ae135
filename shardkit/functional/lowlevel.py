"""Array-level primitives: evaluating a Function at points and integrating it on a grid.

When a functional program is lowered to arrays (eagerly, under `jax.jit`, or by `sk.capture`), what
remains of the functional primitives is these two: `functional.apply` and `functional.integrate`.
Each holds the evaluation of the function at one point as a closed jaxpr (the IR shows it as a
region), takes the function's leaves as operands, and vectorises over points. Their JVP and batching
rules inline the evaluation (JAX then differentiates and transposes ordinary array code).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from shardkit.ir import _jax

from .errors import FunctionalError
from .evaluate import evaluate, point_jaxpr, quadrature
from .function import Function, expression_text, leaves_of, program_avals
from .spec import Spec

# -- the computations (traceable) -------------------------------------------------------------------


def _apply_compute(*operands, fn, num_leaves: int, batch_ndim: int, expr: str):
    leaves, xs = operands[:num_leaves], operands[num_leaves:]

    def one(*points):
        return _jax.eval_jaxpr(fn, list(leaves) + list(points))[0]

    for _ in range(batch_ndim):
        one = jax.vmap(one)
    return one(*xs)


def _integrate_compute(*operands, integrand, num_leaves: int, expr: str):
    leaves, flat = operands[:num_leaves], operands[num_leaves:]
    grids = [(flat[2 * k], flat[2 * k + 1]) for k in range(len(flat) // 2)]
    return quadrature(lambda *points: _jax.eval_jaxpr(integrand, list(leaves) + list(points))[0], grids)


@functools.lru_cache(maxsize=1024)
def _compiled(kind: str, params: tuple):
    compute = _apply_compute if kind == "apply" else _integrate_compute
    return jax.jit(functools.partial(compute, **dict(params)))


def _apply_impl(*operands, **params):
    return _compiled("apply", tuple(sorted(params.items())))(*operands)


def _integrate_impl(*operands, **params):
    return _compiled("integrate", tuple(sorted(params.items())))(*operands)


def _apply_abstract(*avals, fn, num_leaves, batch_ndim, expr):
    out = _jax.jaxpr_out_avals(fn)[0]
    xs = avals[num_leaves:]
    batch = tuple(xs[0].shape[:batch_ndim]) if xs else ()
    return _jax.make_shaped_array(batch + tuple(out.shape), out.dtype)


def _integrate_abstract(*avals, integrand, num_leaves, expr):
    out = _jax.jaxpr_out_avals(integrand)[0]
    return _jax.make_shaped_array(tuple(out.shape), out.dtype)


def _inline_jvp(compute):
    def jvp(primals, tangents, **params):
        tangents = [_jax.instantiate_zero(t) for t in tangents]
        return jax.jvp(functools.partial(compute, **params), tuple(primals), tuple(tangents))
    return jvp


def _inline_batch(compute):
    def batch(args, dims, **params):
        in_axes = tuple(None if d is None or not isinstance(d, int) else d for d in dims)
        return jax.vmap(functools.partial(compute, **params), in_axes=in_axes)(*args), 0
    return batch


apply_p = _jax.define_primitive(
    "functional.apply", impl=_apply_impl, abstract_eval=_apply_abstract,
    jvp=_inline_jvp(_apply_compute), batch=_inline_batch(_apply_compute), lowering=_apply_compute)

integrate_p = _jax.define_primitive(
    "functional.integrate", impl=_integrate_impl, abstract_eval=_integrate_abstract,
    jvp=_inline_jvp(_integrate_compute), batch=_inline_batch(_integrate_compute),
    lowering=_integrate_compute)


# -- binding them for a Function ----------------------------------------------------------------------


def _lowered(f: Function, arg_types: tuple):
    """(closed point jaxpr, expression text) for f, cached on its type."""
    from .types import type_of
    t = type_of(f)
    cache = t.__dict__.setdefault("_lowered", {})
    hit = cache.get(arg_types)
    if hit is None:
        hit = (point_jaxpr(t.program, arg_types), expression_text(f, limit=240))
        cache[arg_types] = hit
    return hit


def apply(f: Function, xs: Sequence[Any], batch_ndim: int) -> Any:
    """f at points xs (each shaped batch + its argument's shape)."""
    arg_types = tuple((shape, f.spec.dtype) for shape in f.spec.args)
    jaxpr, expr = _lowered(f, arg_types)
    leaves = leaves_of(f)
    return apply_p.bind(*leaves, *xs, fn=jaxpr, num_leaves=len(leaves), batch_ndim=batch_ndim, expr=expr)


def integrate(f: Function, grid_arrays: Sequence[Any]) -> Any:
    """The integral of f over all its arguments on the tensor product of the given grids."""
    arg_types = tuple((shape, f.spec.dtype) for shape in f.spec.args)
    jaxpr, expr = _lowered(f, arg_types)
    leaves = leaves_of(f)
    return integrate_p.bind(*leaves, *grid_arrays, integrand=jaxpr, num_leaves=len(leaves), expr=expr)


def pair(ct: Function, operands: Sequence[Any], builder: str, bparams: tuple, index: int, aval) -> Any:
    """The transpose, at cotangent `ct`, of an operator linear in the array operand `index`: the
    gradient in that array of <ct, op(..., t, ...)>, each term paired exactly through its template
    on the grids of the integral it came from. Compiled once per structure."""
    from .builders import terms
    for t in terms(ct):
        missing = [i for i, g in enumerate(t.base_grids) if g is None]
        if missing:
            raise FunctionalError(
                f"{builder}: its transpose with respect to an array pairs the cotangent function "
                f"{ct.spec} with the operator by integration, but the cotangent carries no quadrature "
                f"grid for argument(s) {missing}. Array derivatives through functions need the "
                f"functional to integrate them: F = integrate(g(f), Grid(nodes, weights)).")
    from .types import type_of
    functions = [ct] + [o for o in operands if isinstance(o, Function)]
    is_fn = tuple(isinstance(o, Function) for o in operands)
    programs = tuple(type_of(f).program for f in functions)
    leaves = [leaves_of(f) for f in functions]
    arrays = [o for o in operands if not isinstance(o, Function)]
    key = (programs, is_fn, builder, bparams, index, tuple(aval.shape), str(aval.dtype),
           tuple((tuple(jnp.shape(a)), str(jnp.result_type(a))) for a in arrays))
    compiled = _PAIRS.get(key)
    if compiled is None:
        compiled = jax.jit(functools.partial(_pair_compute, programs=programs, is_fn=is_fn,
                                             builder=builder, bparams=bparams, index=index,
                                             shape=tuple(aval.shape), dtype=aval.dtype))
        _PAIRS[key] = compiled
    return compiled([list(x) for x in leaves], list(arrays))


_PAIRS: dict = {}


def _pair_compute(leaves, arrays, *, programs, is_fn, builder, bparams, index, shape, dtype):
    from .builders import BUILDERS, terms
    from .function import rebuild, substitute
    functions = [rebuild(p, x) for p, x in zip(programs, leaves)]
    ct, fns, arrs = functions[0], iter(functions[1:]), iter(arrays)
    operands = [next(fns) if f else next(arrs) for f in is_fn]
    parts = terms(ct)
    build = BUILDERS[builder]

    def total(value):
        ops = list(operands)
        ops.insert(index, value)
        phi = build(*ops, **dict(bparams))
        memo: dict = {}
        out = 0.0
        for t in parts:
            pushed = substitute(t.template, t.hole, phi)

            def integrand(*points, base=t.base, pushed=pushed):
                return jnp.sum(evaluate(pushed, points, memo) * evaluate(base, points, memo))
            out = out + quadrature(integrand, t.base_grids)
        return out

    return jax.grad(total)(jnp.zeros(shape, dtype))
