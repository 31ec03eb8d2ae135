"""Batches: deterministic sources with a resumable position, and placing a global batch on a mesh.

A data source for `fit` is one of
- a callable `source(step) -> batch` (stateless: the step is the position);
- an iterator with `get_state()` / `set_state(state)` (grain-style; the state is saved as JSON);
- any other iterable: its position is the number of batches drawn, and resuming draws and drops
  that many again.
A batch is a pytree of arrays whose leading dimension is the global batch size.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable

import jax
import numpy as np
from jax.sharding import NamedSharding

from .errors import DataError


class TextBatches:
    """Random windows of a token array: batch `i` is `{"inputs", "targets"}` with targets shifted by one.

    Batch `i` depends only on (seed, i), so a run resumed at step k sees exactly the batches an
    uninterrupted run sees from step k on.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0):
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or len(tokens) <= seq_len + 1:
            raise DataError(f"TextBatches needs a 1-D token array longer than seq_len+1={seq_len + 1}, "
                            f"got shape {tokens.shape}")
        self.tokens = tokens.astype(np.int32)
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.seed = int(seed)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(step)])
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch_size)
        windows = np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts])
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


class DataStream:
    """Wraps any data source and tracks a JSON-serialisable position for checkpoints."""

    def __init__(self, source: Any):
        self.source = source
        self.position = 0
        self._iterator = None
        if not callable(source) or hasattr(source, "__next__"):
            if not isinstance(source, Iterable) and not hasattr(source, "__next__"):
                raise DataError(f"data must be a callable step -> batch or an iterable of batches, "
                                f"got {type(source).__name__}")

    @property
    def stateless(self) -> bool:
        return callable(self.source) and not hasattr(self.source, "__next__")

    def _iter(self):
        if self._iterator is None:
            self._iterator = iter(self.source)
        return self._iterator

    def next(self) -> Any:
        """The next batch (the batch of step `position + 1`)."""
        if self.stateless:
            batch = self.source(self.position)
        else:
            try:
                batch = next(self._iter())
            except StopIteration:
                raise DataError(f"the data iterator ran out after {self.position} batches; give more "
                                f"data or fewer steps") from None
        self.position += 1
        return batch

    def state(self) -> dict:
        """The position as JSON-able data (and the iterator's own state when it has one)."""
        out: dict[str, Any] = {"position": self.position}
        if not self.stateless and hasattr(self._iter(), "get_state"):
            out["iterator"] = self._iter().get_state()
        return out

    def restore(self, state: dict) -> None:
        """Continue from a saved position."""
        position = int(state.get("position", 0))
        if self.stateless:
            self.position = position
            return
        iterator = self._iter()
        if "iterator" in state and hasattr(iterator, "set_state"):
            iterator.set_state(state["iterator"])
            self.position = position
            return
        if position:
            warnings.warn(f"the data iterator has no get_state/set_state: replaying {position} batches to "
                          f"reach the saved position", stacklevel=3)
        self.position = 0
        while self.position < position:
            self.next()


def shard_batch(batch: Any, sharding: NamedSharding) -> Any:
    """Place a global (host) batch on the mesh with `sharding`; with several processes each one
    transfers only the rows its own devices hold (`jax.make_array_from_process_local_data`)."""

    def one(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        x = np.asarray(x)
        rows = process_rows(sharding, x.shape)
        if rows is None:
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
        return jax.make_array_from_process_local_data(sharding, x[rows[0]:rows[1]], x.shape)

    return jax.tree_util.tree_map(one, batch)


def process_rows(sharding: NamedSharding, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The contiguous [start, stop) rows this process's devices hold, or None if not contiguous."""
    spans = set()
    for index in sharding.addressable_devices_indices_map(tuple(shape)).values():
        first = index[0] if index else slice(None)
        start, stop, _ = first.indices(shape[0])
        spans.add((start, stop))
    spans = sorted(spans)
    for (_, stop), (start, _) in zip(spans, spans[1:]):
        if start != stop:
            return None
    return spans[0][0], spans[-1][1]


def count_tokens(batch: Any) -> tuple[int, str]:
    """How much work a batch is: tokens of its first integer leaf, else samples of its first leaf."""
    leaves = jax.tree_util.tree_leaves(batch)
    for leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and np.issubdtype(dtype, np.integer) and len(leaf.shape) >= 2:
            return int(np.prod(leaf.shape)), "tok"
    return (int(leaves[0].shape[0]) if leaves and getattr(leaves[0], "shape", ()) else 1), "samples"


def source_for(data: Callable | Iterable) -> DataStream:
    """Wrap a data source (see module docs)."""
    return data if isinstance(data, DataStream) else DataStream(data)
