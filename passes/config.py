"""Process-wide debug switch for pass managers: when on, every pass's output is verified.

Off by default (verification costs time); test suites and debugging sessions turn it on with
`set_debug(True)` or, for a block of code, `with debug(): ...`. Nothing is read from the environment.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

_DEBUG = False


def set_debug(enabled: bool) -> None:
    """Make PassManagers verify after each pass unless told otherwise (`verify=`)."""
    global _DEBUG
    _DEBUG = bool(enabled)


def debug_enabled() -> bool:
    """Whether PassManagers verify after each pass by default."""
    return _DEBUG


@contextlib.contextmanager
def debug(enabled: bool = True) -> Iterator[None]:
    """Within the block, PassManagers verify after each pass by default."""
    global _DEBUG
    previous = _DEBUG
    _DEBUG = bool(enabled)
    try:
        yield
    finally:
        _DEBUG = previous
