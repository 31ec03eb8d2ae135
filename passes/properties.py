"""Graph properties that passes require or guarantee, each with a check that says what breaks it.

    register_property("shardings-complete", check, "every value has a sharding")

A check returns None when the property holds, or a sentence saying where it does not. A name
nobody registered still works as a plain tag: passes can guarantee and require it, but it cannot be
checked on a graph, so requiring it needs an earlier pass in the pipeline that guarantees it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from shardkit.ir import Graph, ShardkitError
from shardkit.ir.printer import type_text


@dataclass(frozen=True)
class Property:
    """A named property of graphs, its description and its check."""

    name: str
    check: Callable[[Graph], str | None]
    description: str


_PROPERTIES: dict[str, Property] = {}


def register_property(name: str, check: Callable[[Graph], str | None], description: str,
                      *, replace: bool = False) -> Property:
    """Make `name` usable in a pass's `requires` / `guarantees`; `check(graph)` -> None or a problem."""
    if name in _PROPERTIES and not replace:
        raise ShardkitError(f"graph property {name!r} is already registered; pass replace=True to "
                            f"override it")
    prop = Property(name, check, description)
    _PROPERTIES[name] = prop
    return prop


def get_property(name: str) -> Property:
    """The registered property `name`; a ShardkitError listing the known ones otherwise."""
    try:
        return _PROPERTIES[name]
    except KeyError:
        raise ShardkitError(f"unknown graph property {name!r}; registered properties: "
                            f"{', '.join(sorted(_PROPERTIES)) or 'none'}; add it with "
                            f"shardkit.passes.register_property(name, check, description)") from None


def registered_properties() -> dict[str, Property]:
    """All registered properties by name."""
    return dict(_PROPERTIES)


def check_property(name: str, graph: Graph) -> str | None:
    """None when property `name` holds on `graph`, else a description of the first violation."""
    return get_property(name).check(graph)


def _shardings_complete(graph: Graph) -> str | None:
    for position, value in enumerate(graph.inputs):
        if value.type.sharding is None:
            return f"input {position} ({type_text(value.type)}) of @{graph.name} has no sharding"
    for op in graph.ops:
        for position, value in enumerate(op.results):
            if value.type.sharding is None:
                return f"result {position} of op '{op.name}' ({type_text(value.type)}) has no sharding"
        for region in op.regions:
            problem = _shardings_complete(region)
            if problem is not None:
                return f"{problem} (in a region of op '{op.name}')"
    return None


register_property("shardings-complete", _shardings_complete, "every value has a sharding")
