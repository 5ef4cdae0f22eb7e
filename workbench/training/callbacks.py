"""Callbacks: how diagnostics reach into training without changing it.

    class Callback:
        every: int = 1                                     # cadence of on_step_end, in steps
        def on_train_start(self, ctx: TrainContext) -> None
        def on_step_end(self, ctx: TrainContext, record: StepRecord) -> dict[str, float] | None
        def on_train_end(self, ctx: TrainContext) -> None

Metrics returned by ``on_step_end`` are logged at that step (metrics.jsonl and TensorBoard),
in the same JSON line as the trainer's own. ``on_step_end`` runs at every step with
``step % every == 0``, skipped steps included (``record.skipped``); ``on_train_start`` runs at
the start of every session (also after a resume, with ``ctx.step`` the resumed step).

Randomness: ``ctx.generator`` (and ``ctx.sample_batch``) draw from a generator of their own,
separate from the training stream and saved in checkpoints, so attaching a callback never
changes the training trajectory and resumed runs stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..losses.base import ObjectiveResult

if TYPE_CHECKING:  # pragma: no cover
    from ..data import DataSource
    from .config import TrainConfig


@dataclass(frozen=True)
class StepRecord:
    """What happened at one optimiser step (``step`` = number of steps taken, 1-based).

    loss: batch mean of ``result.loss``; terms: batch mean of each non-empty term; grad_norm:
    global gradient norm before clipping (NaN when the loss was not finite); clipped: whether
    clipping scaled the gradient; n_nonfinite_grad: NaN/inf gradient entries; skipped: the update
    was not applied (non-finite data, loss or gradient); lr: learning rate of this step; seconds:
    wall time of the step; result: the ObjectiveResult, detached; x1: the data batch; skip_reason:
    why the step was skipped ("" when it was not), e.g. "non-finite data batch (3 of 64 entries)".

    When the data batch itself is not finite the objective is not evaluated: ``result`` then holds
    a NaN per-sample loss, no terms and NaN times, and ``grad_norm`` is NaN.
    """

    step: int
    loss: float
    terms: dict[str, float]
    grad_norm: float
    clipped: bool
    n_nonfinite_grad: int
    skipped: bool
    lr: float
    seconds: float
    result: ObjectiveResult
    x1: torch.Tensor
    skip_reason: str = ""


class TrainContext:
    """The trainer's state as callbacks see it (plain attributes; do not reassign them).

    model, ema (dict rate -> averaged model), objective, optimizer, config, run_dir (Path),
    device, dtype, data (DataSource), generator (the callbacks' generator), step (steps taken).
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        ema: dict[float, torch.nn.Module],
        objective: Any,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        run_dir: Path,
        device: torch.device,
        dtype: torch.dtype,
        data: DataSource,
        generator: torch.Generator,
        logger: Callable[[dict, int], None],
        step: int = 0,
    ) -> None:
        self.model = model
        self.ema = ema
        self.objective = objective
        self.optimizer = optimizer
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = device
        self.dtype = dtype
        self.data = data
        self.generator = generator
        self.step = step
        self._logger = logger

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log metrics at ``step`` (default: the current step). Called from ``on_step_end`` for the
        current step they join that step's line; otherwise (``on_train_start``/``on_train_end``)
        they are written as a line of their own."""
        self._logger(dict(metrics), self.step if step is None else int(step))

    def sample_batch(self, n: int) -> torch.Tensor:
        """n fresh data samples x1 (n, dim) in the run's dtype and device, from ``ctx.generator``."""
        return self.data.sample(n, self.generator, dtype=self.dtype, device=self.device)


class Callback:
    """Base class with no-op hooks; subclass and override what you need."""

    every: int = 1

    def on_train_start(self, ctx: TrainContext) -> None:
        return None

    def on_step_end(self, ctx: TrainContext, record: StepRecord) -> dict[str, float] | None:
        return None

    def on_train_end(self, ctx: TrainContext) -> None:
        return None
