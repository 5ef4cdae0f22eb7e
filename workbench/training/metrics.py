"""The run's metric log: append-only ``metrics.jsonl`` (one JSON object per logged step) and
TensorBoard events under ``tb/`` (optional: a missing tensorboard package only disables them).

Non-finite numbers are written as JSON ``null`` (metrics.jsonl stays strict JSON). Reading goes
through :func:`workbench.rundir.read_jsonl`: a torn last line (a crash mid-write) is dropped, a
damaged line elsewhere is skipped with a warning. On resume ``truncate_metrics`` drops every line
past the checkpoint's step.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..rundir import RunDir, append_jsonl, atomic_write_text, json_safe, read_jsonl

__all__ = ["MetricsLog", "read_metrics", "truncate_metrics"]


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The JSON-object lines of the run's metrics.jsonl, in order ([] when there is none)."""
    return read_jsonl(RunDir(run_dir).metrics)


def _step_of(row: dict) -> int | None:
    step = row.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def truncate_metrics(run_dir: str | Path, last_step: int) -> int:
    """Atomically keep the lines with an integer ``step <= last_step`` (dropping a torn last line,
    damaged lines and lines without a step); return how many remain."""
    path = RunDir(run_dir).metrics
    if not path.is_file():
        return 0
    kept = [row for row in read_metrics(run_dir) if (s := _step_of(row)) is not None and s <= last_step]
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))
    return len(kept)


class MetricsLog:
    """Appends ``{"step": step, **metrics}`` lines to metrics.jsonl (with
    :func:`workbench.rundir.append_jsonl`: flushed at once, non-finite values as null, a torn last
    line of a killed session closed first) and writes TensorBoard scalars."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, purge_step: int | None = None) -> None:
        rd = RunDir(run_dir)
        self.path = rd.metrics
        self.path.touch()  # the log exists from the start of a session, as an empty file if nothing is logged
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # an optional third-party package, not a module of this project
                warnings.warn(f"TensorBoard logging disabled ({err}); metrics.jsonl is still written", stacklevel=2)
            else:
                self._tb = SummaryWriter(str(rd.tensorboard), purge_step=purge_step)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        row = json_safe({"step": int(step), **metrics})
        append_jsonl(self.path, row)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
