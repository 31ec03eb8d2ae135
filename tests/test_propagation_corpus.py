"""The propagation corpus (benchmarks/corpus.py) under sk.jit on 8 simulated devices.

(a) differential: every model gives the same numbers under sk.jit as plain JAX on one device;
(b) communication: the collectives XLA compiled for sk.jit (read from the HLO: kind, group size, bytes)
    agree with explain's prediction (`graph_collectives` of the propagated graph) within 10% in bytes.

Each model is captured, propagated and compiled once per module (the same executable gives the numbers
and the HLO). Then small regression tests, one per fix the corpus led to.
"""
import os
import sys
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P

import shardkit as sk
from shardkit.hlo import collectives_from_hlo
from shardkit.ir import MeshShape, type_text
from shardkit.passes.communication import graph_collectives

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.corpus import BUILDERS  # noqa: E402

TOLERANCE = 0.10


class _Compiled:
    """One corpus model built by sk.jit: its graph, the compiled executable's outputs and HLO."""

    def __init__(self, mesh, name):
        self.case = BUILDERS[name](mesh)
        jf = sk.jit(self.case.fn, mesh=mesh, in_specs=self.case.in_specs)
        self.build = jf.build(*self.case.args)
        compiled = jf.lower(*self.case.args).compile()
        flat = jax.tree_util.tree_leaves((self.case.args, {}))
        flat = [jax.device_put(x, s) for x, s in zip(flat, self.build.lowered.in_shardings)]
        self.outputs = jax.tree_util.tree_leaves(compiled(*flat))
        self.hlo = compiled.as_text()
        self.predicted = graph_collectives(self.build.graph, MeshShape.of(mesh))
        self.compiled = collectives_from_hlo(self.hlo, mesh)


@pytest.fixture(scope="module")
def built(mesh):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _Compiled(mesh, name)
        return cache[name]

    return get


def _by_kind(collectives) -> dict:
    """Bytes per (kind, group size)."""
    out = defaultdict(float)
    for c in collectives:
        out[(c.kind, c.group_size)] += c.bytes
    return dict(out)


# -- (a) differential: the same numbers as plain JAX ---------------------------------------------

