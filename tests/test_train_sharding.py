"""What the train plans rely on from propagation: tensor-parallel attention (a fused qkv projection
split into heads) and the embedding gradient keep their model-axis sharding, so sk.jit compiles the
same collectives as the hand-written jax.jit step with the same shardings, with the same numbers."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import shardkit as sk
from shardkit.hlo import collectives_from_hlo

B, T, D, H, V = 8, 16, 32, 4, 12


def attention(x, w_qkv, w_out, hint):
    """Causal self-attention with a fused qkv projection; `hint` places the weights (sk.hint or a
    with_sharding_constraint), as the megatron plan does."""
    w_qkv, w_out = hint(w_qkv, P(None, "model")), hint(w_out, P("model", None))
    q, k, v = jnp.split(x @ w_qkv, 3, axis=-1)
    q, k, v = (z.reshape(B, T, H, D // H) for z in (q, k, v))
    s = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(D // H)
    s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -1e9)
    y = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), v).reshape(B, T, D)
    return y @ w_out


def attention_loss(params, x, hint):
    return jnp.mean(attention(x, params["qkv"], params["out"], hint) ** 2)


def embed_loss(table, ids, hint):
    table = hint(table, P("model", None))
    return jnp.mean(jnp.tanh(table[ids]) ** 2)


def _inputs():
    rng = np.random.default_rng(0)
    params = {"qkv": rng.normal(size=(D, 3 * D)).astype(np.float32) * 0.1,
              "out": rng.normal(size=(D, D)).astype(np.float32) * 0.1}
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    return params, x


def _counts(hlo, mesh):
    return collections.Counter((c.kind, c.axes) for c in collectives_from_hlo(hlo, mesh))


def test_split_heads_take_the_model_axis_from_the_head_reshape(mesh):
    # the reshape (b, t, 64) -> (b, t, 4@model, 16) shards the merged dim's major factor: its operand
    # (the split's q/k/v) must get `model` too, not stay replicated (which made XLA all-gather them)
    params, x = _inputs()
    jf = sk.jit(lambda p, x: jax.grad(attention_loss)(p, x, sk.hint), mesh=mesh,
                in_specs=({"qkv": P(None, "model"), "out": P("model", None)}, P("data")))
    graph = jf.graph(params, x)
    splits = [op for op in graph.walk() if op.name == "split"]
    assert splits
    for op in splits:
        for value in op.results:
            assert value.type.sharding.to_partition_spec() == P("data", None, "model"), value.type
    got = jf(params, x)
    want = jax.jit(jax.grad(attention_loss), static_argnums=2)(params, x, lambda v, s: v)
    for name in params:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=1e-5, atol=1e-6)


def test_attention_grad_compiles_the_collectives_of_hand_written_jit(mesh):
    params, x = _inputs()
    specs = ({"qkv": P(None, "model"), "out": P("model", None)}, P("data"))
    fn = lambda p, x: jax.value_and_grad(attention_loss)(p, x, sk.hint)
    ours = sk.jit(fn, mesh=mesh, in_specs=specs, out_specs=(P(), specs[0])).lower(params, x).compile()
    named = lambda s: NamedSharding(mesh, s)
    constrain = lambda v, s: jax.lax.with_sharding_constraint(v, named(s))
    base = jax.jit(lambda p, x: jax.value_and_grad(attention_loss)(p, x, constrain),
                   in_shardings=jax.tree_util.tree_map(named, specs),
                   out_shardings=(named(P()), jax.tree_util.tree_map(named, specs[0]))).lower(params, x).compile()
    assert _counts(ours.as_text(), mesh) == _counts(base.as_text(), mesh)
    assert not any(kind == "all-gather" and "model" in axes for kind, axes in _counts(ours.as_text(), mesh))


@pytest.mark.parametrize("lowering", ["xla", "spmd"])
def test_embedding_gradient_stays_sharded_over_the_vocabulary(mesh, lowering):
    # the gradient of a lookup is a scatter-add into the rows it read; each shard adds the rows in
    # its own range, so the vocab dim stays sharded (XLA); shardkit's partitioner keeps it whole
    rng = np.random.default_rng(1)
    table = rng.normal(size=(V, D)).astype(np.float32)
    ids = rng.integers(0, V, size=(B, T)).astype(np.int32)
    jf = sk.jit(lambda t, i: jax.grad(embed_loss)(t, i, sk.hint), mesh=mesh,
                in_specs=(P("model", None), P("data")), lowering=lowering)
    if lowering == "xla":
        scatters = [op for op in jf.graph(table, ids).walk() if op.name.startswith("scatter")]
        assert scatters and all(v.type.sharding.to_partition_spec() == P("model")
                                for op in scatters for v in (op.operands[0], op.results[0]))
    want = jax.grad(embed_loss)(table, ids, lambda v, s: v)
    np.testing.assert_allclose(np.asarray(jf(table, ids)), np.asarray(want), rtol=1e-5, atol=1e-7)
