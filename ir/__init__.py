"""shardkit.ir: the IR (types, shardings, values, ops, graphs), op registry, capture, text and checks.

This package imports nothing from `shardkit.passes` or the rest of `shardkit`.
"""
from .errors import CaptureError, LoweringError, ParseError, ShardingError, ShardkitError, VerifyError
from .sharding import DimSharding, MeshShape, Sharding
from .graph import Graph, Op, Params, TensorType, Value
from .params import ArrayValue, Codec, RegionRef, register_codec, register_param_class
from .registry import OpDef, get_op_def, has_op, register_op, registered_ops, update_op
from . import ops  # noqa: F401  (registers the dedicated op definitions)
from .capture import capture
from .interpreter import Interpreter
from .parser import parse
from .printer import print_graph, type_text
from .verifier import verify

__all__ = [
    "ArrayValue", "CaptureError", "Codec", "DimSharding", "Graph", "Interpreter", "LoweringError",
    "MeshShape", "Op", "OpDef", "Params", "ParseError", "RegionRef", "Sharding", "ShardingError",
    "ShardkitError", "TensorType", "Value", "VerifyError", "capture", "get_op_def", "has_op", "parse",
    "print_graph", "register_codec", "register_op", "register_param_class", "registered_ops",
    "type_text", "update_op", "verify",
]
