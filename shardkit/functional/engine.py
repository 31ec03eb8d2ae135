"""Evaluate Function graphs on whole sets of points at once, each node once per set of points.

A point set is a tuple of *fields*, one per function argument: an array over some named axes (a
grid's nodes over one axis, a fixed value over none, computed values over several). A node's value
on a point set is an array over the axes its arguments use, plus the node's result shape. Two point
sets with the same fields (by array identity) and the same axis pattern are the same points, so a
node is computed once per distinct point set: integrals nested inside integrals (a kernel operator
applied to the output of another) cost a polynomial, not an exponential, amount of work.

Two modes share this code:

* traced (`Evaluator(persistent=False)`): inside jax.jit, the `functional.*` primitives and their
  IR regions; the cache lives for one evaluation.
* eager (`persistent=True`): for concrete functions; each node keeps its values on each point set
  it was evaluated on. Functional gradient descent updates functions symbolically, so after t steps
  a parameter function is a graph holding every earlier step; evaluating it again costs only the
  nodes that are new, and each step costs the same (AutoFD's steps, and a whole-graph compile, get
  slower every step).

Nodes that need derivatives of their inputs (nabla, linearize, linear_transpose) are evaluated point
by point (evaluate.py) on the flattened points.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from .function import Function

_labels = itertools.count()


@dataclass(frozen=True)
class Field:
    """One argument's values: `array` has shape (sizes of `axes`) + the argument's shape."""

    array: Any
    axes: tuple


class Points:
    """A set of points: one field per argument, over named axes of given sizes."""

    def __init__(self, fields: Sequence[Field], sizes: dict):
        self.fields = tuple(fields)
        self.sizes = sizes
        order: list = []
        for f in self.fields:
            for a in f.axes:
                if a not in order:
                    order.append(a)
        self.order = tuple(order)
        self.canon = {a: i for i, a in enumerate(order)}
        self.key = tuple((id(f.array), tuple(self.canon[a] for a in f.axes)) for f in self.fields)

    def derive(self, fields: Sequence[Field]) -> "Points":
        return Points(fields, self.sizes)


class Evaluator:
    """Computes node values on point sets, caching them per node and point set."""

    def __init__(self, persistent: bool):
        self.persistent = persistent
        self.local: dict = {}

    def value(self, node: Function, points: Points) -> tuple:
        """(array over `axes` + node's result shape, axes)."""
        cache, key = self._cache(node, points)
        hit = cache.get(key)
        if hit is not None:
            array, canonical, _pins = hit
            return array, tuple(points.order[c] for c in canonical)
        array, axes = _RULES.get(node.kind, _pointwise_fallback)(self, node, points)
        pins = tuple(f.array for f in points.fields)  # keeps the ids in the key unique
        cache[key] = (array, tuple(points.canon[a] for a in axes), pins)
        return array, axes

    def _cache(self, node: Function, points: Points):
        if self.persistent and not node.traced:
            if node._grid is None:
                node._grid = {}
            return node._grid, points.key
        return self.local, (id(node), points.key, node)

    def kernel(self, fn):
        """fn mapped over a leading axis of points: compiled once per callable when eager."""
        return _compiled_vmap(fn) if self.persistent else jax.vmap(fn)


@functools.lru_cache(maxsize=4096)
def _compiled_vmap(fn):
    return jax.jit(jax.vmap(fn))


# -- entry points --------------------------------------------------------------------------------------


def integrate(f: Function, grids: Sequence[tuple], evaluator: Evaluator | None = None):
    """The integral of f over all its arguments on the tensor product of `grids`."""
    evaluator = evaluator or Evaluator(persistent=True)
    sizes, fields, weights = {}, [], {}
    for nodes, w in grids:
        label = next(_labels)
        sizes[label] = nodes.shape[0]
        fields.append(Field(nodes, (label,)))
        weights[label] = w
    array, axes = evaluator.value(f, Points(fields, sizes))
    out, rest = _contract(array, axes, weights)
    assert not rest
    return out


def apply(f: Function, xs: Sequence[Any], batch_ndim: int, evaluator: Evaluator | None = None):
    """f at points xs, each shaped batch + its argument's shape (the batch axes are shared)."""
    evaluator = evaluator or Evaluator(persistent=True)
    batch = tuple(xs[0].shape[:batch_ndim]) if xs else ()
    count = 1
    for d in batch:
        count *= d
    sizes, fields = {}, []
    if batch_ndim:
        label = next(_labels)
        sizes[label] = count
        fields = [Field(jnp.reshape(x, (count,) + tuple(x.shape[batch_ndim:])), (label,)) for x in xs]
        axes_all = (label,)
    else:
        fields = [Field(x, ()) for x in xs]
        axes_all = ()
    array, axes = evaluator.value(f, Points(fields, sizes))
    array = _expand(array, axes, axes_all, sizes, f.spec.ret)
    return jnp.reshape(array, batch + f.spec.ret)


def _contract(array, axes: tuple, weights: dict):
    """Sum `array` (over `axes`) against the weights of the axes in `weights`."""
    axes = list(axes)
    for label, w in weights.items():
        if label in axes:
            i = axes.index(label)
            array = jnp.tensordot(w.astype(array.dtype), array, axes=([0], [i]))
            axes.pop(i)
        else:
            array = array * jnp.sum(w).astype(array.dtype)
    return array, tuple(axes)


# -- broadcasting values to common axes ------------------------------------------------------------------


def _union(points: Points, axes_list) -> tuple:
    used = set(a for axes in axes_list for a in axes)
    return tuple(a for a in points.order if a in used)


def _expand(array, axes: tuple, target: tuple, sizes: dict, tail: tuple):
    """`array` over `axes` as an array over `target` (a superset, in its order)."""
    if axes == target:
        return array
    perm = sorted(range(len(axes)), key=lambda i: target.index(axes[i]))
    array = jnp.transpose(array, perm + list(range(len(axes), array.ndim)))
    shape = [sizes[a] if a in axes else 1 for a in target] + list(tail)
    array = jnp.reshape(array, shape)
    return jnp.broadcast_to(array, [sizes[a] for a in target] + list(tail))


def _flatten(values: list, shapes: list, points: Points):
    """Values on their axes as flat arrays over the union of those axes: (target, count, flats)."""
    target = _union(points, [axes for _, axes in values])
    count = 1
    for a in target:
        count *= points.sizes[a]
    flats = [jnp.reshape(_expand(a, axes, target, points.sizes, s), (count,) + tuple(s))
             for (a, axes), s in zip(values, shapes)]
    return target, count, flats


def _pointwise(ev: Evaluator, fn, values: list, shapes: list, points: Points) -> tuple:
    """fn applied point by point to values (each over its axes, with the given per-point shape)."""
    if all(not axes for _, axes in values):
        return jnp.asarray(fn(*[a for a, _ in values])), ()
    target, count, flats = _flatten(values, shapes, points)
    out = ev.kernel(fn)(*flats)
    return jnp.reshape(out, tuple(points.sizes[a] for a in target) + tuple(out.shape[1:])), target


# -- the node rules ------------------------------------------------------------------------------------------


def _fn(ev, node, points):
    values = [(f.array, f.axes) for f in points.fields]
    array, axes = _pointwise(ev, node.params[0], values, list(node.spec.args), points)
    return array.astype(node.spec.ret_dtype), axes


def _const(ev, node, points):
    return node.arrays[0], ()


def _compose(ev, node, points):
    outer = node.params[0]
    inners = node.children if outer is not None else node.children[1:]
    values = [ev.value(g, points) for g in inners]
    if outer is None:
        return ev.value(node.children[0], points.derive([Field(a, axes) for a, axes in values]))
    array, axes = _pointwise(ev, outer, values, [g.spec.ret for g in inners], points)
    return array.astype(node.spec.ret_dtype), axes


def _add(ev, node, points):
    values = [ev.value(g, points) for g in node.children]
    target = _union(points, [axes for _, axes in values])
    ret = node.spec.ret
    total = None
    for (array, axes), g in zip(values, node.children):
        part = _expand(array, axes, target, points.sizes, g.spec.ret)
        part = jnp.reshape(part, part.shape[:len(target)] + (1,) * (len(ret) - len(g.spec.ret))
                           + tuple(g.spec.ret))
        total = part if total is None else total + part
    shape = tuple(points.sizes[a] for a in target) + ret
    return jnp.broadcast_to(total, shape).astype(node.spec.ret_dtype), target


def _permute(ev, node, points):
    (child,), (perm,) = node.children, node.params
    fields: list = [None] * len(perm)
    for i, p in enumerate(perm):
        fields[p] = points.fields[i]
    return ev.value(child, points.derive(fields))


def _partial(ev, node, points):
    (child,), (argnums,) = node.children, node.params
    fixed, given = dict(zip(argnums, node.arrays)), iter(points.fields)
    fields = [Field(fixed[i], ()) if i in fixed else next(given) for i in range(child.num_args)]
    return ev.value(child, points.derive(fields))


def _broadcast(ev, node, points):
    (child,), (argnums,) = node.children, node.params
    return ev.value(child, points.derive([points.fields[a] for a in argnums]))


def _integrate(ev, node, points):
    (child,), (argnums,) = node.children, node.params
    sizes = dict(points.sizes)
    given, fields, weights = iter(points.fields), [], {}
    grids = {a: (node.arrays[2 * k], node.arrays[2 * k + 1]) for k, a in enumerate(argnums)}
    for i in range(child.num_args):
        if i in grids:
            label = next(_labels)
            nodes, w = grids[i]
            sizes[label] = nodes.shape[0]
            fields.append(Field(nodes, (label,)))
            weights[label] = w
        else:
            fields.append(next(given))
    array, axes = ev.value(child, Points(fields, sizes))
    return _contract(array, axes, weights)


def _measured(ev, node, points):
    return ev.value(node.children[0], points)


def _pointwise_fallback(ev, node, points):
    """Nodes that need derivatives of their inputs: evaluated point by point on the flat points."""
    from .evaluate import evaluate
    values = [(f.array, f.axes) for f in points.fields]
    if all(not axes for _, axes in values):
        if ev.persistent and not node.traced:
            from .lowlevel import apply_compiled
            return apply_compiled(node, [a for a, _ in values], 0), ()
        return evaluate(node, [a for a, _ in values]), ()
    target, count, flats = _flatten(values, list(node.spec.args), points)
    if ev.persistent and not node.traced:
        from .lowlevel import apply_compiled
        out = apply_compiled(node, flats, 1)
    else:
        out = jax.vmap(lambda *x: evaluate(node, x))(*flats)
    return jnp.reshape(out, tuple(points.sizes[a] for a in target) + node.spec.ret), target


_RULES = {
    "fn": _fn, "const": _const, "compose": _compose, "add": _add, "permute": _permute,
    "partial": _partial, "broadcast": _broadcast, "integrate": _integrate, "measured": _measured,
}


def concrete(f: Function, arrays: Sequence = ()) -> bool:
    """Whether f and `arrays` hold no tracers (so values can be cached on the nodes)."""
    return not f.traced and not any(isinstance(x, jax.core.Tracer) for x in arrays)
