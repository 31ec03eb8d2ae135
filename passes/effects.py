"""What passes may assume about an op: must it be kept (effects), may it be merged or folded (purity).

An op with regions counts as effectful, collective or random when any op nested in it is. An op that
names neither a registered op nor a JAX primitive is treated as effectful: nothing is known of it.
"""
from __future__ import annotations

from shardkit.ir import Op, get_op_def
from shardkit.ir.registry import RANDOM_PRIMITIVES


def _op_flags(name: str) -> tuple[bool, bool]:
    """(effectful, collective) of an op name; unknown names count as effectful."""
    try:
        definition = get_op_def(name)
    except KeyError:
        return True, False
    return bool(definition.effectful), bool(definition.is_collective)


def is_effectful(op: Op) -> bool:
    """Whether `op` (or anything in its regions) has effects beyond its results."""
    if _op_flags(op.name)[0]:
        return True
    return any(is_effectful(inner) for region in op.regions for inner in region.ops)


def is_collective(op: Op) -> bool:
    """Whether `op` is (or contains) a collective: communication across devices."""
    if _op_flags(op.name)[1]:
        return True
    return any(is_collective(inner) for region in op.regions for inner in region.ops)


def is_random(op: Op) -> bool:
    """Whether `op` is (or contains) a random-number primitive."""
    if op.name in RANDOM_PRIMITIVES:
        return True
    return any(is_random(inner) for region in op.regions for inner in region.ops)


def must_keep(op: Op) -> bool:
    """Whether dead-code elimination must keep `op` even when no result is used."""
    if not op.regions:
        effectful, collective = _op_flags(op.name)
        return effectful or collective
    return is_effectful(op) or is_collective(op)


def is_pure(op: Op) -> bool:
    """Whether `op` may be merged with an identical op, folded or moved: no effects, collectives or randomness."""
    if not op.regions:
        effectful, collective = _op_flags(op.name)
        return not (effectful or collective or op.name in RANDOM_PRIMITIVES)
    return not (is_effectful(op) or is_collective(op) or is_random(op))

