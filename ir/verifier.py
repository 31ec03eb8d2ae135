"""The verifier: SSA form, types re-derived from each op's type rule, shardings valid for the mesh."""
from __future__ import annotations

from .errors import ShardingError, VerifyError
from .graph import Graph, Op, Value
from .printer import _Namer, op_text_head, type_text
from .sharding import MeshShape


def verify(graph: Graph, mesh=None, pass_name: str | None = None) -> None:
    """Raise VerifyError naming the first broken op (and showing its neighbours) if `graph` is invalid."""
    mesh_shape = MeshShape.of(mesh) if mesh is not None else graph.mesh
    _Verifier(graph, mesh_shape, pass_name).check_graph(graph, set(), top=True)


class _Verifier:
    def __init__(self, root: Graph, mesh: MeshShape | None, pass_name: str | None):
        self.root = root
        self.mesh = mesh
        self.pass_name = pass_name
        self.defined_anywhere: set[Value] = set()

    def fail(self, graph: Graph, index: int | None, message: str, op: Op | None = None):
        prefix = f"after pass '{self.pass_name}': " if self.pass_name else ""
        context = _neighbourhood(graph, index) if index is not None else ""
        raise VerifyError(f"{prefix}{message}{context}", op=op, pass_name=self.pass_name)

    def check_graph(self, graph: Graph, outer: set, top: bool = False) -> None:
        defined: set[Value] = set()

        def define(value, index, op=None):
            if not isinstance(value, Value):
                self.fail(graph, index, f"{value!r} is not a Value", op)
            if value in self.defined_anywhere:
                self.fail(graph, index, f"a value of type {type_text(value.type)} is defined twice "
                                        f"(SSA: each value has exactly one definition)", op)
            self.defined_anywhere.add(value)
            defined.add(value)
            self.check_sharding(graph, index, value, op)

        for value in graph.inputs:
            define(value, None)
        for index, op in enumerate(graph.ops):
            if not isinstance(op, Op):
                self.fail(graph, index, f"{op!r} is not an Op")
            for position, operand in enumerate(op.operands):
                if operand not in defined:
                    where = ("is defined outside this region: regions may use only their own "
                             "arguments" if operand in outer or operand in self.defined_anywhere
                             else "is not defined before its use")
                    self.fail(graph, index, f"operand {position} of op '{op.name}' {where}", op)
            for region in op.regions:
                self.check_graph(region, outer | defined)
            self.check_types(graph, index, op)
            for value in op.results:
                define(value, index, op)
        for position, value in enumerate(graph.outputs):
            if value not in defined:
                self.fail(graph, len(graph.ops) - 1 if graph.ops else None,
                          f"output {position} of graph @{graph.name} is not defined in it")

    def check_types(self, graph: Graph, index: int, op: Op) -> None:
        try:
            definition = op.definition
        except KeyError:
            self.fail(graph, index, f"op '{op.name}' is not registered and names no JAX primitive", op)
        if definition.type_rule is None:
            return
        try:
            expected = definition.type_rule(op)
        except Exception as e:  # a type rule that rejects its operands is a verification failure
            self.fail(graph, index, f"op '{op.name}' rejects its operands or params: {type(e).__name__}: {e}", op)
        if len(expected) != len(op.results):
            self.fail(graph, index, f"op '{op.name}' has {len(op.results)} results, its type rule gives "
                                    f"{len(expected)}", op)
        for position, (value, (shape, dtype)) in enumerate(zip(op.results, expected)):
            if tuple(value.type.shape) != tuple(shape) or value.type.dtype != dtype:
                from .graph import TensorType
                self.fail(graph, index, f"result {position} of op '{op.name}' is typed "
                                        f"{type_text(value.type)} but its type rule gives "
                                        f"{type_text(TensorType(tuple(shape), dtype))}", op)

    def check_sharding(self, graph: Graph, index, value: Value, op) -> None:
        sharding = value.type.sharding
        if sharding is None:
            return
        if sharding.rank != value.type.rank:
            self.fail(graph, index, f"a value typed {type_text(value.type)} has a sharding of rank "
                                    f"{sharding.rank}", op)
        if self.mesh is None:
            if sharding.used_axes or sharding.unreduced or sharding.replicated:
                self.fail(graph, index, f"value {type_text(value.type)} is sharded but the graph has "
                                        f"no mesh; capture with sharded inputs or pass mesh=", op)
            return
        try:
            sharding.check(self.mesh, value.type.shape, value=type_text(value.type))
        except ShardingError as e:
            self.fail(graph, index, str(e), op)


def _neighbourhood(graph: Graph, index: int, radius: int = 2) -> str:
    """The offending op with `radius` ops on either side, as IR text lines."""
    namer = _Namer()
    for value in graph.inputs:
        namer.define(value)
    lines = []
    lo, hi = max(0, index - radius), min(len(graph.ops), index + radius + 1)
    for i, op in enumerate(graph.ops):
        head = op_text_head(op, namer)
        results = ", ".join(namer.define(v) for v in op.results)
        if lo <= i < hi:
            marker = "->" if i == index else "  "
            text = f"{results} = {head}" if op.results else head
            types = ", ".join(type_text(v.type) for v in op.results)
            lines.append(f"  {marker} {text} : {types}")
    return "\n" + "\n".join(lines) if lines else ""
