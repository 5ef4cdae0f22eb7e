"""The training loop: one seeded, checkpointed, resumable run in a run directory.

Per step k = 1..steps (B25 digest 2.3): x1 ~ data (batch), result = objective(model, x1,
generator), L = mean(result.loss), g = grad L; if L or any entry of g is not finite the update is
*skipped* (weights, optimiser, EMA untouched; counted); otherwise g is clipped to the global norm
``optim.grad_clip``, the optimiser steps at lr(k - 1) (``optim.lr_at``) and the EMAs update.
``max_consecutive_skips`` skipped steps in a row stop the run ("diverged").

Randomness: torch's global generator is seeded with ``seed`` before the model is built (its
initial weights); the data batches and the objective's noise and times come from one training
generator (seed ``seed``), callbacks from a second one (seed ``seed + 1``); all states go into
every checkpoint, so resuming from a checkpoint continues bit-identically on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..losses.base import ObjectiveResult, TimeBatch
from .build import DTYPES, build_model, build_objective, check_schedules, resolve_device
from .callbacks import Callback, StepRecord, TrainContext
from .checkpoint import list_checkpoints, load_latest, rng_state, save_checkpoint, set_rng_state
from .config import CONFIG_FILE, TrainConfig
from .ema import EMA
from .metrics import MetricsLog, truncate_metrics
from .optim import clip_gradients, grad_stats, lr_at, make_optimizer, scheduled_value

CHECKPOINT_FORMAT = 1
CALLBACK_SEED_OFFSET = 1


@dataclass(frozen=True)
class TrainResult:
    """How a session ended: status "completed", "interrupted" (stop requested) or "diverged"."""

    status: str
    step: int
    skipped_total: int
    message: str
    run_dir: Path


def _detach(result: ObjectiveResult) -> ObjectiveResult:
    tb = result.times
    times = TimeBatch(
        s=tb.s.detach(), t=tb.t.detach(), diagonal=tb.diagonal.detach(), u=None if tb.u is None else tb.u.detach()
    )
    return ObjectiveResult(
        loss=result.loss.detach(),
        terms={k: v.detach() for k, v in result.terms.items()},
        times=times,
        aux={k: v.detach() for k, v in result.aux.items()},
    )


class Trainer:
    """Train ``config`` in ``run_dir``; ``Trainer.resume(run_dir)`` continues from the last checkpoint.

    ``objective``, ``data`` and ``model`` replace the ones the config would build (tests, custom
    objectives); pass the same ones again on resume. ``callbacks`` see a :class:`TrainContext`.
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        callbacks: Iterable[Callback] = (),
        objective: Any = None,
        data: Any = None,
        model: torch.nn.Module | None = None,
        resume: bool = False,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = cfg = config
        self.run_dir = Path(run_dir)
        if not resume and (self.run_dir / CONFIG_FILE).exists():
            raise ValueError(f"run directory {self.run_dir} already holds a run; resume it or choose another --run-dir")
        self.device = resolve_device(cfg.device)
        self.dtype = DTYPES[cfg.dtype]
        if cfg.bf16 and self.device.type != "cuda":
            warnings.warn("bf16 autocast is only used on CUDA; training in full precision on CPU", stacklevel=2)
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
            every = getattr(cb, "every", None)
            if isinstance(every, bool) or not isinstance(every, int) or every < 1:
                raise ValueError(f"{type(cb).__name__}.every must be a positive int (a cadence in steps), got {every!r}")

        if data is None:
            from ..data import get_data

            data = get_data(cfg.data.name, **cfg.data.kwargs)
        self.data = data
        torch.manual_seed(cfg.seed)
        self.model = (model if model is not None else build_model(cfg.model, data.dim)).to(self.device, self.dtype)
        self.objective = objective if objective is not None else build_objective(cfg.objective, data)
        check_schedules(self.objective, cfg.objective.schedules)
        self.optimizer = make_optimizer(self.model.parameters(), cfg.optim)
        self.ema = EMA(self.model, cfg.ema_rates)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.callback_generator = torch.Generator(device=self.device).manual_seed(cfg.seed + CALLBACK_SEED_OFFSET)

        self.step = 0
        self.skipped_total = 0
        self.consecutive_skips = 0
        self._stop_reason: str | None = None
        self._pending: dict[int, dict] = {}
        self._in_step = False
        self._last_saved = -1
        self.run_dir.mkdir(parents=True, exist_ok=True)  # only once everything above was built
        if resume:
            self._restore()
        else:
            cfg.save(self.run_dir)
            truncate_metrics(self.run_dir, -1)
        self.ctx = TrainContext(
            model=self.model, ema=self.ema.models, objective=self.objective, optimizer=self.optimizer,
            config=cfg, run_dir=self.run_dir, device=self.device, dtype=self.dtype, data=self.data,
            generator=self.callback_generator, logger=self._log, step=self.step,
        )
        self._metrics: MetricsLog | None = None

    @classmethod
    def resume(cls, run_dir: str | Path, **kwargs: Any) -> Trainer:
        """Rebuild the run from its config.json and continue from its newest readable checkpoint
        (from step 0 if it has none); metrics.jsonl lines past that step are dropped."""
        return cls(TrainConfig.load(run_dir), run_dir, resume=True, **kwargs)

    # -- checkpoints -----------------------------------------------------------------------------
    def _generators(self) -> dict[str, torch.Generator]:
        return {"train": self.generator, "callbacks": self.callback_generator}

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict(),
            "scheduler": {"schedule": self.config.optim.schedule, "completed_steps": self.step},
            "rng": rng_state(self._generators()),
            "counters": {"skipped_total": self.skipped_total, "consecutive_skips": self.consecutive_skips},
        }

    def save_checkpoint(self) -> Path:
        """Write the checkpoint of the current step atomically (refusing non-finite weights)."""
        bad = [n for n, p in self.model.state_dict().items() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
        if bad:
            raise FloatingPointError(f"refusing to checkpoint non-finite weights in {bad[:5]} at step {self.step}")
        path = save_checkpoint(self.state_dict(), self.run_dir, self.step, keep=self.config.keep_checkpoints)
        self._last_saved = self.step
        return path

    def _restore(self) -> None:
        state = load_latest(self.run_dir, map_location="cpu")
        if state is None:
            truncate_metrics(self.run_dir, -1)
            return
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"], self._generators())
        self.step = self._last_saved = int(state["step"])
        self.skipped_total = int(state["counters"]["skipped_total"])
        self.consecutive_skips = int(state["counters"]["consecutive_skips"])
        truncate_metrics(self.run_dir, self.step)

    # -- control ---------------------------------------------------------------------------------
    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop after the current step, writing a checkpoint (safe to call from a signal handler)."""
        self._stop_reason = reason

    def _log(self, metrics: dict, step: int) -> None:
        if self._in_step and step == self.step:
            self._pending.setdefault(step, {}).update(metrics)
        elif self._metrics is not None:
            self._metrics.write(step, metrics)
        else:
            raise RuntimeError("ctx.log can only be called while the trainer runs")

    def _autocast(self):
        if self.config.bf16 and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _scheduled(self, step: int) -> dict[str, float]:
        """Values of the scheduled objective fields for optimiser step ``step`` (1-based)."""
        return {f: scheduled_value(spec, step - 1) for f, spec in self.config.objective.schedules.items()}

    def _objective_at(self, step: int) -> Any:
        """The objective with its scheduled fields set for this step (itself when none are)."""
        values = self._scheduled(step)
        return dataclasses.replace(self.objective, **values) if values else self.objective

    # -- one step --------------------------------------------------------------------------------
    def train_step(self, step: int) -> StepRecord:
        """Take optimiser step number ``step`` (1-based) and return its record."""
        cfg = self.config
        t0 = time.perf_counter()
        lr = lr_at(step - 1, cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        x1 = self.data.sample(cfg.batch_size, self.generator, dtype=self.dtype, device=self.device)
        with self._autocast():
            result = self._objective_at(step)(self.model, x1, generator=self.generator)
        loss = result.loss.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        grad_norm, n_bad, clipped = math.nan, 0, False
        if math.isfinite(loss_value):
            loss.backward()
            norm_t, bad_t = grad_stats(self.model.parameters())
            grad_norm, n_bad = float(norm_t), int(bad_t)
        skipped = not (math.isfinite(loss_value) and n_bad == 0 and math.isfinite(grad_norm))
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_total += 1
            self.consecutive_skips += 1
        else:
            clipped = clip_gradients(self.model.parameters(), grad_norm, cfg.optim.grad_clip)
            self.optimizer.step()
            self.ema.update(self.model)
            self.consecutive_skips = 0
        terms = {k: float(v.detach().float().mean()) for k, v in result.terms.items() if v.numel() > 0}
        return StepRecord(
            step=step, loss=loss_value, terms=terms, grad_norm=grad_norm, clipped=clipped, n_nonfinite_grad=n_bad,
            skipped=skipped, lr=lr, seconds=time.perf_counter() - t0, result=_detach(result), x1=x1.detach(),
        )

    def _step_metrics(self, r: StepRecord) -> dict[str, Any]:
        times = r.result.times
        diag = times.diagonal.bool()
        off = ~diag
        m: dict[str, Any] = {"loss": r.loss}
        m.update({f"terms/{k}": v for k, v in r.terms.items()})
        m.update({
            "grad_norm": r.grad_norm, "clipped": r.clipped, "lr": r.lr, "skipped": r.skipped,
            "skipped_total": self.skipped_total, "n_nonfinite_grad": r.n_nonfinite_grad,
            "times/frac_diag": float(diag.float().mean()),
            "times/mean_gap": float(times.gap[off].float().mean()) if bool(off.any()) else 0.0,
            "time/step_seconds": r.seconds,
        })
        m.update({f"objective/{k}": v for k, v in self._scheduled(r.step).items()})
        return m

    # -- the loop --------------------------------------------------------------------------------
    def _write_session(self) -> None:
        info = {"start_step": self.step, "device": str(self.device), "torch": torch.__version__,
                "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with open(self.run_dir / "sessions.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(info) + "\n")

    def fit(self) -> TrainResult:
        """Run until ``config.steps``, a stop request, or divergence; return how it ended."""
        cfg = self.config
        self._metrics = MetricsLog(self.run_dir, tensorboard=cfg.tensorboard, purge_step=self.step + 1 if self.step else None)
        self._write_session()
        status, message = "completed", f"finished {cfg.steps} steps"
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and sys.stderr.isatty()),
                   dynamic_ncols=True, desc=self.run_dir.name)
        try:
            for cb in self.callbacks:
                cb.on_train_start(self.ctx)
            while self.step < cfg.steps:
                step = self.step + 1
                record = self.train_step(step)
                self.step = self.ctx.step = step
                self._in_step = True
                self.ctx.objective = self._objective_at(step)  # callbacks see this step's scheduled fields
                metrics = self._step_metrics(record) if (record.skipped or step % cfg.log_every == 0 or step == cfg.steps) else {}
                for cb in self.callbacks:
                    if step % cb.every == 0:
                        metrics.update(cb.on_step_end(self.ctx, record) or {})
                metrics.update(self._pending.pop(step, {}))
                self._in_step = False
                if self.consecutive_skips >= cfg.max_consecutive_skips:
                    status = "diverged"
                    message = (f"stopped at step {step}: {self.consecutive_skips} consecutive steps had a non-finite "
                               f"loss or gradient (last loss {record.loss}); lower optim.lr, tighten optim.grad_clip "
                               f"or check the objective; the last checkpoint holds finite weights")
                    metrics.update({"stopped": "diverged", "message": message})
                if metrics:
                    self._metrics.write(step, metrics)
                bar.update(1)
                if not record.skipped:
                    bar.set_postfix(loss=f"{record.loss:.4g}", refresh=False)
                if status == "diverged":
                    break
                if self._stop_reason is not None:
                    self.save_checkpoint()
                    status, message = "interrupted", f"{self._stop_reason}; checkpoint written at step {step}"
                    break
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            if status == "completed" and self._last_saved != self.step:
                self.save_checkpoint()
            for cb in self.callbacks:
                cb.on_train_end(self.ctx)
        finally:
            bar.close()
            self._metrics.close()
            self._metrics = None
        return TrainResult(status=status, step=self.step, skipped_total=self.skipped_total,
                           message=message, run_dir=self.run_dir)


def latest_step(run_dir: str | Path) -> int:
    """Step of the newest checkpoint of a run (0 when it has none)."""
    found = list_checkpoints(run_dir)
    return found[-1][0] if found else 0
