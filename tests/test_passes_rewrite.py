"""The pattern-rewrite driver: greedy worklist, composition, traces, bounds, regions and effects."""
from __future__ import annotations

import pytest

import shardkit as sk
from shardkit import passes
from shardkit.ir import Op, Params, Value
from shardkit.passes import Replace, RewriteError, apply_patterns, pattern


def parse(text: str):
    return sk.ir.parse(text)


@pattern("neg")
def double_negation(op, rw):
    """neg(neg(x)) -> x."""
    inner = rw.producer(op.operands[0])
    if inner is not None and inner.name == "neg":
        return [inner.operands[0]]
    return None


@pattern("exp")
def exp_to_sin(op, rw):
    """A deliberately arbitrary rewrite, to see patterns chain: exp(x) -> sin(x)."""
    result = Value(op.result.type)
    return Replace([result], [Op("sin", op.operands, (result,), Params({"accuracy": None}))])


@pattern("sin")
def sin_to_exp(op, rw):
    """The inverse of exp_to_sin: together they never converge."""
    result = Value(op.result.type)
    return Replace([result], [Op("exp", op.operands, (result,), Params({"accuracy": None}))])


CHAIN = """graph @f(%0: f32[4]) {
  %1 = neg(%0) : f32[4]
  %2 = neg(%1) : f32[4]
  %3 = neg(%2) : f32[4]
  %4 = neg(%3) : f32[4]
  %5 = exp(%4) {accuracy=None} : f32[4]
  return %5
}
"""


def test_greedy_until_fixed_point_with_trace():
    result = apply_patterns(parse(CHAIN), [double_negation], erase_dead=True, trace=True)
    assert str(result.graph) == ("graph @f(%0: f32[4]) {\n  %1 = exp(%0) {accuracy=None} : f32[4]\n"
                                 "  return %1\n}\n")
    assert result.changed and result.rewrites == 2
    assert result.fired == {"double_negation": 2}
    assert [str(f) for f in result.trace] == ["double_negation on neg", "double_negation on neg"]
    result.graph.verify()


def test_patterns_compose():
    both = passes.PatternSet([double_negation]) + [exp_to_sin]
    result = apply_patterns(parse(CHAIN), both, erase_dead=True)
    assert [op.name for op in result.graph.ops] == ["sin"]
    # and built-in patterns compose with user ones
    mixed = passes.CANONICALIZATION_PATTERNS + [double_negation]
    assert len(mixed) == len(passes.CANONICALIZATION_PATTERNS) + 1


def test_no_match_returns_the_same_graph():
    g = parse(CHAIN)
    result = apply_patterns(g, [passes.pattern("tanh")(lambda op, rw: [op.operands[0]])])
    assert result.graph is g and not result.changed and result.rewrites == 0


def test_cycles_stop_at_the_bound_with_a_helpful_error():
    with pytest.raises(RewriteError, match="did not converge after 50 rewrites") as info:
        apply_patterns(parse(CHAIN), [exp_to_sin, sin_to_exp], max_rewrites=50, trace=True)
    assert "exp_to_sin on exp" in str(info.value) and "sin_to_exp on sin" in str(info.value)


def test_bad_replacements_name_the_pattern():
    @pattern("exp")
    def too_many(op, rw):
        return [op.operands[0], op.operands[0]]

    with pytest.raises(RewriteError, match="pattern 'too_many' gave 2 replacement values"):
        apply_patterns(parse(CHAIN), [too_many])

    @pattern("neg")
    def wrong_type(op, rw):
        return [Value(sk.ir.TensorType((2,), op.result.type.dtype))]

    with pytest.raises(RewriteError, match="pattern 'wrong_type' replaced a result .* f32\\[4\\] .* f32\\[2\\]"):
        apply_patterns(parse(CHAIN), [wrong_type])


