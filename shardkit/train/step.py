"""The pure training and evaluation steps a plan turns into a sharded program.

The step takes `(params, opt_state, rest, batch)` and returns the new state and a dict of metrics.
The plan enters as `sk.hint`s: parameters are hinted to their `compute` layout where the model uses
them and gradients to their `grads` layout; the `params`/`opt_state` layouts become the in/out
specs of `sk.jit`. Under plain `jax.jit` the hints are the identity, so the same step is also the
single-device reference.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from shardkit.hints import hint


def hint_tree(tree: Any, specs: Any) -> Any:
    """`sk.hint` every leaf of `tree` with the matching PartitionSpec of `specs` (same structure)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    spec_leaves = treedef.flatten_up_to(specs)
    return jax.tree_util.tree_unflatten(treedef, [hint(x, s) for x, s in zip(leaves, spec_leaves)])


def split_loss(out) -> tuple[Any, dict]:
    """A loss function's result as (loss, metrics dict): it may return a loss or (loss, dict)."""
    if isinstance(out, tuple):
        if len(out) != 2 or not isinstance(out[1], dict):
            raise TypeError("a loss function returns a scalar loss or (loss, {name: scalar metric})")
        return out[0], out[1]
    return out, {}


def make_loss(graphdef, loss_fn: Callable, compute_specs: Any | None) -> Callable:
    """`(params, rest, batch) -> (loss, (metrics, new_rest))` for `jax.value_and_grad(has_aux=True)`."""

    def loss_of(params, rest, batch):
        if compute_specs is not None:
            params = hint_tree(params, compute_specs)
        rest = jax.tree_util.tree_map(lambda x: x, rest)  # fresh Variables at this trace level (mutable)
        model = nnx.merge(graphdef, params, rest)
        loss, metrics = split_loss(loss_fn(model, batch))
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        return jnp.asarray(loss, jnp.float32), (metrics, new_rest)

    return loss_of


def make_train_step(graphdef, optimizer: optax.GradientTransformation, loss_fn: Callable,
                    compute_specs: Any | None = None, grad_specs: Any | None = None) -> Callable:
    """A pure step `(params, opt_state, rest, batch) -> (params, opt_state, rest, metrics)`."""
    loss_of = make_loss(graphdef, loss_fn, compute_specs)

    def train_step(params, opt_state, rest, batch):
        (loss, (metrics, rest)), grads = jax.value_and_grad(loss_of, has_aux=True)(params, rest, batch)
        if grad_specs is not None:
            grads = hint_tree(grads, grad_specs)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, rest, {"loss": loss, **metrics}

    return train_step


def make_grad_step(graphdef, loss_fn: Callable, compute_specs: Any | None = None,
                   grad_specs: Any | None = None) -> Callable:
    """`(params, rest, batch) -> (loss, grads)` with the plan's hints (for checks and debugging)."""
    loss_of = make_loss(graphdef, loss_fn, compute_specs)

    def grad_step(params, rest, batch):
        (loss, _), grads = jax.value_and_grad(loss_of, has_aux=True)(params, rest, batch)
        if grad_specs is not None:
            grads = hint_tree(grads, grad_specs)
        return loss, grads

    return grad_step


def make_eval_step(graphdef, loss_fn: Callable, compute_specs: Any | None = None) -> Callable:
    """`(params, rest, batch) -> metrics` without gradients or state updates."""
    loss_of = make_loss(graphdef, loss_fn, compute_specs)

    def eval_step(params, rest, batch):
        loss, (metrics, _) = loss_of(params, rest, batch)
        return {"loss": loss, **metrics}

    return eval_step
