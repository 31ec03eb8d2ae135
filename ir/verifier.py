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

    def check_graph(self, graph: Graph, outer: set, top: bool = False, traced: bool = False) -> None:
        """Check one graph; `traced`: its ops are typed by tracing an enclosing op (see OpDef)."""
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
            by_tracing = not traced and op.regions and self._traced_regions(op)
            for region in op.regions:
                self.check_graph(region, outer | defined, traced=traced or by_tracing)
            self.check_types(graph, index, op, use_rule=not traced)
            if by_tracing:
                self.check_traced(graph, index, op)
            for value in op.results:
                define(value, index, op)
        for position, value in enumerate(graph.outputs):
            if value not in defined:
                self.fail(graph, len(graph.ops) - 1 if graph.ops else None,
                          f"output {position} of graph @{graph.name} is not defined in it")

    @staticmethod
    def _traced_regions(op: Op) -> bool:
        try:
            return bool(op.definition.traced_regions)
        except KeyError:
            return False

    def check_traced(self, graph: Graph, index: int, op: Op) -> None:
        """Type-check the ops in `op`'s regions by tracing its lowering (JAX sets up their context)."""
        try:
            _trace_region_types(op)
        except _TypeMismatch as e:
            where = _locate(op, e.op) or (graph, index)
            self.fail(where[0], where[1], f"result {e.position} of op '{e.op.name}' (in a region of "
                                          f"'{op.name}') is typed {type_text(e.op.results[e.position].type)} "
                                          f"but tracing gives {e.found}", e.op)
        except VerifyError:
            raise
        except Exception as e:  # the region does not trace: report it on the enclosing op
            self.fail(graph, index, f"op '{op.name}' rejects its regions: {type(e).__name__}: {e}", op)

    def check_types(self, graph: Graph, index: int, op: Op, use_rule: bool = True) -> None:
        try:
            definition = op.definition
        except KeyError:
            self.fail(graph, index, f"op '{op.name}' is not registered and names no JAX primitive", op)
        if definition.type_rule is None or not use_rule:
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
            # Without a mesh (a hinted function captured outside one) axis sizes are unknown: check
            # what holds on every mesh, and leave sizes to verify(mesh=...) and lowering.
            axes = sharding.used_axes + sharding.replicated + sharding.unreduced
            twice = sorted({a for a in axes if axes.count(a) > 1})
            if twice:
                self.fail(graph, index, f"value {type_text(value.type)} uses mesh axis {twice[0]!r} twice; "
                                        f"each axis may split at most one dimension", op)
            return
        try:
            sharding.check(self.mesh, value.type.shape, value=type_text(value.type))
        except ShardingError as e:
            self.fail(graph, index, str(e), op)


class _TypeMismatch(Exception):
    def __init__(self, op: Op, position: int, found: str):
        super().__init__(found)
        self.op, self.position, self.found = op, position, found


def _trace_region_types(op: Op) -> None:
    """Abstract-evaluate `op`'s lowering; every op run inside its regions must give its typed results."""
    import jax

    from .graph import TensorType
    from .interpreter import Interpreter

    class Checking(Interpreter):
        def run_op(self, inner: Op, args: list) -> list:
            outs = super().run_op(inner, args)
            for position, (value, out) in enumerate(zip(inner.results, outs)):
                shape, dtype = tuple(getattr(out, "shape", ())), getattr(out, "dtype", None)
                if shape != tuple(value.type.shape) or dtype != value.type.dtype:
                    raise _TypeMismatch(inner, position, type_text(TensorType(shape, dtype)))
            return outs

    structs = [jax.ShapeDtypeStruct(v.type.shape, v.type.dtype) for v in op.operands]
    interp = Checking(mesh=None, apply_shardings=False)
    jax.eval_shape(lambda *xs: op.definition.lower(interp, op, list(xs)), *structs)


def _locate(root: Op, target: Op):
    """(graph, index) of `target` among the ops nested in `root`'s regions, or None."""
    for region in root.regions:
        for index, op in enumerate(region.ops):
            if op is target:
                return region, index
            found = _locate(op, target)
            if found is not None:
                return found
    return None


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
            where = f"    # {op.loc}" if op.loc else ""
            lines.append(f"  {marker} {text} : {types}{where}")
    return "\n" + "\n".join(lines) if lines else ""
