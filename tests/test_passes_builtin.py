"""Details of the built-in passes that the golden cases do not show."""
from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import shardkit as sk
from shardkit import passes
from shardkit.passes import Pipeline


def run(text: str, pipeline: str, **options):
    return Pipeline.parse(pipeline).run(sk.ir.parse(text), verify=True, reproducers=False, **options)


def names(graph):
    return [op.name for op in graph.ops]


def test_dce_keeps_an_op_whose_region_has_an_effect():
    out = run("""graph @f(%0: f32[4]) {
  %1 = closed_call(%0) {call_jaxpr=#region(0)} : f32[4] [
    (%2: f32[4]) {
      debug_print(%2) {fmt="x {}", ordered=false, partitioned=false, in_tree=#tree(((*,), dict{})), static_args=(), np_printoptions=(), has_placeholders=true, logging_record=None} : ()
      return %2
    }
  ]
  %3 = closed_call(%0) {call_jaxpr=#region(0)} : f32[4] [
    (%4: f32[4]) {
      %5 = sin(%4) {accuracy=None} : f32[4]
      return %5
    }
  ]
  return %0
}
""", "dce")
    assert names(out) == ["closed_call"]
    assert out.ops[0].regions[0].ops[0].name == "debug_print"


def test_dce_regions_option():
    text = """graph @f(%0: f32[4], %1: f32[8,4]) {
  %2, %3 = scan(%0, %1) {reverse=false, length=8, jaxpr=#region(0), num_consts=0, num_carry=1, unroll=1} : (f32[4], f32[8,4]) [
    (%4: f32[4], %5: f32[4]) {
      %6 = add(%4, %5) : f32[4]
      %7 = tanh(%6) {accuracy=None} : f32[4]
      return %6, %6
    }
  ]
  return %2, %3
}
"""
    assert run(text, "dce{regions=false}").ops[0].regions[0].num_ops() == 2
    assert run(text, "dce").ops[0].regions[0].num_ops() == 1


SHARDED = """graph @f(%0: f32[8@data,4]) mesh(data=4, model=2) {
  %1 = sharding_constraint(%0) : f32[8@data,4|p0]
  %2 = sharding_constraint(%0) : f32[8,4@model|p0]
  %3 = sharding_constraint(%0) : f32[8@data,4|p0]
  %4 = constant() {value=#array(f32[], [1.0])} : f32[]
  %5 = mul(%0, %4) : f32[8,4@model]
  %6 = mul(%0, %4) : f32[8@data,4]
  return %1, %2, %3, %5, %6
}
"""


def test_cse_never_merges_values_with_different_shardings():
    out = run(SHARDED, "cse")
    assert names(out).count("sharding_constraint") == 2
    assert out.outputs[0] is out.outputs[2] and out.outputs[0] is not out.outputs[1]


def test_canonicalize_does_not_drop_a_sharding():
    out = run(SHARDED, "canonicalize")
    # x*1 typed f32[8,4@model] would lose its sharding if replaced by x (sharded on data): kept
    assert names(out).count("mul") == 1
    assert out.outputs[4] is out.inputs[0]


def test_cse_does_not_merge_regions_holding_random_ops():
    text = """graph @f(%0: key<fry>[]) {
  %1 = closed_call(%0) {call_jaxpr=#region(0)} : u32[4] [
    (%2: key<fry>[]) {
      %3 = random_bits(%2) {bit_width=32, shape=(4,)} : u32[4]
      return %3
    }
  ]
  %4 = closed_call(%0) {call_jaxpr=#region(0)} : u32[4] [
    (%5: key<fry>[]) {
      %6 = random_bits(%5) {bit_width=32, shape=(4,)} : u32[4]
      return %6
    }
  ]
  return %1, %4
}
"""
    assert names(run(text, "cse")) == ["closed_call", "closed_call"]


def test_canonicalize_options():
    text = """graph @f(%0: f32[32]) {
  %1 = iota() {dtype=f32, shape=(32,), dimension=0, sharding=None} : f32[32]
  %2 = constant() {value=#array(f32[], [1.0])} : f32[]
  %3 = mul(%1, %2) : f32[32]
  %4 = cos(%2) {accuracy=None} : f32[]
  %5 = add(%0, %3) : f32[32]
  return %5
}
"""
    assert names(run(text, "canonicalize")) == ["iota", "add"]  # 32 elements > fold-limit=16
    assert names(run(text, "canonicalize{fold-limit=64}")) == ["constant", "add"]
    # the rewritten mul goes (it is pure and unused), the dead cos stays without erase_dead
    assert names(run(text, "canonicalize{erase-dead=false,fold-limit=0}")) == ["iota", "constant", "cos", "add"]
    ctx = passes.PassContext()
    run(text, "canonicalize{trace=true}", ctx=ctx)
    assert [d.message for d in ctx.diagnostics] == ["fired mul_by_one on mul"]


