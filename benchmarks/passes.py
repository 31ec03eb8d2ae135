"""Benchmark: time `dce,cse,canonicalize` on synthetic graphs of 1k, 10k and 100k ops.

Each graph is a long elementwise program with the things the clean-ups remove: duplicated
subexpressions, multiplications by one, additions of zero, no-op reshapes and dead ops. The script
prints a table (seconds, also with Python's GC paused, microseconds per op, growth against the
previous size) and writes it to
benchmarks/results/passes.md. Time should grow linearly with the number of ops, not quadratically.
"""
from __future__ import annotations

import argparse
import gc
import math
import platform
import random
import time
from pathlib import Path

import numpy as np

from shardkit.ir import Graph, Op, Params, TensorType, Value
from shardkit.ir.ops.core import make_constant
from shardkit.passes import Pipeline

PIPELINE = "dce,cse,canonicalize"
RESULTS = Path(__file__).resolve().parent / "results" / "passes.md"


def synthetic_graph(num_ops: int, seed: int = 0) -> Graph:
    """A random elementwise program of about `num_ops` ops over a few f32[16] inputs."""
    rng = random.Random(seed)
    t = TensorType((16,), np.dtype("float32"))
    scalar = TensorType((), np.dtype("float32"))
    inputs = [Value(t) for _ in range(4)]
    ops: list[Op] = []

    def emit(name, operands, params=(), type_=t):
        value = Value(type_)
        ops.append(Op(name, tuple(operands), (value,), Params(params)))
        return value

    one = emit("constant", (), make_constant(np.float32(1.0)), scalar)
    zero = emit("constant", (), make_constant(np.float32(0.0)), scalar)
    pool = list(inputs)
    while len(ops) < num_ops:
        kind = rng.random()
        a, b = rng.choice(pool[-64:]), rng.choice(pool[-64:])
        if kind < 0.30:
            value = emit("add", (a, b))
        elif kind < 0.50:
            value = emit("mul", (a, b))
        elif kind < 0.60:
            value = emit("tanh", (a,), (("accuracy", None),))
        elif kind < 0.70:  # a duplicate of an earlier op: cse removes it
            earlier = rng.choice(ops[-64:])
            value = emit(earlier.name, earlier.operands, earlier.params, earlier.results[0].type)
        elif kind < 0.78:
            value = emit("mul", (a, one))
        elif kind < 0.86:
            value = emit("add", (zero, a))
        elif kind < 0.92:
            value = emit("reshape", (a,), (("new_sizes", (16,)), ("dimensions", None), ("sharding", None)))
        else:  # dead: never used again
            emit("sin", (a,), (("accuracy", None),))
            continue
        if value.type is t:
            pool.append(value)
    outputs = pool[-4:]
    return Graph(tuple(inputs), tuple(ops), tuple(outputs), name="synthetic")


def measure(graph: Graph, repeats: int, collect: bool = True) -> tuple[float, int]:
    """Best-of-`repeats` seconds for the pipeline (with Python's cyclic GC on or paused), and ops after."""
    pipeline = Pipeline.parse(PIPELINE)
    best = math.inf
    out = graph
    for _ in range(repeats):
        gc.collect()
        if not collect:
            gc.disable()
        try:
            start = time.perf_counter()
            out = pipeline.run(graph, verify=False)
            best = min(best, time.perf_counter() - start)
        finally:
            gc.enable()
    return best, len(out.ops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000],
                        help="graph sizes in ops (default: 1000 10000 100000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; the best is kept")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS}")
    args = parser.parse_args()

    Pipeline.parse(PIPELINE).run(synthetic_graph(200))  # warm caches (primitive lookup, eager ops)
    rows = []
    previous = None
    for size in args.sizes:
        graph = synthetic_graph(size)
        repeats = args.repeats if size <= 10_000 else 1
        seconds, after = measure(graph, repeats)
        paused, _ = measure(graph, repeats, collect=False)
        before = len(graph.ops)
        growth = ""
        if previous is not None:
            exponent = math.log(paused / previous[1]) / math.log(before / previous[0])
            growth = f"{exponent:.2f}"
        rows.append((before, after, seconds, paused, 1e6 * seconds / before, growth))
        previous = (before, paused)
    _print_table(rows)
    if not args.no_write:
        _write_markdown(rows)
        print(f"wrote {RESULTS}")


HEADERS = ("ops in", "ops out", "seconds", "seconds (gc paused)", "us / op", "growth exponent")


def _cells(row) -> list[str]:
    before, after, seconds, paused, per_op, growth = row
    return [f"{before:,}", f"{after:,}", f"{seconds:.3f}", f"{paused:.3f}", f"{per_op:.1f}", growth or "-"]


def _print_table(rows) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"shardkit passes: {PIPELINE}")
    for header in HEADERS:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*_cells(row))
    Console().print(table)


def _write_markdown(rows) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# Pass pipeline `{PIPELINE}` on synthetic graphs", "",
             "Produced by `python benchmarks/passes.py` on "
             f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}. "
             "The growth exponent is log(time ratio) / log(size ratio) against the previous row, "
             "measured with Python's cyclic garbage collector paused: 1.0 is linear, 2.0 quadratic. "
             "With the collector on, the largest graph pays extra for its periodic full scans of "
             "the many live objects (the `seconds` column); the passes themselves do linear work.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---:|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
