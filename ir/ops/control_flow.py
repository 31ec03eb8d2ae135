"""Control flow and call wrappers: ops whose bodies are regions (nested graphs).

Each lowers through JAX's public combinator (jax.jit, lax.scan, lax.while_loop, lax.switch,
jax.checkpoint, jax.shard_map), so the region is traced by the shardkit interpreter and its own
shardings apply. custom_jvp/vjp calls keep their rules and rebind the primitive on the traced region.
"""
from __future__ import annotations

import jax
from jax import lax

from .. import _jax
from ..registry import OpDef, register_op
from .generic import generic_lower


def _region_out(op, index=0):
    return [(v.type.shape, v.type.dtype) for v in op.regions[index].outputs]


def _region_type(op):
    return _region_out(op, 0)


# -- jit / pjit / closed_call ------------------------------------------------------------------


def _jit_lower(interp, op, args):
    fn = interp.region_fn(op.regions[0])

    def body(*xs):
        return fn(*xs)

    body.__name__ = body.__qualname__ = str(op.params.get("name", "jit"))
    return jax.jit(body, inline=bool(op.params.get("inline", False)),
                   keep_unused=bool(op.params.get("keep_unused", False)))(*args)


def _call_lower(interp, op, args):
    return interp.region_fn(op.regions[0])(*args)


for _name in ("jit", "pjit"):
    register_op(OpDef(_name, type_rule=_region_type, lower=_jit_lower, primitive=_jax.primitive(_name),
                      doc="A nested jax.jit call; its region is the called function."))
for _name in ("closed_call", "core_call"):
    register_op(OpDef(_name, type_rule=_region_type, lower=_call_lower, primitive=_jax.primitive(_name),
                      doc="A call of a closed function, evaluated inline."))


# -- remat -----------------------------------------------------------------------------------------


def _remat_lower(interp, op, args):
    policy = op.params.get("policy")
    fn = interp.region_fn(op.regions[0])
    return jax.checkpoint(lambda *xs: fn(*xs), prevent_cse=bool(op.params.get("prevent_cse", True)),
                          policy=policy)(*args)


register_op(OpDef("remat2", type_rule=_region_type, lower=_remat_lower, primitive=_jax.primitive("remat2"),
                  doc="jax.checkpoint: the region is recomputed in the backward pass."))


# -- custom derivatives ----------------------------------------------------------------------------

for _name in ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin"):
    if _jax.primitive(_name) is not None:
        register_op(OpDef(_name, type_rule=_region_type, lower=generic_lower, primitive=_jax.primitive(_name),
                          doc="A function with custom derivative rules; the region is its primal."))


# -- cond / while / scan ---------------------------------------------------------------------------


def _cond_lower(interp, op, args):
    branches = [interp.region_fn(region) for region in op.regions]
    index, operands = args[0], args[1:]
    if len(branches) == 1:
        return branches[0](*operands)
    return lax.switch(index, [lambda *xs, b=b: b(*xs) for b in branches], *operands)


register_op(OpDef("cond", type_rule=_region_type, lower=_cond_lower, primitive=_jax.primitive("cond"),
                  doc="lax.cond / lax.switch: operand 0 is the branch index, one region per branch."))


def _while_type(op):
    return _region_out(op, 1)


def _while_lower(interp, op, args):
    cond_n = int(op.params["cond_nconsts"])
    body_n = int(op.params["body_nconsts"])
    cond_consts, body_consts = args[:cond_n], args[cond_n:cond_n + body_n]
    carry = list(args[cond_n + body_n:])
    cond_fn = interp.region_fn(op.regions[0])
    body_fn = interp.region_fn(op.regions[1])
    out = lax.while_loop(lambda c: cond_fn(*cond_consts, *c)[0],
                         lambda c: list(body_fn(*body_consts, *c)), carry)
    return list(out)


register_op(OpDef("while", type_rule=_while_type, lower=_while_lower, primitive=_jax.primitive("while"),
                  doc="lax.while_loop: region 0 is the condition, region 1 the body."))


def _scan_type(op):
    num_carry = int(op.params["num_carry"])
    length = int(op.params["length"])
    outs = _region_out(op, 0)
    return outs[:num_carry] + [((length,) + tuple(shape), dtype) for shape, dtype in outs[num_carry:]]


def _scan_lower(interp, op, args):
    num_consts = int(op.params["num_consts"])
    num_carry = int(op.params["num_carry"])
    consts = args[:num_consts]
    init = list(args[num_consts:num_consts + num_carry])
    xs = list(args[num_consts + num_carry:])
    body_fn = interp.region_fn(op.regions[0])

    def body(carry, x):
        out = body_fn(*consts, *carry, *x)
        return list(out[:num_carry]), list(out[num_carry:])

    unroll = op.params.get("unroll", 1)
    carry, ys = lax.scan(body, init, xs, length=int(op.params["length"]),
                         reverse=bool(op.params.get("reverse", False)), unroll=unroll)
    return list(carry) + list(ys)


