"""shardkit's SPMD partitioner (lowering="spmd"): same numbers as plain JAX, explicit collectives in the
IR, exact communication counts, resharding plans, halos, control flow, gradients and clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P

import shardkit as sk
from shardkit.hlo import collectives_from_hlo
from shardkit.ir import MeshShape, ShardingError
from shardkit.passes import PartitionError, is_partitioned, partition_graph, spmd_collectives
from shardkit.passes.partition_layout import Layout, apply_step, plan

MESH = MeshShape((("data", 4), ("model", 2)))


def _rand(*shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _ops(graph):
    return [op.name for op in graph.walk()]


def run_spmd(jf, args):
    """Compile `jf` (lowering='spmd') once: its flat outputs and the collectives XLA compiled."""
    build = jf.build(*args)
    compiled = jf.lower(*args).compile()
    flat = jax.tree_util.tree_leaves((args, {}))
    if build.lowered.in_shardings is not None:
        flat = [jax.device_put(x, s) for x, s in zip(flat, build.lowered.in_shardings)]
    return list(compiled(*flat)), collectives_from_hlo(compiled.as_text(), jf.mesh)


def assert_exact_counts(graph, compiled):
    """The program's collectives move exactly the bytes XLA compiled, kind by kind."""
    ours = spmd_collectives(graph)
    for kind in {c.kind for c in ours} | {c.kind for c in compiled}:
        assert sum(c.bytes for c in ours if c.kind == kind) == pytest.approx(
            sum(c.bytes for c in compiled if c.kind == kind)), kind


def _check(fn, mesh, specs, *args, out_specs=None, rtol=1e-5, atol=1e-5):
    """Run fn through lowering='spmd', compare with plain JAX, and check the program's collectives
    are exactly those XLA compiled (bytes per kind)."""
    jf = sk.jit(fn, mesh=mesh, in_specs=specs, out_specs=out_specs, lowering="spmd")
    got, compiled = run_spmd(jf, args)
    want = jax.tree_util.tree_leaves(jax.jit(fn)(*args))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
    graph = jf.graph(*args)
    assert is_partitioned(graph)
    graph.verify()
    assert_exact_counts(graph, compiled)
    return jf, graph


# -- resharding plans -------------------------------------------------------------------------------

PLANS = [
    # (src, dst, kinds)
    (Layout(((), ())), Layout((("data",), ())), ["slice"]),
    (Layout((("data",), ())), Layout(((), ())), ["all_gather"]),
    (Layout((("data",), ())), Layout(((), ("data",))), ["all_to_all"]),
    (Layout(((), ()), ("model",)), Layout(((), ("model",))), ["psum_scatter"]),
    (Layout(((), ()), ("model",)), Layout(((), ())), ["all_reduce"]),
    (Layout((("data",), ()), ("model",)), Layout((("data", "model"), ())), ["psum_scatter"]),
    (Layout((("data",), ()), ("model",)), Layout(((), ("data",))), ["all_to_all", "all_reduce"]),
    (Layout((("model", "data"), ())), Layout((("data",), ("model",))), ["all_gather", "slice", "slice"]),
    (Layout(((), ()), ("data", "model")), Layout((("data",), ())), ["psum_scatter", "all_reduce"]),
]


@pytest.mark.parametrize("src,dst,kinds", PLANS, ids=[f"{s}->{d}" for s, d, _ in PLANS])
def test_plans(src, dst, kinds):
    steps = plan((16, 8), 4, src, dst, MESH)
    assert [s.kind for s in steps] == kinds
    layout = src
    for step in steps:
        layout = apply_step(layout, step)
    assert layout == dst


def test_plan_bytes_follow_the_ring_model():
    (step,) = plan((16, 8), 4, Layout(((), ()), ("model",)), Layout(((), ("model",))), MESH)
    assert step.bytes == 16 * 8 * 4 / 2  # reduce-scatter: (n-1)/n of the operand
    (step,) = plan((16, 8), 4, Layout(((), ()), ("model",)), Layout(((), ())), MESH)
    assert step.bytes == 16 * 8 * 4  # all-reduce: 2(n-1)/n of the operand


def test_plan_cannot_create_pending_sums():
    with pytest.raises(PartitionError):
        plan((16, 8), 4, Layout(((), ())), Layout(((), ()), ("data",)), MESH)


# -- matmul: the four combinations of lhs/rhs sharded on free or contracting dims -------------------

