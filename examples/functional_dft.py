"""Density functionals with shardkit.functional.

1. Exchange-correlation and kinetic potentials as functional derivatives, `jax.grad(E)(rho)`, of
   the LDA exchange, von Weizsaecker and Becke-88 exchange functionals, checked against their
   closed forms (LDA, vW) and against a point-wise Euler-Lagrange evaluation (B88). The B88
   potential stays finite at the centre, where the density gradient vanishes.
2. A Thomas-Fermi energy in a harmonic trap minimised by functional gradient descent: the density
   is updated by its functional derivative, step after step, and each step costs the same.

    python examples/functional_dft.py                 # about a minute on a laptop CPU
    python examples/functional_dft.py --steps 50 --points 12
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from shardkit import functional as fn

C_X = 0.75 * (3 / np.pi) ** (1 / 3)      # LDA exchange: E_x = -C_X int rho^(4/3)
B88_BETA = 0.0042
B88_C = 1.5 * (3 / (4 * np.pi)) ** (1 / 3)  # per spin channel


# -- functionals -------------------------------------------------------------------------------------


def lda_exchange(rho, grid):
    return -C_X * fn.integrate(rho ** (4 / 3), grid)


def von_weizsaecker(rho, grid):
    return fn.integrate(fn.compose(lambda g, p: jnp.sum(g ** 2) / (8 * p), fn.nabla(rho), rho), grid)


def x_asinh_x(u):
    """x * asinh(x) as a function of u = x^2: smooth at u = 0, where |grad rho| vanishes (a plain
    sqrt there would give an infinite derivative times zero, i.e. NaN)."""
    small = u < 1e-8
    safe = jnp.where(small, 1.0, u)
    root = jnp.sqrt(safe)
    return jnp.where(small, u - u ** 2 / 6, root * jnp.arcsinh(root))


def b88_density(g, p):
    """The B88 exchange energy density of a spin-unpolarised density p with gradient g (zero where
    the density is negligible, as DFT codes do: rho^(8/3) underflows there)."""
    live = p > 1e-10
    p_s = jnp.where(live, p, 1.0) / 2               # each spin channel holds rho / 2
    u = jnp.sum(g ** 2) / 4                         # |grad rho_s|^2
    xx = u / p_s ** (8 / 3)                         # x^2 = |grad rho_s|^2 / rho_s^(8/3)
    per_spin = -p_s ** (4 / 3) * (B88_C + B88_BETA * xx / (1 + 6 * B88_BETA * x_asinh_x(xx)))
    return jnp.where(live, 2 * per_spin, 0.0)


def b88_exchange(rho, grid):
    return fn.integrate(fn.compose(b88_density, fn.nabla(rho), rho), grid)


def euler_lagrange(density, rho_fn, r):
    """d e / d rho - div(d e / d grad rho) at r, by plain JAX (the reference for B88)."""
    grad_rho = jax.grad(rho_fn)

    def de_dg(r):
        return jax.grad(density, argnums=0)(grad_rho(r), rho_fn(r))

    de_dp = jax.grad(density, argnums=1)(grad_rho(r), rho_fn(r))
    return de_dp - jnp.trace(jax.jacfwd(de_dg)(r))


# -- part 1: potentials ------------------------------------------------------------------------------------


def potentials(points: int) -> None:
    axis = fn.Grid.uniform(-4.0, 4.0, points)
    grid = fn.Grid.product(axis, axis, axis)
    rho_fn = lambda r: jnp.exp(-jnp.sum(r ** 2))  # noqa: E731
    rho = fn.function(rho_fn, [(3,)])
    samples = np.array([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [0.8, 0.4, -0.5], [1.2, -0.9, 0.6]],
                       np.float32)
    r2 = np.sum(samples ** 2, axis=1)

    print(f"Gaussian density exp(-|r|^2) on a {points}^3 grid")
    for name, energy, closed in (
            ("LDA exchange", lda_exchange, lambda: -(3 / np.pi) ** (1 / 3) * np.exp(-r2) ** (1 / 3)),
            ("von Weizsaecker", von_weizsaecker, lambda: (3 - r2) / 2),
            ("B88 exchange", b88_exchange,
             lambda: jax.jit(jax.vmap(lambda r: euler_lagrange(b88_density, rho_fn, r)))(samples))):
        t = time.perf_counter()
        value = energy(rho, grid)
        potential = jax.grad(energy)(rho, grid)           # a Function: the functional derivative
        got = np.asarray(jax.vmap(potential)(jnp.asarray(samples)))
        want = np.asarray(closed())
        err = float(np.max(np.abs(got - want)))
        print(f"  {name:16s} E = {float(value):+.6f}   v(0) = {got[0]:+.6f}   "
              f"max |v - reference| = {err:.1e}   finite: {bool(np.all(np.isfinite(got)))}   "
              f"({time.perf_counter() - t:.2f} s)")


# -- part 2: Thomas-Fermi by functional gradient descent ----------------------------------------------------


def thomas_fermi(steps: int, lr: float, electrons: float = 4.0) -> None:
    """E[rho] = int c rho^3 + V rho in 1D with V = x^2 / 2 and rho = N psi^2 / int psi^2; gradient
    descent on the function psi: psi <- psi - lr * dE/dpsi."""
    c = np.pi ** 2 / 24
    grid = fn.Grid.uniform(-6.0, 6.0, 400)
    potential = fn.function(lambda x: 0.5 * x ** 2, [()])

    def energy(psi):
        rho = electrons * psi ** 2 / fn.integrate(psi ** 2, grid)
        return fn.integrate(c * rho ** 3 + potential * rho, grid)

    # the Thomas-Fermi solution: rho = sqrt(max(mu - V, 0) / (3c)), mu fixed by the electron count
    mu = electrons * np.sqrt(6 * c) / np.pi
    xs, w = np.asarray(grid.nodes, np.float64), np.asarray(grid.weights, np.float64)
    rho_tf = np.sqrt(np.maximum(mu - 0.5 * xs ** 2, 0) / (3 * c))
    rho_tf *= electrons / np.sum(w * rho_tf)
    e_tf = float(np.sum(w * (c * rho_tf ** 3 + 0.5 * xs ** 2 * rho_tf)))

    psi = fn.function(lambda x: jnp.exp(-x ** 2 / 4), [()])
    print(f"\nThomas-Fermi, {electrons:g} electrons in a harmonic trap: functional gradient descent "
          f"on psi ({steps} steps, lr {lr})")
    times = []
    for step in range(steps + 1):
        t = time.perf_counter()
        value, grad = jax.value_and_grad(energy)(psi)
        psi = psi - lr * grad                                 # a new Function, built symbolically
        value = float(value)
        times.append(time.perf_counter() - t)
        if step % max(1, steps // 5) == 0 or step == steps:
            print(f"  step {step:4d}   E = {value:.6f}   (Thomas-Fermi on this grid: {e_tf:.6f})   "
                  f"step time {times[-1] * 1e3:.0f} ms")
    tail = times[1:]
    if len(tail) >= 10:
        first, last = np.median(tail[: len(tail) // 5]), np.median(tail[-len(tail) // 5:])
        print(f"  median step time: first fifth {first * 1e3:.0f} ms, last fifth {last * 1e3:.0f} ms "
              f"(the graph of psi grows every step; values on the grid are cached per node)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--points", type=int, default=16, help="grid points per axis in 3D (default 16)")
    parser.add_argument("--steps", type=int, default=200, help="gradient-descent steps (default 200)")
    parser.add_argument("--lr", type=float, default=0.1, help="gradient-descent step size")
    args = parser.parse_args(argv)
    potentials(args.points)
    thomas_fermi(args.steps, args.lr)


if __name__ == "__main__":
    main()
