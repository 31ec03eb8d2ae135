"""FedAvg and DiLoCo from shardkit.federated.algorithms, checked against their defining identities:
DiLoCo with H=1, SGD inside and plain SGD outside at lr 1 is data-parallel SGD; one outer step is
parameter averaging; FedAvg is the size-weighted average of locally trained models."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import shardkit as sk
import shardkit.federated as fed
from shardkit.federated import algorithms

REPLICAS = 4


def loss_fn(params, batch):
    x, y = batch
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((hidden @ params["w2"] - y) ** 2)


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"w1": jnp.asarray(rng.normal(size=(6, 8)) * 0.5, jnp.float32), "b1": jnp.zeros(8, jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(8, 2)) * 0.5, jnp.float32)}


def make_batches(steps, seed=1, batch=5):
    """(replicas, steps, batch, ...) inputs and targets."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(REPLICAS, steps, batch, 6)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(REPLICAS, steps, batch, 2)), jnp.float32)
    return x, y


def assert_trees_close(a, b, atol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def test_diloco_with_one_inner_sgd_step_is_data_parallel_sgd():
    lr, rounds = 0.1, 5
    inner, outer = optax.sgd(lr), optax.sgd(1.0)
    mesh = sk.make_mesh({"replicas": REPLICAS})

    @fed.program(placements={"replicas": REPLICAS}, mesh=mesh)
    def train(params, batches):
        inner_states = algorithms.diloco_inner_states(params, inner)
        outer_state = outer.init(params)
        for t in range(rounds):
            step = jax.tree_util.tree_map(lambda b: b[:, t:t + 1], batches)
            params, outer_state, inner_states, _ = algorithms.diloco_round(
                params, outer_state, inner_states, step, loss_fn=loss_fn, inner_optimizer=inner,
                outer_optimizer=outer)
        return params

    def data_parallel(params, batches):
        x, y = batches
        for t in range(rounds):
            # the global batch is the union of the replicas' equal-sized shards
            batch = (x[:, t].reshape(-1, x.shape[-1]), y[:, t].reshape(-1, y.shape[-1]))
            grads = jax.grad(loss_fn)(params, batch)
            params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
        return params

    params, batches = make_params(), make_batches(rounds)
    assert_trees_close(jax.jit(train)(params, batches), jax.jit(data_parallel)(params, batches), atol=1e-6)


def test_one_diloco_outer_step_is_parameter_averaging():
    steps = 6
    inner, outer = optax.adamw(1e-2), optax.sgd(1.0)

    @fed.program(placements={"replicas": REPLICAS})
    def one_round(params, batches):
        states = algorithms.diloco_inner_states(params, inner)
        new, _, _, loss = algorithms.diloco_round(params, outer.init(params), states, batches, loss_fn=loss_fn,
                                                   inner_optimizer=inner, outer_optimizer=outer)
        return new, loss

    def soup(params, batches):
        trained = []
        for r in range(REPLICAS):
            shard = jax.tree_util.tree_map(lambda b: b[r], batches)
            p, _, _ = algorithms.local_train(params, inner.init(params), shard, loss_fn=loss_fn, optimizer=inner)
            trained.append(p)
        return jax.tree_util.tree_map(lambda *ps: sum(ps) / len(ps), *trained)

    params, batches = make_params(2), make_batches(steps, seed=3)
    averaged, loss = jax.jit(one_round)(params, batches)
    assert_trees_close(averaged, jax.jit(soup)(params, batches), atol=1e-6)
    assert np.isfinite(float(loss))


def test_diloco_keeps_each_replicas_inner_state_and_nesterov_outer_step():
    inner, outer = optax.adamw(1e-2), algorithms.diloco_outer_optimizer()

    @fed.program(placements={"replicas": REPLICAS})
    def two_rounds(params, batches):
        states = algorithms.diloco_inner_states(params, inner)
        outer_state = outer.init(params)
        for t in range(2):
            step = jax.tree_util.tree_map(lambda b: b[:, 3 * t:3 * t + 3], batches)
            params, outer_state, states, _ = algorithms.diloco_round(
                params, outer_state, states, step, loss_fn=loss_fn, inner_optimizer=inner, outer_optimizer=outer)
        return params, states

    def reference(params, batches):
        states = [inner.init(params) for _ in range(REPLICAS)]
        outer_state = outer.init(params)
        for t in range(2):
            deltas = []
            for r in range(REPLICAS):
                shard = jax.tree_util.tree_map(lambda b: b[r, 3 * t:3 * t + 3], batches)
                p, states[r], _ = algorithms.local_train(params, states[r], shard, loss_fn=loss_fn, optimizer=inner)
                deltas.append(jax.tree_util.tree_map(lambda a, b: a - b, params, p))
            grad = jax.tree_util.tree_map(lambda *d: sum(d) / REPLICAS, *deltas)
            updates, outer_state = outer.update(grad, outer_state, params)
            params = optax.apply_updates(params, updates)
        return params, states

    params, batches = make_params(4), make_batches(6, seed=5)
    got_params, got_states = jax.jit(two_rounds)(params, batches)
    want_params, want_states = jax.jit(reference)(params, batches)
    assert_trees_close(got_params, want_params, atol=2e-6)
    # the placed inner states are the replicas' own AdamW states, stacked
    stacked = jax.tree_util.tree_map(lambda *s: jnp.stack(s), *want_states)
    assert_trees_close(got_states, stacked, atol=2e-6)


def test_fedavg_round_is_the_size_weighted_average_of_local_models():
    client_opt = optax.sgd(0.05)
    sizes = jnp.array([10.0, 20.0, 30.0, 40.0])

    @fed.program(placements={"clients": REPLICAS})
    def round_fn(params, batches):
        return algorithms.fedavg_round(params, batches, sizes, loss_fn=loss_fn, client_optimizer=client_opt)

    @fed.program(placements={"clients": REPLICAS})
    def fedopt(params, state, batches):
        return algorithms.fedavg_round(params, batches, sizes, loss_fn=loss_fn, client_optimizer=client_opt,
                                       server_optimizer=optax.sgd(1.0), server_state=state)

    def reference(params, batches):
        trained = []
        for r in range(REPLICAS):
            shard = jax.tree_util.tree_map(lambda b: b[r], batches)
            trained.append(algorithms.local_train(params, client_opt.init(params), shard, loss_fn=loss_fn,
                                                  optimizer=client_opt)[0])
        return jax.tree_util.tree_map(lambda *ps: sum(w * p for w, p in zip(sizes, ps)) / jnp.sum(sizes), *trained)

    params, batches = make_params(6), make_batches(3, seed=7)
    new, loss = jax.jit(round_fn)(params, batches)
    assert_trees_close(new, jax.jit(reference)(params, batches), atol=1e-6)
    assert float(loss) > 0
    opt_new, _, _ = jax.jit(fedopt)(params, optax.sgd(1.0).init(params), batches)
    assert_trees_close(opt_new, new, atol=1e-6)
