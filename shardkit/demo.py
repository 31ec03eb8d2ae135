"""The `shardkit demo` job: train a small GPT-style language model on a mesh with a model-state plan.

It shows the plan (per-parameter layouts and every plan's memory and traffic side by side), the
captured IR of the train step (round-tripped through the printer and parser, and verified), the
collectives shardkit predicts next to those XLA compiled, and a differential check of the first
step against plain `jax.jit`; then it trains with a progress bar, writes WORKDIR/metrics.jsonl,
leaves resumable checkpoints in WORKDIR/checkpoints and samples a few lines of text.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

import shardkit as sk
from shardkit.train import TextBatches, Trainer, plan_report
from shardkit.train.distributed import is_primary
from shardkit.train.lm import CharTokenizer, GPTConfig, TinyGPT, generate, lm_loss, load_corpus

PROMPTS = ("Shall I ", "The ", "O ")


@dataclass
class DemoConfig:
    """Options of `shardkit demo` (the CLI flags map onto these)."""

    steps: int = 300
    workdir: str = "runs/demo"
    checkpoint_every: int = 50
    resume: bool = False
    mesh: dict | None = None
    plan: str = "fsdp+tp"
    batch: int = 32
    seq_len: int = 64
    embed: int = 64
    heads: int = 4
    layers: int = 2
    learning_rate: float = 3e-3
    eval_every: int | None = None
    samples: int = 3
    sample_length: int = 120
    show_ir: bool = False
    check: bool = True
    progress: bool = True
    seed: int = 0


def _spec_text(spec) -> str:
    """P('model', 'data') -> "model data"; P(None, 'model') -> "- model"; P() -> "rep" (replicated)."""
    entries = ["-" if e is None else e if isinstance(e, str) else "+".join(e) for e in tuple(spec)]
    return " ".join(entries) if any(e != "-" for e in entries) else "rep"


def _layout_table(trainer: Trainer):
    from rich import box
    from rich.table import Table
    table = Table(title=f"plan {trainer.plan.name!r}: the mesh axes splitting each dimension",
                  caption="*/ = in every block; - = dimension not split; rep = replicated",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("parameter", "shape", "stored", "used as", "grads", "opt state"):
        table.add_column(col, no_wrap=True)
    seen = set()
    for leaf in trainer.layout.leaves:
        name = re.sub(r"blocks/\d+/", "*/", leaf.name)
        if name in seen:
            continue
        seen.add(name)
        table.add_row(name, "x".join(map(str, leaf.shape)),
                      *(_spec_text(getattr(leaf, role)) for role in ("params", "compute", "grads", "opt_state")))
    return table


def _ir_summary(graph, console, show_all: bool) -> None:
    text = str(graph)
    started = time.perf_counter()
    reparsed = sk.ir.parse(text)
    same = str(reparsed) == text
    reparsed.verify()
    seconds = time.perf_counter() - started
    counts = Counter(op.name for op in graph.walk())
    top = ", ".join(f"{name} {n}" for name, n in counts.most_common(8))
    lines = text.splitlines()
    console.rule("the train step in shardkit IR (after propagate-sharding)")
    if show_all:
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    else:
        width = max(40, console.width - 1)
        shown = [line if len(line) <= width else line[:width - 3] + "..." for line in lines[:12]]
        console.print("\n".join(shown) + f"\n    ... {len(lines) - len(shown)} more lines (--show-ir prints all)",
                      markup=False, highlight=False, soft_wrap=True)
    console.print(f"{graph.num_ops()} ops ({top}, ...); printed, parsed back "
                  f"{'identically' if same else '[red]DIFFERENTLY[/]'} and verified in {seconds:.2f}s")
    if not same:
        raise RuntimeError("the IR text did not round-trip through the parser")


def _collectives_table(report):
    from rich.table import Table
    table = Table(title="collectives per step: shardkit's prediction vs what XLA compiled")
    for col in ("kind", "predicted #", "predicted bytes/device", "XLA #", "XLA bytes/device"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    predicted, compiled = report.totals(report.collectives), report.totals(report.compiled_collectives)
    for kind in sorted(set(predicted) | set(compiled)):
        p, c = predicted.get(kind, (0, 0.0)), compiled.get(kind, (0, 0.0))
        table.add_row(kind, str(p[0]), f"{p[1]:,.0f}", str(c[0]), f"{c[1]:,.0f}")
    table.add_row("total", str(len(report.collectives)), f"{report.predicted_bytes:,.0f}",
                  str(len(report.compiled_collectives)), f"{report.compiled_bytes:,.0f}")
    return table


def _differential_check(trainer: Trainer, batch, console) -> dict:
    """One step through shardkit and through plain jax.jit on one device, from the same state."""
    if jax.process_count() > 1:
        console.print("differential check skipped: it gathers the state on one device (single-process runs only)")
        return {}
    host = jax.device_get((trainer.state.params, trainer.state.opt_state, trainer.state.rest))
    reference = jax.jit(trainer.train_step.fn)
    started = time.perf_counter()
    ref_params, _, _, ref_metrics = reference(*host, batch)
    ours, metrics = trainer.run_step(trainer.state, batch)
    seconds = time.perf_counter() - started
    ours_params = jax.device_get(ours.params)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
               zip(jax.tree_util.tree_leaves(ours_params), jax.tree_util.tree_leaves(ref_params)))
    loss, ref_loss = float(metrics["loss"]), float(ref_metrics["loss"])
    ok = abs(loss - ref_loss) <= 1e-4 * max(1.0, abs(ref_loss)) and diff <= 1e-3
    console.print(f"differential check of step 1 against plain jax.jit on one device: loss {loss:.6f} vs "
                  f"{ref_loss:.6f}, largest parameter difference {diff:.1e} "
                  f"{'[green]ok[/]' if ok else '[red]MISMATCH[/]'} ({seconds:.1f}s incl. compiling the reference)")
    return {"loss": loss, "reference_loss": ref_loss, "max_param_diff": diff, "ok": ok}


def run_demo(cfg: DemoConfig, console=None) -> list[dict]:
    """Run the demo; returns the metric records of the steps it trained."""
    from rich.console import Console
    console = console or Console(quiet=not is_primary())
    workdir = Path(cfg.workdir)
    if is_primary():
        workdir.mkdir(parents=True, exist_ok=True)
    mesh = sk.make_mesh(cfg.mesh or {"data": 4, "model": 2})
    console.print(f"[bold]shardkit demo[/]: a {cfg.layers}-layer GPT on {jax.device_count()} "
                  f"{jax.devices()[0].platform} devices ({jax.process_count()} process(es)), mesh "
                  f"{dict(mesh.shape)}, plan {cfg.plan!r}")

    text = load_corpus()
    tokenizer = CharTokenizer(text)
    tokens = tokenizer.encode(text)
    split = int(len(tokens) * 0.95)
    model_cfg = GPTConfig(tokenizer.vocab_size, cfg.seq_len, cfg.embed, cfg.heads, cfg.layers)
    model = nnx.jit(lambda: TinyGPT(model_cfg, nnx.Rngs(cfg.seed)))()
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(cfg.learning_rate, weight_decay=0.01))
    trainer = Trainer(model, optimizer, lm_loss, mesh=mesh, plan=cfg.plan)
    train_data = TextBatches(tokens[:split], cfg.batch, cfg.seq_len, seed=cfg.seed)
    eval_data = TextBatches(tokens[split:], cfg.batch, cfg.seq_len, seed=cfg.seed + 1)
    params = sum(int(np.prod(leaf.shape)) for leaf in trainer.layout.leaves)
    console.print(f"corpus: {len(text):,} characters, vocabulary {tokenizer.vocab_size}; model: {params:,} "
                  f"parameters; batch {cfg.batch} x {cfg.seq_len} tokens")

    console.print(_layout_table(trainer))
    plan_report(cfg.plan, model, mesh, optimizer, console=console)

    first = train_data(0)
    with console.status("capturing, partitioning and compiling the train step through sk.jit ..."):
        trainer.compile(first)
    console.print(f"train step captured, partitioned and compiled in {trainer.compile_seconds:.1f}s")
    _ir_summary(trainer.graph(first), console, cfg.show_ir)
    console.print(_collectives_table(trainer.explain(first)))
    if cfg.check:
        _differential_check(trainer, first, console)

    console.rule("training")
    records = trainer.fit(train_data, steps=cfg.steps, workdir=workdir, checkpoint_every=cfg.checkpoint_every,
                          resume=cfg.resume, eval_data=eval_data, eval_every=cfg.eval_every, eval_batches=2,
                          progress=cfg.progress, console=console)
    if records:
        console.print(f"trained steps {records[0]['step']}..{records[-1]['step']}: loss {records[0]['loss']:.3f} -> "
                      f"{records[-1]['loss']:.3f}; metrics in {workdir / 'metrics.jsonl'}")
    else:
        console.print(f"nothing to train: the checkpoint is already at step {trainer.state.step} "
                      f"(ask for more with --steps)")
    if cfg.checkpoint_every:
        console.print(f"checkpoints in {workdir / 'checkpoints'}; continue with "
                      f"`shardkit demo --resume --steps {trainer.state.step + cfg.steps} --workdir {workdir}`")
    if cfg.samples:
        console.rule("samples")
        model = trainer.model
        for i, prompt in enumerate(PROMPTS[:cfg.samples]):
            sample = generate(model, tokenizer, prompt, cfg.sample_length, seed=cfg.seed + i)
            console.print(sample.replace("\n", " / "), markup=False, highlight=False)
    return records
