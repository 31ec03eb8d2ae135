"""Logical axis names: write specs with model-level names ("batch", "mlp", "embed") and map them to
mesh axes with a rules table.

    rules = sk.axis_rules({"batch": "data", "mlp": "model", "embed": None})
    with rules:
        y = sk.hint(x, P("batch", "mlp"))        # resolves to P("data", "model")
    sk.jit(fn, mesh=mesh, in_specs=(P("batch", "embed"),), axis_rules=rules)

Rules are (logical name, mesh axes) pairs read in order; a logical name may appear several times
and the first rule whose mesh axes all exist in the mesh and are not already used by an earlier
dimension of the same spec wins (None means "leave unsharded"). Names that no rule mentions are
taken as mesh axis names themselves.
"""
from __future__ import annotations

import contextvars
from typing import Iterable, Mapping, Sequence

from jax.sharding import PartitionSpec

from shardkit.ir import ShardingError

_ACTIVE: contextvars.ContextVar["AxisRules | None"] = contextvars.ContextVar("shardkit_axis_rules", default=None)


class AxisRules:
    """An ordered table from logical axis names to mesh axes; also a context manager."""

    def __init__(self, rules: Mapping[str, object] | Sequence[tuple[str, object]]):
        pairs = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
        self.rules: tuple[tuple[str, tuple[str, ...] | None], ...] = tuple(
            (str(name), None if target is None else (target,) if isinstance(target, str) else tuple(target))
            for name, target in pairs)
        self._tokens: list = []

    def __enter__(self) -> "AxisRules":
        self._tokens.append(_ACTIVE.set(self))
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self._tokens.pop())

    def __repr__(self) -> str:
        return f"AxisRules({list(self.rules)!r})"

    @property
    def logical_names(self) -> set[str]:
        return {name for name, _ in self.rules}

    def resolve(self, spec: PartitionSpec, mesh_axes: Iterable[str] | None = None) -> PartitionSpec:
        """The mesh-axis PartitionSpec for a spec written with logical names."""
        available = set(mesh_axes) if mesh_axes is not None else None
        used: set[str] = set()
        entries = []
        for entry in spec:
            if entry is None or entry is PartitionSpec.UNCONSTRAINED:
                entries.append(entry)
                continue
            names = (entry,) if isinstance(entry, str) else tuple(entry)
            axes: list[str] = []
            for name in names:
                axes.extend(self._resolve_name(name, available, used | set(axes)))
            used.update(axes)
            entries.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
        return PartitionSpec(*entries)

    def _resolve_name(self, name: str, available, used) -> tuple[str, ...]:
        matched = False
        for logical, target in self.rules:
            if logical != name:
                continue
            matched = True
            if target is None:
                return ()
            if available is not None and not set(target) <= available:
                continue
            if set(target) & used:
                continue
            return target
        if matched:
            return ()
        return (name,)


def axis_rules(rules: Mapping[str, object] | Sequence[tuple[str, object]]) -> AxisRules:
    """Build a logical-axis rules table (use it with `with`, or pass it as `sk.jit(..., axis_rules=)`)."""
    if not isinstance(rules, (Mapping, list, tuple)):
        raise ShardingError(f"axis_rules expects a dict or a list of (logical, mesh axis) pairs, got {rules!r}")
    return AxisRules(rules)


def active_rules() -> AxisRules | None:
    """The rules table of the innermost `with sk.axis_rules(...)`, or None."""
    return _ACTIVE.get()


def resolve_spec(spec, mesh_axes=None, rules: AxisRules | None = None):
    """Resolve logical names in a PartitionSpec with `rules` (or the active table); others pass through."""
    rules = rules or active_rules()
    if rules is None or not isinstance(spec, PartitionSpec):
        return spec
    return rules.resolve(spec, mesh_axes)
