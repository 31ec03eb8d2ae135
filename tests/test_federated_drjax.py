"""The same federated programs written with shardkit.federated and with DrJAX give the same numbers,
values and derivatives (DrJAX is a test-only dependency)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import shardkit as sk
import shardkit.federated as fed

drjax = pytest.importorskip("drjax")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # DrJAX reads a deprecated JAX global

N = 8


def _data():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), jnp.asarray(rng.normal(size=(N, 6, 4)), jnp.float32),
            jnp.asarray(rng.normal(size=(N, 6, 3)), jnp.float32), jnp.asarray(rng.uniform(1, 5, size=(N,)), jnp.float32))


def _client(w, x, y):
    loss = lambda w: jnp.mean((jnp.tanh(x @ w) - y) ** 2)  # noqa: E731
    for _ in range(3):
        w = w - 0.2 * jax.grad(loss)(w)
    return w, loss(w)


def _round(broadcast, map_fn, weighted_mean, mean):
    def round_fn(w, xs, ys, sizes):
        local, losses = map_fn(_client, (broadcast(w), xs, ys))
        return weighted_mean(local, sizes), mean(losses)
    return round_fn


def _programs(mesh=None):
    # DrJAX binds its operators when its program runs: look them up at call time
    ours = fed.program(placements={"clients": N}, mesh=mesh)(
        _round(fed.broadcast, fed.map, fed.weighted_mean, fed.mean))
    theirs = drjax.program(placements={"clients": N})(
        _round(lambda x: drjax.broadcast(x, mesh=mesh), lambda f, a: drjax.map_fn(f, a, mesh=mesh),
               lambda x, w: drjax.reduce_weighted_mean(x, w), lambda x: drjax.reduce_mean(x)))
    return ours, theirs


def _close(a, b, **kw):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, **kw)


def test_fedavg_round_and_its_derivatives_agree_with_drjax():
    ours, theirs = _programs()
    args = _data()
    _close(jax.jit(ours)(*args), jax.jit(theirs)(*args), rtol=1e-5, atol=1e-6)
    meta = lambda f: jax.jit(jax.grad(lambda w, *rest: jnp.sum(f(w, *rest)[0] ** 2) + f(w, *rest)[1]))  # noqa: E731
    _close(meta(ours)(*args), meta(theirs)(*args), rtol=1e-4, atol=1e-6)
    jvp = lambda f: jax.jit(lambda w, t: jax.jvp(lambda w: f(w, *args[1:]), (w,), (t,))[1])  # noqa: E731
    _close(jvp(ours)(args[0], jnp.ones_like(args[0])), jvp(theirs)(args[0], jnp.ones_like(args[0])),
           rtol=1e-4, atol=1e-6)


def test_primitives_agree_with_drjax_on_a_mesh():
    mesh = sk.make_mesh({"clients": 8})
    ours, theirs = _programs(mesh)
    args = _data()
    _close(jax.jit(ours)(*args), jax.jit(theirs)(*args), rtol=1e-5, atol=1e-6)

    @fed.program(placements={"clients": N}, mesh=mesh)
    def ours_small(x):
        b = fed.broadcast(x)
        return fed.sum(b), fed.mean(b * 2.0)

    @drjax.program(placements={"clients": N})
    def theirs_small(x):
        b = drjax.broadcast(x, mesh=mesh)
        return drjax.reduce_sum(b), drjax.reduce_mean(b * 2.0)

    x = jnp.arange(3.0)
    _close(jax.jit(ours_small)(x), jax.jit(theirs_small)(x), rtol=1e-6)
    for jac in (jax.jacfwd, jax.jacrev):
        _close(jac(ours_small)(x), jac(theirs_small)(x), rtol=1e-6)


def test_integer_mean_is_consistent_where_drjax_is_not_required_to_be():
    @fed.program(placements={"clients": 4})
    def ours(x):
        return fed.mean(x)

    ints = jnp.arange(8, dtype=jnp.int32).reshape(4, 2)
    eager, traced = ours(ints), jax.jit(ours)(ints)
    assert eager.dtype == traced.dtype == jax.eval_shape(ours, ints).dtype
    # DrJAX's eager mean of integers gives the float average too: the numbers agree
    theirs = drjax.program(placements={"clients": 4})(lambda x: drjax.reduce_mean(x))(ints)
    np.testing.assert_allclose(eager, theirs)
