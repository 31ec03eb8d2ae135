"""Per-device layouts of values and the plans that move a value from one layout to another.

A `Layout` says, per dimension, which mesh axes split it (major first) and which axes hold pending
reductions (`partial`: every device along them holds a summand, or a max/min candidate). `plan`
turns a pair of layouts into the collectives that realise the change, cheapest moves first: local
slices (replicated -> sharded, free), reduce-scatters (a pending sum resolved into a sharded
dimension), all-to-alls (an axis moved between dimensions), all-reduces, and all-gathers last.
Bytes are per device on the wire under the ring model (`communication.ring_bytes`).
"""
from __future__ import annotations

from dataclasses import dataclass

from shardkit.ir import MeshShape, Sharding, ShardingError
from shardkit.ir.sharding import DimSharding

from .communication import ring_bytes


class PartitionError(ShardingError):
    """The SPMD partitioner cannot realise a sharding (a dimension that does not divide, an
    unreduced input, ...): the message names the op and the dimension."""


COLLECTIVE_LATENCY_BYTES = 1.0
"""What one collective costs on top of its bytes when plans are compared (a tie-breaker)."""


@dataclass(frozen=True)
class Layout:
    """Mesh axes per dimension (major first) and the axes holding a pending `reduce` ('sum', 'max',
    'min')."""

    dims: tuple[tuple[str, ...], ...]
    partial: tuple[str, ...] = ()
    reduce: str = "sum"

    @staticmethod
    def replicated(rank: int) -> "Layout":
        return Layout(((),) * rank)

    @staticmethod
    def of(sharding: Sharding | None, rank: int) -> "Layout":
        """The layout a closed sharding describes (None: replicated; unreduced axes: pending sums)."""
        if sharding is None:
            return Layout.replicated(rank)
        return Layout(tuple(tuple(d.axes) for d in sharding.dims), tuple(sharding.unreduced))

    @property
    def used(self) -> frozenset[str]:
        return frozenset(a for d in self.dims for a in d)

    def without_partial(self) -> "Layout":
        return Layout(self.dims)

    def with_partial(self, axes, reduce: str = "sum") -> "Layout":
        return Layout(self.dims, tuple(axes), reduce if axes else "sum")

    def local_shape(self, shape, mesh: MeshShape) -> tuple[int, ...]:
        return tuple(n // _product(mesh, axes) for n, axes in zip(shape, self.dims))

    def divides(self, shape, mesh: MeshShape) -> int | None:
        """The first dimension whose size does not divide over its axes, or None."""
        for d, (n, axes) in enumerate(zip(shape, self.dims)):
            if n % _product(mesh, axes):
                return d
        return None

    def to_sharding(self) -> Sharding:
        return Sharding(tuple(DimSharding(tuple(axes)) for axes in self.dims), unreduced=tuple(self.partial))

    def __str__(self) -> str:
        dims = ",".join("+".join(d) or "_" for d in self.dims)
        extra = f"|{self.reduce}:" + "+".join(self.partial) if self.partial else ""
        return f"[{dims}{extra}]"


def _product(mesh: MeshShape, axes) -> int:
    n = 1
    for a in axes:
        n *= mesh.size(a)
    return n


def _prefix(have: tuple, want: tuple) -> bool:
    return len(have) <= len(want) and want[:len(have)] == have


@dataclass(frozen=True)
class Step:
    """One move of a plan. kind: slice, psum_scatter, all_to_all (axis leaves `src_dim`, joins `dim`),
    all_reduce, all_gather. `bytes`: per-device wire bytes."""

    kind: str
    axes: tuple[str, ...]
    dim: int = -1
    src_dim: int = -1
    reduce: str = "sum"
    group_size: int = 1
    bytes: float = 0.0


def plan(shape, itemsize: int, src: Layout, dst: Layout, mesh: MeshShape) -> list[Step]:
    """The steps that move a value of global `shape` from layout `src` to `dst` (ShardingError if
    `dst` keeps a pending reduction `src` does not have)."""
    keep = set(dst.partial)
    if not keep <= set(src.partial) or (keep and src.reduce != dst.reduce):
        raise PartitionError(f"cannot move a value from layout {src} to {dst}: a pending reduction "
                             f"cannot be created")
    rank = len(shape)
    cur = [tuple(d) for d in src.dims]
    partial = list(src.partial)
    local = list(src.local_shape(shape, mesh))
    steps: list[Step] = []

    def nbytes() -> int:
        n = itemsize
        for d in local:
            n *= d
        return n

    for _ in range(4 * (rank + len(mesh.axes)) + 8):
        if cur == list(dst.dims) and set(partial) == keep:
            return steps
        if _extend(cur, partial, keep, dst, src.reduce, local, steps, mesh, nbytes):
            continue
        if _move(cur, dst, local, steps, mesh, nbytes):
            continue
        rest = tuple(a for a in partial if a not in keep)
        if rest:
            n = _product(mesh, rest)
            steps.append(Step("all_reduce", rest, reduce=src.reduce, group_size=n,
                              bytes=ring_bytes("all-reduce", n, nbytes(), nbytes())))
            partial = [a for a in partial if a in keep]
            continue
        if _gather(cur, dst, local, steps, mesh, nbytes):
            continue
        break
    raise PartitionError(f"internal error: no plan moves a value from layout {src} to {dst}")


def _extend(cur, partial, keep, dst, reduce, local, steps, mesh, nbytes) -> bool:
    """Append axes a dimension still lacks: free slices, or reduce-scatters of pending sums."""
    progressed = False
    for e, target in enumerate(dst.dims):
        while _prefix(cur[e], target) and len(cur[e]) < len(target):
            used = {a for d in cur for a in d}
            first = target[len(cur[e])]
            scatter = first in partial and first not in keep
            if first in used or (first in keep) or (scatter and reduce != "sum"):
                break
            group = []
            for axis in target[len(cur[e]):]:
                if axis in used or axis in keep or (axis in partial) != scatter:
                    break
                group.append(axis)
            n = _product(mesh, group)
            if local[e] % n:
                raise PartitionError(f"dimension {e} of local size {local[e]} does not divide over "
                                     f"{'+'.join(group)} ({n} devices)")
            before = nbytes()
            local[e] //= n
            kind = "psum_scatter" if scatter else "slice"
            wire = ring_bytes("reduce-scatter", n, before, nbytes()) if scatter else 0.0
            steps.append(Step(kind, tuple(group), dim=e, group_size=n, bytes=wire))
            cur[e] = cur[e] + tuple(group)
            if scatter:
                partial[:] = [a for a in partial if a not in group]
            progressed = True
    return progressed


def _move(cur, dst, local, steps, mesh, nbytes) -> bool:
    """Move the minor-most axis of a dimension that must lose it to the dimension that wants it next."""
    for d in range(len(cur)):
        if not cur[d] or _prefix(cur[d], dst.dims[d]):
            continue
        axis = cur[d][-1]
        for e, target in enumerate(dst.dims):
            if e == d or not _prefix(cur[e], target) or len(cur[e]) >= len(target):
                continue
            if target[len(cur[e])] != axis:
                continue
            n = mesh.size(axis)
            if local[e] % n:
                continue
            wire = ring_bytes("all-to-all", n, nbytes(), nbytes())
            local[e] //= n
            local[d] *= n
            steps.append(Step("all_to_all", (axis,), dim=e, src_dim=d, group_size=n, bytes=wire))
            cur[d] = cur[d][:-1]
            cur[e] = cur[e] + (axis,)
            return True
    return False


def _gather(cur, dst, local, steps, mesh, nbytes) -> bool:
    """All-gather the axes of one dimension beyond its common prefix with the target."""
    for d in range(len(cur)):
        if _prefix(cur[d], dst.dims[d]):
            continue
        keep = 0
        while keep < len(cur[d]) and keep < len(dst.dims[d]) and cur[d][keep] == dst.dims[d][keep]:
            keep += 1
        group = cur[d][keep:]
        n = _product(mesh, group)
        before = nbytes()
        local[d] *= n
        steps.append(Step("all_gather", tuple(group), dim=d, group_size=n,
                          bytes=ring_bytes("all-gather", n, before, nbytes())))
        cur[d] = cur[d][:keep]
        return True
    return False


def plan_cost(steps: list[Step]) -> float:
    """Bytes on the wire plus a small charge per collective (so fewer collectives win ties)."""
    return sum(s.bytes + (COLLECTIVE_LATENCY_BYTES if s.kind != "slice" else 0.0) for s in steps)


def apply_step(layout: Layout, step: Step) -> Layout:
    """The layout after `step`."""
    dims = [tuple(d) for d in layout.dims]
    partial = layout.partial
    if step.kind in ("slice", "psum_scatter"):
        dims[step.dim] = dims[step.dim] + step.axes
    if step.kind in ("psum_scatter", "all_reduce"):
        partial = tuple(a for a in partial if a not in step.axes)
    if step.kind == "all_to_all":
        dims[step.src_dim] = dims[step.src_dim][:-1]
        dims[step.dim] = dims[step.dim] + step.axes
    if step.kind == "all_gather":
        dims[step.dim] = dims[step.dim][:len(dims[step.dim]) - len(step.axes)]
    return Layout(tuple(dims), partial, layout.reduce if partial else "sum")
