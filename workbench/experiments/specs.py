"""The typed process boundary of the main job: what the parent sends to a worker process, what the
worker posts while it runs and what it returns. Every type is a frozen dataclass (picklable, so it
crosses a ``spawn`` process boundary as it is) and checks its fields on construction, so a wrong
value fails where it is made, naming the field, instead of deep inside a worker.

* :class:`Job`: one run of the plan: run directory, :class:`~workbench.training.TrainConfig`,
  :class:`EvalSpec`, :class:`DiagnosticsSpec`, time cap, progress cadence and relative cost;
* :class:`EvalSpec`: how a finished run is evaluated (stored in ``evaluation.json`` as ``spec``);
* :class:`DiagnosticsSpec`: the diagnostics callbacks attached to a run;
* :class:`ProgressMessage`: a status message a worker posts on the shared queue;
* :class:`TrainingSummary`: one training session's outcome (``training.json`` of the run);
* :class:`JobResult`: what a worker returns for a job (or the parent records when it failed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..rundir import RunDir
from ..training.config import TrainConfig

__all__ = [
    "RESULT_STATUSES",
    "RUN_STATUSES",
    "DiagnosticsSpec",
    "EvalSpec",
    "Job",
    "JobResult",
    "ProgressMessage",
    "TrainingSummary",
]

#: how a training session ended: all steps done, stopped by the time cap, diverged, stopped by a
#: signal or the parent (resumes later)
RUN_STATUSES = ("completed", "time_cap", "diverged", "interrupted")
#: a job's status: a run status, or "failed" (the worker raised)
RESULT_STATUSES = (*RUN_STATUSES, "failed")


# -- field checks (ValueError / TypeError naming Owner.field and what was expected) ----------------------
def _int(owner: str, name: str, v: object, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{owner}.{name} must be an int >= {lo}, got {type(v).__name__} {v!r}")
    if v < lo:
        raise ValueError(f"{owner}.{name} must be an int >= {lo}, got {v!r}")


def _real(owner: str, name: str, v: object, *, lo: float = 0.0) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{owner}.{name} must be a finite number >= {lo:g}, got {type(v).__name__} {v!r}")
    if not math.isfinite(v) or v < lo:
        raise ValueError(f"{owner}.{name} must be a finite number >= {lo:g}, got {v!r}")


def _str(owner: str, name: str, v: object, choices: tuple[str, ...] | None = None) -> None:
    if not isinstance(v, str):
        raise TypeError(f"{owner}.{name} must be a str, got {type(v).__name__} {v!r}")
    if choices is not None and v not in choices:
        raise ValueError(f"{owner}.{name} must be one of {choices}, got {v!r}")


def _from_mapping(cls: type, doc: object, what: str) -> Any:
    """cls(**doc) for a JSON object; ValueError naming ``what`` for another type or unknown keys."""
    if not isinstance(doc, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(doc).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ValueError(f"{what} has unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**doc)


# -- what a worker is given ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalSpec:
    """How a run is evaluated (``workbench.experiments.evaluate``).

    steps: numbers of sampling steps N (positive ints); n: samples per side for W2 / sliced W2 /
    MMD^2 / energy; n_kl, kl_bins, kl_box: the histogram KL (``kl_box`` ((lo, hi) per coordinate)
    or None: no KL); n_map: points for the oracle errors; ema: the EMA rate whose weights are
    evaluated (None: the online weights); n_diagnose: points per detector evaluation set when the
    detectors run at evaluation; seed: of every draw. Lists are accepted for the tuples (JSON).
    """

    steps: tuple[int, ...] = (1, 2, 4, 8, 16)
    n: int = 2000
    n_kl: int = 20000
    kl_bins: int = 16
    kl_box: tuple[tuple[float, float], ...] | None = None
    n_map: int = 1000
    ema: float | None = None
    n_diagnose: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        own = "EvalSpec"
        if not isinstance(self.steps, (tuple, list)) or not self.steps:
            raise TypeError(f"{own}.steps must be a non-empty tuple of positive ints, got {self.steps!r}")
        for k in self.steps:
            _int(own, "steps", k, 1)
        object.__setattr__(self, "steps", tuple(self.steps))
        for name in ("n", "n_kl", "kl_bins", "n_map", "n_diagnose"):
            _int(own, name, getattr(self, name), 1)
        _int(own, "seed", self.seed, 0)
        if self.kl_box is not None:
            box = self.kl_box
            if not isinstance(box, (tuple, list)) or not box:
                raise TypeError(f"{own}.kl_box must be None or ((lo, hi), ...) per coordinate, got {box!r}")
            pairs = []
            for pair in box:
                ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
                    not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in pair)
                if not ok or not pair[0] < pair[1]:
                    raise ValueError(f"{own}.kl_box must hold finite (lo, hi) pairs with lo < hi, got {box!r}")
                pairs.append((float(pair[0]), float(pair[1])))
            object.__setattr__(self, "kl_box", tuple(pairs))
        if self.ema is not None:
            if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0 < self.ema < 1:
                raise ValueError(f"{own}.ema must be None (online weights) or an EMA rate in (0, 1), got {self.ema!r}")
            object.__setattr__(self, "ema", float(self.ema))

    def to_dict(self) -> dict:
        """The JSON form (tuples as lists), as stored under ``spec`` in evaluation.json."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, doc: object) -> EvalSpec:
        """The inverse of :meth:`to_dict`; ValueError for unknown keys."""
        return _from_mapping(cls, doc, "an evaluation spec")


