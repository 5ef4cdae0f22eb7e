"""Trainer callbacks that instrument a run without changing it.

* :class:`FlowMapErrorCallback` (own cadence): the RMS distance of the model's flow map (and its
  EMAs') to an analytic oracle on a fixed evaluation set, the learning curve of a toy run.
* :class:`TrainingSignalsCallback` (cheap, every step): global gradient norm, per-term loss means,
  per-sample loss quantiles, non-finite counts, clipped / skipped steps and the objective's ``aux``
  diagnostics (tangent, target, residual norms: mean and max), all read off the ``StepRecord``.
* :class:`PeriodicDiagnosticsCallback` (expensive, own cadence): per-term gradient norms and cosines,
  per-module gradient norms, per-sample gradient norms binned over (s, t) and over the gap t - s,
  the flow-map error against the oracle on an (s, t) grid when a reference flow is known, and
  sample quality against the number of steps. Bin and grid arrays go to the run's diagnostics folder
  (``RunDir.grad_bins``, ``RunDir.map_error(tag)``; one slice per evaluation, for heat maps).
* :class:`DiagnosisCallback`: runs :func:`~workbench.diagnostics.diagnose` (optionally every
  ``every`` steps, recording when each detector first fired in ``RunDir.first_fired``) and at the
  end of training writes ``RunDir.diagnosis_md`` and ``RunDir.diagnosis_json`` for the model and its EMAs.

Every path comes from :class:`workbench.rundir.RunDir` and every file is written atomically by
:mod:`workbench.rundir`, so a run killed mid-write leaves the previous file or none.

Randomness comes only from ``ctx.generator`` / ``ctx.sample_batch`` (the callbacks' own stream), and
gradients are taken with ``torch.autograd.grad`` (``.grad`` is never touched), so attaching these
callbacks leaves the training trajectory unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.contract import Flow, check_implements
from ..flows.base import data_end_time
from ..rundir import RunDir, atomic_write_json, atomic_write_text, read_json, read_jsonl, save_npz
from ..training.callbacks import Callback, StepRecord, TrainContext
from ..training.optim import scheduled_value
from .detectors.base import F64, NonFiniteOutput, Probe, evaluating
from .signals import TrainingSignalsCallback

__all__ = ["DiagnosisCallback", "FlowMapErrorCallback", "PeriodicDiagnosticsCallback", "TrainingSignalsCallback",
           "resolve_reference"]


def _load_slices(path: Path, keys: Sequence[str], up_to: int) -> dict[str, list]:
    """Per-evaluation slices of an earlier session's npz (steps <= ``up_to``), so a resumed run appends
    to them; empty when there is no file, and empty with a warning naming the file when it cannot be
    read (the earlier history is then lost from the file this session writes)."""
    if not path.is_file():
        return {}
    try:
        with np.load(path) as z:
            keep = [i for i, k in enumerate(z["steps"]) if int(k) <= up_to]
            return {k: [z[k][i] for i in keep] for k in keys}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"cannot read the earlier history {path} ({type(err).__name__}: {err}); this session "
                      "starts it afresh and the earlier entries are dropped", stacklevel=2)
        return {}


def resolve_reference(reference: object, ctx: TrainContext) -> object:
    """``"auto"``: the data source's analytic flow (``ctx.data.as_flow()``) when it has one and its
    interpolant matches the objective's; otherwise the given flow (or None)."""
    if not (isinstance(reference, str) and reference == "auto"):
        return reference
    as_flow = getattr(ctx.data, "as_flow", None)
    if as_flow is None:
        return None
    try:
        flow = as_flow()
    except (ValueError, NotImplementedError, TypeError):
        return None
    ip_obj, ip_flow = getattr(ctx.objective, "interpolant", None), getattr(flow, "interpolant", None)
    if ip_obj is not None and ip_flow is not None and getattr(ip_obj, "name", None) != getattr(ip_flow, "name", None):
        warnings.warn(f"the data's analytic flow uses the {ip_flow.name!r} interpolant but the objective trains "
                      f"{ip_obj.name!r}; no reference flow for the diagnostics (pass reference= explicitly)", stacklevel=3)
        return None
    return flow


