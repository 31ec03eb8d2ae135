"""Structure builders: make the Function node of each operator, with its spec, and check operands.

A builder touches no array values, so the same code runs on real Functions (when a primitive is
applied) and on abstract ones whose leaves are ShapedArrays (when JAX abstract-evaluates it): the
structure a primitive promises at trace time is exactly the one it builds at run time.

Cotangent functions carry their quadrature grids (`measured` nodes, made by the transpose of
`integrate`). Builders called from transpose rules take `ct=` (the cotangent operand) and apply
themselves to each measured term's density, mapping the grids through; this is what later lets a
cotangent function be paired with arrays (the transposes with respect to arrays inside functions).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .callables import BroadcastTo, NegDiv, Restrict, SumTo, TransposeOf, static_callable
from .errors import FunctionalError
from .function import Function, ShapedArray, callable_name, substitute
from .spec import Spec, check_argnum, check_same_args

Grids = list  # one entry per argument: (nodes, weights) or None


def is_function(x) -> bool:
    return isinstance(x, Function)


def _leaf(x):
    """An array leaf: JAX may hand Python scalars to rules as literals (no .ndim); make them arrays."""
    return x if hasattr(x, "ndim") else jnp.asarray(x)


def _aval(x):
    if isinstance(x, ShapedArray):
        return x
    return jax.typeof(x)


# -- cotangents: densities that remember their grids and how they pair with functions ---------------


@dataclass
class Term:
    """One term of a cotangent function.

    `density` is what the cotangent evaluates to (a functional derivative); `grids` the quadrature
    grid of each of its arguments where known. The term is the linear functional
    phi -> <base, template[hole := phi]> on `base_grids`: pairing through the template is the exact
    adjoint of the discretised program (no integration by parts), which array derivatives need.
    """

    density: Function
    grids: Grids
    base: Function
    base_grids: Grids
    template: Function
    hole: Function


def hole(spec: Spec) -> Function:
    return Function("hole", (), (), (), spec)


def _flat(grids: Grids) -> list:
    return [a for g in grids if g is not None for a in g]


def _unflat(has: tuple, arrays) -> Grids:
    it = iter(arrays)
    return [(next(it), next(it)) if h else None for h in has]


def term_node(term: Term) -> Function:
    """The Function of one cotangent term (its density alone when it carries no grid at all)."""
    if all(g is None for g in term.grids) and all(g is None for g in term.base_grids):
        return term.density
    has = tuple(g is not None for g in term.grids)
    base_has = tuple(g is not None for g in term.base_grids)
    return Function("measured", (has, base_has), (term.density, term.base, term.template, term.hole),
                    _flat(term.grids) + _flat(term.base_grids), term.density.spec)


def measured(density: Function, grids: Grids) -> Function:
    """`density` as the cotangent of an integral on `grids` (it pairs by that quadrature)."""
    if len(grids) != density.num_args:
        raise FunctionalError(f"internal: {len(grids)} grids for a function of {density.num_args} "
                              f"arguments")
    h = hole(density.spec)
    return term_node(Term(density, list(grids), density, list(grids), h, h))


def terms(ct: Function) -> list[Term]:
    """The terms of a cotangent function: sums are split, measured terms read."""
    if ct.kind == "add":
        return [t for child in ct.children for t in terms(child)]
    if ct.kind == "measured":
        has, base_has = ct.params
        n = sum(has)
        density, base, template, h = ct.children
        return [Term(density, _unflat(has, ct.arrays[:2 * n]), base,
                     _unflat(base_has, ct.arrays[2 * n:]), template, h)]
    h = hole(ct.spec)
    return [Term(ct, [None] * ct.num_args, ct, [None] * ct.num_args, h, h)]


def distribute(ct: Function, build: Callable[[Function], Function], remap: Callable[[Grids], Grids],
               forward: Callable[[Function], Function]) -> Function:
    """Apply a transpose builder (linear in the cotangent) to each term; `forward` is the operator
    it transposes (from the new function space to the old), recorded in each term's template."""
    parts = terms(ct)
    if len(parts) == 1 and parts[0].density is ct:
        return build(ct)
    outs = []
    for t in parts:
        density = build(t.density)
        h = hole(density.spec)
        template = substitute(t.template, t.hole, forward(h))
        outs.append(term_node(Term(density, remap(t.grids), t.base, t.base_grids, template, h)))
    return outs[0] if len(outs) == 1 else add(*outs, ct=True)


