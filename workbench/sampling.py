"""Samplers: N-step flow-map sampling and ODE sampling of a diagonal velocity.

* Flow-map sampling on a time grid 0 = t_0 < t_1 < ... < t_N = 1 (B25's multi-step sampling):
  x_{k+1} = X_{t_k, t_{k+1}}(x_k), x_0 ~ N(0, I). For the exact flow map every grid gives the
  exact X_{0,1}(x_0) (semigroup X_{u,t} o X_{s,u} = X_{s,t}); a learned map drifts with N.
* ODE sampling of dx/dt = b_t(x) with b_t = ``flow.velocity(t, x)`` (for a model, its diagonal
  v_{t,t}): fixed-step explicit Runge-Kutta (Euler, order 1; Heun and midpoint, order 2; RK4,
  order 4) on a grid, or adaptive Dormand-Prince 5(4) (the flow layer's batched ODE oracle
  ``workbench.flows.ode.solve_flow``: one step size for the batch, the error norm is the maximum
  over samples of the RMS over coordinates).

Any object with ``flow_map(s, t, x)`` / ``velocity(t, x)`` works: analytic flows, neural flow
maps, ``workbench.models.ExactFlowMap``. Functions keep autograd as the caller has it; wrap calls
in ``torch.no_grad()`` to sample without building a graph. Grids may also run backward (1 -> 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .core.validation import (
    check_device,
    check_floating_dtype,
    check_positive_int,
    check_sampling_args,
    check_state,
    model_dtype,
)

__all__ = [
    "ODE_METHODS",
    "AdaptiveSample",
    "flow_map_trajectory",
    "model_dtype",
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
    ``grid`` in [0, 1] (exactly one of the two), in the floating ``dtype`` on ``device``."""
    check_floating_dtype(dtype)
    if device is not None:
        device = check_device(device)
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


def sample_flow_map(model, x0: torch.Tensor, n_steps: int | None = None, grid: object = None, *,
                    on_nonfinite: str = "raise") -> torch.Tensor:
    """x_N of N-step flow-map sampling x_{k+1} = X_{t_k, t_{k+1}}(x_k) from ``x0`` (shape of x0);
    uniform grid t_k = k / N from ``n_steps``, or the given ``grid``. The one N-step sampler of the
    project (metrics, evaluation and figures call it).

    ``on_nonfinite``: "raise" (default) lets the model's own input check refuse a state that turned
    NaN / inf; "nan" stops each sample whose state turns non-finite (a diverged model overflowing)
    and returns it as NaN, so that one bad sample does not fail the whole batch."""
    if on_nonfinite not in ("raise", "nan"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'nan', got {on_nonfinite!r}")
    g = _grid_for(x0, n_steps, grid)
    if on_nonfinite == "raise":
        x = x0
        for k in range(g.numel() - 1):
            x = model.flow_map(g[k], g[k + 1], x)
        return x
    x = x0.clone()
    alive = torch.isfinite(x.flatten(1)).all(dim=1)
    for k in range(g.numel() - 1):
        if not bool(alive.any()):
            break
        x[alive] = model.flow_map(g[k], g[k + 1], x[alive])
        alive &= torch.isfinite(x.flatten(1)).all(dim=1)
    x[~alive] = torch.nan
    return x


def _model_device(model: object) -> torch.device | None:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return None


def sample(
    model,
    n: int,
    *,
    n_steps: int = 1,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """n samples (n, model.dim): x0 ~ N(0, I) from ``generator``, then ``n_steps`` flow-map steps
    on the uniform grid, without gradients.

    ``dtype`` defaults to the dtype the model computes in (:func:`model_dtype`; float32 for a model
    without parameters); an explicit dtype that differs from the model's is refused (TypeError), never
    cast. ``device`` defaults to the generator's device, else the model's, else CPU."""
    own = model_dtype(model)
    if dtype is None:
        dtype = own if own is not None else torch.float32
    else:
        check_floating_dtype(dtype)
        if own is not None and dtype != own:
            raise TypeError(
                f"dtype {dtype} differs from the dtype {own} the model computes in; pass dtype=None (the "
                f"model's) or cast the model with model.to({dtype})"
            )
    if device is None and generator is None:
        device = _model_device(model)
    n, dtype, dev = check_sampling_args(n, generator, dtype, device)
    check_positive_int(n_steps, "n_steps")
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
@dataclass(frozen=True)
class AdaptiveSample:
    """Result of :func:`sample_ode_adaptive`: the state x at the end time and the solver's counts
    (accepted steps, rejected steps, velocity evaluations)."""

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
    rtol: float | None = None,
    atol: float = 1e-8,
    max_steps: int = 10_000,
) -> AdaptiveSample:
    """Solve dx/dtau = flow.velocity(tau, x) from time s to t with adaptive Dormand-Prince 5(4).

    The solve is the flow layer's batched oracle :func:`workbench.flows.ode.solve_flow` (FSAL,
    PI step control): a step is accepted when max_batch sqrt(mean_dims(e_i / (atol + rtol
    max(|x_i|, |x_new,i|)))^2) <= 1, e the embedded error estimate, so every sample meets the
    tolerance. ``rtol`` defaults to 1e-6, or 10 eps of x0's dtype when that is larger (the
    oracle's floor; float32: 1.19e-6). Raises RuntimeError (``ODESolverError``) after
    ``max_steps`` step attempts or on a non-finite velocity.
    """
    from .flows.ode import solve_flow

    x = check_state(x0, None, "x0")
    if not (0.0 <= s <= 1.0 and 0.0 <= t <= 1.0):
        raise ValueError(f"s and t must lie in [0, 1], got s={s!r}, t={t!r}")
    if rtol is None:
        rtol = max(1e-6, 10 * torch.finfo(x.dtype).eps)
    sol = solve_flow(flow.velocity, s, t, x, rtol=rtol, atol=atol, max_steps=max_steps)
    st = sol.stats
    return AdaptiveSample(x=sol.x, n_steps=st.n_steps, n_rejected=st.n_rejected, nfev=st.nfev)
