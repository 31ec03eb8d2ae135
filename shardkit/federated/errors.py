"""Errors of the federated layer."""
from __future__ import annotations

from shardkit.ir import ShardkitError


class FederatedError(ShardkitError, ValueError):
    """A federated program is used wrongly: an op outside a program, an unknown placement, a value
    whose leading (client) dimension does not match its placement, a mesh that cannot hold it."""