@pytest.mark.parametrize("name", list(BUILDERS))
def test_same_numbers_as_plain_jax(built, name):
    model = built(name)
    model.build.graph.verify()
    want = jax.tree_util.tree_leaves(jax.jit(model.case.fn)(*model.case.args))
    assert len(model.outputs) == len(want)
    for i, (a, b) in enumerate(zip(model.outputs, want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=model.case.rtol, atol=model.case.atol,
                                   err_msg=f"{name} output leaf {i}")


# -- (b) communication: prediction against what XLA compiled --------------------------------------

@pytest.mark.parametrize("name", list(BUILDERS))
def test_predicted_collectives_match_compiled(built, name):
    """Per (kind, group size), predicted bytes are within 10% of XLA's, and so is the total.

    Counts are not compared: XLA combines independent all-reduces into one tuple all-reduce and CSEs
    identical reshards, so it compiles fewer (never more bytes) than the model lists op by op.
    """
    model = built(name)
    predicted, compiled = _by_kind(model.predicted), _by_kind(model.compiled)
    detail = (f"\npredicted: {sorted(predicted.items())}\ncompiled:  {sorted(compiled.items())}\n"
              + "\n".join(map(str, model.predicted)))
    for key in set(predicted) | set(compiled):
        p, c = predicted.get(key, 0.0), compiled.get(key, 0.0)
        assert abs(p - c) <= TOLERANCE * max(p, c, 1.0), f"{name}: {key} differs{detail}"
    total_p, total_c = sum(predicted.values()), sum(compiled.values())
    assert total_p == pytest.approx(total_c, rel=TOLERANCE, abs=1.0), detail
    assert len(model.compiled) <= len(model.predicted), detail


def test_explain_reports_the_same_collectives(mesh, built):
    """explain's .collectives are graph_collectives of the propagated graph, .compiled_collectives the HLO's."""
    model = built("mlp-megatron")
    rep = sk.explain(model.case.fn, mesh=mesh, in_specs=model.case.in_specs)(*model.case.args)
    assert [(c.kind, c.axes, c.bytes) for c in rep.collectives] == \
        [(c.kind, c.axes, c.bytes) for c in model.predicted]
    assert _by_kind(rep.compiled_collectives) == _by_kind(model.compiled)
    assert not rep.disagreements()


# -- regression tests for what the corpus found --------------------------------------------------

def test_hlo_reader_handles_index_comments(mesh):
    """Big tuple all-reduces print /*index=5*/ markers inside their type; they must still be read."""
    shapes = ", ".join(["f32[64]{0}"] * 5) + ", /*index=5*/f32[64,64]{1,0}"
    line = (f"  %all-reduce.7 = ({shapes}) all-reduce(%a, %b, %c, %d, %e, %f), channel_id=9, "
            "replica_groups={{0,2,4,6},{1,3,5,7}}, use_global_device_ids=true, to_apply=%add")
    [c] = collectives_from_hlo(line, mesh)
    assert c.kind == "all-reduce" and c.axes == ("data",) and c.group_size == 4
    assert c.bytes == pytest.approx(2 * 3 / 4 * (5 * 64 + 64 * 64) * 4)


def test_elementwise_with_size_one_broadcast_dims_has_a_rule(mesh):
    """jnp emits `sub(x[8,32,64], mean[8,32,1])`: the size-1 dim is broadcast, the others share factors."""
    def fn(x):
        return x - x.mean(-1, keepdims=True)

    jf = sk.jit(fn, mesh=mesh, in_specs=(P("data", None, None),))
    x = jnp.arange(8 * 4 * 16, dtype=jnp.float32).reshape(8, 4, 16)
    graph = jf.graph(x)
    assert all(type_text(v.type).startswith("f32[8@data") for op in graph.ops if op.name == "sub"
               for v in op.results)
    assert not jf.build(x).propagation.unruled
    assert not collectives_from_hlo(jf.lower(x).compile().as_text(), mesh)
    np.testing.assert_allclose(jf(x), fn(x), rtol=1e-6)


def test_scatter_add_of_sharded_updates_all_reduces(mesh):
    """The scatter's reducer region is lowered without sharding constraints, so XLA recognises the
    add and scatters locally then all-reduces the table, as plain jax.jit does (no all-gather)."""
    def fn(idx, upd):
        return jnp.zeros((64, 16)).at[idx].add(upd)

    idx, upd = jnp.arange(256) % 64, jnp.ones((256, 16))
    rep = sk.explain(fn, mesh=mesh, in_specs=(P("data"), P("data", None)))(idx, upd)
    assert [c.kind for c in rep.compiled_collectives] == ["all-reduce"]
    assert rep.predicted_bytes == pytest.approx(rep.compiled_bytes)


def test_gather_from_vocab_sharded_table(mesh):
    """An embedding lookup in a table sharded over its rows stays sharded: XLA gathers locally and
    all-reduces the (smaller) result, and the prediction says so instead of an all-gather of the table."""
    def fn(table, tokens):
        return jnp.take(table, tokens, axis=0)

    table = jax.random.normal(jax.random.key(0), (256, 64))
    tokens = jax.random.randint(jax.random.key(1), (8, 32), 0, 256)
    rep = sk.explain(fn, mesh=mesh, in_specs=(P("model", None), P("data", None)))(table, tokens)
    assert [(c.kind, c.axes) for c in rep.collectives] == [("all-reduce", ("model",))]
    assert [(c.kind, c.axes) for c in rep.compiled_collectives] == [("all-reduce", ("model",))]
    assert rep.predicted_bytes == pytest.approx(rep.compiled_bytes)


def test_max_pool_gradient_stays_sharded(mesh):
    """select_and_scatter_add (the max-pool VJP) has a window rule: the batch dim passes through."""
    def fn(x):
        pool = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return jax.grad(lambda x: pool(x).sum())(x)

    x = jax.random.normal(jax.random.key(0), (16, 4, 4, 2))
    rep = sk.explain(fn, mesh=mesh, in_specs=(P("data"),))(x)
    assert not rep.unruled and not rep.collectives and not rep.compiled_collectives


def test_shared_reshard_is_counted_once(mesh):
    """An FSDP weight used by the forward and the backward matmul is all-gathered once (XLA CSEs it)."""
    def fn(w, x):
        return jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w)))(w)

    w, x = jnp.ones((32, 16)), jnp.ones((64, 32))
    rep = sk.explain(fn, mesh=mesh, in_specs=(P("data", None), P("data", None)))(w, x)
    gathers = [c for c in rep.collectives if c.kind == "all-gather"]
    assert len(gathers) == len([c for c in rep.compiled_collectives if c.kind == "all-gather"]) == 1


def test_conflict_moves_the_cheaper_tensor(mesh):
    """Tokens grouped over `data` meet expert weights over `data` (the MoE dispatch): moving the axis
    inside the token tensor (an all-to-all) is cheaper than taking it off the weights (an all-gather),
    so the experts keep `data` and the result is sharded by expert."""
    def fn(tokens, w):
        return jnp.einsum("egcd,edf->egcf", tokens, w)

    tokens, w = jnp.ones((4, 8, 16, 32)), jnp.ones((4, 32, 64))
    rep = sk.explain(fn, mesh=mesh, in_specs=(P(None, "data"), P("data", None, "model")))(tokens, w)
    [op] = [op for op in rep.graph.ops if op.name == "dot_general"]
    assert type_text(op.results[0].type) == "f32[4@data,8,16,64@model]"
    assert [c.kind for c in rep.compiled_collectives] == ["all-to-all"]
    assert rep.predicted_bytes == pytest.approx(rep.compiled_bytes)


def test_nested_list_specs(mesh):
    """in_specs may mirror a params tree that itself contains lists (a list of layers)."""
    params = {"layers": [jnp.ones((8, 4)), jnp.ones((8, 4))]}
    jf = sk.jit(lambda p: p["layers"][0] + p["layers"][1], mesh=mesh,
                in_specs=({"layers": [P("data"), P(None, "model")]},))
    graph = jf.graph(params)
    assert [type_text(v.type) for v in graph.inputs] == ["f32[8@data,4|p0]", "f32[8,4@model|p0]"]
