"""IR op definitions of the federated primitives: type rule, lowering, sharding rule, pins and ties.

`sk.capture` turns each federated primitive into an op of the same name; `federated_map`'s jaxpr
param becomes its region (the per-member computation), so passes and the reference executor see the
client computation as one unit. Sharding: a placed dimension is one factor shared by the op's
operands and results (a reduction factor for sum and means: sharded, it leaves partial sums that an
all-reduce over the placement axis completes), and each op pins that dimension to the placement's
mesh axis when it has one, leaving the other dimensions open to propagation.
"""
from __future__ import annotations

import jax

from shardkit.ir import DimSharding, OpDef, Sharding, register_op
from shardkit.ir.factors import FactorRule, Pin, RuleBuilder, Tie

from . import primitives as prims
from .errors import FederatedError


def _builder(op) -> RuleBuilder:
    return RuleBuilder(len(op.operands), [v.type.rank for v in op.operands], [v.type.rank for v in op.results])


def _shape(value) -> tuple[int, ...]:
    return tuple(value.type.shape)


# -- type rules ------------------------------------------------------------------------------------


def _broadcast_type(op):
    x = op.operands[0].type
    return [(prims.insert_dim(x.shape, op.params["dim"], op.params["size"]), x.dtype)]


def _check_placed(value, dim, size, placement, what):
    shape = _shape(value)
    if len(shape) <= dim or shape[dim] != size:
        raise FederatedError(f"{what}: operand of shape {shape} is not placed at {placement!r} "
                                   f"({size} members along dimension {dim})")


def _reduce_type(dtype_of):
    def rule(op):
        p = op.params
        _check_placed(op.operands[0], p["dim"], p["size"], p["placement"], op.name)
        x = op.operands[0].type
        return [(prims.drop_dim(x.shape, p["dim"]), dtype_of(x.dtype))]
    return rule


def _weighted_mean_type(op):
    p = op.params
    *values, w = op.operands
    _check_placed(w, p["dim"], p["size"], p["placement"], op.name)
    for v in values:
        _check_placed(v, p["dim"], p["size"], p["placement"], op.name)
        prims.check_weights(_shape(v), _shape(w), p["dim"])
        if v.type.dtype != w.type.dtype:
            raise FederatedError(f"{op.name}: values are {v.type.dtype} but weights {w.type.dtype}")
    return [(prims.drop_dim(v.type.shape, p["dim"]), v.type.dtype) for v in values]


def _map_type(op):
    p = op.params
    region = op.regions[0]
    in_dims, out_dims = tuple(p["in_dims"]), tuple(p["out_dims"])
    if len(region.inputs) != len(op.operands) or len(in_dims) != len(op.operands):
        raise FederatedError(f"{op.name}: {len(op.operands)} operands, {len(in_dims)} in_dims, but the "
                                   f"region takes {len(region.inputs)} arguments")
    if len(out_dims) != len(region.outputs):
        raise FederatedError(f"{op.name}: {len(out_dims)} out_dims for {len(region.outputs)} region outputs")
    for i, (value, inner, d) in enumerate(zip(op.operands, region.inputs, in_dims)):
        if d is not None:
            _check_placed(value, d, p["size"], p["placement"], f"{op.name} operand {i}")
        if prims.drop_dim(_shape(value), d) != _shape(inner) or value.type.dtype != inner.type.dtype:
            raise FederatedError(f"{op.name} operand {i} is {value.type} but the region argument is "
                                       f"{inner.type} (placed dimension {d})")
    return [(prims.insert_dim(v.type.shape, d, p["size"]), v.type.dtype) for v, d in zip(region.outputs, out_dims)]


# -- lowering (inside shardkit's interpreter: the value shardings apply, the mesh is the interpreter's) --


def _mesh(interp, op):
    axis = op.params["axis"]
    mesh = interp.mesh if interp.apply_shardings else None
    return mesh if mesh is not None and axis is not None and axis in mesh.axis_names else None


def _broadcast_lower(interp, op, args):
    p = op.params
    return [prims.broadcast_array(args[0], size=p["size"], dim=p["dim"], axis=p["axis"], mesh=_mesh(interp, op))]


def _sum_lower(interp, op, args):
    return [prims.sum_array(args[0], dim=op.params["dim"])]


def _mean_lower(interp, op, args):
    return [prims.mean_array(args[0], dim=op.params["dim"], size=op.params["size"])]


def _weighted_mean_lower(interp, op, args):
    return prims.weighted_mean_array(*args, dim=op.params["dim"])


