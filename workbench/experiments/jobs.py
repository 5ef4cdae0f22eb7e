"""One run of the main job, as executed in a worker process: train (or resume) with the
diagnostics callbacks attached, then evaluate (``evaluate.evaluate_run``).

Worker processes are started by :func:`workbench.experiments.parallel.run_jobs` with
:func:`init_worker` (``threads`` torch threads each, the progress queue, and the stop handling of
:mod:`workbench.experiments.stopping`). A job is a :class:`~workbench.experiments.specs.Job`;
:func:`run_job` returns a :class:`~workbench.experiments.specs.JobResult` whose status is
"completed", "time_cap", "diverged" or "interrupted", with the training summary (also written to
the run's ``training.json``) and, unless interrupted, the evaluation document. A run whose training
was stopped by the time cap is evaluated as it stands (the report says so); an interrupted one
keeps its checkpoint and resumes when the main job runs again.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch

from ..rundir import RunDir, atomic_write_json, read_json
from ..training.callbacks import Callback, StepRecord, TrainContext
from ..training.checkpoint import find_latest
from .specs import RUN_STATUSES, DiagnosticsSpec, Job, JobResult, ProgressMessage, TrainingSummary
from .stopping import init_worker_stop, stop_on_signals, stop_requested

__all__ = ["ProgressCallback", "diagnostics_callbacks", "init_worker", "post", "run_job"]

_QUEUE: Any = None  # the parent's progress queue (anything with put()), None outside a worker


def init_worker(queue: Any = None, stop: Any = None, threads: int = 1) -> None:
    """Worker initialiser: ``threads`` torch threads, the progress ``queue`` and the parent's
    ``stop`` event (:func:`workbench.experiments.stopping.init_worker_stop`: SIGINT ignored)."""
    global _QUEUE
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    _QUEUE = queue
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set in this process
        pass
    init_worker_stop(stop)


def post(run: str, kind: str, **fields: Any) -> ProgressMessage:
    """Build a :class:`ProgressMessage` (validated) and send it to the parent (when there is a queue)."""
    msg = ProgressMessage(run=run, kind=kind, **fields)
    if _QUEUE is not None:
        _QUEUE.put(msg)
    return msg


class ProgressCallback(Callback):
    """Posts the step and loss every ``post_every`` steps; asks the trainer to stop (checkpoint
    first) when :func:`~workbench.experiments.stopping.stop_requested` says so or when the session
    has trained for ``max_seconds`` (0: no cap). Runs at every step."""

    every = 1

    def __init__(self, run: str, total: int, post_every: int, max_seconds: float = 0.0) -> None:
        self.run, self.total, self.post_every, self.max_seconds = run, total, max(1, post_every), float(max_seconds)
        self.trainer = None  # set once the trainer exists
        self.capped = False
        self._t0 = time.perf_counter()

    def on_train_start(self, ctx: TrainContext) -> None:
        self._t0 = time.perf_counter()
        post(self.run, "start", step=ctx.step, total=self.total)

    def on_step_end(self, ctx: TrainContext, record: StepRecord) -> None:
        elapsed = time.perf_counter() - self._t0
        if ctx.step % self.post_every == 0:
            post(self.run, "step", step=ctx.step, total=self.total, loss=float(record.loss), seconds=elapsed)
        if self.trainer is None:
            return None
        reason = stop_requested()
        if reason is not None:
            self.trainer.request_stop(reason)
        elif self.max_seconds and elapsed > self.max_seconds and ctx.step < self.total:
            self.capped = True
            self.trainer.request_stop(f"time cap of {self.max_seconds:g} s reached")
        return None


def diagnostics_callbacks(spec: DiagnosticsSpec, steps: int) -> list[Callback]:
    """The diagnostics callbacks of workbench.diagnostics (cheap per-step signals, periodic
    gradient / oracle / quality diagnostics, end-of-run diagnosis) configured by ``spec``."""
    from ..diagnostics.callbacks import DiagnosisCallback, PeriodicDiagnosticsCallback, TrainingSignalsCallback

    if not isinstance(spec, DiagnosticsSpec):
        raise TypeError(f"spec must be a DiagnosticsSpec, got {type(spec).__name__}")
    out: list[Callback] = [TrainingSignalsCallback()]
    if spec.periodic > 0:
        every = max(1, steps // spec.periodic)
        out.append(PeriodicDiagnosticsCallback(every=every, n_grad=spec.n_grad, grid=spec.grid,
                                               n_cell=spec.n_cell, n_samples=spec.n_samples,
                                               steps=(1, 2, 4, 8), metrics=("sliced_w2", "energy")))
    out.append(DiagnosisCallback(n=spec.n_diagnose, include_ema=spec.ema))
    return out


def _prior_summary(rd: RunDir) -> TrainingSummary | None:
    """The summary of the sessions before this one (None for a first session or an unreadable file,
    whose sessions and seconds are then counted from zero, with a warning naming the file)."""
    if not rd.training.is_file():
        return None
    try:
        return TrainingSummary.from_dict(read_json(rd.training, what="training summary"))
    except (TypeError, ValueError) as err:
        warnings.warn(f"cannot read the training summary {rd.training} ({err}); the sessions and seconds "
                      "of the earlier sessions are not counted", stacklevel=2)
        return None


def _finished_step(rd: RunDir) -> int:
    """Step of the run's newest checkpoint that loads and passes its checks (0 when none does).

    A corrupt newest checkpoint does not count: then this is the step of the older one the trainer
    will resume from (the trainer reports and sets the unusable ones aside), so the run is trained on
    rather than reported finished on the strength of a file name."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the trainer reports each skipped checkpoint when it resumes
        found = find_latest(rd.path)
    return found.step or 0


