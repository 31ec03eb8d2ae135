"""The PassManager: verification, printing, timing, properties, diagnostics, analyses, reproducers."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pytest

import shardkit as sk
from shardkit import passes
from shardkit.ir import Graph, Op, Value
from shardkit.passes import Pass, PassError, PassManager, PassVerifyError, Pipeline

SOURCE = """graph @f(%0: f32[4], %1: f32[4]) {
  %2 = add(%0, %1) : f32[4]
  %3 = add(%0, %1) : f32[4]
  %4 = sin(%3) {accuracy=None} : f32[4]
  %5 = mul(%2, %4) : f32[4]
  return %5
}
"""



@pytest.fixture(autouse=True)
def _default_debug_off():
    """These tests check the PassManager's defaults, which the suite-wide debug switch would mask."""
    previous = passes.debug_enabled()
    passes.set_debug(False)
    yield
    passes.set_debug(previous)


def graph() -> Graph:
    return sk.ir.parse(SOURCE)


@dataclass(frozen=True)
class DropFirstOp(Pass):
    """Deliberately broken: removes the first op even though later ops use its result."""

    name = "test-drop-first-op"

    def run(self, graph: Graph, ctx) -> Graph:
        return graph.replace(ops=graph.ops[1:])


@dataclass(frozen=True)
class Raises(Pass):
    name = "test-raises"

    def run(self, graph: Graph, ctx) -> Graph:
        raise RuntimeError("something inside the pass went wrong")


@dataclass(frozen=True)
class ReturnsNone(Pass):
    name = "test-returns-none"

    def run(self, graph: Graph, ctx):
        return None


@dataclass(frozen=True)
class ReportsErrors(Pass):
    name = "test-reports-errors"

    def run(self, graph: Graph, ctx) -> Graph:
        ctx.diagnostics.warning("just a warning")
        ctx.diagnostics.error("first problem", op=graph.ops[0])
        ctx.diagnostics.error("second problem")
        return graph


@dataclass(frozen=True)
class NeedsShardings(Pass):
    name = "test-needs-shardings"
    requires = frozenset({"shardings-complete"})

    def run(self, graph: Graph, ctx) -> Graph:
        return graph


@dataclass(frozen=True)
class ClaimsShardings(Pass):
    """Claims to guarantee shardings but adds none."""

    name = "test-claims-shardings"
    guarantees = frozenset({"shardings-complete"})

    def run(self, graph: Graph, ctx) -> Graph:
        return graph


@dataclass(frozen=True)
class TagMaker(Pass):
    name = "test-tag-maker"
    guarantees = frozenset({"test-tag"})
    preserves = passes.ALL_PROPERTIES

    def run(self, graph: Graph, ctx) -> Graph:
        return graph


@dataclass(frozen=True)
class TagUser(Pass):
    name = "test-tag-user"
    requires = frozenset({"test-tag"})

    def run(self, graph: Graph, ctx) -> Graph:
        return graph


def count_adds(graph: Graph) -> int:
    count_adds.calls += 1
    return sum(op.name == "add" for op in graph.ops)


count_adds.calls = 0


@dataclass(frozen=True)
class CountAdds(Pass):
    name = "test-count-adds"
    preserves = passes.ALL_PROPERTIES

    def run(self, graph: Graph, ctx) -> Graph:
        ctx.diagnostics.note(f"{ctx.analyses.get(count_adds, graph)} adds")
        return graph


TEST_PASSES = (DropFirstOp, Raises, ReturnsNone, ReportsErrors, NeedsShardings, ClaimsShardings, TagMaker,
               TagUser, CountAdds)


@pytest.fixture(autouse=True, scope="module")
def registered():
    for cls in TEST_PASSES:
        passes.register(cls, replace=True)
    yield
    for cls in TEST_PASSES:
        passes.unregister(cls.name)


def test_run_returns_new_graph_and_keeps_input():
    g = graph()
    text = str(g)
    out = Pipeline.parse("cse,dce").run(g, verify=True)
    assert str(g) == text
    assert [op.name for op in out.ops] == ["add", "sin", "mul"]


def test_unchanged_graph_is_returned_as_is():
    g = sk.ir.parse(SOURCE.replace("  %3 = add(%0, %1) : f32[4]\n  %4 = sin(%3)", "  %3 = sub(%0, %1) : f32[4]\n  %4 = sin(%3)"))
    assert Pipeline.parse("cse,dce").run(g, verify=True) is g