def _same(grids: Grids) -> Grids:
    return grids


# -- leaves --------------------------------------------------------------------------------------


def make_fn(fn, spec: Spec) -> Function:
    return Function("fn", (static_callable(fn),), (), (), spec)


def const(value, *, args: tuple, dtype) -> Function:
    """The constant function of the given arguments whose value is the array `value`."""
    aval = _aval(value)
    return Function("const", (), (), (_leaf(value),), Spec(args, tuple(aval.shape), dtype, aval.dtype))


def zeros(spec: Spec) -> Function:
    return Function("const", (), (), (jnp.zeros(spec.ret, spec.ret_dtype),), spec)


# -- compose ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _callable_result(outer, types: tuple) -> tuple[tuple[int, ...], Any]:
    structs = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in types]
    out = jax.eval_shape(outer, *structs)
    if not hasattr(out, "shape"):
        raise TypeError(f"it returned {type(out).__name__}, not one array")
    return tuple(out.shape), out.dtype


def callable_result(outer, types: tuple, op: str = "compose"):
    """(shape, dtype) of `outer` applied to arrays of the given (shape, dtype)s."""
    try:
        return _callable_result(outer, types)
    except FunctionalError:
        raise
    except Exception as e:  # the user's function failed on these shapes
        shown = ", ".join(f"{np.dtype(d).name}{list(s)}" for s, d in types)
        raise FunctionalError(f"{op}: the outer function {callable_name(outer)} cannot be applied to "
                              f"values of the inner functions' results ({shown}): {e}") from e


def compose(*operands, outer=None, linear: tuple = (), ct: int | None = None) -> Function:
    """outer(inner_1(x), ..., inner_n(x)); `outer` a static callable or (when None) operand 0.

    `linear`: operand positions outer is jointly linear in (set by JVP rules, read by transposes).
    `ct`: set by transpose rules, the position of the cotangent operand (see `distribute`).
    """
    if ct is not None:
        forward = _compose_forward(operands, outer, ct)
        return distribute(operands[ct],
                          lambda d: compose(*operands[:ct], d, *operands[ct + 1:], outer=outer,
                                            linear=linear), _same, forward)
    if outer is None:
        outer_fn, inners = operands[0], operands[1:]
        if not is_function(outer_fn):
            raise FunctionalError("compose: the outer function must be a Function or a callable")
    else:
        outer_fn, inners = None, operands
    if not inners:
        raise FunctionalError("compose: give at least one inner function")
    for i, g in enumerate(inners):
        if not is_function(g):
            raise FunctionalError(f"compose: inner operand {i} is {type(g).__name__}, not a Function")
    check_same_args("compose", [g.spec for g in inners])
    base = inners[0].spec
    if outer_fn is not None:
        want = outer_fn.spec.args
        have = tuple(g.spec.ret for g in inners)
        if want != have or any(g.spec.ret_dtype != outer_fn.spec.dtype for g in inners):
            raise FunctionalError(
                f"compose: the outer function {outer_fn.spec} takes {len(want)} argument(s) of "
                f"{_shapes(want, outer_fn.spec.dtype)}, but the inner functions return "
                f"{_shapes_list([(g.spec.ret, g.spec.ret_dtype) for g in inners])}")
        ret, ret_dtype = outer_fn.spec.ret, outer_fn.spec.ret_dtype
        return Function("compose", (None, tuple(linear)), operands, (),
                        Spec(base.args, ret, base.dtype, ret_dtype))
    types = tuple((g.spec.ret, g.spec.ret_dtype) for g in inners)
    ret, ret_dtype = callable_result(outer, types)
    return Function("compose", (outer, tuple(linear)), inners, (),
                    Spec(base.args, ret, base.dtype, ret_dtype))


