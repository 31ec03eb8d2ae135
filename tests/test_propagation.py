"""Sharding propagation: per-op rules in both directions, hints, conflicts, sk.jit numbers, explain."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P

import shardkit as sk
from shardkit.ir import ShardingError, type_text


def _types(graph, name):
    return [type_text(v.type) for op in graph.walk() if op.name == name for v in op.results]


def _propagated(fn, mesh, specs, *args, **kw):
    return sk.jit(fn, mesh=mesh, in_specs=specs, **kw).graph(*args)


# -- per-op rules, forward (from operands) and backward (from a hinted result) ------------------

FORWARD = [
    ("tanh", lambda x: jnp.tanh(x), [(16, 8)], (P("data", "model"),), "f32[16@data,8@model]"),
    ("dot_general", lambda x, w: x @ w, [(16, 8), (8, 4)], (P("data", None), P(None, "model")),
     "f32[16@data,4@model]"),
    ("reduce_sum", lambda x: x.sum(1), [(16, 8)], (P("data", "model"),), "f32[16@data]"),
    ("transpose", lambda x: x.T, [(16, 8)], (P("data", "model"),), "f32[8@model,16@data]"),
    ("reshape", lambda x: x.reshape(4, 4, 8), [(16, 8)], (P("data", "model"),), "f32[4@data,4,8@model]"),
    ("reshape", lambda x: x.reshape(128), [(16, 8)], (P("data", None),), "f32[128@data]"),
    ("broadcast_in_dim", lambda x: jnp.broadcast_to(x, (4, 16, 8)), [(16, 8)], (P("data", None),),
     "f32[4,16@data,8]"),
    ("cumsum", lambda x: jnp.cumsum(x, axis=1), [(16, 8)], (P("data", "model"),), "f32[16@data,8]"),
    ("concatenate", lambda x: jnp.concatenate([x, x], 1), [(16, 8)], (P("data", "model"),), "f32[16@data,16]"),
    ("argmax", lambda x: jnp.argmax(x, 1), [(16, 8)], (P("data", "model"),), "i32[16@data]"),
    ("dynamic_slice", lambda x: lax.dynamic_slice_in_dim(x, 2, 4, axis=1), [(16, 8)], (P("data", "model"),),
     "f32[16@data,4]"),
    ("conv_general_dilated", lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME"),
     [(8, 3, 8, 8), (4, 3, 3, 3)], (P("data", None, None, None), None), "f32[8@data,4,8,8]"),
]


@pytest.mark.parametrize("name,fn,shapes,specs,expected", FORWARD, ids=[f[0] + str(i) for i, f in enumerate(FORWARD)])
def test_forward_rules(mesh, name, fn, shapes, specs, expected):
    args = [jnp.ones(s) for s in shapes]
    graph = _propagated(fn, mesh, specs, *args)
    graph.verify()
    assert expected in _types(graph, name)
    np.testing.assert_allclose(sk.jit(fn, mesh=mesh, in_specs=specs)(*args), fn(*args), rtol=1e-5)


def test_backward_from_hint(mesh):
    def fn(x, w):
        y = jnp.tanh(x) @ w
        return sk.hint(y, P("data", "model"))

    graph = _propagated(fn, mesh, None, jnp.ones((16, 8)), jnp.ones((8, 4)))
    assert type_text(graph.inputs[0].type) == "f32[16@data,8]"
    assert type_text(graph.inputs[1].type) == "f32[8,4@model]"
    assert "f32[16@data,8]" in _types(graph, "tanh")


def test_backward_through_reshape_and_transpose(mesh):
    def fn(x):
        return sk.hint(x.T.reshape(4, 2, 16), P(None, None, "data"))

    graph = _propagated(fn, mesh, None, jnp.ones((16, 8)))
    assert type_text(graph.inputs[0].type) == "f32[16@data,8]"


def test_every_value_sharded_after_propagation(mesh):
    def fn(x, w):
        return jax.nn.softmax(x @ w, axis=-1).sum(0)

    graph = _propagated(fn, mesh, (P("data", None), None), jnp.ones((16, 8)), jnp.ones((8, 4)))
    for op in graph.walk():
        for v in op.results:
            assert v.type.sharding is not None and not any(d.is_open for d in v.type.sharding.dims)


def test_scan_carry_and_stacked(mesh):
    def fn(h, xs):
        def body(c, x):
            c = jnp.tanh(c + x)
            return c, c * 2
        return lax.scan(body, h, xs)

    h, xs = jnp.ones((16, 8)), jnp.ones((5, 16, 8))
    graph = _propagated(fn, mesh, (P("data", None), None), h, xs)
    assert type_text(graph.inputs[1].type) == "f32[5,16@data,8]"
    scan = next(op for op in graph.ops if op.name == "scan")
    assert [type_text(v.type) for v in scan.results] == ["f32[16@data,8]", "f32[5,16@data,8]"]
    out = sk.jit(fn, mesh=mesh, in_specs=(P("data", None), None))(h, xs)
    ref = fn(h, xs)
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_hint_priority_lower_loses(mesh):
    def fn(x):
        a = sk.hint(x, P("data", None), priority=1)
        b = jnp.sin(a)
        return sk.hint(b * 2, P(None, "data"), priority=0)

    graph = _propagated(fn, mesh, None, jnp.ones((16, 8)))
    assert "f32[16,8@data]" in _types(graph, "sin")


def test_hint_is_identity_under_plain_jax():
    x = jnp.arange(6.0).reshape(2, 3)
    f = lambda x: (sk.hint(x, P("data")) ** 2).sum()
    assert float(jax.jit(f)(x)) == float((x ** 2).sum())
    np.testing.assert_allclose(jax.grad(f)(x), 2 * x)
    np.testing.assert_allclose(jax.vmap(lambda r: sk.hint(r, P("data")))(x), x)


# -- bad input -------------------------------------------------------------------------------------

def test_unknown_axis_in_spec(mesh):
    with pytest.raises(ShardingError, match="'batch'.*data"):
        sk.jit(lambda x: x, mesh=mesh, in_specs=(P("batch"),))(jnp.ones((8, 8)))


def test_axis_used_twice(mesh):
    with pytest.raises(ShardingError, match="used twice"):
        sk.jit(lambda x: x, mesh=mesh, in_specs=(P("data", "data"),))(jnp.ones((8, 8)))


def test_non_divisible_dim(mesh):
    with pytest.raises(ShardingError, match="does not divide"):
        sk.jit(lambda x: x, mesh=mesh, in_specs=(P("data"),))(jnp.ones((6, 8)))


def test_rank_mismatch(mesh):
    with pytest.raises(ShardingError, match="rank"):
        sk.jit(lambda x: x, mesh=mesh, in_specs=(P("data", None, None),))(jnp.ones((8, 8)))
    with pytest.raises(ShardingError, match="rank"):
        sk.hint(jnp.ones(4), P("data", None))


def test_conflicting_closed_hints(mesh):
    def fn(x, w):
        return x @ w

    with pytest.raises(ShardingError, match="conflicting sharding hints"):
        sk.jit(fn, mesh=mesh, in_specs=(P(None, "data"), P("model", None))).graph(jnp.ones((8, 8)), jnp.ones((8, 8)))


def test_conflicting_hint_error_names_the_lines_that_wrote_them(mesh):
    def fn(x, y):
        x = sk.hint(x, P("data", None))
        y = sk.hint(y, P("model", None))
        return x + y

    first_hint_line = fn.__code__.co_firstlineno + 1
    with pytest.raises(ShardingError) as info:
        sk.jit(fn, mesh=mesh).graph(jnp.ones((8, 8)), jnp.ones((8, 8)))
    message = str(info.value)
    assert f"test_propagation.py:{first_hint_line} (" in message
    assert f"test_propagation.py:{first_hint_line + 1} (" in message


# -- sk.jit, lower, explain ------------------------------------------------------------------------

def _mlp(x, w1, w2):
    return jnp.mean((jax.nn.relu(x @ w1) @ w2) ** 2)


def test_jit_lower_compiles_with_collectives(mesh):
    args = (jnp.ones((64, 32)), jnp.full((32, 128), 0.01), jnp.full((128, 32), 0.01))
    jf = sk.jit(_mlp, mesh=mesh, in_specs=(P("data", None), P(None, "model"), P("model", None)))
    np.testing.assert_allclose(jf(*args), _mlp(*args), rtol=1e-5)
    hlo = jf.lower(*args).compile().as_text()
    assert "all-reduce" in hlo


def test_explain_matches_compiled(mesh):
    args = (jnp.ones((64, 32)), jnp.full((32, 128), 0.01), jnp.full((128, 32), 0.01))
    specs = (P("data", None), P(None, "model"), P("model", None))
    rep = sk.explain(jax.grad(_mlp, argnums=(1, 2)), mesh=mesh, in_specs=specs)(*args)
    assert rep.collectives and rep.compiled_collectives
    assert all(c.kind and c.bytes >= 0 for c in rep.collectives)
    assert rep.predicted_bytes == pytest.approx(rep.compiled_bytes, rel=0.10)
    text = str(rep)
    assert "all-reduce" in text and "input" in text


def test_out_specs(mesh):
    jf = sk.jit(lambda x: jnp.sin(x), mesh=mesh, in_specs=(P("data", None),), out_specs=P(None, "model"))
    out = jf(jnp.ones((8, 8)))
    assert out.sharding.spec == P(None, "model")


def test_axis_rules_logical_names(mesh):
    rules = sk.axis_rules([("batch", "data"), ("mlp", "model"), ("embed", None)])
    assert rules.resolve(P("batch", "mlp")) == P("data", "model")
    assert rules.resolve(P("batch", "embed")) == P("data", None)
    first_wins = sk.axis_rules([("batch", ("data", "model")), ("batch", "data")])
    assert first_wins.resolve(P("batch"), ["data"]) == P("data")
    assert first_wins.resolve(P("batch"), ["data", "model"]) == P(("data", "model"))

    def fn(x, w):
        return sk.hint(x @ w, P("batch", "mlp"))

    jf = sk.jit(fn, mesh=mesh, in_specs=(P("batch", "embed"), None), axis_rules=rules)
    graph = jf.graph(jnp.ones((16, 8)), jnp.ones((8, 4)))
    assert type_text(graph.inputs[0].type) == "f32[16@data,8|p0]"
    assert "f32[16@data,4@model|p0]" in _types(graph, "hint")
    with rules:
        out = sk.jit(fn, mesh=mesh, in_specs=(P("batch", "embed"), None))(jnp.ones((16, 8)), jnp.ones((8, 4)))
    np.testing.assert_allclose(out, fn(jnp.ones((16, 8)), jnp.ones((8, 4))))


def test_explicit_mesh_axes():
    from jax.sharding import AxisType
    mesh = sk.make_mesh({"data": 4, "model": 2}, axis_types=(AxisType.Explicit, AxisType.Explicit))
    x = jax.device_put(jnp.arange(64.0).reshape(16, 4), jax.sharding.NamedSharding(mesh, P("data", None)))
    jf = sk.jit(lambda x: jnp.tanh(x) * 2, mesh=mesh, in_specs=(P("data", None),))
    np.testing.assert_allclose(jf(x), jnp.tanh(jnp.arange(64.0).reshape(16, 4)) * 2, rtol=1e-6)


def test_steady_calls_move_no_arrays_that_are_already_in_place(mesh):
    """A training loop feeds a step its own outputs: once they are placed, calls transfer nothing,
    even when the caller spelled an equivalent spec differently (P('data', None) vs P('data'))."""
    def step(w, x):
        return w - 0.1 * jax.grad(lambda w: jnp.mean((x @ w) ** 2))(w), jnp.sum(x)

    specs = (P(None, "model"), P("data"))
    jf = sk.jit(step, mesh=mesh, in_specs=specs, out_specs=(P(None, "model"), P()))
    w = jnp.full((8, 4), 0.5)
    x = jnp.arange(128.0).reshape(16, 8) / 100
    w_placed, _ = jf(w, x)                                   # unplaced arguments are moved
    x_placed = jax.device_put(x, jax.sharding.NamedSharding(mesh, P("data", None)))
    with jax.transfer_guard("disallow"):
        w2, total = jf(w_placed, x_placed)
        w3, _ = jf(w2, x_placed)
    ref = w
    for _ in range(3):
        ref, want_total = step(ref, x)
    np.testing.assert_allclose(w3, ref, rtol=1e-5)
    np.testing.assert_allclose(total, want_total, rtol=1e-6)


def test_elementwise_chains_are_not_constrained_value_by_value(mesh):
    """Values whose sharding XLA derives from their operands anyway (element-wise work on operands
    sharded alike) are left unconstrained, so XLA stays free to fuse and fold across them."""
    def chain(x):
        for _ in range(10):
            x = jnp.tanh(x) * 2 + 1
        return x @ x.T

    jf = sk.jit(chain, mesh=mesh, in_specs=(P("data", "model"),))
    x = jnp.arange(64.0).reshape(8, 8) / 64
    text = jf.lower(x).as_text()
    assert text.count("sdy.sharding_constraint") <= 5    # the input, two scalars, the matmul's result
    np.testing.assert_allclose(jf(x), chain(x), rtol=1e-5)
    assert all(v.type.sharding is not None for op in jf.graph(x).ops for v in op.results)
