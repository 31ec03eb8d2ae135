"""The functional primitives, with their JVP and transpose rules.

Each operator is a JAX primitive over Function values. Applying one builds a node (builders.py); its
abstract evaluation builds the same node on abstract functions, so the type it promises is the type
it delivers. JVP rules return tangent *functions*; transpose rules return cotangent functions, and
where no rule can exist (compose with respect to its outer function needs the inner function's
inverse; point evaluation's transpose is a Dirac delta) they raise a FunctionalError saying so.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from shardkit.ir import _jax

from . import builders, engine, lowlevel
from .batching import evaluate_rule, structure_rule
from .callables import BroadcastTo, JvpOf, SumTo, TransposeOf
from .errors import FunctionalError
from .function import leaves_of
from .types import abstract, type_of

is_zero = _jax.is_zero
is_undefined = _jax.is_undefined


def _spec(x):
    """The spec of a Function, a traced Function, or an undefined (linear) transpose operand."""
    if is_undefined(x):
        return _jax.undefined_aval(x).spec
    return x.spec


def _zero_of(out) -> Any:
    """A symbolic zero tangent for a primitive's output (a Function or an array)."""
    return _jax.zero_like_aval(jax.typeof(out))


def _sum(terms: list, out):
    if not terms:
        return _zero_of(out)
    if len(terms) == 1:
        return terms[0]
    return add_p.bind(*terms, ct=False)


LINEAR = "linear"


def _define(name: str, build: Callable, *, jvp=LINEAR, transpose=None, batch=None) -> Any:
    """A primitive whose result is the Function `build` makes; jvp=LINEAR: linear in operand 0."""
    def apply(*args, **params):
        return build(*args, **params)

    def abstract_eval(*avals, **params):
        return type_of(build(*[abstract(a) for a in avals], **params))

    holder: list = []
    if jvp is LINEAR:
        jvp = _linear_jvp(holder)
    prim = _jax.define_high_primitive("functional." + name, apply=apply, abstract_eval=abstract_eval,
                                      jvp=jvp, transpose=transpose,
                                      batch=batch or structure_rule(name, build))
    holder.append(prim)
    return prim


def _linear_jvp(holder: list):
    """JVP of a primitive linear in its first operand (a function), constant in the others."""
    def jvp(primals, tangents, **params):
        prim = holder[0]
        out = prim.bind(*primals, **params)
        for i, t in enumerate(tangents[1:], start=1):
            if not is_zero(t):
                raise FunctionalError(f"{prim.name}: cannot differentiate with respect to operand {i}")
        if is_zero(tangents[0]):
            return out, _zero_of(out)
        return out, prim.bind(tangents[0], *primals[1:], **params)
    return jvp


def _no_transpose(name: str, why: str):
    def transpose(cotangent, *operands, **params):
        raise FunctionalError(f"{name}: no transpose rule: {why}")
    return transpose


# -- const: a constant function of an array ----------------------------------------------------------


def _const_jvp(primals, tangents, *, args, dtype):
    out = const_p.bind(*primals, args=args, dtype=dtype)
    if is_zero(tangents[0]):
        return out, _zero_of(out)
    return out, const_p.bind(tangents[0], args=args, dtype=dtype)


def _const_transpose(ct, value, *, args, dtype):
    if is_zero(ct):
        return [None]
    aval = _jax.undefined_aval(value)
    return [dual_p.bind(ct, builder="const", bparams=(("args", args), ("dtype", dtype)), index=0,
                        aval=aval)]


const_p = _define("const", builders.const, jvp=_const_jvp, transpose=_const_transpose)


# -- compose --------------------------------------------------------------------------------------------


