"""Quadrature grids: nodes and weights for integrating a function over one argument."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .errors import FunctionalError


@jax.tree_util.register_pytree_node_class
class Grid:
    """Quadrature nodes, shaped (N, *arg_shape), and weights, shaped (N,): integrate(f, grid) is
    sum_i weights[i] * f(nodes[i]). A pytree, so grids pass through jax.jit like arrays."""

    def __init__(self, nodes: Any, weights: Any):
        nodes = nodes if hasattr(nodes, "shape") else jnp.asarray(nodes, jnp.float32)
        weights = weights if hasattr(weights, "shape") else jnp.asarray(weights, jnp.float32)
        if len(nodes.shape) < 1:
            raise FunctionalError(f"Grid: nodes must have a leading axis of points, shape (N, *arg_shape); "
                                  f"got shape {tuple(nodes.shape)}")
        if len(weights.shape) != 1 or weights.shape[0] != nodes.shape[0]:
            raise FunctionalError(f"Grid: {nodes.shape[0]} nodes need weights of shape ({nodes.shape[0]},); "
                                  f"got shape {tuple(weights.shape)}")
        self.nodes = nodes
        self.weights = weights

    @property
    def size(self) -> int:
        """The number of nodes."""
        return int(self.nodes.shape[0])

    @property
    def arg_shape(self) -> tuple:
        """The shape of the argument this grid integrates over."""
        return tuple(self.nodes.shape[1:])

    def __repr__(self) -> str:
        return f"Grid({self.size} nodes of shape {self.arg_shape})"

    def tree_flatten(self):
        return (self.nodes, self.weights), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        grid = object.__new__(cls)
        grid.nodes, grid.weights = children
        return grid

    # -- constructors -----------------------------------------------------------------------------
    @classmethod
    def uniform(cls, low: float, high: float, n: int, dtype=jnp.float32) -> "Grid":
        """The midpoint rule on [low, high] with n equal cells (a grid for a scalar argument)."""
        if n < 1 or not high > low:
            raise FunctionalError(f"Grid.uniform: need n >= 1 and high > low; got n={n}, [{low}, {high}]")
        h = (high - low) / n
        nodes = low + h * (np.arange(n) + 0.5)
        return cls(jnp.asarray(nodes, dtype), jnp.full((n,), h, dtype))

    @classmethod
    def product(cls, *grids: "Grid") -> "Grid":
        """The tensor product of grids over scalars: a grid over vectors of len(grids) components."""
        for g in grids:
            if g.arg_shape != ():
                raise FunctionalError(f"Grid.product: combines grids over scalars; got one over {g.arg_shape}")
        mesh = jnp.meshgrid(*[g.nodes for g in grids], indexing="ij")
        nodes = jnp.stack([m.reshape(-1) for m in mesh], axis=-1)
        weights = jnp.ones((), grids[0].weights.dtype)
        for k, g in enumerate(grids):
            shape = [1] * len(grids)
            shape[k] = g.size
            weights = weights * g.weights.reshape(shape)
        return cls(nodes, weights.reshape(-1))

    def shard(self, mesh, axis: str = "data") -> "Grid":
        """This grid with its nodes split over the mesh axis `axis` (padded with zero-weight copies of
        the last node to a multiple of the axis size), so integrate evaluates the integrand on each
        device's share of the points and all-reduces the sum."""
        from jax.sharding import NamedSharding, PartitionSpec
        if axis not in mesh.axis_names:
            raise FunctionalError(f"Grid.shard: the mesh has axes {tuple(mesh.axis_names)}, not {axis!r}")
        parts = dict(zip(mesh.axis_names, mesh.devices.shape))[axis]
        pad = (-self.size) % parts
        nodes, weights = self.nodes, self.weights
        if pad:
            nodes = jnp.concatenate([nodes, jnp.repeat(nodes[-1:], pad, axis=0)])
            weights = jnp.concatenate([weights, jnp.zeros((pad,), weights.dtype)])
        spec = PartitionSpec(axis, *([None] * (nodes.ndim - 1)))
        nodes = jax.device_put(nodes, NamedSharding(mesh, spec))
        weights = jax.device_put(weights, NamedSharding(mesh, PartitionSpec(axis)))
        return Grid(nodes, weights)
