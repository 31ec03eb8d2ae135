"""Array-level primitives: a Function evaluated at points, and integrated on grids.

When a functional program is lowered to arrays (eagerly, under `jax.jit`, or by `sk.capture`), what
remains of the functional primitives is these two: `functional.apply` and `functional.integrate`.
Their operands are the function's leaves (and the points, or the grids); their `fn` param is the
vectorised computation as a closed jaxpr (the IR shows it as the op's region), made by the point-set
evaluator (engine.py) from the function's static structure (`structure`, kept so the primitive can
be re-derived for other shapes under vmap). JVP rules inline the computation, so JAX differentiates
and transposes ordinary array code.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from shardkit.ir import _jax

from . import engine
from .errors import FunctionalError
from .evaluate import evaluate
from .function import Function, evaluation_view, expression_text, leaves_of, program_avals, rebuild


class Structure:
    """The static program of a function, as a primitive param (hashable; printed as a reference)."""

    __slots__ = ("program", "_hash", "__weakref__")

    def __init__(self, program):
        self.program = program
        self._hash = None

    def __hash__(self):
        if self._hash is None:
            self._hash = hash(self.program)
        return self._hash

    def __eq__(self, other):
        return isinstance(other, Structure) and (other is self or other.program == self.program)

    @property
    def leaf_types(self) -> list:
        return [(tuple(a.shape), a.dtype) for a in program_avals(self.program)]

    def function(self, leaves) -> Function:
        return rebuild(self.program, list(leaves))


# -- the vectorised computations, as closed jaxprs ------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def apply_jaxpr(structure: Structure, batch_ndim: int, x_types: tuple):
    """(leaves..., xs...) -> f at the points xs (batch_ndim leading point axes)."""
    n = len(structure.leaf_types)

    def run(*flat):
        f = structure.function(flat[:n])
        return [engine.apply(f, list(flat[n:]), batch_ndim, engine.Evaluator(persistent=False))]

    return _jax.make_closed_jaxpr(run, structure.leaf_types + list(x_types))


@functools.lru_cache(maxsize=1024)
def integrate_jaxpr(structure: Structure, grid_types: tuple):
    """(leaves..., nodes, weights, ...) -> the integral of f on the tensor product of the grids."""
    n = len(structure.leaf_types)

    def run(*flat):
        f = structure.function(flat[:n])
        arrays = flat[n:]
        grids = [(arrays[2 * k], arrays[2 * k + 1]) for k in range(len(arrays) // 2)]
        return [engine.integrate(f, grids, engine.Evaluator(persistent=False))]

    return _jax.make_closed_jaxpr(run, structure.leaf_types + list(grid_types))


def _types(arrays) -> tuple:
    return tuple((tuple(jnp.shape(a)), jnp.result_type(a)) for a in arrays)


# -- the primitives -----------------------------------------------------------------------------------------


def _run(fn, *operands):
    return _jax.eval_jaxpr(fn, list(operands))[0]


@functools.lru_cache(maxsize=1024)
def _compiled(fn):
    return jax.jit(functools.partial(_run, fn))


def _impl(*operands, fn, **_):
    return _compiled(fn)(*operands)


def _lowering(*operands, fn, **_):
    return _run(fn, *operands)


def _abstract(*avals, fn, **_):
    out = _jax.jaxpr_out_avals(fn)[0]
    return _jax.make_shaped_array(tuple(out.shape), out.dtype)


def _jvp(primals, tangents, *, fn, **_):
    tangents = [_jax.instantiate_zero(t) for t in tangents]
    return jax.jvp(functools.partial(_run, fn), tuple(primals), tuple(tangents))


def _inline_batch(args, dims, *, fn, **_):
    in_axes = tuple(d if isinstance(d, int) else None for d in dims)
    return jax.vmap(functools.partial(_run, fn), in_axes=in_axes)(*args), 0


def _apply_batch(args, dims, *, structure, fn, num_leaves, batch_ndim, expr):
    """vmap over points stays one op, with one more leading point axis (leaves must be unbatched)."""
    mapped = [isinstance(d, int) for d in dims]
    if any(mapped[:num_leaves]):
        return _inline_batch(args, dims, fn=fn)
    size = next(x.shape[d] for x, d, m in zip(args, dims, mapped) if m)
    xs = [jnp.moveaxis(x, d, 0) if m else jnp.broadcast_to(x, (size,) + tuple(x.shape))
          for x, d, m in zip(args[num_leaves:], dims[num_leaves:], mapped[num_leaves:])]
    new_fn = apply_jaxpr(structure, batch_ndim + 1, _types(xs))
    out = apply_p.bind(*args[:num_leaves], *xs, structure=structure, fn=new_fn, num_leaves=num_leaves,
                       batch_ndim=batch_ndim + 1, expr=expr)
    return out, 0


apply_p = _jax.define_primitive(
    "functional.apply", impl=_impl, abstract_eval=_abstract, jvp=_jvp, batch=_apply_batch,
    lowering=_lowering)

integrate_p = _jax.define_primitive(
    "functional.integrate", impl=_impl, abstract_eval=_abstract, jvp=_jvp, batch=_inline_batch,
    lowering=_lowering)


# -- binding them for a Function ----------------------------------------------------------------------------


def _described(f: Function) -> tuple:
    """(Structure, expression text) of f, cached on its type."""
    from .types import type_of
    t = type_of(f)
    hit = t.__dict__.get("_described")
    if hit is None:
        hit = (Structure(t.program), expression_text(f, limit=240))
        t.__dict__["_described"] = hit
    return hit


def apply(f: Function, xs: Sequence[Any], batch_ndim: int) -> Any:
    """f at points xs (each shaped batch + its argument's shape), as a `functional.apply` op."""
    f = evaluation_view(f)
    structure, expr = _described(f)
    fn = apply_jaxpr(structure, batch_ndim, _types(xs))
    leaves = leaves_of(f)
    return apply_p.bind(*leaves, *xs, structure=structure, fn=fn, num_leaves=len(leaves),
                        batch_ndim=batch_ndim, expr=expr)


def integrate(f: Function, grid_arrays: Sequence[Any]) -> Any:
    """The integral of f on the tensor product of the grids, as a `functional.integrate` op."""
    f = evaluation_view(f)
    structure, expr = _described(f)
    fn = integrate_jaxpr(structure, _types(grid_arrays))
    leaves = leaves_of(f)
    return integrate_p.bind(*leaves, *grid_arrays, structure=structure, fn=fn, num_leaves=len(leaves),
                            expr=expr)


@functools.lru_cache(maxsize=1024)
def _point_by_point(structure: Structure, batch_ndim: int):
    n = len(structure.leaf_types)

    def run(leaves, xs):
        f = structure.function(leaves)
        one = lambda *x: evaluate(f, x)  # noqa: E731
        for _ in range(batch_ndim):
            one = jax.vmap(one)
        return one(*xs)

    return jax.jit(run)


def apply_compiled(f: Function, xs: Sequence[Any], batch_ndim: int) -> Any:
    """f at concrete points, evaluated point by point by one compiled program (for nodes that
    differentiate their inputs, which the point-set evaluator hands over)."""
    structure, _ = _described(f)
    return _point_by_point(structure, batch_ndim)(list(leaves_of(f)), list(xs))


# -- pairing a cotangent function with an operator that is linear in an array -------------------------------


def pair(ct: Function, operands: Sequence[Any], builder: str, bparams: tuple, index: int, aval) -> Any:
    """The transpose, at cotangent `ct`, of an operator linear in the array operand `index`: the
    gradient in that array of <ct, op(..., t, ...)>, each term paired exactly through its template
    on the grids of the integral it came from."""
    from .builders import terms
    for t in terms(ct):
        missing = [i for i, g in enumerate(t.base_grids) if g is None]
        if missing:
            raise FunctionalError(
                f"{builder}: its transpose with respect to an array pairs the cotangent function "
                f"{ct.spec} with the operator by integration, but the cotangent carries no quadrature "
                f"grid for argument(s) {missing}. Array derivatives through functions need the "
                f"functional to integrate them: F = integrate(g(f), Grid(nodes, weights)).")
    size = 1
    for d in aval.shape:
        size *= int(d)
    if size <= 16 and _all_concrete(ct, operands):
        return _pair_by_values(ct, operands, builder, bparams, index, aval, size)
    from .types import type_of
    functions = [ct] + [o for o in operands if isinstance(o, Function)]
    is_fn = tuple(isinstance(o, Function) for o in operands)
    structures = tuple(Structure(type_of(f).program) for f in functions)
    leaves = [leaves_of(f) for f in functions]
    arrays = [o for o in operands if not isinstance(o, Function)]
    compiled = _pair_program(structures, is_fn, builder, bparams, index, tuple(aval.shape),
                             jnp.dtype(aval.dtype))
    return compiled([list(x) for x in leaves], list(arrays))


@functools.lru_cache(maxsize=256)
def _pair_program(structures, is_fn, builder, bparams, index, shape, dtype):
    return jax.jit(functools.partial(_pair_compute, structures=structures, is_fn=is_fn, builder=builder,
                                     bparams=bparams, index=index, shape=shape, dtype=dtype))


def _all_concrete(ct: Function, operands) -> bool:
    if ct.traced:
        return False
    return not any(o.traced if isinstance(o, Function) else isinstance(o, jax.core.Tracer)
                   for o in operands)


def _paired(ct: Function, phi: Function, evaluator: engine.Evaluator):
    """<ct, phi>: each term of ct paired with phi pushed through the term's template."""
    from .builders import compose, terms
    from .callables import Inner
    from .function import substitute
    total = 0.0
    for t in terms(ct):
        pushed = substitute(t.template, t.hole, phi)
        total = total + engine.integrate(compose(t.base, pushed, outer=Inner()), t.base_grids, evaluator)
    return total


def _pair_by_values(ct, operands, builder, bparams, index, aval, size):
    """The pairing for a small array from values on the grids: the operator is linear in the array,
    so component j of the gradient is <ct, op(e_j)>; with the eager evaluator, nothing is compiled
    anew when the functions involved have been evaluated on these grids before."""
    from .builders import BUILDERS
    build, out = BUILDERS[builder], []
    evaluator = engine.Evaluator(persistent=True)
    for j in range(size):
        basis = jnp.zeros((size,), aval.dtype).at[j].set(1).reshape(tuple(aval.shape))
        ops = list(operands)
        ops.insert(index, basis)
        out.append(_paired(ct, build(*ops, **dict(bparams)), evaluator))
    return jnp.reshape(jnp.stack(out), tuple(aval.shape)).astype(aval.dtype)


def _pair_compute(leaves, arrays, *, structures, is_fn, builder, bparams, index, shape, dtype):
    from .builders import BUILDERS
    functions = [s.function(x) for s, x in zip(structures, leaves)]
    ct, fns, arrs = functions[0], iter(functions[1:]), iter(arrays)
    operands = [next(fns) if f else next(arrs) for f in is_fn]
    build = BUILDERS[builder]

    def total(value):
        ops = list(operands)
        ops.insert(index, value)
        return _paired(ct, build(*ops, **dict(bparams)), engine.Evaluator(persistent=False))

    return jax.grad(total)(jnp.zeros(shape, dtype))
