"""Samplers: N-step flow-map sampling and ODE sampling of a diagonal velocity.

* Flow-map sampling on a time grid 0 = t_0 < t_1 < ... < t_N = 1 (B25 digest 2.3):
  x_{k+1} = X_{t_k, t_{k+1}}(x_k), x_0 ~ N(0, I). For the exact flow map every grid gives the
  exact X_{0,1}(x_0) (semigroup X_{u,t} o X_{s,u} = X_{s,t}); a learned map drifts with N.
* ODE sampling of dx/dt = b_t(x) with b_t = ``flow.velocity(t, x)`` (for a model, its diagonal
  v_{t,t}): fixed-step explicit Runge-Kutta (Euler, order 1; Heun and midpoint, order 2; RK4,
  order 4) on a grid, or adaptive Dormand-Prince 5(4) (our own, batched: one step size for the
  batch, the error norm is the maximum over samples of the RMS over coordinates).

Any object with ``flow_map(s, t, x)`` / ``velocity(t, x)`` works: analytic flows, neural flow
maps, ``workbench.models.ExactFlowMap``. Functions keep autograd as the caller has it; wrap calls
in ``torch.no_grad()`` to sample without building a graph. Grids may also run backward (1 -> 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .core.validation import check_positive_int, check_state

__all__ = [
    "AdaptiveSample",
    "ODE_METHODS",
    "flow_map_trajectory",
    "sample",
    "sample_flow_map",
    "sample_ode",
    "sample_ode_adaptive",
    "time_grid",
]


def time_grid(
    n_steps: int | None = None,
    grid: object = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """The (N + 1,) time grid: uniform t_k = k / N from ``n_steps``, or a given strictly monotone
    ``grid`` in [0, 1] (exactly one of the two)."""
    if (n_steps is None) == (grid is None):
        raise ValueError("give exactly one of n_steps (uniform grid 0 -> 1) or grid (a 1-D sequence of times)")
    if grid is None:
        check_positive_int(n_steps, "n_steps")
        return torch.linspace(0.0, 1.0, n_steps + 1, dtype=dtype, device=device)
    g = torch.as_tensor(grid, dtype=dtype, device=device)
    if g.ndim != 1 or g.numel() < 2:
        raise ValueError(f"grid must be a 1-D sequence of at least 2 times, got shape {tuple(g.shape)}")
    if not bool(torch.isfinite(g).all()) or bool((g < 0).any()) or bool((g > 1).any()):
        raise ValueError(f"grid times must lie in [0, 1], got {g.tolist()}")
    d = g.diff()
    if not (bool((d > 0).all()) or bool((d < 0).all())):
        raise ValueError(f"grid must be strictly increasing (noise -> data) or strictly decreasing, got {g.tolist()}")
    return g


def _grid_for(x: torch.Tensor, n_steps, grid) -> torch.Tensor:
    return time_grid(n_steps, grid, dtype=x.dtype, device=x.device)


def flow_map_trajectory(model, x0: torch.Tensor, n_steps: int | None = None, grid: object = None) -> torch.Tensor:
    """(N + 1, batch, *event) states x_k with x_{k+1} = X_{t_k, t_{k+1}}(x_k), x_0 = ``x0``."""
    g = _grid_for(x0, n_steps, grid)
    xs = [x0]
    for k in range(g.numel() - 1):
        xs.append(model.flow_map(g[k], g[k + 1], xs[-1]))
    return torch.stack(xs)


def sample_flow_map(model, x0: torch.Tensor, n_steps: int | None = None, grid: object = None) -> torch.Tensor:
    """x_N of N-step flow-map sampling from ``x0`` (shape of x0); uniform grid from ``n_steps``."""
    g = _grid_for(x0, n_steps, grid)
    x = x0
    for k in range(g.numel() - 1):
        x = model.flow_map(g[k], g[k + 1], x)
    return x


def sample(
    model,
    n: int,
    *,
    n_steps: int = 1,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """n samples (n, model.dim): x0 ~ N(0, I) from ``generator``, then ``n_steps`` flow-map steps
    on the uniform grid, without gradients."""
    check_positive_int(n, "n")
    dev = device if device is not None else (generator.device if generator is not None else "cpu")
    x0 = torch.randn(n, model.dim, generator=generator, dtype=dtype, device=dev)
    with torch.no_grad():
        return sample_flow_map(model, x0, n_steps=n_steps)


# -- fixed-step Runge-Kutta ----------------------------------------------------------------------
# Butcher tableaux (c, A, b) of explicit methods; order in the name's docstring above.
ODE_METHODS: dict[str, tuple[tuple[float, ...], tuple[tuple[float, ...], ...], tuple[float, ...]]] = {
    "euler": ((0.0,), ((),), (1.0,)),
    "heun": ((0.0, 1.0), ((), (1.0,)), (0.5, 0.5)),
    "midpoint": ((0.0, 0.5), ((), (0.5,)), (0.0, 1.0)),
    "rk4": ((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}


def sample_ode(
    flow, x0: torch.Tensor, *, method: str = "heun", n_steps: int | None = None, grid: object = None
) -> torch.Tensor:
    """Solve dx/dt = flow.velocity(t, x) from x0 at grid[0] to grid[-1] with a fixed-step method.

    For step h = t_{k+1} - t_k: k_i = b(t_k + c_i h, x + h sum_j A_ij k_j), x <- x + h sum_i b_i k_i.
    """
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {sorted(ODE_METHODS)}, got {method!r}")
    c, A, b = ODE_METHODS[method]
    g = _grid_for(x0, n_steps, grid)
    x = x0
    for k in range(g.numel() - 1):
        t, h = g[k], g[k + 1] - g[k]
        ks: list[torch.Tensor] = []
        for ci, ai in zip(c, A):
            xi = x
            for aij, kj in zip(ai, ks):
                if aij != 0.0:
                    xi = xi + (h * aij) * kj
            # the stage at c = 1 uses the grid time itself (t + h can round past 1)
            ks.append(flow.velocity(g[k + 1] if ci == 1.0 else t + ci * h, xi))
        x = x + h * sum(bi * ki for bi, ki in zip(b, ks) if bi != 0.0)
    return x


# -- adaptive Dormand-Prince 5(4) ----------------------------------------------------------------
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B5 = _DP_A[6] + (0.0,)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_DP_E = tuple(p - q for p, q in zip(_DP_B5, _DP_B4))


@dataclass(frozen=True)
class AdaptiveSample:
    """Result of :func:`sample_ode_adaptive`: the state x at the end time and the solver's counts."""

    x: torch.Tensor
    n_steps: int
    n_rejected: int
    nfev: int


