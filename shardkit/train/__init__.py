"""`shardkit.train`: training loops on a mesh.

Model-state partitioning plans (`Plan`, named "dp", "zero1", "zero2", "zero3"/"fsdp", "megatron",
"fsdp+tp"), `plan_report` to compare them, a small `Trainer` / `fit` built on `sk.jit`, Orbax
checkpoints that restore onto any mesh or plan, and multi-process runs (`init_distributed`,
`shardkit launch`).
"""
from .checkpoint import Checkpointer, CheckpointWarning, Restored
from .data import DataStream, TextBatches, shard_batch
from .distributed import LaunchInfo, init_distributed
from .errors import CheckpointError, DataError, LaunchError, PlanError
from .launch import launch
from .metrics import read_metrics
from .plans import (NAMED_PLANS, PLAN_NAMES, REPLICATED, SHARDED, SHARDED_TP, TP, ParamLayout, Placement, Plan,
                    PlanLayout, get_plan, with_axes)
from .report import PlanReport, PlanRow, plan_report
from .setup import parse_mesh, setup_devices
from .step import make_train_step
from .trainer import Trainer, TrainState, fit

__all__ = [
    "CheckpointError", "CheckpointWarning", "Checkpointer", "DataError", "DataStream", "LaunchError",
    "LaunchInfo", "NAMED_PLANS", "PLAN_NAMES", "ParamLayout", "Placement", "Plan", "PlanError", "PlanLayout",
    "PlanReport", "PlanRow", "REPLICATED", "Restored", "SHARDED", "SHARDED_TP", "TP", "TextBatches",
    "TrainState", "Trainer", "fit", "get_plan", "init_distributed", "launch", "make_train_step",
    "parse_mesh", "plan_report", "read_metrics", "setup_devices", "shard_batch", "with_axes",
]
