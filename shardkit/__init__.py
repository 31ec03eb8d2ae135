"""shardkit: capture a JAX program into a small IR, run passes that partition it, lower it over a mesh."""
from shardkit import ir
from shardkit.ir import capture
from shardkit.lowering import LoweredFunction, lower
from shardkit.mesh import make_mesh

__all__ = ["LoweredFunction", "capture", "ir", "lower", "make_mesh"]
__version__ = "0.1.0"