def _compose_forward(operands, outer, ct: int) -> Callable[[Function], Function]:
    """The operator a cotangent-carrying compose transposes (what its template records)."""
    if isinstance(outer, TransposeOf):
        defined = operands[:ct] + operands[ct + 1:]
        rule = Restrict(outer.outer, outer.index, outer.zero, outer.types)
        return lambda phi: compose(*defined, phi, outer=rule, linear=(len(defined),))
    if isinstance(outer, SumTo):
        big = operands[ct].spec.ret
        return lambda phi: compose(phi, outer=BroadcastTo(big), linear=(0,))
    if isinstance(outer, NegDiv):
        argnum = outer.argnum
        return lambda phi: nabla(phi, argnum=argnum)
    if outer is None and operands[0].kind == "ltranspose":
        lt, others = operands[0], operands[1:]
        outer_fn, (argnum, zero) = lt.children[0], lt.params
        rest = [x for j, x in enumerate(others) if j != ct - 1]

        def forward(phi):
            inners, it = [], iter(rest)
            for position, shape in enumerate(outer_fn.spec.args):
                if position == argnum:
                    inners.append(phi)
                elif position in zero:
                    inners.append(zeros(Spec(phi.spec.args, shape, phi.spec.dtype, outer_fn.spec.dtype)))
                else:
                    inners.append(next(it))
            return compose(outer_fn, *inners, linear=(1 + argnum,))
        return forward
    if operands[ct].unknown or (outer is None and operands[0].unknown):
        return lambda phi: phi  # abstract only: the result's type carries no structure anyway
    raise FunctionalError(f"internal: compose carries a cotangent but its outer function "
                          f"{callable_name(outer) if outer is not None else 'Function'} is no transpose")


def _shapes(shapes, dtype) -> str:
    return ", ".join(f"{np.dtype(dtype).name}{list(s)}" for s in shapes) or "nothing"


def _shapes_list(items) -> str:
    return ", ".join(f"{np.dtype(d).name}{list(s)}" for s, d in items)


# -- sums ------------------------------------------------------------------------------------------


def add(*fs: Function, ct: bool = False) -> Function:
    """The sum of functions of the same arguments; results broadcast. With `ct`, sums are flattened."""
    if len(fs) == 1:
        return fs[0]
    check_same_args("add", [f.spec for f in fs])
    try:
        ret = tuple(np.broadcast_shapes(*[f.spec.ret for f in fs]))
    except ValueError:
        raise FunctionalError("add: the functions' results do not broadcast: "
                              + "; ".join(str(f.spec) for f in fs)) from None
    ret_dtype = jnp.result_type(*[f.spec.ret_dtype for f in fs])
    children = fs
    if ct:
        children = [t for f in fs for t in (f.children if f.kind == "add" else (f,))]
    return Function("add", (), children, (), fs[0].spec.with_ret(ret, ret_dtype))


# -- calculus --------------------------------------------------------------------------------------


def nabla(f: Function, *, argnum: int = 0) -> Function:
    """The Jacobian of f with respect to argument `argnum`: result shape ret + that argument's shape."""
    argnum = check_argnum("nabla", f.spec, argnum)
    if not jnp.issubdtype(f.spec.dtype, jnp.inexact):
        raise FunctionalError(f"nabla: the function {f.spec} takes integer arguments; it has no "
                              f"gradient")
    ret = f.spec.ret + f.spec.args[argnum]
    return Function("nabla", (argnum,), (f,), (), f.spec.with_ret(ret))


def neg_div(ct: Function, *, argnum: int, ret: tuple, arg: tuple) -> Function:
    """The transpose of nabla: minus the divergence of the cotangent (boundary terms dropped), which
    pairs with functions through nabla itself."""
    rule = NegDiv(tuple(ret), tuple(arg), argnum)
    return compose(nabla(ct, argnum=argnum), outer=rule, linear=(0,)) if _plain(ct) else \
        distribute(ct, lambda d: compose(nabla(d, argnum=argnum), outer=rule, linear=(0,)), _same,
                   lambda phi: nabla(phi, argnum=argnum))


def _plain(ct: Function) -> bool:
    return ct.kind not in ("add", "measured")


def linearize(f: Function, *, argnums: tuple) -> Function:
    """L(x_1..x_n, t_a for a in argnums) = the JVP of f at x along t."""
    argnums = tuple(check_argnum("linearize", f.spec, a) for a in argnums)
    if len(set(argnums)) != len(argnums):
        raise FunctionalError(f"linearize: argnums {argnums} repeat an argument")
    args = f.spec.args + tuple(f.spec.args[a] for a in argnums)
    return Function("linearize", (argnums,), (f,), (), f.spec.with_args(args))


