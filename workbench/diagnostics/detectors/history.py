"""History-level detectors: they read a training history (and, for D8, also evaluate the map).

A history is a list of metric dicts as in a run's metrics log (``RunDir(run).metrics``, read with
:func:`workbench.rundir.read_jsonl`): ``{"step": k, "loss": ..., "terms/diag_fm": ..., "grad_norm":
..., "skipped": ..., ...}``, with non-finite numbers stored as ``None``. Rows without a key are
simply not part of that series. Each docstring states the statistic and the threshold; the
catalogue with the D-codes is ``docs/detectors.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from .base import (
    F64,
    DetectorReport,
    Probe,
    evaluating,
    model_dtype_device,
    not_applicable,
    report,
    resolve_probe,
)

TH_FLOOR = 1.25
TH_PLATEAU = 0.1
TH_MAP_ERROR = 0.05
TH_NON_FINITE = 0.0
TH_SPIKE = 20.0
SPIKE_WINDOW = 50
MIN_SPIKE_HISTORY = 10

History = Sequence[Mapping[str, object]]


def _check_history(history: object) -> list[Mapping[str, object]]:
    if isinstance(history, (str, bytes)) or not isinstance(history, Iterable):
        raise TypeError(f"history must be a list of metric dicts (as in the run's metrics log), got {type(history).__name__}")
    rows = list(history)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"history[{i}] must be a dict of metrics, got {type(row).__name__}")
    return rows


def _number(v: object) -> float | None:
    """A metric value as a float; None (JSON null, i.e. non-finite) and non-numbers give None."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v)
    return None


def series(history: History, key: str) -> list[tuple[int, float | None]]:
    """[(step, value)] for the rows that carry ``key`` (value None where it was non-finite)."""
    out = []
    for i, row in enumerate(_check_history(history)):
        if key in row:
            v = _number(row[key])
            out.append((int(row.get("step", i)), v if v is None or math.isfinite(v) else None))
    return out


def pick_key(history: History, candidates: Sequence[str]) -> str:
    """The candidate key with the most finite values in the history (the first one on ties)."""
    rows = _check_history(history)
    counts = [sum(1 for _, v in series(rows, k) if v is not None) for k in candidates]
    return candidates[max(range(len(candidates)), key=lambda i: (counts[i], -i))]


def _median(values: Sequence[float]) -> float:
    """The usual median (mean of the two middle values for an even count)."""
    return float(torch.quantile(torch.tensor(values, dtype=F64), 0.5)) if values else math.nan


# -- D8 -------------------------------------------------------------------------------------------
def default_floor(reference: object, probe: Probe) -> float:
    """int_0^1 E|dI_t/dt - b_t(I_t)|^2 dt: closed form for Gaussian / point-mass data, else a Monte
    Carlo estimate with 20 000 draws (``workbench.diagnostics.theory``)."""
    from .. import theory

    try:
        return float(theory.mean_flow_matching_floor(reference))
    except TypeError:
        return theory.flow_matching_floor_mc(reference, None, 20_000, generator=probe.generator).mean


