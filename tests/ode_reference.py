"""Independent float64 reference: scipy's DOP853 integration of a flow's own velocity."""

from __future__ import annotations

import torch
from scipy.integrate import solve_ivp


def scipy_flow_map(flow, s: float, t: float, x: torch.Tensor, rtol: float = 1e-13, atol: float = 1e-13) -> torch.Tensor:
    """X_{s,t}(x) by solve_ivp(DOP853) on the flattened batch, per-point velocity calls in float64."""
    x64 = x.detach().to(torch.float64).cpu()
    n, d = x64.shape

    def rhs(tau, z):
        xx = torch.from_numpy(z.reshape(n, d).copy())
        return flow.velocity(float(tau), xx).numpy().ravel()

    if s == t:
        return x64.clone()
    sol = solve_ivp(rhs, (s, t), x64.numpy().ravel(), method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(sol.message)
    return torch.from_numpy(sol.y[:, -1].reshape(n, d).copy())


def rel_err_max(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over points of |a - b| / (1 + |b|)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    return float(((a - b).norm(dim=1) / (1 + b.norm(dim=1))).max())
