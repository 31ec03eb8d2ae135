"""The `Function` value: one node of an expression graph over functions, with its array leaves.

A Function is immutable. Its *structure* (node kinds, static params, how nodes share children,
and the shapes of the arrays they hold) is static; its *leaves* (the arrays) are data. JAX sees a
Function as one value of type `FunctionType` (types.py): under `jax.jit` the structure goes into the
type and the leaves become the arrays XLA sees, and under `jax.grad` the function itself is the
thing differentiated, so a derivative with respect to a Function is again a Function.

Node kinds (params in brackets):
    fn[callable]                 a user function of the arguments
    const                        a constant function; leaf: the value
    unknown                      a function whose structure is not known (typing of tangents only)
    compose[outer, linear, ct]   outer(inner_1(x), ..., inner_n(x)); outer a callable or the first child
    add                          a sum of functions (broadcasting results)
    nabla[argnum]                the Jacobian with respect to one argument
    linearize[argnums]           (x..., t...) -> J f(x) . t
    ltranspose[argnum, zero]     the transpose of f in a linear argument
    permute[perm]                f with its arguments reordered
    partial[argnums]             f with some arguments fixed to arrays (leaves)
    broadcast[argnums]           f of a subset of the arguments of a wider function
    integrate[argnums]           f integrated over some arguments on grids (leaves: nodes, weights)
    measured[grids, base grids]  a cotangent: its density, and how it pairs with functions exactly
    hole                         the argument of a `measured` node's pairing template
"""
from __future__ import annotations

from typing import Any, Sequence

import jax

from .spec import Spec

ShapedArray = jax.core.ShapedArray


class Function:
    """A function of arrays as a JAX value: callable, composable and differentiable as a whole."""

    __slots__ = ("kind", "params", "children", "arrays", "spec", "unknown", "has_hole", "traced",
                 "size", "nested", "has_measured", "batch", "_type", "_leaves", "_grid", "_view",
                 "__weakref__")

    def __init__(self, kind: str, params: tuple, children: Sequence["Function"], arrays: Sequence[Any],
                 spec: Spec):
        self.kind = kind
        self.params = tuple(params)
        self.children = tuple(children)
        self.arrays = tuple(arrays)
        self.spec = spec
        self.unknown = kind == "unknown" or any(c.unknown for c in self.children)
        # a `measured` node closes its template: holes are only looked for below templates' roots
        self.has_hole = kind == "hole" or (kind != "measured" and any(c.has_hole for c in self.children))
        self.has_measured = kind == "measured" or any(c.has_measured for c in self.children)
        self.traced = any(isinstance(a, jax.core.Tracer) for a in self.arrays) or \
            any(c.traced for c in self.children)
        self.size = min(1 + sum(c.size for c in self.children), 1 << 30)  # tree size, capped
        self.nested = kind == "integrate" or any(c.nested for c in self.children)
        self.batch = None  # (size, mask): a batch of functions (batching.py)
        self._type = None
        self._leaves = None
        self._grid = None  # values on grid points (engine.py)
        self._view = None

    # -- the spec ---------------------------------------------------------------------------------
    @property
    def arg_shapes(self) -> tuple:
        return self.spec.args

    @property
    def ret_shape(self) -> tuple:
        return self.spec.ret

    @property
    def num_args(self) -> int:
        return self.spec.num_args

    @property
    def dtype(self):
        return self.spec.ret_dtype

    @property
    def shape(self) -> tuple:
        """(batch size,) for a batch of functions (what jax.vmap maps over with in_axes=0)."""
        if self.batch is None:
            raise AttributeError("a Function is not an array and has no shape (only a batch of "
                                 "functions made by jax.vmap has one: its batch size)")
        return (self.batch[0],)

    # -- calling and arithmetic (defined in api.py, attached below) ---------------------------------
    def __call__(self, *args):
        from .api import apply
        return apply(self, *args)

    def __repr__(self) -> str:
        batch = f"[batch of {self.batch[0]}]" if self.batch is not None else ""
        return f"Function{self.spec}{batch}: {expression_text(self, limit=120)}"

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other

    def __bool__(self):
        return True

    def __array__(self, *args, **kwargs):
        raise TypeError(f"a Function {self.spec} is not an array: call it on points, or use "
                        f"compose(jnp_function, f) to apply an element-wise function to it")


# -- structure: a Function graph as a static program plus a list of leaves ------------------------

# One instruction per node, in topological order:
#   (kind, params, child indices, leaf avals, spec)
Program = tuple


def leaf_aval(x) -> ShapedArray:
    """The abstract value of a leaf: arrays, tracers, Python scalars and ShapedArrays themselves."""
    if isinstance(x, ShapedArray):
        return ShapedArray(tuple(x.shape), x.dtype)
    aval = jax.typeof(x)
    return ShapedArray(tuple(aval.shape), aval.dtype)