def ltranspose(f: Function, *, argnum: int, zero: tuple = ()) -> Function:
    """The transpose of f in its linear argument `argnum` (arguments in `zero` taken as zeros and
    removed): the result takes f's other arguments with a cotangent (f's result) in place of
    `argnum`, and returns a value shaped like that argument."""
    argnum = check_argnum("linear_transpose", f.spec, argnum)
    zero = tuple(sorted(check_argnum("linear_transpose", f.spec, z) for z in zero))
    if argnum in zero:
        raise FunctionalError("linear_transpose: the transposed argument cannot also be zeroed")
    if not jnp.issubdtype(f.spec.ret_dtype, jnp.inexact):
        raise FunctionalError(f"linear_transpose: {f.spec} is not a linear function (integer result)")
    args = []
    for position, shape in enumerate(f.spec.args):
        if position == argnum:
            args.append(f.spec.ret)
        elif position not in zero:
            args.append(shape)
    spec = Spec(tuple(args), f.spec.args[argnum], f.spec.dtype, f.spec.dtype)
    return Function("ltranspose", (argnum, zero), (f,), (), spec)


# -- arguments -------------------------------------------------------------------------------------


def permute(f: Function, *, perm: tuple, ct: bool = False) -> Function:
    """g(y_0..y_{n-1}) = f(x) with x[perm[i]] = y_i: argument i of g is argument perm[i] of f."""
    perm = tuple(int(p) for p in perm)
    if sorted(perm) != list(range(f.num_args)):
        raise FunctionalError(f"permute_args: {perm} is not a permutation of the {f.num_args} "
                              f"argument(s) of {f.spec}")
    if ct:
        inverse = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))
        return distribute(f, lambda d: permute(d, perm=perm), lambda g: [g[p] for p in perm],
                          lambda phi: permute(phi, perm=inverse))
    args = tuple(f.spec.args[p] for p in perm)
    return Function("permute", (perm,), (f,), (), f.spec.with_args(args))


def partial(f: Function, *values, argnums: tuple) -> Function:
    """f with the arguments at `argnums` fixed to `values` (arrays); the rest stay arguments."""
    argnums = tuple(check_argnum("partial", f.spec, a) for a in argnums)
    if len(set(argnums)) != len(argnums):
        raise FunctionalError(f"partial: argnums {argnums} repeat an argument")
    if len(values) != len(argnums):
        raise FunctionalError(f"partial: {len(values)} value(s) for argnums {argnums}")
    for a, v in zip(argnums, values):
        aval = _aval(v)
        if tuple(aval.shape) != f.spec.args[a]:
            raise FunctionalError(f"partial: argument {a} of {f.spec} has shape {f.spec.args[a]}, "
                                  f"the value given has shape {tuple(aval.shape)}")
    args = tuple(s for i, s in enumerate(f.spec.args) if i not in argnums)
    return Function("partial", (argnums,), (f,), [_leaf(v) for v in values], f.spec.with_args(args))


def broadcast(f: Function, *, arg_shapes: tuple, argnums: tuple) -> Function:
    """g(x_0..x_{m-1}) = f(x_{argnums[0]}, ...): f as a function of more arguments, ignoring the rest."""
    arg_shapes = tuple(tuple(s) for s in arg_shapes)
    argnums = tuple(int(a) for a in argnums)
    if len(argnums) != f.num_args or len(set(argnums)) != len(argnums):
        raise FunctionalError(f"broadcast_args: argnums {argnums} must name {f.num_args} distinct "
                              f"positions, one per argument of {f.spec}")
    for i, a in enumerate(argnums):
        if not 0 <= a < len(arg_shapes):
            raise FunctionalError(f"broadcast_args: position {a} is out of range for "
                                  f"{len(arg_shapes)} argument(s)")
        if arg_shapes[a] != f.spec.args[i]:
            raise FunctionalError(f"broadcast_args: argument {i} of {f.spec} has shape {f.spec.args[i]} "
                                  f"but goes to position {a} of shape {arg_shapes[a]}")
    return Function("broadcast", (argnums,), (f,), (), f.spec.with_args(arg_shapes))


