"""DiLoCo with shardkit.federated: a small transformer language model trained by replicas that talk
once every H steps, on 8 CPU devices.

Each replica holds its own shard of a synthetic corpus and its own AdamW state, runs H inner steps
from the shared model, and sends back its parameter delta; the mean delta is the outer gradient,
applied with Nesterov SGD (the paper's lr 0.7 and momentum 0.9). The script prints the validation
loss before and after, and how many bytes the compiled training communicated compared with
synchronous data parallelism (one gradient all-reduce per step), both read from XLA's HLO.

    python examples/diloco.py --rounds 8 --inner-steps 10 --replicas 8
"""
from __future__ import annotations

import argparse
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

import shardkit as sk  # noqa: E402
import shardkit.federated as fed  # noqa: E402
from shardkit.federated import algorithms  # noqa: E402
from shardkit.hlo import collectives_from_hlo  # noqa: E402

# -- a synthetic corpus: sentences from a small grammar, read character by character -------------------

_WORDS = {
    "det": ["the", "a", "every", "one"], "adj": ["red", "small", "quiet", "old", "bright", "green"],
    "noun": ["fox", "dog", "bird", "river", "tree", "stone", "child", "ship"],
    "verb": ["sees", "finds", "follows", "watches", "likes", "carries"],
    "prep": ["near", "under", "over", "beside"],
}


def corpus(chars: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    pick = lambda kind: _WORDS[kind][rng.integers(len(_WORDS[kind]))]  # noqa: E731
    parts, length = [], 0
    while length < chars:
        phrase = [pick("det"), pick("adj"), pick("noun"), pick("verb"), pick("det"), pick("noun")]
        if rng.random() < 0.5:
            phrase += [pick("prep"), pick("det"), pick("adj"), pick("noun")]
        sentence = " ".join(phrase) + ". "
        parts.append(sentence)
        length += len(sentence)
    return "".join(parts)[:chars]


# -- the model ---------------------------------------------------------------------------------------


class Block(nnx.Module):
    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.norm1, self.norm2 = nnx.LayerNorm(dim, rngs=rngs), nnx.LayerNorm(dim, rngs=rngs)
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)
        self.up, self.down = nnx.Linear(dim, 4 * dim, rngs=rngs), nnx.Linear(4 * dim, dim, rngs=rngs)

    def __call__(self, x):
        t, d = x.shape[-2], x.shape[-1]
        q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
        split = lambda a: a.reshape(*a.shape[:-1], self.heads, d // self.heads)  # noqa: E731
        scores = jnp.einsum("...qhd,...khd->...hqk", split(q), split(k)) / np.sqrt(d // self.heads)
        scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -1e9)
        attended = jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(scores, axis=-1), split(v))
        x = x + self.proj(attended.reshape(x.shape))
        return x + self.down(nnx.gelu(self.up(self.norm2(x))))


