"""Figure data computed from a training run's checkpoint: samples against the step count,
trajectories, quality against steps, the flow-map error on an (s, t) grid against an oracle, the
realised times of the objective and the closed-form densities of its configured time law.

Everything runs on the CPU in the run's dtype, with its own seeded generators (never torch's
global one), so rebuilding a figure is reproducible and leaves no trace in the caller's RNG.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from workbench.core.validation import model_dtype
from workbench.flows.base import data_end_time
from workbench.sampling import sample_flow_map

from .figures_maps import SampleGrid
from .figures_times import ConfiguredLaw, TimeSamples
from .loaders import TrainingRun


# -- what the figures read from an objective, declared ---------------------------------------------------
@runtime_checkable
class Interpolated(Protocol):
    """An objective or flow built on an interpolant I_t = alpha_t x0 + beta_t x1 (``interpolant.name``
    says which: "linear", "trig", ...)."""

    interpolant: object


@runtime_checkable
class PairSampled(Protocol):
    """An objective that draws its off-diagonal (s, t) pairs from ``sampler`` (a pair sampler of
    ``workbench.losses.samplers``: UniformTriangle, BetaPair, LogitNormalPair, ...)."""

    sampler: object


@runtime_checkable
class DiscreteGapped(Protocol):
    """Consistency training / distillation: pairs (s, s + delta), or (s, t_end) when ``t_end`` is
    set: ``workbench.losses.samplers.DiscreteGapSampler(delta, t_end)``."""

    delta: float
    t_end: float | None


@runtime_checkable
class DiagonalShare(Protocol):
    """An objective that spends the share ``diag_fraction`` of a batch on the diagonal s = t."""

    diag_fraction: float


def data_source(run: TrainingRun):
    """``workbench.data.get_data`` of the run's data section."""
    from workbench.data import get_data

    return get_data(run.config.data.name, **run.config.data.kwargs)


def load_model(run: TrainingRun, *, ema: float | None = None, data=None) -> torch.nn.Module:
    """The run's model from its newest readable checkpoint, in eval mode on the CPU: the online
    weights (``ema=None``) or the EMA of that rate (one of ``config.ema_rates``)."""
    from workbench.training import build_model, load_latest
    from workbench.training.build import DTYPES

    cfg = run.config
    if ema is not None and float(ema) not in cfg.ema_rates:
        raise ValueError(f"ema must be None (online weights) or one of the run's ema_rates {cfg.ema_rates}, "
                         f"got {ema!r}")
    state = load_latest(run.run_dir, map_location="cpu")
    if state is None:
        raise ValueError(f"{run.run_dir} has no readable checkpoint (checkpoints/step-*.pt)")
    data = data_source(run) if data is None else data
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten; keep the global RNG as it was
        model = build_model(cfg.model, data.dim)
    weights = state["model"] if ema is None else state["ema"][repr(float(ema))]
    model.load_state_dict(weights)
    return model.to(DTYPES[cfg.dtype]).eval()


def _dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the model computes in (workbench.core.validation.model_dtype), float64 for a model that
    follows its input (e.g. ExactFlowMap)."""
    dtype = model_dtype(model)
    return torch.float64 if dtype is None else dtype


@torch.no_grad()
def sample_grid(models: dict, data, *, steps: Sequence[int] = (1, 2, 4, 8, 16), n: int = 2000, n_traj: int = 48,
                n_times: int = 33, seed: int = 0) -> SampleGrid:
    """N-step samples x_{k+1} = X_{t_k, t_{k+1}}(x_k), t_k = k / N (workbench.sampling.sample_flow_map)
    of every model (label -> model) from one shared noise batch x0 ~ N(0, I) (n, dim), and the
    trajectories X_{0,t}(x0[:n_traj]) on n_times uniform times, with n data samples. A sample whose
    state turns non-finite on the way (a diverged model) is NaN (``on_nonfinite="nan"``): callers
    check ``np.isfinite``."""
    if not models:
        raise ValueError("models must name at least one model")
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, data.dim, generator=g, dtype=torch.float64)
    ref = data.sample(n, g, dtype=torch.float64).numpy()
    times = np.linspace(0.0, 1.0, n_times)
    samples, trajs = {}, {}
    for label, model in models.items():
        z = x0.to(_dtype(model))
        samples[label] = np.stack([sample_flow_map(model, z, int(k), on_nonfinite="nan").double().numpy()
                                   for k in steps])
        zt = z[:n_traj]
        trajs[label] = np.stack([zt.double().numpy()] + [model.flow_map(0.0, float(t), zt).double().numpy()
                                                         for t in times[1:]])
    return SampleGrid(methods=tuple(models), steps=tuple(int(k) for k in steps), samples=samples, data=ref,
                      times=times, trajectories=trajs)


@torch.no_grad()
def compute_quality(model: torch.nn.Module, data, *, steps: Sequence[int] = (1, 2, 4, 8, 16), n: int = 1000,
                    metrics: Sequence[str] = ("w2", "sliced_w2", "mmd2", "energy"), seed: int = 0):
    """``workbench.diagnostics.metrics.quality_vs_steps`` against n fresh data samples (seeded)."""
    from workbench.diagnostics.metrics import quality_vs_steps

    g = torch.Generator().manual_seed(seed)
    ref = data.sample(n, g, dtype=_dtype(model))
    return quality_vs_steps(model, ref, steps, generator=g, metrics=metrics)


def reference_flow(run: TrainingRun, data, objective=None):
    """The data source's analytic flow (``data.as_flow()``) when it has one whose interpolant is the
    objective's; None otherwise (no oracle to compare with)."""
    try:
        flow = data.as_flow()
    except (AttributeError, ValueError, NotImplementedError, TypeError):
        return None
    objective = build_run_objective(run, data) if objective is None else objective
    if (isinstance(objective, Interpolated) and isinstance(flow, Interpolated)
            and _interpolant_name(objective.interpolant) != _interpolant_name(flow.interpolant)):
        return None
    return flow


