"""shardkit.federated: known values, federated AD through every JAX transformation, shardings,
bad input, and the IR (capture, text round trip, lowering, explain, interpreting out)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import shardkit as sk
import shardkit.federated as fed
from shardkit.federated import primitives as prims

FEDERATED = set(prims.NAMES)


def primitive_names(jaxpr) -> list[str]:
    """Primitive names of a closed jaxpr's top-level equations."""
    return [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns]


# -- known values ------------------------------------------------------------------------------------


def test_sum_of_broadcast_over_three_clients():
    @fed.program(placements={"clients": 3})
    def total(x):
        return fed.sum(fed.broadcast(x))

    assert float(total(2.0)) == 6.0
    assert float(jax.jit(total)(2.0)) == 6.0
    assert float(jax.grad(total)(2.0)) == 3.0
    assert float(jax.jit(jax.grad(total))(2.0)) == 3.0


def test_jacobians_of_broadcast_and_mean_for_100_clients():
    @fed.program(placements={"clients": 100})
    def spread(x):
        return fed.broadcast(x)

    @fed.program(placements={"clients": 100})
    def average(x):
        return fed.mean(x)

    for jac in (jax.jacfwd, jax.jacrev):
        np.testing.assert_array_equal(jac(spread)(1.5), np.ones(100))
        np.testing.assert_allclose(jac(average)(jnp.arange(100.0)), np.full(100, 0.01), rtol=1e-6)


def test_gradient_of_client_averaged_loss_matches_closed_form():
    ys = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
    x = jnp.array([0.3, -0.2, 0.5])

    @fed.program(placements={"clients": 5})
    def loss(x, ys):
        per_client = fed.map(lambda xi, yi: 0.5 * (jnp.dot(xi, yi) - 1.0) ** 2, (fed.broadcast(x), ys))
        return fed.mean(per_client)

    closed_form = np.mean((np.asarray(ys) @ np.asarray(x) - 1.0)[:, None] * np.asarray(ys), axis=0)
    np.testing.assert_allclose(jax.grad(loss)(x, ys), closed_form, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(x, ys), closed_form, rtol=1e-5, atol=1e-6)

    @jax.jit
    def pulled(x, ys):
        value, pullback = jax.vjp(loss, x, ys)
        return pullback(jnp.ones_like(value))[0]

    np.testing.assert_allclose(pulled(x, ys), closed_form, rtol=1e-5, atol=1e-6)
    direction = jnp.array([1.0, 2.0, -1.0])
    _, tangent = jax.jit(lambda x, t: jax.jvp(lambda x: loss(x, ys), (x,), (t,)))(x, direction)
    np.testing.assert_allclose(tangent, closed_form @ np.asarray(direction), rtol=1e-5, atol=1e-6)
    plain = jax.hessian(lambda x: jnp.mean(0.5 * (ys @ x - 1.0) ** 2))(x)
    np.testing.assert_allclose(jax.jit(jax.hessian(loss))(x, ys), plain, rtol=1e-5, atol=1e-6)


