"""Naming and rebuilding the leaves of model-state pytrees (nnx State, optax states, dicts)."""
from __future__ import annotations

from typing import Any

import jax
from flax import nnx


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _key_text(key) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_names(tree: Any) -> list[str]:
    """A readable, unique "a/b/0/kernel" name per array leaf of `tree`, in `tree_leaves` order."""
    entries, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)
    names = []
    for path, node in entries:
        base = "/".join(_key_text(k) for k in path) or "value"
        leaves = jax.tree_util.tree_leaves(node) if _is_variable(node) else [node]
        if len(leaves) == 1:
            names.append(base)
        else:
            names.extend(f"{base}/{i}" for i in range(len(leaves)))
    if len(names) != len(jax.tree_util.tree_leaves(tree)):
        raise AssertionError("leaf_names: variable flattening disagrees with tree_leaves")
    return names


def variable_metadata(tree: Any) -> list[dict]:
    """The nnx Variable metadata of each array leaf of `tree` ({} for plain arrays)."""
    entries, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_variable)
    out = []
    for _, node in entries:
        if _is_variable(node):
            meta = dict(node.get_metadata())
            out.extend([meta] * len(jax.tree_util.tree_leaves(node)))
        else:
            out.append({})
    return out


def logical_names(meta: dict) -> tuple | None:
    """The logical axis names an nnx param was annotated with (`nnx.with_partitioning`), if any."""
    for key in ("out_sharding", "sharding_names", "sharding"):
        names = meta.get(key)
        if names is not None and not isinstance(names, jax.sharding.Sharding):
            return tuple(names)
    return None


def nested(names: list[str], leaves: list) -> dict:
    """A nested dict {"a": {"b": leaf}} from "a/b" names (the form Orbax stores)."""
    root: dict = {}
    for name, leaf in zip(names, leaves):
        parts = [p.replace(".", "_") for p in name.split("/")]
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"leaf name {name!r} collides with another leaf")
            node = child
        if parts[-1] in node:
            raise ValueError(f"two leaves are both named {name!r}")
        node[parts[-1]] = leaf
    return root


def flat_nested(tree: dict, prefix: str = "") -> dict[str, Any]:
    """The inverse view of `nested`: {"a/b": leaf}."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flat_nested(value, name))
        else:
            out[name] = value
    return out


def array_bytes(shape, dtype) -> int:
    """Bytes of a dense array of this shape and dtype."""
    import numpy as np
    count = 1
    for d in shape:
        count *= int(d)
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:  # extended dtypes such as PRNG keys
        itemsize = int(getattr(dtype, "itemsize", 0) or 8)
    return count * itemsize
