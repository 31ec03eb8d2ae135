"""Golden IR for the partition pass: each directory under tests/golden_partition/ is one case.

    input.skir      a captured program whose inputs carry shardings (`##` lines are comments)
    pipeline.txt    the pipeline (propagation, then `partition`)
    expected.skir   the per-device program the pipeline must produce, exactly

Run with SHARDKIT_REGEN_GOLDEN=1 to rewrite expected.skir from what the pass produces now; review the
diff before committing it. Each program is also run and compared with the input graph run unpartitioned.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import jax
import numpy as np
import pytest

import shardkit as sk
from shardkit.passes import Pipeline, is_partitioned

GOLDEN = Path(__file__).parent / "golden_partition"
CASES = sorted(p for p in GOLDEN.iterdir() if p.is_dir() and (p / "input.skir").exists())
REGENERATE = os.environ.get("SHARDKIT_REGEN_GOLDEN", "") not in ("", "0")


def _check(path: Path, actual: str) -> None:
    if REGENERATE:
        path.write_text(actual)
        return
    if not path.exists():
        pytest.fail(f"{path} is missing; run with SHARDKIT_REGEN_GOLDEN=1 to create it")
    expected = path.read_text()
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True), actual.splitlines(keepends=True),
                                            fromfile=f"{path.name} (expected)", tofile=f"{path.name} (actual)"))
        pytest.fail(f"output differs from {path} (SHARDKIT_REGEN_GOLDEN=1 rewrites it):\n{diff}")


def _example(value, seed):
    shape, dtype = value.type.shape, value.type.dtype
    key = jax.random.key(seed)
    if np.issubdtype(np.dtype(dtype), np.integer):
        return jax.random.randint(key, shape, 0, 8, dtype)
    return jax.random.normal(key, shape, dtype)


def test_cases_cover_the_issue():
    names = {c.name for c in CASES}
    assert {"matmul_free_free", "matmul_contract_contract", "matmul_free_contract", "matmul_contract_free",
            "reductions", "reshape_sharded", "gather_embedding", "conv_halo"} <= names


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_partition(case: Path, mesh):
    graph = sk.ir.parse((case / "input.skir").read_text())
    pipeline = Pipeline.parse((case / "pipeline.txt").read_text().strip())
    result = pipeline.run(graph, verify=True, reproducers=False)
    assert is_partitioned(result)
    actual = str(result)
    assert str(sk.ir.parse(actual)) == actual, "the partitioned program does not round-trip through the parser"
    _check(case / "expected.skir", actual)
    args = [_example(v, i) for i, v in enumerate(graph.inputs)]
    want = sk.lower(graph.replace(mesh=None).with_types({v: v.type.with_sharding(None) for v in graph.inputs}))(*args)
    got = sk.lower(result, mesh=mesh)(*args)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