def test_weighted_mean_known_value_and_derivatives():
    @fed.program(placements={"clients": 8})
    def average(values, weights):
        return fed.weighted_mean(values, weights)

    values, weights = jnp.arange(8.0), jnp.arange(1.0, 9.0)
    np.testing.assert_allclose(average(values, weights), 4.6667, atol=1e-4)
    np.testing.assert_allclose(jax.jit(average)(values, weights), 4.6667, atol=1e-4)
    plain = lambda v, w: jnp.sum(v * w) / jnp.sum(w)  # noqa: E731
    for jac in (jax.jacfwd, jax.jacrev):
        for got, want in zip(jac(average, argnums=(0, 1))(values, weights),
                             jac(plain, argnums=(0, 1))(values, weights)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_weighted_mean_of_pytrees_with_one_weight_per_member_and_int_inputs():
    @fed.program(placements={"clients": 4})
    def average(values, weights):
        return fed.weighted_mean(values, weights)

    tree = {"a": jnp.arange(4.0), "b": jnp.arange(8.0).reshape(4, 2)}
    weights = jnp.array([1.0, 0.0, 2.0, 1.0])
    out = average(tree, weights)
    np.testing.assert_allclose(out["a"], np.average(np.arange(4.0), weights=weights), rtol=1e-6)
    np.testing.assert_allclose(out["b"], np.average(np.arange(8.0).reshape(4, 2), axis=0, weights=weights), rtol=1e-6)
    plain = lambda t, w: sum(jnp.sum(jnp.tensordot(w, x, 1) / jnp.sum(w)) for x in t.values())  # noqa: E731
    ours = lambda t, w: sum(jnp.sum(x) for x in average(t, w).values())  # noqa: E731
    for got, want in zip(jax.jit(jax.grad(ours, argnums=(0, 1)))(tree, weights),
                         jax.grad(plain, argnums=(0, 1))(tree, weights)):
        for x, y in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # per-leaf weights: one weighted mean per distinct weights array
    per_leaf = average(tree, {"a": weights, "b": jnp.ones((4, 2))})
    np.testing.assert_allclose(per_leaf["b"], np.mean(np.arange(8.0).reshape(4, 2), axis=0), rtol=1e-6)
    jaxpr = jax.make_jaxpr(average)(tree, weights)
    assert primitive_names(jaxpr).count(prims.WEIGHTED_MEAN) == 1
    ints = average(jnp.arange(4), jnp.array([1, 1, 1, 5]))
    assert ints.dtype == prims.default_float()
    np.testing.assert_allclose(ints, (0 + 1 + 2 + 15) / 8, rtol=1e-6)


# -- dtypes --------------------------------------------------------------------------------------------


def test_integer_mean_has_one_dtype_under_eager_eval_shape_and_jit():
    @fed.program(placements={"clients": 4})
    def average(x):
        return fed.mean(x)

    @fed.program(placements={"clients": 4})
    def total(x):
        return fed.sum(x)

    ints = jnp.arange(8, dtype=jnp.int32).reshape(4, 2)
    for run in (average, jax.jit(average)):
        out = run(ints)
        assert out.dtype == prims.default_float()
        np.testing.assert_allclose(out, [3.0, 4.0])
    assert jax.eval_shape(average, ints).dtype == prims.default_float()
    for run in (total, jax.jit(total)):
        assert run(ints).dtype == jnp.int32
        np.testing.assert_array_equal(run(ints), [12, 16])
    assert jax.eval_shape(total, ints).dtype == jnp.int32
    assert total(jnp.ones(4, bool)).dtype == prims.default_int()
    assert int(total(jnp.ones(4, bool))) == 4


# -- federated AD: the jaxpr keeps the communication ---------------------------------------------------


def test_reverse_mode_jaxprs_contain_federated_primitives():
    @fed.program(placements={"clients": 4})
    def total(x):
        return fed.sum(fed.broadcast(x))

    names = primitive_names(jax.make_jaxpr(jax.grad(total))(1.0))
    assert names.count(prims.BROADCAST) == 2 and names.count(prims.SUM) == 2
    assert not {"broadcast_in_dim", "reduce_sum"} & set(names)

    @fed.program(placements={"clients": 4})
    def average(x):
        return fed.mean(fed.map(jnp.sin, fed.broadcast(x)))

    names = primitive_names(jax.make_jaxpr(jax.grad(average))(1.0))
    # mean transposes to a broadcast, the map to a map, and the broadcast to a sum
    assert names.count(prims.MAP) == 2
    assert names.count(prims.BROADCAST) == 2
    assert prims.SUM in names and prims.MEAN in names

    @fed.program(placements={"clients": 4})
    def closure(x, data):
        return fed.sum(fed.map(lambda d: jnp.sum(d * x), data))

    names = primitive_names(jax.make_jaxpr(jax.grad(closure))(jnp.ones(2), jnp.ones((4, 2))))
    # a server value read inside map: its cotangent is summed back over the clients
    assert names[-1] == prims.SUM


def test_symbolic_zero_cotangents_and_unused_outputs():
    @fed.program(placements={"clients": 3})
    def two(x, y):
        outs = fed.map(lambda a, b: (a * 2.0, b.astype(jnp.int32), a * 0.0 + 1.0), (fed.broadcast(x), fed.broadcast(y)))
        return fed.sum(outs[0]), fed.sum(outs[1]), fed.mean(outs[2])

    grads = jax.grad(lambda x, y: two(x, y)[0], argnums=(0, 1))(1.0, 2.0)
    assert [float(g) for g in grads] == [6.0, 0.0]
    assert float(jax.grad(lambda x: two(x, 2.0)[2])(1.0)) == 0.0
    primal, tangent = jax.jvp(lambda x: two(x, 2.0), (1.0,), (1.0,))
    assert float(tangent[0]) == 6.0 and tangent[1].dtype == jax.dtypes.float0
    # transposing a linear program directly
    @fed.program(placements={"clients": 3})
    def linear(x):
        return fed.sum(fed.map(lambda a: 3.0 * a, fed.broadcast(x)))

    (ct,) = jax.linear_transpose(linear, 1.0)(1.0)
    assert float(ct) == 9.0


def test_vmap_through_every_primitive_matches_a_python_loop():
    @fed.program(placements={"clients": 4})
    def program_fn(x, data, weights):
        local = fed.map(lambda p, d: jnp.tanh(p * d), (fed.broadcast(x), data))
        return fed.sum(local) + fed.mean(local) + fed.weighted_mean(local, weights)

    looped_fn = jax.jit(program_fn)
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
    data = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
    weights = jnp.asarray(rng.uniform(1, 2, size=(4,)), jnp.float32)
    looped = np.stack([looped_fn(x, data, weights) for x in xs])
    np.testing.assert_allclose(jax.vmap(program_fn, (0, None, None))(xs, data, weights), looped, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.vmap(program_fn, (0, None, None)))(xs, data, weights), looped, rtol=1e-5)
    batch_data = jnp.stack([data, 2 * data])
    looped = np.stack([looped_fn(xs[0], d, weights) for d in batch_data])
    batched = jax.jit(jax.vmap(program_fn, (None, 0, None)))
    np.testing.assert_allclose(batched(xs[0], batch_data, weights), looped, rtol=1e-5)
    moved = jnp.moveaxis(batch_data, 0, 1)  # batch dimension after the client dimension
    batched = jax.jit(jax.vmap(program_fn, (None, 1, None)))
    np.testing.assert_allclose(batched(xs[0], moved, weights), looped, rtol=1e-5)
    batch_weights = jnp.stack([weights, weights ** 2])
    looped = np.stack([looped_fn(xs[0], data, w) for w in batch_weights])
    batched = jax.jit(jax.vmap(program_fn, (None, None, 0)))
    np.testing.assert_allclose(batched(xs[0], data, batch_weights), looped, rtol=1e-5)
    grad_fn = jax.grad(lambda x, d: program_fn(x, d, weights).sum())
    per_example = jax.jit(jax.vmap(grad_fn, (0, None)))(xs, data)
    looped = np.stack([jax.jit(grad_fn)(x, data) for x in xs])
    np.testing.assert_allclose(per_example, looped, rtol=1e-5)


