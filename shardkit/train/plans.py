"""Model-state partitioning plans: where parameters, gradients and optimizer state live on a mesh.

A plan gives each of the four model-state roles its own layout (the AMSP idea, generalising
ZeRO-1/2/3 and FSDP):

- `params`: how parameters are stored between steps;
- `compute`: how parameters are laid out while the forward/backward pass uses them (FSDP gathers
  its stored shards back to this layout);
- `grads`: how gradients are materialised (ZeRO-2/3 reduce-scatter them to shards);
- `opt_state`: how optimizer moments are stored (ZeRO-1 shards them).

A layout is a `Placement` (tensor-parallel layout on the model axes and/or full sharding over the
data axes), an `sk.axis_rules` table (each parameter's logical axis names, from
`nnx.with_partitioning`, resolved through it), a PartitionSpec for every parameter, a pytree of
PartitionSpecs shaped like the parameters, or a callable `(name, shape) -> PartitionSpec`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence, Union

import jax
from jax.sharding import Mesh, PartitionSpec

from shardkit.axis_rules import AxisRules, axis_rules
from shardkit.ir import MeshShape

from .errors import DataError, PlanError
from .tree import array_bytes, leaf_names, logical_names, variable_metadata


@dataclass(frozen=True)
class Placement:
    """A layout rule: `tensor_parallel` puts each parameter's tensor-parallel split on the plan's
    model axes; `shard` (True for the plan's data axes, or explicit axes) additionally splits the
    largest evenly divisible dimension, ZeRO-style. `Placement()` is replicated."""

    tensor_parallel: bool = False
    shard: bool | tuple[str, ...] = False

    def __str__(self) -> str:
        parts = []
        if self.tensor_parallel:
            parts.append("tp")
        if self.shard is True:
            parts.append("sharded")
        elif self.shard:
            parts.append("sharded(" + "+".join(self.shard) + ")")
        return "+".join(parts) or "replicated"


REPLICATED = Placement()
SHARDED = Placement(shard=True)
TP = Placement(tensor_parallel=True)
SHARDED_TP = Placement(tensor_parallel=True, shard=True)

Layout = Union[Placement, AxisRules, PartitionSpec, Callable, Any]

DEFAULT_TP_RULES = axis_rules([
    ("vocab", "model"), ("heads", "model"), ("kv_heads", "model"), ("mlp", "model"),
    ("experts", "model"), ("kv", None), ("embed", None), ("length", None), ("batch", None),
])
"""How tensor-parallel layouts read logical axis names when a plan names no rules of its own."""


@dataclass(frozen=True)
class Plan:
    """A model-state partitioning plan; `None` roles default as documented on each field.

    data_axes: mesh axes the batch (and `shard=True` placements) split over; default: every mesh
    axis that is not a model axis. model_axes: the tensor-parallel axes (default `("model",)`).
    rules: the logical-name table tensor-parallel placements use (default DEFAULT_TP_RULES).
    """

    name: str = "custom"
    params: Layout = REPLICATED
    grads: Layout = None          # default: like params
    opt_state: Layout = None      # default: like params
    compute: Layout = None        # default: params without their data-axis shards
    data_axes: tuple[str, ...] | None = None
    model_axes: tuple[str, ...] = ("model",)
    rules: AxisRules | None = None

    def __str__(self) -> str:
        return self.name

    def layout(self, params: Any, mesh: Mesh | MeshShape | Mapping) -> "PlanLayout":
        """Resolve the plan for concrete parameters (an nnx State, or any pytree of arrays) on a mesh."""
        return resolve_layout(self, params, mesh)


NAMED_PLANS: dict[str, Plan] = {
    "dp": Plan("dp", params=REPLICATED),
    "zero1": Plan("zero1", params=REPLICATED, grads=REPLICATED, opt_state=SHARDED),
    "zero2": Plan("zero2", params=REPLICATED, grads=SHARDED, opt_state=SHARDED),
    "zero3": Plan("zero3", params=SHARDED, grads=SHARDED, opt_state=SHARDED, compute=REPLICATED),
    "fsdp": Plan("fsdp", params=SHARDED, grads=SHARDED, opt_state=SHARDED, compute=REPLICATED),
    "megatron": Plan("megatron", params=TP, grads=TP, opt_state=TP, compute=TP),
    "fsdp+tp": Plan("fsdp+tp", params=SHARDED_TP, grads=SHARDED_TP, opt_state=SHARDED_TP, compute=TP),
}
PLAN_NAMES = ("dp", "zero1", "zero2", "zero3", "fsdp", "megatron", "fsdp+tp")


def get_plan(plan: "str | Plan") -> Plan:
    """A Plan from a name ("dp", "zero1", "zero2", "zero3"/"fsdp", "megatron", "fsdp+tp") or a Plan."""
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, str) and plan.lower() in NAMED_PLANS:
        return NAMED_PLANS[plan.lower()]
    raise PlanError(f"unknown plan {plan!r}: use one of {', '.join(PLAN_NAMES)}, "
                    f"or build one with sk.train.Plan(params=..., grads=..., opt_state=...)")


# -- resolution ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamLayout:
    """One parameter's resolved layout under a plan: a PartitionSpec per role."""

    name: str
    shape: tuple[int, ...]
    dtype: Any
    params: PartitionSpec
    compute: PartitionSpec
    grads: PartitionSpec
    opt_state: PartitionSpec

    @property
    def nbytes(self) -> int:
        return array_bytes(self.shape, self.dtype)


@dataclass
class PlanLayout:
    """A plan resolved for one model on one mesh: per-parameter specs and the batch axes."""

    plan: Plan
    mesh: MeshShape
    data_axes: tuple[str, ...]
    leaves: list[ParamLayout]
    treedef: Any = field(repr=False)

    def specs(self, role: str) -> Any:
        """The PartitionSpecs of one role ("params", "compute", "grads", "opt_state") as a pytree
        shaped like the parameters."""
        if role not in ("params", "compute", "grads", "opt_state"):
            raise PlanError(f"unknown role {role!r}: use params, compute, grads or opt_state")
        return jax.tree_util.tree_unflatten(self.treedef, [getattr(leaf, role) for leaf in self.leaves])

    def opt_state_specs(self, opt_state: Any) -> Any:
        """Specs for an optimizer state: each leaf shaped like a parameter whose name it ends with
        gets that parameter's `opt_state` spec; every other leaf (step counts, ...) is replicated."""
        names = leaf_names(opt_state)
        leaves, treedef = jax.tree_util.tree_flatten(opt_state)
        by_name = {leaf.name: leaf for leaf in self.leaves}
        specs = []
        for name, leaf in zip(names, leaves):
            match = _suffix_match(name, by_name)
            shape = tuple(getattr(leaf, "shape", ()))
            specs.append(match.opt_state if match is not None and match.shape == shape else PartitionSpec())
        return jax.tree_util.tree_unflatten(treedef, specs)

    def batch_spec(self) -> PartitionSpec:
        """The spec of every batch leaf: its leading dimension split over the data axes."""
        if not self.data_axes:
            return PartitionSpec()
        return PartitionSpec(self.data_axes[0] if len(self.data_axes) == 1 else tuple(self.data_axes))

    @property
    def data_size(self) -> int:
        return _axes_size(self.mesh, self.data_axes)

    def check_batch(self, batch: Any) -> None:
        """Raise DataError when a batch leaf's leading dimension does not split over the data axes."""
        n = self.data_size
        for name, leaf in zip(leaf_names(batch), jax.tree_util.tree_leaves(batch)):
            shape = tuple(getattr(leaf, "shape", ()))
            if not shape:
                raise DataError(f"batch leaf {name!r} is a scalar; every batch leaf needs a leading "
                                f"batch dimension to split over the data axes {self.data_axes}")
            if shape[0] % n:
                axes = ", ".join(f"{a}={self.mesh.size(a)}" for a in self.data_axes)
                raise DataError(f"batch leaf {name!r} has batch size {shape[0]}, which does not split "
                                f"evenly over the data axes ({axes}: {n} shards); use a batch size "
                                f"that is a multiple of {n}")

    def per_device_bytes(self, role: str) -> int:
        """Per-device bytes of the parameters (or grads) laid out for `role`."""
        return sum(spec_bytes(leaf.shape, leaf.dtype, getattr(leaf, role), self.mesh) for leaf in self.leaves)


def _suffix_match(name: str, by_name: dict[str, ParamLayout]) -> ParamLayout | None:
    parts = name.split("/")
    for start in range(len(parts)):
        found = by_name.get("/".join(parts[start:]))
        if found is not None:
            return found
    return None


def _axes_size(mesh: MeshShape, axes) -> int:
    n = 1
    for a in axes:
        n *= mesh.size(a)
    return n


def spec_axes(spec: PartitionSpec) -> list[tuple[str, ...]]:
    """Per dimension, the mesh axes a spec splits it over."""
    out = []
    for entry in spec:
        if entry is None or entry is PartitionSpec.UNCONSTRAINED:
            out.append(())
        elif isinstance(entry, str):
            out.append((entry,))
        else:
            out.append(tuple(entry))
    return out


def spec_bytes(shape, dtype, spec: PartitionSpec, mesh: MeshShape) -> int:
    """Per-device bytes of an array of `shape` laid out as `spec` (evenly divisible shards)."""
    n = _axes_size(mesh, [a for d in spec_axes(spec) for a in d])
    return array_bytes(shape, dtype) // n


def _make_spec(dims: list[tuple[str, ...]]) -> PartitionSpec:
    while dims and not dims[-1]:
        dims = dims[:-1]
    return PartitionSpec(*[None if not d else d[0] if len(d) == 1 else tuple(d) for d in dims])


def resolve_layout(plan: Plan, params: Any, mesh) -> PlanLayout:
    """Resolve `plan` for `params` on `mesh` (see Plan.layout)."""
    plan = get_plan(plan)
    mesh_shape = MeshShape.of(mesh)
    names = mesh_shape.names
    for axis in plan.model_axes:
        if not isinstance(axis, str):
            raise PlanError(f"plan {plan.name!r}: model_axes must be axis names, got {plan.model_axes!r}")
    model_axes = tuple(a for a in plan.model_axes if a in names)
    if plan.data_axes is not None:
        missing = [a for a in plan.data_axes if a not in names]
        if missing:
            raise PlanError(f"plan {plan.name!r} splits the batch over {missing}, which the mesh "
                            f"({mesh_shape}) does not have; name axes of the mesh in data_axes")
        data_axes = tuple(plan.data_axes)
    else:
        data_axes = tuple(a for a in names if a not in plan.model_axes)
    roles = {
        "params": plan.params,
        "grads": plan.params if plan.grads is None else plan.grads,
        "opt_state": plan.params if plan.opt_state is None else plan.opt_state,
        "compute": plan.compute if plan.compute is not None else _without_shard(plan.params),
    }
    for role, layout in roles.items():
        if isinstance(layout, Placement) and layout.tensor_parallel and not model_axes:
            raise PlanError(
                f"plan {plan.name!r} needs a model axis {tuple(plan.model_axes)} for tensor-parallel "
                f"{role} and the mesh ({mesh_shape}) has none; add a model axis (e.g. --mesh "
                f"data=4,model=2), set the plan's model_axes, or pick a plan without tensor parallelism "
                f"(dp, zero1, zero2, fsdp)")
        if isinstance(layout, Placement) and isinstance(layout.shard, tuple):
            missing = [a for a in layout.shard if a not in names]
            if missing:
                raise PlanError(f"plan {plan.name!r} shards {role} over {missing}, which the mesh "
                                f"({mesh_shape}) does not have")
    leaf_name_list = leaf_names(params)
    metas = variable_metadata(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    context = _Context(plan, mesh_shape, data_axes, model_axes, plan.rules or DEFAULT_TP_RULES)
    explicit = {role: _explicit_specs(layout, treedef, len(leaves), role, plan)
                for role, layout in roles.items()}
    out = []
    for i, (name, meta, leaf) in enumerate(zip(leaf_name_list, metas, leaves)):
        shape = tuple(getattr(leaf, "shape", ()))
        dtype = getattr(leaf, "dtype", None)
        specs = {}
        for role, layout in roles.items():
            spec = explicit[role][i] if explicit[role] is not None else \
                context.spec(layout, name, shape, logical_names(meta), role)
            specs[role] = context.check(spec, name, shape, role)
        out.append(ParamLayout(name, shape, dtype, **specs))
    return PlanLayout(plan, mesh_shape, data_axes, out, treedef)


def _without_shard(layout):
    if isinstance(layout, Placement):
        return Placement(tensor_parallel=layout.tensor_parallel)
    return layout


def _explicit_specs(layout, treedef, count: int, role: str, plan: Plan) -> list | None:
    """Per-leaf specs for a layout given as a pytree of PartitionSpecs (None for rule layouts)."""
    if layout is None or isinstance(layout, (Placement, AxisRules, PartitionSpec, str)) or callable(layout):
        return None
    is_spec = lambda x: x is None or isinstance(x, PartitionSpec)
    specs = jax.tree_util.tree_leaves(layout, is_leaf=is_spec)
    if len(specs) != count:
        raise PlanError(f"plan {plan.name!r}: the {role} layout has {len(specs)} PartitionSpecs but the "
                        f"model has {count} parameters; give one spec per parameter (a pytree shaped "
                        f"like the parameters), a single PartitionSpec, or a Placement")
    return [PartitionSpec() if s is None else s for s in specs]


@dataclass(frozen=True)
class _Context:
    plan: Plan
    mesh: MeshShape
    data_axes: tuple[str, ...]
    model_axes: tuple[str, ...]
    rules: AxisRules

    def spec(self, layout, name: str, shape: tuple[int, ...], logical, role: str) -> PartitionSpec:
        if isinstance(layout, str):
            layout = _PLACEMENT_WORDS.get(layout)
            if layout is None:
                raise PlanError(f"plan {self.plan.name!r}: unknown {role} layout word; use one of "
                                f"{sorted(_PLACEMENT_WORDS)}")
        if isinstance(layout, Placement):
            return self._placement(layout, name, shape, logical)
        if isinstance(layout, AxisRules):
            if logical is None:
                return PartitionSpec()
            resolved = layout.resolve(PartitionSpec(*logical), self.mesh.names)
            return _make_spec([tuple(a for a in d if a in self.mesh.names) for d in spec_axes(resolved)])
        if isinstance(layout, PartitionSpec):
            return layout
        if callable(layout):
            spec = layout(name, shape)
            if spec is None:
                return PartitionSpec()
            if not isinstance(spec, PartitionSpec):
                raise PlanError(f"plan {self.plan.name!r}: the {role} layout function returned {spec!r} "
                                f"for {name!r}; it must return a PartitionSpec")
            return spec
        raise PlanError(f"plan {self.plan.name!r}: cannot use {layout!r} as the {role} layout; give a "
                        f"Placement, an sk.axis_rules table, a PartitionSpec, a pytree of them or a function")

    def _placement(self, placement: Placement, name: str, shape, logical) -> PartitionSpec:
        dims: list[tuple[str, ...]] = [() for _ in shape]
        if placement.tensor_parallel and self.model_axes:
            dims = self._tensor_parallel(name, shape, logical)
        if placement.shard:
            axes = self.data_axes if placement.shard is True else tuple(placement.shard)
            axes = tuple(a for a in axes if not any(a in d for d in dims))
            dims = self._shard(dims, shape, axes)
        return _make_spec(dims)

    def _tensor_parallel(self, name: str, shape, logical) -> list[tuple[str, ...]]:
        n = _axes_size(self.mesh, self.model_axes)
        if logical is not None:
            if len(logical) != len(shape):
                raise PlanError(f"parameter {name!r} has shape {shape} but {len(logical)} logical axis "
                                f"names {logical}; give one name (or None) per dimension")
            resolved = self.rules.resolve(PartitionSpec(*logical), self.mesh.names)
            dims = [tuple(a for a in d if a in self.model_axes) for d in spec_axes(resolved)]
            for d, (axes, size) in enumerate(zip(dims, shape)):
                if axes and size % _axes_size(self.mesh, axes):
                    raise PlanError(
                        f"parameter {name!r} dimension {d} ({logical[d]!r}, size {size}) does not split "
                        f"evenly over {'+'.join(axes)} ({_axes_size(self.mesh, axes)} shards); change "
                        f"the model size or map {logical[d]!r} to None in the rules")
            return dims + [() for _ in range(len(shape) - len(dims))]
        dims = [() for _ in shape]
        if len(shape) >= 2:  # no logical names: split the last evenly divisible dimension
            for d in reversed(range(len(shape))):
                if shape[d] % n == 0 and shape[d] >= n:
                    dims[d] = self.model_axes
                    break
        return dims

    def _shard(self, dims, shape, axes) -> list[tuple[str, ...]]:
        if not axes:
            return dims
        n = _axes_size(self.mesh, axes)
        best = None
        for d, size in enumerate(shape):
            have = _axes_size(self.mesh, dims[d])
            if size % (have * n) or size < have * n:
                continue
            key = (not dims[d], size)  # prefer unsharded dimensions, then the largest
            if best is None or key > best[0]:
                best = (key, d)
        if best is None:
            return dims  # too small or indivisible: kept as is (replicated over `axes`)
        dims = list(dims)
        dims[best[1]] = tuple(dims[best[1]]) + tuple(axes)
        return dims

    def check(self, spec: PartitionSpec, name: str, shape, role: str) -> PartitionSpec:
        if not isinstance(spec, PartitionSpec):
            raise PlanError(f"plan {self.plan.name!r}: {role} spec for {name!r} is {spec!r}, not a PartitionSpec")
        dims = spec_axes(spec)
        if len(dims) > len(shape):
            raise PlanError(f"plan {self.plan.name!r}: {role} spec {spec} for {name!r} has {len(dims)} "
                            f"entries but the parameter has shape {shape}")
        seen: set[str] = set()
        for d, axes in enumerate(dims):
            for a in axes:
                if a not in self.mesh.names:
                    raise PlanError(f"plan {self.plan.name!r}: {role} spec {spec} for {name!r} names axis "
                                    f"{a!r}, which the mesh ({self.mesh}) does not have")
                if a in seen:
                    raise PlanError(f"plan {self.plan.name!r}: {role} spec {spec} for {name!r} uses axis "
                                    f"{a!r} twice")
                seen.add(a)
            if axes and shape[d] % _axes_size(self.mesh, axes):
                raise PlanError(f"plan {self.plan.name!r}: {role} spec {spec} splits dimension {d} of "
                                f"{name!r} (size {shape[d]}) into {_axes_size(self.mesh, axes)} uneven "
                                f"shards; pick axes whose sizes divide {shape[d]}")
        return spec


_PLACEMENT_WORDS = {"replicated": REPLICATED, "sharded": SHARDED, "tp": TP, "sharded+tp": SHARDED_TP,
                    "tp+sharded": SHARDED_TP}


def with_axes(plan: "str | Plan", *, data_axes: Sequence[str] | None = None,
              model_axes: Sequence[str] | None = None, rules: AxisRules | None = None) -> Plan:
    """A copy of a (named) plan with other data/model axes or logical-name rules."""
    plan = get_plan(plan)
    changes = {}
    if data_axes is not None:
        changes["data_axes"] = tuple(data_axes)
    if model_axes is not None:
        changes["model_axes"] = tuple(model_axes)
    if rules is not None:
        changes["rules"] = rules
    return replace(plan, **changes)
