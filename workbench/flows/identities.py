"""Flow-map identities as per-point residuals, for any object with the flow contract.

Each function returns a (batch,) tensor of Euclidean residual norms (log-density residuals are
scalars per point), so callers can map them over (s, t) grids. Derivatives use forward-mode AD
(``torch.func.jvp``) by default, or central finite differences (``method="fd"``) as a twin.
The identities are B25's characterisations of the flow map (the tangent condition, and the Lagrangian,
Eulerian and semigroup properties), plus the inverse and the change of variables; the derivations and
the regions where they are ill-conditioned are in docs/flows_analytic.md (sections 1.2 and 3).

| identity          | residual                                                   |
|-------------------|------------------------------------------------------------|
| boundary          | X_{t,t}(x) - x                                             |
| tangent           | d/dt X_{s,t}(x)|_{t=s} - b_s(x)                            |
| Lagrangian        | d/dt X_{s,t}(x) - b_t(X_{s,t}(x))                          |
| Eulerian          | d/ds X_{s,t}(x) + grad X_{s,t}(x) b_s(x)                   |
| semigroup         | X_{u,t}(X_{s,u}(x)) - X_{s,t}(x)                           |
| inverse           | X_{t,s}(X_{s,t}(x)) - x                                    |
| change of vars    | log p_t(X_{s,t}(x)) + log|det grad X_{s,t}(x)| - log p_s(x) |
| push-forward      | two-sample energy statistic of X_{s,t}(x_s) vs samples of p_t |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.contract import Density, Flow, check_implements
from ..core.derivatives import directional_derivative
from ..core.times import broadcast_time
from ..core.validation import check_generator, check_state, check_tensor


def _norm(r: torch.Tensor) -> torch.Tensor:
    return r.reshape(r.shape[0], -1).norm(dim=1)


def _prep(flow: Flow, x: torch.Tensor, **times: object) -> tuple[torch.Tensor, ...]:
    check_implements(flow, Flow, "flow")
    x = check_state(x, flow.dim)
    return (x,) + tuple(broadcast_time(v, x, k) for k, v in times.items())


def boundary_residual(flow: Flow, t: object, x: torch.Tensor) -> torch.Tensor:
    """|X_{t,t}(x) - x| per point."""
    x, tb = _prep(flow, x, t=t)
    return _norm(flow.flow_map(tb, tb, x) - x)


def time_derivative(flow: Flow, s: object, t: object, x: torch.Tensor, *, method: str = "jvp",
                    eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(X_{s,t}(x), d/dt X_{s,t}(x))."""
    x, sb, tb = _prep(flow, x, s=s, t=t)
    return directional_derivative(lambda tt: flow.flow_map(sb, tt, x), (tb,), (torch.ones_like(tb),),
                                  method=method, eps=eps)


def tangent_residual(flow: Flow, s: object, x: torch.Tensor, *, method: str = "jvp",
                     eps: float | None = None) -> torch.Tensor:
    """|d/dt X_{s,t}(x)|_{t=s} - b_s(x)| per point (the tangent condition v_{s,s} = b_s).

    For a finite difference at t = s the stencil reaches t = s - h, i.e. a short backward map.
    """
    x, sb = _prep(flow, x, s=s)
    _, dt = time_derivative(flow, sb, sb, x, method=method, eps=eps)
    return _norm(dt - flow.velocity(sb, x))


def lagrangian_residual(flow: Flow, s: object, t: object, x: torch.Tensor, *, method: str = "jvp",
                        eps: float | None = None, velocity: Callable | None = None) -> torch.Tensor:
    """|d/dt X_{s,t}(x) - b_t(X_{s,t}(x))| per point; ``velocity`` defaults to the flow's own b."""
    x, sb, tb = _prep(flow, x, s=s, t=t)
    X, dt = time_derivative(flow, sb, tb, x, method=method, eps=eps)
    b = velocity if velocity is not None else flow.velocity
    return _norm(dt - b(tb, X))


def eulerian_residual(flow: Flow, s: object, t: object, x: torch.Tensor, *, method: str = "jvp",
                      eps: float | None = None, velocity: Callable | None = None) -> torch.Tensor:
    """|d/ds X_{s,t}(x) + grad X_{s,t}(x) b_s(x)| per point.

    Computed as one directional derivative: d/dh X_{s+h,t}(x + h b_s(x)) at h = 0.
    """
    x, sb, tb = _prep(flow, x, s=s, t=t)
    b = (velocity if velocity is not None else flow.velocity)(sb, x)
    _, d = directional_derivative(lambda ss, xx: flow.flow_map(ss, tb, xx), (sb, x),
                                  (torch.ones_like(sb), b),
                                  method=method, eps=eps)
    return _norm(d)