def _train(job: Job) -> TrainingSummary:
    from ..data import get_data
    from ..training.trainer import Trainer

    cfg, rd = job.config, job.rundir
    resume = rd.config.is_file()
    done_before = _finished_step(rd) if resume else 0
    prior = _prior_summary(rd)
    if resume and done_before >= cfg.steps and rd.diagnosis_json.is_file() and prior is not None:
        return TrainingSummary(**{**prior.to_dict(), "status": "completed", "steps_done": done_before})
    data = get_data(cfg.data.name, **cfg.data.kwargs)
    progress = ProgressCallback(job.name, cfg.steps, job.progress_every, job.max_seconds)
    callbacks = [progress, *diagnostics_callbacks(job.diagnostics, cfg.steps)]
    trainer = Trainer(cfg, rd.path, callbacks=callbacks, data=data, resume=resume)
    progress.trainer = trainer
    t0 = time.perf_counter()
    with stop_on_signals(trainer) as received:
        result = trainer.fit()
    status = result.status
    if status == "interrupted" and progress.capped and not received:
        status = "time_cap"
    if status not in RUN_STATUSES:
        raise RuntimeError(f"the trainer ended {job.name} with status {status!r} ({result.message}), "
                           f"which the main job does not know (expected one of {RUN_STATUSES})")
    summary = TrainingSummary(
        status=status, steps_done=result.step, steps_planned=cfg.steps,
        seconds=time.perf_counter() - t0 + (prior.seconds if prior else 0.0), skipped_total=result.skipped_total,
        message=result.message, sessions=(prior.sessions if prior else 0) + 1, device=str(trainer.device))
    atomic_write_json(rd.training, summary.to_dict())
    return summary


def run_job(job: Job) -> JobResult:
    """Train and evaluate one run (module docstring)."""
    from ..training.build import resolve_device
    from .evaluate import evaluate_run

    if not isinstance(job, Job):
        raise TypeError(f"job must be a workbench.experiments.specs.Job, got {type(job).__name__}")
    run = job.name
    if stop_requested() is not None:  # queued before the stop: leave the run as it is
        return JobResult(run=run, status="interrupted")
    training = _train(job)
    if training.status == "interrupted":
        post(run, "interrupted", step=training.steps_done)
        return JobResult(run=run, status="interrupted", training=training)
    post(run, "evaluating", step=training.steps_done, seconds=training.seconds)
    doc = evaluate_run(job.run_dir, job.evaluation, training=training.to_dict(),
                       device=resolve_device(job.config.device))
    post(run, "done", status=training.status, seconds=training.seconds, eval_seconds=doc["seconds"])
    return JobResult(run=run, status=training.status, training=training, evaluation=doc)