def _interpolant_name(interpolant: object) -> str:
    """The registry name of an interpolant ("linear", "trig", ...); its type name otherwise."""
    from workbench.flows.interpolants import LinearInterpolant, TrigInterpolant

    if isinstance(interpolant, (LinearInterpolant, TrigInterpolant)):
        return interpolant.name
    return type(interpolant).__name__


@torch.no_grad()
def oracle_map_error(model: torch.nn.Module, flow, *, grid: int = 8, n_cell: int = 48,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RMS error sqrt(mean |hat X_{s,t}(x) - X_{s,t}(x)|^2) per cell of a grid x grid partition of
    [0, T]^2 (T = ``workbench.flows.base.data_end_time(flow)``: 1, or just below it for a flow
    singular at the data), over n_cell points per cell with
    (s, t) uniform in the cell, sorted so that s <= t, and x ~ p_s; the oracle runs in float64.
    Returns (values (grid, grid) with NaN below the diagonal, edges (grid + 1,))."""
    t_max = data_end_time(flow)
    g = torch.Generator().manual_seed(seed)
    ii, jj = torch.triu_indices(grid, grid)
    cell = torch.arange(ii.numel()).repeat_interleave(n_cell)
    u = torch.rand(cell.numel(), 2, generator=g, dtype=torch.float64)
    a, b = (ii[cell] + u[:, 0]) / grid * t_max, (jj[cell] + u[:, 1]) / grid * t_max
    s, t = torch.minimum(a, b), torch.maximum(a, b)
    x = flow.sample_marginal(s, s.numel(), g, dtype=torch.float64)
    ref = flow.flow_map(s, t, x)
    dt = _dtype(model)
    err2 = (model.flow_map(s.to(dt), t.to(dt), x.to(dt)).double() - ref).pow(2).sum(dim=1)
    per = torch.zeros(ii.numel(), dtype=torch.float64).index_add_(0, cell, err2) / n_cell
    out = np.full((grid, grid), np.nan)
    out[ii.numpy(), jj.numpy()] = per.sqrt().numpy()
    return out, np.linspace(0.0, t_max, grid + 1)


def build_run_objective(run: TrainingRun, data):
    """The run's objective with its scheduled fields at their values of the last step."""
    from workbench.training import build_objective, scheduled_value

    obj = build_objective(run.config.objective, data)
    sched = run.config.objective.schedules
    if sched:
        k = max(run.config.steps - 1, 0)
        obj = dataclasses.replace(obj, **{f: scheduled_value(spec, k) for f, spec in sched.items()})
    return obj


def realised_times(run: TrainingRun, model: torch.nn.Module, data, *, n: int = 40000, seed: int = 0,
                   grid_points: int = 201) -> TimeSamples:
    """The times the run's objective actually draws: it is called on the model with ceil(n / batch)
    data batches of the run's batch size (seeded; every batch kept whole); ``configured`` is
    :func:`configured_law` of the objective (None when its sampler has no closed form here)."""
    objective = build_run_objective(run, data)
    g = torch.Generator().manual_seed(seed)
    bs, dt = run.config.batch_size, _dtype(model)
    parts = []
    with torch.random.fork_rng(devices=[]):
        for _ in range(max(1, math.ceil(n / bs))):
            res = objective(model, data.sample(bs, g, dtype=dt), generator=g)
            tb = res.times
            parts.append((tb.s.detach().double().numpy(), tb.t.detach().double().numpy(),
                          tb.diagonal.detach().bool().numpy()))
    s, t, d = (np.concatenate(p) for p in zip(*parts))  # whole batches: the diagonal share stays exact
    return TimeSamples(name=f"{run.method} ({run.name})", s=s, t=t, diagonal=d,
                       configured=configured_law(objective, np.linspace(0.0, 1.0, grid_points)))


# -- closed-form densities of the configured time law ---------------------------------------------------
def _min_max_pdfs(f: np.ndarray, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Densities of min and max of two iid draws with density f and CDF F: 2 f (1 - F) and 2 f F."""
    return 2.0 * f * (1.0 - F), 2.0 * f * F


def _affine_pdf(pdf_u, x: np.ndarray, lo: float, width: float) -> np.ndarray:
    """Density of lo + width U at x from the density pdf_u of U on [0, 1] (zero outside); the end
    points are evaluated 1e-9 inside, where Beta and logit-normal densities may be infinite."""
    u = (x - lo) / width
    inside = (u >= 0) & (u <= 1)
    out = np.zeros_like(x, dtype=float)
    out[inside] = pdf_u(np.clip(u[inside], 1e-9, 1.0 - 1e-9)) / width
    return out


def _base_law(sampler) -> tuple | None:
    """(pdf, cdf) of the unit-interval law whose two iid draws are sorted into (s, t)."""
    from scipy import stats

    from workbench.losses.samplers import BetaPair, DiscreteGapSampler, LogitNormalPair, UniformTriangle

    if isinstance(sampler, (UniformTriangle, DiscreteGapSampler)):
        return (lambda u: np.ones_like(u)), (lambda u: np.clip(u, 0.0, 1.0))
    if isinstance(sampler, BetaPair):
        law = stats.beta(sampler.a, sampler.b)
        return law.pdf, law.cdf
    if isinstance(sampler, LogitNormalPair):
        m, sd = sampler.mean, sampler.std

        def pdf(u):
            u = np.clip(u, 1e-300, 1 - 1e-16)
            return stats.norm.pdf((np.log(u) - np.log1p(-u) - m) / sd) / (sd * u * (1.0 - u))

        def cdf(u):
            u = np.clip(u, 1e-300, 1 - 1e-16)
            return stats.norm.cdf((np.log(u) - np.log1p(-u) - m) / sd)

        return pdf, cdf
    return None


def configured_law(objective, grid: np.ndarray) -> ConfiguredLaw | None:
    """Closed-form densities of the objective's configured times on ``grid``.

    The pair sampler is ``objective.sampler`` (:class:`PairSampled`), or for CT / CD
    (:class:`DiscreteGapped`) ``DiscreteGapSampler(delta, t_end)``. With base law (f, F) on [0, 1] (uniform; Beta(a, b);
    logit-normal sigmoid(N(m, sd^2))): s = lo + w min(U, V), t = lo + w max(U, V) (+ delta for the
    discrete-gap sampler, w = hi - delta - lo; otherwise w = hi - lo), densities 2 f (1 - F) and
    2 f F mapped affinely; ``t_end`` set: s ~ U[lo, t_end - delta] and t the atom t_end. The
    diagonal time is one base draw on [lo, hi] (uniform for the discrete-gap sampler). None when the
    sampler is unknown here.
    """
    from workbench.losses.flow_matching import FlowMatching
    from workbench.losses.samplers import DiscreteGapSampler

    sampler = objective.sampler if isinstance(objective, PairSampled) else None
    if sampler is None and isinstance(objective, DiscreteGapped):
        try:
            sampler = DiscreteGapSampler(delta=objective.delta, t_end=objective.t_end)
        except ValueError:
            return None
    base = None if sampler is None else _base_law(sampler)
    if base is None:
        return None
    pdf, cdf = base
    grid = np.asarray(grid, dtype=float)
    lo, hi = float(sampler.lo), float(sampler.hi)
    if isinstance(objective, DiagonalShare):
        diag_fraction = objective.diag_fraction
    else:
        diag_fraction = 1.0 if isinstance(objective, FlowMatching) else math.nan
    name = type(sampler).__name__
    if isinstance(sampler, DiscreteGapSampler):
        diag = _affine_pdf(lambda u: np.ones_like(u), grid, lo, hi - lo)
        if sampler.t_end is not None:
            width = sampler.t_end - sampler.delta - lo
            s_pdf = _affine_pdf(lambda u: np.ones_like(u), grid, lo, width)
            return ConfiguredLaw(grid, s_pdf, None, diag, float(diag_fraction), f"{name} (closed form)",
                                 t_atom=float(sampler.t_end))
        width = hi - sampler.delta - lo
        s_pdf = _affine_pdf(lambda u: _min_max_pdfs(pdf(u), cdf(u))[0], grid, lo, width)
        t_pdf = _affine_pdf(lambda u: _min_max_pdfs(pdf(u), cdf(u))[1], grid, lo + sampler.delta, width)
        return ConfiguredLaw(grid, s_pdf, t_pdf, diag, float(diag_fraction), f"{name} (closed form)")
    s_pdf = _affine_pdf(lambda u: _min_max_pdfs(pdf(u), cdf(u))[0], grid, lo, hi - lo)
    t_pdf = _affine_pdf(lambda u: _min_max_pdfs(pdf(u), cdf(u))[1], grid, lo, hi - lo)
    diag = _affine_pdf(pdf, grid, lo, hi - lo)
    return ConfiguredLaw(grid, s_pdf, t_pdf, diag, float(diag_fraction), f"{name} (closed form)")
