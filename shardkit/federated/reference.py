"""Interpreting out: run a captured federated program as a plain Python loop over members, no mesh.

This is the proof that the IR carries enough to map a program onto another federated runtime. A
value at a placement is held the way such a runtime holds it: one NumPy array per member
(`Placed`). The executor does every federated step itself, in NumPy: broadcast copies a server
value to each member, `federated_map` runs its region once per member in a Python loop, and sum,
mean and weighted_mean aggregate the members' arrays on the server. The ops of a member's own
computation are evaluated one at a time by JAX on the host CPU, as a client device would.

    graph = sk.capture(round_fn, params, data, weights)
    new_params = fed.interpret(graph, params, data, weights)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import jax
import numpy as np

from shardkit.ir import Graph, Interpreter, Op, Value, capture

from . import primitives as prims
from .errors import FederatedError

_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "remat2", "custom_jvp_call", "custom_vjp_call",
                    "custom_vjp_call_jaxpr"})
_IDENTITIES = frozenset({"sharding_constraint", "hint"})


@dataclass
class Placed:
    """A value at a placement: one array per member; `dim` is where the members stack in array form."""

    placement: str
    members: list
    dim: int = 0

    def stacked(self) -> np.ndarray:
        return np.stack([np.asarray(m) for m in self.members], axis=self.dim)

    def __len__(self) -> int:
        return len(self.members)


def _host(x):
    """A NumPy array (PRNG key arrays stay JAX arrays: NumPy has no key dtype)."""
    if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return x
    return np.asarray(x)


def _member(value, index: int, dim: int | None, placement: str, size: int):
    """Member `index`'s slice of a map operand (`dim` None: a server value every member reads)."""
    if dim is None:
        return value.stacked() if isinstance(value, Placed) else value
    if isinstance(value, Placed) and value.dim == dim and value.placement == placement and len(value) == size:
        return value.members[index]
    array = value.stacked() if isinstance(value, Placed) else value
    return np.take(np.asarray(array), index, axis=dim)


def _members(value, dim: int) -> list:
    """The per-member arrays of an aggregation's operand."""
    if isinstance(value, Placed) and value.dim == dim:
        return [np.asarray(m) for m in value.members]
    array = np.asarray(value.stacked() if isinstance(value, Placed) else value)
    return [np.take(array, i, axis=dim) for i in range(array.shape[dim])]


@dataclass
class ReferenceExecutor:
    """Runs graphs with federated ops as a Python loop over members (see the module docstring).

    strict: refuse ops outside a map that compute on placed values (a federated runtime computes on
    members only inside map); when False they run on the stacked array form and are counted in
    `stacked_ops`.
    """

    strict: bool = False
    stacked_ops: list = field(default_factory=list)

    def __post_init__(self):
        self._jax = Interpreter(mesh=None, apply_shardings=False)

    # -- graphs ------------------------------------------------------------------------------------
    def run(self, graph: Graph, *args) -> Any:
        """Run `graph` on arguments with the captured function's signature; returns its pytree."""
        flat = jax.tree_util.tree_leaves((args, {})) if graph.in_tree is not None else list(args)
        outs = self.run_flat(graph, [_host(x) for x in flat])
        outs = [o.stacked() if isinstance(o, Placed) else o for o in outs]
        if graph.out_tree is None:
            return outs[0] if len(outs) == 1 else tuple(outs)
        return jax.tree_util.tree_unflatten(graph.out_tree, outs)

    def run_flat(self, graph: Graph, args: Sequence[Any]) -> list:
        if len(args) != len(graph.inputs):
            raise FederatedError(f"graph @{graph.name} takes {len(graph.inputs)} arguments, got {len(args)}")
        env: dict[Value, Any] = dict(zip(graph.inputs, args))
        for op in graph.ops:
            outs = self.run_op(op, [env[v] for v in op.operands])
            for value, out in zip(op.results, outs):
                env[value] = out
        return [env[v] for v in graph.outputs]

    # -- ops ---------------------------------------------------------------------------------------
    def run_op(self, op: Op, args: list) -> list:
        handler = _HANDLERS.get(op.name)
        if handler is not None:
            return handler(self, op, args)
        if op.name in _IDENTITIES:
            return list(args)
        if op.name in _CALLS and op.regions:
            return self.run_flat(op.regions[0], args)
        if op.name == "scan":
            return self._scan(op, args)
        if op.name == "while":
            return self._while(op, args)
        if op.name == "cond":
            return self._cond(op, args)
        return self._jax_op(op, args)

    def _jax_op(self, op: Op, args: list) -> list:
        if any(_has_federated(region) for region in op.regions):
            raise FederatedError(f"the reference executor cannot run federated ops inside a {op.name!r} op; "
                                 f"only jit, scan, while, cond and call regions may contain them")
        if any(isinstance(a, Placed) for a in args):
            if self.strict:
                raise FederatedError(f"op {op.name!r} computes on placed values outside a map; a federated "
                                     f"runtime computes on members only inside map (strict=True)")
            self.stacked_ops.append(op.name)
            args = [a.stacked() if isinstance(a, Placed) else a for a in args]
        return [_host(o) for o in op.definition.lower(self._jax, op, list(args))]

    # -- control flow over federated regions ----------------------------------------------------------
    def _scan(self, op: Op, args: list) -> list:
        p = op.params
        num_consts, num_carry, length = int(p["num_consts"]), int(p["num_carry"]), int(p["length"])
        consts, carry = args[:num_consts], list(args[num_consts:num_consts + num_carry])
        xs = [np.asarray(x.stacked() if isinstance(x, Placed) else x) for x in args[num_consts + num_carry:]]
        steps = range(length - 1, -1, -1) if p.get("reverse", False) else range(length)
        ys: list[list] = [[None] * length for _ in range(len(op.results) - num_carry)]
        for t in steps:
            outs = self.run_flat(op.regions[0], list(consts) + carry + [x[t] for x in xs])
            carry = outs[:num_carry]
            for k, y in enumerate(outs[num_carry:]):
                ys[k][t] = np.asarray(y.stacked() if isinstance(y, Placed) else y)
        stacked = [np.stack(y) if length else np.zeros(v.type.shape, v.type.dtype)
                   for y, v in zip(ys, op.results[num_carry:])]
        return carry + stacked

    def _while(self, op: Op, args: list) -> list:
        cond_n, body_n = int(op.params["cond_nconsts"]), int(op.params["body_nconsts"])
        cond_consts, body_consts = args[:cond_n], args[cond_n:cond_n + body_n]
        carry = list(args[cond_n + body_n:])
        while bool(np.asarray(self.run_flat(op.regions[0], list(cond_consts) + carry)[0])):
            carry = self.run_flat(op.regions[1], list(body_consts) + carry)
        return carry

    def _cond(self, op: Op, args: list) -> list:
        index = int(np.asarray(args[0]))
        index = min(max(index, 0), len(op.regions) - 1)
        return self.run_flat(op.regions[index], list(args[1:]))


