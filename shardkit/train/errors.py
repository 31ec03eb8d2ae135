"""Errors raised by `shardkit.train`; each says what went wrong, where, and how to fix it."""
from __future__ import annotations

from shardkit.ir import ShardingError, ShardkitError


class PlanError(ShardingError):
    """A model-state plan that does not fit the mesh or the model (unknown axis, indivisible dim, ...)."""


class DataError(ShardkitError, ValueError):
    """A batch that cannot be sharded over the plan's data axes."""


class CheckpointError(ShardkitError):
    """A checkpoint that is missing, unreadable, or does not fit the model being restored."""


class LaunchError(ShardkitError):
    """A multi-process launch that could not start or whose processes failed."""