class TinyLM(nnx.Module):
    """A decoder-only transformer over characters."""

    def __init__(self, vocab: int, seq: int, dim: int, heads: int, layers: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.position = nnx.Param(jax.random.normal(rngs.params(), (seq, dim)) * 0.02)
        self.blocks = nnx.List([Block(dim, heads, rngs=rngs) for _ in range(layers)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens) + self.position[...][: tokens.shape[-1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


# -- training ----------------------------------------------------------------------------------------


def windows(tokens: np.ndarray, count: int, seq: int, rng) -> np.ndarray:
    """`count` random windows of seq+1 tokens (inputs and next-token targets)."""
    starts = rng.integers(0, len(tokens) - seq - 1, size=count)
    return np.stack([tokens[s:s + seq + 1] for s in starts])


def wire_bytes(compiled_text: str, mesh) -> float:
    return sum(c.bytes for c in collectives_from_hlo(compiled_text, mesh))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=8, help="DiLoCo replicas (a multiple of the devices)")
    parser.add_argument("--rounds", type=int, default=8, help="outer steps")
    parser.add_argument("--inner-steps", type=int, default=10, help="H: inner AdamW steps per outer step")
    parser.add_argument("--batch", type=int, default=8, help="sequences per inner step and replica")
    parser.add_argument("--seq", type=int, default=32, help="sequence length")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--inner-lr", type=float, default=3e-3, help="inner AdamW learning rate")
    parser.add_argument("--outer-lr", type=float, default=0.7, help="outer Nesterov SGD learning rate")
    parser.add_argument("--outer-momentum", type=float, default=0.9)
    parser.add_argument("--corpus-chars", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    console = Console()
    devices = min(8, len(jax.devices()))
    if args.replicas % devices:
        parser.error(f"--replicas must be a multiple of the {devices} devices")
    mesh = sk.make_mesh({"replicas": devices})
    text = corpus(args.corpus_chars, args.seed)
    vocab = sorted(set(text))
    tokens = np.array([vocab.index(c) for c in text], np.int32)
    split = int(0.9 * len(tokens))
    train, valid = tokens[:split], tokens[split:]
    shards = np.array_split(train, args.replicas)  # each replica trains on its own part of the corpus

    model = TinyLM(len(vocab), args.seq, args.dim, args.heads, args.layers, rngs=nnx.Rngs(args.seed))
    graphdef, params = nnx.split(model, nnx.Param)
    model_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))

    def loss_fn(params, window):
        logits = nnx.merge(graphdef, params)(window[..., :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, window[..., 1:]).mean()

    inner = optax.adamw(args.inner_lr, weight_decay=0.1)
    outer = algorithms.diloco_outer_optimizer(args.outer_lr, args.outer_momentum)
    program = fed.program(placements={"replicas": args.replicas}, mesh=mesh)

    @jax.jit
    @program
    def start(params):
        return outer.init(params), algorithms.diloco_inner_states(params, inner)

    @jax.jit
    @program
    def outer_step(params, outer_state, inner_states, batches):
        return algorithms.diloco_round(params, outer_state, inner_states, batches, loss_fn=loss_fn,
                                       inner_optimizer=inner, outer_optimizer=outer)

    valid_windows = windows(valid, 256, args.seq, np.random.default_rng(args.seed + 7))
    evaluate = jax.jit(loss_fn)
    console.print(f"corpus: {len(text):,} characters, vocabulary {len(vocab)}; model {model_bytes:,} bytes; "
                  f"{args.replicas} replicas on {devices} devices, H={args.inner_steps}")
    console.print(f"validation loss before: {float(evaluate(params, valid_windows)):.3f} "
                  f"(uniform: {np.log(len(vocab)):.3f})")

    rng = np.random.default_rng(args.seed + 1)
    placed = NamedSharding(mesh, P("replicas"))

    def round_batches():
        per_replica = [windows(s, args.inner_steps * args.batch, args.seq, rng)
                       .reshape(args.inner_steps, args.batch, args.seq + 1) for s in shards]
        return jax.device_put(np.stack(per_replica), placed)

    outer_state, inner_states = start(params)
    diloco_round_bytes = wire_bytes(outer_step.lower(params, outer_state, inner_states, round_batches())
                                    .compile().as_text(), mesh)
    columns = [TextColumn("[bold]DiLoCo"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("", total=args.rounds)
        for _ in range(args.rounds):
            params, outer_state, inner_states, loss = outer_step(params, outer_state, inner_states, round_batches())
            progress.update(task, advance=1, description=f"inner loss {float(loss):.3f}")
    console.print(f"validation loss after:  {float(evaluate(params, valid_windows)):.3f}")

    # synchronous data parallelism for the same number of steps: the global batch is sharded over the
    # same devices and every step all-reduces the gradients
    @jax.jit
    def data_parallel_step(params, opt_state, batch):
        grads = jax.grad(loss_fn)(params, batch)
        updates, opt_state = inner.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    global_batch = jax.device_put(windows(train, args.replicas * args.batch, args.seq, rng), placed)
    dp_step_bytes = wire_bytes(data_parallel_step.lower(params, inner.init(params), global_batch)
                               .compile().as_text(), mesh)
    steps = args.rounds * args.inner_steps
    table = Table(title=f"communication for {steps} steps per replica (per device, ring all-reduce, from XLA's HLO)")
    for col in ("training", "collective rounds", "bytes per round", "total bytes"):
        table.add_column(col, justify="right")
    table.add_row("DiLoCo", str(args.rounds), f"{diloco_round_bytes:,.0f}", f"{diloco_round_bytes * args.rounds:,.0f}")
    table.add_row("synchronous data parallel", str(steps), f"{dp_step_bytes:,.0f}", f"{dp_step_bytes * steps:,.0f}")
    console.print(table)
    if diloco_round_bytes:
        console.print(f"DiLoCo communicated {dp_step_bytes * steps / (diloco_round_bytes * args.rounds):.1f}x fewer "
                      f"bytes than synchronous data parallelism")


if __name__ == "__main__":
    main()