register_op(OpDef("scan", type_rule=_scan_type, lower=_scan_lower, primitive=_jax.primitive("scan"),
                  doc="lax.scan: operands are consts, carries, then stacked inputs."))


# -- shard_map -------------------------------------------------------------------------------------


def _shard_map_type(op):
    mesh = op.params["mesh"]
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    out = []
    for (shape, dtype), spec in zip(_region_out(op, 0), op.params["out_specs"]):
        shape = list(shape)
        for d, entry in enumerate(tuple(spec)):
            axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
            for axis in axes:
                shape[d] *= sizes[axis]
        out.append((tuple(shape), dtype))
    return out


def _shard_map_lower(interp, op, args):
    p = op.params
    fn = interp.region_fn(op.regions[0], apply_shardings=False)
    manual = p.get("manual_axes", p.get("newly_manual_axes", p.get("axis_names")))
    kwargs = {}
    if manual is not None:
        kwargs["axis_names"] = set(manual)
    if "check_vma" in p:
        kwargs["check_vma"] = bool(p["check_vma"])
    mapped = jax.shard_map(lambda *xs: tuple(fn(*xs)), mesh=p["mesh"], in_specs=tuple(p["in_specs"]),
                           out_specs=tuple(p["out_specs"]), **kwargs)
    return list(mapped(*args))


register_op(OpDef("shard_map", type_rule=_shard_map_type, lower=_shard_map_lower,
                  primitive=_jax.primitive("shard_map"), traced_regions=True,
                  doc="jax.shard_map: the region is the per-device program over local shapes."))


# -- sharding ties between ops and their regions (read by sharding propagation) -------------------

from ..factors import Pin, Tie  # noqa: E402
from ..sharding import Sharding  # noqa: E402


def _call_ties(op) -> list:
    region = op.regions[0]
    return ([Tie(a, b) for a, b in zip(op.operands, region.inputs)]
            + [Tie(a, b) for a, b in zip(op.results, region.outputs)])


def _cond_ties(op) -> list:
    ties = []
    for region in op.regions:
        ties += [Tie(a, b) for a, b in zip(op.operands[1:], region.inputs)]
        ties += [Tie(a, b) for a, b in zip(op.results, region.outputs)]
    return ties


def _while_ties(op) -> list:
    cond_n, body_n = int(op.params["cond_nconsts"]), int(op.params["body_nconsts"])
    cond, body = op.regions
    consts_c, consts_b = op.operands[:cond_n], op.operands[cond_n:cond_n + body_n]
    carry = op.operands[cond_n + body_n:]
    ties = [Tie(a, b) for a, b in zip(consts_c, cond.inputs[:cond_n])]
    ties += [Tie(a, b) for a, b in zip(consts_b, body.inputs[:body_n])]
    for value, c_in, b_in, b_out, result in zip(carry, cond.inputs[cond_n:], body.inputs[body_n:],
                                                body.outputs, op.results):
        ties += [Tie(value, c_in), Tie(value, b_in), Tie(value, b_out), Tie(value, result)]
    return ties


def _scan_ties(op) -> list:
    num_consts, num_carry = int(op.params["num_consts"]), int(op.params["num_carry"])
    region = op.regions[0]
    ties = [Tie(a, b) for a, b in zip(op.operands[:num_consts], region.inputs[:num_consts])]
    carry_in = op.operands[num_consts:num_consts + num_carry]
    for value, r_in, r_out, result in zip(carry_in, region.inputs[num_consts:num_consts + num_carry],
                                          region.outputs[:num_carry], op.results[:num_carry]):
        ties += [Tie(value, r_in), Tie(value, r_out), Tie(value, result)]
    ties += [Tie(a, b, stacked=True) for a, b in zip(op.operands[num_consts + num_carry:],
                                                      region.inputs[num_consts + num_carry:])]
    ties += [Tie(a, b, stacked=True) for a, b in zip(op.results[num_carry:], region.outputs[num_carry:])]
    return ties


def _shard_map_pins(op) -> list:
    pins = []
    for values, specs in ((op.operands, op.params["in_specs"]), (op.results, op.params["out_specs"])):
        for value, spec in zip(values, specs):
            pins.append(Pin(value, Sharding.from_partition_spec(spec, value.type.rank, priority=0)))
    return pins


for _name, _ties in (("jit", _call_ties), ("pjit", _call_ties), ("closed_call", _call_ties),
                     ("core_call", _call_ties), ("remat2", _call_ties), ("custom_jvp_call", _call_ties),
                     ("custom_vjp_call", _call_ties), ("custom_vjp_call_jaxpr", _call_ties),
                     ("cond", _cond_ties), ("while", _while_ties), ("scan", _scan_ties),
                     ("shard_map", _shard_map_pins)):
    from ..registry import has_op, update_op
    if has_op(_name):
        update_op(_name, region_ties=_ties)
