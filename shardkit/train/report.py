"""`plan_report`: per-device memory and predicted communication of model-state plans, side by side.

Memory is exact for evenly divisible shards: bytes of each array divided by the number of shards
its spec makes. Communication is the model-state traffic a plan implies per step under the ring
model (the same one `sk.explain` uses): gathering stored parameter shards to the compute layout,
reducing gradients over the data axes (reduce-scatter where the gradient layout is sharded,
all-reduce otherwise), and gathering updated shards back to the storage layout. Activation traffic
depends on the model; pass `loss_fn` and `batch` to add the whole step's collectives as predicted
by shardkit's communication model on the partitioned train step.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import jax
import optax
from flax import nnx

from shardkit.ir import MeshShape

from .errors import PlanError
from .plans import PLAN_NAMES, ParamLayout, Plan, get_plan, spec_axes, spec_bytes


@dataclass(frozen=True)
class PlanRow:
    """One plan's per-device bytes (params, grads, optimizer state) and predicted bytes per step."""

    plan: str
    params_bytes: int = 0
    grads_bytes: int = 0
    opt_state_bytes: int = 0
    comm: dict = field(default_factory=dict)
    step_comm_bytes: float | None = None
    error: str | None = None

    @property
    def total_bytes(self) -> int:
        return self.params_bytes + self.grads_bytes + self.opt_state_bytes

    @property
    def comm_bytes(self) -> float:
        return float(sum(self.comm.values()))


@dataclass
class PlanReport:
    """Rows of `plan_report`; `report["fsdp"]` is one plan's row. Prints as a rich table."""

    mesh: MeshShape
    rows: list[PlanRow]
    chosen: str | None = None

    def __getitem__(self, name: str) -> PlanRow:
        for row in self.rows:
            if row.plan == name:
                return row
        raise KeyError(f"no plan {name!r} in this report; it has {[r.plan for r in self.rows]}")

    def __rich__(self):
        from rich.table import Table
        table = Table(title=f"model-state plans on mesh ({self.mesh}): per-device bytes",
                      caption="comm: model-state collectives per step (ring model); AG all-gather, "
                              "RS reduce-scatter, AR all-reduce")
        for col in ("plan", "params", "grads", "opt state", "total", "comm/step", "of which"):
            table.add_column(col, justify="left" if col in ("plan", "of which") else "right")
        has_step = any(r.step_comm_bytes is not None for r in self.rows)
        if has_step:
            table.add_column("step comm (sk.explain)", justify="right")
        for row in self.rows:
            name = f"[bold]{row.plan} *[/]" if row.plan == self.chosen else row.plan
            if row.error:
                table.add_row(name, "", "", "", "", "", f"[dim]n/a: {row.error}[/]", *([""] if has_step else []))
                continue
            detail = " + ".join(f"{_ABBREV.get(k, k)} {_size(v)}" for k, v in row.comm.items() if v) or "none"
            cells = [name, _size(row.params_bytes), _size(row.grads_bytes), _size(row.opt_state_bytes),
                     _size(row.total_bytes), _size(row.comm_bytes), detail]
            if has_step:
                cells.append("" if row.step_comm_bytes is None else _size(row.step_comm_bytes))
            table.add_row(*cells)
        return table

    def __str__(self) -> str:
        from rich.console import Console
        buffer = io.StringIO()
        Console(file=buffer, width=160, force_terminal=False, color_system=None).print(self)
        return buffer.getvalue()


_ABBREV = {"param all-gather": "AG params", "grad reduce-scatter": "RS grads", "grad all-reduce": "AR grads",
           "grad all-gather": "AG grads", "update all-gather": "AG updates"}


def _size(n: float) -> str:
    """Bytes in 3-4 significant characters: 812B, 423K, 1.7M (powers of 1024)."""
    n = float(n)
    for unit in ("B", "K", "M", "G"):
        if abs(n) < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" or abs(n) >= 10 else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}G"


def _size_of(mesh: MeshShape, axes) -> int:
    n = 1
    for a in axes:
        n *= mesh.size(a)
    return n


def _axes(spec) -> set[str]:
    return {a for d in spec_axes(spec) for a in d}


def _ring(kind: str, n: int, nbytes: float) -> float:
    if n <= 1:
        return 0.0
    return (2 if kind == "all-reduce" else 1) * (n - 1) / n * nbytes


