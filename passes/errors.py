"""Errors raised by the pass layer; all derive from shardkit.ir.ShardkitError."""
from __future__ import annotations

from shardkit.ir import ShardingError, ShardkitError, VerifyError


class PipelineError(ShardkitError, ValueError):
    """A pipeline string or pass option that cannot be understood (unknown pass, bad option, syntax)."""


class UnknownPassError(PipelineError, KeyError):
    """A pipeline names a pass (or pipeline alias) that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class PassOptionError(PipelineError, TypeError):
    """A pass option that does not exist, is missing, or has a value of the wrong type."""


class RewriteError(ShardkitError):
    """A rewrite pattern returned something the driver cannot apply, or patterns did not converge."""


class PassError(ShardkitError):
    """A pass failed while a PassManager ran it; names the pass and the reproducer written to disk."""

    def __init__(self, message: str, pass_name: str | None = None, reproducer: str | None = None):
        self.pass_name = pass_name
        self.reproducer = reproducer
        Exception.__init__(self, message)


class PassVerifyError(PassError, VerifyError):
    """A pass produced IR that the verifier rejects (or broke a property it claims to guarantee)."""

    def __init__(self, message: str, pass_name: str | None = None, reproducer: str | None = None,
                 op=None):
        self.op = op
        PassError.__init__(self, message, pass_name, reproducer)


class PassShardingError(PassError, ShardingError):
    """A pass rejected the shardings it was given (bad or conflicting hints): both a PassError and a
    ShardingError."""
