"""Differential tests: every built-in pass leaves the numbers of real programs unchanged.

For each program of a small corpus (an MLP training step, a transformer block, an RNN written with
lax.scan, and the MLP step sharded over a mesh) and each pass, the pass output must verify, and
lowering it must give the same numbers as running the original function with plain JAX.
"""
from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import shardkit as sk
from shardkit.passes import Pipeline

CLEANUP = "inline,canonicalize,cse,dce"
PIPELINES = ["dce", "cse", "canonicalize", "inline", "print", CLEANUP]


def mlp_params(key, sizes=(16, 32, 8)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [(jax.random.normal(k, (m, n)) / np.sqrt(m), jnp.zeros((n,))) for k, m, n in
            zip(keys, sizes[:-1], sizes[1:])]


def mlp_loss(params, x, y):
    h = x
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w + b)
    w, b = params[-1]
    logits = h @ w + b
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * y, axis=-1))


def train_step(params, x, y):
    loss, grads = jax.value_and_grad(mlp_loss)(params, x, y)
    params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
    return params, loss


def layer_norm(x, scale, eps=1e-6):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale


def transformer_block(p, x):
    heads, d = 2, x.shape[-1]
    h = layer_norm(x, p["ln1"])
    q, k, v = (jnp.einsum("sd,de->se", h, p[n]).reshape(x.shape[0], heads, d // heads) for n in "qkv")
    scores = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(d // heads)
    mask = jnp.tril(jnp.ones((x.shape[0], x.shape[0]), bool))
    scores = jnp.where(mask, scores, -1e9)
    attn = jnp.einsum("hqk,khd->qhd", jax.nn.softmax(scores, axis=-1), v).reshape(x.shape)
    x = x + attn @ p["o"]
    h = layer_norm(x, p["ln2"])
    return x + jax.nn.gelu(h @ p["up"]) @ p["down"]


def rnn(w, xs, h0):
    def cell(h, x):
        h = jnp.tanh(h @ w + x)
        return h, h * 1.0 + 0.0
    return jax.lax.scan(cell, h0, xs)


def corpus():
    key = jax.random.key(0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    x = jax.random.normal(k1, (8, 16))
    y = jax.nn.one_hot(jnp.arange(8) % 8, 8)
    block = {n: jax.random.normal(k, s) * 0.1 for n, k, s in zip(
        ["q", "k", "v", "o", "up", "down"], jax.random.split(k2, 6),
        [(16, 16)] * 4 + [(16, 32), (32, 16)])}
    block.update(ln1=jnp.ones(16), ln2=jnp.ones(16))
    return {
        "mlp_train_step": (jax.jit(train_step), (mlp_params(k3), x, y)),
        "transformer_block": (transformer_block, (block, jax.random.normal(k4, (8, 16)))),
        "scan_rnn": (rnn, (jax.random.normal(k1, (16, 16)) * 0.3, jax.random.normal(k2, (6, 16)),
                           jnp.zeros(16))),
    }


CORPUS = corpus()


@pytest.fixture(scope="module")
def captured():
    out = {}
    for name, (fn, args) in CORPUS.items():
        out[name] = (sk.capture(fn, *args), fn(*args), args)
    return out


def assert_same(actual, expected):
    flat_a, flat_e = jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)
    assert len(flat_a) == len(flat_e)
    for a, e in zip(flat_a, flat_e):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("program", list(CORPUS))
def test_pass_keeps_numbers(captured, program, pipeline):
    graph, expected, args = captured[program]
    out = Pipeline.parse(pipeline).run(graph, verify=True, out=io.StringIO())
    out.verify()
    assert str(sk.ir.parse(str(out))) == str(out)
    assert_same(sk.lower(out)(*args), expected)


def test_passes_shrink_the_training_step(captured):
    graph, _, _ = captured["mlp_train_step"]
    out = Pipeline.parse(CLEANUP).run(graph, verify=True)
    assert out.num_ops() < graph.num_ops()
    assert not any(op.name in ("jit", "pjit") for op in out.walk())


def test_sharded_program_keeps_numbers_and_shardings(mesh):
    fn, (params, x, y) = CORPUS["mlp_train_step"]
    x = jax.device_put(x, NamedSharding(mesh, P("data", None)))

    def step(params, x, y):
        params, loss = train_step(params, x, y)
        return params, jax.lax.with_sharding_constraint(loss * 1.0, NamedSharding(mesh, P()))

    graph = sk.capture(step, params, x, y)
    expected = jax.jit(step)(params, x, y)
    for pipeline in (CLEANUP, "cse,dce"):
        out = Pipeline.parse(pipeline).run(graph, mesh=mesh, verify=True)
        assert out.inputs[len(jax.tree_util.tree_leaves(params))].type.sharding is not None
        assert any(op.name == "sharding_constraint" for op in out.walk())
        assert_same(sk.lower(out, mesh=mesh)(params, x, y), expected)
