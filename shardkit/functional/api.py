"""The user-facing operators of shardkit.functional (names as in DESIGN.md), with argument checks.

Every operator binds a primitive, so it works the same on concrete Functions and inside jax.jit,
jax.grad and jax.make_jaxpr; the checks here run first so errors name the operator and the specs.
"""
from __future__ import annotations

import builtins
import numbers
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import builders, engine, lowlevel
from shardkit.ir import _jax

from .batching import vmapped
from .callables import GetItem, Index, Inner, Stack, TracedCallable, WithParams, static_callable
from .errors import FunctionalError
from .function import Function
from .grid import Grid
from .primitives import (add_p, apply_p, broadcast_p, compose_p, const_p, integrate_p, linearize_p,
                         ltranspose_p, nabla_p, partial_p, permute_p)
from .spec import Spec, as_shape, check_argnum, check_same_args
from .types import FunctionType

__all__ = [
    "function", "constant", "Grid", "integrate", "compose", "nabla", "linearize", "linear_transpose",
    "permute_args", "partial", "broadcast_args", "zip", "split", "braket", "apply", "is_function",
]


def is_function(x) -> bool:
    """Whether x is a Function, or a traced value whose type is a function type."""
    if isinstance(x, Function):
        return True
    return isinstance(x, jax.core.Tracer) and isinstance(x.aval, FunctionType)


def _traced(x) -> bool:
    if isinstance(x, jax.core.Tracer):
        return True
    return isinstance(x, Function) and x.traced


def _make(prim, *operands, **params):
    """Bind `prim`, or, when no operand is traced, build its result right away: a function made
    from concrete functions and arrays stays a concrete (callable) Function inside jax.jit too."""
    if any(isinstance(x, Function) and x.batch is not None for x in operands):
        return vmapped(lambda *xs: _make(prim, *xs, **params), operands)
    if any(_traced(x) for x in operands):
        return prim.bind(*operands, **params)
    return prim.impl(*operands, **params)


def _require(op: str, x, what: str = "operand") -> Spec:
    if not is_function(x):
        raise FunctionalError(f"{op}: the {what} must be a Function (made with function(fn, arg_shapes)), "
                              f"got {type(x).__name__}")
    return x.spec


# -- making functions -----------------------------------------------------------------------------------


def function(fn: Callable, arg_shapes: Sequence, dtype=jnp.float32, *, params: Any = None) -> Function:
    """A Function from a Python function of arrays, one shape per argument.

    `function(jnp.sin, [()])` is R -> R; `function(rho, [(3,)])` is R^3 -> R. With `params` (a pytree
    of arrays), `fn(params, *args)` is called and derivatives flow to the params as well.
    """
    if isinstance(fn, Function):
        return fn
    if not callable(fn):
        raise FunctionalError(f"function: expected a callable, got {type(fn).__name__}")
    if isinstance(arg_shapes, (int, np.integer)) or not isinstance(arg_shapes, (list, tuple)):
        raise FunctionalError(f"function: arg_shapes must be a list with one shape per argument (e.g. "
                              f"[()] for R -> R, [(3,)] for R^3 -> R); got {arg_shapes!r}")
    shapes = tuple(as_shape(s, f"function: argument {i}") for i, s in enumerate(arg_shapes))
    dtype = jnp.dtype(dtype)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    leaves = [x if isinstance(x, (jax.Array, jax.core.Tracer)) else jnp.asarray(x) for x in leaves]
    if params is not None:
        fn_static = WithParams(static_callable(fn), treedef, len(leaves))
        leaf_shapes = tuple(tuple(jnp.shape(x)) for x in leaves)
        structs = [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in leaves]
    else:
        fn_static, leaf_shapes, structs = static_callable(fn), (), []
    structs = structs + [jax.ShapeDtypeStruct(s, dtype) for s in shapes]
    name = getattr(fn, "__name__", None) or type(fn).__name__
    returned: list = []

    def traced(*xs):
        returned.append(fn_static(*xs))
        if not hasattr(returned[-1], "shape"):
            return []
        return [returned[-1]]

    try:
        closed, hoisted = _jax.trace_hoisted(traced, [(s.shape, s.dtype) for s in structs])
    except Exception as e:
        raise FunctionalError(f"function: {name!r} cannot be called on arguments "
                              f"of shapes {list(shapes)} ({dtype.name}): {e}") from e
    if not hasattr(returned[-1], "shape"):
        raise FunctionalError(f"function: {name!r} must return one array, "
                              f"got {type(returned[-1]).__name__}")
    returned.clear()
    out = _jax.jaxpr_out_avals(closed)[0]
    if any(isinstance(h, jax.core.Tracer) for h in hoisted):
        # fn closes over values of an enclosing jax.vmap / jax.jit / jax.grad: they become leaves
        fn_static = TracedCallable(closed, name)
        hoisted = [h if isinstance(h, (jax.Array, jax.core.Tracer)) else jnp.asarray(h) for h in hoisted]
        leaves = hoisted + leaves
        leaf_shapes = tuple(tuple(jnp.shape(h)) for h in hoisted) + leaf_shapes
    spec = Spec(leaf_shapes + shapes, tuple(out.shape), dtype, out.dtype)
    node = builders.make_fn(fn_static, spec)
    if not leaves:
        return node
    return _make(partial_p, node, *leaves, argnums=tuple(range(len(leaves))))