MATMULS = [
    ("free-free", (P("data", None), P(None, "model")), set()),
    ("contract-contract", (P(None, "model"), P("model", None)), {"spmd.psum"}),
    ("free-contract", (P("data", None), P("model", None)), None),
    ("contract-free", (P(None, "model"), P(None, "model")), None),
]


@pytest.mark.parametrize("name,specs,expected", MATMULS, ids=[m[0] for m in MATMULS])
def test_matmul(mesh, name, specs, expected):
    x, w = _rand(16, 8), _rand(8, 4, seed=1)
    _, graph = _check(lambda x, w: x @ w, mesh, specs, x, w)
    collectives = {n for n in _ops(graph) if n.startswith("spmd.") and n != "spmd.shard_slice"}
    if expected is not None:
        assert collectives == expected


def test_contraction_into_sharded_consumer_is_a_reduce_scatter(mesh):
    def fn(x, w):
        return sk.hint(x @ w, P("model", None))

    x, w = _rand(16, 8), _rand(8, 4, seed=1)
    _, graph = _check(fn, mesh, (P(None, "model"), P("model", None)), x, w)
    names = _ops(graph)
    assert "spmd.psum_scatter" in names and "spmd.psum" not in names


def test_sequence_parallel_block_halves_xla_bytes(mesh):
    def block(x, w1, w2):
        h = jax.nn.relu(jnp.einsum("bsd,df->bsf", x, w1))
        return sk.hint(jnp.einsum("bsf,fd->bsd", h, w2), P("data", "model", None))

    args = (_rand(8, 16, 32), _rand(32, 64, seed=1) / 8, _rand(64, 32, seed=2) / 8)
    specs = (P("data", "model", None), P(None, "model"), P("model", None))
    _, graph = _check(block, mesh, specs, *args)
    assert "spmd.psum_scatter" in _ops(graph)
    spmd = sk.explain(block, mesh=mesh, in_specs=specs, lowering="spmd")(*args)
    xla = sk.explain(block, mesh=mesh, in_specs=specs)(*args)
    assert spmd.compiled_bytes < xla.compiled_bytes
    assert [c.kind for c in spmd.collectives if c.kind != "all-gather"] == ["reduce-scatter"]


def test_pending_sums_ride_through_linear_ops(mesh):
    def fn(x, w, v):
        y = x @ w + x @ v      # two partial sums added before one reduction
        return y.sum(0)        # ... which waits until after the sum over rows, too

    args = (_rand(16, 8), _rand(8, 4, seed=1), _rand(8, 4, seed=2))
    _, graph = _check(fn, mesh, (P(None, "model"), P("model", None), P("model", None)), *args)
    names = _ops(graph)
    assert names.count("spmd.psum") == 1 and names.index("reduce_sum") < names.index("spmd.psum")
    (psum,) = [op for op in graph.walk() if op.name == "spmd.psum"]
    assert psum.operands[0].type.shape == (4,)


# -- reductions, reshapes, gathers -------------------------------------------------------------------

REDUCTIONS = [
    ("sum-sharded", lambda x: x.sum(0), "spmd.psum"),
    ("sum-both", lambda x: x.sum(), "spmd.psum"),
    ("max-sharded", lambda x: x.max(0), "spmd.pmax"),
    ("min-sharded", lambda x: x.min(1), "spmd.pmin"),
    ("mean", lambda x: x.mean(1), None),
    ("argmax-sharded", lambda x: jnp.argmax(x, 0), "spmd.all_gather"),
    ("cumsum-sharded", lambda x: jnp.cumsum(x, 0), "spmd.all_gather"),
]


@pytest.mark.parametrize("name,fn,op", REDUCTIONS, ids=[r[0] for r in REDUCTIONS])
def test_reductions(mesh, name, fn, op):
    _, graph = _check(fn, mesh, (P("data", "model"),), _rand(16, 8))
    if op is not None:
        assert op in _ops(graph)


RESHAPES = [
    ("merge-major-sharded", lambda x: x.reshape(128), P("data", None)),
    ("split-sharded", lambda x: x.reshape(4, 4, 8), P("data", "model")),
    ("merge-minor-sharded", lambda x: x.reshape(128), P(None, "model")),
    ("transpose-reshape", lambda x: x.T.reshape(2, 4, 16), P("data", "model")),
    ("both-sharded-merge", lambda x: x.reshape(16 * 8) * 2, P("data", "model")),
]


