"""Golden-text tests of passes: each directory under tests/golden/ is one case.

    input.skir            the IR the pipeline starts from (`##` lines are comments)
    pipeline.txt          the pipeline string
    expected.skir         the IR the pipeline must produce, exactly
    expected_stdout.txt   (optional) what the pipeline must print, e.g. for the `print` pass

Run with SHARDKIT_REGEN_GOLDEN=1 to (re)write the expected files from what the passes produce now;
review the diff before committing it.
"""
from __future__ import annotations

import difflib
import io
import os
from pathlib import Path

import pytest

import shardkit as sk
from shardkit.passes import Pipeline

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p for p in GOLDEN.iterdir() if p.is_dir() and (p / "input.skir").exists())
REGENERATE = os.environ.get("SHARDKIT_REGEN_GOLDEN", "") not in ("", "0")


def _diff(expected: str, actual: str, name: str) -> str:
    lines = difflib.unified_diff(expected.splitlines(keepends=True), actual.splitlines(keepends=True),
                                 fromfile=f"{name} (expected)", tofile=f"{name} (actual)")
    return "".join(lines)


def _check(path: Path, actual: str) -> None:
    if REGENERATE:
        path.write_text(actual)
        return
    if not path.exists():
        pytest.fail(f"{path} is missing; run with SHARDKIT_REGEN_GOLDEN=1 to create it")
    expected = path.read_text()
    if actual != expected:
        pytest.fail(f"output differs from {path} (SHARDKIT_REGEN_GOLDEN=1 rewrites it):\n"
                    + _diff(expected, actual, path.name))


def test_every_builtin_pass_has_a_case():
    pipelines = " ".join((case / "pipeline.txt").read_text() for case in CASES)
    for name in ("dce", "cse", "canonicalize", "inline", "print"):
        assert name in pipelines, f"no golden case runs the '{name}' pass"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden(case: Path):
    source = (case / "input.skir").read_text()
    pipeline = Pipeline.parse((case / "pipeline.txt").read_text().strip())
    graph = sk.ir.parse(source)
    out = io.StringIO()
    result = pipeline.run(graph, verify=True, out=out, reproducers=False)
    actual = str(result)
    assert str(sk.ir.parse(actual)) == actual, "the pass output does not round-trip through the parser"
    _check(case / "expected.skir", actual)
    stdout_file = case / "expected_stdout.txt"
    if stdout_file.exists() or (REGENERATE and out.getvalue()):
        _check(stdout_file, out.getvalue())
    elif out.getvalue():
        pytest.fail(f"the pipeline printed output but {stdout_file} does not exist; run with "
                    f"SHARDKIT_REGEN_GOLDEN=1 to create it")