def _compose_jvp(primals, tangents, *, outer, linear, ct):
    out = compose_p.bind(*primals, outer=outer, linear=linear, ct=ct)
    terms = []
    if outer is None:
        outer_fn, inners, t_outer, t_inners = primals[0], primals[1:], tangents[0], tangents[1:]
        if not is_zero(t_outer):
            terms.append(compose_p.bind(t_outer, *inners, outer=None, linear=(0,), ct=None))
        mask = tuple(i for i, t in enumerate(t_inners) if not is_zero(t))
        if mask:
            lin = linearize_p.bind(outer_fn, argnums=mask)
            dots = [t_inners[i] for i in mask]
            n = len(inners)
            terms.append(compose_p.bind(lin, *inners, *dots, outer=None,
                                        linear=tuple(1 + n + k for k in range(len(mask))), ct=None))
    else:
        inners = primals
        mask = tuple(i for i, t in enumerate(tangents) if not is_zero(t))
        if mask:
            n = len(inners)
            dots = [tangents[i] for i in mask]
            terms.append(compose_p.bind(*inners, *dots, outer=JvpOf(outer, n, mask),
                                        linear=tuple(n + k for k in range(len(mask))), ct=None))
    return out, _sum(terms, out)


def _compose_transpose_rule(cotangent, *operands, outer, linear, ct):
    n = len(operands)
    if is_zero(cotangent):
        return [None] * n
    undefined = [i for i, x in enumerate(operands) if is_undefined(x)]
    if outer is None and 0 in undefined:
        outer_spec = _spec(operands[0])
        inner_specs = ", ".join(str(_spec(x)) for x in operands[1:])
        raise FunctionalError(
            f"compose: cannot transpose compose(outer, *inner) with respect to the outer function "
            f"{outer_spec}: that needs the inverse of the inner function(s) ({inner_specs}). "
            f"Differentiate with respect to the inner functions, or write the outer function as a "
            f"plain callable (compose(jnp.exp, f)) when it is fixed.")
    for i in undefined:
        if i not in linear:
            raise FunctionalError(f"compose: the operator is not linear in operand {i} "
                                  f"({_spec(operands[i])}), so it has no transpose there")
    if len(undefined) > 1 and outer in _SEPARATELY_LINEAR:
        raise FunctionalError(f"compose: {getattr(outer, '__name__', outer)} of two linear functions is "
                              f"not linear, so it has no transpose")
    results: list = [None] * n
    for i in undefined:
        zero = tuple(j for j in undefined if j != i)
        if outer is not None:
            types = tuple((_spec(x).ret, _spec(x).ret_dtype) for x in operands)
            rule = TransposeOf(outer, i, zero, types)
            defined = [operands[j] for j in range(n) if j not in undefined]
            results[i] = compose_p.bind(*defined, cotangent, outer=rule, linear=(len(defined),),
                                        ct=len(defined))
        else:
            outer_fn = operands[0]
            lt = ltranspose_p.bind(outer_fn, argnum=i - 1, zero=tuple(j - 1 for j in zero))
            ordered = []
            for j in range(1, n):
                if j == i:
                    position = len(ordered)
                    ordered.append(cotangent)
                elif j not in zero:
                    ordered.append(operands[j])
            results[i] = compose_p.bind(lt, *ordered, outer=None, linear=(1 + position,),
                                        ct=1 + position)
    return results


_SEPARATELY_LINEAR = (jnp.multiply, jnp.divide)

compose_p = _define("compose", builders.compose, jvp=_compose_jvp, transpose=_compose_transpose_rule)


# -- add ---------------------------------------------------------------------------------------------------


def _add_jvp(primals, tangents, *, ct):
    out = add_p.bind(*primals, ct=ct)
    live = [t for t in tangents if not is_zero(t)]
    if not live:
        return out, _zero_of(out)
    total = live[0] if len(live) == 1 else add_p.bind(*live, ct=False)
    if _spec(total).ret != _spec(out).ret:
        total = compose_p.bind(total, outer=BroadcastTo(_spec(out).ret), linear=(0,), ct=None)
    return out, total


def _add_transpose(cotangent, *operands, ct):
    if is_zero(cotangent):
        return [None] * len(operands)
    results = []
    for x in operands:
        if not is_undefined(x):
            results.append(None)
            continue
        shape = _spec(x).ret
        if _spec(cotangent).ret == shape:
            results.append(cotangent)
        else:
            results.append(compose_p.bind(cotangent, outer=SumTo(shape), linear=(0,), ct=0))
    return results


add_p = _define("add", builders.add, jvp=_add_jvp, transpose=_add_transpose)


# -- nabla, linearize, linear_transpose -----------------------------------------------------------------