@pytest.mark.parametrize("name,fn,spec", RESHAPES, ids=[r[0] for r in RESHAPES])
def test_reshapes(mesh, name, fn, spec):
    _check(fn, mesh, (spec,), _rand(16, 8))


def test_reshape_keeps_a_major_sharded_dim_local(mesh):
    _, graph = _check(lambda x: x.reshape(4, 4, 8) + 1, mesh, (P("data", "model"),), _rand(16, 8))
    assert not [n for n in _ops(graph) if n.startswith("spmd.") and n != "spmd.shard_slice"]


def test_embedding_gather_runs_locally(mesh):
    def fn(table, ids):
        return jnp.take(table, ids, axis=0)

    table, ids = _rand(32, 16), jax.random.randint(jax.random.key(3), (8, 4), 0, 32)
    _, graph = _check(fn, mesh, (P(None, "model"), P("data", None)), table, ids)
    assert "gather" in _ops(graph)
    assert not [n for n in _ops(graph) if n in ("spmd.all_gather", "spmd.psum")]


MISC = [
    ("elementwise-mixed", lambda x, y: jnp.exp(x) * y + 1.0, (P("data", "model"), P("model", "data"))),
    ("broadcast", lambda x, y: x[:, None, :] + y[None, :, :], (P("data", None), P(None, "model"))),
    ("transpose", lambda x, y: x.T @ y, (P("data", "model"), P("model", None))),
    ("concat", lambda x, y: jnp.concatenate([x, y], 0), (P("data", "model"), P(None, "model"))),
    ("slice-sharded-dim", lambda x, y: x[2:10] * y[:8], (P("data", None), P("data", None))),
    ("pad", lambda x, y: jnp.pad(x, ((1, 1), (0, 0))) + 0 * y.sum(), (P("data", "model"), P())),
    ("softmax", lambda x, y: jax.nn.softmax(x @ y.T, -1), (P("data", None), P("model", None))),
    ("iota-sharded", lambda x, y: x + jnp.arange(8.0)[None, :] + y.sum(), (P(None, "model"), P())),
    ("where", lambda x, y: jnp.where(x > 0, x, y), (P("data", "model"), P("data", None))),
    ("sort", lambda x, y: jnp.sort(x, 0) + y, (P("data", "model"), P())),
    ("dynamic-slice", lambda x, y: lax.dynamic_slice_in_dim(x, 3, 4, 1) + y[:, :4],
     (P("data", "model"), P("data", None))),
    ("dynamic-update-slice", lambda x, y: lax.dynamic_update_slice(x, y[:, :2], (0, 3)),
     (P("data", "model"), P("data", None))),
    ("scatter-add", lambda x, y: x.at[jnp.array([1, 5, 9])].add(y[:3]), (P(None, "model"), P("data", None))),
    ("top-k", lambda x, y: lax.top_k(x, 3)[0] + y[:, :3], (P("data", "model"), P("data", None))),
    ("strided-slice", lambda x, y: x[::2] + y[1::2], (P("data", "model"), P("data", None))),
    ("roll", lambda x, y: jnp.roll(x, 1, 0) + y, (P("data", "model"), P("data", None))),
    ("one-hot", lambda x, y: jax.nn.one_hot(jnp.argmax(x, 1), 8) * y, (P("data", "model"), P("data", None))),
    ("batched-matmul", lambda x, y: jnp.einsum("bij,bjk->bik", x.reshape(4, 4, 8), y.reshape(4, 8, 4)),
     (P("data", "model"), P(None, "data"))),
    ("integers", lambda x, y: (x > 0).astype(jnp.int32).sum(0) + jnp.argmin(y, 0), (P("data", "model"), P())),
    ("variance", lambda x, y: jnp.var(x @ y.T, axis=0), (P("data", "model"), P("data", "model"))),
    ("remat", lambda x, y: jax.checkpoint(lambda a: jnp.sin(a) @ y.T)(x).sum(), (P("data", "model"), P(None, "model"))),
]


@pytest.mark.parametrize("name,fn,specs", MISC, ids=[m[0] for m in MISC])
def test_misc_ops(mesh, name, fn, specs):
    _check(fn, mesh, specs, _rand(16, 8), _rand(16, 8, seed=1))


