"""shardkit.functional in the IR: capture, print/parse, verify, and quadrature sharded over a mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import shardkit as sk
from shardkit import functional as fn
from shardkit.functional import Grid


def energy(theta, nodes, weights):
    """A functional of a parametrised function, integrated on a grid passed as arrays."""
    h = fn.function(lambda p, x: p[0] * jnp.sin(p[1] * x), [()], params=theta)
    return fn.integrate(fn.compose(jnp.exp, h) + fn.nabla(h) ** 2, Grid(nodes, weights))


def reference(theta, nodes, weights):
    h = theta[0] * jnp.sin(theta[1] * nodes)
    dh = theta[0] * theta[1] * jnp.cos(theta[1] * nodes)
    return jnp.sum(weights * (jnp.exp(h) + dh ** 2))


THETA = jnp.array([1.0, 2.0])
GRID = Grid.uniform(-1.0, 1.0, 64)


def test_make_jaxpr_shows_functional_primitives():
    f = fn.function(jnp.sin, [()])
    jaxpr = jax.make_jaxpr(lambda f: fn.integrate(fn.compose(jnp.exp, fn.nabla(f)), GRID))(f)
    names = [str(e.primitive) for e in jaxpr.jaxpr.eqns]
    assert names == ["functional.nabla", "functional.compose", "functional.integral"]


def test_capture_print_parse_verify_lower():
    g = sk.capture(energy, THETA, GRID.nodes, GRID.weights)
    assert [op.name for op in g.ops] == ["functional.integrate"]
    op = g.ops[0]
    assert len(op.regions) == 1 and "nabla" in op.params["expr"] and "exp" in op.params["expr"]
    g.verify()
    text = str(g)
    assert "functional.integrate" in text
    assert str(sk.ir.parse(text)) == text
    lowered = sk.lower(g)
    np.testing.assert_allclose(lowered(THETA, GRID.nodes, GRID.weights),
                               reference(THETA, GRID.nodes, GRID.weights), rtol=1e-5)


def test_evaluation_is_an_apply_op():
    f = fn.function(lambda x: jnp.tanh(x) ** 2, [()])
    g = sk.capture(lambda xs: jax.vmap(fn.nabla(f))(xs), jnp.linspace(-1, 1, 8))
    assert [op.name for op in g.ops] == ["functional.apply"]
    assert g.ops[0].params["batch_ndim"] == 1
    g.verify()
    xs = jnp.linspace(-1, 1, 8)
    np.testing.assert_allclose(sk.lower(g)(xs), jax.vmap(jax.grad(lambda x: jnp.tanh(x) ** 2))(xs),
                               rtol=1e-5, atol=1e-6)


def test_sharded_quadrature_through_propagation(mesh):
    specs = (P(), P("data"), P("data"))
    jf = sk.jit(energy, mesh=mesh, in_specs=specs)
    np.testing.assert_allclose(jf(THETA, GRID.nodes, GRID.weights),
                               reference(THETA, GRID.nodes, GRID.weights), rtol=1e-5)
    graph = jf.graph(THETA, GRID.nodes, GRID.weights)
    op = next(o for o in graph.ops if o.name == "functional.integrate")
    assert op.operands[-2].type.sharding.dims[0].axes == ("data",)
    report = sk.explain(energy, mesh=mesh, in_specs=specs)(THETA, GRID.nodes, GRID.weights)
    predicted = [(c.kind, c.axes) for c in report.collectives]
    compiled = [(c.kind, c.axes) for c in report.compiled_collectives]
    assert predicted == [("all-reduce", ("data",))]
    assert compiled == predicted


def test_sharded_gradient_matches_plain_jax(mesh):
    specs = (P(), P("data"), P("data"))
    jg = sk.jit(jax.grad(energy), mesh=mesh, in_specs=specs)
    np.testing.assert_allclose(jg(THETA, GRID.nodes, GRID.weights),
                               jax.grad(reference)(THETA, GRID.nodes, GRID.weights), rtol=1e-4)


def test_grid_shard_integrates_on_each_device(mesh):
    f = fn.function(lambda x: jnp.exp(-x ** 2), [()])
    grid = Grid.uniform(-4.0, 4.0, 1001)            # not a multiple of 4: padded with zero weights
    sharded = grid.shard(mesh, "data")
    assert sharded.size == 1004
    assert isinstance(sharded.nodes.sharding, NamedSharding)
    assert sharded.nodes.sharding.spec == P("data")
    np.testing.assert_allclose(fn.integrate(f, sharded), fn.integrate(f, grid), rtol=1e-6)
    np.testing.assert_allclose(fn.integrate(f, sharded), np.sqrt(np.pi), rtol=1e-4)
    dF = jax.grad(lambda f: fn.integrate(f ** 2, sharded))(f)
    np.testing.assert_allclose(dF(0.5), 2 * np.exp(-0.25), rtol=1e-6)
    hlo = jax.jit(lambda n, w: fn.integrate(f, Grid(n, w))).lower(
        sharded.nodes, sharded.weights).compile().as_text()
    assert "all-reduce" in hlo and "f32[251]" in hlo   # each device evaluates its 1004 / 4 points


def test_capture_of_a_function_argument_is_a_clear_error():
    f = fn.function(jnp.sin, [()])
    with pytest.raises(sk.ir.CaptureError, match="non-array values"):
        sk.capture(lambda f: fn.integrate(f, GRID), f)
