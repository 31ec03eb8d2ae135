"""Sharding propagation against XLA's: the corpus of benchmarks/corpus.py on a 4x2 mesh (data, model).

For every model, with hints (in_specs) only on inputs and parameters, three programs are compiled side
by side in this process:

- **plain**: `jax.jit(fn, in_shardings=...)`, XLA's own propagation from the same input shardings;
- **sk.jit**: shardkit's propagation, every value constrained to the sharding it chose;
- **expert**: `jax.jit` of a hand-annotated twin with `with_sharding_constraint` at the right places.

It reports, from each compiled HLO (shardkit.hlo.collectives_from_hlo), the per-device bytes on the wire
of the collectives (ring model) and their number, and the step time (median of `--repeats` calls, the
three programs interleaved; CPU time of this process, which a busy machine disturbs less than wall
time), as ratios to plain. It also compares explain's predicted bytes with what XLA compiled for sk.jit.
Targets: sk.jit never moves more bytes than plain, nor more than 1.05x the expert; the prediction is
within 10% of the compiled bytes.

    python benchmarks/propagation.py                       # every model, writes results/propagation.md
    python benchmarks/propagation.py --models moe mlp-fsdp --repeats 3 --no-write
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if "--help" not in sys.argv and "-h" not in sys.argv:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import BUILDERS, Case, build_corpus, in_shardings, place  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "propagation.md"
TARGET_VS_EXPERT = 1.05
TARGET_PREDICTION = 0.10


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare shardkit's sharding propagation (sk.jit) with plain jax.jit and a hand-annotated "
                    "expert version on the propagation corpus: collective bytes and counts from the compiled "
                    "HLO, step time, and explain's predicted bytes.",
        epilog="Writes a markdown table (with the command that made it) to --out.")
    parser.add_argument("--models", nargs="+", choices=list(BUILDERS), help="models to run (default: all)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per program; the median is "
                                                               "reported (default 7)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"markdown file (default {RESULTS})")
    parser.add_argument("--no-write", action="store_true", help="print the table but write no file")
    return parser.parse_args(argv)


@dataclass
class Program:
    """One compiled program: how to call it, and the collectives XLA put in it."""

    call: object
    args: tuple
    collectives: list
    compile_seconds: float
    times: list

    @property
    def bytes(self) -> float:
        return sum(c.bytes for c in self.collectives)


def _time_once(program: Program) -> None:
    import jax
    start = time.process_time()
    jax.block_until_ready(program.call(*program.args))
    program.times.append(time.process_time() - start)


def compile_programs(case: Case, mesh) -> tuple[dict[str, Program], list]:
    """The three programs for one model, compiled, and explain's predicted collectives for sk.jit."""
    import jax

    import shardkit as sk
    from shardkit.hlo import collectives_from_hlo
    from shardkit.ir import MeshShape
    from shardkit.passes.communication import graph_collectives

    placed = place(mesh, case)
    shardings = in_shardings(mesh, case)
    programs = {}
    for name, fn in (("plain", case.fn), ("expert", case.expert)):
        start = time.perf_counter()
        compiled = jax.jit(fn, in_shardings=shardings).lower(*placed).compile()
        programs[name] = Program(compiled, placed, collectives_from_hlo(compiled.as_text(), mesh),
                                 time.perf_counter() - start, [])
    start = time.perf_counter()
    jf = sk.jit(case.fn, mesh=mesh, in_specs=case.in_specs)
    build = jf.build(*case.args)
    compiled = jf.lower(*case.args).compile()
    flat = [jax.device_put(x, s) for x, s in
            zip(jax.tree_util.tree_leaves((case.args, {})), build.lowered.in_shardings)]
    programs["sk"] = Program(compiled, tuple(flat), collectives_from_hlo(compiled.as_text(), mesh),
                             time.perf_counter() - start, [])
    predicted = graph_collectives(build.graph, MeshShape.of(mesh))  # what sk.explain reports
    return programs, predicted


def measure(case: Case, mesh, repeats: int) -> dict:
    programs, predicted = compile_programs(case, mesh)
    for program in programs.values():  # warm-up call
        _time_once(program)
        program.times.clear()
    for _ in range(repeats):
        for program in programs.values():
            _time_once(program)
    return {"case": case, "programs": programs, "predicted": predicted}


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return 1.0 if a == 0 else float("inf")
    return a / b


def _fmt_ratio(r: float) -> str:
    return "inf" if r == float("inf") else f"{r:.2f}x"


