"""Federated programs: the `program` decorator, its placements and the mesh they are sharded over.

Placements are ordered, outermost first: `program(placements={"silos": 4, "clients": 16})` places
values at silos (leading dimension 4) and, inside a `map` over silos, at clients (16 per silo). An
op with no `placement=` uses the placement one level below the `map` it is in (the first placement at
the top level). A placement is sharded over the mesh axis of the same name when the mesh has one.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from jax.sharding import AxisType, Mesh

from shardkit.ir import _jax

from .errors import FederatedError


@dataclass(frozen=True)
class Placement:
    """One placement of a program: its name, member count and the mesh axis it is sharded over."""

    name: str
    size: int
    axis: str | None
    mesh: Mesh | None

    def params(self) -> dict:
        """The primitive params that carry this placement."""
        return {"placement": self.name, "size": self.size, "axis": self.axis, "mesh": self.mesh}


@dataclass(frozen=True)
class _Frame:
    placements: tuple[Placement, ...]
    mapped: tuple[str, ...] = ()


_STATE = threading.local()


def _stack() -> list[_Frame]:
    if not hasattr(_STATE, "frames"):
        _STATE.frames = []
    return _STATE.frames


class _push:
    def __init__(self, frame: _Frame):
        self.frame = frame

    def __enter__(self):
        _stack().append(self.frame)
        return self.frame

    def __exit__(self, *exc):
        _stack().pop()
        return False


def current_frame(op: str) -> _Frame:
    frames = _stack()
    if not frames:
        raise FederatedError(
            f"shardkit.federated.{op} was called outside a federated program; decorate the function that "
            f"calls it with @shardkit.federated.program(placements={{'clients': n}})")
    return frames[-1]


def resolve(op: str, placement: str | None) -> Placement:
    """The placement an op targets: the given one, or the one below the enclosing map."""
    frame = current_frame(op)
    names = [p.name for p in frame.placements]
    if placement is not None:
        if placement not in names:
            raise FederatedError(f"{op}: placement {placement!r} does not exist in this program; its "
                                 f"placements are {names}")
        if placement in frame.mapped:
            raise FederatedError(f"{op}: this code already runs once per member of {placement!r} (inside a "
                                 f"map over it); use a placement below it, or move the op out of the map")
        return frame.placements[names.index(placement)]
    start = names.index(frame.mapped[-1]) + 1 if frame.mapped else 0
    if start >= len(names):
        raise FederatedError(f"{op}: inside a map over {frame.mapped[-1]!r}, the innermost placement, there is "
                             f"no placement below; pass placement= to name one of {names}")
    return frame.placements[start]


def inside(placement: Placement):
    """A context for tracing the per-member computation of a map over `placement`."""
    frame = current_frame("map")
    return _push(_Frame(frame.placements, frame.mapped + (placement.name,)))


def _check_placements(placements) -> dict[str, int]:
    if not isinstance(placements, Mapping) or not placements:
        raise FederatedError(f"program: placements must be a non-empty dict {{name: member count}}, e.g. "
                             f"{{'clients': 8}}; got {placements!r}")
    out = {}
    for name, size in placements.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise FederatedError(f"program: placement names must be identifiers, got {name!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise FederatedError(f"program: placement {name!r} needs a positive int member count, got {size!r}")
        out[name] = int(size)
    return out


def _resolve_mesh(mesh):
    if mesh is None or isinstance(mesh, Mesh):
        return mesh
    if isinstance(mesh, Mapping):
        from shardkit.mesh import make_mesh
        return make_mesh(mesh)
    raise FederatedError(f"program: mesh must be a jax.sharding.Mesh, a {{axis: size}} dict or None, got "
                         f"{type(mesh).__name__}")


def placements_on(placements: dict[str, int], mesh) -> tuple[Placement, ...]:
    """Each placement with its mesh axis; errors for meshes that cannot hold the placements."""
    target = mesh if mesh is not None else _jax.abstract_mesh()
    out = []
    for name, size in placements.items():
        axis = None
        if target is not None:
            kinds = dict(zip(target.axis_names, target.axis_types))
            if name in kinds:
                axis = name
                axis_size = dict(zip(target.axis_names, target.axis_sizes))[name]
                if size % axis_size:
                    raise FederatedError(
                        f"placement {name!r} has {size} members but mesh axis {name!r} has {axis_size} "
                        f"devices; use a multiple of {axis_size} members so each device holds the same number")
            elif any(k == AxisType.Explicit for k in kinds.values()):
                raise FederatedError(
                    f"the mesh has explicit axes {list(target.axis_names)} but no axis {name!r} for placement "
                    f"{name!r}; add a mesh axis named {name!r}, or use Auto axes so the placement is replicated")
        out.append(Placement(name, size, axis, mesh))
    return tuple(out)


def program(placements: Mapping[str, int] | None = None, mesh=None) -> Callable[[Callable], Callable]:
    """Decorator: inside the function, the federated ops work over `placements` ({name: members}).

    `mesh` (a Mesh or {axis: size}) shards each placement over the mesh axis of the same name; with no
    mesh, the enclosing `jax.set_mesh` is used when there is one. The result is an ordinary function:
    jit, grad, vmap and shardkit's capture all work on it.
    """
    sizes = _check_placements(placements)
    mesh = _resolve_mesh(mesh)
    if mesh is not None:
        placements_on(sizes, mesh)  # fail at decoration time for a mesh that cannot hold them

    def decorate(fn: Callable) -> Callable:
        if not callable(fn):
            raise FederatedError(f"program(...) decorates a function, got {type(fn).__name__}")

        @functools.wraps(fn)
        def run(*args, **kwargs) -> Any:
            frame = _Frame(placements_on(sizes, mesh))
            with _push(frame):
                return fn(*args, **kwargs)

        run.placements = dict(sizes)
        run.mesh = mesh
        return run

    return decorate
