"""Read the collectives XLA actually compiled out of HLO text, with their mesh axes and wire bytes.

Bytes are per device under the ring model: all-reduce moves 2(n-1)/n of its operand, all-gather
(n-1)/n of its result, reduce-scatter and all-to-all (n-1)/n of their operand, and
collective-permute its whole operand (for the devices that send).
"""
from __future__ import annotations

import re
import numpy as np

from shardkit.ir import MeshShape
from shardkit.passes.communication import Collective, ring_bytes

_KINDS = {"all-reduce": "all-reduce", "all-gather": "all-gather", "reduce-scatter": "reduce-scatter",
          "all-to-all": "all-to-all", "collective-permute": "collective-permute"}
_LINE = re.compile(r"=\s*(?P<type>\([^=]*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+"
                   r"(?P<kind>all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
                   r"(?P<start>-start)?\(")
_COMMENT = re.compile(r"/\*.*?\*/")
_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
          "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 1, "u4": 1,
          "f8e4m3fn": 1, "f8e5m2": 1}


def _array_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(text):
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        total += count * _BYTES.get(dtype, 4)
    return total


def _groups(line: str) -> list[list[int]] | None:
    m = re.search(r"replica_groups=\{(\{[0-9,{} ]*\})\}", line)
    if m:
        return [[int(x) for x in filter(None, g.split(","))] for g in re.findall(r"\{([0-9, ]*)\}", m.group(1))]
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?", line)
    if m:
        groups, size = int(m.group(1)), int(m.group(2))
        dims = [int(x) for x in m.group(3).split(",")]
        ids = np.arange(int(np.prod(dims))).reshape(dims)
        if m.group(4):
            ids = ids.transpose([int(x) for x in m.group(4).split(",")])
        return ids.reshape(groups, size).tolist()
    m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=\((?P<ids>[^{]*)\))?\s*\{([^}]*)\}", line)
    if m:
        axes = [(name, int(size)) for name, size in re.findall(r"'([^']+)'=(\d+)", m.group(1))]
        chosen = re.findall(r"'([^']+)'", m.group(3))
        names = [a for a, _ in axes]
        ids = _device_ids(m.group("ids"), int(np.prod([s for _, s in axes]))).reshape([s for _, s in axes])
        keep = [names.index(a) for a in names if a not in chosen]
        group = [names.index(a) for a in chosen if a in names]
        ids = ids.transpose(keep + group)
        size = int(np.prod([axes[i][1] for i in group])) if group else 1
        return ids.reshape(-1, size).tolist()
    m = re.search(r"source_target_pairs=\{(\{[0-9,{} ]*\})\}", line)
    if m:
        return [[int(x) for x in filter(None, g.split(","))] for g in re.findall(r"\{([0-9, ]*)\}", m.group(1))]
    return None


def _device_ids(text: str | None, count: int) -> np.ndarray:
    """The device order of a mesh-style replica group: `[4,2]T(1,0)` (an iota, reshaped and
    transposed), an explicit list, or none (0..count-1)."""
    if not text:
        return np.arange(count)
    m = re.fullmatch(r"\s*\[([0-9,]+)\](?:T\(([0-9,]+)\))?\s*", text)
    if m:
        dims = [int(x) for x in m.group(1).split(",")]
        ids = np.arange(int(np.prod(dims))).reshape(dims)
        if m.group(2):
            ids = ids.transpose([int(x) for x in m.group(2).split(",")])
        return ids.reshape(-1)
    return np.array([int(x) for x in re.findall(r"\d+", text)])


def _axes_of(group: list[int], mesh: MeshShape | None) -> tuple[str, ...]:
    if mesh is None or not group:
        return ()
    sizes = [s for _, s in mesh.axes]
    total = int(np.prod(sizes))
    if any(i >= total for i in group):
        return ()
    coords = np.array(np.unravel_index(np.array(group), sizes))
    return tuple(name for k, (name, _) in enumerate(mesh.axes) if len(set(coords[k].tolist())) > 1)


def collectives_from_hlo(text: str, mesh=None) -> list[Collective]:
    """Every collective in compiled HLO text (async `-start` counted once, `-done` skipped)."""
    mesh_shape = MeshShape.of(mesh) if mesh is not None else None
    found = []
    for line in text.splitlines():
        line = _COMMENT.sub("", line)  # big tuples carry /*index=5*/ markers
        m = _LINE.search(line)
        if not m:
            continue
        kind = _KINDS[m.group("kind")]
        result_bytes = _array_bytes(m.group("type"))
        if m.group("start") and m.group("type").startswith("("):
            result_bytes = _array_bytes(m.group("type")) // 2 or result_bytes  # (operand, result) tuples
        groups = _groups(line) or [[]]
        if kind == "collective-permute":
            pairs = groups
            n = 2 if pairs and pairs[0] else 1
            ids = sorted({i for p in pairs for i in p})
            axes = _axes_of(ids, mesh_shape)
        else:
            n = len(groups[0]) if groups[0] else 1
            axes = _axes_of(groups[0], mesh_shape)
        operand_bytes = result_bytes * n if kind == "reduce-scatter" else result_bytes
        if kind == "all-gather":
            operand_bytes = result_bytes // max(n, 1)
        name = line.split("=")[0].strip().lstrip("ROOT ").strip()
        found.append(Collective(kind, axes, n, ring_bytes(kind, n, operand_bytes, result_bytes), name))
    return found
