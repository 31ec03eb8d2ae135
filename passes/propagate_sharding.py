"""The `propagate-sharding` pass: give every value a sharding from a few hints (see sharding_engine)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from shardkit.ir import Graph, MeshShape, ShardingError

from .base import Pass
from .registry import register
from .sharding_engine import PropagationResult, propagate

SHARDED = "sharded"
"""Property: every value carries a closed sharding."""


def is_fully_sharded(graph: Graph) -> bool:
    """Whether every value (regions included, shard_map bodies excepted) has a closed sharding."""
    def values(g):
        yield from g.inputs
        for op in g.ops:
            yield from op.results
            if op.name != "shard_map":
                for region in op.regions:
                    yield from values(region)
    return all(v.type.sharding is not None and not any(d.is_open for d in v.type.sharding.dims)
               for v in values(graph))


@register
@dataclass(frozen=True)
class PropagateSharding(Pass):
    """Forward and backward factor propagation to a fixed point; afterwards every value is sharded.

    mode: `aggressive` (conflicts go to the larger tensor) or `basic` (conflicts are left alone).
    respect_hints: when false, user hints may be extended like any other sharding.
    """

    name: ClassVar[str] = "propagate-sharding"
    guarantees: ClassVar[frozenset[str]] = frozenset({SHARDED})
    mode: str = "aggressive"
    respect_hints: bool = True

    def run(self, graph: Graph, ctx) -> Graph:
        mesh = ctx.mesh_shape if ctx is not None and ctx.mesh is not None else graph.mesh
        if mesh is None:
            raise ShardingError("propagate-sharding needs a mesh: run the pipeline with mesh=... "
                                "or capture the graph with sharded inputs")
        result = propagate(graph.replace(mesh=mesh), mesh, self.mode, self.respect_hints)
        if ctx is not None:
            ctx.analyses.put(PropagationResult, result.graph, result)
            for label in result.unruled:
                ctx.diagnostics.note(f"{label} has no sharding rule: its operands are kept replicated")
        return result.graph


def complete_shardings(graph: Graph, mesh: MeshShape) -> tuple[Graph, PropagationResult | None]:
    """Propagate if any value is still unsharded or open (what sk.jit does after any pipeline)."""
    if is_fully_sharded(graph):
        return graph, None
    result = propagate(graph.replace(mesh=mesh), mesh)
    return result.graph, result