def _models(ctx: TrainContext, include_ema: bool) -> list[tuple[str, torch.nn.Module]]:
    out = [("model", ctx.model)]
    if include_ema:
        out += [(f"ema{rate:g}", m) for rate, m in ctx.ema.items()]
    return out


# -- the oracle error, a learning curve -----------------------------------------------------------------
class FlowMapErrorCallback(Callback):
    """Distance of the model's flow map to an analytic oracle on a fixed evaluation set.

    flow: the analytic flow (:class:`workbench.core.contract.Flow` with ``sample_marginal``). At
    ``on_train_start`` draws, from its own generator seeded by ``seed``, n pairs s <= t uniform on the
    triangle (t capped at ``t_max`` and at :func:`workbench.flows.base.data_end_time` of the flow)
    and x ~ p_s (``flow.sample_marginal``). Every ``every`` steps it logs, for the online model and
    each EMA, the root-mean-square error ``sqrt(mean |X_hat_{s,t}(x) - X_{s,t}(x)|^2)`` (key
    ``oracle/map_rmse``, EMA keys ``oracle/ema<rate>/map_rmse``) and the same for the one-step map
    X_{0,t_max} from x0 ~ N(0, I) (``oracle/map01_rmse``), and at step 0 the same at initialisation.
    The oracle is evaluated once, in float64; the evaluation set is then cast to the run's dtype.
    """

    def __init__(self, flow: Any, every: int = 100, n: int = 2048, seed: int = 0, t_max: float = 1.0) -> None:
        check_implements(flow, Flow, "flow", also=("sample_marginal",))
        t_max = min(t_max, data_end_time(flow))
        self.flow, self.every, self.n, self.seed, self.t_max = flow, int(every), int(n), int(seed), float(t_max)
        self._eval: tuple[torch.Tensor, ...] | None = None

    def on_train_start(self, ctx: TrainContext) -> None:
        g = torch.Generator().manual_seed(self.seed)
        st = torch.rand(self.n, 2, generator=g, dtype=F64).sort(dim=1).values * self.t_max
        s, t = st[:, 0], st[:, 1]
        x = self.flow.sample_marginal(s, self.n, g, dtype=F64)
        x0 = torch.randn(self.n, self.flow.dim, generator=g, dtype=F64)
        ref, ref01 = self.flow.flow_map(s, t, x), self.flow.flow_map(0.0, self.t_max, x0)
        self._eval = tuple(v.to(device=ctx.device, dtype=ctx.dtype) for v in (s, t, x, ref, x0, ref01))
        if ctx.step == 0:  # the error at initialisation, logged at step 0
            ctx.log(self.on_step_end(ctx, None), 0)

    @torch.no_grad()
    def errors(self, model: torch.nn.Module) -> tuple[float, float]:
        """(RMSE over the triangle, RMSE of the one-step map) of ``model`` on the evaluation set."""
        s, t, x, ref, x0, ref01 = self._eval
        err = (model.flow_map(s, t, x).double() - ref.double()).pow(2).sum(-1).mean().sqrt()
        err01 = (model.flow_map(0.0, self.t_max, x0).double() - ref01.double()).pow(2).sum(-1).mean().sqrt()
        return float(err), float(err01)

    def on_step_end(self, ctx: TrainContext, record: StepRecord | None) -> dict[str, float]:
        out = {}
        for tag, model in [("", ctx.model)] + [(f"ema{r}/", m) for r, m in ctx.ema.items()]:
            with evaluating(model):
                out[f"oracle/{tag}map_rmse"], out[f"oracle/{tag}map01_rmse"] = self.errors(model)
        return out


# -- expensive, periodic ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _GridError:
    """Map error on the (s, t) grid: per-cell RMS (grid, grid), NaN below the diagonal; the reference's
    per-cell RMS spread; the overall RMS; the number of evaluation points with a non-finite error."""

    rmse: np.ndarray
    spread: np.ndarray
    total: float
    nonfinite: int