def _map_lower(interp, op, args):
    p = op.params
    mesh = _mesh(interp, op)
    axis = p["axis"] if mesh is not None else None
    in_dims, out_dims = tuple(p["in_dims"]), list(p["out_dims"])
    fn = interp.region_fn(op.regions[0])
    args = [a if d is None else prims.constrain(a, d, axis, mesh) for a, d in zip(args, in_dims)]
    outs = jax.vmap(lambda *xs: list(fn(*xs)), in_axes=in_dims, out_axes=out_dims, axis_size=p["size"],
                    spmd_axis_name=axis)(*args)
    return [prims.constrain(o, d, axis, mesh) for o, d in zip(outs, out_dims)]


# -- sharding rules ----------------------------------------------------------------------------------


def _broadcast_rule(op) -> FactorRule:
    p = op.params
    b = _builder(op)
    for k, n in enumerate(_shape(op.operands[0])):
        f = b.factor(n)
        b.operand(0, k, f)
        b.result(0, k + (k >= p["dim"]), f)
    b.result(0, p["dim"], b.factor(p["size"]))
    return b.build()


def _reduce_rule(op) -> FactorRule:
    dim = op.params["dim"]
    b = _builder(op)
    for k, n in enumerate(_shape(op.operands[0])):
        f = b.factor(n)
        b.operand(0, k, f)
        if k != dim:
            b.result(0, k - (k > dim), f)
    return b.build()


def _weighted_mean_rule(op) -> FactorRule:
    """Each value shares its factors with its result; the placed dimension is one reduction factor for
    every operand, and the weights' other dimensions follow the first value's."""
    dim = op.params["dim"]
    *values, w = op.operands
    b = _builder(op)
    members = b.factor(op.params["size"])
    for i, v in enumerate(values):
        for k, n in enumerate(_shape(v)):
            f = members if k == dim else b.factor(n)
            b.operand(i, k, f)
            if i == 0 and k < w.type.rank:
                b.operand(len(values), k, f)
            if k != dim:
                b.result(i, k - (k > dim), f)
    return b.build()


def placed_sharding(rank: int, dim: int, axis: str) -> Sharding:
    """Dimension `dim` on mesh `axis` (fixed); the other dimensions open for propagation."""
    dims = [DimSharding(is_open=True) for _ in range(rank)]
    dims[dim] = DimSharding((axis,))
    return Sharding(tuple(dims), priority=0)


def _pins(op, placed) -> list:
    axis = op.params["axis"]
    if axis is None:
        return []
    return [Pin(v, placed_sharding(v.type.rank, d, axis)) for v, d in placed if d is not None]


def _broadcast_pins(op) -> list:
    return _pins(op, [(op.results[0], op.params["dim"])])


def _reduce_pins(op) -> list:
    return _pins(op, [(v, op.params["dim"]) for v in op.operands])


def _map_ties(op) -> list:
    p = op.params
    region = op.regions[0]
    ties = []
    for outer, inner, d in list(zip(op.operands, region.inputs, p["in_dims"])) + \
            list(zip(op.results, region.outputs, p["out_dims"])):
        if d is None:
            ties.append(Tie(outer, inner))
        elif d == 0:
            ties.append(Tie(outer, inner, stacked=True))
    return ties + _pins(op, list(zip(op.operands, p["in_dims"])) + list(zip(op.results, p["out_dims"])))


# -- registration ------------------------------------------------------------------------------------


def _register() -> None:
    definitions = [
        OpDef(prims.BROADCAST, type_rule=_broadcast_type, lower=_broadcast_lower, sharding_rule=_broadcast_rule,
              region_ties=_broadcast_pins, primitive=prims.broadcast_p,
              doc="Server to placement: a new placed dimension `dim` of `size` members."),
        OpDef(prims.SUM, type_rule=_reduce_type(prims.sum_dtype), lower=_sum_lower, sharding_rule=_reduce_rule,
              region_ties=_reduce_pins, primitive=prims.sum_p,
              doc="Placement to server: the sum over the placed dimension `dim`."),
        OpDef(prims.MEAN, type_rule=_reduce_type(prims.mean_dtype), lower=_mean_lower,
              sharding_rule=_reduce_rule, region_ties=_reduce_pins, primitive=prims.mean_p,
              doc="Placement to server: the mean over the placed dimension (integers: default float)."),
        OpDef(prims.WEIGHTED_MEAN, type_rule=_weighted_mean_type, lower=_weighted_mean_lower,
              sharding_rule=_weighted_mean_rule, region_ties=_reduce_pins, primitive=prims.weighted_mean_p,
              doc="Placement to server: sum(w * v) / sum(w) over the placed dimension."),
        OpDef(prims.MAP, type_rule=_map_type, lower=_map_lower, region_ties=_map_ties, primitive=prims.map_p,
              doc="The per-member computation (region 0) run once per member of the placement; operands "
                  "with in_dims None are server values every member reads."),
    ]
    for definition in definitions:
        register_op(definition, replace_existing=True)


_register()
