"""An interpreter that runs a graph by binding JAX: the basis of lowering, subclassable like torch.fx's.

Run it under `jax.jit` (as `shardkit.lower` does) to compile a graph; with a mesh, every value that
carries a sharding is constrained to it with `jax.lax.with_sharding_constraint`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
from jax.sharding import NamedSharding

from .errors import LoweringError
from .graph import Graph, Op, Value


class Interpreter:
    """Evaluates graphs op by op. Override `run_op` to intercept ops (e.g. to trace or swap them)."""

    def __init__(self, mesh=None, apply_shardings: bool = True):
        self.mesh = mesh
        self.apply_shardings = apply_shardings and mesh is not None

    def run(self, graph: Graph, args: Sequence[Any], constrain_inputs: bool = False) -> list:
        if len(args) != len(graph.inputs):
            raise LoweringError(f"graph @{graph.name} takes {len(graph.inputs)} arguments, got {len(args)}")
        env: dict[Value, Any] = {}
        for value, arg in zip(graph.inputs, args):
            env[value] = self.constrain(value, arg) if constrain_inputs else arg
        for op in graph.ops:
            try:
                operands = [env[v] for v in op.operands]
            except KeyError:
                raise LoweringError(f"op {op.name} uses a value that is not defined before it; "
                                    f"run graph.verify() to locate the problem")
            outs = self.run_op(op, operands)
            if len(outs) != len(op.results):
                raise LoweringError(f"lowering of {op.name} gave {len(outs)} results, the op has "
                                    f"{len(op.results)}")
            implied = _implied_by_operands(op)
            for value, out in zip(op.results, outs):
                env[value] = out if implied else self.constrain(value, out)
        return [env[v] for v in graph.outputs]

    def run_op(self, op: Op, args: list) -> list:
        """Lower one op: its definition's `lower` rule."""
        definition = op.definition
        if definition.lower is None:
            raise LoweringError(f"op {op.name} has no lowering rule")
        return list(definition.lower(self, op, args))

    def region_fn(self, region: Graph, apply_shardings: bool | None = None) -> Callable[..., list]:
        """A Python function evaluating `region` (flat arguments in, list out), for JAX's combinators."""
        child = self.child(self.apply_shardings if apply_shardings is None else apply_shardings)

        def run_region(*args):
            return child.run(region, args, constrain_inputs=True)

        return run_region

    def child(self, apply_shardings: bool) -> "Interpreter":
        """The interpreter used for nested regions (same class, so overrides apply inside too)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.apply_shardings = apply_shardings and self.mesh is not None
        return clone

    def constrain(self, value: Value, x):
        """Apply the value's sharding, if it has one that says anything."""
        sharding = value.type.sharding
        if not self.apply_shardings or sharding is None:
            return x
        if all(d.is_open and not d.axes for d in sharding.dims) and sharding.rank:
            return x
        if not hasattr(x, "shape") or tuple(x.shape) != value.type.shape:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, sharding.to_partition_spec()))


def _implied_by_operands(op: Op) -> bool:
    """Whether XLA's own propagation already gives `op`'s result its sharding: an op without regions
    whose single result has the shape and sharding of every non-scalar operand (element-wise work).
    Constraining such values adds nothing and stops XLA from folding across them."""
    if len(op.results) != 1 or op.regions or not op.operands or op.name in _USER_CONSTRAINTS:
        return False
    result = op.results[0].type
    if result.sharding is None or not result.rank:
        return False
    layout = _layout(result.sharding)
    tensors = [v.type for v in op.operands if v.type.rank]
    return bool(tensors) and all(t.shape == result.shape and t.sharding is not None
                                 and _layout(t.sharding) == layout for t in tensors)


_USER_CONSTRAINTS = frozenset({"hint", "sharding_constraint"})


def _layout(sharding) -> tuple:
    return tuple(d.axes for d in sharding.dims), tuple(sharding.unreduced)
