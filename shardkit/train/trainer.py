"""`Trainer` and `fit`: one sharded train step compiled through `sk.jit`, run in a small loop with
progress, JSONL metrics, periodic evaluation and resumable Orbax checkpoints."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from shardkit.jit import ShardedFunction
from shardkit.mesh import resolve_mesh

from .checkpoint import Checkpointer, Restored
from .data import DataStream, count_tokens, shard_batch, source_for
from .errors import CheckpointError, PlanError
from .metrics import MetricsLog, Progress, mean_metrics
from .plans import Plan, PlanLayout, get_plan
from .step import make_eval_step, make_grad_step, make_train_step


@dataclass
class TrainState:
    """The arrays a step updates (params, optimizer state, other model state) and the step count."""

    params: Any
    opt_state: Any
    rest: Any
    step: int = 0


def place(tree: Any, shardings: Any) -> Any:
    """Put arrays on the mesh with the given shardings (works with several processes).

    Arrays not yet laid out that way go through host memory: each device receives only its shard
    and nothing is compiled (resharding device arrays would compile a program per shape)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    targets = treedef.flatten_up_to(shardings)
    out = []
    for x, sharding in zip(leaves, targets):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            out.append(x)
        elif isinstance(x, jax.Array) and (not x.is_fully_addressable
                                           or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)):
            out.append(jax.device_put(x, sharding))
        else:
            host = np.asarray(x)
            out.append(jax.make_array_from_callback(host.shape, sharding, lambda index, h=host: h[index]))
    return jax.tree_util.tree_unflatten(treedef, out)


