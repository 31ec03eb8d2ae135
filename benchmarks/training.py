"""Benchmark: the demo model's train step under each model-state plan, shardkit vs hand-written.

For every plan, `sk.train.Trainer` builds its step through `sk.jit` (plan -> specs and hints ->
propagation -> XLA). The baseline is the same flax+optax step written by hand with
`jax.lax.with_sharding_constraint` where the plan puts hints and `jax.jit(in_shardings=,
out_shardings=)` with the same shardings; it returns the same metrics (the loss and the loss
function's other metrics). Both run the same batches on the same 8 simulated CPU devices,
alternating step by step; the table reports median step times, their ratio, per-device memory of the
compiled programs (arguments + outputs + temporaries, from XLA's memory analysis) and per-device
bytes of the model state, and whether both give the same loss. Results go to
benchmarks/results/training.md.

    python benchmarks/training.py [--steps 20] [--repeats 3] [--plans dp,fsdp,fsdp+tp]
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

import shardkit as sk  # noqa: E402
from shardkit.hlo import collectives_from_hlo  # noqa: E402
from shardkit.train import TextBatches, Trainer  # noqa: E402
from shardkit.train.lm import CharTokenizer, GPTConfig, TinyGPT, load_corpus, lm_loss  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "training.md"
PLANS = ("dp", "zero1", "zero2", "fsdp", "megatron", "fsdp+tp")


def handwritten(trainer: Trainer, optimizer):
    """The plain flax+optax+jax.jit step with the trainer's shardings, written without shardkit."""
    mesh, graphdef = trainer.mesh, trainer.graphdef
    named = lambda specs: jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs,
                                                 is_leaf=lambda x: isinstance(x, PartitionSpec))
    constrain = lambda tree, specs: jax.tree_util.tree_map(
        lambda x, s: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, s)), tree, specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec))

    def step(params, opt_state, rest, batch):
        def loss_of(p):
            model = nnx.merge(graphdef, constrain(p, trainer.compute_specs), rest)
            return lm_loss(model, batch)
        (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        grads = constrain(grads, trainer.grad_specs)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **metrics}

    batch_sharding = NamedSharding(mesh, trainer.batch_spec)
    in_shardings = (named(trainer.param_specs), named(trainer.opt_specs), named(trainer.rest_specs),
                    {"inputs": batch_sharding, "targets": batch_sharding})
    out_shardings = (named(trainer.param_specs), named(trainer.opt_specs), NamedSharding(mesh, PartitionSpec()))
    return jax.jit(step, in_shardings=in_shardings, out_shardings=out_shardings)


def memory(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - getattr(m, "alias_size_in_bytes", 0))


def collectives(compiled, mesh) -> Counter:
    """(kind, axes) -> [count, bytes per device] of the collectives XLA compiled."""
    out = Counter()
    for c in collectives_from_hlo(compiled.as_text(), mesh):
        out[(c.kind, c.axes, "n")] += 1
        out[(c.kind, c.axes, "bytes")] += round(c.bytes)
    return out


def collectives_cell(ours: Counter, base: Counter) -> str:
    """'same (N)' when both programs compiled the same collectives, else what differs."""
    if ours == base:
        return f"same ({sum(v for (_, _, what), v in ours.items() if what == 'n')})"
    diffs = []
    for kind, axes, what in sorted(set(ours) | set(base)):
        if what == "n" and ours[(kind, axes, what)] != base[(kind, axes, what)]:
            diffs.append(f"{kind}/{'+'.join(axes)} {ours[(kind, axes, what)]} vs {base[(kind, axes, what)]}")
        elif what == "bytes" and ours[(kind, axes, what)] != base[(kind, axes, what)]:
            diffs.append(f"{kind}/{'+'.join(axes)} {ours[(kind, axes, what)]:,} B vs {base[(kind, axes, what)]:,} B")
    return "; ".join(diffs)


def state_bytes(tree) -> int:
    return sum(x.addressable_shards[0].data.nbytes for x in jax.tree_util.tree_leaves(tree))


