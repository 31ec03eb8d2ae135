"""Metrics: a JSONL log (one JSON object per step) and the rich progress bar of a training run."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from .distributed import is_primary


def _plain(value: Any) -> Any:
    if isinstance(value, (bool, int, str)):
        return value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else str(value)


class MetricsLog:
    """Appends `{"step": ..., "loss": ..., ...}` lines to a file; only process 0 writes."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self._file = None
        if self.path is not None and is_primary():
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after `step` (used when resuming from a checkpoint at `step`)."""
        if self.path is None or not is_primary() or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def reset(self) -> None:
        """Start an empty log (a fresh run, not a resumed one)."""
        if self.path is not None and is_primary():
            self.path.write_text("")

    def write(self, record: dict) -> None:
        if self.path is None or not is_primary():
            return
        if self._file is None:
            self._file = self.path.open("a")
        self._file.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class Progress:
    """A rich progress bar showing step, loss, step time and throughput (process 0 only)."""

    def __init__(self, total: int, start: int = 0, unit: str = "tok", console=None, enabled: bool = True):
        self.enabled = enabled and is_primary()
        self._bar = None
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
            TimeRemainingColumn
        self._bar = RichProgress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss [cyan]{task.fields[loss]}"), TextColumn("{task.fields[ms]} ms/step"),
            TextColumn("{task.fields[rate]} " + unit + "/s"), TextColumn("{task.fields[extra]}"),
            TimeRemainingColumn(), console=console, transient=False)
        self._task = self._bar.add_task("train", total=total, completed=start, loss="-", ms="-", rate="-",
                                        extra="")
        self._bar.start()

    def update(self, step: int, loss: float, seconds: float, rate: float, extra: str = "") -> None:
        if self._bar is None:
            return
        self._bar.update(self._task, completed=step, loss=f"{loss:.4f}", ms=f"{seconds * 1e3:.0f}",
                         rate=f"{rate:,.0f}", extra=extra)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def mean_metrics(records: Iterable[dict]) -> dict[str, float]:
    """Per-key mean of a list of metric dicts."""
    sums: dict[str, float] = {}
    count = 0
    for r in records:
        count += 1
        for k, v in r.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return {k: v / max(count, 1) for k, v in sums.items()}
