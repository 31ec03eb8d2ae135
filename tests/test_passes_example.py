"""The custom-pass tutorial (examples/custom_pass.py, docs/passes.md) runs end to end."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "custom_pass.py"


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_custom_pass_example_runs():
    done = run("--size", "16", "--show-ir")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "fired square_to_pow on mul" in out and "fired log_of_exp on log" in out
    assert "[count-flops] total:" in out and "FLOPs (op 'dot_general')" in out
    assert "integer_pow: 1, log: 0" in out
    assert "matches jax" in out


def test_custom_pass_example_has_help():
    done = run("--help")
    assert done.returncode == 0, done.stderr
    assert "--pipeline" in done.stdout and "--size" in done.stdout


def test_tutorial_code_matches_the_example():
    """The tutorial shows the example's code: the key lines must appear in both."""
    doc = (ROOT / "docs" / "passes.md").read_text()
    example = EXAMPLE.read_text()
    for line in ('@passes.pattern("mul")', '@passes.pattern("log")', 'name = "square-to-pow"',
                 'name = "count-flops"', "ctx.analyses.get(count_flops, graph)",
                 "passes.Replace([result], [Op(\"integer_pow\", (x,), (result,), Params({\"y\": 2}))])",
                 "canonicalize,square-to-pow{trace=true},count-flops{top=3},dce"):
        assert line in doc, line
        assert line in example, line