@dataclass(frozen=True)
class DiagnosticsSpec:
    """The diagnostics callbacks of a run (``workbench.diagnostics.callbacks``): ``periodic``
    expensive evaluations per run (0: none) with ``n_grad`` per-sample gradients, a ``grid`` x
    ``grid`` (s, t) map error of ``n_cell`` points per cell and ``n_samples`` samples for quality;
    the end-of-run diagnosis on ``n_diagnose`` points, of the EMA weights too when ``ema``."""

    periodic: int = 4
    n_grad: int = 32
    grid: int = 6
    n_cell: int = 16
    n_samples: int = 256
    n_diagnose: int = 256
    ema: bool = True

    def __post_init__(self) -> None:
        _int("DiagnosticsSpec", "periodic", self.periodic, 0)
        for name in ("n_grad", "grid", "n_cell", "n_samples", "n_diagnose"):
            _int("DiagnosticsSpec", name, getattr(self, name), 1)
        if not isinstance(self.ema, bool):
            raise TypeError(f"DiagnosticsSpec.ema must be a bool, got {type(self.ema).__name__} {self.ema!r}")


@dataclass(frozen=True)
class Job:
    """One run of the main job as a worker executes it (``workbench.experiments.jobs.run_job``):
    train ``config`` in ``run_dir`` (or resume it) with the diagnostics of ``diagnostics``, stop a
    session after ``max_seconds`` (0: no cap), post progress every ``progress_every`` steps, then
    evaluate with ``evaluation``. ``cost`` is the relative cost the parent uses to start the
    longest runs first."""

    run_dir: Path
    config: TrainConfig
    evaluation: EvalSpec
    diagnostics: DiagnosticsSpec = field(default_factory=DiagnosticsSpec)
    max_seconds: float = 0.0
    progress_every: int = 1
    cost: float = 1.0

    def __post_init__(self) -> None:
        try:
            rd = RunDir(self.run_dir)
        except (TypeError, ValueError) as err:
            raise type(err)(str(err).replace("run_dir", "Job.run_dir", 1)) from None
        object.__setattr__(self, "run_dir", rd.path)
        for name, cls in (("config", TrainConfig), ("evaluation", EvalSpec), ("diagnostics", DiagnosticsSpec)):
            v = getattr(self, name)
            if not isinstance(v, cls):
                raise TypeError(f"Job.{name} must be a {cls.__name__}, got {type(v).__name__}")
        _real("Job", "max_seconds", self.max_seconds)
        _int("Job", "progress_every", self.progress_every, 1)
        _real("Job", "cost", self.cost)

    @property
    def name(self) -> str:
        """The run's name: the run directory's name."""
        return self.run_dir.name

    @property
    def rundir(self) -> RunDir:
        """The run directory's layout."""
        return RunDir(self.run_dir)


