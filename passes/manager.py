"""The PassManager: runs a pipeline, checking, printing and timing as asked, and writing reproducers.

    pm = PassManager("dce,cse,canonicalize", verify=True, print_after_change=True, timing=True)
    graph = pm.run(graph, mesh=mesh)
    print(pm.timing_report())

On any failure (a pass raising, a pass returning invalid IR, a missing required property, a pass
reporting error diagnostics) it writes a reproducer (see reproducer.py) and raises PassError (or
PassVerifyError) naming the pass and the reproducer's path.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Sequence, TextIO

from shardkit.ir import Graph, ShardingError, VerifyError, verify as verify_graph

from .base import ALL_PROPERTIES, Pass
from .config import debug_enabled
from .context import PassContext
from .errors import PassError, PassShardingError, PassVerifyError
from .pipeline import Pipeline
from .properties import registered_properties
from .reproducer import write_reproducer


@dataclass(frozen=True)
class PassTiming:
    """How long one pass took, and the graph size (ops, regions included) before and after it."""

    name: str
    seconds: float
    ops_before: int
    ops_after: int
    changed: bool


def _selected(setting: bool | Collection[str], name: str) -> bool:
    if isinstance(setting, bool):
        return setting
    return name in setting


class PassManager:
    """Runs a pipeline over graphs with optional verification, IR printing, timing and reproducers.

    verify: verify the input and every pass's output (None: on when `shardkit.passes.set_debug(True)`
    or inside `with shardkit.passes.debug():`). print_before / print_after: True or a set of pass
    names. print_after_change: print after a pass only when it changed the IR. timing: write a
    timing table after the run (timings are always recorded in `.timings`). reproducer_dir: where
    reproducers go (default: <tmp>/shardkit-reproducers); reproducers=False writes none.
    """

    def __init__(self, pipeline: Pipeline | str | Sequence[Pass], *, verify: bool | None = None,
                 print_before: bool | Collection[str] = False, print_after: bool | Collection[str] = False,
                 print_after_change: bool = False, timing: bool = False,
                 reproducer_dir: str | os.PathLike | None = None, reproducers: bool = True,
                 ctx: PassContext | None = None, options: Mapping[str, Any] | None = None,
                 out: TextIO | None = None):
        if isinstance(pipeline, str):
            pipeline = Pipeline.parse(pipeline)
        elif not isinstance(pipeline, Pipeline):
            pipeline = Pipeline(pipeline)
        self.pipeline = pipeline
        self.verify = verify
        self.print_before = print_before
        self.print_after = print_after
        self.print_after_change = print_after_change
        self.timing = timing
        self.reproducer_dir = reproducer_dir
        self.reproducers = reproducers
        self.ctx = ctx
        self.options = dict(options or {})
        self.out = out
        self.timings: list[PassTiming] = []

    # -- running -----------------------------------------------------------------------------
    def run(self, graph: Graph, mesh: Any = None) -> Graph:
        """Run every pass in order on `graph` and return the result."""
        if not isinstance(graph, Graph):
            raise PassError(f"PassManager.run expects a shardkit.ir.Graph, got {type(graph).__name__}; "
                            f"capture a function first with shardkit.capture(fn, *args)")
        ctx = self._context(graph, mesh)
        verify = debug_enabled() if self.verify is None else self.verify
        ctx.debug = ctx.debug or verify
        self.timings = []
        passes = self.pipeline.passes
        if verify:
            try:
                verify_graph(graph, mesh=ctx.mesh)
            except VerifyError as e:
                self._fail(ctx, graph, 0, PassVerifyError(
                    f"the input graph of pipeline '{self.pipeline}' is invalid (no pass has run yet): {e}",
                    op=e.op), e)
        established: set[str] = set()
        for index, p in enumerate(passes):
            graph, established = self._run_one(ctx, graph, index, p, established, verify)
        ctx.diagnostics.current_pass = None
        if self.timing:
            ctx.write(self.timing_report())
        return graph

    def _context(self, graph: Graph, mesh: Any) -> PassContext:
        ctx = self.ctx if self.ctx is not None else PassContext()
        if mesh is not None:
            ctx.mesh = mesh
        elif ctx.mesh is None:
            ctx.mesh = graph.mesh
        if self.options:
            ctx.options = {**ctx.options, **self.options}
        if self.out is not None:
            ctx.out = self.out
        return ctx

    def _run_one(self, ctx: PassContext, graph: Graph, index: int, p: Pass, established: set[str],
                 verify: bool) -> tuple[Graph, set[str]]:
        name = p.name
        where = f"pass '{name}' (pass {index + 1} of {len(self.pipeline)} in '{self.pipeline}')"
        for required in sorted(p.requires - established):
            prop = registered_properties().get(required)
            if prop is None:
                problem, what = "no earlier pass guarantees it and it has no registered check", ""
            else:
                problem, what = prop.check(graph), f" ({prop.description})"
            if problem is not None:
                self._fail(ctx, graph, index, PassError(
                    f"{where} requires '{required}'{what}, but {problem}; put a pass that guarantees "
                    f"it earlier in the pipeline", name))
        if _selected(self.print_before, name):
            ctx.write(f"## IR before pass '{name}' ({index + 1} of {len(self.pipeline)})\n{graph}")
        ctx.diagnostics.current_pass = name
        errors_before = len(ctx.diagnostics.errors())
        ops_before = graph.num_ops()
        start = time.perf_counter()
        try:
            result = p.run(graph, ctx)
        except Exception as e:
            # a user-input problem (e.g. conflicting hints) stays catchable as its own kind
            kind = PassShardingError if isinstance(e, ShardingError) else PassError
            self._fail(ctx, graph, index, kind(f"{where} failed: {type(e).__name__}: {e}", name), e)
        seconds = time.perf_counter() - start
        if not isinstance(result, Graph):
            self._fail(ctx, graph, index, PassError(
                f"{where} returned {type(result).__name__}, not a Graph; `run` must return the "
                f"graph (the same object when nothing changed)", name))
        new_errors = ctx.diagnostics.errors()[errors_before:]
        if new_errors:
            listing = "\n".join(f"  {d}" for d in new_errors)
            self._fail(ctx, graph, index, PassError(f"{where} reported {len(new_errors)} error(s):\n"
                                                    f"{listing}", name))
        if verify:
            self._verify_output(ctx, graph, result, index, p, where)
        if p.preserves == ALL_PROPERTIES:
            established = established | set(p.guarantees)
        else:
            established = (established & set(p.preserves)) | set(p.guarantees)
        changed = result is not graph
        self.timings.append(PassTiming(name, seconds, ops_before, result.num_ops(), changed))
        if _selected(self.print_after, name):
            ctx.write(f"## IR after pass '{name}' ({index + 1} of {len(self.pipeline)})\n{result}")
        elif self.print_after_change and changed and str(result) != str(graph):
            ctx.write(f"## IR after pass '{name}' ({index + 1} of {len(self.pipeline)}, changed)\n{result}")
        if changed:
            ctx.analyses.keep_only(result)
        return result, established

    def _verify_output(self, ctx: PassContext, before: Graph, result: Graph, index: int, p: Pass,
                       where: str) -> None:
        try:
            verify_graph(result, mesh=ctx.mesh, pass_name=p.name)
        except VerifyError as e:
            self._fail(ctx, before, index, PassVerifyError(f"{where} produced invalid IR: {e}", p.name,
                                                           op=e.op), e)
        for guaranteed in sorted(p.guarantees):
            prop = registered_properties().get(guaranteed)
            problem = prop.check(result) if prop is not None else None
            if problem is not None:
                self._fail(ctx, before, index, PassVerifyError(
                    f"{where} guarantees '{guaranteed}' ({prop.description}), but after it {problem}",
                    p.name))

    def _fail(self, ctx: PassContext, graph: Graph, index: int, error: PassError,
              cause: BaseException | None = None):
        """Write a reproducer for the failure at pass `index` (given `graph`) and raise `error`."""
        if self.reproducers:
            failed = self.pipeline.passes[index].name if error.pass_name else None
            path = write_reproducer(graph, str(self.pipeline.tail(index)), failed_pass=failed,
                                    error=str(error), mesh=ctx.mesh, directory=self.reproducer_dir)
            error.reproducer = path
            error.args = (f"{error.args[0]}\nreproducer written to {path}; rerun it with "
                          f"shardkit.passes.run_reproducer({path!r})",)
        ctx.diagnostics.current_pass = None
        raise error from cause

    # -- reporting ---------------------------------------------------------------------------
    def timing_report(self) -> str:
        """A table of the last run: per pass, time, share of the total, and ops before -> after."""
        total = sum(t.seconds for t in self.timings) or 1e-12
        width = max([len(t.name) for t in self.timings] + [4])
        lines = [f"## pass timing ({len(self.timings)} passes, {total * 1e3:.2f} ms total)",
                 f"## {'pass':<{width}}  {'ms':>9}  {'share':>6}  ops"]
        for t in self.timings:
            mark = "" if t.changed else "  (unchanged)"
            lines.append(f"## {t.name:<{width}}  {t.seconds * 1e3:9.2f}  {100 * t.seconds / total:5.1f}%  "
                         f"{t.ops_before} -> {t.ops_after}{mark}")
        return "\n".join(lines) + "\n"