class PeriodicDiagnosticsCallback(Callback):
    """Gradient anatomy, flow-map error on an (s, t) grid and quality vs steps, every ``every`` steps.

    Gradients (on a fresh batch of ``n_grad`` samples from ``ctx.sample_batch``, the objective drawing
    its noise and times from ``ctx.generator``): ``grads/term/<name>`` |grad of each term's batch mean|,
    ``grads/cos/<a>|<b>`` their cosines, ``grads/total``, ``grads/module/<name>`` per-module norms, and
    per-sample norms |grad l_i| (one backward pass per sample) binned over (s, t) (``bins`` x ``bins``
    cells of [0, 1]^2) and over the gap, saved to ``RunDir.grad_bins`` (arrays ``steps``,
    ``st_sum``, ``st_count``, ``gap_sum``, ``gap_count``, ``s_edges``, ``t_edges``, ``gap_edges``; one
    slice per evaluation; mean = sum / count).

    Flow-map error (when ``reference`` is a flow, or ``"auto"`` finds ``ctx.data.as_flow()``): on a
    ``grid`` x ``grid`` partition of s <= t, ``n_cell`` points per cell with (s, t) uniform in the cell
    and x ~ p_s, the oracle evaluated once at the start; the RMS error per cell goes to
    ``RunDir.map_error(tag)`` (``steps``, ``rmse`` (k, grid, grid), NaN below the diagonal,
    ``spread`` the reference RMS spread per cell, ``edges``), its overall RMS to ``periodic/map_rmse``
    (NaN, with ``periodic/map_nonfinite`` the number of points, when the model returns NaN / inf).

    Quality vs steps: ``workbench.diagnostics.metrics.quality_vs_steps`` against ``n_samples`` fresh
    data samples for ``steps`` (``quality/<metric>/<N>`` and ``quality/drift/<N>``; ``quality/nonfinite``
    = 1 instead when the model's samples hold NaN / inf).
    ``include_ema`` repeats the map error and quality for every EMA model; ``gradients=False`` skips
    the gradient part (e.g. for a model without parameters), ``steps=()`` the quality part.
    """

    def __init__(self, every: int = 500, *, reference: object = "auto", n_grad: int = 64, bins: int = 16,
                 grid: int = 8, n_cell: int = 32, steps: Sequence[int] = (1, 2, 4, 8), n_samples: int = 512,
                 metrics: Sequence[str] = ("sliced_w2", "energy"), include_ema: bool = False, gradients: bool = True,
                 seed: int = 0) -> None:
        for name, v in (("every", every), ("n_grad", n_grad), ("bins", bins), ("grid", grid), ("n_cell", n_cell),
                        ("n_samples", n_samples)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.every, self.reference, self.n_grad, self.bins, self.grid = every, reference, n_grad, bins, grid
        self.n_cell, self.steps, self.n_samples, self.metrics = n_cell, tuple(steps), n_samples, tuple(metrics)
        self.include_ema, self.gradients, self.seed = include_ema, gradients, seed
        self._ref = None
        self._eval: tuple[torch.Tensor, ...] | None = None
        self._grad_hist: dict[str, list] = {}
        self._map_hist: dict[str, dict[str, list]] = {}

    def on_train_start(self, ctx: TrainContext) -> None:
        self._ref = resolve_reference(self.reference, ctx)
        self._eval = None
        if self._ref is not None:
            self._eval = self._grid_eval_set(self._ref)
        rd = RunDir(ctx.run_dir)
        self._grad_hist = _load_slices(rd.grad_bins, ("steps", "st_sum", "st_count", "gap_sum", "gap_count"), ctx.step)
        self._map_hist = {}
        for tag, _ in _models(ctx, self.include_ema):
            self._map_hist[tag] = _load_slices(rd.map_error(tag), ("steps", "rmse"), ctx.step)

    # -- (s, t) grid against the oracle ------------------------------------------------------------
    def _grid_eval_set(self, flow: object) -> tuple[torch.Tensor, ...]:
        G, m = self.grid, self.n_cell
        t_max = data_end_time(flow)
        g = torch.Generator().manual_seed(self.seed)
        ii, jj = torch.triu_indices(G, G)  # cells i <= j (s-cell i, t-cell j)
        cell = torch.arange(ii.numel()).repeat_interleave(m)
        u = torch.rand(cell.numel(), 2, generator=g, dtype=F64)
        s = (ii[cell] + u[:, 0]) / G
        t = (jj[cell] + u[:, 1]) / G
        s, t = torch.minimum(s, t) * t_max, torch.maximum(s, t) * t_max
        x = flow.sample_marginal(s, s.numel(), g, dtype=F64)
        ref = flow.flow_map(s, t, x).to(F64)
        return s, t, x, ref, ii, jj, cell

    @torch.no_grad()
    def _map_errors(self, model: torch.nn.Module, ctx: TrainContext) -> _GridError:
        s, t, x, ref, ii, jj, cell = self._eval
        dtype = ctx.dtype
        with evaluating(model):
            out = model.flow_map(s.to(ctx.device, dtype), t.to(ctx.device, dtype), x.to(ctx.device, dtype))
        err2 = (out.to("cpu", F64) - ref).pow(2).sum(dim=1)
        n_cells = ii.numel()
        per = torch.zeros(n_cells, dtype=F64).index_add_(0, cell, err2) / self.n_cell
        spread = torch.zeros(n_cells, dtype=F64).index_add_(0, cell, (ref - ref.mean(0)).pow(2).sum(dim=1)) / self.n_cell
        grid = torch.full((self.grid, self.grid), math.nan, dtype=F64)
        grid_spread = grid.clone()
        grid[ii, jj] = per.sqrt()
        grid_spread[ii, jj] = spread.sqrt()
        return _GridError(rmse=grid.numpy(), spread=grid_spread.numpy(), total=float(err2.mean().sqrt()),
                          nonfinite=int((~torch.isfinite(err2)).sum()))

    # -- gradients ----------------------------------------------------------------------------------
    def _objective(self, ctx: TrainContext) -> Any:
        """The objective as the trainer used it at step ``ctx.step``: the fields named in
        ``config.objective.schedules`` set to their values after ``ctx.step - 1`` completed updates
        (``workbench.training.scheduled_value``), e.g. sCM's tangent warm-up or iCT's gap."""
        schedules = getattr(getattr(ctx.config, "objective", None), "schedules", None) or {}
        if not schedules:
            return ctx.objective
        k = max(ctx.step - 1, 0)
        return dataclasses.replace(ctx.objective, **{f: scheduled_value(spec, k) for f, spec in schedules.items()})

    def _gradients(self, ctx: TrainContext) -> dict[str, float]:
        from .gradients import bin_by_gap, bin_by_times, gradient_report, parameter_gradients, term_gradient_stats

        model = ctx.model
        x1 = ctx.sample_batch(self.n_grad)
        with torch.enable_grad():
            result = self._objective(ctx)(model, x1, generator=ctx.generator)
            stats = term_gradient_stats(model, result)
            rep = gradient_report(parameter_gradients(model, result.loss.mean(), retain_graph=True))
            params = [p for p in model.parameters() if p.requires_grad]
            norms = []
            for i in range(result.loss.shape[0]):
                g = torch.autograd.grad(result.loss[i], params, retain_graph=i + 1 < result.loss.shape[0],
                                        allow_unused=True)
                norms.append(torch.sqrt(sum((gi.detach().to(F64) ** 2).sum() for gi in g if gi is not None)))
        per_sample = torch.stack(norms).cpu()
        tb = result.times
        s, t = tb.s.detach().cpu().to(F64), tb.t.detach().cpu().to(F64)
        st = bin_by_times(per_sample, s, t, bins=self.bins)
        gap = bin_by_gap(per_sample, (t - s).abs(), bins=self.bins)
        h = self._grad_hist
        for k, v in (("steps", ctx.step), ("st_sum", st.sum.numpy()), ("st_count", st.count.numpy()),
                     ("gap_sum", gap.sum.numpy()), ("gap_count", gap.count.numpy())):
            h.setdefault(k, []).append(v)
        save_npz(RunDir(ctx.run_dir).grad_bins, {
            **{k: np.asarray(v) for k, v in h.items()},
            "s_edges": st.edges[0].numpy(), "t_edges": st.edges[1].numpy(), "gap_edges": gap.edges[0].numpy()})
        out = {f"grads/term/{k}": v for k, v in stats.norms.items()}
        out.update({f"grads/cos/{a}|{b}": (math.nan if c is None else c) for (a, b), c in stats.cosines.items()})
        out["grads/total"] = stats.total_norm
        out.update({f"grads/nonfinite/{k}": v for k, v in stats.nonfinite.items() if v})
        out.update({f"grads/module/{k}": v for k, v in rep.module_norms.items()})
        out["grads/per_sample_median"] = float(per_sample.median())
        out["grads/per_sample_max"] = float(per_sample.max())
        return out

    def on_step_end(self, ctx: TrainContext, record: StepRecord | None) -> dict[str, float]:
        out = self._gradients(ctx) if self.gradients else {}
        models = _models(ctx, self.include_ema)
        if self._eval is not None:
            for tag, model in models:
                e = self._map_errors(model, ctx)
                h = self._map_hist.setdefault(tag, {})
                h.setdefault("steps", []).append(ctx.step)
                h.setdefault("rmse", []).append(e.rmse)
                save_npz(RunDir(ctx.run_dir).map_error(tag), {
                    "steps": np.asarray(h["steps"]), "rmse": np.stack(h["rmse"]), "spread": e.spread,
                    "edges": np.linspace(0.0, 1.0, self.grid + 1)})
                key = "periodic/map_rmse" if tag == "model" else f"periodic/{tag}/map_rmse"
                out[key] = e.total
                if e.nonfinite:  # the NaN in map_rmse comes with the number of points behind it
                    out[key.replace("map_rmse", "map_nonfinite")] = e.nonfinite
        if self.steps:
            from .metrics import quality_vs_steps

            ref = ctx.sample_batch(self.n_samples)
            for tag, model in models:
                prefix = "quality" if tag == "model" else f"quality/{tag}"
                try:
                    with evaluating(model):
                        q = quality_vs_steps(model, ref, self.steps, generator=ctx.generator, metrics=self.metrics)
                except NonFiniteOutput:  # no metric of non-finite samples; say so instead of stopping training
                    out[f"{prefix}/nonfinite"] = 1
                    continue
                for name, vals in q.metrics.items():
                    out.update({f"{prefix}/{name}/{k}": v for k, v in zip(q.steps, vals)})
                out.update({f"{prefix}/drift/{k}": v for k, v in zip(q.steps, q.drift)})
        return out


# -- diagnosis ----------------------------------------------------------------------------------------
class DiagnosisCallback(Callback):
    """Run the degenerate-solution detectors and write the diagnosis (``RunDir.diagnosis_md`` for people,
    ``RunDir.diagnosis_json`` for programs) at the end.

    reference: an analytic flow, ``"auto"`` (``ctx.data.as_flow()`` when it exists and matches the
    objective's interpolant) or None; every: run ``diagnose`` on the online model every ``every``
    steps (0: only at the end), logging ``diagnosis/<name>`` (the statistic) and
    ``diagnosis/<name>_fired`` (0 / 1) and recording the first step each detector fired; at the end
    the model and (``include_ema``) each EMA are diagnosed with the training history read from the
    run's metrics log (``RunDir.metrics``). n: points per evaluation set; data: ``n`` samples from
    ``ctx.sample_batch``. The first-fired steps are kept in ``RunDir.first_fired`` so a resumed run
    keeps them (an unreadable file is reported with a warning and ignored).
    """

    def __init__(self, *, reference: object = "auto", every: int = 0, n: int = 512, include_ema: bool = True,
                 floor: float | None = None, seed: int = 0) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"every must be an int >= 0 (0 = only at the end), got {every!r}")
        self.reference, self.n, self.include_ema, self.floor, self.seed = reference, n, include_ema, floor, seed
        self.every = every if every > 0 else 2**62
        self._ref = None
        self._probe: Probe | None = None
        self.first_fired: dict[str, int] = {}

    def _note_fired(self, ctx: TrainContext, name: str) -> None:
        if name not in self.first_fired:
            self.first_fired[name] = ctx.step
            atomic_write_json(RunDir(ctx.run_dir).first_fired, self.first_fired, indent=None)

    @staticmethod
    def _earlier_first_fired(path: Path, up_to: int) -> dict[str, int]:
        """What an earlier session saw, up to the checkpoint's step; {} (with a warning naming the file
        when it exists but cannot be read) otherwise."""
        if not path.exists():
            return {}
        try:
            earlier = read_json(path, expect=dict, what="first-fired record")
            steps = {str(k): v for k, v in earlier.items()}
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in steps.values()):
                raise ValueError(f"first-fired record {path} must map detector names to int steps, got {earlier!r}")
        except ValueError as err:
            warnings.warn(f"{err}; the first-fired steps start afresh", stacklevel=3)
            return {}
        return {k: v for k, v in steps.items() if v <= up_to}

    def on_train_start(self, ctx: TrainContext) -> None:
        self._ref = resolve_reference(self.reference, ctx)
        self.first_fired = self._earlier_first_fired(RunDir(ctx.run_dir).first_fired, ctx.step)
        data = ctx.sample_batch(2 * self.n)
        self._probe = Probe(ctx.model.dim, reference=self._ref, data=data, n=self.n, device=ctx.device,
                            generator=torch.Generator(device=ctx.device).manual_seed(self.seed))

    def _diagnose(self, model: torch.nn.Module, history: list | None) -> list:
        from .diagnose import diagnose

        return diagnose(model, history=history, floor=self.floor, probe=self._probe)

    def on_step_end(self, ctx: TrainContext, record: StepRecord | None) -> dict[str, float]:
        out = {}
        for r in self._diagnose(ctx.model, None):
            if math.isfinite(r.statistic):
                out[f"diagnosis/{r.name}"] = r.statistic
            out[f"diagnosis/{r.name}_fired"] = float(r.fired)
            if r.fired:
                self._note_fired(ctx, r.name)
        return out

    def on_train_end(self, ctx: TrainContext) -> None:
        from .diagnose import diagnosis_dict, format_diagnosis

        rd = RunDir(ctx.run_dir)
        history = read_jsonl(rd.metrics)
        doc: dict[str, Any] = {"step": ctx.step, "reference": None if self._ref is None else repr(self._ref),
                               "first_fired": dict(self.first_fired), "models": {}}
        md = [f"# Diagnosis at step {ctx.step}", "",
              f"Reference flow: {doc['reference'] or 'none (sample-based detectors only)'}.", ""]
        for tag, model in _models(ctx, self.include_ema):
            reports = self._diagnose(model, history)
            for r in reports:
                if r.fired and tag == "model":
                    self._note_fired(ctx, r.name)
            doc["models"][tag] = diagnosis_dict(reports)
            md += [f"## {tag}", "", format_diagnosis(reports), ""]
        doc["first_fired"] = dict(self.first_fired)
        if self.first_fired:
            md += ["## When (online model)", "", "| detector | first fired at step |", "| --- | --- |"]
            md += [f"| {k} | {v} |" for k, v in sorted(self.first_fired.items(), key=lambda kv: kv[1])]
            md.append("")
        atomic_write_json(rd.diagnosis_json, doc)
        atomic_write_text(rd.diagnosis_md, "\n".join(md))