# -- what a worker posts and returns ----------------------------------------------------------------------
@dataclass(frozen=True)
class ProgressMessage:
    """A status message from a worker: ``run`` (its name), ``kind`` and the fields that kind needs.

    start: step, total; step: step, total, loss (NaN for a non-finite step), seconds; evaluating:
    step, seconds; done: status, seconds, eval_seconds; interrupted: step. ``time`` is the wall
    clock when it was made."""

    REQUIRED: ClassVar[dict[str, tuple[str, ...]]] = {
        "start": ("step", "total"),
        "step": ("step", "total", "loss", "seconds"),
        "evaluating": ("step", "seconds"),
        "done": ("status", "seconds", "eval_seconds"),
        "interrupted": ("step",),
    }

    run: str
    kind: str
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    seconds: float | None = None
    eval_seconds: float | None = None
    status: str | None = None
    time: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        _str("ProgressMessage", "run", self.run)
        _str("ProgressMessage", "kind", self.kind, tuple(self.REQUIRED))
        missing = [k for k in self.REQUIRED[self.kind] if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a {self.kind!r} ProgressMessage needs {missing}")
        for name in ("step", "total"):
            if getattr(self, name) is not None:
                _int("ProgressMessage", name, getattr(self, name), 0)
        for name in ("seconds", "eval_seconds"):
            if getattr(self, name) is not None:
                _real("ProgressMessage", name, getattr(self, name))
        if self.loss is not None and (isinstance(self.loss, bool) or not isinstance(self.loss, (int, float))):
            raise TypeError(f"ProgressMessage.loss must be a number, got {type(self.loss).__name__}")
        if self.status is not None:
            _str("ProgressMessage", "status", self.status, RUN_STATUSES)


@dataclass(frozen=True)
class TrainingSummary:
    """The outcome of a run's training so far (``training.json``, and ``training`` in
    evaluation.json): status (one of ``RUN_STATUSES``), steps done and planned, training seconds
    summed over sessions, steps skipped as non-finite, the trainer's message, the number of
    sessions and the device of the last one."""

    status: str
    steps_done: int
    steps_planned: int
    seconds: float
    skipped_total: int
    message: str
    sessions: int
    device: str

    def __post_init__(self) -> None:
        own = "TrainingSummary"
        _str(own, "status", self.status, RUN_STATUSES)
        _int(own, "steps_done", self.steps_done, 0)
        _int(own, "steps_planned", self.steps_planned, 1)
        _int(own, "skipped_total", self.skipped_total, 0)
        _int(own, "sessions", self.sessions, 0)
        _real(own, "seconds", self.seconds)
        _str(own, "message", self.message)
        _str(own, "device", self.device)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: object) -> TrainingSummary:
        """The inverse of :meth:`to_dict`; ValueError / TypeError naming the field otherwise."""
        return _from_mapping(cls, doc, "a training summary")


@dataclass(frozen=True)
class JobResult:
    """What became of a job: ``status`` (one of ``RESULT_STATUSES``), the training summary (None
    when the job never trained: stopped while queued, or failed), the evaluation document (None
    unless evaluated) and, for "failed", the error."""

    run: str
    status: str
    training: TrainingSummary | None = None
    evaluation: dict | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        _str("JobResult", "run", self.run)
        _str("JobResult", "status", self.status, RESULT_STATUSES)
        if self.training is not None and not isinstance(self.training, TrainingSummary):
            raise TypeError(f"JobResult.training must be a TrainingSummary or None, got {type(self.training).__name__}")
        if self.evaluation is not None and not isinstance(self.evaluation, dict):
            raise TypeError(f"JobResult.evaluation must be a dict or None, got {type(self.evaluation).__name__}")
        if (self.status == "failed") != (self.error is not None):
            raise ValueError("JobResult.error must be given exactly when status is 'failed'")
        if self.error is not None:
            _str("JobResult", "error", self.error)
