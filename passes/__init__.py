"""shardkit.passes: pass infrastructure and built-in passes. Imports only shardkit.ir.

    from shardkit import passes
    g = passes.Pipeline.parse("canonicalize,cse,dce").run(g, verify=True)

A pass is a frozen dataclass subclassing `Pass` with a class attribute `name`; its fields are its
options. `register(cls)` makes it usable in pipeline strings. See docs/passes.md for a tutorial.
"""
from .errors import (PassError, PassOptionError, PassVerifyError, PipelineError, RewriteError,
                     UnknownPassError)
from .base import ALL_PROPERTIES, Pass
from .config import debug, debug_enabled, set_debug
from .context import AnalysisCache, Diagnostic, Diagnostics, PassContext
from .properties import Property, check_property, register_property, registered_properties
from .registry import (get_pass, register, register_pipeline, registered_passes, registered_pipelines,
                       unregister)
from .pipeline import Pipeline
from .manager import PassManager, PassTiming
from .reproducer import Reproducer, load_reproducer, run_reproducer
from .rewrite import (Fired, Pattern, PatternSet, Replace, RewriteResult, Rewriter, apply_patterns, pattern,
                      same_type)
from .effects import is_collective, is_effectful, is_pure, is_random, must_keep
from .dce import DeadCodeElimination, eliminate_dead_code
from .cse import CommonSubexpressionElimination, eliminate_common_subexpressions
from .canonicalize import CANONICALIZATION_PATTERNS, Canonicalize, constant_folding
from .inline import Inline, clone_graph, inline_calls
from .print_ir import PrintIR
from .propagate_sharding import PropagateSharding, complete_shardings, is_fully_sharded
from .communication import AnalyzeCommunication, Collective, CommunicationReport, communication_report
from .partition import Partition, is_partitioned, partition_graph, spmd_collectives
from .partition_layout import PartitionError

from .auto_shard import AutoShard, AutoShardInfeasible, AutoShardResult, auto_shard

register_pipeline("default", "canonicalize,cse,dce,propagate-sharding")
register_pipeline("auto", "canonicalize,cse,dce,auto-shard")

__all__ = [
    "AnalyzeCommunication", "AutoShard", "AutoShardInfeasible", "AutoShardResult", "Collective", "auto_shard", "CommunicationReport", "PropagateSharding",
    "communication_report", "complete_shardings", "is_fully_sharded",
    "Partition", "PartitionError", "is_partitioned", "partition_graph", "spmd_collectives",
    "ALL_PROPERTIES", "AnalysisCache", "CANONICALIZATION_PATTERNS", "Canonicalize",
    "CommonSubexpressionElimination", "DeadCodeElimination", "Diagnostic", "Diagnostics", "Fired",
    "Inline", "Pass", "PassContext", "PassError", "PassManager", "PassOptionError", "PassTiming",
    "PassVerifyError", "Pattern", "PatternSet", "Pipeline", "PipelineError", "PrintIR", "Property",
    "Replace", "Reproducer", "RewriteError", "RewriteResult", "Rewriter", "UnknownPassError",
    "apply_patterns", "check_property", "clone_graph", "constant_folding", "debug", "debug_enabled",
    "eliminate_common_subexpressions", "eliminate_dead_code", "get_pass", "inline_calls",
    "is_collective", "is_effectful", "is_pure", "is_random", "load_reproducer", "must_keep", "pattern",
    "register", "register_pipeline", "register_property", "registered_passes", "registered_pipelines",
    "registered_properties", "run_reproducer", "same_type", "set_debug", "unregister",
]