def test_bf16_program(mesh):
    # XLA's CPU pipeline may move a convert across a collective (an f32 all-gather instead of a bf16
    # one), so only the numbers are compared here, not the bytes
    def fn(x, y):
        return (x.astype(jnp.bfloat16) @ y.T.astype(jnp.bfloat16)).astype(jnp.float32)

    x, y = _rand(16, 8), _rand(16, 8, seed=1)
    jf = sk.jit(fn, mesh=mesh, in_specs=(P(None, "model"), P(None, "model")), lowering="spmd")
    np.testing.assert_allclose(jf(x, y), fn(x, y), rtol=2e-2, atol=2e-2)
    assert any(v.type.dtype == jnp.bfloat16 for op in jf.graph(x, y).walk() if op.name.startswith("spmd.")
               for v in op.operands)


# -- convolution with halo exchange ------------------------------------------------------------------

def test_conv_spatial_sharding_exchanges_halos(mesh):
    def fn(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x, w = _rand(2, 16, 8, 3), _rand(3, 3, 3, 4, seed=1)
    _, graph = _check(fn, mesh, (P(None, "data", "model", None), P()), x, w, out_specs=P(None, "data", "model"))
    names = _ops(graph)
    assert names.count("spmd.ppermute") == 4  # one slab before and one after, per sharded spatial dim
    assert "spmd.all_gather" not in names


def test_conv_with_wide_kernel_and_dilation(mesh):
    def fn(x, w):
        return lax.conv_general_dilated(x, w, (1,), [(2, 2)], rhs_dilation=(2,),
                                        dimension_numbers=("NWC", "WIO", "NWC"))

    x, w = _rand(2, 32, 4), _rand(3, 4, 4, seed=1)
    _, graph = _check(fn, mesh, (P(None, "data", None), P()), x, w, out_specs=P(None, "data"))
    assert "spmd.ppermute" in _ops(graph)


# -- control flow ------------------------------------------------------------------------------------

def test_scan_partitions_its_body(mesh):
    def fn(ws, x):
        def layer(h, w):
            return jnp.tanh(h @ w), h.sum()
        return lax.scan(layer, x, ws)

    _, graph = _check(fn, mesh, (P(None, None, "model"), P("data", None)), _rand(3, 8, 8) / 3, _rand(16, 8))
    (scan,) = [op for op in graph.walk() if op.name == "scan"]
    assert scan.operands[-1].type.shape == (3, 8, 4)  # the stacked weights stay sharded inside


def test_loop_carrying_a_contraction(mesh):
    def fn(x, y):
        return lax.fori_loop(0, 3, lambda i, c: c + (x @ y.T).sum(0), jnp.zeros(16))

    _check(fn, mesh, (P(None, "model"), P(None, "model")), _rand(16, 8), _rand(16, 8, seed=1))


def test_grad_of_a_scan_inside_the_program(mesh):
    def fn(x, w):
        loss = lambda w: lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=3)[0].sum()  # noqa: E731
        return jax.grad(loss)(w)

    _check(fn, mesh, (P("data", None), P(None, "model")), _rand(16, 8), _rand(8, 8, seed=1) / 3, rtol=1e-4)


def test_while_and_cond(mesh):
    def fn(x, n):
        def body(carry):
            i, y = carry
            y = lax.cond(i % 2 == 0, lambda y: y * 2.0, lambda y: y - 1.0, y)
            return i + 1, y
        return lax.while_loop(lambda c: c[0] < n, body, (0, x))[1]

    _check(fn, mesh, (P("data", "model"), None), _rand(16, 8), jnp.int32(5))


# -- gradients ---------------------------------------------------------------------------------------

def test_grad_through_spmd_lowering(mesh):
    def loss(params, x):
        h = jax.nn.relu(x @ params["w1"])
        return jnp.mean((h @ params["w2"]) ** 2)

    params = {"w1": _rand(8, 16, seed=1), "w2": _rand(16, 4, seed=2)}
    x = _rand(16, 8)
    jf = sk.jit(loss, mesh=mesh, in_specs=({"w1": P(None, "model"), "w2": P("model", None)}, P("data", None)),
                lowering="spmd")
    got = jax.grad(jf)(params, x)
    want = jax.grad(loss)(params, x)
    for key in params:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_grad_through_halo_exchange(mesh):
    def loss(w, x):
        y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.tanh(y) ** 2)

    w, x = _rand(3, 3, 3, 4, seed=1), _rand(2, 16, 8, 3)
    jf = sk.jit(loss, mesh=mesh, in_specs=(P(), P(None, "data", None, None)), lowering="spmd")
    assert "spmd.ppermute" in _ops(jf.graph(w, x))
    np.testing.assert_allclose(jax.grad(jf, argnums=(0, 1))(w, x)[1], jax.grad(loss, argnums=(0, 1))(w, x)[1],
                               rtol=1e-4, atol=1e-5)