def constant(value: Any, arg_shapes: Sequence, dtype=jnp.float32) -> Function:
    """The constant function of the given arguments whose value is `value` (an array)."""
    shapes = tuple(as_shape(s, f"constant: argument {i}") for i, s in enumerate(arg_shapes))
    return _make(const_p, _as_array(value), args=shapes, dtype=jnp.dtype(dtype))


def _as_array(x, dtype=None):
    if isinstance(x, (jax.Array, jax.core.Tracer)):
        return x if dtype is None or x.dtype == dtype else x.astype(dtype)
    return jnp.asarray(x, dtype=dtype)


# -- evaluation --------------------------------------------------------------------------------------------


def apply(f, *xs) -> Any:
    """f(*xs): the function at one point (each x shaped exactly as its argument)."""
    spec = _require("apply", f, "function")
    if len(xs) != spec.num_args:
        raise FunctionalError(f"a function {spec} takes {spec.num_args} argument(s), called with {len(xs)}")
    args = []
    for i, (x, shape) in enumerate(builtins.zip(xs, spec.args)):
        if is_function(x):
            raise FunctionalError(f"calling a function {spec} with a Function as argument {i}: to chain "
                                  f"functions use compose(f, g)")
        x = _as_array(x, spec.dtype)
        if tuple(x.shape) != shape:
            raise FunctionalError(f"a function {spec} was called with argument {i} of shape "
                                  f"{tuple(x.shape)}; it takes shape {shape} (use jax.vmap(f) to "
                                  f"evaluate it at many points)")
        args.append(x)
    if isinstance(f, Function) and f.batch is not None:  # a batch of functions at one point
        return vmapped(lambda g, *a: apply(g, *a), [f, *args])
    if not _traced(f):  # a concrete function: straight to the array level
        # node by node (values cached on grids) only when integrals inside make it pay: a new point
        # is a new point set, so a large graph without integrals would run op by op at each point;
        # compiled, it costs one compile per structure and one dispatch per call
        if f.nested and engine.concrete(f, args):
            return engine.apply(f, args, 0)
        return lowlevel.apply(f, args, 0)
    return apply_p.bind(f, *args, batch_ndim=0)


# -- operators ------------------------------------------------------------------------------------------------


def compose(outer: Callable | Function, *inner: Function) -> Function:
    """x -> outer(inner_1(x), ..., inner_n(x)); `outer` is a Function or a plain callable (jnp.exp)."""
    if not inner:
        raise FunctionalError("compose: give at least one inner function: compose(outer, g)")
    for i, g in enumerate(inner):
        _require("compose", g, f"inner function {i}")
    check_same_args("compose", [g.spec for g in inner])
    if is_function(outer):
        return _make(compose_p, outer, *inner, outer=None, linear=(), ct=None)
    if not callable(outer):
        raise FunctionalError(f"compose: the outer function must be a Function or a callable, got "
                              f"{type(outer).__name__}")
    return _make(compose_p, *inner, outer=static_callable(outer), linear=(), ct=None)


def nabla(f, argnum: int = 0) -> Function:
    """The gradient (Jacobian) of f in argument `argnum`: result shape f's result + that argument's.

    Its transpose (used by jax.grad) is minus the divergence, with boundary terms dropped: exact when
    the cotangent vanishes on the boundary of the integration domain.
    """
    spec = _require("nabla", f)
    argnum = check_argnum("nabla", spec, argnum)
    return _make(nabla_p, f, argnum=argnum)


def linearize(f, argnums: int | Sequence[int] | None = None) -> Function:
    """L(x_1..x_n, t_1..t_k) = the JVP of f at x along t in the arguments `argnums` (default: all)."""
    spec = _require("linearize", f)
    if argnums is None:
        argnums = tuple(range(spec.num_args))
    elif isinstance(argnums, (int, np.integer)):
        argnums = (int(argnums),)
    return _make(linearize_p, f, argnums=tuple(check_argnum("linearize", spec, a) for a in argnums))


