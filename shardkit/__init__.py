"""shardkit: capture a JAX program into a small IR, run passes that partition it, lower it over a mesh."""
from shardkit import ir
from shardkit import federated
from shardkit.ir import capture
from shardkit.axis_rules import AxisRules, axis_rules
from shardkit.explain import ExplainReport, explain
from shardkit.hints import hint
from shardkit.jit import ShardedFunction, jit
from shardkit.lowering import LoweredFunction, lower
from shardkit.mesh import make_mesh

__all__ = ["AxisRules", "ExplainReport", "axis_rules", "LoweredFunction", "explain", "ShardedFunction", "capture", "hint", "ir", "jit", "lower", "make_mesh"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """Subpackages with heavier imports load on first use: `sk.train`."""
    if name == "train":
        import importlib
        return importlib.import_module("shardkit.train")
    raise AttributeError(f"module 'shardkit' has no attribute {name!r}")
