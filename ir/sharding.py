"""Shardings in Shardy's model, and exact conversion to and from PartitionSpec / NamedSharding.

A `Sharding` lists, per tensor dimension, the ordered mesh axes that split it (major to minor) and
whether the dimension is open (propagation may shard it further) or closed. It also records axes the
value is explicitly replicated over, axes that hold a pending reduction (`unreduced`: partial sums),
and a priority (0 is highest; user hints are 0, `None` means "no priority").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from jax.sharding import NamedSharding, PartitionSpec

from .errors import ShardingError


@dataclass(frozen=True)
class MeshShape:
    """Axis names and sizes of a device mesh, without the devices: what the IR needs to check shardings."""

    axes: tuple[tuple[str, int], ...]

    @staticmethod
    def of(mesh) -> "MeshShape":
        """From a jax Mesh / AbstractMesh, a dict {name: size}, or a MeshShape."""
        if isinstance(mesh, MeshShape):
            return mesh
        if isinstance(mesh, Mapping):
            return MeshShape(tuple((str(k), int(v)) for k, v in mesh.items()))
        return MeshShape(tuple((str(k), int(v)) for k, v in mesh.shape.items()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    def size(self, axis: str) -> int:
        for name, size in self.axes:
            if name == axis:
                return size
        raise ShardingError(f"mesh {self} has no axis {axis!r}; its axes are {list(self.names)}")

    def __str__(self) -> str:
        return ", ".join(f"{name}={size}" for name, size in self.axes)


@dataclass(frozen=True)
class DimSharding:
    """How one dimension is split: ordered mesh axes (major first) and whether it is open."""

    axes: tuple[str, ...] = ()
    is_open: bool = False


@dataclass(frozen=True)
class Sharding:
    """A value's sharding: one DimSharding per dimension plus replicated/unreduced axes and priority."""

    dims: tuple[DimSharding, ...]
    replicated: tuple[str, ...] = ()
    unreduced: tuple[str, ...] = ()
    priority: int | None = None

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def replicated_of(rank: int) -> "Sharding":
        """A closed, fully replicated sharding of the given rank."""
        return Sharding(tuple(DimSharding() for _ in range(rank)))

    @staticmethod
    def open_of(rank: int) -> "Sharding":
        """An open sharding with no axes: propagation is free to choose every dimension."""
        return Sharding(tuple(DimSharding(is_open=True) for _ in range(rank)))

    @staticmethod
    def from_partition_spec(spec: PartitionSpec, rank: int, priority: int | None = None,
                            value: str = "value") -> "Sharding":
        """Exact conversion from a PartitionSpec; a spec longer than the rank is an error."""
        entries = tuple(spec)
        if len(entries) > rank:
            raise ShardingError(
                f"{value}: PartitionSpec {spec} has {len(entries)} entries but the value has rank "
                f"{rank}; give at most one entry per dimension")
        dims = []
        for entry in entries + (None,) * (rank - len(entries)):
            if entry is None:
                dims.append(DimSharding())
            elif entry is PartitionSpec.UNCONSTRAINED:
                dims.append(DimSharding(is_open=True))
            elif isinstance(entry, str):
                dims.append(DimSharding((entry,)))
            else:
                dims.append(DimSharding(tuple(entry)))
        unreduced = tuple(sorted(getattr(spec, "unreduced", ()) or ()))
        return Sharding(tuple(dims), unreduced=unreduced, priority=priority)

    @staticmethod
    def from_named_sharding(sharding: NamedSharding, rank: int) -> "Sharding":
        return Sharding.from_partition_spec(sharding.spec, rank)

    # -- conversion ---------------------------------------------------------------------------
    def to_partition_spec(self) -> PartitionSpec:
        """The PartitionSpec, with trailing closed unsharded dimensions left out (JAX's canonical form)."""
        entries = []
        for dim in self.dims:
            if dim.is_open and not dim.axes:
                entries.append(PartitionSpec.UNCONSTRAINED)
            elif not dim.axes:
                entries.append(None)
            elif len(dim.axes) == 1:
                entries.append(dim.axes[0])
            else:
                entries.append(tuple(dim.axes))
        while entries and entries[-1] is None:
            entries.pop()
        if self.unreduced:
            return PartitionSpec(*entries, unreduced=frozenset(self.unreduced))
        return PartitionSpec(*entries)

    def to_named_sharding(self, mesh) -> NamedSharding:
        self.check(MeshShape.of(mesh), shape=None)
        return NamedSharding(mesh, self.to_partition_spec())

    # -- queries ------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def used_axes(self) -> tuple[str, ...]:
        return tuple(axis for dim in self.dims for axis in dim.axes)

    @property
    def is_replicated(self) -> bool:
        return not self.used_axes and not self.unreduced

    def shard_count(self, mesh: MeshShape, dim: int) -> int:
        count = 1
        for axis in self.dims[dim].axes:
            count *= mesh.size(axis)
        return count

    def local_shape(self, shape: tuple[int, ...], mesh: MeshShape) -> tuple[int, ...]:
        """The per-device shape (ceil division where a dimension does not divide)."""
        return tuple(-(-size // self.shard_count(mesh, d)) for d, size in enumerate(shape))

    def with_priority(self, priority: int | None) -> "Sharding":
        return Sharding(self.dims, self.replicated, self.unreduced, priority)

    def check(self, mesh: MeshShape, shape: tuple[int, ...] | None, value: str = "value",
              allow_uneven: bool = False) -> None:
        """Raise ShardingError unless every axis exists once in `mesh` and dimensions divide."""
        seen: set[str] = set()
        for axis in self.used_axes + self.replicated + self.unreduced:
            if axis not in mesh.names:
                raise ShardingError(
                    f"{value}: sharding names mesh axis {axis!r}, but the mesh has only "
                    f"{list(mesh.names)}; use one of those axis names or add the axis to the mesh")
            if axis in seen:
                raise ShardingError(
                    f"{value}: mesh axis {axis!r} is used twice in sharding {self}; "
                    f"each axis may split at most one dimension")
            seen.add(axis)
        if shape is None:
            return
        if len(shape) != self.rank:
            raise ShardingError(
                f"{value}: sharding {self} has rank {self.rank} but the value has shape "
                f"{tuple(shape)} (rank {len(shape)})")
        if not allow_uneven:
            for d, size in enumerate(shape):
                count = self.shard_count(mesh, d)
                if size % count:
                    raise ShardingError(
                        f"{value}: dimension {d} of size {size} does not divide over "
                        f"{'+'.join(self.dims[d].axes)} ({count} shards); pad it to a multiple "
                        f"of {count} or shard a different dimension")

    def __str__(self) -> str:
        return "[" + ",".join(_dim_text(d) for d in self.dims) + "|" + self.extras_text() + "]"

    def extras_text(self) -> str:
        parts = []
        if self.priority is not None:
            parts.append(f"p{self.priority}")
        if self.replicated:
            parts.append("r=" + "+".join(self.replicated))
        if self.unreduced:
            parts.append("u=" + "+".join(self.unreduced))
        return ",".join(parts)


def _dim_text(dim: DimSharding) -> str:
    text = "+".join(dim.axes)
    return ("@" + text if text else "") + ("?" if dim.is_open else "")


def spec_to_sharding(spec, rank: int, mesh: MeshShape | None, value: str,
                     priority: int | None = None) -> Sharding:
    """A user-given PartitionSpec / NamedSharding / Sharding as a checked Sharding."""
    if isinstance(spec, Sharding):
        sharding = spec
    elif isinstance(spec, NamedSharding):
        sharding = Sharding.from_partition_spec(spec.spec, rank, priority, value)
    elif isinstance(spec, PartitionSpec):
        sharding = Sharding.from_partition_spec(spec, rank, priority, value)
    elif spec is None:
        sharding = Sharding.replicated_of(rank).with_priority(priority)
    else:
        raise ShardingError(f"{value}: expected a PartitionSpec, NamedSharding or None, got {spec!r}")
    if sharding.rank != rank:
        raise ShardingError(f"{value}: sharding {sharding} has rank {sharding.rank}, value has rank {rank}")
    if mesh is not None:
        sharding.check(mesh, None, value)
    return sharding


def axes_text(axes: Iterable[str]) -> str:
    return "+".join(axes)
