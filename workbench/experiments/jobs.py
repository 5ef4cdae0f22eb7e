"""One run of the main job, as executed in a worker process: train (or resume) with the
diagnostics callbacks attached, then evaluate (``evaluate.evaluate_run``).

Worker processes are started by :func:`workbench.experiments.main_job.run_plan` with
:func:`init_worker` (one torch thread each, SIGINT ignored outside training, a message queue for
progress and a stop event). A job is a plain dict (picklable):

    {"run_dir": str, "config": TrainConfig dict, "eval": EvalSpec dict, "diagnostics": dict,
     "max_seconds": float (0 = no time cap), "progress_every": int}

and :func:`run_job` returns a dict with ``status`` ("completed", "time_cap", "diverged",
"interrupted"), the training summary and, unless interrupted, the evaluation document.
A run whose training was stopped by the time cap is evaluated as it stands (the report says so);
an interrupted one keeps its checkpoint and resumes when the main job runs again.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

from ..training.callbacks import Callback, StepRecord, TrainContext
from ..training.config import TrainConfig
from ..training.trainer import latest_step

TRAINING_FILE = "training.json"

_QUEUE: Any = None
_STOP: Any = None
_PARENT: int | None = None


def init_worker(queue: Any = None, stop: Any = None, threads: int = 1) -> None:
    """Worker initialiser: ``threads`` torch threads, the progress queue and stop event, and
    SIGINT ignored (training installs its own handler; the parent decides what to do)."""
    global _QUEUE, _STOP, _PARENT
    _QUEUE, _STOP, _PARENT = queue, stop, os.getppid()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set in this process
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def post(run: str, kind: str, **payload: Any) -> None:
    """Send a progress message to the parent (no-op without a queue)."""
    if _QUEUE is not None:
        _QUEUE.put({"run": run, "kind": kind, "time": time.time(), **payload})


def stop_requested() -> str | None:
    """Why this worker should stop: the parent's stop event is set, or the parent is gone."""
    if _STOP is not None and _STOP.is_set():
        return "stop requested by the main job"
    if _PARENT is not None and os.getppid() != _PARENT:
        return "the main job's process is gone"
    return None


class ProgressCallback(Callback):
    """Posts the step and loss every ``post_every`` steps; asks the trainer to stop (checkpoint
    first) when :func:`stop_requested` says so or when the session has trained for
    ``max_seconds`` (0: no cap). Runs at every step."""

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
            post(self.run, "step", step=ctx.step, total=self.total, loss=record.loss, seconds=elapsed)
        if self.trainer is None:
            return None
        reason = stop_requested()
        if reason is not None:
            self.trainer.request_stop(reason)
        elif self.max_seconds and elapsed > self.max_seconds and ctx.step < self.total:
            self.capped = True
            self.trainer.request_stop(f"time cap of {self.max_seconds:g} s reached")
        return None


def diagnostics_callbacks(spec: dict, steps: int) -> list[Callback]:
    """The diagnostics callbacks of workbench.diagnostics (cheap per-step signals, periodic
    gradient / oracle / quality diagnostics, end-of-run diagnosis), configured by ``spec``:
    {"periodic": int (evaluations per run, 0: none), "n_grad", "grid", "n_cell", "n_samples",
    "n_diagnose", "ema": bool}."""
    from ..diagnostics.callbacks import DiagnosisCallback, PeriodicDiagnosticsCallback, TrainingSignalsCallback

    out: list[Callback] = [TrainingSignalsCallback()]
    if spec.get("periodic", 0) > 0:
        every = max(1, steps // spec["periodic"])
        out.append(PeriodicDiagnosticsCallback(every=every, n_grad=spec["n_grad"], grid=spec["grid"],
                                               n_cell=spec["n_cell"], n_samples=spec["n_samples"],
                                               steps=(1, 2, 4, 8), metrics=("sliced_w2", "energy")))
    out.append(DiagnosisCallback(n=spec["n_diagnose"], include_ema=spec.get("ema", True)))
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _train(job: dict, run: str) -> dict:
    from ..data import get_data
    from ..training.trainer import Trainer
    from .cli import stop_on_signals

    cfg = TrainConfig.from_dict(job["config"])
    run_dir = Path(job["run_dir"])
    resume = (run_dir / "config.json").is_file()
    done_before = latest_step(run_dir) if resume else 0
    prior = _read_json(run_dir / TRAINING_FILE)
    if resume and done_before >= cfg.steps and (run_dir / "diagnosis.json").is_file():
        return prior | {"status": "completed", "steps_done": done_before}
    data = get_data(cfg.data.name, **cfg.data.kwargs)
    progress = ProgressCallback(run, cfg.steps, job["progress_every"], job.get("max_seconds", 0.0))
    callbacks = [progress, *diagnostics_callbacks(job["diagnostics"], cfg.steps)]
    trainer = Trainer(cfg, run_dir, callbacks=callbacks, data=data, resume=resume)
    progress.trainer = trainer
    t0 = time.perf_counter()
    with stop_on_signals(trainer) as received:
        result = trainer.fit()
    seconds = time.perf_counter() - t0 + float(prior.get("seconds", 0.0))
    status = result.status
    if status == "interrupted" and progress.capped and not received:
        status = "time_cap"
    summary = {"status": status, "steps_done": result.step, "steps_planned": cfg.steps, "seconds": seconds,
               "skipped_total": result.skipped_total, "message": result.message, "sessions": int(prior.get("sessions", 0)) + 1,
               "device": str(trainer.device)}
    from .evaluate import write_json_atomic

    write_json_atomic(run_dir / TRAINING_FILE, summary)
    return summary


def run_job(job: dict) -> dict:
    """Train and evaluate one run (module docstring); returns {"run", "status", "training", "evaluation"}."""
    from .evaluate import EvalSpec, evaluate_run

    run = Path(job["run_dir"]).name
    if stop_requested() is not None:  # queued before the stop: leave the run as it is
        return {"run": run, "status": "interrupted", "training": {"steps_done": None}, "evaluation": None}
    training = _train(job, run)
    if training["status"] == "interrupted":
        post(run, "interrupted", step=training["steps_done"])
        return {"run": run, "status": "interrupted", "training": training, "evaluation": None}
    post(run, "evaluating", step=training["steps_done"], seconds=training["seconds"])
    spec_d = dict(job["eval"])
    spec_d["steps"] = tuple(spec_d["steps"])
    if spec_d.get("kl_box") is not None:
        spec_d["kl_box"] = tuple(tuple(b) for b in spec_d["kl_box"])
    cfg = TrainConfig.from_dict(job["config"])
    from ..training.build import resolve_device

    doc = evaluate_run(job["run_dir"], EvalSpec(**spec_d), training=training, device=resolve_device(cfg.device))
    post(run, "done", status=training["status"], seconds=training["seconds"], eval_seconds=doc["seconds"])
    return {"run": run, "status": training["status"], "training": training, "evaluation": doc}
