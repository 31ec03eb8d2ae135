"""Capture overhead: shardkit's capture -> print -> parse -> lower -> compile against plain jax.jit.

Two measurements, side by side in one process:

1. A 12-layer transformer training step (plain JAX + optax adam, small dims so it runs on CPU):
   `jax.jit(step).lower(*args).compile()` against `sk.capture` + `str` + `sk.ir.parse` +
   `sk.lower(g).lower(*args).compile()`. The ratio says how much shardkit adds (target: < 1.2x).
2. A synthetic chain of elementwise ops (50,000 ops by default): time `str(g)` and
   `sk.ir.parse(text)` (target: each under 2 s).

Every number is the median of `--repeats` runs after a warm-up run (the transformer's warm-up is a
1-layer model, which exercises every code path at a fraction of the compile time); each run builds
fresh functions so no JAX trace or compile cache is reused, and the transformer runs alternate which
side goes first. Each stage records wall and CPU time; targets are judged on CPU time, which other
work on a shared machine disturbs far less. Results are printed as a table and written as markdown
to `--out` (default benchmarks/results/capture.md).

    python benchmarks/capture.py                  # the full benchmark
    python benchmarks/capture.py --layers 2 --ops 5000 --repeats 1   # a quick smoke run
    python benchmarks/capture.py --profile parse  # cProfile one stage and print its hot spots
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import os
import platform
import pstats
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

TARGET_RATIO = 1.2
TARGET_TEXT_SECONDS = 2.0
STAGES = ("capture", "print", "parse", "lower", "chain-print", "chain-parse")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure shardkit capture + print + parse + lower against jax.jit trace + compile, "
                    "and print/parse speed on a large synthetic graph.",
        epilog="Writes a markdown table (with the command that made it) to --out.")
    parser.add_argument("--layers", type=int, default=12, help="transformer layers (default 12)")
    parser.add_argument("--d-model", type=int, default=64, help="model width (default 64)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--seq", type=int, default=32, help="sequence length (default 32)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--vocab", type=int, default=256, help="vocabulary size (default 256)")
    parser.add_argument("--ops", type=int, default=50_000, help="ops in the synthetic graph (default 50000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported (default 3)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "capture.md",
                        help="markdown file to write (default benchmarks/results/capture.md)")
    parser.add_argument("--no-write", action="store_true", help="print the table but write no file")
    parser.add_argument("--profile", choices=STAGES, default=None,
                        help="cProfile one stage once and print the 25 hottest functions")
    return parser.parse_args(argv)


# -- the programs ---------------------------------------------------------------------------------


def transformer_program(layers: int, d: int, heads: int, seq: int, batch: int, vocab: int):
    """(make_step, args): `make_step()` returns a fresh training-step function (params, opt, batch)."""
    import jax
    import jax.numpy as jnp
    import optax

    def init(key):
        keys = iter(jax.random.split(key, 4 + 6 * layers))

        def dense(n_in, n_out):
            return jax.random.normal(next(keys), (n_in, n_out), jnp.float32) / jnp.sqrt(n_in)

        params = {"embed": dense(vocab, d), "pos": 0.02 * jax.random.normal(next(keys), (seq, d)),
                  "unembed": dense(d, vocab), "ln_f": jnp.ones((d,)), "layers": []}
        for _ in range(layers):
            params["layers"].append({
                "ln1": jnp.ones((d,)), "ln2": jnp.ones((d,)),
                "qkv": dense(d, 3 * d), "out": dense(d, d),
                "up": dense(d, 4 * d), "up_b": jnp.zeros((4 * d,)), "down": dense(4 * d, d),
            })
        return params

    tx = optax.adam(1e-3)
    params = init(jax.random.key(0))
    opt_state = tx.init(params)
    tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, vocab)

    def make_step():
        def norm(x, scale):
            mean = jnp.mean(x, axis=-1, keepdims=True)
            var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
            return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale

        def attention(x, layer):
            b, t, _ = x.shape
            q, k, v = jnp.split(x @ layer["qkv"], 3, axis=-1)
            q, k, v = (a.reshape(b, t, heads, d // heads) for a in (q, k, v))
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // heads)
            mask = jnp.tril(jnp.ones((t, t), bool))
            scores = jnp.where(mask, scores, -1e9)
            out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
            return out.reshape(b, t, d) @ layer["out"]

        def loss_fn(params, tokens):
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
            x = params["embed"][inputs] + params["pos"]
            for layer in params["layers"]:
                x = x + attention(norm(x, layer["ln1"]), layer)
                h = jax.nn.gelu(norm(x, layer["ln2"]) @ layer["up"] + layer["up_b"])
                x = x + h @ layer["down"]
            logits = norm(x, params["ln_f"]) @ params["unembed"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

        def step(params, opt_state, tokens):
            loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        return step

    return make_step, (params, opt_state, tokens)


def chain_program(n_ops: int):
    """A function of one small array whose jaxpr is a chain of `n_ops` elementwise equations."""
    import jax.numpy as jnp

    def chain(x):
        for i in range(n_ops):
            x = jnp.sin(x) if i % 2 else x * 1.0001
        return x

    return chain, (jnp.ones((4,), jnp.float32),)


# -- timing ---------------------------------------------------------------------------------------


def timed(record: dict[str, float], key: str, fn: Callable[[], object]):
    """Run `fn`; store its wall time as `record[key]` and its CPU time (all threads) as `record[key + '/cpu']`."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    record[key] = time.perf_counter() - wall
    record[key + "/cpu"] = time.process_time() - cpu
    return out


