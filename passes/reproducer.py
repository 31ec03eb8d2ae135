"""Reproducers: when a pass fails, the IR it was given and the pipeline from it on, written to one file.

The file is IR text preceded by `##` comment lines (which the IR parser skips), e.g.

    ## shardkit pass reproducer
    ## pipeline: broken,cse
    ## failed-pass: broken
    ## mesh: data=4, model=2
    ## error: pass 'broken' produced invalid IR: ...
    graph @f(%0: f32[8]) { ... }

`run_reproducer(path)` parses it and runs the pipeline again (with verification on), so the failure
can be debugged, or a fix checked, without the program that first hit it. The passes it names must be
registered in the process that reruns it, and IR holding references to in-process objects (`&N<...>`)
parses only in the process that wrote it.
"""
from __future__ import annotations

import itertools
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardkit.ir import Graph, MeshShape, ShardkitError, parse

HEADER = "## shardkit pass reproducer"
_FIELD = re.compile(r"## ([a-z\-]+): ?(.*)\Z")
_COUNTER = itertools.count()


def default_directory() -> Path:
    """Where reproducers go unless a PassManager is given `reproducer_dir`."""
    return Path(tempfile.gettempdir()) / "shardkit-reproducers"


@dataclass(frozen=True)
class Reproducer:
    """A reproducer read back from disk: the IR text, the pipeline string and what failed."""

    path: str
    ir: str
    pipeline: str
    failed_pass: str | None = None
    error: str = ""
    mesh: MeshShape | None = None

    def graph(self) -> Graph:
        """The IR the failing pass was given."""
        return parse(self.ir)

    def run(self, pipeline: str | None = None, **manager_options: Any) -> Graph:
        """Run the recorded pipeline (or another one) on the recorded IR, verifying after each pass."""
        from .manager import PassManager
        manager_options.setdefault("verify", True)
        manager = PassManager(self.pipeline if pipeline is None else pipeline, **manager_options)
        return manager.run(self.graph(), mesh=self.mesh)


def write_reproducer(graph: Graph, pipeline: str, *, failed_pass: str | None, error: str,
                     mesh: Any = None, directory: str | os.PathLike | None = None) -> str:
    """Write a reproducer file and return its path."""
    folder = Path(directory) if directory is not None else default_directory()
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", failed_pass or "input")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"{stem}-{stamp}-{os.getpid()}-{next(_COUNTER)}.skir"
    lines = [HEADER, f"## pipeline: {pipeline}"]
    if failed_pass is not None:
        lines.append(f"## failed-pass: {failed_pass}")
    if mesh is not None:
        lines.append(f"## mesh: {MeshShape.of(mesh)}")
    lines += [f"## error: {line}" for line in error.splitlines() or [""]]
    lines.append(f"## rerun: shardkit.passes.run_reproducer({str(path)!r})")
    try:
        body = str(graph)
    except Exception as e:  # the reproducer must still be written, even if the IR cannot be printed
        body = f"## the IR could not be printed: {type(e).__name__}: {e}\n"
    path.write_text("\n".join(lines) + "\n" + body)
    return str(path)


def load_reproducer(path: str | os.PathLike) -> Reproducer:
    """Read a reproducer file written by a PassManager."""
    text = Path(path).read_text()
    lines = text.split("\n")
    if not lines or lines[0] != HEADER:
        raise ShardkitError(f"{path} is not a shardkit pass reproducer (its first line should be "
                            f"{HEADER!r})")
    fields: dict[str, list[str]] = {}
    body_start = len(lines)
    for number, line in enumerate(lines[1:], start=1):
        match = _FIELD.match(line)
        if match is None:
            body_start = number
            break
        fields.setdefault(match.group(1), []).append(match.group(2))
    if "pipeline" not in fields:
        raise ShardkitError(f"reproducer {path} has no '## pipeline:' line; it was not written by "
                            f"shardkit or has been edited")
    mesh = None
    if fields.get("mesh"):
        mesh = _mesh_from_text(fields["mesh"][0], path)
    return Reproducer(str(path), "\n".join(lines[body_start:]), fields["pipeline"][0],
                      fields.get("failed-pass", [None])[0], "\n".join(fields.get("error", [])), mesh)


def run_reproducer(path: str | os.PathLike, pipeline: str | None = None, **manager_options: Any) -> Graph:
    """Re-run a reproducer: parse its IR and run its pipeline (or `pipeline`) with verification on."""
    return load_reproducer(path).run(pipeline, **manager_options)


def _mesh_from_text(text: str, path) -> MeshShape:
    axes = []
    for part in text.split(","):
        name, _, size = part.strip().partition("=")
        if not name or not size.strip().isdigit():
            raise ShardkitError(f"reproducer {path}: cannot read the mesh line {text!r}; expected "
                                f"'name=size, name=size'")
        axes.append((name, int(size)))
    return MeshShape(tuple(axes))