# -- integration -----------------------------------------------------------------------------------


def check_grid_arrays(f: Function, argnums: tuple, arrays: Sequence) -> None:
    """Each integrated argument needs nodes (N, *arg_shape) and weights (N,)."""
    for k, a in enumerate(argnums):
        nodes, weights = _aval(arrays[2 * k]), _aval(arrays[2 * k + 1])
        want = f.spec.args[a]
        if tuple(nodes.shape[1:]) != want or nodes.ndim != len(want) + 1:
            raise FunctionalError(
                f"integrate: argument {a} of {f.spec} has shape {want}, so its grid nodes must have "
                f"shape (N, {', '.join(map(str, want))}{',' if len(want) == 1 else ''}) but they have "
                f"shape {tuple(nodes.shape)}")
        if weights.ndim != 1 or weights.shape[0] != nodes.shape[0]:
            raise FunctionalError(f"integrate: the grid for argument {a} has {nodes.shape[0]} nodes "
                                  f"but weights of shape {tuple(weights.shape)}; give one weight per node")


def integrate_partial(f: Function, *grid_arrays, argnums: tuple) -> Function:
    """f integrated over the arguments at `argnums` (a function of the remaining ones)."""
    check_grid_arrays(f, argnums, grid_arrays)
    args = tuple(s for i, s in enumerate(f.spec.args) if i not in argnums)
    return Function("integrate", (tuple(argnums),), (f,), grid_arrays, f.spec.with_args(args))


def integrate_transpose(ct, *grid_arrays, argnums: tuple, spec: Spec) -> Function:
    """The transpose of integrate: the cotangent spread over the integrated arguments, as a density
    together with the grids it was integrated on (so it can later be paired with arrays)."""
    n = spec.num_args
    given = {a: (grid_arrays[2 * k], grid_arrays[2 * k + 1]) for k, a in enumerate(argnums)}
    remaining = tuple(i for i in range(n) if i not in given)
    if not remaining:
        density = const(ct, args=spec.args, dtype=spec.dtype)
        return measured(density, [given[i] for i in range(n)])

    def remap(grids):
        rest = iter(grids)
        return [given[i] if i in given else next(rest) for i in range(n)]

    grid_arrays = tuple(grid_arrays)
    return distribute(ct, lambda d: broadcast(d, arg_shapes=spec.args, argnums=remaining), remap,
                      lambda phi: integrate_partial(phi, *grid_arrays, argnums=tuple(argnums)))


def integrate_out(ct: Function, *, keep: tuple, num_args: int) -> Function:
    """The transpose of broadcast: integrate the cotangent over the arguments not in `keep`, on the
    grids its terms carry, leaving a function of the kept arguments in `keep`'s order."""
    dropped = tuple(i for i in range(num_args) if i not in keep)
    order = sorted(keep)
    perm = tuple(order.index(k) for k in keep)
    full_shapes = ct.spec.args
    parts = []
    for t in terms(ct):
        missing = [i for i in dropped if t.grids[i] is None]
        if missing:
            raise FunctionalError(
                f"broadcast_args: its transpose integrates the cotangent over argument(s) {missing}, "
                f"but the cotangent function carries no quadrature grid for them; a cotangent with "
                f"grids comes from a functional that integrates (integrate(f, grid)) over them")
        arrays = [a for i in dropped for a in t.grids[i]]
        reduced = integrate_partial(t.density, *arrays, argnums=dropped) if dropped else t.density
        if perm != tuple(range(len(perm))):
            reduced = permute(reduced, perm=perm)
        h = hole(reduced.spec)
        template = substitute(t.template, t.hole,
                              broadcast(h, arg_shapes=full_shapes, argnums=tuple(keep)))
        parts.append(term_node(Term(reduced, [t.grids[k] for k in keep], t.base, t.base_grids,
                                    template, h)))
    return parts[0] if len(parts) == 1 else add(*parts, ct=True)


# -- which builder a primitive uses (by name), for transposes that pair cotangents with arrays ------

BUILDERS: dict[str, Callable[..., Function]] = {
    "const": lambda value, *, args, dtype: const(value, args=args, dtype=dtype),
    "partial": partial,
}