def linear_transpose(f, argnum: int | None = None) -> Function:
    """The transpose of a function linear in argument `argnum` (the others held fixed): it takes a
    value of f's result shape in that position and returns one of that argument's shape."""
    spec = _require("linear_transpose", f)
    if argnum is None:
        if spec.num_args != 1:
            raise FunctionalError(f"linear_transpose: {spec} has {spec.num_args} arguments; say which one "
                                  f"it is linear in with argnum=")
        argnum = 0
    return _make(ltranspose_p, f, argnum=check_argnum("linear_transpose", spec, argnum), zero=())


def permute_args(f, perm: Sequence[int]) -> Function:
    """g(y_0, ..., y_{n-1}) = f(x) with x[perm[i]] = y_i: argument i of g is argument perm[i] of f."""
    _require("permute_args", f)
    return _make(permute_p, f, perm=tuple(int(p) for p in perm), ct=False)


def partial(f, *values, argnums: Sequence[int] | None = None) -> Function:
    """f with arguments fixed to arrays: `argnums` (default: the leading ones) get `values`."""
    spec = _require("partial", f)
    if argnums is None:
        argnums = tuple(range(len(values)))
    elif isinstance(argnums, (int, np.integer)):
        argnums = (int(argnums),)
    argnums = tuple(check_argnum("partial", spec, a) for a in argnums)
    if len(argnums) != len(values):
        raise FunctionalError(f"partial: {len(values)} value(s) for argnums {argnums}")
    arrays = []
    for a, v in builtins.zip(argnums, values):
        if is_function(v):
            raise FunctionalError("partial: fixes arguments to arrays; to feed a function's output "
                                  "into another, use compose")
        arrays.append(_as_array(v, spec.dtype))
    return _make(partial_p, f, *arrays, argnums=argnums)


def broadcast_args(f, arg_shapes: Sequence, argnums: Sequence[int]) -> Function:
    """f as a function of more arguments: g(x_0..x_{m-1}) = f(x_{argnums[0]}, x_{argnums[1]}, ...).

    Its transpose integrates the cotangent over the other arguments, on the grids of the functional
    that produced it.
    """
    _require("broadcast_args", f)
    shapes = tuple(as_shape(s, f"broadcast_args: argument {i}") for i, s in enumerate(arg_shapes))
    return _make(broadcast_p, f, arg_shapes=shapes, argnums=tuple(int(a) for a in argnums))


def zip(*fs) -> Function:
    """The functions' results stacked along a new leading axis (same arguments, same result shape)."""
    if not fs:
        raise FunctionalError("zip: give at least one function")
    specs = [_require("zip", f, f"function {i}") for i, f in enumerate(fs)]
    check_same_args("zip", specs)
    if len({(s.ret, s.ret_dtype) for s in specs}) != 1:
        raise FunctionalError("zip: the functions' results differ: " + "; ".join(map(str, specs)))
    return _make(compose_p, *fs, outer=Stack(), linear=(), ct=None)


def split(f) -> tuple:
    """The inverse of zip: one function per entry of the leading axis of f's result."""
    spec = _require("split", f)
    if not spec.ret:
        raise FunctionalError(f"split: {spec} returns a scalar; nothing to split")
    return tuple(_make(compose_p, f, outer=Index(i), linear=(), ct=None) for i in range(spec.ret[0]))


# -- integration ------------------------------------------------------------------------------------------------


def integrate(f, grid: Grid | Sequence[Grid | None] | None = None) -> Any:
    """The integral of f by quadrature on explicit grids: a Grid (one argument) or one Grid per
    argument (None leaves that argument free, and the result is a function of those).

    There is no default: without a grid there is no integral (and no silent zero).
    """
    spec = _require("integrate", f, "integrand")
    if grid is None:
        raise FunctionalError(
            f"integrate: no grid given for the integrand {spec}. Integrals are computed by quadrature "
            f"on explicit points: integrate(f, Grid(nodes, weights)) with nodes shaped (N, *arg_shape), "
            f"or a tuple with one Grid per argument")
    grids = (grid,) if isinstance(grid, Grid) else tuple(grid)
    if len(grids) != spec.num_args:
        raise FunctionalError(f"integrate: the integrand {spec} has {spec.num_args} argument(s) but "
                              f"{len(grids)} grid(s) were given; give one Grid (or None) per argument")
    argnums, arrays = [], []
    for i, g in enumerate(grids):
        if g is None:
            continue
        if not isinstance(g, Grid):
            raise FunctionalError(f"integrate: grid {i} is {type(g).__name__}, not a Grid(nodes, weights)")
        if g.arg_shape != spec.args[i]:
            raise FunctionalError(
                f"integrate: argument {i} of the integrand {spec} has shape {spec.args[i]}, but the grid "
                f"given for it has nodes of shape {tuple(g.nodes.shape)}, i.e. points of shape "
                f"{g.arg_shape}; nodes must be shaped (N, *arg_shape)")
        argnums.append(i)
        arrays += [_as_array(g.nodes, spec.dtype), _as_array(g.weights, spec.dtype)]
    if not argnums:
        raise FunctionalError("integrate: every grid is None; integrate over at least one argument")
    return _make(integrate_p, f, *arrays, argnums=tuple(argnums))


