"""Errors of shardkit.functional: each names the operator and the function specs involved."""
from __future__ import annotations

from shardkit.ir import ShardkitError


class FunctionalError(ShardkitError, ValueError):
    """A functional operator got functions, grids or arguments that do not fit it, or a rule
    (a transpose, a derivative) that cannot exist was asked for."""
