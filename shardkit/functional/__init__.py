"""shardkit.functional: automatic functional differentiation, with functions as JAX values.

    import jax, jax.numpy as jnp
    from shardkit import functional as fn

    f = fn.function(lambda x: -x ** 2, [()])              # R -> R
    grid = fn.Grid.uniform(-6.0, 6.0, 2000)
    F = lambda f: fn.integrate(fn.compose(jnp.exp, f), grid)
    dF = jax.grad(F)(f)                                    # a Function: x -> exp(f(x))
    dF(1.0)                                                # e^-1

Operators are JAX primitives with JVP and transpose rules, so jax.grad, jax.jvp, jax.jit and
jax.make_jaxpr work on functionals; integrals are quadratures on explicit grids, which lower to
`functional.integrate` ops that shardkit shards over a mesh like any other op.
"""
from .api import (add, apply, braket, broadcast_args, compose, constant, div, function, integrate,
                  is_function, linear_transpose, linearize, mul, nabla, neg, partial, permute_args,
                  power, split, sub, zip)
from .errors import FunctionalError
from .function import Function
from .grid import Grid
from .spec import Spec
from .types import FunctionType
from . import ops  # noqa: F401  (registers the IR ops)

__all__ = [
    "Function", "FunctionType", "FunctionalError", "Grid", "Spec", "add", "apply", "braket",
    "broadcast_args", "compose", "constant", "div", "function", "integrate", "is_function",
    "linear_transpose", "linearize", "mul", "nabla", "neg", "partial", "permute_args", "power", "split",
    "sub", "zip",
]