def median_runs(run: Callable[[int], dict[str, float]], repeats: int,
                warm_up: Callable[[], object] | None = None) -> dict[str, float]:
    """Warm up (by default one untimed `run(0)`), then `run(i)` for each repeat; the median of each field."""
    if warm_up is None:
        run(0)
    else:
        warm_up()
    samples = [run(i) for i in range(repeats)]
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def transformer_once(make_step, args, shardkit_first: bool = False) -> dict[str, float]:
    """One side-by-side run on fresh functions: jax.jit trace+compile and each shardkit stage."""
    import jax
    import shardkit as sk

    record: dict[str, float] = {}

    def run_jax():
        gc.collect()
        lowered = timed(record, "jit_trace", lambda: jax.jit(make_step()).lower(*args))
        timed(record, "jit_compile", lowered.compile)

    def run_shardkit():
        gc.collect()
        step = make_step()
        graph = timed(record, "capture", lambda: sk.capture(step, *args))
        text = timed(record, "print", lambda: str(graph))
        parsed = timed(record, "parse", lambda: sk.ir.parse(text))
        lowered = timed(record, "sk_trace", lambda: sk.lower(parsed).lower(*args))
        timed(record, "sk_compile", lowered.compile)
        record.update(ops=float(graph.num_ops()), text_kb=len(text) / 1024)

    for side in ((run_shardkit, run_jax) if shardkit_first else (run_jax, run_shardkit)):
        side()  # the order alternates between repeats so neither side always runs second
    return record


def chain_once(graph) -> dict[str, float]:
    import shardkit as sk

    record: dict[str, float] = {}
    gc.collect()
    text = timed(record, "print", lambda: str(graph))
    parsed = timed(record, "parse", lambda: sk.ir.parse(text))
    assert len(parsed.ops) == len(graph.ops)
    record["text_kb"] = len(text) / 1024
    return record


def profile_stage(stage: str, make_step, args, chain_graph) -> None:
    """cProfile one stage (after a warm-up run of it) and print the hottest functions."""
    import shardkit as sk

    step = make_step()
    graph = sk.capture(step, *args)
    text = str(graph)
    chain_text = str(chain_graph)
    work = {
        "capture": lambda: sk.capture(make_step(), *args),
        "print": lambda: str(graph),
        "parse": lambda: sk.ir.parse(text),
        "lower": lambda: sk.lower(sk.ir.parse(text)).lower(*args),
        "chain-print": lambda: str(chain_graph),
        "chain-parse": lambda: sk.ir.parse(chain_text),
    }[stage]
    work()
    profiler = cProfile.Profile()
    profiler.runcall(work)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


# -- reporting ------------------------------------------------------------------------------------