# -- explain, warnings, errors -----------------------------------------------------------------------

def test_explain_counts_the_program_exactly(mesh):
    def fn(x, w):
        return jnp.tanh(x @ w).sum(0)

    rep = sk.explain(fn, mesh=mesh, in_specs=(P("data", "model"), P("model", None)), lowering="spmd")(
        _rand(16, 8), _rand(8, 4, seed=1))
    assert rep.lowering == "spmd"
    assert rep.collectives and rep.disagreements(tolerance=0.0) == []
    assert "shardkit's program" in str(rep)


def _user_primitive():
    """A primitive shardkit has never heard of (no sharding rule): x -> x * 2 + 1."""
    from jax.extend.core import Primitive
    from jax.interpreters import mlir

    prim = Primitive("user_affine")
    prim.def_impl(lambda x: x * 2 + 1)
    prim.def_abstract_eval(lambda x: x)
    mlir.register_lowering(prim, mlir.lower_fun(lambda x: x * 2 + 1, multiple_results=False))
    return prim


USER_AFFINE = _user_primitive()


def test_unruled_op_is_gathered_with_a_warning(mesh):
    def fn(x):
        return USER_AFFINE.bind(jnp.sin(x)) * x

    jf, _ = _check(fn, mesh, (P("data", "model"),), _rand(16, 8))
    rep = sk.explain(fn, mesh=mesh, in_specs=(P("data", "model"),), lowering="spmd")(_rand(16, 8))
    assert any("user_affine" in w and "gathered" in w for w in rep.warnings)


def test_split_keeps_the_other_dimensions_sharded(mesh):
    def fn(x):
        a, b = jnp.split(x, 2, axis=1)
        return a * b

    _check(fn, mesh, (P("data", "model"),), _rand(16, 8))
    graph = sk.jit(fn, mesh=mesh, in_specs=(P("data", "model"),)).graph(_rand(16, 8))
    split = next(op for op in graph.walk() if op.name == "split")
    assert all(r.type.sharding.dims[0].axes == ("data",) for r in split.results)


UNEVEN = """graph @f(%0: f32[10,8]) mesh(data=4, model=2) {
  %1 = hint(%0) : f32[10@data,8|p0]
  %2 = mul(%1, %1) : f32[10@data,8]
  return %2
}
"""


def test_uneven_dimension_names_the_op_and_dimension():
    graph = sk.ir.parse(UNEVEN)
    with pytest.raises(PartitionError, match=r"hint#0: dimension 0 of size 10 does not divide over data") as e:
        partition_graph(graph, MESH)
    assert isinstance(e.value, ShardingError) and "does not pad" in str(e.value)


def test_random_op_runs_whole_with_a_warning(mesh):
    def fn(key, x):
        return x + jax.random.normal(key, x.shape)

    key, x = jax.random.key(3), _rand(16, 8)
    jf, _ = _check(fn, mesh, (None, P("data", "model")), key, x)
    warnings = [d.message for d in jf.build(key, x).ctx.diagnostics if d.severity == "warning"]
    assert any("random_bits" in w and "random numbers" in w for w in warnings)


def test_nested_shard_map_is_refused(mesh):
    def fn(x):
        return jax.shard_map(lambda a: a * 2, mesh=mesh, in_specs=P("data"), out_specs=P("data"))(x)

    with pytest.raises(ShardingError, match="already contains a shard_map"):
        sk.jit(fn, mesh=mesh, in_specs=(P("data", None),), lowering="spmd")(_rand(16, 8))


def test_unknown_lowering_is_rejected(mesh):
    with pytest.raises(ShardingError, match="lowering="):
        sk.jit(lambda x: x, mesh=mesh, lowering="gspmd")


def test_partition_pass_in_a_pipeline(mesh):
    def fn(x, w):
        return x @ w

    x, w = _rand(16, 8), _rand(8, 4, seed=1)
    jf = sk.jit(fn, mesh=mesh, in_specs=(P(None, "model"), P("model", None)), pipeline="default,partition")
    graph = jf.graph(x, w)
    assert is_partitioned(graph) and "spmd.psum" in _ops(graph)
    text = str(graph)
    assert str(sk.ir.parse(text)) == text
    np.testing.assert_allclose(jf(x, w), x @ w, rtol=1e-5, atol=1e-5)
