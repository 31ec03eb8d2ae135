"""Functional differentiation: shardkit.functional (this JAX) side by side with AutoFD.

AutoFD (PyPI `autofd` 0.0.9) runs only on JAX 0.5.x, so it runs in its own virtual environment,
which this script creates on first use (never mixing JAX versions in one process), as a subprocess
that runs the same functional programs on the same grids and prints its measurements as JSON.

For each functional F and function f it measures: building the gradient `jax.grad(F)(f)` (first
and warm), the gradient function's first call at a point (compilation included) and its
steady-state call, a jitted vmap of it over 256 points (first and steady), and the largest
difference between the two libraries' gradients at those points. The neural-operator workload
trains a two-layer kernel integral operator by functional gradient descent (its kernel and bias
*are* functions, updated symbolically) and times each of 5 steps.

    python benchmarks/functional.py                  # full run, writes benchmarks/results/functional.md
    python benchmarks/functional.py --quick          # smaller grids and chain
    python benchmarks/functional.py --no-autofd      # shardkit only
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AUTOFD_REQUIREMENTS = ["autofd==0.0.9", "jax==0.5.3", "jaxlib==0.5.3", "absl-py"]


def config(quick: bool) -> dict:
    return {"line": 1000 if quick else 4000, "sobolev": 4000 if quick else 8000,
            "cube": 10 if quick else 16, "chain": 8 if quick else 16, "steps": 3 if quick else 5,
            "operator_grid": 50 if quick else 100, "repeats": 50 if quick else 200,
            "budget": 600 if quick else 1800}


# -- the same programs, written for both libraries -----------------------------------------------------
# Grids are midpoint rules computed with numpy on both sides; `points` are where gradients are compared.

COMMON = r'''
import json, statistics, sys, time
import numpy as np
import jax, jax.numpy as jnp

def midpoint(lo, hi, n):
    h = (hi - lo) / n
    return (lo + h * (np.arange(n) + 0.5)).astype(np.float32), np.full((n,), h, np.float32)

def cube(n):
    x, w = midpoint(-3.0, 3.0, n)
    g = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1).reshape(-1, 3)
    ww = (w[:, None, None] * w[None, :, None] * w[None, None, :]).reshape(-1)
    return g.astype(np.float32), ww.astype(np.float32)

C_X = 0.75 * (3 / np.pi) ** (1 / 3)
POINTS_1D = np.linspace(-2.0, 2.0, 256).astype(np.float32) + 0.0037
POINTS_3D = (np.random.default_rng(0).uniform(-1.5, 1.5, (256, 3))).astype(np.float32)

def timed(fn):
    t = time.perf_counter(); out = fn(); jax.block_until_ready(out); return out, time.perf_counter() - t

def steady(call, repeats, blocks=5):
    """(best block median, overall median) of `repeats` timed calls in `blocks` blocks: a block
    median is robust to single slow calls, and the best block to stretches where other processes
    load the machine (a thread handoff then costs tens of microseconds)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); jax.block_until_ready(call()); times.append(time.perf_counter() - t)
    size = max(1, repeats // blocks)
    medians = [statistics.median(times[i:i + size]) for i in range(0, len(times) - size + 1, size)]
    return min(medians), statistics.median(times)

def compiled_size(jitted, *args):
    """What XLA runs per call of a jitted function: its cost-model flops and its kernels (the
    instructions of the optimized entry computation, fusions included, bar parameters/constants)."""
    compiled = jitted.lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    entry = compiled.as_text().split("ENTRY", 1)[1].split("\n}", 1)[0]
    skip = (" parameter(", " constant(", " tuple(", " get-tuple-element(", " bitcast(")
    kernels = sum(1 for line in entry.splitlines()[1:] if " = " in line and not any(k in line for k in skip))
    return {"xla_flops": float(cost.get("flops", 0.0)), "xla_kernels": kernels}

def dispatch_floor(points, repeats):
    """Steady time of a trivial jitted call (x * 2 on the same 256 points): this JAX's per-call floor."""
    xs = jnp.asarray(points)
    double = jax.jit(lambda x: x * 2.0)
    jax.block_until_ready(double(xs))
    return steady(lambda: double(xs), repeats)[0]

def finish(results, cfg, operator):
    """Add the dispatch floor and (unless turned off) the neural-operator run to a side's results."""
    results["floor"] = dispatch_floor(POINTS_3D, cfg["repeats"])
    if cfg.get("operator", True):
        results["operator"] = operator(cfg)
    return results

def measure(name, F, f, points, repeats, results):
    entry = {}
    F_value, entry["value_s"] = timed(lambda: F(f))
    g, entry["build"] = timed(lambda: jax.grad(F)(f))
    _, entry["build_warm"] = timed(lambda: jax.grad(F)(f))
    x0 = jnp.asarray(points[0])
    _, entry["first_call"] = timed(lambda: g(x0))
    # a different point array each call, so no library can answer from a cache of earlier calls
    singles = [jnp.asarray(p) for p in points]
    count = iter(range(1 << 30))
    entry["steady_call"], entry["steady_call_median"] = steady(
        lambda: g(singles[next(count) % len(singles)]), repeats)
    batched = jax.jit(jax.vmap(g))
    xs = jnp.asarray(points)
    values, entry["batch_first"] = timed(lambda: batched(xs))
    entry["batch_steady"], entry["batch_steady_median"] = steady(lambda: batched(xs), repeats)
    entry.update(compiled_size(batched, xs))
    entry["F"] = float(F_value)
    entry["gradient"] = np.asarray(values, np.float64).tolist()
    results[name] = entry
'''

SHARDKIT = COMMON + r'''
from shardkit import functional as fn

def run(cfg):
    results, R = {}, cfg["repeats"]
    line = fn.Grid(*midpoint(-6.0, 6.0, cfg["line"]))
    neg_sq = fn.function(lambda x: -x ** 2, [()])
    measure("exp", lambda f: fn.integrate(fn.compose(jnp.exp, f), line), neg_sq, POINTS_1D, R, results)

    wide = fn.Grid(*midpoint(-20 * np.pi, 20 * np.pi, cfg["sobolev"]))
    sin = fn.function(jnp.sin, [()])
    measure("sobolev", lambda f: fn.integrate(f ** 2 + fn.nabla(f) ** 2, wide), sin, POINTS_1D, R, results)

    grid3 = fn.Grid(*cube(cfg["cube"]))
    rho = fn.function(lambda r: jnp.exp(-jnp.sum(r ** 2)), [(3,)])
    measure("lda", lambda rho: -C_X * fn.integrate(rho ** (4 / 3), grid3), rho, POINTS_3D, R, results)
    kinetic = lambda g, p: jnp.sum(g ** 2) / p / 8
    measure("vw", lambda rho: fn.integrate(fn.compose(kinetic, fn.nabla(rho), rho), grid3), rho,
            POINTS_3D, R, results)

    def chain(f):
        for _ in range(cfg["chain"]):
            f = fn.compose(jnp.sin, f)
        return f
    measure("chain", lambda f: fn.integrate(chain(f), line), neg_sq, POINTS_1D, R, results)
    return finish(results, cfg, operator)

def operator(cfg):
    n = cfg["operator_grid"]
    nodes = ((np.arange(n) + 0.5) / n).astype(np.float32)
    grid = fn.Grid(jnp.asarray(nodes), jnp.full((n,), 1.0 / n, jnp.float32))
    f = fn.function(lambda x: jnp.sin(4 * x * jnp.pi), [()])
    b = fn.function(lambda x: jnp.sin(x * jnp.pi), [()])
    y = fn.function(lambda x: jnp.cos(x * jnp.pi), [()])
    k = fn.function(lambda y, x: jnp.sin(y) + jnp.cos(x), [(), ()])

    def layer(k, b, u, activate):
        g = fn.integrate(k * fn.broadcast_args(u, [(), ()], (1,)), (None, grid)) + b
        return fn.compose(jnp.tanh, g) if activate else g

    def loss(params, u, y):
        k1, b1, k2, b2 = params
        return fn.integrate((layer(k2, b2, layer(k1, b1, u, True), False) - y) ** 2, grid)

    return train(loss, (k, b, k, b), f, y, cfg["steps"], cfg["budget"])
'''

AUTOFD = COMMON + r'''
from jaxtyping import Array, Float32
from autofd import function, Grid
import autofd.operators as o
from jax._src import ad_util
# AutoFD 0.0.9 calls ad_util.Zero.from_value, which JAX 0.5.3 names from_primal_value.
ad_util.Zero.from_value = staticmethod(ad_util.Zero.from_primal_value)
sys.setrecursionlimit(100000)

def run(cfg):
    results, R = {}, cfg["repeats"]
    x, w = midpoint(-6.0, 6.0, cfg["line"])
    @function
    def neg_sq(x: Float32[Array, ""]) -> Float32[Array, ""]:
        return -x ** 2
    neg_sq.grid = Grid((jnp.asarray(x),), (jnp.asarray(w),))
    measure("exp", lambda f: o.integrate(o.numpy.exp(f)), neg_sq, POINTS_1D, R, results)

    x2, w2 = midpoint(-20 * np.pi, 20 * np.pi, cfg["sobolev"])
    @function
    def sin(x: Float32[Array, ""]) -> Float32[Array, ""]:
        return jnp.sin(x)
    sin.grid = Grid((jnp.asarray(x2),), (jnp.asarray(w2),))
    measure("sobolev", lambda f: o.integrate(f ** 2 + o.nabla(f) ** 2), sin, POINTS_1D, R, results)

    g3, w3 = cube(cfg["cube"])
    @function
    def rho(r: Float32[Array, "3"]) -> Float32[Array, ""]:
        return jnp.exp(-jnp.sum(r ** 2))
    rho.grid = Grid((jnp.asarray(g3),), (jnp.asarray(w3),))
    measure("lda", lambda rho: -C_X * o.integrate(rho ** (4 / 3)), rho, POINTS_3D, R, results)
    @function
    def kinetic(g: Float32[Array, "3"], p: Float32[Array, ""]) -> Float32[Array, ""]:
        return jnp.sum(g ** 2) / p / 8
    measure("vw", lambda rho: o.integrate(o.compose(kinetic, o.nabla(rho), rho, share_inputs=True)),
            rho, POINTS_3D, R, results)

    @function
    def sin_(x: Float32[Array, ""]) -> Float32[Array, ""]:
        return jnp.sin(x)
    def chain(f):
        for _ in range(cfg["chain"]):
            f = o.compose(sin_, f)
        return f
    measure("chain", lambda f: o.integrate(chain(f)), neg_sq, POINTS_1D, R, results)
    return finish(results, cfg, operator)

def operator(cfg):
    n = cfg["operator_grid"]
    nodes = jnp.asarray(((np.arange(n) + 0.5) / n).astype(np.float32))
    weights = jnp.full((n,), 1.0 / n, jnp.float32)
    @function
    def f(x: Float32[Array, ""]) -> Float32[Array, ""]:
        return jnp.sin(4 * x * jnp.pi)
    @function
    def b(x: Float32[Array, ""]) -> Float32[Array, ""]:
        return jnp.sin(x * jnp.pi)
    @function
    def y(x: Float32[Array, ""]) -> Float32[Array, ""]:
        return jnp.cos(x * jnp.pi)
    @function
    def k(y: Float32[Array, ""], x: Float32[Array, ""]) -> Float32[Array, ""]:
        return jnp.sin(y) + jnp.cos(x)
    f.grid = Grid((nodes,), (weights,))
    k.grid = Grid((nodes, nodes), (weights, weights))

    def layer(k, b, u, activate):
        g = o.integrate(o.broadcast_arg(u, k, argnums=1) * k, argnums=1) + b
        return o.numpy.tanh(g) if activate else g

    def loss(params, u, y):
        k1, b1, k2, b2 = params
        return o.integrate((layer(k2, b2, layer(k1, b1, u, True), False) - y) ** 2)

    return train(loss, (k, b, k, b), f, y, cfg["steps"], cfg["budget"])
'''

TRAIN = r'''
def train(loss, params, u, y, steps, budget):
    """Functional gradient descent: each step takes the gradient (functions), updates the parameter
    functions symbolically and evaluates the new loss. Stops early when the next step would likely
    overrun `budget` seconds."""
    times, losses = [], [float(loss(params, u, y))]
    for _ in range(steps):
        if times and sum(times) + 5 * times[-1] > budget:  # steps here grow ~5x: stop before the budget
            break
        t = time.perf_counter()
        grads = jax.grad(loss)(params, u, y)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
        losses.append(float(loss(params, u, y)))
        times.append(time.perf_counter() - t)
    return {"step_times": times, "losses": losses}

if __name__ == "__main__":
    cfg = json.loads(sys.argv[1])
    print("RESULT " + json.dumps(run(cfg)))
'''


# -- running both sides -------------------------------------------------------------------------------------


def ensure_autofd_venv(path: Path) -> Path | None:
    """The AutoFD venv's python, creating the venv (JAX 0.5.3 + AutoFD 0.0.9) when missing."""
    python = path / "bin" / "python"
    check = [str(python), "-c", "import autofd, jax; assert jax.__version__.startswith('0.5')"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating the AutoFD environment in {path} ({', '.join(AUTOFD_REQUIREMENTS)}) ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *AUTOFD_REQUIREMENTS],
                       check=True)
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"could not install AutoFD: {e}")
        return None
    return python if subprocess.run(check, capture_output=True).returncode == 0 else None


def run_side(python: str, source: str, cfg: dict, env: dict, timeout: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "side.py"
        script.write_text(source + TRAIN)
        proc = subprocess.run([python, str(script), json.dumps(cfg)], capture_output=True, text=True,
                              env=env, timeout=timeout, cwd=tmp)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"benchmark side failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def side_env(pythonpath: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


# -- float64 references (closed forms on the same grids and points) -------------------------------------------


def references(cfg: dict) -> dict:
    """F on the grid and the exact functional derivative at the comparison points, in float64."""
    scope: dict = {}
    exec(COMMON, scope)  # the same grids and points as both sides
    midpoint, cube = scope["midpoint"], scope["cube"]
    p1 = np.asarray(scope["POINTS_1D"], np.float64)
    p3 = np.asarray(scope["POINTS_3D"], np.float64)
    c_x = scope["C_X"]
    out = {}
    x, w = (a.astype(np.float64) for a in midpoint(-6.0, 6.0, cfg["line"]))
    out["exp"] = (np.sum(w * np.exp(-x ** 2)), np.exp(-p1 ** 2))
    x, w = (a.astype(np.float64) for a in midpoint(-20 * np.pi, 20 * np.pi, cfg["sobolev"]))
    out["sobolev"] = (np.sum(w * (np.sin(x) ** 2 + np.cos(x) ** 2)), 4 * np.sin(p1))
    g, w = (a.astype(np.float64) for a in cube(cfg["cube"]))
    r2 = np.sum(g ** 2, axis=1)
    rho, rho_p = np.exp(-r2), np.exp(-np.sum(p3 ** 2, axis=1))
    out["lda"] = (-c_x * np.sum(w * rho ** (4 / 3)), -(3 / np.pi) ** (1 / 3) * rho_p ** (1 / 3))
    out["vw"] = (np.sum(w * r2 * rho / 2), (3 - np.sum(p3 ** 2, axis=1)) / 2)
    x, w = (a.astype(np.float64) for a in midpoint(-6.0, 6.0, cfg["line"]))
    value, grad, inner = -x ** 2, np.ones_like(p1), -p1 ** 2
    for _ in range(cfg["chain"]):
        grad, inner = grad * np.cos(inner), np.sin(inner)
        value = np.sin(value)
    out["chain"] = (np.sum(w * value), grad)
    return out


def _error(side: dict, ref) -> tuple[float, float]:
    """Largest gradient error (relative to the gradient's scale) and relative error of F."""
    F_ref, g_ref = ref
    g = np.asarray(side["gradient"], np.float64)
    scale = max(1.0, float(np.max(np.abs(g_ref))))
    return float(np.max(np.abs(g - g_ref)) / scale), abs(side["F"] - F_ref) / max(1.0, abs(F_ref))


# -- reporting ---------------------------------------------------------------------------------------------------


METRICS = [("build", "build gradient", "s"), ("build_warm", "build (warm)", "s"),
           ("first_call", "first call", "s"), ("steady_call", "steady call", "us"),
           ("batch_first", "jit(vmap) first", "s"), ("batch_steady", "jit(vmap) steady", "ms")]
SCALE = {"s": 1.0, "ms": 1e3, "us": 1e6}
SIZES = [("xla_flops", "jit(vmap) XLA flops"), ("xla_kernels", "jit(vmap) XLA kernels")]


def _fmt(value: float, unit: str) -> str:
    v = value * SCALE[unit]
    return f"{v:.3g} {unit}"


def report(ours: dict, theirs: dict | None, cfg: dict, command: str) -> str:
    from rich.console import Console
    from rich.table import Table

    refs = references(cfg)
    console = Console(record=True, width=140)
    lines = ["# Functional differentiation: shardkit.functional vs AutoFD", "",
             f"Command: `{command}`", "",
             f"shardkit.functional on this JAX; AutoFD 0.0.9 on JAX 0.5.3 in its own venv "
             f"(subprocess). CPU, one process each. Ratios are AutoFD time / shardkit time "
             f"(above 1: shardkit is faster). Errors are against closed forms evaluated in float64 on "
             f"the same grids and points (gradient errors relative to the gradient's scale), and "
             f"the two libraries' gradients are compared at 256 points.", ""]
    table = Table(title="functionals: time to build and to call the gradient function")
    table.add_column("functional")
    table.add_column("metric")
    table.add_column("shardkit", justify="right")
    table.add_column("AutoFD", justify="right")
    table.add_column("ratio", justify="right")
    md = ["| functional | metric | shardkit | AutoFD | ratio |", "|---|---|---:|---:|---:|"]
    for name in ("exp", "sobolev", "lda", "vw", "chain"):
        ours_e = ours[name]
        theirs_e = theirs.get(name) if theirs else None
        for key, label, unit in METRICS:
            a = ours_e[key]
            b = theirs_e[key] if theirs_e else None
            ratio = f"{b / a:.2f}x" if b else "-"
            row = [name, label, _fmt(a, unit), _fmt(b, unit) if b else "-", ratio]
            table.add_row(*row)
            md.append("| " + " | ".join(row) + " |")
        for key, label in SIZES:
            if key not in ours_e:
                continue  # raw measurements saved before this metric existed
            a, b = ours_e[key], theirs_e.get(key) if theirs_e else None
            ratio = "same" if b == a else (f"{b / a:.2f}x" if b and a else "-")
            row = [name, label, f"{a:.0f}", f"{b:.0f}" if b is not None else "-", ratio]
            table.add_row(*row)
            md.append("| " + " | ".join(row) + " |")
        ref = refs[name]
        rows = []
        eg, ef = _error(ours_e, ref)
        tg, tf = _error(theirs_e, ref) if theirs_e else (None, None)
        rows.append([name, "gradient error vs float64", f"{eg:.1e}", f"{tg:.1e}" if theirs_e else "-", ""])
        rows.append([name, "F error vs float64", f"{ef:.1e}", f"{tf:.1e}" if theirs_e else "-", ""])
        if theirs_e:
            g1, g2 = np.asarray(ours_e["gradient"]), np.asarray(theirs_e["gradient"])
            diff = float(np.max(np.abs(g1 - g2)) / max(1.0, float(np.max(np.abs(g2)))))
            rows.append([name, "gradients: shardkit vs AutoFD", f"{diff:.1e}", "", "equal" if diff < 1e-5
                         else "differ"])
        for i, row in enumerate(rows):
            table.add_row(*row, end_section=i == len(rows) - 1)
            md.append("| " + " | ".join(row) + " |")
    if "floor" in ours:
        a, b = ours["floor"], theirs.get("floor") if theirs else None
        row = ["(none)", "dispatch floor: jit(x * 2)", _fmt(a, "us"), _fmt(b, "us") if b else "-",
               f"{b / a:.2f}x" if b else "-"]
        table.add_row(*row)
        md.append("| " + " | ".join(row) + " |")
    console.print(table)

    op_table = Table(title=f"neural operator: functional gradient descent, step time ({cfg['steps']} steps)")
    op_table.add_column("step")
    op_table.add_column("shardkit", justify="right")
    op_table.add_column("AutoFD", justify="right")
    op_table.add_column("ratio", justify="right")
    op_table.add_column("loss (shardkit / AutoFD)", justify="right")
    md += ["", f"Neural operator (two kernel-integral layers, {cfg['operator_grid']}-point grid): "
               f"functional gradient descent on the kernel and bias functions; time per step "
               f"(gradient, symbolic update, new loss).", "",
           "| step | shardkit | AutoFD | ratio | loss shardkit | loss AutoFD |", "|---|---:|---:|---:|---:|---:|"]
    ours_op = ours["operator"]
    theirs_op = theirs.get("operator") if theirs else None
    stopped = f"not run (would exceed the {cfg['budget']} s budget)"
    for i, t in enumerate(ours_op["step_times"]):
        b = theirs_op["step_times"][i] if theirs_op and i < len(theirs_op["step_times"]) else None
        l1 = ours_op["losses"][i + 1]
        l2 = theirs_op["losses"][i + 1] if theirs_op and i + 1 < len(theirs_op["losses"]) else None
        b_text = _fmt(b, "s") if b else (stopped if theirs_op else "-")
        ratio = f"{b / t:.1f}x" if b else "-"
        loss_text = f"{l1:.6f} / {l2:.6f}" if l2 is not None else f"{l1:.6f}"
        op_table.add_row(str(i + 1), _fmt(t, "s"), b_text, ratio, loss_text)
        md.append(f"| {i + 1} | {_fmt(t, 's')} | {b_text} | {ratio} | {l1:.6f} | "
                  f"{f'{l2:.6f}' if l2 is not None else '-'} |")
    console.print(op_table)
    if theirs is None:
        md += ["", "AutoFD was not run (--no-autofd, or its environment could not be installed)."]
    elif theirs_op and theirs_op.get("reused_from"):
        md += ["", f"AutoFD's neural-operator step times and losses are from an earlier full run "
                   f"(`{theirs_op['reused_from']}`, same configuration; its 5 steps take about 25 "
                   f"minutes); everything else was measured in this run."]
    md += ["", "Notes: AutoFD 0.0.9's broadcast_arg JVP calls `ad_util.Zero.from_value`, missing in JAX "
               "0.5.3; the AutoFD side aliases it to `from_primal_value` so its own neural-operator "
               "example runs. Steady calls are single-point calls of the gradient function, each at a "
               "different point array (so no cache of earlier calls can answer); jit(vmap) times are the compiled gradient over 256 points. Steady times are the "
               f"best of 5 block medians of {cfg['repeats']} calls (the JSON also has the overall "
               "medians), the same on both sides. XLA flops (its cost model) and kernels (instructions of the "
               "optimized entry computation) describe the program each jit(vmap) call runs: equal "
               "numbers mean both libraries hand XLA the same computation, and the time left is "
               "per-call dispatch, shown on its own by the dispatch floor row (a trivial jitted "
               "call on each side's JAX). At these sizes the CPU client runs a program inline "
               "only when its cost-model flops are under 1000, and otherwise hands it to a worker "
               "thread, whose wake-up time depends on the machine's load."]
    return "\n".join(lines + md) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller grids, shorter chain, 3 steps")
    parser.add_argument("--no-autofd", action="store_true", help="run shardkit only")
    parser.add_argument("--venv", default="/tmp/shardkit-autofd-venv",
                        help="where the AutoFD virtual environment lives (created if missing)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per side")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "functional.md"))
    parser.add_argument("--from-json", action="store_true",
                        help="rebuild the report from the saved raw measurements (no runs)")
    parser.add_argument("--reuse-autofd-operator", action="store_true",
                        help="run everything but AutoFD's neural-operator steps (about 25 minutes), "
                             "taking those from the saved raw measurements (the report says so)")
    args = parser.parse_args(argv)
    cfg = config(args.quick)
    command = "python benchmarks/functional.py" + (" --quick" if args.quick else "") + \
        (" --no-autofd" if args.no_autofd else "") + \
        (" --reuse-autofd-operator" if args.reuse_autofd_operator else "")

    out = Path(args.out)
    raw = out.with_suffix(".json")
    if args.from_json:
        saved = json.loads(raw.read_text())
        ours, theirs, cfg, command = saved["shardkit"], saved["autofd"], saved["config"], saved["command"]
    else:
        print("running shardkit.functional ...", flush=True)
        ours = run_side(sys.executable, SHARDKIT, cfg, side_env(None), args.timeout)
        theirs = None
        if not args.no_autofd:
            saved_operator = None
            if args.reuse_autofd_operator:
                saved = json.loads(raw.read_text())
                if saved.get("config") != cfg or not (saved.get("autofd") or {}).get("operator"):
                    raise SystemExit(f"--reuse-autofd-operator: {raw} holds no AutoFD operator run "
                                     f"with this configuration; run without the flag")
                saved_operator = dict(saved["autofd"]["operator"], reused_from=saved["command"])
            python = ensure_autofd_venv(Path(args.venv))
            if python is not None:
                print("running AutoFD ...", flush=True)
                theirs = run_side(str(python), AUTOFD, dict(cfg, operator=saved_operator is None),
                                  side_env(None), args.timeout)
                if saved_operator is not None:
                    theirs["operator"] = saved_operator
        out.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps({"shardkit": ours, "autofd": theirs, "config": cfg,
                                   "command": command}))
    text = report(ours, theirs, cfg, command)
    out.write_text(text)
    print(f"wrote {out} (raw measurements: {raw})")


if __name__ == "__main__":
    main()