def detect_noise_floor_stall(model: object, *, reference: object = None, history: History | None = None,
                             floor: float | None = None, loss_key: str | None = None, window: int | None = None,
                             generator: torch.Generator | None = None, n: int = 512,
                             probe: Probe | None = None) -> DetectorReport:
    """D8, stalled at the conditional-velocity noise floor while the map is still wrong.

    The loss series ``loss_key`` (default ``signals/terms/diag_fm`` or ``terms/diag_fm``, whichever has
    more values, when logged, else ``loss``) has reached
    its floor, r = median(last ``window`` values) / floor < 1.25, it has stopped moving (the medians
    of the last two windows differ by < 10%), and the map is still off, e_map > 0.05 (the map error of
    :func:`~workbench.diagnostics.detectors.maps.map_error` against the reference). ``floor`` defaults
    to the mean flow-matching floor of the reference with t ~ U[0, 1] (``theory``), the floor of the
    diagonal term; pass it for other time samplers or objectives. ``window`` defaults to a fifth of
    the series (at least 3).
    """
    from .maps import map_error

    if history is None:
        raise ValueError("detector 'noise_floor_stall' needs history= (a list of metric dicts)")
    p = resolve_probe(model, probe, reference, None, generator, n)
    if not p.has_reference:
        raise ValueError("detector 'noise_floor_stall' needs reference= (for the map error and the floor)")
    rows = _check_history(history)
    if loss_key is None:
        if any("terms/diag_fm" in r or "signals/terms/diag_fm" in r for r in rows):
            loss_key = pick_key(rows, ("signals/terms/diag_fm", "terms/diag_fm"))
        else:
            loss_key = "loss"
    values = [v for _, v in series(rows, loss_key) if v is not None]
    w = max(3, len(values) // 5) if window is None else int(window)
    if len(values) < 2 * w:
        return not_applicable("noise_floor_stall", "D8", TH_FLOOR,
                              f"{len(values)} finite values of {loss_key!r}, need {2 * w}", fires_above=False)
    f = float(floor) if floor is not None else default_floor(p.reference, p)
    if not (math.isfinite(f) and f > 0):
        return not_applicable("noise_floor_stall", "D8", TH_FLOOR,
                              f"the floor is {f:.3g} (no conditional-velocity noise, e.g. point-mass data)",
                              fires_above=False)
    recent, previous = _median(values[-w:]), _median(values[-2 * w:-w])
    drift = abs(recent - previous) / max(abs(previous), 1e-300)
    ratio = recent / f
    with evaluating(model):
        e_map = map_error(model, p)
    fired = ratio < TH_FLOOR and drift < TH_PLATEAU and e_map > TH_MAP_ERROR
    return report("noise_floor_stall", "D8", ratio, TH_FLOOR, fired,
                  f"{loss_key} has settled at {recent:.4g} = {ratio:.3g} x the flow-matching floor {f:.4g} (fires below "
                  f"{TH_FLOOR}); it moved {drift:.1%} over the last {w} logged values (plateau below "
                  f"{TH_PLATEAU:.0%}); the map error is still {e_map:.3g} of the spread (needs > {TH_MAP_ERROR})",
                  fires_above=False)


# -- D9 -------------------------------------------------------------------------------------------
def nonfinite_outputs(model: object, p: Probe) -> tuple[int, list[str]]:
    """Count non-finite entries of the model's map and diagonal on the probe's noise."""
    dtype, _ = model_dtype_device(model)
    bad, where = 0, []
    x = p.z.to(dtype)
    with evaluating(model):
        for name, fn in (("flow_map(0, T)", lambda: model.flow_map(0.0, p.T, x)),
                         ("flow_map(0.5, T)", lambda: model.flow_map(0.5 * p.T, p.T, x)),
                         ("velocity(0.5)", lambda: model.velocity(0.5 * p.T, x))):
            try:
                k = int((~torch.isfinite(fn())).sum())
            except ValueError as err:  # a model that validates its own outputs
                k, name = x.numel(), f"{name} raised {err}"
            if k:
                bad += k
                where.append(f"{k} non-finite entries from model.{name}")
    return bad, where


def detect_non_finite(model: object = None, *, history: History | None = None, generator: torch.Generator | None = None,
                      n: int = 512, probe: Probe | None = None, extra: Sequence[str] = ()) -> DetectorReport:
    """D9, divergence / NaN: the number of non-finite events, fires when > 0.

    Events: non-finite entries of the model's outputs on noise (map X_{0,T}, X_{T/2,T}, diagonal at
    T/2), and in the history non-finite losses, steps with non-finite gradient entries
    (``n_nonfinite_grad`` > 0), skipped updates (``skipped``) and a run stopped as "diverged".
    ``extra``: further events found elsewhere (counted once each).
    """
    if model is None and history is None:
        raise ValueError("detector 'non_finite' needs a model or a history")
    count, notes = 0, []
    if model is not None:
        p = resolve_probe(model, probe, None, None, generator, n)
        k, where = nonfinite_outputs(model, p)
        count += k
        notes += where
    if history is not None:
        rows = _check_history(history)
        steps = [int(r.get("step", i)) for i, r in enumerate(rows)]
        kinds = {  # event kind -> steps where a row shows it (the trainer's keys and the signals callback's)
            "a non-finite loss": {k for k, r in zip(steps, rows) if "loss" in r and _number(r["loss"]) is None},
            "non-finite gradient entries": {k for k, r in zip(steps, rows)
                                            if any(_number(r.get(key)) for key in ("n_nonfinite_grad",
                                                                                    "signals/n_nonfinite_grad"))},
            "a skipped update": {k for k, r in zip(steps, rows) if r.get("skipped") is True},
        }
        for what, at in kinds.items():
            if at:
                count += len(at)
                notes.append(f"{len(at)} logged steps with {what} (first at step {min(at)})")
        stopped = [k for k, r in zip(steps, rows) if r.get("stopped") == "diverged"]
        if stopped:
            count += 1
            notes.append(f"the run stopped as diverged at step {stopped[0]}")
    count += len(extra)
    notes += list(extra)
    evidence = "; ".join(notes) if notes else "no non-finite outputs, losses or gradients and no skipped steps"
    return report("non_finite", "D9", float(count), TH_NON_FINITE, count > TH_NON_FINITE,
                  f"{evidence} (fires on any event)")


def detect_grad_explosion(history: History, *, window: int = SPIKE_WINDOW, key: str | None = None) -> DetectorReport:
    """D9, exploding gradients: max over logged steps of |g_k| / median(|g|) over the preceding
    ``window`` finite values (at least 10 needed), fires above 20 (a spike of more than an order of
    magnitude over the recent typical norm; such spikes precede a divergence). ``key``
    defaults to ``signals/grad_norm_max`` (the window maxima of :class:`TrainingSignalsCallback`, which
    see every step) or ``grad_norm``, whichever has more values (the former on ties)."""
    if key is None:
        key = pick_key(history, ("signals/grad_norm_max", "grad_norm"))
    vals = [(s, v) for s, v in series(history, key) if v is not None]
    if len(vals) <= MIN_SPIKE_HISTORY:
        return not_applicable("grad_explosion", "D9", TH_SPIKE, f"{len(vals)} finite values of {key!r}, need "
                              f"more than {MIN_SPIKE_HISTORY}")
    g = torch.tensor([v for _, v in vals], dtype=F64)
    best, at, base = 0.0, vals[0][0], math.nan
    for k in range(MIN_SPIKE_HISTORY, len(vals)):
        med = float(torch.quantile(g[max(0, k - window):k], 0.5))
        ratio = float(g[k]) / med if med > 0 else (math.inf if float(g[k]) > 0 else 0.0)
        if ratio > best:
            best, at, base = ratio, vals[k][0], med
    return report("grad_explosion", "D9", best, TH_SPIKE, best > TH_SPIKE,
                  f"largest {key} spike is {best:.3g} x the median of the preceding {window} values "
                  f"(at step {at}, median {base:.3g}; fires above {TH_SPIKE:g})")
