"""Benchmark: shardkit's SPMD partitioner (`lowering="spmd"`) against XLA's, on the same shardings.

For every model of the propagation corpus (benchmarks/corpus.py), plus a Megatron sequence-parallel
block (row-parallel projection whose output is wanted sequence-sharded) and the corpus's FSDP MLP with
its gradients wanted sharded like the parameters, the script builds `sk.jit(fn, mesh=mesh,
in_specs=..., out_specs=...)` twice on a simulated 4x2 (data, model) mesh of CPU devices:

- `lowering="xla"`: the propagated shardings handed to XLA, whose partitioner picks the collectives;
- `lowering="spmd"`: shardkit's partition pass writes the per-device program with explicit
  collectives, lowered through `jax.shard_map`.

It reports per-device bytes on the wire of the collectives XLA compiled (every collective in the
compiled HLO, ring model, `shardkit.hlo.collectives_from_hlo`), their kinds, the best step time
of the compiled programs (the two taking turns), whether both give plain JAX's numbers, and whether the spmd program's own
collective ops (the IR, what `sk.explain(..., lowering="spmd")` counts) match the compiled bytes
exactly. Target: never more bytes than XLA's partitioner, strictly fewer where XLA all-reduces and
slices (the sequence-parallel block: half) or rematerialises whole tensors.

Collectives inside loops (a scan's while body) appear once in HLO text and are counted once.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import shardkit as sk  # noqa: E402
from corpus import BUILDERS, Case  # noqa: E402
from shardkit.hlo import collectives_from_hlo  # noqa: E402
from shardkit.passes import spmd_collectives  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "partition.md"
SHORT = {"all-reduce": "AR", "all-gather": "AG", "reduce-scatter": "RS", "all-to-all": "A2A",
         "collective-permute": "CP"}


@dataclass(frozen=True)
class Model:
    name: str
    fn: object
    args: tuple
    in_specs: tuple
    out_specs: object = None
    rtol: float = 1e-4
    atol: float = 1e-5


def _normal(key, shape, scale=1.0):
    return jax.random.normal(key, shape, jnp.float32) * scale


def _layer_norm(x):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)


def sequence_parallel(mesh) -> Model:
    """Megatron-SP MLP block: activations sequence-sharded over `model` outside the block; inside,
    column-parallel w1 (all-gather of the sequence) and row-parallel w2 whose output is wanted
    sequence-sharded again (a reduce-scatter, which XLA's CPU pipeline does as all-reduce + slice)."""
    k = jax.random.split(jax.random.key(11), 3)
    batch, seq, d, ff = 8, 256, 128, 512
    x = _normal(k[0], (batch, seq, d))
    w1, w2 = _normal(k[1], (d, ff), d ** -0.5), _normal(k[2], (ff, d), ff ** -0.5)

    def block(x, w1, w2):
        h = jax.nn.gelu(jnp.einsum("bsd,df->bsf", _layer_norm(x), w1))
        h = sk.hint(h, P("data", None, "model"))  # Megatron: the hidden units over model
        y = jnp.einsum("bsf,fd->bsd", h, w2)
        return sk.hint(x + y, P("data", "model", None))

    return Model("sequence-parallel block", block, (x, w1, w2),
                 (P("data", "model", None), P(None, "model"), P("model", None)))


def fsdp_sharded_grads(mesh) -> Model:
    """The corpus's FSDP MLP with its gradients wanted sharded like the parameters (reduce-scatter)."""
    case = BUILDERS["mlp-fsdp"](mesh)
    return Model("mlp-fsdp, sharded grads", case.fn, case.args, case.in_specs,
                 (None, case.in_specs[0]), case.rtol, case.atol)


def models(mesh, names=None) -> list[Model]:
    out = []
    for name, builder in BUILDERS.items():
        case: Case = builder(mesh)
        out.append(Model(case.name, case.fn, case.args, case.in_specs, None, case.rtol, case.atol))
    out += [fsdp_sharded_grads(mesh), sequence_parallel(mesh)]
    return [m for m in out if names is None or m.name in names]


@dataclass
class Result:
    bytes: float
    kinds: Counter
    matches: bool
    exact: bool | None = None
    step_ms: float = 0.0


def compile_model(model: Model, mesh, lowering: str, reference):
    """Build and compile one lowering; returns (Result without timing, the compiled call)."""
    jf = sk.jit(model.fn, mesh=mesh, in_specs=model.in_specs, out_specs=model.out_specs, lowering=lowering)
    build = jf.build(*model.args)
    compiled = jf.lower(*model.args).compile()
    found = collectives_from_hlo(compiled.as_text(), mesh)
    flat = jax.tree_util.tree_leaves((model.args, {}))
    if build.lowered.in_shardings is not None:
        flat = [jax.device_put(x, s) for x, s in zip(flat, build.lowered.in_shardings)]
    outs = jax.block_until_ready(compiled(*flat))
    matches = all(np.allclose(np.asarray(a), np.asarray(b), rtol=model.rtol, atol=model.atol)
                  for a, b in zip(jax.tree_util.tree_leaves(outs), reference))
    kinds = Counter(c.kind for c in found)
    exact = None
    if lowering == "spmd":
        ours = spmd_collectives(build.graph)
        exact = all(abs(sum(c.bytes for c in ours if c.kind == k) - sum(c.bytes for c in found if c.kind == k)) < 0.5
                    for k in {c.kind for c in ours} | {c.kind for c in found})
    return Result(sum(c.bytes for c in found), kinds, matches, exact), (lambda: compiled(*flat))


def time_interleaved(calls: list, repeats: int) -> list[float]:
    """Best-of-`repeats` milliseconds per call, the calls taking turns (so load on the host hits
    them alike)."""
    times = [[] for _ in calls]
    for _ in range(repeats):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[i].append(time.perf_counter() - start)
    return [1e3 * min(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="model names (default: all)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per program; the best is kept")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS}")
    args = parser.parse_args()
    mesh = sk.make_mesh({"data": 4, "model": 2})
    rows = []
    for model in models(mesh, args.models):
        reference = jax.tree_util.tree_leaves(jax.jit(model.fn)(*model.args))
        xla, run_xla = compile_model(model, mesh, "xla", reference)
        spmd, run_spmd = compile_model(model, mesh, "spmd", reference)
        xla.step_ms, spmd.step_ms = time_interleaved([run_xla, run_spmd], args.repeats)
        rows.append((model.name, xla, spmd))
        print(f"{model.name}: XLA {xla.bytes:,.0f} B, spmd {spmd.bytes:,.0f} B", flush=True)
    _print_table(rows)
    if not args.no_write:
        _write_markdown(rows, " ".join(sys.argv[1:]))
        print(f"wrote {RESULTS}")


HEADERS = ("model", "XLA bytes", "spmd bytes", "spmd / XLA", "XLA collectives", "spmd collectives",
           "XLA step ms", "spmd step ms", "numbers match", "IR = HLO bytes")


def _kinds(counter: Counter) -> str:
    return " ".join(f"{n}x{SHORT[k]}" for k, n in sorted(counter.items())) or "none"


def _cells(row) -> list[str]:
    name, xla, spmd = row
    ratio = f"{spmd.bytes / xla.bytes:.2f}" if xla.bytes else ("1.00" if not spmd.bytes else "inf")
    return [name, f"{xla.bytes:,.0f}", f"{spmd.bytes:,.0f}", ratio, _kinds(xla.kinds), _kinds(spmd.kinds),
            f"{xla.step_ms:.2f}", f"{spmd.step_ms:.2f}", "yes" if xla.matches and spmd.matches else "NO",
            "yes" if spmd.exact else "NO"]


def _print_table(rows) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title="SPMD partitioner: lowering='spmd' vs XLA's partitioner (same shardings)")
    for header in HEADERS:
        table.add_column(header, justify="left" if header in ("model", "XLA collectives", "spmd collectives")
                         else "right")
    for row in rows:
        table.add_row(*_cells(row))
    Console(width=200).print(table)


