"""Explicit collectives for per-device programs: the ops shardkit's SPMD partitioner inserts.

They live in the region of a `shard_map` op (all mesh axes manual), work on local shapes, and lower
to the `jax.lax` collectives with the mesh axis names they carry. Every op records the mesh axes it
runs over (`axes`, major first) and the size of that device group (`group_size`), so its type is
known without the mesh. The `spmd.` prefix keeps them apart from the JAX primitives of the same
name that `capture` reads out of user-written shard_map bodies (those carry JAX's own params).

    spmd.all_gather    {axes, dim, group_size}            local dim grows by group_size
    spmd.psum          {axes, group_size}                 all-reduce (sum); pmax/pmin alike
    spmd.psum_scatter  {axes, dim, group_size}            reduce-scatter: local dim shrinks
    spmd.all_to_all    {axes, split_dim, concat_dim, group_size}
    spmd.ppermute      {axes, perm, group_size}           collective permute (halo exchange)
    spmd.shard_slice   {axes, dim, group_size}            replicated -> sharded: a local slice
                                                          picked by the device's axis index
"""
from __future__ import annotations

from jax import lax

from ..errors import ShardkitError
from ..registry import OpDef, register_op

COLLECTIVE_KINDS: dict[str, str] = {
    "spmd.all_gather": "all-gather",
    "spmd.psum": "all-reduce",
    "spmd.pmax": "all-reduce",
    "spmd.pmin": "all-reduce",
    "spmd.psum_scatter": "reduce-scatter",
    "spmd.all_to_all": "all-to-all",
    "spmd.ppermute": "collective-permute",
}
"""Op name -> the HLO collective it compiles to (the `kind` of shardkit's Collective records)."""

SPMD_OPS = frozenset(COLLECTIVE_KINDS) | {"spmd.shard_slice"}


def _axes(op):
    axes = tuple(op.params["axes"])
    return axes[0] if len(axes) == 1 else axes


def _group(op) -> int:
    return int(op.params["group_size"])


def _shape(op):
    return list(op.operands[0].type.shape)


def _divide(op, shape, dim) -> None:
    n = _group(op)
    if shape[dim] % n:
        raise ShardkitError(f"{op.name}: dimension {dim} of local size {shape[dim]} does not divide over "
                            f"{'+'.join(op.params['axes'])} ({n} devices)")
    shape[dim] //= n


# -- all-gather ------------------------------------------------------------------------------------

def _all_gather_type(op):
    shape = _shape(op)
    shape[op.params["dim"]] *= _group(op)
    return [(tuple(shape), op.operands[0].type.dtype)]


def _all_gather_lower(interp, op, args):
    return [lax.all_gather(args[0], _axes(op), axis=int(op.params["dim"]), tiled=True)]


# -- all-reduce ------------------------------------------------------------------------------------

def _same_type(op):
    return [(v.type.shape, v.type.dtype) for v in op.operands]


_REDUCERS = {"spmd.psum": lax.psum, "spmd.pmax": lax.pmax, "spmd.pmin": lax.pmin}


def _all_reduce_lower(interp, op, args):
    return [_REDUCERS[op.name](args[0], _axes(op))]


# -- reduce-scatter --------------------------------------------------------------------------------

def _psum_scatter_type(op):
    shape = _shape(op)
    _divide(op, shape, op.params["dim"])
    return [(tuple(shape), op.operands[0].type.dtype)]


def _psum_scatter_lower(interp, op, args):
    return [lax.psum_scatter(args[0], _axes(op), scatter_dimension=int(op.params["dim"]), tiled=True)]


# -- all-to-all ------------------------------------------------------------------------------------

def _all_to_all_type(op):
    shape = _shape(op)
    _divide(op, shape, op.params["split_dim"])
    shape[op.params["concat_dim"]] *= _group(op)
    return [(tuple(shape), op.operands[0].type.dtype)]


def _all_to_all_lower(interp, op, args):
    return [lax.all_to_all(args[0], _axes(op), int(op.params["split_dim"]), int(op.params["concat_dim"]),
                           tiled=True)]


# -- collective permute ----------------------------------------------------------------------------

def _ppermute_lower(interp, op, args):
    perm = [(int(a), int(b)) for a, b in op.params["perm"]]
    return [lax.ppermute(args[0], _axes(op), perm)]


# -- replicated -> sharded: slice by axis index ----------------------------------------------------

def _shard_slice_lower(interp, op, args):
    x = args[0]
    dim = int(op.params["dim"])
    size = x.shape[dim] // _group(op)
    index = lax.axis_index(_axes(op))
    return [lax.dynamic_slice_in_dim(x, index * size, size, axis=dim)]


for _name, _type, _lower, _doc in (
        ("spmd.all_gather", _all_gather_type, _all_gather_lower,
         "All-gather over mesh `axes` along local dim `dim` (tiled)."),
        ("spmd.psum", _same_type, _all_reduce_lower, "All-reduce (sum) of partial sums over mesh `axes`."),
        ("spmd.pmax", _same_type, _all_reduce_lower, "All-reduce (max) over mesh `axes`."),
        ("spmd.pmin", _same_type, _all_reduce_lower, "All-reduce (min) over mesh `axes`."),
        ("spmd.psum_scatter", _psum_scatter_type, _psum_scatter_lower,
         "Reduce-scatter: sum partial values over `axes`, keep this device's block of dim `dim`."),
        ("spmd.all_to_all", _all_to_all_type, _all_to_all_lower,
         "All-to-all over `axes`: split local dim `split_dim`, concatenate along `concat_dim`."),
        ("spmd.ppermute", _same_type, _ppermute_lower,
         "Collective permute over `axes` (pairs of linear indices in `perm`); receivers of nothing get zeros."),
):
    register_op(OpDef(_name, type_rule=_type, lower=_lower, is_collective=True, doc=_doc))

register_op(OpDef("spmd.shard_slice", type_rule=_psum_scatter_type, lower=_shard_slice_lower,
                  doc="This device's block of dim `dim` of a value replicated over `axes` (no communication)."))


def collective_bytes(op) -> tuple[str, int, int]:
    """(HLO kind, local operand bytes, local result bytes) of one collective op."""
    kind = COLLECTIVE_KINDS[op.name]
    return kind, op.operands[0].type.nbytes, op.results[0].type.nbytes


def spmd_mesh(mesh):
    """The mesh param of a partitioned program's shard_map: the jax Mesh when one is given (with Auto
    axes, as shardkit lowers with), else an AbstractMesh built from the axis names and sizes."""
    from jax.sharding import AbstractMesh, AxisType, Mesh
    from ..sharding import MeshShape
    if isinstance(mesh, Mesh):
        if all(t == AxisType.Auto for t in mesh.axis_types):
            return mesh
        return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
    shape = MeshShape.of(mesh)
    return AbstractMesh(tuple(size for _, size in shape.axes), shape.names,
                        axis_types=(AxisType.Auto,) * len(shape.axes))


__all__ = ["COLLECTIVE_KINDS", "SPMD_OPS", "collective_bytes", "spmd_mesh"]
