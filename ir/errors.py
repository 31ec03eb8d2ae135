"""Errors raised by the IR layer. Every shardkit error derives from ShardkitError."""
from __future__ import annotations


class ShardkitError(Exception):
    """Base class of all shardkit errors: each says what went wrong, where, and how to fix it."""


class ShardingError(ShardkitError, ValueError):
    """A sharding that does not fit the value or the mesh (unknown axis, rank mismatch, ...)."""


class CaptureError(ShardkitError):
    """A program could not be captured into the IR."""


class LoweringError(ShardkitError):
    """A graph could not be lowered back to JAX."""


class ParseError(ShardkitError, ValueError):
    """Malformed IR text; carries the 1-based line and column of the problem."""

    def __init__(self, message: str, line: int, column: int, source_line: str = ""):
        self.line = line
        self.column = column
        self.message = message
        where = f"line {line}, column {column}: {message}"
        if source_line:
            where += f"\n  {source_line}\n  {' ' * (column - 1)}^"
        super().__init__(where)


class VerifyError(ShardkitError, ValueError):
    """The IR breaks an invariant; the message names the op and shows its neighbours."""

    def __init__(self, message: str, op=None, pass_name: str | None = None):
        self.op = op
        self.pass_name = pass_name
        super().__init__(message)
