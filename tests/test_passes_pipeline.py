"""Pass classes, options, the registry and pipeline strings."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

import pytest

from shardkit import passes
from shardkit.ir import Graph
from shardkit.passes import Pass, PassOptionError, Pipeline, PipelineError, UnknownPassError


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Configurable(Pass):
    """A pass with one option of every kind pipelines can express."""

    name = "test-configurable"
    mode: Literal["basic", "aggressive"] = "basic"
    steps: int = 2
    scale: float = 1.0
    verbose: bool = False
    label: str = ""
    colour: Colour = Colour.RED
    axes: tuple[str, ...] = ()
    limit: int | None = None

    def run(self, graph: Graph, ctx) -> Graph:
        return graph


@pytest.fixture(autouse=True, scope="module")
def registered():
    passes.register(Configurable, replace=True)
    yield
    passes.unregister(Configurable.name)


def test_builtin_passes_are_registered():
    names = passes.registered_passes()
    for name in ("dce", "cse", "canonicalize", "inline", "print"):
        assert name in names
    assert passes.get_pass("dce") is passes.DeadCodeElimination
    assert "default" in passes.registered_pipelines()


def test_parse_options_of_every_type():
    p = Pipeline.parse('test-configurable{mode=aggressive, steps=5,scale=0.5,verbose=true,'
                       'label="a b,c",colour=BLUE,axes=[data,model],limit=none}')
    (only,) = p.passes
    assert only == Configurable(mode="aggressive", steps=5, scale=0.5, verbose=True, label="a b,c",
                                colour=Colour.BLUE, axes=("data", "model"), limit=None)
    assert Pipeline.parse("test-configurable{axes=data}")[0].axes == ("data",)
    assert Pipeline.parse("test-configurable{limit=3}")[0].limit == 3


@pytest.mark.parametrize("text", [
    "dce,cse,canonicalize",
    "test-configurable{mode=aggressive}",
    "dce,test-configurable{steps=3,label=\"two words\"},print{label=x}",
    "canonicalize{fold-limit=16}",                       # an explicit default is kept as written
    "canonicalize{fold_limit=16,erase-dead=false}",      # so is the spelling of each key
    "test-configurable{axes=[a,b],limit=none,scale=0.25}",
    "default,print",
    "inline{ops=[jit,pjit]},inline{ops=[]}",
    "",
])
def test_round_trip(text):
    p = Pipeline.parse(text)
    assert str(p) == text
    assert Pipeline.parse(str(p)) == p


def test_str_normalises_spacing_and_built_pipelines_show_changed_options():
    assert str(Pipeline.parse(" dce , cse{ regions = false } ")) == "dce,cse{regions=false}"
    built = Pipeline([passes.Canonicalize(fold_limit=4), passes.DeadCodeElimination()])
    assert str(built) == "canonicalize{fold-limit=4},dce"
    assert Pipeline.parse(str(built)) == built


def test_alias_expands_and_composes():
    assert "default" in passes.registered_pipelines()
    passes.register_pipeline("test-cleanup", "canonicalize{fold-limit=4},cse,dce", replace=True)
    p = Pipeline.parse("test-cleanup,print")
    assert [q.name for q in p] == ["canonicalize", "cse", "dce", "print"]
    assert p[0].fold_limit == 4
    assert str(p) == "test-cleanup,print"
    with pytest.raises(PipelineError, match="already registered"):
        passes.register_pipeline("test-cleanup", "dce")
    combined = Pipeline.parse("dce") + "cse" + passes.PrintIR(label="end")
    assert str(combined) == "dce,cse,print{label=end}"
    assert len(combined) == 3


def test_unknown_pass_lists_valid_ones():
    with pytest.raises(UnknownPassError) as info:
        Pipeline.parse("dce,propagate-shardng-typo{mode=aggressive}")
    message = str(info.value)
    assert "unknown pass 'propagate-shardng-typo'" in message
    assert "column 5" in message
    for name in ("canonicalize", "cse", "dce", "inline", "print"):
        assert name in message
    assert "register" in message
    with pytest.raises(UnknownPassError, match="did you mean 'canonicalize'"):
        Pipeline.parse("canonicalise")


def test_bad_option_value_lists_options():
    with pytest.raises(PassOptionError) as info:
        Pipeline.parse("canonicalize{fold-limit=lots}")
    message = str(info.value)
    assert "option 'fold-limit' expected int" in message and "'lots'" in message
    assert "erase-dead: bool = true" in message


@pytest.mark.parametrize("text, fragment", [
    ("test-configurable{mode=wild}", r"one of basic\|aggressive"),
    ("test-configurable{verbose=maybe}", "expected bool"),
    ("test-configurable{colour=GREEN}", r"one of RED\|BLUE"),
    ("test-configurable{steps=\"3\"}", "quoted string"),
    ("test-configurable{nope=1}", "unknown option 'nope'"),
    ("test-configurable{steps=1,steps=2}", "given twice"),
    ("canonicalize{fold_limit=1,fold-limit=2}", "given twice"),
    ("default{x=1}", "alias .default. takes no options"),
    ("dce{x=1}", r"its options are dce\{regions: bool = true\}"),
])
def test_option_errors(text, fragment):
    """Each error says which pass and option, what was wrong, and what the pass accepts."""
    with pytest.raises(PipelineError, match=fragment):
        Pipeline.parse(text)


@pytest.mark.parametrize("text, fragment", [
    ("dce,,cse", "expected a pass name"),
    ("dce{", "expected an option name"),
    ("dce cse", "expected ','"),
    ('print{label="open}', "unterminated string"),
    ("print{label=}", "expected an option value"),
])
def test_syntax_errors_show_the_column(text, fragment):
    with pytest.raises(PipelineError, match=fragment) as info:
        Pipeline.parse(text)
    assert "column" in str(info.value) and "^" in str(info.value)


def test_options_are_checked_when_a_pass_is_built():
    with pytest.raises(PassOptionError, match="option 'steps' expected int"):
        Configurable(steps="3")
    with pytest.raises(PassOptionError, match=r"one of basic\|aggressive"):
        Configurable(mode="wild")
    assert Configurable(scale=2).scale == 2.0 and isinstance(Configurable(scale=2).scale, float)
    assert Configurable(axes=["a"]).axes == ("a",)
    with pytest.raises(Exception):
        Configurable().steps = 3  # frozen


def test_register_rejects_bad_pass_classes():
    class NotDecorated(Pass):
        name = "test-undecorated"

        def run(self, graph, ctx):
            return graph

    with pytest.raises(PassOptionError, match="frozen"):
        passes.register(NotDecorated)

    @dataclass(frozen=True)
    class NoName(Pass):
        def run(self, graph, ctx):
            return graph

    with pytest.raises(PassOptionError, match="class attribute `name`"):
        passes.register(NoName)

    @dataclass(frozen=True)
    class BadOption(Pass):
        name = "test-bad-option"
        table: dict = None

        def run(self, graph, ctx):
            return graph

    with pytest.raises(PassOptionError, match="cannot express"):
        passes.register(BadOption)

    @dataclass(frozen=True)
    class Clash(Pass):
        name = "dce"

        def run(self, graph, ctx):
            return graph

    with pytest.raises(PipelineError, match="already registered"):
        passes.register(Clash)
    with pytest.raises(PipelineError, match="a pass has that name"):
        passes.register_pipeline("dce", "cse")


def test_required_option_must_be_given():
    @dataclass(frozen=True)
    class NeedsOption(Pass):
        name = "test-needs-option"
        factor: int

        def run(self, graph, ctx):
            return graph

    passes.register(NeedsOption)
    try:
        with pytest.raises(PassOptionError, match="missing required option"):
            Pipeline.parse("test-needs-option")
        assert Pipeline.parse("test-needs-option{factor=2}")[0].factor == 2
        assert str(Pipeline([NeedsOption(3)])) == "test-needs-option{factor=3}"
    finally:
        passes.unregister("test-needs-option")


def test_name_must_not_be_an_option():
    @dataclass(frozen=True)
    class NameAsField(Pass):
        name: str = "test-name-as-field"

        def run(self, graph, ctx):
            return graph

    with pytest.raises(PassOptionError, match="plain class attribute"):
        passes.register(NameAsField)
