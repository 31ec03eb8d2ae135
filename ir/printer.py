"""Deterministic text for graphs. Value names (%0, %1, ...) are assigned here, in definition order.

    graph @f(%0: f32[8@data,4], %1: f32[4,16]) mesh(data=4, model=2) {
      %2 = dot_general(%0, %1) {dimension_numbers=(((1,), (0,)), ((), ())), ...} : f32[8@data,16]
      %3, %4 = scan(%2, %2) {length=8, ...} : (f32[16], f32[8,16]) [
        (%5: f32[16], %6: f32[16]) {
          %7 = add(%5, %6) : f32[16]
          return %7, %7
        }
      ]
      return %3
    }

A type is `dtype[dims]`; a sharded dimension reads `8@data` (or `8@data+model`), an open one ends
in `?`, and `|` starts the sharding's extras (`p0` priority, `r=` replicated, `u=` unreduced axes).
A type with no `@`, `?` or `|` has no sharding yet; `f32[8,4|]` is closed and fully replicated.
"""
from __future__ import annotations

import re

from .dtypes import dtype_name
from .params import format_value

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
_AXIS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def shape_text(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def axis_text(axis: str) -> str:
    if _AXIS.match(axis):
        return axis
    import json
    return json.dumps(axis)


def symbol_text(name: str) -> str:
    if _IDENT.match(name):
        return name
    import json
    return json.dumps(name)


_DTYPE_TEXT: dict = {}  # dtype -> its IR spelling; `dtype_name` is slow and every type needs one


def _dtype_text(dtype) -> str:
    try:
        return _DTYPE_TEXT[dtype]
    except KeyError:
        text = _DTYPE_TEXT[dtype] = dtype_name(dtype)
        return text
    except TypeError:  # an unhashable dtype-like object
        return dtype_name(dtype)


def type_text(t) -> str:
    sharding = t.sharding
    if sharding is None:
        return _dtype_text(t.dtype) + shape_text(t.shape)
    dims = []
    for size, dim in zip(t.shape, sharding.dims):
        text = str(size)
        if dim.axes:
            text += "@" + "+".join(axis_text(a) for a in dim.axes)
        if dim.is_open:
            text += "?"
        dims.append(text)
    extras = sharding.extras_text()
    marked = any(d.axes or d.is_open for d in sharding.dims)
    suffix = "|" + extras if (extras or not marked) else ""
    return f"{_dtype_text(t.dtype)}[{','.join(dims)}{suffix}]"


class _Namer:
    def __init__(self):
        self.names: dict[int, str] = {}

    def define(self, value) -> str:
        name = f"%{len(self.names)}"
        self.names[id(value)] = name
        return name

    def use(self, value) -> str:
        name = self.names.get(id(value))
        if name is None:
            return f"%<undefined {value.type}>"
        return name


def print_graph(graph) -> str:
    namer = _Namer()
    lines: list[str] = []
    args = ", ".join(f"{namer.define(v)}: {type_text(v.type)}" for v in graph.inputs)
    header = f"graph @{symbol_text(graph.name)}({args})"
    if graph.mesh is not None:
        header += " mesh(" + ", ".join(f"{axis_text(n)}={s}" for n, s in graph.mesh.axes) + ")"
    if graph.in_tree is not None:
        header += f" in_tree={format_value(graph.in_tree)}"
    if graph.out_tree is not None:
        header += f" out_tree={format_value(graph.out_tree)}"
    lines.append(header + " {")
    _print_body(graph, namer, lines, "  ")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _print_body(graph, namer, lines, indent) -> None:
    for op in graph.ops:
        _print_op(op, namer, lines, indent)
    lines.append(f"{indent}return " + ", ".join(namer.use(v) for v in graph.outputs))


def op_text_head(op, namer) -> str:
    operands = ", ".join(namer.use(v) for v in op.operands)
    text = f"{symbol_text(op.name)}({operands})"
    if len(op.params):
        text += " {" + ", ".join(f"{k}={format_value(v)}" for k, v in op.params.items()) + "}"
    return text


def _print_op(op, namer, lines, indent) -> None:
    head = op_text_head(op, namer)
    results = ", ".join(namer.define(v) for v in op.results)
    if len(op.results) == 1:
        types = type_text(op.results[0].type)
    else:
        types = "(" + ", ".join(type_text(v.type) for v in op.results) + ")"
    line = f"{indent}{results} = {head} : {types}" if op.results else f"{indent}{head} : {types}"
    if not op.regions:
        lines.append(line)
        return
    lines.append(line + " [")
    inner = indent + "  "
    for i, region in enumerate(op.regions):
        args = ", ".join(f"{namer.define(v)}: {type_text(v.type)}" for v in region.inputs)
        lines.append(f"{inner}({args}) {{")
        _print_body(region, namer, lines, inner + "  ")
        lines.append(inner + ("}," if i + 1 < len(op.regions) else "}"))
    lines.append(indent + "]")
