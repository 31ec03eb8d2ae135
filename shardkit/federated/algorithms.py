"""Federated training algorithms written with the federated primitives: FedAvg (FedOpt) and DiLoCo.

Each round function is called inside a `program`; model parameters, optimizer states and batches
are pytrees. A member's batches have a leading dimension of local steps: `batches[t]` is step t.

    @fed.program(placements={"clients": 16}, mesh=mesh)
    def round(params, batches, sizes):
        return fedavg_round(params, batches, sizes, loss_fn=loss, client_optimizer=optax.sgd(0.1))
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from . import api

LossFn = Callable[[Any, Any], jax.Array]


def local_train(params, opt_state, batches, *, loss_fn: LossFn, optimizer: optax.GradientTransformation):
    """Run `optimizer` on `loss_fn` over the steps of `batches` (a scan); returns (params, opt_state,
    mean loss over the steps)."""
    def step(carry, batch):
        p, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(p, batch)
        updates, state = optimizer.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), batches)
    return params, opt_state, jnp.mean(losses)


def _difference(a, b):
    return jax.tree_util.tree_map(lambda x, y: x - y, a, b)


def fedavg_round(params, batches, weights, *, loss_fn: LossFn, client_optimizer: optax.GradientTransformation,
                 server_optimizer: optax.GradientTransformation | None = None, server_state=None):
    """One FedAvg round: broadcast the model, train locally on each client (a fresh client optimizer
    per round), and average the client models weighted by `weights` (e.g. dataset sizes).

    With `server_optimizer` (FedOpt), the weighted mean of the client deltas is the server's pseudo-
    gradient and the result is (params, server_state, loss); otherwise (params, loss).
    """
    placed = api.broadcast(params)

    def client(p, data):
        trained, _, loss = local_train(p, client_optimizer.init(p), data, loss_fn=loss_fn,
                                       optimizer=client_optimizer)
        return _difference(p, trained), loss

    deltas, losses = api.map(client, (placed, batches))
    delta = api.weighted_mean(deltas, weights)
    loss = api.weighted_mean(losses, weights)
    if server_optimizer is None:
        return _difference(params, delta), loss
    updates, server_state = server_optimizer.update(delta, server_state, params)
    return optax.apply_updates(params, updates), server_state, loss


def diloco_inner_states(params, inner_optimizer: optax.GradientTransformation):
    """Each replica's initial inner optimizer state (placed), for `diloco_round`."""
    return api.map(lambda p: inner_optimizer.init(p), (api.broadcast(params),))


def diloco_round(params, outer_state, inner_states, batches, *, loss_fn: LossFn,
                 inner_optimizer: optax.GradientTransformation, outer_optimizer: optax.GradientTransformation):
    """One DiLoCo outer step: each replica runs H inner steps (H = the leading dimension of its
    batches) from the shared model, keeping its own inner optimizer state; the mean of the replicas'
    parameter deltas is the outer gradient, applied by `outer_optimizer` (the paper: Nesterov SGD,
    lr 0.7, momentum 0.9). Returns (params, outer_state, inner_states, mean inner loss).
    """
    placed = api.broadcast(params)

    def replica(p, state, data):
        trained, state, loss = local_train(p, state, data, loss_fn=loss_fn, optimizer=inner_optimizer)
        return _difference(p, trained), state, loss

    deltas, inner_states, losses = api.map(replica, (placed, inner_states, batches))
    outer_grad = api.mean(deltas)
    updates, outer_state = outer_optimizer.update(outer_grad, outer_state, params)
    return optax.apply_updates(params, updates), outer_state, inner_states, api.mean(losses)


def diloco_outer_optimizer(learning_rate: float = 0.7, momentum: float = 0.9) -> optax.GradientTransformation:
    """DiLoCo's outer optimizer: SGD with Nesterov momentum (the paper's lr 0.7, momentum 0.9)."""
    return optax.sgd(learning_rate, momentum=momentum, nesterov=True)
