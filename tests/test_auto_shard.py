"""auto-shard: known optima on small graphs, numbers equal to plain JAX, memory limits respected."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import shardkit as sk
from shardkit.hlo import collectives_from_hlo
from shardkit.ir import ShardingError, type_text


def _mlp(x, w1, w2):
    return jnp.tanh(x @ w1) @ w2


MLP_ARGS = (jnp.ones((256, 1024)), jnp.full((1024, 4096), 0.01), jnp.full((4096, 1024), 0.01))


def _axes(value, dim):
    return value.type.sharding.dims[dim].axes


def test_megatron_with_data_parallel_under_memory_limit(mesh):
    # 12 MB per device cannot hold both 16 MB weights replicated: the optimum shards the hidden
    # dimension (column-parallel then row-parallel) and the batch over the other axis.
    jf = sk.jit(_mlp, mesh=mesh, pipeline="auto-shard{memory-limit=12000000}")
    g = jf.graph(*MLP_ARGS)
    x, w1, w2 = g.inputs
    hidden = _axes(w1, 1)
    assert hidden and _axes(w2, 0) == hidden
    assert _axes(w1, 0) == () and _axes(w2, 1) == ()
    batch = _axes(x, 0)
    assert batch and not set(batch) & set(hidden)
    np.testing.assert_allclose(jf(*MLP_ARGS), _mlp(*MLP_ARGS), rtol=1e-4)
    kinds = {c.kind for c in collectives_from_hlo(jf.lower(*MLP_ARGS).compile().as_text(), mesh)}
    assert kinds == {"all-reduce"}


def test_elementwise_chain_needs_no_communication(mesh):
    fn = lambda x: jnp.exp(jnp.sin(x) * 2 + 1)
    x = jnp.linspace(0, 1, 64 * 128).reshape(64, 128)
    jf = sk.jit(fn, mesh=mesh, pipeline="auto")
    g = jf.graph(x)
    used = {a for d in g.inputs[0].type.sharding.dims for a in d.axes}
    assert used == {"data", "model"}  # compute is split over every device
    assert collectives_from_hlo(jf.lower(x).compile().as_text(), mesh) == []
    np.testing.assert_allclose(jf(x), fn(x), rtol=1e-6)


def test_hints_are_hard_constraints(mesh):
    jf = sk.jit(_mlp, mesh=mesh, in_specs=(P("model", None), None, None), pipeline="auto")
    g = jf.graph(*MLP_ARGS)
    assert type_text(g.inputs[0].type).startswith("f32[256@model,1024")


def test_memory_limit_respected_by_compiled_program(mesh):
    limit = 12_000_000
    jf = sk.jit(_mlp, mesh=mesh, pipeline=f"auto-shard{{memory-limit={limit}}}")
    stats = jf.lower(*MLP_ARGS).compile().memory_analysis()
    if stats is None:
        pytest.skip("this backend reports no memory analysis")
    arguments = stats.argument_size_in_bytes
    assert arguments <= limit
    replicated = sum(a.nbytes for a in MLP_ARGS)
    assert arguments < replicated


def test_infeasible_memory_limit_reports_smallest(mesh):
    with pytest.raises(ShardingError, match=r"smallest feasible limit found is \d+"):
        sk.jit(_mlp, mesh=mesh, pipeline="auto-shard{memory-limit=1000}").graph(*MLP_ARGS)


def test_training_step_numbers(mesh):
    def loss(params, x, y):
        h = jax.nn.relu(x @ params["w1"])
        return jnp.mean((h @ params["w2"] - y) ** 2)

    def step(params, x, y):
        g = jax.grad(loss)(params, x, y)
        return jax.tree_util.tree_map(lambda p, d: p - 0.1 * d, params, g)

    params = {"w1": jnp.full((32, 64), 0.05), "w2": jnp.full((64, 8), 0.05)}
    x, y = jnp.linspace(0, 1, 64 * 32).reshape(64, 32), jnp.ones((64, 8))
    out = sk.jit(step, mesh=mesh, pipeline="auto")(params, x, y)
    ref = step(params, x, y)
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_scan_over_layers_is_solved_once(mesh):
    def model(ws, x):
        def layer(h, w):
            return jnp.tanh(h @ w), None
        return jax.lax.scan(layer, x, ws)[0]

    ws, x = jnp.full((6, 64, 64), 0.02), jnp.ones((32, 64))
    jf = sk.jit(model, mesh=mesh, pipeline="auto")
    np.testing.assert_allclose(jf(ws, x), model(ws, x), rtol=1e-5)


def test_pipeline_option_round_trip():
    from shardkit.passes import Pipeline
    text = "auto-shard{memory-limit=1000000,objective=comm,mesh-axes=[data]}"
    assert str(Pipeline.parse(text)) == text
