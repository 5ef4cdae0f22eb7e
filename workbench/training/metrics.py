"""The run's metric log: append-only ``metrics.jsonl`` (one JSON object per logged step) and
TensorBoard events under ``tb/`` (optional: a missing tensorboard package only disables them).

Non-finite numbers are written as JSON ``null`` (metrics.jsonl stays strict JSON); on resume
``truncate_metrics`` drops every line past the checkpoint's step, and a torn last line.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"


def _clean(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every complete line of the run's metrics.jsonl, in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a crash
    return out


def truncate_metrics(run_dir: str | Path, last_step: int) -> int:
    """Keep the lines with ``step <= last_step`` (stopping at a torn line); return how many remain."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    kept = [row for row in read_metrics(run_dir) if row.get("step", 0) <= last_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
    os.replace(tmp, path)
    return len(kept)


class MetricsLog:
    """Writes ``{"step": step, **metrics}`` lines (flushed at once) and TensorBoard scalars."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, purge_step: int | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                warnings.warn(f"TensorBoard logging disabled ({err}); metrics.jsonl is still written", stacklevel=2)
            else:
                self._tb = SummaryWriter(str(Path(run_dir) / TB_DIR), purge_step=purge_step)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        row = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
