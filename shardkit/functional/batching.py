"""vmap and Function values: batching over arrays is supported where functions stay unbatched.

A batch of Functions (vmap over a Function argument, or over an array a Function is built from)
has no representation here; the type rules say so with a clear error.
"""
from __future__ import annotations

from .errors import FunctionalError


def unbatched_type(t, size, spec):
    raise FunctionalError(f"vmap over a batch of functions {t.spec} is not supported: vmap over the "
                          f"points a function is evaluated at (jax.vmap(f)(xs)), or build the "
                          f"functions outside the vmapped code")


def batched_type(t, size, spec):
    raise FunctionalError(f"vmap cannot return a batch of functions {t.spec}: return arrays "
                          f"(evaluate or integrate the functions inside the vmapped code)")
