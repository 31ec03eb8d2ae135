"""Save a run under one mesh and plan, restore it under others, and keep training.

Trains the small GPT with the megatron plan on a data=4 x model=2 mesh and checkpoints it; then
restores that checkpoint into trainers with other meshes and plans (fsdp on data=8 x model=1,
fsdp+tp on data=2 x model=4), checks every parameter is identical, and continues training from
the restored step. No conversion step: Orbax reads each array straight into its new sharding.

    python examples/resume_and_reshard.py --workdir runs/reshard
"""
from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/reshard", help="where the checkpoints go")
    parser.add_argument("--steps", type=int, default=20, help="steps before saving (default 20)")
    parser.add_argument("--more", type=int, default=10, help="steps after each restore (default 10)")
    parser.add_argument("--layers", type=int, default=1, help="transformer blocks (default 1)")
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices when not launched")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import shardkit as sk
    from shardkit.train import setup_devices
    setup_devices(args.devices)
    from pathlib import Path

    import jax
    import numpy as np
    import optax
    from flax import nnx
    from rich.console import Console
    from rich.table import Table
    from shardkit.train import Checkpointer, TextBatches, Trainer
    from shardkit.train.lm import CharTokenizer, GPTConfig, TinyGPT, lm_loss, load_corpus

    console = Console()
    text = load_corpus()
    tokenizer = CharTokenizer(text)
    cfg = GPTConfig(tokenizer.vocab_size, seq_len=32, embed=64, heads=4, layers=args.layers)
    data = TextBatches(tokenizer.encode(text), 16, cfg.seq_len)
    optimizer = optax.adamw(3e-3)
    new_model = nnx.jit(lambda: TinyGPT(cfg, nnx.Rngs(0)))
    workdir = Path(args.workdir)

    source = Trainer(new_model(), optimizer, lm_loss, mesh=sk.make_mesh({"data": 4, "model": 2}), plan="megatron")
    source.fit(data, steps=args.steps, workdir=workdir, checkpoint_every=args.steps, progress=False)
    saved = jax.device_get(source.state.params)
    console.print(f"saved step {source.state.step} from mesh data=4,model=2 with plan megatron")

    table = Table(title="restore the same checkpoint elsewhere")
    for col in ("mesh", "plan", "restored step", "max |param diff|", "kernel sharding", f"loss after +{args.more}"):
        table.add_column(col)
    for axes, plan in (({"data": 8, "model": 1}, "fsdp"), ({"data": 2, "model": 4}, "fsdp+tp")):
        target = Trainer(new_model(), optimizer, lm_loss, mesh=sk.make_mesh(axes), plan=plan)
        restored = target.restore(Checkpointer(workdir / "checkpoints"))
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                   zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(jax.device_get(target.state.params))))
        kernel = target.state.params["blocks"][0]["up"]["kernel"].get_value()
        records = target.fit(data, steps=restored.step + args.more, progress=False)
        table.add_row(",".join(f"{k}={v}" for k, v in axes.items()), plan, str(restored.step), f"{diff:.1e}",
                      str(kernel.sharding.spec), f"{records[-1]['loss']:.4f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
