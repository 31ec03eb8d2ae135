"""The pass registry: pass names (as written in pipeline strings) to pass classes, plus pipeline aliases."""
from __future__ import annotations

import difflib
from typing import TypeVar

from .base import PASS_NAME, Pass, check_pass_class
from .errors import PipelineError, UnknownPassError

P = TypeVar("P", bound=type)

_PASSES: dict[str, type[Pass]] = {}
_ALIASES: dict[str, str] = {}


def register(cls: P, *, replace: bool = False) -> P:
    """Make a Pass subclass reachable from pipeline strings by its `name`; usable as a decorator."""
    check_pass_class(cls)
    name = cls.name
    if name in _ALIASES:
        raise PipelineError(f"cannot register pass '{name}': a pipeline alias has that name")
    existing = _PASSES.get(name)
    if existing is not None and existing is not cls and not replace:
        raise PipelineError(f"a pass named '{name}' is already registered ({existing.__module__}."
                            f"{existing.__qualname__}); choose another name or pass replace=True")
    _PASSES[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a registered pass (mainly for tests and notebooks that redefine passes)."""
    if name not in _PASSES:
        raise unknown_pass_error(name)
    del _PASSES[name]


def register_pipeline(name: str, text: str, *, replace: bool = False) -> None:
    """Give a pipeline string a name usable inside other pipelines (as `default` is)."""
    if not PASS_NAME.fullmatch(name):
        raise PipelineError(f"pipeline alias {name!r} must look like a pass name (e.g. 'my-pipeline')")
    if name in _PASSES:
        raise PipelineError(f"cannot name a pipeline '{name}': a pass has that name")
    if name in _ALIASES and not replace:
        raise PipelineError(f"a pipeline named '{name}' is already registered ({_ALIASES[name]!r}); "
                            f"pass replace=True to change it")
    from .pipeline import Pipeline
    Pipeline.parse(text)  # fail now, not when the alias is used
    _ALIASES[name] = text


def get_pass(name: str) -> type[Pass]:
    """The pass class registered under `name`; UnknownPassError listing the valid names otherwise."""
    try:
        return _PASSES[name]
    except KeyError:
        raise unknown_pass_error(name) from None


def registered_passes() -> dict[str, type[Pass]]:
    """All registered passes, by name."""
    return dict(sorted(_PASSES.items()))


def registered_pipelines() -> dict[str, str]:
    """All pipeline aliases and their pipeline strings."""
    return dict(sorted(_ALIASES.items()))


def alias_text(name: str) -> str | None:
    """The pipeline string behind alias `name`, or None when `name` is not an alias."""
    return _ALIASES.get(name)


def unknown_pass_error(name: str, where: str = "") -> UnknownPassError:
    """The error for a pass name nobody registered: suggestions and the full list of valid names."""
    known = sorted(_PASSES)
    close = difflib.get_close_matches(name, known + sorted(_ALIASES), n=3)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    aliases = f"; pipelines: {', '.join(sorted(_ALIASES))}" if _ALIASES else ""
    return UnknownPassError(
        f"unknown pass '{name}'{where}{hint}; registered passes: {', '.join(known) or 'none'}"
        f"{aliases}. Define it as a Pass subclass and call shardkit.passes.register(YourPass) "
        f"before parsing the pipeline")