def report_rows(results: list[dict]) -> tuple[list[tuple], list[str]]:
    rows, missed = [], []
    for r in results:
        case, p = r["case"], r["programs"]
        plain, sk_, expert = p["plain"], p["sk"], p["expert"]
        t = {name: statistics.median(prog.times) for name, prog in p.items()}
        predicted = sum(c.bytes for c in r["predicted"])
        vs_plain, vs_expert = _ratio(sk_.bytes, plain.bytes), _ratio(sk_.bytes, expert.bytes)
        prediction = _ratio(predicted, sk_.bytes)
        checks = []
        if sk_.bytes > plain.bytes * (1 + 1e-9):
            checks.append("more bytes than plain")
        if sk_.bytes > TARGET_VS_EXPERT * expert.bytes + 1e-9:
            checks.append(f"over {TARGET_VS_EXPERT}x expert")
        if abs(predicted - sk_.bytes) > TARGET_PREDICTION * max(predicted, sk_.bytes, 1.0):
            checks.append("prediction off by over 10%")
        missed += [f"{case.name}: {c}" for c in checks]
        rows.append((
            case.name,
            f"{plain.bytes:,.0f}", str(len(plain.collectives)),
            f"{sk_.bytes:,.0f}", str(len(sk_.collectives)), _fmt_ratio(vs_plain),
            f"{expert.bytes:,.0f}", str(len(expert.collectives)), _fmt_ratio(_ratio(expert.bytes, plain.bytes)),
            _fmt_ratio(vs_expert),
            f"{t['plain'] * 1e3:,.1f}", _fmt_ratio(_ratio(t["sk"], t["plain"])),
            _fmt_ratio(_ratio(t["expert"], t["plain"])),
            f"{predicted:,.0f}", _fmt_ratio(prediction),
            "met" if not checks else "MISSED: " + "; ".join(checks),
        ))
    return rows, missed


COLUMNS = (("model", "left"), ("plain bytes", "right"), ("plain #", "right"), ("sk bytes", "right"),
           ("sk #", "right"), ("sk/plain", "right"), ("expert bytes", "right"), ("expert #", "right"),
           ("expert/plain", "right"), ("sk/expert", "right"), ("plain step ms", "right"),
           ("sk step/plain", "right"), ("expert step/plain", "right"), ("predicted bytes", "right"),
           ("predicted/compiled", "right"), ("targets", "left"))


def print_table(rows, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name, justify in COLUMNS:
        table.add_column(name, justify=justify, overflow="fold", no_wrap=name == "model")
    for row in rows:
        table.add_row(*row)
    Console(width=220).print(table)


def write_markdown(path: Path, rows, results, title: str, command: str, repeats: int) -> None:
    import jax

    lines = [f"# {title}", "", f"Made by `{command}`.", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
             f"JAX {jax.__version__}, backend {jax.default_backend()}, 8 simulated devices as a 4x2 mesh "
             "(data, model).", "",
             "Bytes are per-device bytes on the wire of the collectives in each compiled HLO (ring model), "
             "`#` the number of collectives. *plain* is `jax.jit` with the same input shardings, *sk* is "
             "`sk.jit`, *expert* a hand-annotated `jax.jit` (`with_sharding_constraint` where an expert "
             "puts them). Step time is the median CPU time of "
             f"{repeats} calls (the three programs interleaved). *predicted* is `sk.explain`'s prediction "
             "for the sk.jit program. Targets: sk bytes <= plain, <= "
             f"{TARGET_VS_EXPERT}x expert; predicted within {TARGET_PREDICTION:.0%} of compiled.", "",
             "| " + " | ".join(name for name, _ in COLUMNS) + " |",
             "|" + "|".join("---:" if justify == "right" else "---" for _, justify in COLUMNS) + "|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines += ["", "Models:", ""]
    lines += [f"- **{r['case'].name}**: {r['case'].description}" for r in results]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    opts = parse_args(argv)
    import shardkit as sk

    mesh = sk.make_mesh({"data": 4, "model": 2})
    results = []
    for case in build_corpus(mesh, opts.models):
        start = time.perf_counter()
        results.append(measure(case, mesh, opts.repeats))
        print(f"{case.name}: {time.perf_counter() - start:.1f} s", flush=True)
    rows, missed = report_rows(results)
    title = "Sharding propagation: sk.jit against jax.jit and hand annotation"
    print_table(rows, title)
    print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    if not opts.no_write:
        command = "python benchmarks/propagation.py" + "".join(
            " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        write_markdown(opts.out, rows, results, title, command, opts.repeats)
        print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
