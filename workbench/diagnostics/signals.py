"""The cheap per-step diagnostics: :class:`TrainingSignalsCallback` reads every step's ``StepRecord``
(no extra forward or backward pass) and logs window summaries: the global gradient norm, the per-term
losses, the tangent and residual norms and the non-finite counts whose growth precedes a divergence (D9).
Re-exported by :mod:`workbench.diagnostics.callbacks`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..training.callbacks import Callback, StepRecord, TrainContext
from .detectors.base import F64


@dataclass(frozen=True)
class _Observed:
    """What the signals keep of one step until the next summary: scalars and the detached, flattened
    per-sample tensors ``loss`` and ``aux/<name>`` (not the data batch)."""

    grad_norm: float
    terms: dict[str, float]
    n_nonfinite_grad: int
    per_sample: dict[str, torch.Tensor]

    @staticmethod
    def of(record: StepRecord) -> _Observed:
        per = {"loss": record.result.loss.detach().reshape(-1)}
        per.update({f"aux/{k}": v.detach().reshape(-1) for k, v in record.result.aux.items()
                    if v.is_floating_point() and v.numel()})
        return _Observed(record.grad_norm, dict(record.terms), int(record.n_nonfinite_grad), per)


class TrainingSignalsCallback(Callback):
    """Signals of every step, read off the StepRecord only (no extra forward or backward pass).

    Every step is observed (``every`` = 1); a summary of the steps since the last one is returned
    every ``log_every`` steps (default: the run's ``config.log_every``), at the last step, and at once
    at any step with a non-finite loss, non-finite gradient entries or a skipped update, so no event
    and no spike is lost while the log stays small. Logged keys (prefix ``signals/``):

    * ``grad_norm`` (last step), ``grad_norm_max`` and ``grad_norm_mean`` over the window (finite values);
    * ``terms/<name>``: window mean of the per-step term means;
    * ``loss_p50``, ``loss_p90``, ``loss_max``: per-sample loss quantiles over the window (heavy tails:
      a few samples dominating the batch gradient);
    * ``aux/<name>_mean``, ``aux/<name>_max`` over the finite entries of each ``result.aux`` tensor
      (tangent / target / residual norms, weights), ``aux/<name>_nonfinite`` when some are not finite;
    * ``n_nonfinite_grad`` (window), ``nonfinite_grad_total``, ``skipped_total``, ``clipped_frac``
      (share of all steps so far whose gradient was clipped), ``window`` (steps summarised).

    The per-sample tensors of a window are moved to the host in one transfer at summary time.
    """

    def __init__(self, every: int = 1, *, log_every: int | None = None) -> None:
        for name, v in (("every", every), ("log_every", 1 if log_every is None else log_every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.every, self.log_every = every, log_every
        self._reset()

    def _reset(self) -> None:
        self.n_steps = self.n_clipped = self.n_skipped = self.n_bad_grad = 0
        self._window: list[_Observed] = []

    def on_train_start(self, ctx: TrainContext) -> None:
        self._reset()

    def on_step_end(self, ctx: TrainContext | None, record: StepRecord) -> dict[str, float] | None:
        self.n_steps += 1
        self.n_clipped += int(record.clipped)
        self.n_skipped += int(record.skipped)
        self.n_bad_grad += int(record.n_nonfinite_grad)
        self._window.append(_Observed.of(record))  # not the record: it holds the data batch x1
        config = getattr(ctx, "config", None)
        log_every = self.log_every or getattr(config, "log_every", 1)
        event = record.skipped or record.n_nonfinite_grad > 0 or not math.isfinite(record.loss)
        last = config is not None and record.step == getattr(config, "steps", -1)
        if not (event or last or record.step % log_every == 0):
            return None
        window, self._window = self._window, []
        return self._summary(window)

    def _summary(self, window: list[_Observed]) -> dict[str, float]:
        out: dict[str, float] = {}
        grads = [r.grad_norm for r in window if math.isfinite(r.grad_norm)]
        if grads:
            out.update({"signals/grad_norm_max": max(grads), "signals/grad_norm_mean": sum(grads) / len(grads)})
        terms: dict[str, list[float]] = {}
        for r in window:
            for k, v in r.terms.items():
                terms.setdefault(k, []).append(v)
        out.update({f"signals/terms/{k}": sum(v) / len(v) for k, v in terms.items()})
        # one host transfer for all per-sample tensors of the window
        parts: dict[str, list[torch.Tensor]] = {}
        for r in window:
            for k, v in r.per_sample.items():
                parts.setdefault(k, []).append(v)
        keys = [k for k, v in parts.items() if v]
        chunks = [torch.cat(parts[k]).to(F64) for k in keys]
        host = torch.cat(chunks).cpu().numpy() if chunks else np.zeros(0)
        for k, arr in zip(keys, np.split(host, np.cumsum([c.numel() for c in chunks])[:-1])):
            ok = np.isfinite(arr)
            fin = arr[ok]
            if k == "loss":
                if fin.size:
                    q50, q90 = np.quantile(fin, [0.5, 0.9])
                    out.update({"signals/loss_p50": float(q50), "signals/loss_p90": float(q90),
                                "signals/loss_max": float(fin.max())})
                continue
            if fin.size:
                out.update({f"signals/{k}_mean": float(fin.mean()), f"signals/{k}_max": float(fin.max())})
            if fin.size < arr.size:
                out[f"signals/{k}_nonfinite"] = int(arr.size - fin.size)
        out.update({
            "signals/grad_norm": window[-1].grad_norm,
            "signals/n_nonfinite_grad": sum(r.n_nonfinite_grad for r in window),
            "signals/nonfinite_grad_total": self.n_bad_grad,
            "signals/skipped_total": self.n_skipped,
            "signals/clipped_frac": self.n_clipped / self.n_steps,
            "signals/window": len(window),
        })
        return out
