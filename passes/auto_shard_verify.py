"""Hold auto-shard's memory limit against what XLA compiles, not only against the memory model.

The memory model (auto_shard_memory) cannot know every buffer XLA's fusion and expansion passes
create (a max-pool gradient expands into index tensors; XLA's own propagation can reshard), so with a
memory limit and a concrete `jax.sharding.Mesh` the pass compiles its solution, reads
`memory_analysis()` (arguments + outputs + temp - aliased, per device) and re-solves the same model
with the limit scaled by the measured model/compiled ratio: tighter (with a margin) when the program
is over, looser when the model was pessimistic where the limit binds (which can only lower the
objective). The first solution that fits is kept unless a looser limit can improve it; the best
solution whose compiled memory fits is returned, after at most `attempts` compiles; when none fits,
it raises AutoShardInfeasible with the least compiled memory it reached as the smallest feasible limit.
"""
from __future__ import annotations

import math
import time
from typing import Callable

from shardkit.ir import Graph, Interpreter, MeshShape

from .auto_shard import AutoShardInfeasible, AutoShardResult, least_memory, solve_model

_FAST_CPU = {"xla_backend_optimization_level": 0}
_SLACK = 0.02  # relative: a model within 2% of the compiled bytes needs no re-solve


def compiled_memory(graph: Graph, mesh) -> int | None:
    """Per-device bytes XLA reports for `graph` compiled over the jax `mesh` (arguments + outputs +
    temp - aliased), with open shardings completed as `sk.jit` does; None if the backend reports none."""
    import jax
    from jax.sharding import AxisType, Mesh, NamedSharding

    from .propagate_sharding import complete_shardings

    graph, _ = complete_shardings(graph, MeshShape.of(mesh))
    if not all(t == AxisType.Auto for t in mesh.axis_types):
        mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))

    def shardings(values):
        if not values or any(v.type.sharding is None or any(d.is_open for d in v.type.sharding.dims)
                             for v in values):
            return None
        return tuple(NamedSharding(mesh, v.type.sharding.to_partition_spec()) for v in values)

    def run(*flat):
        return tuple(Interpreter(mesh=mesh).run(graph, flat, constrain_inputs=True))

    args = [jax.ShapeDtypeStruct(v.type.shape, v.type.dtype) for v in graph.inputs]
    lowered = jax.jit(run, in_shardings=shardings(graph.inputs),
                      out_shardings=shardings(graph.outputs)).lower(*args)
    compiled = None
    if mesh.devices.flat[0].platform == "cpu":
        # buffer assignment precedes code generation: skipping LLVM's optimisations halves the compile
        # and leaves memory_analysis() unchanged
        try:
            compiled = lowered.compile(compiler_options=_FAST_CPU)
        except Exception:  # an XLA without the option: compile as usual
            compiled = None
    if compiled is None:
        compiled = lowered.compile()
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
               - stats.alias_size_in_bytes)


def solve_verified(model, limit: int, time_limit: float, measure: Callable[[AutoShardResult], int | None],
                   attempts: int = 4) -> tuple[AutoShardResult, int | None, int]:
    """Solve `model` so that `measure(result)` (compiled bytes) stays within `limit`.

    Returns (result, its measured bytes, compiles used). The first solution that compiles within the
    limit is kept; the model is re-solved with a looser limit only when it was pessimistic (by more
    than `_SLACK`) where the limit binds, and a re-solve that returns a solution already measured costs
    no compile. New attempts stop after `attempts` compiles or once `time_limit` seconds have passed
    with a fitting solution in hand. See the module docstring for the method."""
    started = time.perf_counter()
    best: tuple[AutoShardResult, int] | None = None
    least: tuple[AutoShardResult, int] | None = None
    measured_of: dict[tuple, int | None] = {}
    effective, compiles = float(limit), 0
    while compiles < attempts:
        try:
            result = solve_model(model, effective, time_limit)
        except AutoShardInfeasible as error:
            if best is not None or error.least is None:
                break
            result = error.least
        key = tuple(sorted(result.class_axes.items()))
        if key in measured_of:
            break  # the same solution again: the limit cannot move it further
        measured = measured_of[key] = measure(result)
        compiles += 1
        if measured is None:
            return result, None, compiles
        if least is None or measured < least[1]:
            least = (result, measured)
        fits = measured <= limit
        if fits and (best is None or result.objective < best[0].objective or math.isnan(best[0].objective)):
            best = (result, measured)
        if result.fallback or not result.memory_bytes:
            break
        ratio = result.memory_bytes / measured  # model bytes per compiled byte for this solution
        if fits:
            binding = result.memory_bytes >= effective * (1 - _SLACK)
            if not binding or limit * ratio <= effective * (1 + _SLACK):
                break  # a looser limit would not change the solution, or would not fit
            if time.perf_counter() - started > time_limit:
                break
            effective = limit * ratio
        else:
            # aim below the limit by the miss as well: the next solution's ratio is rarely better
            effective = min(limit * ratio * (1 - _SLACK), effective - (measured - limit))
            if effective <= 0:
                break
    if best is not None:
        return best[0], best[1], compiles
    floor_result = least_memory(model, time_limit)
    if floor_result is not None and tuple(sorted(floor_result.class_axes.items())) not in measured_of:
        measured = measure(floor_result)
        compiles += 1
        if measured is not None and (least is None or measured < least[1]):
            least = (floor_result, measured)
        if measured is not None and measured <= limit:
            return floor_result, measured, compiles
    smallest = least[1] if least is not None else None
    raise AutoShardInfeasible(
        f"auto-shard: no sharding found whose compiled program fits memory-limit={limit} bytes per device "
        f"(memory_analysis after {compiles} compiles); the smallest feasible limit found is {smallest} bytes",
        smallest, least[0] if least is not None else None)