def structure(f: Function) -> tuple[Program, list]:
    """The static program of `f` and its leaves in program order (shared nodes appear once)."""
    index: dict[int, int] = {}
    instrs: list = []
    leaves: list = []
    stack: list[tuple[Function, bool]] = [(f, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in index:
            continue
        if not expanded:
            stack.append((node, True))
            for child in reversed(node.children):
                if id(child) not in index:
                    stack.append((child, False))
            continue
        kids = tuple(index[id(c)] for c in node.children)
        avals = tuple(leaf_aval(a) for a in node.arrays)
        leaves.extend(node.arrays)
        instrs.append((node.kind, node.params, kids, avals, node.spec))
        index[id(node)] = len(instrs) - 1
    return tuple(instrs), leaves


def leaves_of(f: Function) -> list:
    """The leaves of `f` in program order (what `structure` returns second)."""
    if f._leaves is None:
        f._leaves = _leaves_of(f)
    return f._leaves


def _leaves_of(f: Function) -> list:
    seen: set[int] = set()
    order: list[Function] = []
    stack: list[tuple[Function, bool]] = [(f, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in seen:
            continue
        if not expanded:
            stack.append((node, True))
            for child in reversed(node.children):
                if id(child) not in seen:
                    stack.append((child, False))
            continue
        seen.add(id(node))
        order.append(node)
    return [a for node in order for a in node.arrays]


def rebuild(program: Program, leaves: Sequence[Any]) -> Function:
    """The Function a program describes, holding `leaves` (arrays, tracers or ShapedArrays)."""
    nodes: list[Function] = []
    position = 0
    for kind, params, kids, avals, spec in program:
        arrays = leaves[position:position + len(avals)]
        position += len(avals)
        nodes.append(Function(kind, params, [nodes[k] for k in kids], arrays, spec))
    if position != len(leaves):
        raise ValueError(f"a function structure with {position} leaves was given {len(leaves)} arrays")
    return nodes[-1]


def substitute(root: Function, target: Function, value: Function) -> Function:
    """`root` with the node `target` (a hole) replaced by `value`; only nodes above a hole are copied."""
    memo: dict[int, Function] = {}

    def go(node: Function) -> Function:
        if node is target:
            return value
        if not node.has_hole:
            return node
        hit = memo.get(id(node))
        if hit is not None:
            return hit
        children = [go(c) for c in node.children]
        out = node if all(a is b for a, b in zip(children, node.children)) else \
            Function(node.kind, node.params, children, node.arrays, node.spec)
        memo[id(node)] = out
        return out

    return go(root)


def evaluation_view(f: Function) -> Function:
    """f as evaluation sees it: cotangent terms (`measured`) replaced by their densities, so what
    is compiled and passed to XLA is only what the values depend on."""
    if not f.has_measured:
        return f
    if f._view is None:
        if f.kind == "measured":
            f._view = evaluation_view(f.children[0])
        else:
            children = [evaluation_view(c) for c in f.children]
            f._view = Function(f.kind, f.params, children, f.arrays, f.spec)
    return f._view


def program_avals(program: Program) -> list[ShapedArray]:
    return [a for instr in program for a in instr[3]]


# -- text -----------------------------------------------------------------------------------------


def callable_name(fn) -> str:
    """A short, stable name for a callable param (no addresses)."""
    describe = getattr(fn, "describe", None)
    if callable(describe) and not isinstance(fn, type):
        return describe()
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", None)
    if name is None:
        name = type(fn).__name__
    return str(name)


def _param_text(kind: str, params: tuple) -> str:
    if kind == "fn":
        return callable_name(params[0])
    if kind == "compose":
        outer = params[0]
        return callable_name(outer) if outer is not None else ""
    shown = [p for p in params if p is not None and p != () and p is not False]
    return ",".join(str(p) for p in shown)


def expression_text(f: Function, limit: int | None = None) -> str:
    """A one-line text of the expression; nodes used more than once are named (`$1 = ...; ...`)."""
    uses: dict[int, int] = {}
    stack = [f]
    visited: set[int] = set()
    while stack:
        node = stack.pop()
        for child in node.children:
            uses[id(child)] = uses.get(id(child), 0) + 1
            if id(child) not in visited:
                visited.add(id(child))
                stack.append(child)
    names: dict[int, str] = {}
    bindings: list[str] = []

    def text(node: Function) -> str:
        if id(node) in names:
            return names[id(node)]
        params = _param_text(node.kind, node.params)
        head = node.kind + (f"[{params}]" if params else "")
        if node.kind == "const":
            head = "const" + (f"[{','.join(map(str, node.spec.ret))}]" if node.spec.ret else "")
        if node.kind == "measured":
            return text(node.children[0])
        if node.children:
            head += "(" + ", ".join(text(c) for c in node.children) + ")"
        if uses.get(id(node), 0) > 1 and node.children:
            name = f"${len(names) + 1}"
            names[id(node)] = name
            bindings.append(f"{name} = {head}")
            return name
        return head

    body = text(f)
    out = "; ".join(bindings + [body]) if bindings else body
    if limit is not None and len(out) > limit:
        out = out[:limit - 3] + "..."
    return out
