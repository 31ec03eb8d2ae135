"""Function specs: the shapes and dtypes of a function's arguments and of its result."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from .errors import FunctionalError

Shape = tuple[int, ...]


def as_shape(shape: Any, what: str) -> Shape:
    """A shape from an int or a sequence of ints; anything else is an error naming `what`."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        return (int(shape),)
    try:
        out = tuple(int(d) for d in shape)
    except TypeError:
        raise FunctionalError(f"{what}: expected a shape (a tuple of ints such as () or (3,)), "
                              f"got {shape!r}") from None
    if any(d < 0 for d in out):
        raise FunctionalError(f"{what}: shape {out} has a negative dimension")
    return out


@dataclass(frozen=True)
class Spec:
    """What a function takes and returns: one array shape per argument, the result's shape, dtypes."""

    args: tuple[Shape, ...]
    ret: Shape
    dtype: Any      # the arguments' dtype
    ret_dtype: Any  # the result's dtype

    def __post_init__(self):
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        object.__setattr__(self, "ret_dtype", jnp.dtype(self.ret_dtype))

    @property
    def num_args(self) -> int:
        return len(self.args)

    def with_args(self, args: Sequence[Shape]) -> "Spec":
        return Spec(tuple(tuple(a) for a in args), self.ret, self.dtype, self.ret_dtype)

    def with_ret(self, ret: Shape, ret_dtype=None) -> "Spec":
        return Spec(self.args, tuple(ret), self.dtype, self.ret_dtype if ret_dtype is None else ret_dtype)

    def same_args(self, other: "Spec") -> bool:
        return self.args == other.args and self.dtype == other.dtype

    def __str__(self) -> str:
        args = ", ".join(_array_text(a, self.dtype) for a in self.args)
        return f"({args}) -> {_array_text(self.ret, self.ret_dtype)}"


def _array_text(shape: Shape, dtype) -> str:
    short = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
             "complex64": "c64", "complex128": "c128"}.get(jnp.dtype(dtype).name, jnp.dtype(dtype).name)
    return f"{short}[{','.join(str(d) for d in shape)}]"


def check_same_args(op: str, specs: Sequence[Spec]) -> None:
    """All functions an operator combines must take the same arguments."""
    first = specs[0]
    for i, spec in enumerate(specs[1:], start=1):
        if not first.same_args(spec):
            listing = "; ".join(f"operand {j}: {s}" for j, s in enumerate(specs))
            raise FunctionalError(f"{op}: the functions take different arguments ({listing}); "
                                  f"functions combined point-wise must have the same argument spec "
                                  f"(use permute_args or broadcast_args to line them up)")


def check_argnum(op: str, spec: Spec, argnum: int) -> int:
    n = spec.num_args
    if not isinstance(argnum, (int, np.integer)) or not -n <= argnum < n:
        raise FunctionalError(f"{op}: argument index {argnum!r} is out of range for a function {spec} "
                              f"with {n} argument(s)")
    return int(argnum) % n
