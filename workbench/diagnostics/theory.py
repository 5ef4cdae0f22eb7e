"""Theory references for analytic flows: the flow-matching loss floor and the posterior-mean denoiser.

Notation: I_t = alpha_t x0 + beta_t x1 (t = 0 noise, t = 1 data), x0 ~ N(0, I), x1 ~ data,
b_t(x) = E[dI_t/dt | I_t = x] the probability-flow velocity, D_t(x) = E[x1 | I_t = x] the posterior mean.

**Flow-matching floor.** The diagonal flow-matching loss E|v_t(I_t) - dI_t/dt|^2 is minimised by
v = b and its minimum is the irreducible conditional variance of the target, the floor at which a
run can stall while its map is still wrong (degenerate solution D8, ``docs/detectors.md``)

    floor(t) = E|dI_t/dt - b_t(I_t)|^2 = E tr Cov(dI_t/dt | I_t).

Gaussian data N(mu, Sigma), Sigma = U diag(lam) U^T: (dI, I) are jointly Gaussian with
Cov(dI) = alpha'^2 I + beta'^2 Sigma, Cov(dI, I) = alpha alpha' I + beta beta' Sigma, Cov(I) = C_t, so per
eigen-direction the conditional variance is
(alpha'^2 + beta'^2 lam) - (alpha alpha' + beta beta' lam)^2 / (alpha^2 + beta^2 lam)
= lam (alpha beta' - alpha' beta)^2 / (alpha^2 + beta^2 lam), hence

    floor(t) = (alpha_t beta'_t - alpha'_t beta_t)^2 sum_i lam_i / (alpha_t^2 + beta_t^2 lam_i),

(linear: sum_i lam_i / ((1 - t)^2 + t^2 lam_i); trig: (pi/2)^2 sum_i lam_i / (cos^2 + lam_i sin^2)).
A point mass is the case lam = 0: floor = 0 (I_t determines x0). Averaged over t ~ U[0, 1]
(the loss a uniform time sampler sees): (pi/2) tr Sigma^{1/2} (linear), (pi/2)^2 tr Sigma^{1/2} (trig).

**Denoiser.** Point mass: D_t = a. Gaussian: D_t(x) = mu + beta_t Sigma C_t^{-1} (x - beta_t mu).
Any flow: the flow's own ``denoiser`` when it has one, else the inversion of the velocity-denoiser
identity: x0 = (I_t - beta_t x1) / alpha_t, so b_t(x) = E[alpha'_t x0 + beta'_t x1 | I_t = x]
= (alpha'/alpha) x + (beta' - alpha' beta/alpha) D_t(x), i.e.

    D_t(x) = (alpha_t b_t(x) - alpha'_t x) / (alpha_t beta'_t - alpha'_t beta_t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.contract import Flow, check_implements
from ..core.times import broadcast_time, expand_as_state
from ..core.validation import check_positive_int, check_state
from ..flows.gaussian import GaussianFlow
from ..flows.interpolants import LinearInterpolant, TrigInterpolant
from ..flows.point_mass import PointMassFlow


@dataclass(frozen=True)
class MonteCarloEstimate:
    """A Monte Carlo mean with its standard error sqrt(Var / n) over n independent draws."""

    mean: float
    stderr: float
    n: int


def _require_analytic(flow: object, *also: str) -> None:
    """The flow contract (:class:`workbench.core.contract.Flow`) plus an ``interpolant`` and ``also``."""
    check_implements(flow, Flow, "flow", also=("interpolant", *also))


def _time_tensor(t: object) -> torch.Tensor:
    if isinstance(t, bool) or not isinstance(t, (int, float, torch.Tensor)):
        raise TypeError(f"t must be a float or a tensor of times, got {type(t).__name__}")
    out = torch.as_tensor(t, dtype=torch.float64) if not isinstance(t, torch.Tensor) else t
    if not out.dtype.is_floating_point:
        out = out.to(torch.float64)
    if not bool(torch.isfinite(out).all()) or bool((out < 0).any()) or bool((out > 1).any()):
        raise ValueError("t must hold finite times in [0, 1]")
    return out


def flow_matching_floor(flow: object, t: object) -> torch.Tensor:
    """Closed-form floor(t) = E|dI_t/dt - b_t(I_t)|^2 (module docstring) for Gaussian / point-mass data.

    t: float or tensor of any shape in [0, 1]; returns a tensor of t's shape (float64 for a float).
    Other flows raise TypeError: use :func:`flow_matching_floor_mc`.
    """
    tt = _time_tensor(t)
    if isinstance(flow, PointMassFlow):
        return torch.zeros_like(tt)
    if not isinstance(flow, GaussianFlow):
        raise TypeError(f"no closed-form floor for {type(flow).__name__}; use flow_matching_floor_mc")
    ip = flow.interpolant
    lam = flow.eigvals.to(dtype=tt.dtype, device=tt.device)
    a, b, da, db = ip.alpha(tt), ip.beta(tt), ip.dalpha(tt), ip.dbeta(tt)
    wronskian = (a * db - da * b)[..., None]
    return (wronskian**2 * lam / (a[..., None] ** 2 + b[..., None] ** 2 * lam)).sum(-1)


def mean_flow_matching_floor(flow: object) -> float:
    """int_0^1 floor(t) dt (t ~ U[0, 1]): (pi/2) tr Sigma^{1/2} (linear), (pi/2)^2 tr Sigma^{1/2} (trig).

    From int_0^1 dt / ((1-t)^2 + lam t^2) = pi / (2 sqrt(lam)) and
    int_0^1 dt / (cos^2(pi t/2) + lam sin^2(pi t/2)) = 1 / sqrt(lam); 0 for a point mass.
    """
    if isinstance(flow, PointMassFlow):
        return 0.0
    if not isinstance(flow, GaussianFlow):
        raise TypeError(f"no closed-form mean floor for {type(flow).__name__}; use flow_matching_floor_mc(t=None)")
    root_trace = float(flow.eigvals.sqrt().sum())
    if isinstance(flow.interpolant, LinearInterpolant):
        return 0.5 * math.pi * root_trace
    if isinstance(flow.interpolant, TrigInterpolant):
        return 0.25 * math.pi**2 * root_trace
    raise TypeError(f"no closed form for interpolant {flow.interpolant!r}")  # pragma: no cover


def flow_matching_floor_mc(flow: object, t: object = None, n: int = 100_000, *,
                           generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                           batch_size: int = 65_536) -> MonteCarloEstimate:
    """Monte Carlo floor E|dI_t/dt - b_t(I_t)|^2 with the flow's exact velocity, for any analytic flow.

    t: a float in [0, 1] (floor(t)), or None for t ~ U[0, 1] per sample (the mean floor a uniform
    time sampler sees). n draws of (x0, x1) in batches; returns the mean and its standard error.
    The flow must provide ``sample_data``, ``interpolant`` and ``velocity``.
    """
    _require_analytic(flow, "sample_data")
    check_positive_int(n, "n")
    check_positive_int(batch_size, "batch_size")
    if t is not None:
        if isinstance(t, torch.Tensor):
            if t.numel() != 1:
                raise ValueError(f"t must be one time (a float in [0, 1]) or None, got a tensor of shape {tuple(t.shape)}")
            t = float(t)
        _time_tensor(t)
    device = generator.device if generator is not None else torch.device("cpu")
    total = total_sq = 0.0
    done = 0
    while done < n:
        m = min(batch_size, n - done)
        x1 = flow.sample_data(m, generator, dtype=dtype, device=device)
        tm = torch.rand(m, dtype=dtype, device=device, generator=generator) if t is None else t
        draw = flow.interpolant.sample(x1, tm, generator=generator)
        r = ((draw.dx_t - flow.velocity(draw.t, draw.x_t)) ** 2).reshape(m, -1).sum(-1).to(torch.float64)
        total += float(r.sum())
        total_sq += float((r * r).sum())
        done += m
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
    return MonteCarloEstimate(mean=mean, stderr=math.sqrt(var / n), n=n)


def denoiser_from_velocity(flow: object, t: object, x: torch.Tensor) -> torch.Tensor:
    """D_t(x) = (alpha_t b_t(x) - alpha'_t x) / (alpha_t beta'_t - alpha'_t beta_t) (the velocity-denoiser
    identity of the module docstring, inverted).

    x (batch, dim); t float, 0-d or (batch,). Valid wherever alpha beta' - alpha' beta != 0 (always
    for the linear and trig schedules) and b_t is finite.
    """
    _require_analytic(flow)
    x = check_state(x, flow.dim)
    te = expand_as_state(broadcast_time(t, x, "t"), x)
    ip = flow.interpolant
    a, b, da, db = ip.alpha(te), ip.beta(te), ip.dalpha(te), ip.dbeta(te)
    return (a * flow.velocity(te[:, 0], x) - da * x) / (a * db - da * b)


def denoiser(flow: object, t: object, x: torch.Tensor) -> torch.Tensor:
    """Posterior mean D_t(x) = E[x1 | I_t = x], shape of x (batch, dim).

    The flow's own ``denoiser(t, x)`` when it has one; point mass: a; Gaussian:
    mu + beta_t U diag(lam / (alpha_t^2 + beta_t^2 lam)) U^T (x - beta_t mu) = mu + beta_t Sigma C_t^{-1}(x - m_t);
    otherwise :func:`denoiser_from_velocity`.
    """
    if hasattr(flow, "denoiser"):
        return flow.denoiser(t, x)
    _require_analytic(flow)
    x = check_state(x, flow.dim)
    tb = broadcast_time(t, x, "t")
    if isinstance(flow, PointMassFlow):
        return flow.a.to(x).expand_as(x).clone()
    if isinstance(flow, GaussianFlow):
        mu, U, lam = (v.to(x) for v in (flow.mean, flow.eigvecs, flow.eigvals))
        te = expand_as_state(tb, x)
        a, b = flow.interpolant.alpha(te), flow.interpolant.beta(te)
        gain = b * lam / (a**2 + b**2 * lam)
        return mu + (((x - b * mu) @ U) * gain) @ U.T
    return denoiser_from_velocity(flow, tb, x)
