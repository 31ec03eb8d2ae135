"""Dtype names used in IR text (`f32`, `bf16`, `i32`, `key<fry>`, ...) and back."""
from __future__ import annotations

import numpy as np

from . import _jax

_SHORT = {
    "float16": "f16", "float32": "f32", "float64": "f64", "bfloat16": "bf16",
    "int4": "i4", "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
    "uint4": "u4", "uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64",
    "bool": "bool", "complex64": "c64", "complex128": "c128",
}
_LONG = {short: long for long, short in _SHORT.items()}


def dtype_name(dtype) -> str:
    """The IR spelling of a dtype."""
    if _jax.is_key_dtype(dtype):
        return str(dtype)  # key<fry>
    name = np.dtype(dtype).name
    return _SHORT.get(name, name)


def parse_dtype(name: str):
    """The dtype an IR spelling names; raises KeyError when it names none."""
    if name.startswith("key<") and name.endswith(">"):
        return _jax.key_dtype(name[4:-1])
    long = _LONG.get(name, name)
    return _jax.numpy_dtype(long)


def is_dtype_name(name: str) -> bool:
    try:
        parse_dtype(name)
        return True
    except (KeyError, TypeError):
        return False