def test_grad_of_a_fedavg_round_matches_plain_jax():
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
    xs = jnp.asarray(rng.normal(size=(4, 5, 3)), jnp.float32)
    ys = jnp.asarray(rng.normal(size=(4, 5, 2)), jnp.float32)
    sizes = jnp.array([1.0, 2.0, 3.0, 4.0])

    def client(w, x, y):
        loss = lambda w: jnp.mean((x @ w - y) ** 2)  # noqa: E731
        for _ in range(2):
            w = w - 0.1 * jax.grad(loss)(w)
        return w

    @fed.program(placements={"clients": 4})
    def round_fn(w):
        return fed.weighted_mean(fed.map(client, (fed.broadcast(w), xs, ys)), sizes)

    def plain(w):
        local = jax.vmap(client, (None, 0, 0))(w, xs, ys)
        return jnp.tensordot(sizes, local, 1) / jnp.sum(sizes)

    np.testing.assert_allclose(jax.jit(round_fn)(w), plain(w), rtol=1e-5, atol=1e-6)
    meta = lambda f: jax.grad(lambda w: jnp.sum(f(w) ** 2))  # noqa: E731
    np.testing.assert_allclose(jax.jit(meta(round_fn))(w), jax.jit(meta(plain))(w), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(round_fn))(w), jax.jit(jax.jacfwd(plain))(w), rtol=1e-4, atol=1e-5)