# -- the federated ops, done by the executor in NumPy --------------------------------------------------


def _broadcast(ex: ReferenceExecutor, op: Op, args: list) -> list:
    (x,) = args
    p = op.params
    x = np.asarray(x.stacked() if isinstance(x, Placed) else x)
    return [Placed(p["placement"], [x.copy() for _ in range(p["size"])], p["dim"])]


def _sum(ex: ReferenceExecutor, op: Op, args: list) -> list:
    members = _members(args[0], op.params["dim"])
    dtype = op.results[0].type.dtype
    total = np.zeros(op.results[0].type.shape, dtype)
    for m in members:
        total = total + m.astype(dtype)
    return [total.astype(dtype)]


def _mean(ex: ReferenceExecutor, op: Op, args: list) -> list:
    members = _members(args[0], op.params["dim"])
    dtype = op.results[0].type.dtype
    total = np.zeros(op.results[0].type.shape, dtype)
    for m in members:
        total = total + m.astype(dtype)
    return [(total / dtype.type(max(len(members), 1))).astype(dtype)]


def _weighted_mean(ex: ReferenceExecutor, op: Op, args: list) -> list:
    dim = op.params["dim"]
    weights = _members(args[-1], dim)
    dtype = op.results[0].type.dtype if op.results else np.float32
    weight = np.zeros(weights[0].shape if weights else (), dtype)
    for w in weights:
        weight = weight + w
    outs = []
    for value, result in zip(args[:-1], op.results):
        total = np.zeros(result.type.shape, result.type.dtype)
        for v, w in zip(_members(value, dim), weights):
            total = total + v * w.reshape(w.shape + (1,) * (v.ndim - w.ndim))
        outs.append((total / weight.reshape(weight.shape + (1,) * (total.ndim - weight.ndim))).astype(result.type.dtype))
    return outs


def _map(ex: ReferenceExecutor, op: Op, args: list) -> list:
    p = op.params
    region = op.regions[0]
    size, placement = p["size"], p["placement"]
    per_member: list[list] = []
    for i in range(size):
        slices = [_member(a, i, d, placement, size) for a, d in zip(args, p["in_dims"])]
        outs = ex.run_flat(region, slices)
        per_member.append([o.stacked() if isinstance(o, Placed) else o for o in outs])
    return [Placed(placement, [member[k] for member in per_member], d) for k, d in enumerate(p["out_dims"])]


_HANDLERS: dict[str, Callable] = {
    prims.BROADCAST: _broadcast, prims.SUM: _sum, prims.MEAN: _mean, prims.WEIGHTED_MEAN: _weighted_mean,
    prims.MAP: _map,
}


def _has_federated(graph: Graph) -> bool:
    return any(op.name in _HANDLERS for op in graph.walk())


def interpret(program: Graph | Callable, *args, strict: bool = False) -> Any:
    """Run a federated program (a captured Graph, or a function to capture on `args`) with the
    reference executor: members in a Python loop, federated steps in NumPy, no mesh."""
    graph = program if isinstance(program, Graph) else capture(program, *args)
    return ReferenceExecutor(strict=strict).run(graph, *args)
