"""Benchmark: a FedAvg round (broadcast, local SGD steps inside map, weighted mean), shardkit vs DrJAX.

The same round is written with shardkit.federated and with DrJAX and compiled with jax.jit over a
mesh whose `clients` axis holds the placement. For 8, 64 and 512 clients on 8 simulated devices
the script checks both give the same numbers, times a round (median of interleaved runs) and
reads the collectives XLA compiled: the bytes a round communicates should be exactly the model
size times the number of placement-to-server transfers (the broadcast is free: the server model is
already on every device). Weak scaling: clients grow with devices (64 clients per device).
Writes benchmarks/results/federated.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
try:  # DrJAX logs a warning for every op it cannot place on a mesh axis
    from absl import logging as absl_logging  # noqa: E402
except ImportError:  # pragma: no cover
    absl_logging = None
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import shardkit as sk  # noqa: E402
import shardkit.federated as fed  # noqa: E402
from shardkit.hlo import collectives_from_hlo  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "federated.md"
FEATURES, HIDDEN, CLASSES = 32, 64, 10


def init_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"w1": jnp.asarray(rng.normal(size=(FEATURES, HIDDEN)) / np.sqrt(FEATURES), jnp.float32),
            "b1": jnp.zeros(HIDDEN, jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(HIDDEN, CLASSES)) / np.sqrt(HIDDEN), jnp.float32),
            "b2": jnp.zeros(CLASSES, jnp.float32)}


def loss_fn(params, x, y):
    hidden = jax.nn.relu(x @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"] + params["b2"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def client_update(params, xs, ys, lr: float = 0.1):
    """Local SGD: one step per leading slice of xs / ys."""
    def step(p, batch):
        g = jax.grad(loss_fn)(p, *batch)
        return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g), None
    return jax.lax.scan(step, params, (xs, ys))[0]


def rounds_for(clients: int, mesh):
    """The round written with shardkit.federated and with DrJAX (or None when DrJAX is missing)."""
    @fed.program(placements={"clients": clients}, mesh=mesh)
    def ours(params, xs, ys, sizes):
        local = fed.map(client_update, (fed.broadcast(params), xs, ys))
        return fed.weighted_mean(local, sizes)

    try:
        import drjax
    except ImportError:
        return ours, None

    @drjax.program(placements={"clients": clients})
    def theirs(params, xs, ys, sizes):
        local = drjax.map_fn(client_update, (drjax.broadcast(params, mesh=mesh), xs, ys), mesh=mesh)
        return drjax.reduce_weighted_mean(local, jax.tree_util.tree_map(lambda _: sizes, local))

    return ours, theirs


def make_inputs(clients: int, mesh, steps: int, batch: int):
    rng = np.random.default_rng(clients)
    placed = NamedSharding(mesh, P("clients"))
    xs = jax.device_put(jnp.asarray(rng.normal(size=(clients, steps, batch, FEATURES)), jnp.float32), placed)
    ys = jax.device_put(jnp.asarray(rng.integers(0, CLASSES, size=(clients, steps, batch)), jnp.int32), placed)
    sizes = jax.device_put(jnp.asarray(rng.integers(10, 100, size=(clients,)), jnp.float32), placed)
    params = jax.device_put(init_params(), NamedSharding(mesh, P()))
    return params, xs, ys, sizes


def timed(fns: dict, args, repeats: int) -> dict[str, tuple[float, float]]:
    """(median, mean of the fastest quarter) seconds per call; the functions are interleaved, in
    alternating order, so machine noise hits them alike."""
    samples = {name: [] for name in fns}
    order = list(fns.items())
    for _ in range(repeats):
        for name, fn in order:
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            samples[name].append(time.perf_counter() - start)
        order.reverse()
    best = lambda s: statistics.mean(sorted(s)[:max(1, len(s) // 4)])  # noqa: E731
    return {name: (statistics.median(s), best(s)) for name, s in samples.items()}


def communicated(fn, args, mesh) -> tuple[int, float, int, int]:
    """(number of collectives, per-device wire bytes, payload bytes, HLO instructions) of the compiled round."""
    text = fn.lower(*args).compile().as_text()
    found = collectives_from_hlo(text, mesh)
    n = mesh.devices.size
    payload = sum(c.bytes / (2 * (n - 1) / n) if c.kind == "all-reduce" else c.bytes for c in found)
    instructions = len(re.findall(r"^\s*(?:ROOT )?%\S+ = ", text, flags=re.M))
    return len(found), sum(c.bytes for c in found), int(round(payload)), instructions


def model_bytes(params) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))


def run(client_counts, steps: int, batch: int, repeats: int, weak_per_device: int):
    devices = jax.devices()
    mesh = sk.make_mesh({"clients": min(8, len(devices))})
    rows, weak = [], []
    for clients in client_counts:
        ours, theirs = rounds_for(clients, mesh)
        args = make_inputs(clients, mesh, steps, batch)
        fns = {"shardkit": jax.jit(ours)}
        if theirs is not None:
            fns["drjax"] = jax.jit(theirs)
        outs = {name: fn(*args) for name, fn in fns.items()}
        same = True
        if "drjax" in outs:
            same = all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in
                       zip(jax.tree_util.tree_leaves(outs["shardkit"]), jax.tree_util.tree_leaves(outs["drjax"])))
        times = timed(fns, args, repeats)
        count, wire, payload, instructions = communicated(fns["shardkit"], args, mesh)
        _, their_wire, _, their_instructions = (communicated(fns["drjax"], args, mesh) if "drjax" in fns
                                                else (0, float("nan"), 0, 0))
        rows.append(dict(clients=clients, same=same, ours=times["shardkit"], theirs=times.get("drjax", (float("nan"),) * 2),
                         collectives=count, wire=wire, their_wire=their_wire, payload=payload,
                         model=model_bytes(args[0]), transfers=1, hlo=instructions, their_hlo=their_instructions))
    for d in (1, 2, 4, 8):
        if d > len(devices):
            break
        sub = sk.make_mesh({"clients": d})
        clients = weak_per_device * d
        ours, theirs = rounds_for(clients, sub)
        args = make_inputs(clients, sub, steps, batch)
        fns = {"shardkit": jax.jit(ours)}
        if theirs is not None:
            fns["drjax"] = jax.jit(theirs)
        for fn in fns.values():
            jax.block_until_ready(fn(*args))
        times = timed(fns, args, repeats)
        weak.append(dict(devices=d, clients=clients, ours=times["shardkit"], theirs=times.get("drjax", (float("nan"),) * 2)))
    return rows, weak


def tables(rows, weak):
    main = Table(title="FedAvg round on 8 simulated CPU devices (mesh clients=8)")
    for col in ("clients", "same numbers", "shardkit ms", "drjax ms", "drjax / shardkit", "best: drjax / shardkit",
                "HLO instr. shardkit/drjax",
                "collectives", "payload B", "model B x transfers", "extra B", "wire B/device (shardkit)",
                "wire B/device (drjax)"):
        main.add_column(col, justify="right")
    for r in rows:
        main.add_row(f"{r['clients']:,}", "yes" if r["same"] else "NO", f"{r['ours'][0] * 1e3:.2f}",
                     f"{r['theirs'][0] * 1e3:.2f}", f"{r['theirs'][0] / r['ours'][0]:.2f}",
                     f"{r['theirs'][1] / r['ours'][1]:.2f}", f"{r['hlo']}/{r['their_hlo']}",
                     str(r["collectives"]),
                     f"{r['payload']:,}", f"{r['model'] * r['transfers']:,}",
                     f"{r['payload'] - r['model'] * r['transfers']:,}", f"{r['wire']:,.0f}", f"{r['their_wire']:,.0f}")
    scaling = Table(title="Weak scaling: clients grow with devices")
    for col in ("devices", "clients", "shardkit ms", "drjax ms", "drjax / shardkit", "best: drjax / shardkit",
                "shardkit vs 1 device"):
        scaling.add_column(col, justify="right")
    base = weak[0]["ours"][0] if weak else float("nan")
    for w in weak:
        scaling.add_row(str(w["devices"]), f"{w['clients']:,}", f"{w['ours'][0] * 1e3:.2f}",
                        f"{w['theirs'][0] * 1e3:.2f}", f"{w['theirs'][0] / w['ours'][0]:.2f}",
                        f"{w['theirs'][1] / w['ours'][1]:.2f}", f"{w['ours'][0] / base:.2f}x")
    return main, scaling


def markdown(rows, weak, command: str, steps: int, batch: int) -> str:
    lines = ["# Federated round: shardkit.federated vs DrJAX", "",
             f"Produced by `{command}` on CPython {platform.python_version()}, {platform.machine()}, "
             f"JAX {jax.__version__}, {os.cpu_count()} CPU cores simulating 8 devices. A FedAvg round: broadcast "
             f"the model ({FEATURES}-{HIDDEN}-{CLASSES} MLP), {steps} local SGD steps of batch {batch} inside map, "
             "weighted mean of the client models. Times are medians of interleaved runs; `drjax / shardkit` above 1 "
             "means shardkit is faster, `best` compares the means of the fastest quarter of the runs (on a "
             "shared, busy CPU the ratios move by several percent from run to run; the instruction counts of the "
             "compiled HLO are the noise-free comparison). `payload` is the sum of the compiled collectives' operand sizes; a round "
             "has one placement-to-server transfer (the weighted mean; the broadcast of a replicated server model "
             "moves nothing), so it should equal the model size; `extra` is the 4-byte total of the weights that "
             "the weighted mean also reduces. `wire` is per-device bytes under the ring model.", "",
             "| clients | same numbers | shardkit ms | drjax ms | drjax / shardkit | best: drjax / shardkit | "
             "HLO instructions shardkit / drjax | collectives | payload B | model B x transfers | extra B | "
             "wire B/device shardkit | wire B/device drjax |",
             "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['clients']:,} | {'yes' if r['same'] else 'NO'} | {r['ours'][0] * 1e3:.2f} | "
                     f"{r['theirs'][0] * 1e3:.2f} | {r['theirs'][0] / r['ours'][0]:.2f} | "
                     f"{r['theirs'][1] / r['ours'][1]:.2f} | {r['hlo']} / {r['their_hlo']} | "
                     f"{r['collectives']} | "
                     f"{r['payload']:,} | {r['model'] * r['transfers']:,} | "
                     f"{r['payload'] - r['model'] * r['transfers']:,} | {r['wire']:,.0f} | {r['their_wire']:,.0f} |")
    lines += ["", "## Weak scaling (clients grow with devices)", "",
              "| devices | clients | shardkit ms | drjax ms | drjax / shardkit | best: drjax / shardkit | "
              "shardkit vs 1 device |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    base = weak[0]["ours"][0] if weak else float("nan")
    for w in weak:
        lines.append(f"| {w['devices']} | {w['clients']:,} | {w['ours'][0] * 1e3:.2f} | {w['theirs'][0] * 1e3:.2f} | "
                     f"{w['theirs'][0] / w['ours'][0]:.2f} | {w['theirs'][1] / w['ours'][1]:.2f} | "
                     f"{w['ours'][0] / base:.2f}x |")
    lines += ["", "Simulated devices share the host's cores, so weak scaling here shows the cost of the round "
              "growing with the work, not the speed-up of real devices."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 64, 512], help="client counts to measure")
    parser.add_argument("--steps", type=int, default=5, help="local SGD steps per round")
    parser.add_argument("--batch", type=int, default=16, help="local batch size")
    parser.add_argument("--repeats", type=int, default=31, help="timed rounds per configuration")
    parser.add_argument("--weak-per-device", type=int, default=32, help="clients per device for weak scaling")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write the results file")
    args = parser.parse_args()
    if absl_logging is not None:
        absl_logging.set_verbosity(absl_logging.ERROR)
    rows, weak = run(args.clients, args.steps, args.batch, args.repeats, args.weak_per_device)
    console = Console(width=200)
    for table in tables(rows, weak):
        console.print(table)
    if not args.no_write:
        command = "python benchmarks/federated.py" + ("" if len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(markdown(rows, weak, command, args.steps, args.batch))
        console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