def test_hierarchical_placements():
    data = jnp.arange(96.0).reshape(4, 8, 3)
    x = jnp.array([1.0, -1.0, 0.5])

    @fed.program(placements={"silos": 4, "clients": 8})
    def two_level(x):
        def silo(p, d):
            return fed.mean(fed.map(lambda a, b: a * b, (fed.broadcast(p), d)))
        return fed.sum(fed.map(silo, (fed.broadcast(x), data)))

    expected = np.sum(np.mean(np.asarray(data) * np.asarray(x), axis=1), axis=0)
    np.testing.assert_allclose(two_level(x), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(two_level)(x), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jacrev(two_level)(x), np.diag(np.sum(np.mean(data, axis=1), axis=0)), rtol=1e-6)
    jaxpr = jax.make_jaxpr(jax.grad(lambda x: two_level(x).sum()))(x)
    assert primitive_names(jaxpr).count(prims.MAP) == 2


# -- shardings -----------------------------------------------------------------------------------------


def test_placed_values_are_sharded_over_the_placement_axis():
    mesh = sk.make_mesh({"clients": 4, "model": 2})

    @fed.program(placements={"clients": 8}, mesh=mesh)
    def spread(x, data):
        return fed.broadcast(x), fed.map(lambda a, d: a * d, (fed.broadcast(x), data))

    placed, mapped = jax.jit(spread)(jnp.ones(3), jnp.ones((8, 3)))
    assert placed.sharding.spec[0] == "clients"
    assert mapped.sharding.spec[0] == "clients"
    np.testing.assert_array_equal(mapped, np.ones((8, 3)))


def test_explicit_mesh_types_carry_the_placement_sharding():
    mesh = sk.make_mesh({"clients": 8}, axis_types=(AxisType.Explicit,))
    data = jax.device_put(jnp.ones((8, 3)), NamedSharding(mesh, P("clients")))
    seen = []

    @fed.program(placements={"clients": 8})
    def round_fn(x, data):
        placed = fed.broadcast(x)
        seen.append(jax.typeof(placed).sharding.spec)
        local = fed.map(lambda a, d: a * d, (placed, data))
        seen.append(jax.typeof(local).sharding.spec)
        return fed.sum(local)

    with jax.set_mesh(mesh):
        out = jax.jit(round_fn)(jnp.arange(3.0), data)
        grad = jax.grad(lambda x: round_fn(x, data).sum())(jnp.arange(3.0))
    np.testing.assert_allclose(out, [0.0, 8.0, 16.0])
    np.testing.assert_allclose(grad, [8.0, 8.0, 8.0])
    assert seen[0] == P("clients", None) and seen[1] == P("clients", None)


# -- bad input ---------------------------------------------------------------------------------------


def test_federated_op_outside_a_program():
    with pytest.raises(fed.FederatedError, match="outside a federated program"):
        fed.broadcast(1.0)
    with pytest.raises(sk.ir.ShardkitError, match="outside a federated program"):
        fed.map(jnp.sin, jnp.ones(3))