def test_broken_pass_is_caught_by_the_verifier_with_its_name(tmp_path):
    with pytest.raises(PassVerifyError) as info:
        Pipeline.parse("cse,test-drop-first-op,dce").run(graph(), verify=True, reproducer_dir=tmp_path)
    error = info.value
    message = str(error)
    assert "test-drop-first-op" in message and "produced invalid IR" in message
    assert "is not defined before its use" in message  # the verifier's own message
    assert error.pass_name == "test-drop-first-op"
    assert isinstance(error, sk.ir.VerifyError) and isinstance(error, sk.ir.ShardkitError)
    assert error.reproducer is not None and error.reproducer in message
    assert Path(error.reproducer).parent == tmp_path


def test_without_verification_the_broken_pass_goes_unnoticed():
    out = Pipeline.parse("test-drop-first-op").run(graph(), verify=False)
    with pytest.raises(sk.ir.VerifyError):
        out.verify()


def test_debug_switch_turns_verification_on(tmp_path):
    previous = passes.debug_enabled()  # the test suite runs with debug on (tests/conftest.py)
    passes.set_debug(False)
    try:
        assert not passes.debug_enabled()
        with passes.debug():
            assert passes.debug_enabled()
            with pytest.raises(PassVerifyError):
                Pipeline.parse("test-drop-first-op").run(graph(), reproducer_dir=tmp_path)
        assert not passes.debug_enabled()
    finally:
        passes.set_debug(previous)


def test_reproducer_is_written_and_rerunnable(tmp_path):
    with pytest.raises(PassVerifyError) as info:
        Pipeline.parse("cse,test-drop-first-op,dce").run(graph(), verify=True, reproducer_dir=tmp_path)
    path = info.value.reproducer
    text = Path(path).read_text()
    assert "## pipeline: test-drop-first-op,dce" in text
    assert "## failed-pass: test-drop-first-op" in text
    repro = passes.load_reproducer(path)
    assert repro.pipeline == "test-drop-first-op,dce"
    assert repro.failed_pass == "test-drop-first-op"
    assert "produced invalid IR" in repro.error
    # the recorded IR is what the failing pass received: cse had already merged the adds
    assert [op.name for op in repro.graph().ops] == ["add", "sin", "mul"]
    # rerunning reproduces the failure ...
    with pytest.raises(PassVerifyError, match="test-drop-first-op"):
        passes.run_reproducer(path, reproducer_dir=tmp_path)
    # ... and another pipeline can be tried on the same IR
    fixed = passes.run_reproducer(path, pipeline="dce", reproducers=False)
    assert [op.name for op in fixed.ops] == ["add", "sin", "mul"]


def test_exception_in_a_pass_names_it_and_chains_the_cause(tmp_path):
    with pytest.raises(PassError) as info:
        Pipeline.parse("dce,test-raises").run(graph(), reproducer_dir=tmp_path)
    message = str(info.value)
    assert "pass 'test-raises' (pass 2 of 2" in message
    assert "RuntimeError: something inside the pass went wrong" in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert passes.load_reproducer(info.value.reproducer).pipeline == "test-raises"


def test_pass_must_return_a_graph(tmp_path):
    with pytest.raises(PassError, match="returned NoneType, not a Graph"):
        Pipeline.parse("test-returns-none").run(graph(), reproducer_dir=tmp_path)


def test_error_diagnostics_fail_the_pass(tmp_path):
    ctx = passes.PassContext()
    with pytest.raises(PassError) as info:
        Pipeline.parse("test-reports-errors,dce").run(graph(), ctx=ctx, reproducer_dir=tmp_path)
    message = str(info.value)
    assert "reported 2 error(s)" in message
    assert "first problem (op 'add')" in message and "second problem" in message
    severities = [d.severity for d in ctx.diagnostics]
    assert severities == ["warning", "error", "error"]
    assert all(d.pass_name == "test-reports-errors" for d in ctx.diagnostics)


def test_invalid_input_is_not_blamed_on_a_pass(tmp_path):
    bad = graph()
    bad = bad.replace(ops=bad.ops[1:])
    with pytest.raises(PassVerifyError, match="input graph of pipeline 'dce' is invalid") as info:
        Pipeline.parse("dce").run(bad, verify=True, reproducer_dir=tmp_path)
    assert info.value.pass_name is None
    assert passes.load_reproducer(info.value.reproducer).failed_pass is None


def test_no_reproducer_when_disabled(tmp_path):
    with pytest.raises(PassError) as info:
        Pipeline.parse("test-raises").run(graph(), reproducers=False, reproducer_dir=tmp_path)
    assert info.value.reproducer is None
    assert not any(tmp_path.iterdir())


def test_required_property_is_checked(tmp_path):
    with pytest.raises(PassError) as info:
        Pipeline.parse("dce,test-needs-shardings").run(graph(), reproducer_dir=tmp_path)
    message = str(info.value)
    assert "requires 'shardings-complete' (every value has a sharding)" in message
    assert "input 0 (f32[4]) of @f has no sharding" in message


