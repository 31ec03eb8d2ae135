"""Static callables that operators put into `compose` nodes: hashable, comparable, named.

They are structure, not data: two equal instances make equal programs, so compiled evaluators are
shared between functions built the same way.
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from .function import callable_name


@dataclass(frozen=True)
class JvpOf:
    """(p_1..p_n, t_k for k in mask) -> the JVP of `outer` at p along t (zeros elsewhere)."""

    outer: Any
    n: int
    mask: tuple[int, ...]

    def __call__(self, *args):
        primals, tangents = args[:self.n], args[self.n:]
        full = [jnp.zeros_like(p) for p in primals]
        for position, t in zip(self.mask, tangents):
            full[position] = t.astype(jnp.result_type(primals[position]))
        return jax.jvp(self.outer, tuple(primals), tuple(full))[1]

    def describe(self) -> str:
        return f"jvp({callable_name(self.outer)})"


@dataclass(frozen=True)
class TransposeOf:
    """The transpose of `outer` in its linear operand `index`: called with the defined operands (all
    but `index` and `zero`, in order) then the cotangent; operands in `zero` are taken as zeros."""

    outer: Any
    index: int
    zero: tuple[int, ...]
    types: tuple[tuple[tuple[int, ...], Any], ...]  # (shape, dtype) of every operand of `outer`

    def __call__(self, *args):
        defined, ct = list(args[:-1]), args[-1]
        shape, dtype = self.types[self.index]

        def linear(t):
            full, it = [], iter(defined)
            for position, (s, d) in enumerate(self.types):
                if position == self.index:
                    full.append(t)
                elif position in self.zero:
                    full.append(jnp.zeros(s, d))
                else:
                    full.append(next(it))
            return self.outer(*full)

        out_struct = jax.eval_shape(linear, jax.ShapeDtypeStruct(shape, dtype))
        ct = jnp.broadcast_to(jnp.asarray(ct, out_struct.dtype), out_struct.shape)
        return jax.linear_transpose(linear, jax.ShapeDtypeStruct(shape, dtype))(ct)[0]

    def describe(self) -> str:
        return f"transpose{self.index}({callable_name(self.outer)})"


@dataclass(frozen=True)
class Restrict:
    """`outer` as a function of operand `index` alone: called with the other defined operands (all
    but `index` and `zero`, in order) then the value for `index`; operands in `zero` are zeros.
    The forward counterpart of TransposeOf."""

    outer: Any
    index: int
    zero: tuple[int, ...]
    types: tuple[tuple[tuple[int, ...], Any], ...]

    def __call__(self, *args):
        defined, value = list(args[:-1]), args[-1]
        full, it = [], iter(defined)
        for position, (s, d) in enumerate(self.types):
            if position == self.index:
                full.append(value)
            elif position in self.zero:
                full.append(jnp.zeros(s, d))
            else:
                full.append(next(it))
        return self.outer(*full)

    def describe(self) -> str:
        return f"restrict{self.index}({callable_name(self.outer)})"


@dataclass(frozen=True)
class NegDiv:
    """v of shape ret + arg + arg (the Jacobian of a cotangent) -> minus its divergence, shape ret."""

    ret: tuple[int, ...]
    arg: tuple[int, ...]
    argnum: int = 0

    def __call__(self, v):
        size = math.prod(self.arg)
        # the diagonal of the (size, size) block as a strided slice of its flattening (no mask or
        # gather for XLA to evaluate on every call, as jnp.trace's where/iota would be)
        flat = jnp.reshape(v, self.ret + (size * size,))
        return -jnp.sum(flat[..., ::size + 1], axis=-1)

    def describe(self) -> str:
        return "neg_div"


@dataclass(frozen=True)
class SumTo:
    """Sum a broadcast result back to `shape` (the transpose of numpy broadcasting)."""

    shape: tuple[int, ...]

    def __call__(self, v):
        lead = v.ndim - len(self.shape)
        axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(self.shape)
                                          if d == 1 and v.shape[lead + i] != 1)
        out = jnp.sum(v, axis=axes, keepdims=False) if axes else v
        return jnp.reshape(out, self.shape)

    def describe(self) -> str:
        return f"sum_to{list(self.shape)}"


@dataclass(frozen=True)
class BroadcastTo:
    """Broadcast a value to `shape` (used to line up results of different shapes)."""

    shape: tuple[int, ...]

    def __call__(self, v):
        return jnp.broadcast_to(v, self.shape)

    def describe(self) -> str:
        return f"broadcast_to{list(self.shape)}"


@dataclass(frozen=True)
class Stack:
    """Stack equally shaped values along a new leading axis (zip of functions)."""

    def __call__(self, *vs):
        return jnp.stack(vs)

    def describe(self) -> str:
        return "stack"


@dataclass(frozen=True)
class Index:
    """Take entry `i` of the leading axis (split of a zipped function)."""

    i: int

    def __call__(self, v):
        return v[self.i]

    def describe(self) -> str:
        return f"index{self.i}"


@dataclass(frozen=True)
class GetItem:
    """`v[key]` for a static index key (f[0] on a vector-valued function)."""

    key: Any

    def __call__(self, v):
        return v[self.key]

    def describe(self) -> str:
        return f"getitem{self.key}"


@dataclass(frozen=True)
class Inner:
    """The inner product of two equally shaped values (sum of the element-wise product)."""

    def __call__(self, a, b):
        return jnp.sum(a * b)

    def describe(self) -> str:
        return "inner"


@dataclass(frozen=True)
class Hashed:
    """A callable that cannot be hashed, wrapped so that it hashes (and compares) by identity."""

    fn: Any

    def __call__(self, *args):
        return self.fn(*args)

    def __hash__(self):
        return id(self.fn)

    def __eq__(self, other):
        return isinstance(other, Hashed) and other.fn is self.fn

    def describe(self) -> str:
        return callable_name(self.fn)


class ByCode:
    """A Python function compared by what it computes: its code, closure cells and defaults (by
    identity). A lambda re-created on every call of a loss function is then the same static
    callable each time, so compiled evaluators are reused instead of rebuilt."""

    __slots__ = ("fn", "_key", "__weakref__")

    def __init__(self, fn):
        self.fn = fn
        cells = tuple(id(c.cell_contents) if _filled(c) else None for c in (fn.__closure__ or ()))
        defaults = tuple(id(d) for d in (fn.__defaults__ or ()))
        kwdefaults = tuple(sorted((k, id(v)) for k, v in (fn.__kwdefaults__ or {}).items()))
        self._key = (fn.__code__, id(fn.__globals__), cells, defaults, kwdefaults)

    def __call__(self, *args):
        return self.fn(*args)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, ByCode) and other._key == self._key

    def describe(self) -> str:
        return callable_name(self.fn)


def _filled(cell) -> bool:
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class WithParams:
    """A user function of (params, *args) with the params' pytree structure, called on leaves."""

    fn: Any
    treedef: Any
    num_leaves: int

    def __call__(self, *args):
        params = jax.tree_util.tree_unflatten(self.treedef, args[:self.num_leaves])
        return self.fn(params, *args[self.num_leaves:])

    def describe(self) -> str:
        return callable_name(self.fn)


def static_callable(fn):
    """A hashable stand-in for `fn`: Python functions compare by code (see ByCode), other hashable
    callables are themselves, unhashable ones compare by identity."""
    if isinstance(fn, types.FunctionType):
        return ByCode(fn)
    try:
        hash(fn)
        return fn
    except TypeError:
        return Hashed(fn)


class TracedCallable:
    """A user function that closed over values of an enclosing transformation (a vmapped, jitted or
    differentiated array), as its jaxpr: those values become leading arguments, so they are leaves
    of the Function (batched by vmap, traced by jit, differentiated by grad) instead of leaking."""

    __slots__ = ("jaxpr", "name", "__weakref__")

    def __init__(self, jaxpr, name: str):
        self.jaxpr = jaxpr
        self.name = name

    def __call__(self, *args):
        from shardkit.ir import _jax
        return _jax.eval_jaxpr(self.jaxpr, list(args))[0]

    def __hash__(self):
        return id(self.jaxpr)

    def __eq__(self, other):
        return isinstance(other, TracedCallable) and other.jaxpr is self.jaxpr

    def describe(self) -> str:
        return self.name