def braket(f, g, grid: Grid | Sequence[Grid | None]) -> Any:
    """<f, g> = the integral of the inner product of f(x) and g(x) on the grid(s)."""
    spec_f, spec_g = _require("braket", f, "first function"), _require("braket", g, "second function")
    check_same_args("braket", [spec_f, spec_g])
    if spec_f.ret != spec_g.ret:
        raise FunctionalError(f"braket: the functions' results differ ({spec_f} vs {spec_g})")
    return integrate(_make(compose_p, f, g, outer=Inner(), linear=(), ct=None), grid)


# -- arithmetic on functions ---------------------------------------------------------------------------------


def _lift(op: str, f_spec: Spec, x):
    """A scalar or array operand of arithmetic with a function, as a constant function."""
    if is_function(x):
        return x
    if isinstance(x, (jax.Array, jax.core.Tracer)):
        return _make(const_p, x, args=f_spec.args, dtype=f_spec.dtype)
    if isinstance(x, (numbers.Number, np.ndarray, np.generic)) and not isinstance(x, bool):
        value = jnp.asarray(x, dtype=f_spec.ret_dtype)
        return _make(const_p, value, args=f_spec.args, dtype=f_spec.dtype)
    raise FunctionalError(f"{op}: cannot combine a function {f_spec} with {type(x).__name__}")


def _binary(op: str, fn: Callable, a, b, linear: tuple = ()) -> Function:
    spec = a.spec if is_function(a) else b.spec
    a, b = _lift(op, spec, a), _lift(op, spec, b)
    check_same_args(op, [a.spec, b.spec])
    return _make(compose_p, a, b, outer=fn, linear=linear, ct=None)


def add(a, b) -> Function:
    spec = a.spec if is_function(a) else b.spec
    a, b = _lift("+", spec, a), _lift("+", spec, b)
    check_same_args("+", [a.spec, b.spec])
    return _make(add_p, a, b, ct=False)


def sub(a, b) -> Function:
    return _binary("-", jnp.subtract, a, b, linear=(0, 1))


def mul(a, b) -> Function:
    return _binary("*", jnp.multiply, a, b, linear=(0, 1))


def div(a, b) -> Function:
    return _binary("/", jnp.divide, a, b, linear=(0,))


def power(a, b) -> Function:
    if is_function(a) and isinstance(b, numbers.Number) and not isinstance(b, bool):
        return _make(compose_p, a, outer=PowerBy(b), linear=(), ct=None)
    return _binary("**", jnp.power, a, b)


def neg(a) -> Function:
    return _make(compose_p, a, outer=jnp.negative, linear=(0,), ct=None)


def getitem(a, key) -> Function:
    try:
        hash(key)
    except TypeError:
        raise FunctionalError("indexing a function's result needs a static index (ints and slices)")
    return _make(compose_p, a, outer=GetItem(key), linear=(0,), ct=None)


class PowerBy:
    """v ** p for a fixed Python number p (integer powers use lax.integer_pow)."""

    __slots__ = ("p", "__weakref__")

    def __init__(self, p):
        self.p = p

    def __call__(self, v):
        if float(self.p).is_integer() and abs(self.p) < 2 ** 31:
            return jax.lax.integer_pow(v, int(self.p))
        return jnp.power(v, jnp.asarray(self.p, v.dtype))

    def __hash__(self):
        return hash(("PowerBy", self.p))

    def __eq__(self, other):
        return isinstance(other, PowerBy) and other.p == self.p

    def describe(self) -> str:
        return f"pow{self.p}"


_OPERATORS = {
    "add": add, "radd": lambda a, b: add(b, a), "sub": sub, "rsub": lambda a, b: sub(b, a),
    "mul": mul, "rmul": lambda a, b: mul(b, a), "truediv": div, "rtruediv": lambda a, b: div(b, a),
    "pow": power, "rpow": lambda a, b: power(b, a), "neg": neg, "pos": lambda a: a, "getitem": getitem,
}

for _name, _op in _OPERATORS.items():
    setattr(Function, f"__{_name}__", _op)          # concrete functions
    setattr(FunctionType, f"_{_name}", staticmethod(_op))  # traced functions (JAX forwards to the type)