def test_unknown_placement_and_no_placement_below():
    @fed.program(placements={"clients": 4})
    def unknown(x):
        return fed.broadcast(x, placement="servers")

    with pytest.raises(fed.FederatedError, match="'servers' does not exist.*\\['clients'\\]"):
        unknown(1.0)

    @fed.program(placements={"clients": 4})
    def nested(x):
        return fed.map(lambda a: fed.broadcast(a), fed.broadcast(x))

    with pytest.raises(fed.FederatedError, match="no placement below"):
        nested(1.0)


def test_client_dimension_must_match_the_placement():
    @fed.program(placements={"clients": 4})
    def average(x):
        return fed.mean(x)

    @fed.program(placements={"clients": 4})
    def mapped(x):
        return fed.map(jnp.sin, x)

    @fed.program(placements={"clients": 4})
    def weighted(x, w):
        return fed.weighted_mean(x, w)

    with pytest.raises(fed.FederatedError, match="4 members.*shape \\(5, 2\\)"):
        average(jnp.ones((5, 2)))
    with pytest.raises(fed.FederatedError, match="4 members"):
        mapped(jnp.ones(3))
    with pytest.raises(fed.FederatedError, match="4 members"):
        weighted(jnp.ones((4, 2)), jnp.ones(3))
    with pytest.raises(fed.FederatedError, match="do not fit"):
        weighted(jnp.ones((4, 2)), jnp.ones((4, 3)))


def test_meshes_that_cannot_hold_the_placement():
    explicit = sk.make_mesh({"data": 8}, axis_types=(AxisType.Explicit,))
    with pytest.raises(fed.FederatedError, match="explicit axes.*no axis 'clients'"):
        fed.program(placements={"clients": 8}, mesh=explicit)
    with pytest.raises(fed.FederatedError, match="multiple of 8"):
        fed.program(placements={"clients": 12}, mesh=sk.make_mesh({"clients": 8}))
    with pytest.raises(fed.FederatedError, match="positive int"):
        fed.program(placements={"clients": 0})

    @fed.program(placements={"clients": 8})
    def spread(x):
        return fed.broadcast(x)

    with jax.set_mesh(explicit), pytest.raises(fed.FederatedError, match="no axis 'clients'"):
        spread(1.0)
    # an Auto mesh without the axis: the placement is left to the compiler
    auto = sk.make_mesh({"data": 8})

    @fed.program(placements={"clients": 8}, mesh=auto)
    def replicated(x):
        return fed.sum(fed.broadcast(x))

    assert float(jax.jit(replicated)(1.0)) == 8.0


# -- the IR ------------------------------------------------------------------------------------------


def _round(mesh):
    @fed.program(placements={"clients": 8}, mesh=mesh)
    def round_fn(w, xs, ys, sizes):
        def client(w, x, y):
            loss = lambda w: jnp.mean((x @ w - y) ** 2)  # noqa: E731
            return w - 0.1 * jax.grad(loss)(w)
        return fed.weighted_mean(fed.map(client, (fed.broadcast(w), xs, ys)), sizes)
    return round_fn


def _round_args():
    rng = np.random.default_rng(3)
    return (jnp.asarray(rng.normal(size=(16, 4)), jnp.float32), jnp.asarray(rng.normal(size=(8, 5, 16)), jnp.float32),
            jnp.asarray(rng.normal(size=(8, 5, 4)), jnp.float32), jnp.arange(1.0, 9.0))


def test_capture_keeps_map_as_an_op_with_a_region_and_round_trips():
    mesh = sk.make_mesh({"clients": 8})
    round_fn, args = _round(mesh), _round_args()
    graph = sk.capture(round_fn, *args)
    maps = [op for op in graph.ops if op.name == prims.MAP]
    assert len(maps) == 1 and len(maps[0].regions) == 1
    assert any(op.name == "dot_general" for op in maps[0].regions[0].ops)
    assert [op.name for op in graph.ops if op.name in FEDERATED] == [prims.BROADCAST, prims.MAP, prims.WEIGHTED_MEAN]
    text = str(graph)
    parsed = sk.ir.parse(text)
    assert str(parsed) == text
    parsed.verify()
    expected = jax.jit(round_fn)(*args)
    for g in (graph, parsed):
        np.testing.assert_allclose(sk.lower(g, mesh=mesh)(*args), expected, rtol=1e-5, atol=1e-6)
    grad_graph = sk.capture(jax.grad(lambda *a: jnp.sum(round_fn(*a) ** 2)), *args)
    grad_text = str(grad_graph)
    assert str(sk.ir.parse(grad_text)) == grad_text
    assert sum(op.name == prims.MAP for op in grad_graph.ops) >= 2