def report_rows(tf: dict[str, float], chain: dict[str, float], opts) -> list[tuple[str, ...]]:
    """Table rows: measurement, wall time, CPU time, target, notes (markdown emphasis allowed)."""
    def total(keys, suffix=""):
        return sum(tf[k + suffix] for k in keys)

    jit_keys = ("jit_trace", "jit_compile")
    sk_keys = ("capture", "print", "parse", "sk_trace", "sk_compile")
    front_keys = sk_keys[:-1]
    ratio, ratio_wall = total(sk_keys, "/cpu") / total(jit_keys, "/cpu"), total(sk_keys) / total(jit_keys)
    front_ratio = total(front_keys, "/cpu") / tf["jit_trace/cpu"]

    def ms(seconds):
        return f"{1000 * seconds:,.0f} ms"

    def times(key=None, keys=None, source=tf):
        keys = keys or (key,)
        return ms(sum(source[k] for k in keys)), ms(sum(source[k + "/cpu"] for k in keys))

    def verdict(ok):
        return "met" if ok else "MISSED"

    model = (f"{opts.layers}-layer transformer step (d={opts.d_model}, seq={opts.seq}, batch={opts.batch}, "
             f"adam): {int(tf['ops']):,} ops, {tf['text_kb']:,.0f} KiB of IR text")
    return [
        ("jax.jit: trace (`.lower`)", *times("jit_trace"), "", model),
        ("jax.jit: XLA compile", *times("jit_compile"), "", ""),
        ("**jax.jit: trace + compile**", *times(keys=jit_keys), "", "the baseline"),
        ("shardkit: capture", *times("capture"), "", "jaxpr -> Graph"),
        ("shardkit: print", *times("print"), "", "`str(graph)`"),
        ("shardkit: parse", *times("parse"), "", "`sk.ir.parse(text)`"),
        ("shardkit: lower (interpret under jit)", *times("sk_trace"), "", "`sk.lower(g).lower(*args)`"),
        ("shardkit: XLA compile", *times("sk_compile"), "", ""),
        ("**shardkit: capture + print + parse + lower + compile**", *times(keys=sk_keys),
         f"< {TARGET_RATIO:.2f}x", f"**{ratio:.2f}x** jax.jit in CPU time ({ratio_wall:.2f}x wall): "
                                  f"{verdict(ratio < TARGET_RATIO)}"),
        ("shardkit front end alone: capture + print + parse + lower", *times(keys=front_keys), "",
         f"{front_ratio:.2f}x jax.jit's trace alone (CPU time; neither includes XLA compile)"),
        (f"{opts.ops:,}-op chain: `str(g)`", *times("print", source=chain), f"< {TARGET_TEXT_SECONDS:.0f} s",
         f"{chain['text_kb']:,.0f} KiB of text: {verdict(chain['print/cpu'] < TARGET_TEXT_SECONDS)} "
         f"in CPU time, {verdict(chain['print'] < TARGET_TEXT_SECONDS)} in wall time"),
        (f"{opts.ops:,}-op chain: `sk.ir.parse(text)`", *times("parse", source=chain),
         f"< {TARGET_TEXT_SECONDS:.0f} s", f"{verdict(chain['parse/cpu'] < TARGET_TEXT_SECONDS)} in CPU time, "
                                          f"{verdict(chain['parse'] < TARGET_TEXT_SECONDS)} in wall time"),
    ]


COLUMNS = (("measurement", "left"), ("wall (median)", "right"), ("CPU (median)", "right"), ("target", "right"),
           ("notes", "left"))


def print_table(rows, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name, justify in COLUMNS:
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*(cell.replace("**", "").replace("`", "") for cell in row))
    Console(width=150).print(table)


def write_markdown(path: Path, rows, title: str, command: str) -> None:
    import jax

    lines = [f"# {title}", "", f"Made by `{command}` (median of the timed repeats after a warm-up run).", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
             f"JAX {jax.__version__}, backend {jax.default_backend()}.", "",
             "Targets are judged on CPU time (all threads of this process), which a busy shared machine "
             "disturbs far less than wall time; both are shown.", "",
             "| " + " | ".join(name for name, _ in COLUMNS) + " |",
             "|" + "|".join("---:" if justify == "right" else "---" for _, justify in COLUMNS) + "|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    opts = parse_args(argv)
    import shardkit as sk

    make_step, args = transformer_program(opts.layers, opts.d_model, opts.heads, opts.seq, opts.batch,
                                          opts.vocab)
    chain_fn, chain_args = chain_program(opts.ops)
    chain_graph = sk.capture(chain_fn, *chain_args)
    if opts.profile:
        profile_stage(opts.profile, make_step, args, chain_graph)
        return 0
    small_step, small_args = transformer_program(1, opts.d_model, opts.heads, opts.seq, opts.batch, opts.vocab)
    tf = median_runs(lambda i: transformer_once(make_step, args, shardkit_first=bool(i % 2)), opts.repeats,
                     warm_up=lambda: transformer_once(small_step, small_args))  # a 1-layer model warms every path
    chain = median_runs(lambda i: chain_once(chain_graph), opts.repeats)
    rows = report_rows(tf, chain, opts)
    title = "shardkit capture overhead"
    print_table(rows, title)
    if not opts.no_write:
        command = "python benchmarks/capture.py" + "".join(" " + shlex.quote(a) for a in
                                                           (sys.argv[1:] if argv is None else argv))
        write_markdown(opts.out, rows, title, command)
        print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