def _nabla_transpose(cotangent, f, *, argnum):
    if is_zero(cotangent):
        return [None]
    spec = _spec(f)
    return [nabla_t_p.bind(cotangent, argnum=argnum, ret=spec.ret, arg=spec.args[argnum])]


nabla_p = _define("nabla", builders.nabla, transpose=_nabla_transpose)
nabla_t_p = _define("nabla_transpose", builders.neg_div, transpose=_no_transpose(
    "nabla_transpose", "transposing the transpose of nabla is not supported"))

linearize_p = _define("linearize", builders.linearize, transpose=_no_transpose(
    "linearize", "linearize(f) is not linear in f's arguments as a whole; transpose the linearized "
                 "function itself with linear_transpose(linearize(f), argnum=...)"))
ltranspose_p = _define("linear_transpose", builders.ltranspose, transpose=_no_transpose(
    "linear_transpose", "transposing linear_transpose with respect to its function is not supported"))


# -- arguments: permute, partial, broadcast ---------------------------------------------------------------


def _permute_transpose(cotangent, f, *, perm, ct):
    if is_zero(cotangent):
        return [None]
    inverse = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))
    return [permute_p.bind(cotangent, perm=inverse, ct=True)]


permute_p = _define("permute_args", builders.permute, transpose=_permute_transpose)


def _partial_jvp(primals, tangents, *, argnums):
    f, values = primals[0], primals[1:]
    out = partial_p.bind(*primals, argnums=argnums)
    terms = []
    if not is_zero(tangents[0]):
        terms.append(partial_p.bind(tangents[0], *values, argnums=argnums))
    mask = [k for k, t in enumerate(tangents[1:]) if not is_zero(t)]
    if mask:
        n = _spec(f).num_args
        lin = linearize_p.bind(f, argnums=tuple(argnums[k] for k in mask))
        dots = [tangents[1 + k] for k in mask]
        terms.append(partial_p.bind(lin, *values, *dots,
                                    argnums=tuple(argnums) + tuple(n + j for j in range(len(mask)))))
    return out, _sum(terms, out)


def _partial_transpose(cotangent, f, *values, argnums):
    if is_undefined(f):
        raise FunctionalError(
            f"partial: no transpose with respect to the function {_spec(f)}: fixing arguments "
            f"{argnums} is point evaluation there, whose transpose is a Dirac delta (not a function)")
    if is_zero(cotangent):
        return [None] * (1 + len(values))
    undefined = [k for k, v in enumerate(values) if is_undefined(v)]
    results: list = [None] * (1 + len(values))
    for k in undefined:
        others = []
        for j, v in enumerate(values):
            if j == k:
                continue
            if is_undefined(v):
                aval = _jax.undefined_aval(v)
                others.append(jnp.zeros(aval.shape, aval.dtype))
            else:
                others.append(v)
        results[1 + k] = dual_p.bind(cotangent, f, *others, builder="partial",
                                     bparams=(("argnums", tuple(argnums)),), index=1 + k,
                                     aval=_jax.undefined_aval(values[k]))
    return results


partial_p = _define("partial", builders.partial, jvp=_partial_jvp, transpose=_partial_transpose)


def _broadcast_transpose(cotangent, f, *, arg_shapes, argnums):
    if is_zero(cotangent):
        return [None]
    return [integrate_out_p.bind(cotangent, keep=tuple(argnums), num_args=len(arg_shapes))]


broadcast_p = _define("broadcast_args", builders.broadcast, transpose=_broadcast_transpose)

integrate_out_p = _define("integrate_out", builders.integrate_out, transpose=_no_transpose(
    "integrate_out", "second-order transposition through broadcast_args is not supported"))


# -- integrate --------------------------------------------------------------------------------------------


def _integrate_apply(f, *grid_arrays, argnums):
    if len(argnums) == f.num_args:
        builders.check_grid_arrays(f, argnums, grid_arrays)
        ordered = [None] * len(argnums)
        for k, a in enumerate(argnums):
            ordered[a] = (grid_arrays[2 * k], grid_arrays[2 * k + 1])
        if eager_worthwhile(f) and engine.concrete(f, grid_arrays):
            return engine.integrate(f, ordered)
        return lowlevel.integrate(f, [x for g in ordered for x in g])
    return builders.integrate_partial(f, *grid_arrays, argnums=argnums)


