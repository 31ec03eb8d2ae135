"""IR ops for the functional primitives, so sk.capture, print and sk.explain show them.

A functional program lowered to arrays keeps two kinds of functional op:

    %r = functional.integrate(leaves..., nodes, weights, ...) {structure=&.., fn=#region(0), expr="..."}
    %y = functional.apply(leaves..., xs...) {structure=&.., fn=#region(0), batch_ndim=k, expr="..."}

The region is the vectorised computation over all the points (its inputs are the op's operands);
`expr` is the functional expression it came from (compose, nabla, integrate, ...). For sharding, a
grid's point axis runs through the region (ties join the op's operands and results to the region's
inputs and outputs): sharding the nodes over a mesh axis evaluates the integrand on each device's
points, and the weighted sum that ends the region leaves a partial sum, all-reduced after. The point
axes of `functional.apply` pass through to its result.
"""
from __future__ import annotations

from shardkit.ir import OpDef, register_op
from shardkit.ir.factors import RuleBuilder, Tie


def _region_type(op):
    return [(v.type.shape, v.type.dtype) for v in op.regions[0].outputs]


def _call(interp, op, args):
    return list(interp.region_fn(op.regions[0])(*args))


def _ties(op) -> list:
    region = op.regions[0]
    return ([Tie(a, b) for a, b in zip(op.operands, region.inputs)]
            + [Tie(a, b) for a, b in zip(op.results, region.outputs)])


def _builder(op) -> RuleBuilder:
    return RuleBuilder(len(op.operands), [v.type.rank for v in op.operands],
                       [v.type.rank for v in op.results])


def _apply_rule(op):
    """The leading point axes of the points are the result's leading axes."""
    num_leaves, batch_ndim = int(op.params["num_leaves"]), int(op.params.get("batch_ndim", 0))
    builder = _builder(op)
    for d in range(batch_ndim):
        factor = builder.factor(op.results[0].type.shape[d])
        for i in range(num_leaves, len(op.operands)):
            builder.operand(i, d, factor)
        builder.result(0, d, factor)
    return builder.build()


register_op(OpDef(
    "functional.apply", type_rule=_region_type, lower=_call, sharding_rule=_apply_rule,
    region_ties=_ties,
    doc="A Function evaluated at points: operands are its leaves then one array per argument (with "
        "`batch_ndim` leading point axes); the region computes the values at all the points."))

register_op(OpDef(
    "functional.integrate", type_rule=_region_type, lower=_call, region_ties=_ties,
    doc="The integral of a Function by quadrature: operands are its leaves, then nodes and weights "
        "per argument; the region computes the weighted sum; each point axis is a reduction."))