def test_benefit_orders_candidates_and_wildcards_match_everything():
    seen = []

    @pattern(benefit=0)
    def everything(op, rw):
        seen.append(op.name)
        return None

    @pattern("neg", benefit=5)
    def first(op, rw):
        seen.append("first")
        return None

    apply_patterns(parse(CHAIN), [everything, first])
    assert seen[:2] == ["first", "neg"]
    assert seen.count("exp") == 1


def test_regions_are_rewritten_first():
    g = parse("""graph @f(%0: f32[4], %1: f32[8,4]) {
  %2, %3 = scan(%0, %1) {reverse=false, length=8, jaxpr=#region(0), num_consts=0, num_carry=1, unroll=1} : (f32[4], f32[8,4]) [
    (%4: f32[4], %5: f32[4]) {
      %6 = neg(%5) : f32[4]
      %7 = neg(%6) : f32[4]
      %8 = add(%4, %7) : f32[4]
      return %8, %8
    }
  ]
  return %2, %3
}
""")
    result = apply_patterns(g, [double_negation], erase_dead=True, trace=True)
    body = result.graph.ops[0].regions[0]
    assert [op.name for op in body.ops] == ["add"]
    assert body.ops[0].operands[1] is body.inputs[1]
    assert result.trace[0].depth == 1
    assert apply_patterns(g, [double_negation], recurse=False).graph is g
    result.graph.verify()


def test_effectful_ops_are_never_erased():
    g = parse("""graph @f(%0: f32[4]) {
  %1 = neg(%0) : f32[4]
  debug_print(%1) {fmt="x {}", ordered=false, partitioned=false, in_tree=#tree(((*,), dict{})), static_args=(), np_printoptions=(), has_placeholders=true, logging_record=None} : ()
  %2 = sin(%0) {accuracy=None} : f32[4]
  return %0
}
""")
    result = apply_patterns(g, [], erase_dead=True)
    assert [op.name for op in result.graph.ops] == ["neg", "debug_print"]


def test_rewriter_queries():
    g = parse("""graph @f(%0: f32[4]) {
  %1 = constant() {value=#array(f32[], [3.0])} : f32[]
  %2 = broadcast_in_dim(%1) {shape=(4,), broadcast_dimensions=(), sharding=None} : f32[4]
  %3 = constant() {value=#array(f32[2], [1.0, 2.0])} : f32[2]
  %4 = add(%0, %2) : f32[4]
  %5 = mul(%4, %4) : f32[4]
  return %5, %3
}
""")
    found = {}

    @pattern("add")
    def probe(op, rw):
        x, y = op.operands
        found.update(splat=rw.splat(y), const=rw.constant(y), producer=rw.producer(y).name,
                     input_producer=rw.producer(x), users=[u.name for u in rw.users(op.result)],
                     uses=rw.use_count(op.result), output=rw.is_output(op.result))
        return None

    @pattern("constant")
    def probe_constant(op, rw):
        if op.result.type.shape == (2,):
            found.update(vector_splat=rw.splat(op.result), vector=rw.constant(op.result).tolist(),
                         is_output=rw.is_output(op.result))
        return None

    apply_patterns(g, [probe, probe_constant])
    assert found["splat"] == 3.0 and found["const"] is None and found["producer"] == "broadcast_in_dim"
    assert found["input_producer"] is None and found["users"] == ["mul"] and found["uses"] == 2
    assert not found["output"]
    assert found["vector_splat"] is None and found["vector"] == [1.0, 2.0] and found["is_output"]


def test_outputs_are_rewritten():
    g = parse("""graph @f(%0: f32[4]) {
  %1 = neg(%0) : f32[4]
  %2 = neg(%1) : f32[4]
  return %2, %1, %2
}
""")
    result = apply_patterns(g, [double_negation], erase_dead=True)
    assert str(result.graph) == ("graph @f(%0: f32[4]) {\n  %1 = neg(%0) : f32[4]\n"
                                 "  return %0, %1, %0\n}\n")


def test_non_patterns_are_rejected():
    with pytest.raises(RewriteError, match="is not a Pattern"):
        apply_patterns(parse(CHAIN), [lambda op, rw: None])