def state_comm(leaf: ParamLayout, mesh: MeshShape, data_axes: Sequence[str]) -> dict[str, float]:
    """Per-device wire bytes one parameter's plan implies per step, by phase (ring model)."""
    nbytes = float(leaf.nbytes)
    stored, compute, grads, opt = (_axes(leaf.params), _axes(leaf.compute), _axes(leaf.grads),
                                   _axes(leaf.opt_state))
    out = {"param all-gather": 0.0, "grad reduce-scatter": 0.0, "grad all-reduce": 0.0,
           "grad all-gather": 0.0, "update all-gather": 0.0}
    gathered = stored - compute
    if gathered:  # FSDP: stored shards gathered to the compute layout
        out["param all-gather"] += _ring("all-gather", _size_of(mesh, gathered),
                                         nbytes / _size_of(mesh, stored & compute))
    operand = nbytes / _size_of(mesh, compute)
    partial = [a for a in data_axes if a not in compute]
    scatter = [a for a in partial if a in grads]
    reduce = [a for a in partial if a not in grads]
    if scatter:
        n = _size_of(mesh, scatter)
        out["grad reduce-scatter"] += _ring("reduce-scatter", n, operand)
        operand /= n
    if reduce:
        out["grad all-reduce"] += _ring("all-reduce", _size_of(mesh, reduce), operand)
    if compute - grads - set(data_axes):  # tensor-parallel grads gathered to a coarser layout
        out["grad all-gather"] += _ring("all-gather", _size_of(mesh, compute - grads - set(data_axes)),
                                        nbytes / _size_of(mesh, grads))
    if grads - opt:  # gradient shards gathered to the optimizer layout
        out["update all-gather"] += _ring("all-gather", _size_of(mesh, grads - opt), nbytes / _size_of(mesh, opt))
    if opt - stored:  # updates computed on optimizer shards, gathered to the stored layout
        out["update all-gather"] += _ring("all-gather", _size_of(mesh, opt - stored), nbytes / _size_of(mesh, stored))
    return out


def _params_of(model) -> Any:
    if isinstance(model, nnx.Module):
        return nnx.split(model, nnx.Param, ...)[1]
    return model


def plan_row(plan: str | Plan, model, mesh, optimizer: optax.GradientTransformation | None = None) -> PlanRow:
    """The PlanRow of one plan (raises PlanError if the plan does not fit the model or mesh)."""
    plan = get_plan(plan)
    params = _params_of(model)
    layout = plan.layout(params, mesh)
    optimizer = optimizer if optimizer is not None else optax.adam(1e-3)
    opt_state = jax.eval_shape(optimizer.init, params)
    opt_specs = layout.opt_state_specs(opt_state)
    opt_leaves = jax.tree_util.tree_leaves(opt_state)
    opt_spec_leaves = jax.tree_util.tree_structure(opt_state).flatten_up_to(opt_specs)
    opt_bytes = sum(spec_bytes(x.shape, x.dtype, s, layout.mesh) for x, s in zip(opt_leaves, opt_spec_leaves))
    comm: dict[str, float] = {}
    for leaf in layout.leaves:
        for k, v in state_comm(leaf, layout.mesh, layout.data_axes).items():
            comm[k] = comm.get(k, 0.0) + v
    return PlanRow(plan.name, layout.per_device_bytes("params"), layout.per_device_bytes("grads"), opt_bytes, comm)


def plan_report(plan: str | Plan | Sequence[str | Plan] | None, model, mesh,
                optimizer: optax.GradientTransformation | None = None, *, loss_fn: Callable | None = None,
                batch: Any = None, show: bool = True, console=None) -> PlanReport:
    """Per-device memory for params, grads and optimizer state and the predicted bytes communicated
    per step, for `plan` next to the other named plans (or exactly the plans in a list), printed as a
    table (unless `show=False`) and returned. `optimizer` defaults to Adam (two moments)."""
    mesh_shape = MeshShape.of(mesh)
    if plan is None or isinstance(plan, (str, Plan)):
        chosen = get_plan(plan).name if plan is not None else None
        plans: list = ([plan] if plan is not None else []) + [p for p in PLAN_NAMES if p not in ("zero3",)
                                                              and p != chosen]
    else:
        plans, chosen = list(plan), None
    rows = []
    for p in plans:
        name = get_plan(p).name
        try:
            row = plan_row(p, model, mesh, optimizer)
        except PlanError as e:
            rows.append(PlanRow(name, error=str(e).split(";")[0]))
            continue
        if loss_fn is not None and batch is not None:
            row = _with_step_comm(row, p, model, mesh, optimizer, loss_fn, batch)
        rows.append(row)
    report = PlanReport(mesh_shape, rows, chosen)
    if show:
        from rich.console import Console
        (console or Console()).print(report)
    return report


def _with_step_comm(row: PlanRow, plan, model, mesh, optimizer, loss_fn, batch) -> PlanRow:
    from dataclasses import replace
    from shardkit.passes.communication import graph_collectives
    from .trainer import Trainer
    model = nnx.clone(model) if isinstance(model, nnx.Module) else model
    trainer = Trainer(model, optimizer if optimizer is not None else optax.adam(1e-3), loss_fn, mesh=mesh, plan=plan)
    graph = trainer.graph(batch)
    total = sum(c.bytes for c in graph_collectives(graph, trainer.train_step.mesh_shape))
    return replace(row, step_comm_bytes=float(total))
