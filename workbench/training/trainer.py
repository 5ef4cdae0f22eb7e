"""The training loop: one seeded, checkpointed, resumable run in a run directory.

Per step k = 1..steps (as in B25's released training loop): x1 ~ data (batch); if x1 holds a NaN
or an inf the step is *skipped* (the objective is not evaluated); otherwise result = objective(model,
x1, generator), L = mean(result.loss), g = grad L; if L or any entry of g is not finite the update
is skipped (weights, optimiser, EMA untouched); otherwise g is clipped to the global norm
``optim.grad_clip``, the optimiser steps at lr(k - 1) (``optim.lr_at``) and then the EMAs update
from the new weights. A skipped step is counted and logged with what was wrong (``skip_reason``);
``max_consecutive_skips`` skipped steps in a row stop the run ("diverged").

After every applied update the whole training state (weights, every optimiser tensor, every EMA) is
checked for NaN and inf with one fused max-abs reduction per device and dtype and one host sync
(its cost, measured side by side with a step, is in docs/training_checkpoints.md). A non-finite
state, e.g. Adam's second moment overflowing when squared gradients exceed the dtype's range,
stops the run as "diverged" with a message naming the tensors; it is never checkpointed (see
:mod:`workbench.training.checkpoint`), so the last checkpoint holds the last finite state.

An exception escaping a step (a crash in the data source, the objective, a callback, Ctrl-C) first
writes a checkpoint of the last consistent state, then propagates with a note naming the step: the
state before the step when it came before the update (with the random generators as they were when
the step began, so a resume repeats the step exactly), the state after it when it came later (from
a callback); an exception inside the update itself leaves the state inconsistent and the last
checkpoint is kept.

Randomness: torch's global generator is seeded with ``seed`` before the model is built (its
initial weights); the data batches and the objective's noise and times come from one training
generator (seed ``seed``), callbacks from a second one (seed ``seed + 1``); all states go into
every checkpoint, so resuming from a checkpoint continues bit-identically on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from ..core.contract import FlowMapModel, check_implements
from ..losses.base import ObjectiveResult, TimeBatch
from ..rundir import RunDir, append_jsonl, check_run_dir, rewrite_last_jsonl
from .build import DTYPES, build_model, build_objective, check_schedules, resolve_device
from .callbacks import Callback, StepRecord, TrainContext
from .checkpoint import (
    CheckpointError,
    find_latest,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unusable_message,
)
from .config import TrainConfig
from .ema import EMA
from .metrics import MetricsLog, truncate_metrics
from .optim import clip_gradients, grad_stats, lr_at, make_optimizer, scheduled_value

# Layout version of the trainer's state dict: 2 = checkpoints carry a checksum (checkpoint.py);
# version 1 held the same entries without one.
CHECKPOINT_FORMAT = 2
CALLBACK_SEED_OFFSET = 1
_DATA_SKIP = "non-finite data batch"
_NAMES_SHOWN = 5


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


def _not_evaluated(n: int, dtype: torch.dtype, device: torch.device) -> ObjectiveResult:
    """The result of a step whose objective was not evaluated: NaN loss and times, no terms."""
    nan = torch.full((n,), math.nan, dtype=dtype, device=device)
    times = TimeBatch(s=nan, t=nan.clone(), diagonal=torch.zeros(n, dtype=torch.bool, device=device))
    return ObjectiveResult(loss=nan.clone(), terms={}, times=times)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


def _sums_finite(tensors: list[torch.Tensor], *, fused: bool) -> bool:
    """True when sum_i x_i (CPU) or sum_i |x_i| (``fused``: one multi-tensor kernel, for CUDA) of
    every tensor is finite; False when an entry is NaN or inf, or when a finite sum overflows.
    One host sync. On the CPU per-tensor sums are about 4 times faster than the fused L1 norms;
    on a GPU the fused norms save a kernel launch per tensor (about 2.5 times faster)."""
    sums = torch._foreach_norm(tensors, 1) if fused else [t.sum() for t in tensors]
    return bool(torch.stack(sums).isfinite().all())


def _check_run_dir(run_dir: object) -> RunDir:
    """A run directory argument: not '', not a file (with a hint when it names a run's config.json)."""
    try:
        return check_run_dir(run_dir, "run_dir", create=False)
    except ValueError as err:
        p = Path(run_dir) if isinstance(run_dir, (str, Path)) and str(run_dir) else None
        if p is not None and p.is_file() and p.name == RunDir(p.parent).config.name:
            raise ValueError(f"{err}; pass the run directory {p.parent}, not its config file") from None
        raise


class Trainer:
    """Train ``config`` in ``run_dir``; ``Trainer.resume(run_dir)`` continues from the last checkpoint.

    ``objective``, ``data`` and ``model`` replace the ones the config would build (tests, custom
    objectives); pass the same ones again on resume. ``callbacks`` see a :class:`TrainContext`.
    On resume, checkpoints that fail their checks are reported and set aside; when checkpoints exist
    but none is usable a :class:`~workbench.training.checkpoint.CheckpointError` is raised, unless
    ``allow_fresh_start`` (then the run starts again from step 0).
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
        allow_fresh_start: bool = False,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = cfg = config
        self.rundir = _check_run_dir(run_dir)
        self.run_dir = self.rundir.path
        if not resume and self.rundir.config.exists():
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
        if model is not None:
            check_implements(model, FlowMapModel, "model")
            if not isinstance(model, torch.nn.Module):
                raise TypeError(f"model must be a torch.nn.Module (the trainer optimises its parameters), "
                                f"got {type(model).__name__}")
        if objective is not None and not callable(objective):
            raise TypeError(f"objective must be callable as objective(model, x1, generator=...), got {type(objective).__name__}")

        if data is None:
            data = cfg.data.build()
        self.data = data
        torch.manual_seed(cfg.seed)
        self.model = (model if model is not None else build_model(cfg.model, data.dim)).to(self.device, self.dtype)
        self.objective = objective if objective is not None else build_objective(cfg.objective, data)
        check_schedules(self.objective, cfg.objective.schedules, steps=cfg.steps)
        self.optimizer = make_optimizer(self.model.parameters(), cfg.optim)
        self.ema = EMA(self.model, cfg.ema_rates)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.callback_generator = torch.Generator(device=self.device).manual_seed(cfg.seed + CALLBACK_SEED_OFFSET)

        self.step = 0
        self.skipped_total = 0
        self.consecutive_skips = 0
        self.skipped_checkpoints: tuple[tuple[int, Path, str], ...] = ()
        self._stop_reason: str | None = None
        self._pending: dict[int, dict] = {}
        self._in_step = False
        self._last_saved = -1
        self._phase = "idle"  # "before" a step's update, "updating", "updated" (see fit)
        self._rng_at_step_start: dict[str, Any] | None = None
        self._nonfinite_state: list[str] = []
        self._checked: list[tuple[str, torch.Tensor]] | None = None
        self._checked_n_optim = 0
        self.rundir = check_run_dir(self.rundir, "run_dir")  # created only once everything above was built
        if resume:
            self._restore(allow_fresh_start)
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
        """Rebuild the run from its config.json and continue from its newest usable checkpoint
        (from step 0 if it has none); metrics.jsonl lines past that step are dropped."""
        return cls(TrainConfig.load(_check_run_dir(run_dir)), run_dir, resume=True, **kwargs)

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
        """Write the checkpoint of the current step atomically, with its checksum (``FloatingPointError``
        naming the tensors when any weight, optimiser or EMA tensor is not finite; nothing is written)."""
        path = save_checkpoint(self.state_dict(), self.run_dir, self.step, keep=self.config.keep_checkpoints)
        self._last_saved = self.step
        return path

    def _restore(self, allow_fresh_start: bool) -> None:
        self.rundir.remove_stale_temporaries()  # left by a write that was killed; this process owns the run
        found = find_latest(self.run_dir, map_location="cpu")
        self.skipped_checkpoints = found.skipped
        if found.state is None and found.skipped and not allow_fresh_start:
            raise CheckpointError(unusable_message(self.run_dir, found.skipped))
        for step, path, _ in found.skipped:  # set aside, so that pruning never keeps them over good ones
            path.replace(self.rundir.unusable_checkpoint(step))
        if found.skipped:
            where = f"resuming from step {found.step}" if found.state is not None else "starting again from step 0"
            warnings.warn(f"{len(found.skipped)} unusable checkpoint(s) set aside as *.pt.unusable in "
                          f"{self.rundir.checkpoint_dir}; {where}", stacklevel=3)
        state = found.state
        if state is None:
            truncate_metrics(self.run_dir, -1)
            return
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint {found.path} has format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"], self._generators())
        self.step = self._last_saved = int(state["step"])
        self.skipped_total = int(state["counters"]["skipped_total"])
        self.consecutive_skips = int(state["counters"]["consecutive_skips"])
        self._checked = None
        truncate_metrics(self.run_dir, self.step)

    # -- the finiteness check of the whole state -------------------------------------------------
    def _checked_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) of every floating tensor an update changes: weights, optimiser state, EMAs.
        Cached: optimisers and EMAs update their tensors in place (rebuilt after a restore)."""
        if self._checked is None or self._checked_n_optim != len(self.optimizer.state):
            names = {p: n for n, p in self.model.named_parameters()}
            out = [(f"model {n}", t) for n, t in self.model.state_dict(keep_vars=True).items()]
            for p, st in self.optimizer.state.items():
                out += [(f"optimizer {k} of {names.get(p, '?')}", v) for k, v in st.items() if isinstance(v, torch.Tensor)]
            for r, avg in self.ema.models.items():
                out += [(f"ema {r!r} {n}", t) for n, t in avg.state_dict(keep_vars=True).items()]
            self._checked = [(n, t.detach()) for n, t in out if t.is_floating_point() and t.numel()]
            self._checked_n_optim = len(self.optimizer.state)
        return self._checked

    @torch.no_grad()
    def nonfinite_state(self) -> list[str]:
        """Names of the weight, optimiser and EMA tensors holding a NaN or an inf ([] when all are
        finite).

        The fast test (:func:`_sums_finite`) reduces each tensor to a sum (a NaN or an inf entry
        makes it non-finite) and reads the result back with one host sync per (device, dtype) group;
        only when a sum is not finite does the exact per-tensor scan run, which names the culprits
        (and returns [] when a sum merely overflowed, which finite entries do only when their total
        exceeds the dtype's range). Measured cost: docs/training_checkpoints.md."""
        groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        checked = self._checked_tensors()
        for _, t in checked:
            groups.setdefault((t.device, t.dtype), []).append(t)
        if all(_sums_finite(ts, fused=ts[0].device.type != "cpu") for ts in groups.values()):
            return []
        return [n for n, t in checked if not bool(torch.isfinite(t).all())]

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
        self._nonfinite_state = []
        lr = lr_at(step - 1, cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        x1 = self.data.sample(cfg.batch_size, self.generator, dtype=self.dtype, device=self.device)
        n_bad_data = int((~torch.isfinite(x1)).sum())
        grad_norm, n_bad, clipped, reason = math.nan, 0, False, ""
        if n_bad_data:
            result, loss_value = _not_evaluated(x1.shape[0], self.dtype, self.device), math.nan
            reason = f"{_DATA_SKIP} ({n_bad_data} of {x1.numel()} entries are NaN or inf)"
        else:
            with self._autocast():
                result = self._objective_at(step)(self.model, x1, generator=self.generator)
            loss = result.loss.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss_value = float(loss.detach())
            if math.isfinite(loss_value):
                loss.backward()
                norm_t, bad_t = grad_stats(self.model.parameters())
                grad_norm, n_bad = float(norm_t), int(bad_t)
                if n_bad or not math.isfinite(grad_norm):
                    reason = f"non-finite gradient ({n_bad} entries are NaN or inf)" if n_bad else "non-finite gradient norm"
            else:
                reason = "non-finite loss"
        skipped = bool(reason)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_total += 1
            self.consecutive_skips += 1
        else:
            self._phase = "updating"
            clipped = clip_gradients(self.model.parameters(), grad_norm, cfg.optim.grad_clip)
            self.optimizer.step()
            self.ema.update(self.model)  # after the optimiser step: the averages include this update
            self.consecutive_skips = 0
            self._nonfinite_state = self.nonfinite_state()
        terms = {k: float(v.detach().float().mean()) for k, v in result.terms.items() if v.numel() > 0}
        return StepRecord(
            step=step, loss=loss_value, terms=terms, grad_norm=grad_norm, clipped=clipped, n_nonfinite_grad=n_bad,
            skipped=skipped, lr=lr, seconds=time.perf_counter() - t0, result=_detach(result), x1=x1.detach(),
            skip_reason=reason,
        )

    def _step_metrics(self, r: StepRecord) -> dict[str, Any]:
        m: dict[str, Any] = {"loss": r.loss}
        m.update({f"terms/{k}": v for k, v in r.terms.items()})
        m.update({
            "grad_norm": r.grad_norm, "clipped": r.clipped, "lr": r.lr, "skipped": r.skipped,
            "skipped_total": self.skipped_total, "n_nonfinite_grad": r.n_nonfinite_grad,
        })
        if r.skip_reason:
            m["skip_reason"] = r.skip_reason
        if not r.skip_reason.startswith(_DATA_SKIP):  # the objective drew times
            times = r.result.times
            diag = times.diagonal.bool()
            off = ~diag
            m.update({
                "times/frac_diag": float(diag.float().mean()),
                "times/mean_gap": float(times.gap[off].float().mean()) if bool(off.any()) else 0.0,
            })
        m["time/step_seconds"] = r.seconds
        m.update({f"objective/{k}": v for k, v in self._scheduled(r.step).items()})
        return m

    def _checkpoint_note(self) -> str:
        if self._last_saved < 0:
            return "no checkpoint was written"
        return f"the last checkpoint (step {self._last_saved}) holds the last finite state (checked when it was written)"

    # -- the loop --------------------------------------------------------------------------------
    def _write_session(self) -> None:
        info = {"start_step": self.step, "device": str(self.device), "torch": torch.__version__,
                "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if self.skipped_checkpoints:
            info["skipped_checkpoints"] = [{"step": s, "reason": why} for s, _, why in self.skipped_checkpoints]
        append_jsonl(self.rundir.sessions, info)

    def _end_session(self, status: str, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # the session line is a record, never a reason to fail
            rewrite_last_jsonl(self.rundir.sessions, {"end_step": self.step, "status": status, "message": message,
                                                      "end_time": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def _after_exception(self, err: BaseException, step: int) -> None:
        """Checkpoint the last consistent state, then add a note naming the step to ``err``."""
        try:
            if self._phase == "updating":
                note = ("it came during the parameter update, so the in-memory state is inconsistent and was not "
                        f"saved; {self._checkpoint_note()}")
            else:
                if self._phase == "before" and self._rng_at_step_start is not None:
                    set_rng_state(self._rng_at_step_start, self._generators())  # as when step `step` began
                if self.step > self._last_saved:
                    path = self.save_checkpoint()
                    note = f"a checkpoint of the last good state (step {self.step}) was written to {path}"
                else:
                    note = f"the checkpoint of step {self.step} already holds the last good state"
        except Exception as save_err:  # a full disk, a non-finite state: say so, keep the original error
            note = f"writing a checkpoint of the last good state failed too ({type(save_err).__name__}: {save_err})"
        err.add_note(f"training stopped by this exception at step {step}: {note}; "
                     f"resume with Trainer.resume({str(self.run_dir)!r}) or --resume {self.run_dir}")

    def fit(self) -> TrainResult:
        """Run until ``config.steps``, a stop request, or divergence; return how it ended."""
        cfg = self.config
        self._metrics = MetricsLog(self.run_dir, tensorboard=cfg.tensorboard, purge_step=self.step + 1 if self.step else None)
        self._write_session()
        status, message = "completed", f"finished {cfg.steps} steps"
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and sys.stderr.isatty()),
                   dynamic_ncols=True, desc=self.run_dir.name)
        step = self.step
        try:
            for cb in self.callbacks:
                cb.on_train_start(self.ctx)
            while self.step < cfg.steps:
                step = self.step + 1
                self._rng_at_step_start = rng_state(self._generators())
                self._phase = "before"
                record = self.train_step(step)
                self.step = self.ctx.step = step
                self._phase = "updated"
                self._in_step = True
                self.ctx.objective = self._objective_at(step)  # callbacks see this step's scheduled fields
                metrics = self._step_metrics(record) if (record.skipped or step % cfg.log_every == 0 or step == cfg.steps) else {}
                for cb in self.callbacks:
                    if step % cb.every == 0:
                        metrics.update(cb.on_step_end(self.ctx, record) or {})
                metrics.update(self._pending.pop(step, {}))
                self._in_step = False
                if self._nonfinite_state:
                    status = "diverged"
                    message = (f"stopped at step {step}: the update left NaN or inf in {_names(self._nonfinite_state)}; "
                               "the parameters they belong to would freeze or blow up (an Adam second moment "
                               "overflows when squared gradients exceed the dtype's range): set optim.grad_clip > 0, "
                               f"lower optim.lr or rescale the loss; {self._checkpoint_note()}")
                elif self.consecutive_skips >= cfg.max_consecutive_skips:
                    status = "diverged"
                    message = (f"stopped at step {step}: {self.consecutive_skips} consecutive steps were skipped (the "
                               f"last for a {record.skip_reason}; last loss {record.loss}); lower optim.lr, tighten "
                               f"optim.grad_clip, or check the objective and the data; {self._checkpoint_note()}")
                if status == "diverged":
                    metrics = {**self._step_metrics(record), **metrics, "stopped": "diverged", "message": message}
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
            self._phase = "idle"
            for cb in self.callbacks:
                cb.on_train_end(self.ctx)
        except BaseException as err:
            status, message = "error", f"{type(err).__name__} at step {step}: {err}"
            self._after_exception(err, step)
            raise
        finally:
            self._phase = "idle"
            self._in_step = False
            bar.close()
            self._metrics.close()
            self._metrics = None
            self._end_session(status, message)
        return TrainResult(status=status, step=self.step, skipped_total=self.skipped_total,
                           message=message, run_dir=self.run_dir)


def latest_step(run_dir: str | Path) -> int:
    """Step of the newest USABLE checkpoint of a run (0 when it has none): each newer checkpoint that
    fails its checksum or finiteness checks is skipped with a warning (:func:`find_latest`), so a
    corrupt final checkpoint never makes a run look finished."""
    return find_latest(run_dir).step or 0
