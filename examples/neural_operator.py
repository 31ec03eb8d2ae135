"""A nonlocal kernel (neural) operator trained by functional gradient descent.

Each layer maps a function u to  (L u)(y) = act( integral k(y, x) u(x) dx + b(y) ),  with the kernel
k and the bias b themselves *functions*. The loss compares L2(L1 f) with a target y on a grid; its
gradient with respect to k and b (jax.grad of a functional of functions) is again a pair of
functions, and training updates them symbolically: k <- k - lr * dL/dk. This is the program of
AutoFD's neural-operator example; here every step costs the same, because each node of the growing
graph keeps its values on the grid and only new nodes are evaluated.

    python examples/neural_operator.py              # 10 steps on a 100-point grid
    python examples/neural_operator.py --steps 30 --grid 64
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from shardkit import functional as fn


def make_problem(n: int):
    grid = fn.Grid(jnp.asarray((np.arange(n) + 0.5) / n, jnp.float32), jnp.full((n,), 1.0 / n, jnp.float32))
    u = fn.function(lambda x: jnp.sin(4 * jnp.pi * x), [()])              # input function
    target = fn.function(lambda x: jnp.cos(jnp.pi * x), [()])            # what the operator should map u to
    kernel = fn.function(lambda y, x: jnp.sin(y) + jnp.cos(x), [(), ()])  # initial k(y, x)
    bias = fn.function(lambda y: jnp.sin(jnp.pi * y), [()])               # initial b(y)
    return grid, u, target, kernel, bias


def layer(kernel, bias, u, grid, activate: bool):
    """y -> act(int k(y, x) u(x) dx + b(y)): u is lifted to a function of (y, x), multiplied by the
    kernel and integrated over x (the second argument) on the grid."""
    lifted = fn.broadcast_args(u, [(), ()], (1,))                         # (y, x) -> u(x)
    out = fn.integrate(kernel * lifted, (None, grid)) + bias
    return fn.compose(jnp.tanh, out) if activate else out


def loss(params, u, target, grid):
    k1, b1, k2, b2 = params
    hidden = layer(k1, b1, u, grid, activate=True)
    out = layer(k2, b2, hidden, grid, activate=False)
    return fn.integrate((out - target) ** 2, grid)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--steps", type=int, default=10, help="gradient-descent steps (default 10)")
    parser.add_argument("--grid", type=int, default=100, help="grid points on [0, 1] (default 100)")
    parser.add_argument("--lr", type=float, default=0.1, help="step size (default 0.1)")
    args = parser.parse_args(argv)

    grid, u, target, kernel, bias = make_problem(args.grid)
    params = (kernel, bias, kernel, bias)
    print(f"initial loss {float(loss(params, u, target, grid)):.6f}")
    times = []
    for step in range(1, args.steps + 1):
        t = time.perf_counter()
        grads = jax.grad(loss)(params, u, target, grid)                  # four Functions
        params = jax.tree_util.tree_map(lambda p, g: p - args.lr * g, params, grads)
        value = float(loss(params, u, target, grid))
        times.append(time.perf_counter() - t)
        print(f"step {step:3d}   loss {value:.6f}   step time {times[-1] * 1e3:7.1f} ms")
    if len(times) > 2:
        print(f"step time: first {times[0]:.2f} s (compiles the node kernels), then median "
              f"{np.median(times[1:]) * 1e3:.0f} ms (steps 2-{len(times)}), last {times[-1] * 1e3:.0f} ms")
    k1 = params[0]
    ys = np.linspace(0.05, 0.95, 4, dtype=np.float32)
    t = time.perf_counter()
    values = [float(k1(y, 0.5)) for y in ys]       # concrete points: evaluated node by node, cached
    print(f"trained kernel k1(y, 0.5) at y = {ys} -> {np.round(values, 5)} "
          f"({time.perf_counter() - t:.2f} s)")


if __name__ == "__main__":
    main()