def eager_worthwhile(f) -> bool:
    """Whether to evaluate a concrete function node by node with values cached on the nodes (a
    graph with integrals inside, or a large one: what functional gradient descent builds) rather
    than compile it as a whole (best when the same structure is evaluated again and again)."""
    return f.nested or f.size >= 48


def _integrate_abstract(f_type, *grid_avals, argnums):
    f = abstract(f_type)
    if len(argnums) == f.num_args:
        builders.check_grid_arrays(f, argnums, grid_avals)
        return _jax.make_shaped_array(f.spec.ret, f.spec.ret_dtype)
    return type_of(builders.integrate_partial(f, *grid_avals, argnums=argnums))


def _integrate_jvp(primals, tangents, *, argnums):
    out = integrate_p.bind(*primals, argnums=argnums)
    if any(not is_zero(t) for t in tangents[1:]):
        raise FunctionalError("integrate: derivatives with respect to grid nodes or weights are not "
                              "supported; wrap them in jax.lax.stop_gradient")
    if is_zero(tangents[0]):
        return out, _zero_of(out)
    return out, integrate_p.bind(tangents[0], *primals[1:], argnums=argnums)


def _integrate_transpose(cotangent, f, *grid_arrays, argnums):
    if any(is_undefined(g) for g in grid_arrays):
        raise FunctionalError("integrate: not linear in the grid; it has no transpose there")
    if is_zero(cotangent):
        return [None] * (1 + len(grid_arrays))
    spec = _spec(f)
    ct_fn = integrate_t_p.bind(cotangent, *grid_arrays, argnums=tuple(argnums), spec=spec)
    return [ct_fn] + [None] * len(grid_arrays)


_integrate_partial_batch = structure_rule("integrate", builders.integrate_partial)
_integrate_full_batch = evaluate_rule(_integrate_apply)


def _integrate_batch(values, dims, *, argnums):
    """A batch of integrals (an array with a leading batch axis), or of partial integrals (a batch
    of functions)."""
    full = len(argnums) == _spec(values[0]).num_args
    rule = _integrate_full_batch if full else _integrate_partial_batch
    return rule(values, dims, argnums=argnums)


integrate_p = _jax.define_high_primitive(
    "functional.integral", apply=_integrate_apply, abstract_eval=_integrate_abstract,
    jvp=_integrate_jvp, transpose=_integrate_transpose, batch=_integrate_batch)


def _integrate_t_jvp(primals, tangents, *, argnums, spec):
    out = integrate_t_p.bind(*primals, argnums=argnums, spec=spec)
    if is_zero(tangents[0]):
        return out, _zero_of(out)
    return out, integrate_t_p.bind(tangents[0], *primals[1:], argnums=argnums, spec=spec)


integrate_t_p = _define("integrate_transpose", builders.integrate_transpose, jvp=_integrate_t_jvp)


# -- apply: a function at points --------------------------------------------------------------------------


def _apply_apply(f, *xs, batch_ndim):
    return lowlevel.apply(f, xs, batch_ndim)


def _apply_abstract(f_type, *x_avals, batch_ndim):
    spec = f_type.spec
    batch = tuple(x_avals[0].shape[:batch_ndim]) if x_avals else ()
    return _jax.make_shaped_array(batch + spec.ret, spec.ret_dtype)


def _apply_jvp(primals, tangents, *, batch_ndim):
    f, xs = primals[0], primals[1:]
    out = apply_p.bind(*primals, batch_ndim=batch_ndim)
    total = None
    if not is_zero(tangents[0]):
        total = apply_p.bind(tangents[0], *xs, batch_ndim=batch_ndim)
    spec = _spec(f)
    for j, t in enumerate(tangents[1:]):
        if is_zero(t):
            continue
        jac = apply_p.bind(nabla_p.bind(f, argnum=j), *xs, batch_ndim=batch_ndim)
        term = _batched_contract(jac, t, len(spec.args[j]), len(spec.ret), batch_ndim)
        total = term if total is None else total + term
    if total is None:
        return out, _zero_of(out)
    return out, total


