"""Shard an MLP training step with a few hints, check it against plain JAX, and explain it.

    python examples/sharded_mlp.py                    # Megatron-style hints on a 4x2 mesh
    python examples/sharded_mlp.py --strategy auto    # no hints: the auto-shard ILP chooses
"""
from __future__ import annotations

import argparse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", choices=["megatron", "fsdp", "auto"], default="megatron")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)

    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec as P
    from rich.console import Console

    import shardkit as sk

    console = Console()
    mesh = sk.make_mesh({"data": 4, "model": 2})
    din = dout = 32

    def loss(params, x, y):
        h = jax.nn.gelu(x @ params["w1"])
        return jnp.mean((h @ params["w2"] - y) ** 2)

    def step(params, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        return jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads), value

    rng = np.random.default_rng(0)
    params = {"w1": jnp.asarray(rng.normal(size=(din, args.hidden)) * 0.1, jnp.float32),
              "w2": jnp.asarray(rng.normal(size=(args.hidden, dout)) * 0.1, jnp.float32)}
    x = jnp.asarray(rng.normal(size=(args.batch, din)), jnp.float32)
    y = jnp.tanh(x)

    if args.strategy == "megatron":
        specs, pipeline = ({"w1": P(None, "model"), "w2": P("model", None)}, P("data", None), P("data", None)), "default"
    elif args.strategy == "fsdp":
        specs, pipeline = ({"w1": P(("data", "model"), None), "w2": P(("data", "model"), None)},
                           P(("data", "model"), None), P(("data", "model"), None)), "default"
    else:
        specs, pipeline = None, "auto"

    sharded = sk.jit(step, mesh=mesh, in_specs=specs, pipeline=pipeline)
    reference = jax.jit(step)
    ours, theirs = params, params
    for i in range(args.steps):
        ours, loss_ours = sharded(ours, x, y)
        theirs, loss_ref = reference(theirs, x, y)
        console.print(f"step {i}: loss {float(loss_ours):.6f} (plain JAX {float(loss_ref):.6f})")
    worst = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)))
    console.print(f"largest parameter difference against plain JAX: {worst:.2e}")
    console.print(sk.explain(step, mesh=mesh, in_specs=specs, pipeline=pipeline)(params, x, y))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
