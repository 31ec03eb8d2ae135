"""Checkpoints with Orbax: async saves of the training state, restore onto any mesh or plan.

A checkpoint stores arrays by name (`params/blocks/0/mlp/kernel`, `opt_state/0/mu/...`) with their
global shapes, so restoring only needs the target layout: the same run on a different mesh or plan
reads each array straight into its new sharding (no conversion step). Metadata (step, data
position, plan, mesh) is JSON; nothing is ever unpickled or evaluated.

Every finished save is sealed with a manifest of its files' sizes and CRC32s. Restoring walks the
steps from newest to oldest and skips, with a `CheckpointWarning`, a save that never finished, one
whose files no longer match its manifest, or one Orbax cannot read.
"""
from __future__ import annotations

import json
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from .errors import CheckpointError
from .tree import flat_nested, leaf_names, nested

MANIFEST = "shardkit_manifest.json"
TMP_MARKER = ".orbax-checkpoint-tmp"
FORMAT = 1
_ROLE_WORDS = {"params": "parameter", "opt_state": "optimizer state leaf", "rest": "model state leaf"}


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def _stored_leaf(x):
    """Typed PRNG keys are stored as their raw key data (uint32), arrays as themselves."""
    return jax.random.key_data(x) if _is_key(x) else x


def _key_data_target(leaf) -> jax.ShapeDtypeStruct:
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = tuple(sharding.spec) + (None,) * (len(data.shape) - len(tuple(sharding.spec)))
        sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (partial or corrupt) and an older one is used instead."""


@dataclass
class Restored:
    """What `Checkpointer.restore` returns: the step, the state trees and the JSON metadata."""

    step: int
    state: dict[str, Any]
    meta: dict


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files(step_dir: Path) -> dict[str, list[int]]:
    out = {}
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = Path(root) / name
            rel = str(path.relative_to(step_dir))
            if rel != MANIFEST:
                out[rel] = [path.stat().st_size, _crc32(path)]
    return out


class Checkpointer:
    """Saves and restores `{"params", "opt_state", "rest"}` state trees plus JSON metadata."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3, async_save: bool = True):
        import orbax.checkpoint as ocp
        self.directory = Path(directory).absolute()
        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True)
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    # -- saving ---------------------------------------------------------------------------------
    def save(self, step: int, state: dict[str, Any], meta: dict | None = None) -> None:
        """Start saving `state` (pytrees of jax Arrays) as `step`; returns once arrays are copied."""
        self._manager.wait_until_finished()
        self._seal_finished()
        names, leaves = [], []
        for role, tree in state.items():
            for name, leaf in zip(leaf_names(tree), jax.tree_util.tree_leaves(tree)):
                names.append(f"{role}/{name}")
                leaves.append(_stored_leaf(leaf))
        record = {"format": FORMAT, "step": int(step), **(meta or {})}
        json.dumps(record)  # metadata must be plain JSON
        args = self._ocp.args.Composite(state=self._ocp.args.StandardSave(nested(names, leaves)),
                                        meta=self._ocp.args.JsonSave(record))
        self._manager.save(int(step), args=args, force=True)

    def clear(self) -> list[int]:
        """Delete every checkpoint here (a fresh run reusing the directory); returns the steps removed."""
        self._manager.wait_until_finished()
        steps = self.steps()
        for step in steps:
            self._manager.delete(step)
        return steps

    def wait(self) -> None:
        """Block until pending async saves are written and sealed."""
        self._manager.wait_until_finished()
        self._seal_finished()

    def close(self) -> None:
        self.wait()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _seal_finished(self) -> None:
        if jax.process_index() != 0:
            return
        for step in self._manager.all_steps():
            step_dir = self.step_dir(step)
            if step_dir.is_dir() and not (step_dir / MANIFEST).exists():
                tmp = step_dir / (MANIFEST + ".tmp")
                tmp.write_text(json.dumps({"format": FORMAT, "files": _files(step_dir)}))
                tmp.replace(step_dir / MANIFEST)

    # -- reading --------------------------------------------------------------------------------
    def step_dir(self, step: int) -> Path:
        return self.directory / str(int(step))

    def steps(self) -> list[int]:
        """Finished checkpoint steps, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def partial_saves(self) -> list[Path]:
        """Directories of saves that never finished (the process died while writing them)."""
        if not self.directory.exists():
            return []
        return sorted(p for p in self.directory.iterdir() if TMP_MARKER in p.name)

    def verify(self, step: int) -> str | None:
        """Why checkpoint `step` is unusable, or None if its files match its manifest (or it has none)."""
        step_dir = self.step_dir(step)
        if not step_dir.is_dir():
            return f"{step_dir} does not exist"
        manifest_path = step_dir / MANIFEST
        if not manifest_path.exists():
            return None
        try:
            expected = json.loads(manifest_path.read_text())["files"]
        except (ValueError, KeyError, OSError) as e:
            return f"its manifest is unreadable ({e})"
        actual = _files(step_dir)
        for rel, (size, crc) in sorted(expected.items()):
            if rel not in actual:
                return f"file {rel} is missing"
            if actual[rel][0] != size:
                return f"file {rel} has {actual[rel][0]} bytes, {size} were written"
            if actual[rel][1] != crc:
                return f"file {rel} does not match its checksum"
        return None

    def metadata(self, step: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """{"params/blocks/0/kernel": (shape, dtype)} for every array stored at `step`."""
        tree = self._manager.item_metadata(step)["state"]
        tree = getattr(tree, "tree", tree)
        return {name: (tuple(m.shape), str(m.dtype)) for name, m in flat_nested(dict(tree)).items()}

    def restore(self, target: dict[str, Any], step: int | None = None) -> Restored | None:
        """Restore into `target` (pytrees of arrays or `jax.ShapeDtypeStruct`s with shardings): each
        array is read straight into the target's sharding. Without `step`, the newest good checkpoint
        is used and bad ones are skipped with a warning. Returns None if there are no checkpoints."""
        for partial in self.partial_saves():
            warnings.warn(f"ignoring partial checkpoint {partial} (its save never finished)",
                          CheckpointWarning, stacklevel=2)
        candidates = self.steps()
        if step is not None:
            if int(step) not in candidates:
                raise CheckpointError(f"no finished checkpoint for step {step} in {self.directory}; "
                                      f"available steps: {candidates or 'none'}")
            candidates = [int(step)]
        if not candidates:
            return None
        names, abstract, treedefs = self._target(target)
        problems = []
        for s in reversed(candidates):
            problem = self.verify(s)
            if problem is None:
                try:
                    stored = self.metadata(s)
                except Exception as e:  # unreadable metadata: treat as corrupt
                    problem = f"its metadata cannot be read ({type(e).__name__}: {e})"
            if problem is None:
                self._check_fits(s, stored, names, abstract)
                try:
                    restored = self._read(s, names, abstract)
                except Exception as e:
                    problem = f"Orbax could not read it ({type(e).__name__}: {str(e)[:200]})"
            if problem is not None:
                problems.append(f"step {s}: {problem}")
                warnings.warn(f"checkpoint {self.step_dir(s)} is corrupt or incomplete ({problem}); "
                              f"falling back to an earlier checkpoint", CheckpointWarning, stacklevel=2)
                continue
            tree, meta = restored
            return Restored(s, self._rebuild(tree, names, treedefs), meta)
        raise CheckpointError(f"no usable checkpoint in {self.directory}: " + "; ".join(problems))

    def _target(self, target: dict[str, Any]):
        names, abstract, treedefs = [], [], {}
        for role, tree in target.items():
            leaves, treedef = jax.tree_util.tree_flatten(tree)
            treedefs[role] = (treedef, len(leaves), [jax.random.key_impl(x) if _is_key(x) else None for x in leaves])
            for name, leaf in zip(leaf_names(tree), leaves):
                names.append(f"{role}/{name}")
                abstract.append(_key_data_target(leaf) if _is_key(leaf) else
                                jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None)))
        return names, abstract, treedefs

    def _check_fits(self, step: int, stored: dict, names: list[str], abstract: list) -> None:
        wanted = {name.replace(".", "_"): (name, a) for name, a in zip(names, abstract)}
        for key, (name, a) in wanted.items():
            role, _, rest = name.partition("/")
            word = _ROLE_WORDS.get(role, role)
            if key not in stored:
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} does not fit this model: it has no "
                    f"{word} {rest!r} (shape {tuple(a.shape)}); was it saved from a different model or "
                    f"optimizer?")
            shape = stored[key][0]
            if tuple(shape) != tuple(a.shape):
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} does not fit this model: {word} "
                    f"{rest!r} has shape {tuple(shape)} in the checkpoint but {tuple(a.shape)} in the "
                    f"model; restore it into a model built with the same sizes")
        extra = sorted(set(stored) - set(wanted))
        if extra:
            role, _, rest = extra[0].partition("/")
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} does not fit this model: it has "
                f"{_ROLE_WORDS.get(role, role)} {rest!r} that the model lacks"
                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))

    def _read(self, step: int, names: list[str], abstract: list):
        args = self._ocp.args.Composite(state=self._ocp.args.StandardRestore(nested(names, abstract)),
                                        meta=self._ocp.args.JsonRestore())
        out = self._manager.restore(step, args=args)
        return out["state"], dict(out["meta"])

    @staticmethod
    def _rebuild(tree: dict, names: list[str], treedefs: dict) -> dict[str, Any]:
        flat = flat_nested(tree)
        leaves = [flat[name.replace(".", "_")] for name in names]
        out, i = {}, 0
        for role, (treedef, count, key_impls) in treedefs.items():
            part = [x if impl is None else jax.random.wrap_key_data(x, impl=impl)
                    for x, impl in zip(leaves[i:i + count], key_impls)]
            out[role] = jax.tree_util.tree_unflatten(treedef, part)
            i += count
        return out
