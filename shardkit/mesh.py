"""Device meshes."""
from __future__ import annotations

from typing import Mapping

import jax
from jax.sharding import AxisType, Mesh

from shardkit.ir import MeshShape, ShardingError


def make_mesh(axes: Mapping[str, int], *, devices=None, axis_types=None) -> Mesh:
    """A jax Mesh with the given {axis name: size}, in order; axes are Auto unless `axis_types` says.

    `sk.make_mesh({"data": 4, "model": 2})` uses the first 8 devices of `jax.devices()`.
    """
    names = tuple(axes)
    sizes = tuple(int(axes[n]) for n in names)
    total = 1
    for size in sizes:
        if size < 1:
            raise ShardingError(f"mesh axis sizes must be positive, got {dict(axes)}")
        total *= size
    devices = list(devices if devices is not None else jax.devices())
    if total > len(devices):
        raise ShardingError(
            f"mesh {dict(axes)} needs {total} devices but only {len(devices)} are available; on CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={total} before importing jax")
    types = tuple(axis_types) if axis_types is not None else (AxisType.Auto,) * len(names)
    return jax.make_mesh(sizes, names, axis_types=types, devices=devices[:total])


def resolve_mesh(mesh, graph_mesh: MeshShape | None = None) -> Mesh | None:
    """A concrete Mesh from a Mesh, a {name: size} dict, or (when None) the graph's recorded mesh shape."""
    if mesh is None:
        if graph_mesh is None:
            return None
        return make_mesh(dict(graph_mesh.axes))
    if isinstance(mesh, Mesh):
        return mesh
    if isinstance(mesh, Mapping):
        return make_mesh(mesh)
    if isinstance(mesh, MeshShape):
        return make_mesh(dict(mesh.axes))
    raise ShardingError(f"expected a jax.sharding.Mesh or a {{axis: size}} dict, got {mesh!r}")


def auto_axes(mesh: Mesh) -> Mesh:
    """The same devices and axes with every axis Auto: shardkit decides shardings itself, so it
    lowers Explicit-axis meshes through their Auto twin."""
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
