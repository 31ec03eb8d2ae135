"""FedAvg with shardkit.federated: a Flax NNX classifier trained over non-IID clients on 8 CPU devices.

The script builds a synthetic federated dataset the way LEAF does it: every client has its own
label mix (drawn from a Dirichlet), its own feature shift and its own number of examples. Each
round broadcasts the model to the clients, runs a few local SGD steps (optax) on each client's own
data inside `fed.map`, and averages the client models weighted by the clients' dataset sizes. The
placement `clients` is sharded over the mesh axis of the same name.

    python examples/fedavg.py --rounds 30 --clients 16
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

import shardkit as sk  # noqa: E402
import shardkit.federated as fed  # noqa: E402
from shardkit.federated import algorithms  # noqa: E402


class MLP(nnx.Module):
    """A two-layer classifier."""

    def __init__(self, features: int, hidden: int, classes: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(features, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, classes, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


def federated_dataset(clients: int, classes: int, features: int, alpha: float, seed: int):
    """LEAF-style non-IID clients: per-client label mixes (Dirichlet(alpha)), feature shifts and sizes.

    Returns a list of (x, y) per client and a balanced, unshifted test set.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, features)) * 1.5
    mixing = rng.normal(size=(features, features)) / np.sqrt(features)

    def sample(labels, shift):
        x = centers[labels] + rng.normal(size=(len(labels), features)) * 1.5 + shift
        return np.tanh(x @ mixing).astype(np.float32), labels.astype(np.int32)

    data = []
    for _ in range(clients):
        size = int(np.clip(rng.lognormal(mean=5.0, sigma=0.6), 40, 800))
        mix = rng.dirichlet(np.full(classes, alpha))
        labels = rng.choice(classes, size=size, p=mix)
        data.append(sample(labels, rng.normal(size=features) * 0.3))
    test = sample(np.arange(2000) % classes, 0.0)
    return data, test


def client_batches(data, steps: int, batch: int, rng):
    """Each client's batches for one round, sampled from its own data: (clients, steps, batch, ...)."""
    xs, ys = [], []
    for x, y in data:
        idx = rng.integers(0, len(y), size=(steps, batch))
        xs.append(x[idx])
        ys.append(y[idx])
    return np.stack(xs), np.stack(ys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="number of clients (a multiple of 8)")
    parser.add_argument("--rounds", type=int, default=30, help="federated rounds")
    parser.add_argument("--local-steps", type=int, default=5, help="local SGD steps per round")
    parser.add_argument("--batch", type=int, default=32, help="local batch size")
    parser.add_argument("--lr", type=float, default=0.1, help="client SGD learning rate")
    parser.add_argument("--alpha", type=float, default=0.3, help="Dirichlet concentration of the label mixes "
                                                                   "(smaller: more non-IID)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    console = Console()
    devices = min(8, len(jax.devices()))
    if args.clients % devices:
        parser.error(f"--clients must be a multiple of the {devices} devices")
    mesh = sk.make_mesh({"clients": devices})
    data, (test_x, test_y) = federated_dataset(args.clients, args.classes, args.features, args.alpha, args.seed)
    sizes = np.array([len(y) for _, y in data], np.float32)
    console.print(f"{args.clients} clients on a mesh of {devices} devices; client sizes "
                  f"{int(sizes.min())}..{int(sizes.max())} examples; label mix alpha={args.alpha}")

    model = MLP(args.features, args.hidden, args.classes, rngs=nnx.Rngs(args.seed))
    graphdef, params = nnx.split(model, nnx.Param)

    def loss_fn(params, batch):
        x, y = batch
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    @fed.program(placements={"clients": args.clients}, mesh=mesh)
    def fedavg(params, xs, ys, weights):
        return algorithms.fedavg_round(params, (xs, ys), weights, loss_fn=loss_fn,
                                       client_optimizer=optax.sgd(args.lr))

    @jax.jit
    def accuracy(params, x, y):
        return jnp.mean(jnp.argmax(nnx.merge(graphdef, params)(x), axis=-1) == y)

    placed = NamedSharding(mesh, P("clients"))
    weights = jax.device_put(jnp.asarray(sizes), placed)
    rng = np.random.default_rng(args.seed + 1)
    console.print(f"initial test accuracy: {float(accuracy(params, test_x, test_y)):.3f}")
    columns = [TextColumn("[bold]FedAvg"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("", total=args.rounds)
        for _ in range(args.rounds):
            xs, ys = client_batches(data, args.local_steps, args.batch, rng)
            params, loss = fedavg(params, jax.device_put(xs, placed), jax.device_put(ys, placed), weights)
            progress.update(task, advance=1, description=f"client loss {float(loss):.3f}")
    console.print(f"final test accuracy: {float(accuracy(params, test_x, test_y)):.3f}")


if __name__ == "__main__":
    main()
