"""Real programs end to end: capture -> print -> parse -> verify -> lower, checked against plain JAX.

Each program (a flax NNX MLP training step with optax adam, a `lax.scan` RNN, a `jax.checkpoint`
block, functions with custom JVP rules) runs single-device and then on the 4x2 mesh with input
shardings, where the compiled HLO must be an 8-way partitioned program. Errors for misuse (wrong
argument structure, shapes, mesh axes the graph names but the mesh lacks) are checked last.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

import shardkit as sk


# -- helpers ----------------------------------------------------------------------------------------


def roundtrip(fn, *args, **kwargs) -> sk.ir.Graph:
    """Capture, print, parse (the text must round-trip exactly) and verify; returns the parsed graph."""
    graph = sk.capture(fn, *args, **kwargs)
    text = str(graph)
    parsed = sk.ir.parse(text)
    assert str(parsed) == text
    parsed.verify()
    return parsed


def assert_trees_close(got, want, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert np.shape(g) == np.shape(w)
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


def op_names(graph: sk.ir.Graph) -> set[str]:
    return {op.name for op in graph.walk()}


def put(tree, mesh, spec_of):
    """device_put every leaf of `tree` with the PartitionSpec `spec_of(leaf)`."""
    return jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh, spec_of(a))), tree)


def structs(tree, mesh, spec_of):
    """ShapeDtypeStructs carrying NamedShardings (capture needs no data)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, spec_of(a))),
                        tree)


def assert_partitioned_8_ways(lowered, *args, local_shape: str | None = None) -> str:
    """The compiled HLO is one SPMD program over all 8 devices; returns its text."""
    compiled = lowered.lower(*args).compile()
    hlo = compiled.as_text()
    assert re.search(r"num_partitions=8\b", hlo), hlo[:400]
    devices = {d for s in jax.tree.leaves(compiled.input_shardings) for d in s.device_set}
    assert len(devices) == 8
    if local_shape is not None:  # a sharded input really is split: its per-device shape is in the HLO
        assert local_shape in hlo
    return hlo