def test_guaranteed_property_is_verified(tmp_path):
    with pytest.raises(PassVerifyError, match="guarantees 'shardings-complete'"):
        Pipeline.parse("test-claims-shardings").run(graph(), verify=True, reproducer_dir=tmp_path)


def test_property_tags_flow_through_preserving_passes(tmp_path):
    Pipeline.parse("test-tag-maker,dce,test-tag-user").run(graph(), verify=True)
    with pytest.raises(PassError, match="requires 'test-tag', but no earlier pass guarantees it"):
        Pipeline.parse("test-tag-user").run(graph(), reproducer_dir=tmp_path)
    with pytest.raises(PassError, match="requires 'test-tag'"):
        # test-drop-first-op preserves nothing, so the tag is gone after it
        Pipeline.parse("test-tag-maker,test-drop-first-op,test-tag-user").run(graph(), reproducer_dir=tmp_path)


def test_print_before_after_and_after_change():
    out = io.StringIO()
    Pipeline.parse("dce,cse").run(graph(), print_before={"cse"}, print_after_change=True, out=out)
    text = out.getvalue()
    assert "## IR before pass 'cse' (2 of 2)" in text
    assert "## IR after pass 'cse' (2 of 2, changed)" in text
    assert "after pass 'dce'" not in text  # dce changed nothing
    out = io.StringIO()
    Pipeline.parse("dce,cse").run(graph(), print_after=True, out=out)
    assert out.getvalue().count("## IR after pass") == 2
    # the dumps are IR text with comment headers: each parses back
    chunks = out.getvalue().split("## IR after")[1:]
    for chunk in chunks:
        sk.ir.parse(chunk.split("\n", 1)[1])


def test_timing_is_recorded_and_reported():
    out = io.StringIO()
    pm = PassManager("cse,dce", timing=True, out=out)
    pm.run(graph())
    assert [t.name for t in pm.timings] == ["cse", "dce"]
    assert pm.timings[0].ops_before == 4 and pm.timings[0].ops_after == 3 and pm.timings[0].changed
    assert not pm.timings[1].changed
    assert all(t.seconds >= 0 for t in pm.timings)
    report = out.getvalue()
    assert "## pass timing (2 passes" in report and "4 -> 3" in report and "(unchanged)" in report


def test_analysis_cache_is_shared_between_passes_and_the_caller():
    ctx = passes.PassContext()
    count_adds.calls = 0
    g = sk.ir.parse(SOURCE.replace("%3 = add(%0, %1)", "%3 = sub(%0, %1)"))
    out = Pipeline.parse("test-count-adds,dce,test-count-adds").run(g, ctx=ctx)
    assert count_adds.calls == 1  # dce returned the same graph, so the cached result was reused
    assert ctx.analyses.get(count_adds, out) == 1 and count_adds.calls == 1
    Pipeline.parse("test-count-adds,cse,test-count-adds").run(graph(), ctx=ctx)
    assert count_adds.calls == 3  # cse changed the graph: computed again
    assert [d.message for d in ctx.diagnostics][-2:] == ["2 adds", "1 adds"]


def test_context_carries_mesh_and_options():
    seen = {}

    @dataclass(frozen=True)
    class Peek(Pass):
        name = "test-peek"

        def run(self, graph, ctx):
            seen.update(mesh=ctx.mesh_shape, options=dict(ctx.options), current=ctx.current_pass)
            return graph

    passes.register(Peek)
    try:
        Pipeline.parse("test-peek").run(graph(), mesh={"data": 4, "model": 2}, options={"level": 3})
    finally:
        passes.unregister("test-peek")
    assert seen["mesh"] == sk.ir.MeshShape((("data", 4), ("model", 2)))
    assert seen["options"] == {"level": 3}
    assert seen["current"] == "test-peek"


def test_manager_rejects_non_graphs():
    with pytest.raises(PassError, match="expects a shardkit.ir.Graph"):
        Pipeline.parse("dce").run("graph @f() {}")


def test_reproducer_records_the_mesh(tmp_path):
    with pytest.raises(PassError) as info:
        Pipeline.parse("test-raises").run(graph(), mesh={"data": 4, "model": 2}, reproducer_dir=tmp_path)
    repro = passes.load_reproducer(info.value.reproducer)
    assert repro.mesh == sk.ir.MeshShape((("data", 4), ("model", 2)))
    assert "RuntimeError: something inside the pass went wrong" in repro.error
    assert str(repro.graph()) == SOURCE


def test_load_reproducer_rejects_other_files(tmp_path):
    path = tmp_path / "not-a-reproducer.skir"
    path.write_text(SOURCE)
    with pytest.raises(sk.ir.ShardkitError, match="is not a shardkit pass reproducer"):
        passes.load_reproducer(path)
