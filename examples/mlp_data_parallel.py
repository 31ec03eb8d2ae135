"""Data-parallel training of a small MLP with `sk.train.fit` (any plan works; dp by default).

The MLP regresses a fixed random "teacher" network on synthetic data; batch `i` depends only on
the step, so runs resume exactly. Runs unchanged on one process or several:

    python examples/mlp_data_parallel.py --steps 200
    python examples/mlp_data_parallel.py --plan zero2 --workdir runs/mlp --checkpoint-every 50
    shardkit launch -n 2 -- python examples/mlp_data_parallel.py --steps 50 --workdir runs/mlp2
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="train until this step (default 200)")
    parser.add_argument("--plan", default="dp", help="dp, zero1, zero2, fsdp, megatron or fsdp+tp (default dp)")
    parser.add_argument("--mesh", default="data=8", help="mesh axes (default data=8)")
    parser.add_argument("--batch", type=int, default=64, help="global batch size (default 64)")
    parser.add_argument("--hidden", type=int, default=128, help="hidden width (default 128)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    parser.add_argument("--workdir", default=None, help="metrics.jsonl and checkpoints/ go here")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="save every K steps (0: never)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint")
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices when not launched")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


class TeacherBatches:
    """Batch `step`: inputs x ~ N(0, 1) and targets tanh(x @ W) for a fixed teacher W."""

    def __init__(self, batch: int, din: int = 16, dout: int = 4, seed: int = 0):
        self.batch, self.din, self.seed = batch, din, seed
        self.teacher = np.random.default_rng(seed).normal(size=(din, dout)).astype(np.float32)

    def __call__(self, step: int) -> dict:
        x = np.random.default_rng([self.seed, step]).normal(size=(self.batch, self.din)).astype(np.float32)
        return {"x": x, "y": np.tanh(x @ self.teacher)}


def build(hidden: int, lr: float):
    """The model, optimizer and loss of this example."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            init = nnx.initializers.lecun_normal()
            with nnx.use_eager_sharding(False):
                self.fc1 = nnx.Linear(16, hidden, kernel_init=nnx.with_partitioning(init, ("embed", "mlp")),
                                      bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("mlp",)), rngs=rngs)
                self.fc2 = nnx.Linear(hidden, 4, kernel_init=nnx.with_partitioning(init, ("mlp", "embed")), rngs=rngs)

        def __call__(self, x):
            return self.fc2(jax.nn.gelu(self.fc1(x)))

    def loss_fn(model, batch):
        return jnp.mean((model(batch["x"]) - batch["y"]) ** 2)

    model = nnx.jit(lambda: MLP(nnx.Rngs(0)))()  # under jit: one compile, not one per initializer op
    return model, optax.adam(lr), loss_fn


def main(argv=None) -> int:
    args = parse_args(argv)
    import shardkit as sk
    from shardkit.train import parse_mesh, setup_devices
    setup_devices(args.devices)
    model, optimizer, loss_fn = build(args.hidden, args.lr)
    mesh = sk.make_mesh(parse_mesh(args.mesh))
    trainer = sk.train.Trainer(model, optimizer, loss_fn, mesh=mesh, plan=args.plan)
    records = trainer.fit(TeacherBatches(args.batch), steps=args.steps, workdir=args.workdir,
                          checkpoint_every=args.checkpoint_every or None, resume=args.resume,
                          progress=not args.no_progress)
    import jax
    if records and jax.process_index() == 0:
        print(f"steps {records[0]['step']}..{records[-1]['step']}: loss {records[0]['loss']:.5f} -> "
              f"{records[-1]['loss']:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