# -- the programs -------------------------------------------------------------------------------------


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(8, 32, rngs=rngs)
        self.out = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def mlp_program():
    """(train_step, (params, opt_state, batch)): a pure function of the split NNX state."""
    graphdef, params = nnx.split(MLP(nnx.Rngs(0)))
    tx = optax.adam(1e-2)

    def train_step(params, opt_state, batch):
        x, y = batch

        def loss_fn(p):
            model = nnx.merge(graphdef, p)
            return jnp.mean((model(x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    kx, ky = jax.random.split(jax.random.key(1))
    batch = (jax.random.normal(kx, (16, 8)), jax.random.normal(ky, (16, 4)))
    return train_step, (params, tx.init(params), batch)


def mlp_spec(a) -> P:
    """Tensor-parallel MLP weights (hidden dimension over 'model'), batch over 'data'."""
    return {(8, 32): P(None, "model"), (32,): P("model"), (32, 4): P("model", None),
            (16, 8): P("data", None), (16, 4): P("data", None)}.get(tuple(a.shape), P())


def rnn(params, xs, h0):
    w, u, b = params

    def cell(h, x):
        h = jnp.tanh(x @ w + h @ u + b)
        return h, jnp.sum(h, axis=-1)

    return lax.scan(cell, h0, xs)


def rnn_loss(params, xs, h0):
    h, ys = rnn(params, xs, h0)
    return jnp.sum(h ** 2) + jnp.mean(ys)


def rnn_args():
    k = jax.random.split(jax.random.key(2), 3)
    params = (jax.random.normal(k[0], (4, 8)) * 0.5, jax.random.normal(k[1], (8, 8)) * 0.2, jnp.zeros(8))
    return params, jax.random.normal(k[2], (6, 16, 4)), jnp.zeros((16, 8))


def rnn_spec(a) -> P:
    """Batch over 'data': xs is (time, batch, features), h0 is (batch, hidden)."""
    return {(6, 16, 4): P(None, "data", None), (16, 8): P("data", None)}.get(tuple(a.shape), P())


def block(w, x):
    return jnp.sin(x @ w) @ w.T + x


def remat_loss(w, x):
    h = jax.checkpoint(block)(w, x)
    h = jax.checkpoint(block, policy=jax.checkpoint_policies.dots_saveable)(w, h)
    return jnp.sum(h ** 2)


def remat_args():
    kw, kx = jax.random.split(jax.random.key(3))
    return jax.random.normal(kw, (8, 8)) * 0.3, jax.random.normal(kx, (16, 8))


@jax.custom_jvp
def straight_through_round(x):
    """round() with an identity derivative: autodiff of the primal would give 0, the rule gives 1."""
    return jnp.round(x)


@straight_through_round.defjvp
def _straight_through_round_jvp(primals, tangents):
    return straight_through_round(primals[0]), tangents[0]


CUSTOM_JVP = {
    "relu": jax.nn.relu,
    "logsumexp": lambda z: jax.nn.logsumexp(z, axis=-1),
    "softplus": jax.nn.softplus,
    "straight_through_round": straight_through_round,
}
# logsumexp is differentiated through stop_gradient in this JAX, not a custom_jvp; the others carry one.
HAS_CUSTOM_JVP_CALL = {"relu", "softplus", "straight_through_round"}


def custom_jvp_input():
    z = 3.0 * jax.random.normal(jax.random.key(4), (16, 8))
    return z.at[0, :4].set(0.0).at[1, 0].set(40.0).at[1, 1].set(-40.0)  # relu's kink; softplus's tails


# -- (a) a flax NNX MLP training step with optax adam ---------------------------------------------------


def test_mlp_adam_step_matches_jax():
    train_step, args = mlp_program()
    graph = roundtrip(train_step, *args)
    assert {"dot_general", "custom_jvp_call"} <= op_names(graph)  # relu keeps its custom rule
    step = sk.lower(graph)
    assert_trees_close(step(*args), jax.jit(train_step)(*args))

    # The lowered step returns the captured pytrees (nnx.State, optax states), so it can be iterated.
    params, opt_state, batch = args
    ref_params, ref_opt = params, opt_state
    losses = []
    for _ in range(3):
        params, opt_state, loss = step(params, opt_state, batch)
        ref_params, ref_opt, ref_loss = jax.jit(train_step)(ref_params, ref_opt, batch)
        losses.append(float(loss))
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert_trees_close((params, opt_state), (ref_params, ref_opt), rtol=1e-4, atol=1e-6)
    assert losses[-1] < losses[0]


# -- (b) a lax.scan RNN -----------------------------------------------------------------------------------


def test_scan_rnn_forward_and_gradient():
    args = rnn_args()
    graph = roundtrip(rnn, *args)
    assert "scan" in op_names(graph)
    assert_trees_close(sk.lower(graph)(*args), rnn(*args))

    loss_graph = roundtrip(rnn_loss, *args)
    lowered = sk.lower(loss_graph)
    grads = jax.grad(lambda *a: lowered(*a), argnums=(0, 1, 2))(*args)
    assert_trees_close(grads, jax.grad(rnn_loss, argnums=(0, 1, 2))(*args), rtol=1e-4, atol=1e-5)


def test_scan_rnn_gradient_program_captured():
    """The backward scan itself (a transposed, reversed scan) captured and lowered."""
    args = rnn_args()
    grad_fn = jax.value_and_grad(rnn_loss)
    graph = roundtrip(grad_fn, *args)
    assert sum(op.name == "scan" for op in graph.walk()) >= 2
    assert_trees_close(sk.lower(graph)(*args), grad_fn(*args), rtol=1e-4, atol=1e-5)


# -- (c) jax.checkpoint ------------------------------------------------------------------------------------


def test_checkpointed_block():
    args = remat_args()
    graph = roundtrip(remat_loss, *args)
    remats = [op for op in graph.walk() if op.name == "remat2"]
    assert len(remats) == 2  # one with the default policy, one with a policy function (a ref param)
    lowered = sk.lower(graph)
    np.testing.assert_allclose(lowered(*args), remat_loss(*args), rtol=1e-5)
    grads = jax.grad(lambda *a: lowered(*a), argnums=(0, 1))(*args)
    assert_trees_close(grads, jax.grad(remat_loss, argnums=(0, 1))(*args), rtol=1e-4, atol=1e-5)

    # The gradient program with its rematerialisation captured as it is.
    grad_fn = jax.value_and_grad(remat_loss, argnums=(0, 1))
    grad_graph = roundtrip(grad_fn, *args)
    assert "remat2" in op_names(grad_graph)
    assert_trees_close(sk.lower(grad_graph)(*args), grad_fn(*args), rtol=1e-4, atol=1e-5)


# -- (d) custom_jvp functions --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CUSTOM_JVP))
def test_custom_jvp_gradients_through_lowered_graph(name):
    fn = CUSTOM_JVP[name]
    z = custom_jvp_input()
    graph = roundtrip(fn, z)
    assert ("custom_jvp_call" in op_names(graph)) == (name in HAS_CUSTOM_JVP_CALL)
    lowered = sk.lower(graph)
    np.testing.assert_allclose(lowered(z), fn(z), rtol=1e-6, atol=1e-6)

    weights = jnp.linspace(-1.0, 2.0, fn(z).size).reshape(fn(z).shape)
    got = jax.grad(lambda a: jnp.sum(lowered(a) * weights))(z)
    want = jax.grad(lambda a: jnp.sum(fn(a) * weights))(z)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(got))

    # The captured gradient program (the custom rule applied at capture) agrees too.
    grad_fn = jax.grad(lambda a: jnp.sum(fn(a) * weights))
    np.testing.assert_allclose(sk.lower(roundtrip(grad_fn, z))(z), want, rtol=1e-6, atol=1e-6)


def test_custom_jvp_rule_is_used_not_the_primal():
    """relu's custom rule gives 0 at the kink; differentiating its primal `max(x, 0)` would give 0.5."""
    graph = roundtrip(jax.nn.relu, jnp.zeros((4,)))
    assert "custom_jvp_call" in op_names(graph)
    lowered = sk.lower(graph)
    np.testing.assert_array_equal(jax.grad(lambda a: jnp.sum(lowered(a)))(jnp.zeros((4,))), np.zeros(4))
    np.testing.assert_array_equal(jax.jvp(lowered, (jnp.zeros(4),), (jnp.ones(4),))[1], np.zeros(4))


def test_user_custom_jvp_rule_survives_the_text_round_trip():
    """The rule is an in-process function printed as a reference; the parsed graph still uses it."""
    x = jnp.array([0.2, 1.7, -2.4])
    graph = roundtrip(lambda a: jnp.sum(straight_through_round(a) ** 2), x)
    lowered = sk.lower(graph)
    np.testing.assert_allclose(jax.grad(lowered)(x), 2 * jnp.round(x))  # d/dx round(x)^2 = 2 round(x) * 1


def test_custom_jvp_second_derivative():
    """softplus'' = sigmoid * (1 - sigmoid), through two levels of differentiation of the lowered graph."""
    x = jnp.linspace(-5.0, 5.0, 7)
    lowered = sk.lower(roundtrip(jax.nn.softplus, x))
    second = jax.vmap(jax.grad(jax.grad(lambda s: lowered(jnp.full((7,), s))[0])))(x)
    sig = jax.nn.sigmoid(x)
    np.testing.assert_allclose(second, sig * (1 - sig), rtol=1e-5, atol=1e-6)


# -- (e) the same programs on the 4x2 mesh, with input shardings --------------------------------------------


def test_sharded_mlp_adam_step(mesh):
    train_step, args = mlp_program()
    sharded = put(args, mesh, mlp_spec)
    graph = roundtrip(train_step, *sharded)
    assert graph.mesh == sk.ir.MeshShape((("data", 4), ("model", 2)))
    assert "f32[16@data,8]" in str(graph) and "f32[8,32@model]" in str(graph)

    step = sk.lower(graph, mesh=mesh)
    out = step(*sharded)
    assert_trees_close(out, jax.jit(train_step)(*args), rtol=1e-5, atol=1e-6)
    assert all(len(leaf.sharding.device_set) == 8 for leaf in jax.tree.leaves(out))
    hlo = assert_partitioned_8_ways(step, *sharded, local_shape="f32[4,8]")
    assert "all-reduce" in hlo  # weight gradients are summed over the data-sharded batch

    # The lowered step feeds its own (sharded) outputs back in.
    out2 = step(out[0], out[1], sharded[2])
    ref = jax.jit(train_step)(*jax.jit(train_step)(*args)[:2], args[2])
    assert_trees_close(out2, ref, rtol=1e-4, atol=1e-6)


def test_sharded_scan_rnn_from_shape_dtype_structs(mesh):
    args = rnn_args()
    graph = roundtrip(rnn_loss, *structs(args, mesh, rnn_spec))
    assert "f32[6,16@data,4]" in str(graph)
    lowered = sk.lower(graph, mesh=mesh)
    np.testing.assert_allclose(lowered(*args), rnn_loss(*args), rtol=1e-5)
    grads = jax.grad(lambda *a: lowered(*a), argnums=(0, 1, 2))(*args)
    assert_trees_close(grads, jax.grad(rnn_loss, argnums=(0, 1, 2))(*args), rtol=1e-4, atol=1e-5)
    assert_partitioned_8_ways(lowered, *args, local_shape="f32[6,4,4]")


def test_sharded_checkpointed_block(mesh):
    args = remat_args()
    spec = lambda a: P("data", None) if a.shape == (16, 8) else P(None, "model")  # noqa: E731
    grad_fn = jax.value_and_grad(remat_loss, argnums=(0, 1))
    graph = roundtrip(grad_fn, *structs(args, mesh, spec))
    assert "remat2" in op_names(graph)
    lowered = sk.lower(graph)  # the mesh recorded at capture
    assert_trees_close(lowered(*args), grad_fn(*args), rtol=1e-4, atol=1e-5)
    assert_partitioned_8_ways(lowered, *args, local_shape="f32[4,8]")


@pytest.mark.parametrize("name", sorted(CUSTOM_JVP))
def test_sharded_custom_jvp(mesh, name):
    fn = CUSTOM_JVP[name]
    z = custom_jvp_input()
    zs = jax.device_put(z, NamedSharding(mesh, P("data", "model")))
    lowered = sk.lower(roundtrip(fn, zs), mesh=mesh)
    np.testing.assert_allclose(lowered(zs), fn(z), rtol=1e-6, atol=1e-6)
    got = jax.grad(lambda a: jnp.sum(lowered(a) ** 2))(zs)
    np.testing.assert_allclose(got, jax.grad(lambda a: jnp.sum(fn(a) ** 2))(z), rtol=1e-5, atol=1e-5)
    assert_partitioned_8_ways(lowered, zs, local_shape="f32[4,4]")


def test_sharding_constraint_inside_program(mesh):
    """A with_sharding_constraint inside the program is kept through text and applied when lowered."""
    def fn(x, w):
        h = jax.lax.with_sharding_constraint(x @ w, NamedSharding(mesh, P("data", "model")))
        return jnp.tanh(h).sum(axis=0)

    x, w = remat_args()[1], jnp.ones((8, 16))
    graph = roundtrip(fn, x, w)
    assert "f32[16@data,16@model|p0]" in str(graph)
    lowered = sk.lower(graph)
    np.testing.assert_allclose(lowered(x, w), fn(x, w), rtol=1e-5)
    assert_partitioned_8_ways(lowered, x, w)


# -- errors --------------------------------------------------------------------------------------------------


def test_wrong_argument_structure_is_a_clear_error():
    train_step, (params, opt_state, batch) = mlp_program()
    step = sk.lower(roundtrip(train_step, params, opt_state, batch))

    with pytest.raises(sk.ir.LoweringError, match=r"args\[0\]: expected State .* got dict") as info:
        step(nnx.to_pure_dict(params), opt_state, batch)
    assert isinstance(info.value, sk.ir.ShardkitError)
    assert "call it the way the captured function was called" in str(info.value)
    with pytest.raises(sk.ir.LoweringError, match="expected 3 positional arguments, got 2"):
        step(params, opt_state)
    with pytest.raises(sk.ir.LoweringError, match=r"args\[2\]: expected a tuple of 2, got a list of 2"):
        step(params, opt_state, list(batch))
    with pytest.raises(sk.ir.LoweringError, match=r"args\[1\]"):
        step(params, opt_state[0], batch)


def test_wrong_argument_shape_or_dtype_is_a_clear_error():
    train_step, (params, opt_state, (x, y)) = mlp_program()
    step = sk.lower(roundtrip(train_step, params, opt_state, (x, y)))
    with pytest.raises(sk.ir.LoweringError, match=r"args\[2\]\[0\].*float32\[8, 8\].*captured for f32\[16,8\]"):
        step(params, opt_state, (x[:8], y))
    with pytest.raises(sk.ir.LoweringError, match=r"args\[2\]\[1\].*int32"):
        step(params, opt_state, (x, y.astype(jnp.int32)))
    # float64 numpy data is canonicalised (as jax.jit does), so it is accepted.
    assert_trees_close(step(params, opt_state, (np.asarray(x, np.float64), y)),
                       jax.jit(train_step)(params, opt_state, (x, y)))


def test_input_sharding_on_mesh_without_its_axis(mesh):
    x = jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=NamedSharding(mesh, P("data", "model")))
    graph = roundtrip(lambda a: jnp.sin(a) * 2.0, x)
    data_only = sk.make_mesh({"data": 4})
    with pytest.raises(sk.ir.ShardingError, match=r"input 0 .*f32\[16@data,8@model\].*'model'") as info:
        sk.lower(graph, mesh=data_only)
    assert "['data']" in str(info.value)
    with pytest.raises(sk.ir.ShardingError, match="'model'"):
        sk.lower(graph, mesh={"data": 8})


def test_inner_sharding_on_mesh_without_its_axis(mesh):
    def fn(x):
        return jax.lax.with_sharding_constraint(jnp.sin(x), NamedSharding(mesh, P(None, "model")))

    graph = roundtrip(fn, jnp.ones((16, 8)))
    with pytest.raises(sk.ir.ShardingError, match=r"sharding_constraint.*'model'"):
        sk.lower(graph, mesh=sk.make_mesh({"data": 4}))


def test_hinted_function_captured_outside_a_mesh_verifies_and_lowers_onto_one(mesh):
    def fn(x, w):
        return jnp.tanh(sk.hint(x @ w, P("data", None)))

    x, w = jnp.ones((8, 16)), jnp.full((16, 4), 0.1)
    graph = roundtrip(fn, x, w)          # no mesh known: hint axes are checked once a mesh is given
    with pytest.raises(sk.ir.VerifyError, match="'nope'"):
        graph.verify(mesh=sk.make_mesh({"nope": 8}))
    out = sk.lower(graph, mesh=mesh)(x, w)
    np.testing.assert_allclose(out, fn(x, w), rtol=1e-6)
    assert out.sharding.spec[0] == "data"