def test_constant_folding_matches_jax():
    def fn(x):
        c = jnp.arange(6.0).reshape(2, 3)
        return x + jnp.sin(c) * 2.0 - jnp.exp(c).sum(axis=0)

    x = jnp.ones((2, 3))
    graph = sk.capture(fn, x)
    out = Pipeline.parse("canonicalize").run(graph, verify=True)
    assert not any(op.name in ("sin", "exp", "reduce_sum") for op in out.ops)
    np.testing.assert_allclose(sk.lower(out)(x), fn(x), rtol=1e-6)


def test_inline_keeps_call_shardings(mesh):
    x = jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh, P("data", None)))
    inner = jax.jit(lambda a: jnp.sin(a) * 2.0, in_shardings=NamedSharding(mesh, P(None, "model")),
                    out_shardings=NamedSharding(mesh, P("data", "model")))

    def fn(a):
        return inner(a) + 1.0

    graph = sk.capture(fn, x)
    out = Pipeline.parse("inline").run(graph, mesh=mesh, verify=True)
    assert not any(op.name in ("jit", "pjit") for op in out.walk())
    constraints = [op for op in out.ops if op.name == "sharding_constraint"]
    specs = [op.result.type.sharding.to_partition_spec() for op in constraints]
    assert specs == [P(None, "model"), P("data", "model")]
    np.testing.assert_allclose(sk.lower(out, mesh=mesh)(x), jax.jit(fn)(x), rtol=1e-6)


def test_inline_clones_a_region_used_twice():
    g = sk.ir.parse("""graph @f(%0: f32[4]) {
  %1 = closed_call(%0) {call_jaxpr=#region(0)} : f32[4] [
    (%2: f32[4]) {
      %3 = sin(%2) {accuracy=None} : f32[4]
      return %3
    }
  ]
  return %1
}
""")
    call = g.ops[0]
    second = call.replace(operands=(call.result,), results=(sk.ir.Value(call.result.type),))
    shared = g.replace(ops=(call, second), outputs=(second.result,))  # both ops hold the same region
    out = passes.inline_calls(shared)
    out.verify()
    assert names(out) == ["sin", "sin"] and out.ops[0].result is not out.ops[1].result


def test_clone_graph_makes_fresh_values():
    g = sk.ir.parse("""graph @f(%0: f32[4]) {
  %1 = sin(%0) {accuracy=None} : f32[4]
  return %1
}
""")
    copy = passes.clone_graph(g)
    assert str(copy) == str(g)
    assert copy.inputs[0] is not g.inputs[0] and copy.ops[0].result is not g.ops[0].result


def test_print_pass_writes_to_stdout_without_a_context(capsys):
    g = sk.ir.parse("graph @f(%0: f32[4]) {\n  return %0\n}\n")
    assert passes.PrintIR(label="here").run(g, None) is g
    assert capsys.readouterr().out == "## IR at print (here)\ngraph @f(%0: f32[4]) {\n  return %0\n}\n"
    out = io.StringIO()
    Pipeline.parse("print").run(g, out=out)
    assert out.getvalue().startswith("## IR at print\ngraph @f")


def test_effect_queries():
    g = sk.ir.parse(SHARDED)
    constraint, mul = g.ops[0], g.ops[4]
    assert passes.is_pure(mul) and not passes.must_keep(mul)
    assert not passes.is_random(constraint) and not passes.is_collective(constraint)


def test_inline_refuses_ops_that_are_not_calls():
    with pytest.raises(passes.PassOptionError, match="scan, which cannot be inlined"):
        Pipeline.parse("inline{ops=[jit,scan]}")
    assert Pipeline.parse("inline{ops=[remat2]}")[0].ops == ("remat2",)


def test_inline_remat_keeps_numbers():
    fn = jax.checkpoint(lambda x: jnp.sin(jnp.sin(x)) * x)
    x = jnp.linspace(0.0, 1.0, 8)
    graph = sk.capture(jax.grad(lambda x: fn(x).sum()), x)
    out = Pipeline.parse("inline{ops=[remat2,jit,pjit]},canonicalize,cse,dce").run(graph, verify=True)
    assert not any(op.name == "remat2" for op in out.walk())
    np.testing.assert_allclose(sk.lower(out)(x), jax.grad(lambda x: fn(x).sum())(x), rtol=1e-6)