def _write_markdown(rows, argv: str) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/partition.py" + (f" {argv}" if argv else "")
    lines = ["# SPMD partitioner: `lowering=\"spmd\"` vs XLA's partitioner", "",
             f"Produced by `{command}` on {platform.python_implementation()} {platform.python_version()}, "
             f"{platform.machine()}, {os.cpu_count()} cores, 8 simulated CPU devices (mesh data=4 x model=2), "
             f"JAX {jax.__version__}. Bytes: per-device bytes on the wire of the collectives in the compiled "
             "HLO (ring model), the same propagated shardings handed to XLA (`lowering=\"xla\"`) or to "
             "shardkit's partitioner (`lowering=\"spmd\"`). AR all-reduce, AG all-gather, RS reduce-scatter, "
             "A2A all-to-all, CP collective-permute (XLA combines independent all-reduces, so counts may "
             "differ from the IR while bytes match). Step time: best of the timed runs of each compiled program, "
             "the two lowerings taking turns, on CPU devices that share the host's cores: indicative only. `IR = HLO bytes`: the "
             "collectives in shardkit's program (what `sk.explain(..., lowering=\"spmd\")` reports) move "
             "exactly the bytes XLA compiled.", "",
             "| " + " | ".join(HEADERS) + " |",
             "|" + "|".join(":---" if h in ("model", "XLA collectives", "spmd collectives") else "---:"
                            for h in HEADERS) + "|"]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