class Trainer:
    """Trains a flax NNX model with an optax optimizer under a model-state plan on a mesh.

    `loss_fn(model, batch)` returns a scalar loss or `(loss, {name: scalar})`. The train step is
    captured, partitioned and compiled once by `sk.jit`; `trainer.step(batch)` runs it.
    """

    def __init__(self, model: nnx.Module, optimizer: optax.GradientTransformation, loss_fn: Callable,
                 *, mesh, plan: str | Plan = "dp", pipeline: str = "default"):
        self.mesh = resolve_mesh(mesh)
        if self.mesh is None:
            raise PlanError("Trainer needs a mesh: sk.make_mesh({'data': 4, 'model': 2})")
        self.plan = get_plan(plan)
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.pipeline = pipeline
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.layout: PlanLayout = self.plan.layout(params, self.mesh)
        self.param_specs = self.layout.specs("params")
        self.compute_specs = self.layout.specs("compute")
        self.grad_specs = self.layout.specs("grads")
        self.opt_specs = self.layout.opt_state_specs(jax.eval_shape(optimizer.init, params))
        self.rest_specs = jax.tree_util.tree_map(lambda _: PartitionSpec(), rest)
        self.batch_spec = self.layout.batch_spec()
        params = place(params, self._shardings(self.param_specs))
        opt_shardings = self._shardings(self.opt_specs)
        opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
        self.state = TrainState(params, opt_state, place(rest, self._shardings(self.rest_specs)), 0)
        self.history: list[dict] = []
        step_fn = make_train_step(self.graphdef, optimizer, loss_fn, self.compute_specs, self.grad_specs)
        self.train_step = ShardedFunction(
            step_fn, self.mesh, in_specs=(self.param_specs, self.opt_specs, self.rest_specs, self.batch_spec),
            out_specs=(self.param_specs, self.opt_specs, self.rest_specs, None), pipeline=pipeline)
        self._compiled = None
        self._data_state: dict | None = None
        self._eval = None
        self._grads = None
        self.compile_seconds = 0.0

    # -- layout helpers ---------------------------------------------------------------------------
    def _shardings(self, specs: Any) -> Any:
        return jax.tree_util.tree_map(lambda s: NamedSharding(self.mesh, s), specs,
                                      is_leaf=lambda x: isinstance(x, PartitionSpec))

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, self.batch_spec)

    def shard_batch(self, batch: Any) -> Any:
        """Check a global batch against the data axes and place it on the mesh."""
        self.layout.check_batch(batch)
        return shard_batch(batch, self.batch_sharding)

    @property
    def model(self) -> nnx.Module:
        """The model with the current (sharded) parameters."""
        return nnx.merge(self.graphdef, self.state.params, self.state.rest)

    @property
    def params(self) -> Any:
        return self.state.params

    # -- compiled steps ---------------------------------------------------------------------------
    def _args(self, batch):
        return (self.state.params, self.state.opt_state, self.state.rest, batch)

    def compile(self, batch: Any):
        """Capture, partition and compile the train step for this batch's shapes (done once)."""
        if self._compiled is None:
            started = time.perf_counter()
            batch = self.shard_batch(batch)
            self._compiled = self.train_step.lower(*self._args(batch)).compile()
            self._out_tree = self.train_step.build(*self._args(batch)).graph.out_tree
            self.compile_seconds = time.perf_counter() - started
        return self._compiled

    def run_step(self, state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        """The compiled step applied to any state laid out like this trainer's (no side effects)."""
        batch = self.shard_batch(batch)
        compiled = self.compile(batch)
        args = (state.params, state.opt_state, state.rest, batch)
        outs = jax.tree_util.tree_unflatten(self._out_tree, list(compiled(*jax.tree_util.tree_leaves((args, {})))))
        params, opt_state, rest, metrics = outs
        return TrainState(params, opt_state, rest, state.step + 1), metrics

    def step(self, batch: Any) -> dict[str, jax.Array]:
        """One training step on a global batch; returns the step's metrics (device scalars)."""
        self.state, metrics = self.run_step(self.state, batch)
        return metrics

    def evaluate(self, batches: Iterable[Any]) -> dict[str, float]:
        """Mean metrics of `loss_fn` over some batches, without updating anything."""
        if self._eval is None:
            fn = make_eval_step(self.graphdef, self.loss_fn, self.compute_specs)
            self._eval = ShardedFunction(fn, self.mesh, in_specs=(self.param_specs, self.rest_specs, self.batch_spec),
                                         pipeline=self.pipeline)
        records = [{k: float(v) for k, v in self._eval(self.state.params, self.state.rest,
                                                       self.shard_batch(b)).items()} for b in batches]
        return mean_metrics(records)

    def loss_and_grads(self, batch: Any) -> tuple[jax.Array, Any]:
        """The loss and gradients at the current parameters, laid out as the plan's `grads`."""
        if self._grads is None:
            fn = make_grad_step(self.graphdef, self.loss_fn, self.compute_specs, self.grad_specs)
            self._grads = ShardedFunction(fn, self.mesh, in_specs=(self.param_specs, self.rest_specs, self.batch_spec),
                                          out_specs=(None, self.grad_specs), pipeline=self.pipeline)
        return self._grads(self.state.params, self.state.rest, self.shard_batch(batch))

    def graph(self, batch: Any):
        """The train step's IR after the pass pipeline (every value carries a sharding)."""
        return self.train_step.graph(*self._args(self.shard_batch(batch)))

    def explain(self, batch: Any):
        """An `sk.ExplainReport` of the compiled train step (predicted vs compiled collectives),
        built from the step already compiled instead of compiling it again as `sk.explain` would."""
        from shardkit.explain import ExplainReport, ValueRow
        from shardkit.hlo import collectives_from_hlo
        from shardkit.ir.printer import type_text
        from shardkit.passes.communication import graph_collectives, peak_memory
        from shardkit.passes.sharding_engine import value_order
        batch = self.shard_batch(batch)
        hlo = self.compile(batch).as_text()
        build = self.train_step.build(*self._args(batch))
        graph = getattr(build, "propagated", None) or build.graph
        origins = build.propagation.origins if build.propagation is not None else {}
        rows = []
        for index, value in enumerate(value_order(graph)):
            dims = origins.get(value, [])
            origin = "; ".join(sorted({o for o in dims if o})) or ("-" if value.type.rank else "")
            rows.append(ValueRow(f"%{index}", type_text(value.type), origin))
        unruled = list(build.propagation.unruled) if build.propagation is not None else []
        warnings_ = [d.message for d in build.ctx.diagnostics if getattr(d, "severity", "") == "warning"]
        mesh_shape = self.train_step.mesh_shape
        return ExplainReport(graph, mesh_shape, rows, graph_collectives(graph, mesh_shape),
                             collectives_from_hlo(hlo, self.mesh), unruled, peak_memory(graph, mesh_shape), hlo,
                             warnings_)

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        return {"params": self.state.params, "opt_state": self.state.opt_state, "rest": self.state.rest}

    def save(self, checkpointer: Checkpointer, data_state: dict | None = None) -> None:
        """Start an async save of the current state (and data position) at the current step."""
        meta = {"data": data_state or {}, "plan": self.plan.name, "mesh": dict(self.mesh.shape)}
        checkpointer.save(self.state.step, self.checkpoint_state(), meta)

    def restore(self, checkpointer: Checkpointer | str | Path, step: int | None = None) -> Restored | None:
        """Load a checkpoint into this trainer's mesh and plan (any mesh/plan it was saved with)."""
        if not isinstance(checkpointer, Checkpointer):
            checkpointer = Checkpointer(checkpointer)
        restored = checkpointer.restore(self.checkpoint_state(), step=step)
        if restored is None:
            return None
        self.state = TrainState(restored.state["params"], restored.state["opt_state"],
                                restored.state["rest"], int(restored.step))
        self._data_state = restored.meta.get("data")  # the next fit() continues the data from here
        return restored

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, data: Callable | Iterable, *, steps: int, workdir: str | Path | None = None,
            checkpoint_every: int | None = None, resume: bool = False, eval_data: Callable | Iterable | None = None,
            eval_every: int | None = None, eval_batches: int = 1, progress: bool = True, console=None,
            max_to_keep: int | None = 3, on_step: Callable[[dict], None] | None = None) -> list[dict]:
        """Train until `steps` steps are done; returns this call's metric records.

        With `workdir`, metrics go to WORKDIR/metrics.jsonl and checkpoints to WORKDIR/checkpoints
        (every `checkpoint_every` steps and at the end); `resume=True` continues from the newest good
        checkpoint there with the same data position, so the loss trajectory matches an
        uninterrupted run.
        """
        if (resume or checkpoint_every) and workdir is None:
            raise CheckpointError("fit(resume=... / checkpoint_every=...) needs workdir=: checkpoints live in "
                                  "WORKDIR/checkpoints")
        stream = source_for(data)
        workdir = Path(workdir) if workdir is not None else None
        log = MetricsLog(workdir / "metrics.jsonl" if workdir is not None else None)
        checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=max_to_keep) \
            if workdir is not None and (checkpoint_every or resume) else None
        if resume and checkpointer is not None:
            restored = self.restore(checkpointer)
            if restored is not None:
                log.truncate_after(restored.step)
            else:
                log.reset()
        elif workdir is not None and self.state.step == 0:
            log.reset()
            if checkpointer is not None and checkpointer.steps():
                removed = checkpointer.clear()
                warnings.warn(f"starting a fresh run in {workdir}: removed checkpoints of an earlier run "
                              f"(steps {removed}); pass resume=True to continue them instead", stacklevel=2)
        if self._data_state is not None:
            if stream.stateless or not self._data_state.get("after_fit"):
                stream.restore(self._data_state)
            self._data_state = None
        eval_set = _eval_set(eval_data, eval_batches) if eval_data is not None else None
        records: list[dict] = []
        bar = None
        last_saved = self.state.step if resume else None
        try:
            if self.state.step < steps:
                first = stream.next()
                self.compile(first)
                tokens, unit = count_tokens(first)
                bar = Progress(steps, self.state.step, unit, console, enabled=progress)
                batch = first
                while True:
                    started = time.perf_counter()
                    metrics = self.step(batch)
                    record = {"step": self.state.step, **{k: float(v) for k, v in metrics.items()}}
                    seconds = time.perf_counter() - started
                    record["step_time_s"] = seconds
                    record[f"{unit}_per_s"] = tokens / seconds if seconds > 0 else 0.0
                    if eval_set is not None and eval_every and self.state.step % eval_every == 0:
                        record.update({f"eval_{k}": v for k, v in self.evaluate(eval_set).items()})
                    log.write(record)
                    records.append(record)
                    self.history.append(record)
                    if on_step is not None:
                        on_step(record)
                    extra = f"eval {record['eval_loss']:.4f}" if "eval_loss" in record else ""
                    bar.update(self.state.step, record["loss"], seconds, record[f"{unit}_per_s"], extra)
                    if checkpointer is not None and checkpoint_every and self.state.step % checkpoint_every == 0:
                        self.save(checkpointer, stream.state())
                        last_saved = self.state.step
                    if self.state.step >= steps:
                        break
                    batch = stream.next()
            if checkpointer is not None and checkpoint_every and self.state.step > 0 \
                    and last_saved != self.state.step:
                self.save(checkpointer, stream.state())
        finally:
            if stream.stateless:  # a later fit() with a step-indexed source continues from here
                self._data_state = {**stream.state(), "after_fit": True}
            if bar is not None:
                bar.close()
            log.close()
            if checkpointer is not None:
                checkpointer.close()
        return records


def _eval_set(eval_data, count: int) -> list:
    if callable(eval_data) and not hasattr(eval_data, "__next__"):
        return [eval_data(i) for i in range(count)]
    return list(islice(iter(eval_data), count))


def fit(model: nnx.Module, optimizer: optax.GradientTransformation, loss_fn: Callable, data, *, mesh,
        plan: str | Plan = "dp", steps: int, **options) -> Trainer:
    """Build a Trainer and train (see Trainer.fit for the options); returns the trainer."""
    trainer = Trainer(model, optimizer, loss_fn, mesh=mesh, plan=plan)
    trainer.fit(data, steps=steps, **options)
    return trainer
