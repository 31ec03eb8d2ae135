"""IR ops for the functional primitives, so sk.capture, print and sk.explain show them.

A functional program lowered to arrays keeps two kinds of functional op:

    %r = functional.integrate(leaves..., nodes, weights, ...) {integrand=#region(0), expr="..."}
    %y = functional.apply(leaves..., xs...) {fn=#region(0), batch_ndim=k, expr="..."}

The region evaluates the function at one point (its inputs: the function's leaves, then one value
per argument); `expr` is the functional expression it came from (compose, nabla, ...). For sharding,
a grid's point axis is a reduction factor of `functional.integrate`: sharding the nodes over a mesh
axis evaluates the integrand on each device's points and leaves a partial sum, all-reduced after.
"""
from __future__ import annotations

import jax

from shardkit.ir import OpDef, register_op
from shardkit.ir.factors import RuleBuilder

from .evaluate import quadrature


def _region_result(op):
    out = op.regions[0].outputs[0].type
    return tuple(out.shape), out.dtype


def _apply_type(op):
    shape, dtype = _region_result(op)
    batch_ndim = int(op.params.get("batch_ndim", 0))
    xs = op.operands[int(op.params["num_leaves"]):]
    batch = tuple(xs[0].type.shape[:batch_ndim]) if xs and batch_ndim else ()
    return [(batch + shape, dtype)]


def _apply_lower(interp, op, args):
    num_leaves, batch_ndim = int(op.params["num_leaves"]), int(op.params.get("batch_ndim", 0))
    region = interp.region_fn(op.regions[0], apply_shardings=False)
    leaves, xs = args[:num_leaves], args[num_leaves:]

    def one(*points):
        return region(*leaves, *points)[0]

    for _ in range(batch_ndim):
        one = jax.vmap(one)
    return [one(*xs)]


def _apply_rule(op):
    num_leaves, batch_ndim = int(op.params["num_leaves"]), int(op.params.get("batch_ndim", 0))
    builder = RuleBuilder(len(op.operands), [v.type.rank for v in op.operands],
                          [v.type.rank for v in op.results])
    xs = op.operands[num_leaves:]
    for d in range(batch_ndim):
        factor = builder.factor(op.results[0].type.shape[d])
        for i in range(len(xs)):
            builder.operand(num_leaves + i, d, factor)
        builder.result(0, d, factor)
    return builder.build()


def _integrate_type(op):
    return [_region_result(op)]


def _integrate_lower(interp, op, args):
    num_leaves = int(op.params["num_leaves"])
    region = interp.region_fn(op.regions[0], apply_shardings=False)
    leaves, flat = args[:num_leaves], args[num_leaves:]
    grids = [(flat[2 * k], flat[2 * k + 1]) for k in range(len(flat) // 2)]
    return [quadrature(lambda *points: region(*leaves, *points)[0], grids)]


def _integrate_rule(op):
    """Each grid's point axis is a reduction factor shared by its nodes and weights."""
    num_leaves = int(op.params["num_leaves"])
    builder = RuleBuilder(len(op.operands), [v.type.rank for v in op.operands],
                          [v.type.rank for v in op.results])
    for k in range((len(op.operands) - num_leaves) // 2):
        nodes = num_leaves + 2 * k
        factor = builder.factor(op.operands[nodes].type.shape[0])
        builder.operand(nodes, 0, factor)
        builder.operand(nodes + 1, 0, factor)
    return builder.build()


register_op(OpDef(
    "functional.apply", type_rule=_apply_type, lower=_apply_lower, sharding_rule=_apply_rule,
    doc="A Function evaluated at points: operands are its leaves then one array per argument (with "
        "`batch_ndim` leading point axes); the region evaluates it at one point."))

register_op(OpDef(
    "functional.integrate", type_rule=_integrate_type, lower=_integrate_lower,
    sharding_rule=_integrate_rule,
    doc="The integral of a Function by quadrature: operands are its leaves, then nodes and weights "
        "per argument; the region is the integrand at one point; each point axis is a reduction."))