def _batched_contract(jac, t, arg_ndim: int, ret_ndim: int, batch_ndim: int):
    """jac (B + ret + arg) . t (B + arg) -> B + ret."""
    t = jnp.asarray(t, jac.dtype)
    shape = t.shape[:batch_ndim] + (1,) * ret_ndim + t.shape[batch_ndim:]
    prod = jac * jnp.reshape(t, shape)
    axes = tuple(range(jac.ndim - arg_ndim, jac.ndim))
    return jnp.sum(prod, axis=axes) if axes else prod


def _apply_transpose(cotangent, f, *xs, batch_ndim):
    if is_undefined(f):
        raise FunctionalError(
            f"evaluating the function {_spec(f)} at a point has no functional transpose: its "
            f"derivative with respect to the function is a Dirac delta at that point. Functionals "
            f"that are differentiated with respect to functions must integrate them: "
            f"integrate(g(f), Grid(nodes, weights)).")
    raise FunctionalError("functional.apply: not linear in the evaluation points")


def _apply_batch(args, dims, *, batch_ndim):
    """vmap over the points: the batch axis becomes one more leading point axis; a batch of
    functions is evaluated member by member (one vmapped computation)."""
    if dims[0] is not None or all(d is None for d in dims):
        return _apply_members(args, dims, batch_ndim=batch_ndim)
    size = next(x.shape[d] for x, d in zip(args[1:], dims[1:]) if isinstance(d, int))
    xs = []
    for x, d in zip(args[1:], dims[1:]):
        if isinstance(d, int):
            xs.append(jnp.moveaxis(x, d, 0))
        else:
            xs.append(jnp.broadcast_to(x, (size,) + tuple(x.shape)))
    return apply_p.bind(args[0], *xs, batch_ndim=batch_ndim + 1), 0


_apply_members = evaluate_rule(_apply_apply)

apply_p = _jax.define_high_primitive(
    "functional.call", apply=_apply_apply, abstract_eval=_apply_abstract, jvp=_apply_jvp,
    transpose=_apply_transpose, batch=_apply_batch)


# -- dual: the transpose of an operator with respect to an array, by pairing with the cotangent -----------


def _dual_apply(cotangent, *operands, builder, bparams, index, aval):
    operands = [x if isinstance(x, builders.Function) or hasattr(x, "ndim") else jnp.asarray(x)
                for x in operands]  # JAX may hand Python scalars over as literals
    return lowlevel.pair(cotangent, operands, builder, bparams, index, aval)


def _dual_abstract(*avals, builder, bparams, index, aval):
    return _jax.make_shaped_array(tuple(aval.shape), aval.dtype)


def _dual_jvp(primals, tangents, **params):
    out = dual_p.bind(*primals, **params)
    if any(not is_zero(t) for t in tangents[1:]):
        raise FunctionalError(f"{params['builder']}: second derivatives with respect to arrays inside "
                              f"functions are not supported")
    if is_zero(tangents[0]):
        return out, _zero_of(out)
    return out, dual_p.bind(tangents[0], *primals[1:], **params)


dual_p = _jax.define_high_primitive(
    "functional.dual", apply=_dual_apply, abstract_eval=_dual_abstract, jvp=_dual_jvp,
    transpose=_no_transpose("dual", "third-order derivatives through array parameters are not supported"),
    batch=evaluate_rule(_dual_apply))



# -- leaves: a traced function taken apart into its arrays (for batching rules under jax.jit) -----------


def _leaves_abstract(f_type):
    return [_jax.make_shaped_array(tuple(a.shape), a.dtype) for a in f_type.lo_ty()]


def _leaves_jvp(primals, tangents):
    raise FunctionalError(
        f"vmap: a function {_spec(primals[0])} that an enclosing jax.grad / jax.jvp differentiates "
        f"cannot be combined with batched values inside jax.vmap (its tangent has no fixed structure). "
        f"Put jax.vmap outside the differentiation, or differentiate with respect to arrays.")


leaves_p = _jax.define_high_primitive(
    "functional.leaves", apply=lambda f: [jnp.asarray(x) for x in leaves_of(f)], abstract_eval=_leaves_abstract,
    multiple_results=True, jvp=_leaves_jvp)
