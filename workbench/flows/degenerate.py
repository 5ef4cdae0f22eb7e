"""Constructed degenerate flow maps: maps that satisfy some flow-map identities but are not the flow.

Each factory returns a :class:`DegenerateMap` built around a reference flow. A degenerate map
implements the flow contract (``velocity``, ``flow_map``, ``dim``) and ``average_velocity``, so it
can be handed to objectives, identity residuals and detectors as if it were a trained model.

Its ``velocity(t, x)`` is always its OWN tangent d/dt X_{s,t}(x)|_{t=s} (the model's diagonal), not
the reference flow's b_t: a model's diagonal and its tangent are the same thing, so e.g. the
flow map of a wrong field is self-consistent (semigroup, Lagrangian/Eulerian w.r.t. its own
velocity) while its tangent residual against the reference b_t is O(1) (a fixed point of the
self-distillation objectives K26 analyses; D3 in this project's catalogue).

Closed forms (derived and tabulated with measured residuals in docs/flows_degenerate_maps.md), written
for any interpolant
I_t = alpha_t x0 + beta_t x1 with m_t = beta_t mu and C_t = alpha_t^2 I + beta_t^2 Sigma:

| factory                | X_{s,t}(x)                                      | own velocity (tangent)            |
|------------------------|-------------------------------------------------|-----------------------------------|
| identity_map           | x                                               | 0                                 |
| trajectory_collapse    | phi(t) = X_{0,t}(anchor) (m_t for anchor 0)     | b_t(phi(t))                       |
| constant_collapse      | c                                               | 0                                 |
| cholesky_transport     | m_t + L_t L_s^{-1} (x - m_s), L = chol(C)       | m'_t + L'_t L_t^{-1} (x - m_t)    |
| wrong_schedule         | X^{other schedule}_{s,t}(x)                     | b^{other}_t(x)                    |
| other_data_flow        | flow of N(mu', Sigma') (default diag Sigma)     | b'_t(x)                           |
| mean_shift             | x + m_t - m_s                                   | m'_t = beta'_t mu                 |
| euler_step             | x + (t - s) b_s(x)                              | b_t(x)                            |
| denoiser_step          | (alpha_t/alpha_s)(x - beta_s D_s(x)) + beta_t D_s(x) | b_t(x) (by T1)              |
| time_oscillation       | X_{s,t}(x - eps sin(w s) e) + eps sin(w t) e    | b_t(x - eps sin(w t) e)           |
|                        |                                                 |   + eps w cos(w t) e              |
| time_warped_flow       | X_{theta(s), theta(t)}(x), theta(t) = t + c t (1 - t) | theta'(t) b_{theta(t)}(x)   |

Off the diagonal every map is x + (t - s) v_{s,t}(x) with v its secant (``average_velocity``); on
the diagonal ``average_velocity`` returns the own tangent. The two collapses break X_{t,t} = id, so
for them alone ``flow_map(t, t, x)`` (the collapsed point) is not x + 0 * v: they have no bounded
average velocity near the diagonal.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..core.contract import Flow, InterpolantFlow, check_implements
from ..core.times import broadcast_time, expand_as_state
from ..core.validation import check_state
from .gaussian import GaussianFlow
from .interpolants import LinearInterpolant, TrigInterpolant
from .point_mass import PointMassFlow

#: names of the properties a map can satisfy by construction (relative to the reference flow)
PROPERTIES = ("identity", "semigroup", "tangent", "lagrangian", "eulerian", "marginals", "endpoint")

MapFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
TangentFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DegenerateMap(nn.Module):
    """A flow map X_{s,t} built from closed-form pieces around a reference flow (no parameters).

    ``map_fn(s, t, x)`` and ``tangent_fn(t, x)`` receive validated (batch,) times in x's dtype and
    device; ``guaranteed`` lists the properties of :data:`PROPERTIES` that hold for EVERY
    reference flow by construction (others may hold by accident for special flows, e.g. the
    denoiser step is exact for a point mass).
    """

    def __init__(self, name: str, reference: object, map_fn: MapFn, tangent_fn: TangentFn,
                 guaranteed: tuple[str, ...], description: str = "") -> None:
        super().__init__()
        unknown = set(guaranteed) - set(PROPERTIES)
        if unknown:
            raise ValueError(f"guaranteed must be a subset of {PROPERTIES}, got unknown {sorted(unknown)}")
        self.name = name
        self.reference = reference
        self.dim = int(reference.dim)
        self.guaranteed = frozenset(guaranteed)
        self.description = description
        self.learned_weight = False
        self._map_fn = map_fn
        self._tangent_fn = tangent_fn

    def flow_map(self, s: object, t: object, x: torch.Tensor) -> torch.Tensor:
        """X_{s,t}(x), shape of x (batch, dim); s, t floats, 0-d or (batch,) tensors in [0, 1]."""
        x = check_state(x, self.dim)
        return self._map_fn(broadcast_time(s, x, "s"), broadcast_time(t, x, "t"), x)

    def velocity(self, t: object, x: torch.Tensor) -> torch.Tensor:
        """The map's own tangent d/dt X_{s,t}(x)|_{t=s} at s = t (the model's diagonal v_{t,t})."""
        x = check_state(x, self.dim)
        return self._tangent_fn(broadcast_time(t, x, "t"), x)

    def average_velocity(self, s: object, t: object, x: torch.Tensor) -> torch.Tensor:
        """v_{s,t}(x) = (X_{s,t}(x) - x) / (t - s) off the diagonal, the own tangent on it."""
        x = check_state(x, self.dim)
        sb, tb = broadcast_time(s, x, "s"), broadcast_time(t, x, "t")
        gap = tb - sb
        on_diag = gap == 0
        safe = torch.where(on_diag, torch.ones_like(gap), gap)
        secant = (self._map_fn(sb, tb, x) - x) / expand_as_state(safe, x)
        if not bool(on_diag.any()):
            return secant
        return torch.where(expand_as_state(on_diag, x), self._tangent_fn(sb, x), secant)

    def loss_weight(self, s: object, t: object, x: torch.Tensor) -> torch.Tensor:
        """Zero learned log-variance (there is no weight head), shape (batch,)."""
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, guaranteed={sorted(self.guaranteed)}"


# -- helpers ----------------------------------------------------------------------------------------
def _require_flow(flow: object) -> None:
    check_implements(flow, Flow, "flow")


def _require_interpolant(flow: object) -> None:
    check_implements(flow, InterpolantFlow, "flow")


def _require_gaussian(flow: object, what: str) -> None:
    if not isinstance(flow, GaussianFlow):
        raise TypeError(f"{what} needs a workbench.flows.GaussianFlow, got {type(flow).__name__}")


def _data_mean(flow: object, mean: object, name: str = "mean") -> torch.Tensor:
    """mu: the given ``mean``, else the data mean of a Gaussian / point-mass flow."""
    if mean is not None:
        m = torch.as_tensor(mean, dtype=torch.float64)
        if m.shape != (flow.dim,):
            raise ValueError(f"{name} must have shape ({flow.dim},), got {tuple(m.shape)}")
        return m
    if isinstance(flow, GaussianFlow):
        return flow.mean
    if isinstance(flow, PointMassFlow):
        return flow.a
    raise TypeError(f"the data mean of {type(flow).__name__} is not known in closed form; pass {name}=")


def _coef(flow, t: torch.Tensor, x: torch.Tensor):
    """alpha_t, beta_t, alpha'_t, beta'_t as (batch, 1) columns."""
    ip, te = flow.interpolant, expand_as_state(t, x)
    return ip.alpha(te), ip.beta(te), ip.dalpha(te), ip.dbeta(te)


def _posterior_mean(flow, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """D_t(x) = E[x1 | I_t = x]: the flow's ``denoiser`` if it has one, else the inversion of
    b_t = (alpha'/alpha) x + (beta' - alpha' beta / alpha) D_t (relation T1 of docs/flows_analytic.md), i.e.
    D_t = (alpha_t b_t(x) - alpha'_t x) / (alpha_t beta'_t - alpha'_t beta_t)."""
    denoiser = getattr(flow, "denoiser", None)  # optional: Gaussian mixtures have it in closed form
    if denoiser is not None:
        return denoiser(t, x)
    a, b, da, db = _coef(flow, t, x)
    return (a * flow.velocity(t, x) - da * x) / (a * db - da * b)


def _with_interpolant(flow, interpolant):
    if isinstance(flow, GaussianFlow):
        return GaussianFlow(flow.mean, flow.cov, interpolant=interpolant)
    if isinstance(flow, PointMassFlow):
        return PointMassFlow(flow.a, interpolant=interpolant)
    raise TypeError(f"wrong_schedule supports GaussianFlow and PointMassFlow, got {type(flow).__name__}")


def _gaussian_path(flow: GaussianFlow, t: torch.Tensor, x: torch.Tensor):
    """m_t (batch, d), m'_t, C_t (batch, d, d), C'_t = 2 alpha alpha' I + 2 beta beta' Sigma."""
    mu, cov = flow.mean.to(x), flow.cov.to(x)
    a, b, da, db = _coef(flow, t, x)
    eye = torch.eye(flow.dim, dtype=x.dtype, device=x.device)
    a3, b3, da3, db3 = (c[..., None] for c in (a, b, da, db))
    return b * mu, db * mu, a3**2 * eye + b3**2 * cov, 2 * a3 * da3 * eye + 2 * b3 * db3 * cov


def _solve_lower(L: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.solve_triangular(L, v[..., None], upper=False)[..., 0]


# -- factories --------------------------------------------------------------------------------------
def identity_map(flow: object) -> DegenerateMap:
    """X_{s,t}(x) = x: the flow of b = 0, a fixed point of every self-distillation loss (K26; D1)."""
    _require_flow(flow)
    return DegenerateMap("identity", flow, lambda s, t, x: x.clone(), lambda t, x: torch.zeros_like(x),
                         ("identity", "semigroup"), "flow of the zero field")


def trajectory_collapse(flow: object, anchor: object = None) -> DegenerateMap:
    """X_{s,t}(x) = phi(t) = X_{0,t}(anchor) for every x: collapse onto one ODE trajectory.

    Semigroup, Lagrangian and Eulerian hold (both sides of each vanish or agree), X_{t,t} = id and
    the tangent fail. anchor (dim,) defaults to 0, giving the mean path m_t = beta_t mu for
    Gaussian and point-mass data. Own velocity: phi'(t) = b_t(phi(t)).
    """
    _require_flow(flow)
    a0 = torch.zeros(flow.dim, dtype=torch.float64) if anchor is None else torch.as_tensor(anchor, dtype=torch.float64)
    if a0.shape != (flow.dim,):
        raise ValueError(f"anchor must have shape ({flow.dim},), got {tuple(a0.shape)}")

    def phi(t, x):
        return flow.flow_map(torch.zeros_like(t), t, a0.to(x).expand_as(x).contiguous())

    return DegenerateMap("trajectory_collapse", flow, lambda s, t, x: phi(t, x),
                         lambda t, x: flow.velocity(t, phi(t, x)),
                         ("semigroup", "lagrangian", "eulerian"), "collapse onto X_{0,t}(anchor)")


def constant_collapse(flow: object, c: object = None) -> DegenerateMap:
    """X_{s,t}(x) = c (default: the data mean mu): semigroup and Eulerian hold, nothing else."""
    _require_flow(flow)
    c0 = _data_mean(flow, c, "c")
    return DegenerateMap("constant_collapse", flow, lambda s, t, x: c0.to(x).expand_as(x).clone(),
                         lambda t, x: torch.zeros_like(x), ("semigroup", "eulerian"), "constant map")


def cholesky_transport(flow: GaussianFlow) -> DegenerateMap:
    """X_{s,t}(x) = m_t + L_t L_s^{-1} (x - m_s) with L_t = chol(C_t) (docs/flows_analytic.md 2.2, "which square root").

    Right marginals p_t, X_{t,t} = id, semigroup and Jacobian determinant, yet not the flow unless
    Sigma is diagonal: its tangent L'_t L_t^{-1} is lower triangular while A_t = C'_t C_t^{-1} / 2
    is symmetric. L'_t = L_t Phi(L_t^{-1} C'_t L_t^{-T}), Phi = lower triangle with halved diagonal.
    """
    _require_gaussian(flow, "cholesky_transport")

    def map_fn(s, t, x):
        ms, _, Cs, _ = _gaussian_path(flow, s, x)
        mt, _, Ct, _ = _gaussian_path(flow, t, x)
        w = _solve_lower(torch.linalg.cholesky(Cs), x - ms)
        return mt + (torch.linalg.cholesky(Ct) @ w[..., None])[..., 0]

    def tangent_fn(t, x):
        m, dm, C, dC = _gaussian_path(flow, t, x)
        L = torch.linalg.cholesky(C)
        half = torch.linalg.solve_triangular(L, dC, upper=False)  # L^{-1} C'
        M = torch.linalg.solve_triangular(L, half.transpose(-1, -2), upper=False)  # L^{-1} C' L^{-T}
        phi = torch.tril(M) - 0.5 * torch.diag_embed(torch.diagonal(M, dim1=-2, dim2=-1))
        return dm + (L @ (phi @ _solve_lower(L, x - m)[..., None]))[..., 0]

    return DegenerateMap("cholesky_transport", flow, map_fn, tangent_fn,
                         ("identity", "semigroup", "marginals"), "Cholesky square root L_t L_s^{-1}")


def _flow_of(name: str, reference: object, other: object, guaranteed: tuple[str, ...], description: str):
    return DegenerateMap(name, reference, lambda s, t, x: other.flow_map(s, t, x),
                         lambda t, x: other.velocity(t, x), guaranteed, description)


def wrong_schedule(flow: object) -> DegenerateMap:
    """The flow of the same data under the other schedule (trig <-> linear), read in this clock.

    X_{t,t} = id, semigroup and (for Gaussian data) X_{0,1} = mu + Sigma^{1/2} x are unchanged;
    intermediate marginals and the tangent are wrong (endpoint-only metrics are blind to it).
    """
    _require_interpolant(flow)
    other = TrigInterpolant() if isinstance(flow.interpolant, LinearInterpolant) else LinearInterpolant()
    return _flow_of("wrong_schedule", flow, _with_interpolant(flow, other), ("identity", "semigroup"),
                    f"flow under the {other.name} schedule")


def other_data_flow(flow: GaussianFlow, mean: object = None, cov: object = None) -> DegenerateMap:
    """The exact flow of other Gaussian data N(mean, cov) (default mean: the same, cov: diag Sigma).

    A self-consistent map of the wrong velocity field (K26; D3): identity, semigroup, Lagrangian and
    Eulerian hold for its own velocity b'_t, the tangent against the reference b_t does not.
    """
    _require_gaussian(flow, "other_data_flow")
    mu = flow.mean if mean is None else mean
    S = torch.diag(torch.diagonal(flow.cov)) if cov is None else cov
    other = GaussianFlow(mu, S, interpolant=flow.interpolant)
    return _flow_of("other_data_flow", flow, other, ("identity", "semigroup"), "flow of N(mean', cov')")


def mean_shift(flow: object, mean: object = None) -> DegenerateMap:
    """X_{s,t}(x) = x + m_t - m_s = x + (beta_t - beta_s) mu: the flow of b = m'_t (right mean only)."""
    _require_interpolant(flow)
    mu0 = _data_mean(flow, mean)

    def map_fn(s, t, x):
        ip = flow.interpolant
        return x + expand_as_state(ip.beta(t) - ip.beta(s), x) * mu0.to(x)

    return DegenerateMap("mean_shift", flow, map_fn,
                         lambda t, x: expand_as_state(flow.interpolant.dbeta(t), x) * mu0.to(x).expand_as(x),
                         ("identity", "semigroup"), "translation along the mean path")


def euler_step(flow: object) -> DegenerateMap:
    """X_{s,t}(x) = x + (t - s) b_s(x): tangent exact, semigroup broken (X_{0,1} = mu for linear)."""
    _require_flow(flow)
    return DegenerateMap("euler_step", flow,
                         lambda s, t, x: x + expand_as_state(t - s, x) * flow.velocity(s, x),
                         lambda t, x: flow.velocity(t, x), ("identity", "tangent"), "one Euler step")


def denoiser_step(flow: object) -> DegenerateMap:
    """One DDIM-type step through the posterior mean (the one-step consistency-training minimiser K26 discusses; D2):

    X_{s,t}(x) = (alpha_t / alpha_s)(x - beta_s D_s(x)) + beta_t D_s(x),  D_s(x) = E[x1 | I_s = x],

    i.e. estimate (x0, x1) by their posterior means at s and re-interpolate at t, so X_{s,1} = D_s
    (x goes to the posterior mean at t = 1; X_{0,1} = E[x1]). X_{t,t} = id and, by relation T1, the
    tangent (alpha'_s/alpha_s)(x - beta_s D_s) + beta'_s D_s = b_s(x) is exact; the semigroup is
    broken unless D is affine in the right way (it is exact for a point mass). For the linear
    schedule it coincides with :func:`euler_step` (DDIM = Euler there); for trig it does not.
    D_s is the flow's ``denoiser`` when it has one, else obtained from b_s by inverting T1 (docs/flows_analytic.md 1.1).
    Needs alpha_s > 0.
    """
    _require_interpolant(flow)

    def map_fn(s, t, x):
        a_s, b_s, _, _ = _coef(flow, s, x)
        if bool((a_s <= 0).any()):
            raise ValueError("s must be < 1 for the denoiser step (alpha_s = 0 divides)")
        a_t, b_t, _, _ = _coef(flow, t, x)
        D = _posterior_mean(flow, s, x)
        return (a_t / a_s) * (x - b_s * D) + b_t * D

    return DegenerateMap("denoiser_step", flow, map_fn, lambda t, x: flow.velocity(t, x),
                         ("identity", "tangent"), "DDIM step through the posterior mean")


def time_oscillation(flow: object, amplitude: float = 0.02, frequency: float = 8.0,
                     direction: object = None) -> DegenerateMap:
    """The true map conjugated by a small fast translation phi_t(x) = x + eps sin(w t) e (K26; D7, the time-oscillation pathology):

    X_{s,t}(x) = X_{s,t}(x - eps sin(w s) e) + eps sin(w t) e,   w = 2 pi frequency, |e| = 1.

    It is the exact flow of b~_t(y) = b_t(y - eps sin(w t) e) + eps w cos(w t) e, so X_{t,t} = id and
    the semigroup hold exactly, the map is within eps (1 + |grad X|) of the truth, but the
    tangent is off by about eps w. ``direction`` (dim,) defaults to (1, ..., 1) / sqrt(dim).
    """
    _require_flow(flow)
    if not (math.isfinite(amplitude) and math.isfinite(frequency) and frequency > 0):
        raise ValueError(f"amplitude must be finite and frequency > 0, got {amplitude!r}, {frequency!r}")
    e = torch.ones(flow.dim) if direction is None else torch.as_tensor(direction)
    e = e.to(torch.float64)
    if e.shape != (flow.dim,) or not float(e.norm()) > 0:
        raise ValueError(f"direction must be a non-zero vector of shape ({flow.dim},), got {e.tolist()}")
    e = e / e.norm()
    w = 2 * math.pi * frequency

    def shift(t, x):
        return amplitude * expand_as_state(torch.sin(w * t), x) * e.to(x)

    def tangent_fn(t, x):
        return flow.velocity(t, x - shift(t, x)) + amplitude * w * expand_as_state(torch.cos(w * t), x) * e.to(x)

    return DegenerateMap("time_oscillation", flow, lambda s, t, x: flow.flow_map(s, t, x - shift(s, x)) + shift(t, x),
                         tangent_fn, ("identity", "semigroup"), f"conjugated by eps sin(2 pi {frequency:g} t) e")


def time_warped_flow(flow: object, strength: float = 0.5) -> DegenerateMap:
    """X_{s,t} = X_{theta(s), theta(t)} with theta(t) = t + c t (1 - t), |c| < 1 (so theta is increasing).

    The exact flow of the wrong field u_t(x) = theta'(t) b_{theta(t)}(x), theta' = 1 + c (1 - 2t):
    self-consistent, X_{0,1} exact (theta fixes 0 and 1: endpoint-only metrics are blind to it),
    intermediate marginals and the tangent wrong. Works for any flow.
    """
    _require_flow(flow)
    if not (math.isfinite(strength) and abs(strength) < 1):
        raise ValueError(f"strength must satisfy |strength| < 1 (theta must be increasing), got {strength!r}")

    def theta(t):
        return t + strength * t * (1 - t)

    def tangent_fn(t, x):
        return expand_as_state(1 + strength * (1 - 2 * t), x) * flow.velocity(theta(t), x)

    return DegenerateMap("time_warped_flow", flow, lambda s, t, x: flow.flow_map(theta(s), theta(t), x),
                         tangent_fn, ("identity", "semigroup", "endpoint"), f"time warp c = {strength:g}")


def degenerate_maps(flow: object) -> dict[str, DegenerateMap]:
    """Every degenerate map that applies to ``flow``, by name (the rows of the table in docs/flows_degenerate_maps.md first, in its order)."""
    _require_interpolant(flow)
    known_mean = isinstance(flow, (GaussianFlow, PointMassFlow))
    out: dict[str, DegenerateMap] = {"identity": identity_map(flow),
                                     "trajectory_collapse": trajectory_collapse(flow)}
    if known_mean:
        out["constant_collapse"] = constant_collapse(flow)
    if isinstance(flow, GaussianFlow):
        out["cholesky_transport"] = cholesky_transport(flow)
    if known_mean:
        out["wrong_schedule"] = wrong_schedule(flow)
    if isinstance(flow, GaussianFlow):
        out["other_data_flow"] = other_data_flow(flow)
    if known_mean:
        out["mean_shift"] = mean_shift(flow)
    out["euler_step"] = euler_step(flow)
    out["denoiser_step"] = denoiser_step(flow)
    out["time_oscillation"] = time_oscillation(flow)
    out["time_warped_flow"] = time_warped_flow(flow)
    return out