def sample_ode_adaptive(
    flow,
    x0: torch.Tensor,
    *,
    s: float = 0.0,
    t: float = 1.0,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    max_steps: int = 10_000,
) -> AdaptiveSample:
    """Solve dx/dt = flow.velocity(tau, x) from time s to t with Dormand-Prince 5(4) (FSAL).

    A step h is accepted when max_batch sqrt(mean_dims(e_i / (atol + rtol max(|x_i|, |x_new,i|)))^2)
    <= 1 (e the embedded error estimate); the next h is h * clip(0.9 err^(-1/5), 0.2, 5).
    Raises RuntimeError after ``max_steps`` steps or on a non-finite state.
    """
    x = check_state(x0, None, "x0")
    if not (0.0 <= s <= 1.0 and 0.0 <= t <= 1.0):
        raise ValueError(f"s and t must lie in [0, 1], got s={s!r}, t={t!r}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be > 0, got {rtol!r}, {atol!r}")
    span = t - s
    if span == 0.0:
        return AdaptiveSample(x=x, n_steps=0, n_rejected=0, nfev=0)
    direction = math.copysign(1.0, span)
    tau, h = s, direction * min(abs(span), 0.05)
    k1 = flow.velocity(tau, x)
    nfev, n_steps, n_rejected = 1, 0, 0
    flat = lambda v: v.reshape(v.shape[0], -1)  # noqa: E731
    while direction * (t - tau) > 0:
        if n_steps + n_rejected >= max_steps:
            raise RuntimeError(f"sample_ode_adaptive exceeded max_steps={max_steps} at time {tau:.6g}; raise max_steps or rtol")
        last = direction * (tau + h - t) >= 0
        if last:
            h = t - tau
        tau_next = t if last else tau + h  # land exactly on t (tau + h can round past it)
        ks = [k1]
        for ci, ai in zip(_DP_C[1:], _DP_A[1:]):
            xi = x + h * sum(a * kj for a, kj in zip(ai, ks) if a != 0.0)
            ks.append(flow.velocity(tau_next if ci == 1.0 else tau + ci * h, xi))
        nfev += 6
        x_new = x + h * sum(b * ki for b, ki in zip(_DP_B5, ks) if b != 0.0)
        err_vec = h * sum(e * ki for e, ki in zip(_DP_E, ks) if e != 0.0)
        if not bool(torch.isfinite(x_new).all()):
            raise RuntimeError(f"non-finite state in sample_ode_adaptive at time {tau:.6g}")
        scale = atol + rtol * torch.maximum(flat(x).abs(), flat(x_new).abs())
        err = float((flat(err_vec) / scale).pow(2).mean(dim=1).sqrt().max())
        factor = 5.0 if err == 0.0 else min(5.0, max(0.2, 0.9 * err ** (-0.2)))
        if err <= 1.0:
            tau, x, k1 = tau_next, x_new, ks[6]  # FSAL: the last stage is b at the new point
            n_steps += 1
        else:
            n_rejected += 1
            factor = min(factor, 1.0)
        h = h * factor
    return AdaptiveSample(x=x, n_steps=n_steps, n_rejected=n_rejected, nfev=nfev)
