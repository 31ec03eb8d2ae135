"""Values, ops and graphs: the SSA core of the IR. Graphs are immutable; passes build new ones."""
from __future__ import annotations

from collections.abc import ItemsView, ValuesView
from dataclasses import dataclass, field, replace as dc_replace
from typing import Any, Iterator, Mapping, Sequence

from .sharding import MeshShape, Sharding


@dataclass(frozen=True)
class TensorType:
    """Shape + dtype + optional sharding (None: not yet known)."""

    shape: tuple[int, ...]
    dtype: Any
    sharding: Sharding | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        from . import _jax
        return self.size * _jax.itemsize(self.dtype)

    def with_sharding(self, sharding: Sharding | None) -> "TensorType":
        return TensorType(self.shape, self.dtype, sharding)

    def same_shape_dtype(self, other: "TensorType") -> bool:
        return self.shape == other.shape and self.dtype == other.dtype

    def __str__(self) -> str:
        from .printer import type_text
        return type_text(self)


class Value:
    """An SSA value. Identity is the value itself; names are given by the printer."""

    __slots__ = ("type", "hint")

    def __init__(self, type: TensorType, hint: str | None = None):
        self.type = type
        self.hint = hint

    def replace(self, **changes) -> "Value":
        """A new value with changed fields (uses of the old one are not rewritten)."""
        return Value(changes.get("type", self.type), changes.get("hint", self.hint))

    def __repr__(self) -> str:
        return f"Value({self.type})"


class Params(Mapping):
    """An immutable, hashable mapping of op parameters (insertion order kept for printing)."""

    __slots__ = ("_items", "_hash")

    def __init__(self, items: Mapping[str, Any] | Sequence[tuple[str, Any]] = ()):
        pairs = tuple(items.items()) if isinstance(items, Mapping) else tuple(items)
        self._items = pairs
        self._hash = None

    def __getitem__(self, key):
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self):
        return (k for k, _ in self._items)

    def items(self) -> ItemsView:
        """The (key, value) pairs in order, read straight from storage (no lookup per key)."""
        return _ParamItems(self)

    def values(self) -> ValuesView:
        return _ParamValues(self)

    def __len__(self):
        return len(self._items)

    def __hash__(self):
        if self._hash is None:
            self._hash = hash(self._items)
        return self._hash

    def __eq__(self, other):
        return isinstance(other, Params) and self._items == other._items

    def set(self, **changes) -> "Params":
        items = dict(self._items)
        items.update(changes)
        return Params(items)

    def __repr__(self):
        return f"Params({dict(self._items)!r})"


class _ParamItems(ItemsView):
    __slots__ = ()

    def __iter__(self):
        return iter(self._mapping._items)


class _ParamValues(ValuesView):
    __slots__ = ()

    def __iter__(self):
        return (v for _, v in self._mapping._items)


@dataclass(frozen=True, eq=False)
class Op:
    """An operation: name, operand values, result values, params and nested graphs (regions)."""

    name: str
    operands: tuple[Value, ...]
    results: tuple[Value, ...]
    params: Params = field(default_factory=Params)
    regions: tuple["Graph", ...] = ()
    loc: str = ""   # where the user's code made it ('file.py:12 (fn)'), for error messages; not printed

    def __post_init__(self):
        if not isinstance(self.params, Params):
            object.__setattr__(self, "params", Params(self.params))
        object.__setattr__(self, "operands", tuple(self.operands))
        object.__setattr__(self, "results", tuple(self.results))
        object.__setattr__(self, "regions", tuple(self.regions))

    def replace(self, **changes) -> "Op":
        return dc_replace(self, **changes)

    @property
    def result(self) -> Value:
        """The single result (error when the op has several)."""
        if len(self.results) != 1:
            raise ValueError(f"op {self.name} has {len(self.results)} results, not one")
        return self.results[0]

    @property
    def definition(self):
        from .registry import get_op_def
        return get_op_def(self.name)

    def __repr__(self) -> str:
        return f"Op({self.name}, {len(self.operands)} operands, {len(self.results)} results)"


@dataclass(frozen=True, eq=False)
class Graph:
    """A graph: inputs, ops in order, outputs; plus the mesh it is sharded for and pytree structure."""

    inputs: tuple[Value, ...]
    ops: tuple[Op, ...]
    outputs: tuple[Value, ...]
    name: str = "main"
    mesh: MeshShape | None = None
    in_tree: Any = None
    out_tree: Any = None

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "outputs", tuple(self.outputs))

    def replace(self, **changes) -> "Graph":
        return dc_replace(self, **changes)

    # -- traversal ----------------------------------------------------------------------------
    def walk(self) -> Iterator[Op]:
        """Every op, nested regions included, in program order (an op before its regions' ops)."""
        for op in self.ops:
            yield op
            for region in op.regions:
                yield from region.walk()

    def values(self) -> Iterator[Value]:
        """Every value defined in this graph (inputs and op results, not in nested regions)."""
        yield from self.inputs
        for op in self.ops:
            yield from op.results

    def producers(self) -> dict[Value, Op]:
        """Map from each op result (top level) to its op."""
        return {value: op for op in self.ops for value in op.results}

    def users(self) -> dict[Value, list[Op]]:
        """Map from each value to the top-level ops that use it."""
        uses: dict[Value, list[Op]] = {}
        for op in self.ops:
            for value in op.operands:
                uses.setdefault(value, []).append(op)
        return uses

    def num_ops(self) -> int:
        return sum(1 for _ in self.walk())

    # -- rewriting helpers --------------------------------------------------------------------
    def substitute(self, mapping: Mapping[Value, Value]) -> "Graph":
        """A graph where every use of a key value is replaced by the mapped value (top level)."""
        if not mapping:
            return self

        def sub(v: Value) -> Value:
            while v in mapping:
                v = mapping[v]
            return v

        ops = tuple(op if not any(v in mapping for v in op.operands)
                    else op.replace(operands=tuple(sub(v) for v in op.operands)) for op in self.ops)
        return self.replace(ops=ops, outputs=tuple(sub(v) for v in self.outputs))

    def with_types(self, types: Mapping[Value, TensorType]) -> "Graph":
        """A graph whose values listed in `types` get new types (new Value objects, uses rewritten)."""
        if not types:
            return self
        mapping: dict[Value, Value] = {}

        def fresh(v: Value) -> Value:
            if v in types and v not in mapping:
                mapping[v] = v.replace(type=types[v])
            return mapping.get(v, v)

        inputs = tuple(fresh(v) for v in self.inputs)
        ops = []
        for op in self.ops:
            operands = tuple(mapping.get(v, v) for v in op.operands)
            results = tuple(fresh(v) for v in op.results)
            if operands != op.operands or results != op.results:
                op = op.replace(operands=operands, results=results)
            ops.append(op)
        outputs = tuple(mapping.get(v, v) for v in self.outputs)
        return self.replace(inputs=inputs, ops=tuple(ops), outputs=outputs)

    # -- text and checks ----------------------------------------------------------------------
    def __str__(self) -> str:
        from .printer import print_graph
        return print_graph(self)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.inputs)} inputs, {len(self.ops)} ops, {len(self.outputs)} outputs)"

    def verify(self, mesh=None) -> "Graph":
        """Check SSA form, types (re-derived from each op's rule) and shardings; returns self."""
        from .verifier import verify
        verify(self, mesh=mesh)
        return self