def run(plans, steps: int, repeats: int) -> list[dict]:
    text = load_corpus()
    tok = CharTokenizer(text)
    cfg = GPTConfig(tok.vocab_size)
    data = TextBatches(tok.encode(text), 32, cfg.seq_len)
    mesh = sk.make_mesh({"data": 4, "model": 2})
    make = nnx.jit(lambda: TinyGPT(cfg, nnx.Rngs(0)))
    rows = []
    for plan in plans:
        optimizer = optax.adamw(3e-3)
        trainer = Trainer(make(), optimizer, lm_loss, mesh=mesh, plan=plan)
        t0 = time.perf_counter()
        ours = trainer.compile(data(0))
        ours_compile = time.perf_counter() - t0
        base_fn = handwritten(trainer, optimizer)
        params, opt_state, rest = trainer.state.params, trainer.state.opt_state, trainer.state.rest
        batches = [trainer.shard_batch(data(i)) for i in range(steps)]
        t0 = time.perf_counter()
        base = base_fn.lower(params, opt_state, rest, batches[0]).compile()
        base_compile = time.perf_counter() - t0
        ours_times, base_times = [], []
        base_state = (params, opt_state)
        ours_losses, base_losses = [], []

        def run_ours(batch):
            t0 = time.perf_counter()
            loss = trainer.step(batch)["loss"]
            jax.block_until_ready(loss)
            ours_times.append(time.perf_counter() - t0)
            return loss

        def run_base(batch):
            nonlocal base_state
            t0 = time.perf_counter()
            p, o, metrics = base(*base_state, rest, batch)
            jax.block_until_ready(metrics["loss"])
            base_times.append(time.perf_counter() - t0)
            base_state = (p, o)
            return metrics["loss"]

        # steps alternate between the two programs (which one goes first alternates too), so load
        # from other processes on the machine falls on both alike
        for r in range(repeats):
            for i, batch in enumerate(batches):
                if i % 2:
                    base_loss, ours_loss = run_base(batch), run_ours(batch)
                else:
                    ours_loss, base_loss = run_ours(batch), run_base(batch)
                if r == 0:
                    ours_losses.append(float(ours_loss))
                    base_losses.append(float(base_loss))
        ours_ms = statistics.median(ours_times) * 1e3
        base_ms = statistics.median(base_times) * 1e3
        loss_diff = max(abs(a - b) for a, b in zip(ours_losses, base_losses))
        rows.append({
            "plan": plan, "ours_ms": ours_ms, "base_ms": base_ms, "ratio": ours_ms / base_ms,
            "ours_mem": memory(ours), "base_mem": memory(base),
            "state": state_bytes((trainer.state.params, trainer.state.opt_state)),
            "base_state": state_bytes(base_state), "loss_diff": loss_diff,
            "ours_compile": ours_compile, "base_compile": base_compile,
            "collectives": collectives_cell(collectives(ours, mesh), collectives(base, mesh)),
        })
        print(f"{plan}: shardkit {ours_ms:.1f} ms, hand-written {base_ms:.1f} ms", file=sys.stderr, flush=True)
    return rows


HEADER = ("plan", "shardkit ms/step", "hand-written ms/step", "time ratio", "shardkit mem/device",
          "hand-written mem/device", "mem ratio", "compiled collectives", "state/device (both)",
          "max |loss diff|", "compile s (sk / hand)")


def cells(row) -> list[str]:
    same_state = "" if row["state"] == row["base_state"] else f" vs {row['base_state']:,}"
    return [row["plan"], f"{row['ours_ms']:.1f}", f"{row['base_ms']:.1f}", f"{row['ratio']:.3f}",
            f"{row['ours_mem']:,} B", f"{row['base_mem']:,} B", f"{row['ours_mem'] / row['base_mem']:.3f}",
            row["collectives"],
            f"{row['state']:,} B{same_state}", f"{row['loss_diff']:.1e}",
            f"{row['ours_compile']:.1f} / {row['base_compile']:.1f}"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--plans", default=",".join(PLANS), help="comma-separated plans")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/training.md")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    rows = run(args.plans.split(","), args.steps, args.repeats)
    from rich.console import Console
    from rich.table import Table
    table = Table(title="train step per plan: shardkit (sk.train.Trainer) vs hand-written flax+optax+jax.jit")
    for col in HEADER:
        table.add_column(col, justify="left" if col == "plan" else "right")
    for row in rows:
        table.add_row(*cells(row))
    Console().print(table)
    if not args.no_write:
        command = "python benchmarks/training.py " + " ".join(argv if argv is not None else sys.argv[1:])
        lines = [
            "# Train step per model-state plan: shardkit vs hand-written", "",
            f"Command: `{command.strip()}`  ",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, JAX {jax.__version__}, "
            f"8 simulated CPU devices, mesh data=4 x model=2; demo model (TinyGPT, "
            f"{args.steps} steps x {args.repeats} repeats, batch 32 x 64 tokens, AdamW).", "",
            "Time ratio = shardkit / hand-written median step time (target: within 5%); the two "
            "programs alternate step by step. Memory per device is XLA's memory analysis of each "
            "compiled step (arguments + outputs + temporaries); compiled collectives says whether XLA "
            "compiled the same collectives (kind, mesh axes, count and bytes) for both steps; "
            "state/device is the params + optimizer state each device holds. "
            f"Load average (1 min) before / after the run: {load[0]:.1f} / {os.getloadavg()[0]:.1f} "
            "(other processes share the CPU cores, so time ratios carry that noise).", "",
            "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER),
        ]
        lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(lines) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
