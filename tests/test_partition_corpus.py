"""Differential tests of lowering="spmd" over the propagation corpus (benchmarks/corpus.py): the same
numbers as plain JAX, a program that verifies, and collectives counted exactly (what the IR says is
what XLA compiled, byte for byte)."""
import os
import sys

import jax
import numpy as np
import pytest

import shardkit as sk
from shardkit.hlo import collectives_from_hlo
from shardkit.passes import is_partitioned, spmd_collectives

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.corpus import BUILDERS  # noqa: E402

SLOW = {"transformer-lm"}
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in BUILDERS]


@pytest.mark.parametrize("name", NAMES)
def test_corpus_model(mesh, name):
    case = BUILDERS[name](mesh)
    jf = sk.jit(case.fn, mesh=mesh, in_specs=case.in_specs, lowering="spmd")
    build = jf.build(*case.args)
    graph = build.graph
    assert is_partitioned(graph)
    compiled = jf.lower(*case.args).compile()
    flat = jax.tree_util.tree_leaves((case.args, {}))
    flat = [jax.device_put(x, s) for x, s in zip(flat, build.lowered.in_shardings)]
    got = jax.tree_util.tree_leaves(compiled(*flat))
    want = jax.tree_util.tree_leaves(jax.jit(case.fn)(*case.args))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=case.rtol, atol=case.atol)
    ours = spmd_collectives(graph)
    theirs = collectives_from_hlo(compiled.as_text(), mesh)
    for kind in {c.kind for c in ours} | {c.kind for c in theirs}:
        assert sum(c.bytes for c in ours if c.kind == kind) == pytest.approx(
            sum(c.bytes for c in theirs if c.kind == kind)), kind