def test_sk_jit_and_explain_show_the_placement_axis_and_its_collectives():
    mesh = sk.make_mesh({"clients": 4, "model": 2})
    round_fn, args = _round(mesh), _round_args()
    jf = sk.jit(round_fn, mesh=mesh)
    np.testing.assert_allclose(jf(*args), jax.jit(round_fn)(*args), rtol=1e-5, atol=1e-6)
    graph = jf.graph(*args)
    placed = [op.results[0] for op in graph.ops if op.name in (prims.BROADCAST, prims.MAP)]
    assert all(v.type.sharding.dims[0].axes == ("clients",) for v in placed)
    report = sk.explain(round_fn, mesh=mesh)(*args)
    text = str(report)
    assert "@clients" in text
    reduce = [c for c in report.collectives if c.kind == "all-reduce"]
    assert reduce and all(c.axes == ("clients",) for c in reduce)
    assert any(prims.WEIGHTED_MEAN in c.where for c in reduce)
    compiled = [c for c in report.compiled_collectives if c.kind == "all-reduce"]
    assert compiled and all(c.axes == ("clients",) for c in compiled)
    assert not report.disagreements(tolerance=0.05)


def test_interpreting_out_agrees_with_mesh_execution():
    mesh = sk.make_mesh({"clients": 8})
    round_fn, args = _round(mesh), _round_args()
    graph = sk.capture(round_fn, *args)
    on_mesh = sk.lower(graph, mesh=mesh)(*args)
    executor = fed.ReferenceExecutor(strict=True)
    np.testing.assert_allclose(executor.run(graph, *args), on_mesh, rtol=1e-5, atol=1e-6)
    parsed = sk.ir.parse(str(graph))
    np.testing.assert_allclose(fed.interpret(parsed, *args), on_mesh, rtol=1e-5, atol=1e-6)
    meta = jax.grad(lambda w, *rest: jnp.sum(round_fn(w, *rest) ** 2))
    np.testing.assert_allclose(fed.interpret(meta, *args, strict=True), jax.jit(meta)(*args), rtol=1e-4, atol=1e-6)


def test_reference_executor_holds_members_and_runs_control_flow():
    @fed.program(placements={"clients": 3})
    def rounds(x, data):
        def body(carry, _):
            local = fed.map(lambda c, d: c + d, (fed.broadcast(carry), data))
            return fed.mean(local), fed.sum(local)
        return jax.lax.scan(body, x, None, length=4)

    x, data = jnp.zeros(2), jnp.arange(6.0).reshape(3, 2)
    graph = sk.capture(rounds, x, data)
    want = jax.jit(rounds)(x, data)
    got = fed.interpret(graph, x, data, strict=True)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    broadcast_op = next(op for op in graph.walk() if op.name == prims.BROADCAST)
    (placed,) = fed.ReferenceExecutor().run_op(broadcast_op, [np.ones(2)])
    assert isinstance(placed, fed.Placed) and len(placed.members) == 3

    @fed.program(placements={"clients": 3})
    def outside(x):
        return fed.sum(fed.broadcast(x) * 2.0)

    with pytest.raises(fed.FederatedError, match="outside a map"):
        fed.interpret(outside, 1.0, strict=True)
    executor = fed.ReferenceExecutor()
    assert float(executor.run(sk.capture(outside, 1.0), 1.0)) == 6.0
    assert executor.stacked_ops == ["mul"]
