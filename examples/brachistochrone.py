"""The brachistochrone: the curve of fastest descent, found by minimising a travel-time functional.

A bead slides without friction from (0, 0) to (x1, y1) (y measured downwards) along y(x). Its
travel time is the functional

    T[y] = integral_0^x1  sqrt((1 + y'(x)^2) / (2 g y(x)))  dx,

minimised by a cycloid. Here y is a small flax (NNX) network that meets both end points by
construction; `jax.grad` of T (a functional of the network's function) trains it with Adam under
`jax.jit`. The integrand blows up like 1/sqrt(x) at the start, so the grid is graded there
(x = x1 s^2 on a midpoint grid in s): explicit grids make such quadratures a one-liner.

At the optimum the functional derivative dT/dy (the Euler-Lagrange residual, another `jax.grad`,
this time with respect to the function itself) should vanish inside the interval; the script prints
how small it got.

    python examples/brachistochrone.py            # about 20 s on a laptop CPU
    python examples/brachistochrone.py --steps 300 --width 16
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from shardkit import functional as fn

G = 9.81


class Profile(nnx.Module):
    """y(x) = y1 x / x1 + (x / x1)(1 - x / x1) * MLP(x): the end points hold for any weights."""

    def __init__(self, width: int, x1: float, y1: float, rngs: nnx.Rngs):
        self.x1, self.y1 = x1, y1
        self.hidden1 = nnx.Linear(1, width, rngs=rngs)
        self.hidden2 = nnx.Linear(width, width, rngs=rngs)
        self.out = nnx.Linear(width, 1, rngs=rngs, kernel_init=nnx.initializers.zeros)

    def __call__(self, x):
        t = x / self.x1
        h = jnp.tanh(self.hidden1(jnp.reshape(t, (1,))))
        h = jnp.tanh(self.hidden2(h))
        return self.y1 * t + t * (1 - t) * self.out(h)[0]


def graded_grid(x1: float, n: int) -> fn.Grid:
    """Midpoint rule in s on [0, 1] with x = x1 s^2 (dx = 2 x1 s ds): smooth at the singular start."""
    h = 1.0 / n
    s = (np.arange(n) + 0.5) * h
    return fn.Grid(jnp.asarray(x1 * s ** 2, jnp.float32), jnp.asarray(2 * x1 * s * h, jnp.float32))


def travel_time(y, grid):
    """T[y] for a Function y: R -> R."""
    speed_term = lambda slope, height: jnp.sqrt((1 + slope ** 2) / (2 * G * height))  # noqa: E731
    return fn.integrate(fn.compose(speed_term, fn.nabla(y), y), grid)


def cycloid_time(x1: float, y1: float) -> float:
    """The exact minimal time: the cycloid x = r(t - sin t), y = r(1 - cos t) through (x1, y1)."""
    lo, hi = 1e-6, 2 * np.pi - 1e-6
    ratio = lambda t: (t - np.sin(t)) / (1 - np.cos(t)) - x1 / y1  # noqa: E731
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ratio(mid) < 0 else (lo, mid)
    theta = 0.5 * (lo + hi)
    r = y1 / (1 - np.cos(theta))
    return float(theta * np.sqrt(r / G))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--steps", type=int, default=2000, help="Adam steps (default 2000)")
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate (default 3e-3)")
    parser.add_argument("--width", type=int, default=24, help="hidden width of the network")
    parser.add_argument("--points", type=int, default=256, help="quadrature points")
    parser.add_argument("--x1", type=float, default=1.0)
    parser.add_argument("--y1", type=float, default=0.6)
    args = parser.parse_args(argv)

    model = Profile(args.width, args.x1, args.y1, nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    grid = graded_grid(args.x1, args.points)

    def curve(params) -> fn.Function:
        return fn.function(lambda p, x: nnx.merge(graphdef, p)(x), [()], params=params)

    def loss(params):
        return travel_time(curve(params), grid)

    optimizer = optax.adam(args.lr)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    best = cycloid_time(args.x1, args.y1)
    straight = float(loss(params))
    print(f"straight line: T = {straight:.6f} s; cycloid (exact): T = {best:.6f} s")
    t0 = time.perf_counter()
    for i in range(1, args.steps + 1):
        params, state, value = step(params, state)
        if i == 1 or i % max(1, args.steps // 6) == 0 or i == args.steps:
            print(f"step {i:4d}   T = {float(value):.6f} s   (cycloid + {float(value) - best:.2e})   "
                  f"{time.perf_counter() - t0:.1f} s")

    y = curve(params)
    residual = jax.grad(lambda y: travel_time(y, grid))(y)        # dT/dy, a Function
    inner = np.linspace(0.2, 0.9, 8, dtype=np.float32) * args.x1
    at_start = jax.grad(lambda y: travel_time(y, grid))(curve(nnx.split(
        Profile(args.width, args.x1, args.y1, nnx.Rngs(0)), nnx.Param)[1]))
    print(f"|dT/dy| on (0.2, 0.9) x1: straight line max {np.max(np.abs(jax.vmap(at_start)(inner))):.3e}, "
          f"trained max {np.max(np.abs(jax.vmap(residual)(inner))):.3e}")
    print(f"final T = {float(loss(params)):.6f} s, {100 * (float(loss(params)) / best - 1):.3f}% above "
          f"the cycloid")


if __name__ == "__main__":
    main()