def semigroup_residual(flow: Flow, s: object, u: object, t: object, x: torch.Tensor) -> torch.Tensor:
    """|X_{u,t}(X_{s,u}(x)) - X_{s,t}(x)| per point (u anywhere, also outside [s, t])."""
    x, sb, ub, tb = _prep(flow, x, s=s, u=u, t=t)
    return _norm(flow.flow_map(ub, tb, flow.flow_map(sb, ub, x)) - flow.flow_map(sb, tb, x))


def inverse_residual(flow: Flow, s: object, t: object, x: torch.Tensor) -> torch.Tensor:
    """|X_{t,s}(X_{s,t}(x)) - x| per point."""
    x, sb, tb = _prep(flow, x, s=s, t=t)
    return _norm(flow.flow_map(tb, sb, flow.flow_map(sb, tb, x)) - x)


def flow_jacobian(flow: Flow, s: object, t: object, x: torch.Tensor, *, method: str = "jvp",
                  eps: float | None = None) -> torch.Tensor:
    """grad_x X_{s,t}(x), shape (batch, dim, dim), one directional derivative per basis vector."""
    x, sb, tb = _prep(flow, x, s=s, t=t)
    cols = []
    for j in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, j] = 1.0
        _, col = directional_derivative(lambda xx: flow.flow_map(sb, tb, xx), (x,), (e,), method=method, eps=eps)
        cols.append(col)
    return torch.stack(cols, dim=-1)


def change_of_variables_residual(flow: Flow, s: object, t: object, x: torch.Tensor, *,
                                 log_prob: Callable | None = None, method: str = "jvp",
                                 eps: float | None = None) -> torch.Tensor:
    """log p_t(X_{s,t}(x)) + log|det grad X_{s,t}(x)| - log p_s(x) per point (signed).

    ``log_prob(t, x)`` defaults to the flow's own; pass a reference density for a model.
    """
    x, sb, tb = _prep(flow, x, s=s, t=t)
    if log_prob is None and not isinstance(flow, Density):
        raise TypeError("change_of_variables_residual needs log_prob: the flow has none (it is no Density), pass log_prob=")
    lp = log_prob if log_prob is not None else flow.log_prob
    J = flow_jacobian(flow, sb, tb, x, method=method, eps=eps)
    _, logdet = torch.linalg.slogdet(J)
    return lp(tb, flow.flow_map(sb, tb, x)) + logdet - lp(sb, x)


@dataclass(frozen=True)
class TwoSampleResult:
    """Energy-distance two-sample statistic with a permutation p-value."""

    statistic: float
    p_value: float
    n_permutations: int


def energy_statistic(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Energy distance 2 E|A - B| - E|A - A'| - E|B - B'| (V-statistic)."""
    return 2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean()


def pushforward_test(flow: Flow, s: object, t: object, x_s: torch.Tensor, y_t: torch.Tensor, *,
                     n_permutations: int = 200, generator: torch.Generator | None = None) -> TwoSampleResult:
    """Is X_{s,t} # p_s = p_t? Energy statistic between X_{s,t}(x_s) and fresh samples y_t of p_t,
    with a permutation p-value (small p: the push-forward differs from p_t)."""
    check_implements(flow, Flow, "flow")
    check_generator(generator)
    x_s = check_state(x_s, flow.dim, "x_s")
    y_t = check_tensor(y_t, "y_t")
    if y_t.ndim != 2 or y_t.shape[1] != x_s.shape[1]:
        raise ValueError(f"y_t must have shape (m, {x_s.shape[1]}), got {tuple(y_t.shape)}")
    with torch.no_grad():
        a = flow.flow_map(s, t, x_s)
        stat = float(energy_statistic(a, y_t))
        pooled = torch.cat([a, y_t])
        n = a.shape[0]
        count = 0
        for _ in range(n_permutations):
            idx = torch.randperm(pooled.shape[0], generator=generator).to(pooled.device)
            p = pooled[idx]
            count += float(energy_statistic(p[:n], p[n:])) >= stat
    return TwoSampleResult(stat, (count + 1) / (n_permutations + 1), n_permutations)


def identity_report(flow: Flow, s: float, t: float, x: torch.Tensor, *, u: float | None = None,
                    method: str = "jvp") -> dict[str, float]:
    """Max per-point residual of each identity at (s, t) (u defaults to the midpoint), as a dict.

    The log-density entry is present only when the flow has ``log_prob``.
    """
    u = 0.5 * (s + t) if u is None else u
    out = {
        "boundary": float(boundary_residual(flow, s, x).max()),
        "tangent": float(tangent_residual(flow, s, x, method=method).max()),
        "lagrangian": float(lagrangian_residual(flow, s, t, x, method=method).max()),
        "eulerian": float(eulerian_residual(flow, s, t, x, method=method).max()),
        "semigroup": float(semigroup_residual(flow, s, u, t, x).max()),
        "inverse": float(inverse_residual(flow, s, t, x).max()),
    }
    if isinstance(flow, Density):
        out["change_of_variables"] = float(change_of_variables_residual(flow, s, t, x, method=method).abs().max())
    return out
