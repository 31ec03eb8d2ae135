"""`print`: write the IR as it is at this point of the pipeline, then pass the graph on unchanged.

The header line starts with `##`, a comment in IR text, so the output can be parsed back as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

from shardkit.ir import Graph

from .base import ALL_PROPERTIES, Pass
from .registry import register


@register
@dataclass(frozen=True)
class PrintIR(Pass):
    """Print the graph (to the context's output stream, stdout by default) with an optional label."""

    name = "print"
    preserves = ALL_PROPERTIES

    label: str = ""

    def run(self, graph: Graph, ctx) -> Graph:
        header = f"## IR at print{f' ({self.label})' if self.label else ''}"
        text = f"{header}\n{graph}"
        if ctx is None:
            print(text, end="")
        else:
            ctx.write(text)
        return graph
