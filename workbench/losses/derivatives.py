"""Directional derivatives of flow maps: forward mode (``torch.func.jvp``) with a central
finite-difference twin (both through :func:`workbench.core.directional_derivative`, re-exported here).

For f(p) and a tangent direction q, the directional derivative is

    D_q f(p) = d/dtau f(p + tau q) |_{tau = 0}
             ~ (f(p + h q) - f(p - h q)) / (2 h)            (central difference, error O(h^2))

with default step h = eps^(1/3) of the dtype (``workbench.core.fd_step``), which balances the
O(h^2) truncation against the O(eps / h) round-off. Both methods keep the autograd graph to the
parameters captured by f (so a loss built on the derivative can be backpropagated).

Conveniences for a flow-map model X_{s,t}(x) = x + (t - s) v_{s,t}(x) (B25's
parametrisation and characterisations):

* :func:`flow_map_dt`: (X, d_t X_{s,t}(x))        (Lagrangian: equals b_t(X) for the exact map)
* :func:`flow_map_ds`: (X, d_s X_{s,t}(x))        (Eulerian: equals -grad X b_s(x) for the exact map)
* :func:`flow_map_dx`: (X, grad X_{s,t}(x) w)     (spatial JVP along w)
* :func:`total_derivative`: (f, d/dtau f(s + tau ds, t + tau dt, x + tau dx)), the full (x, s, t)
  tangent of MeanFlow / sCM / iSD, for any f(s, t, x) such as ``model.average_velocity``.

Finite differences evaluate f at times s +- h ds, t +- h dt, which may leave [0, 1] by h; those
evaluations run under :func:`workbench.core.value_checks_disabled` (the caller validates inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.derivatives import directional_derivative
from ..core.times import broadcast_time
from ..core.validation import check_tensor

__all__ = [
    "METHODS",
    "check_method",
    "directional_derivative",
    "flow_map_ds",
    "flow_map_dt",
    "flow_map_dx",
    "total_derivative",
]

METHODS = ("jvp", "fd")


def check_method(method: object) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be 'jvp' (forward mode) or 'fd' (central difference), got {method!r}")
    return method


def _times(model_x: torch.Tensor, s: object, t: object) -> tuple[torch.Tensor, torch.Tensor]:
    return broadcast_time(s, model_x, "s"), broadcast_time(t, model_x, "t")


def _tangent_time(d: object, x: torch.Tensor, name: str) -> torch.Tensor:
    return broadcast_time(d, x, name, lo=None, hi=None)


def total_derivative(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    s: object,
    t: object,
    x: torch.Tensor,
    *,
    ds: object = 0.0,
    dt: object = 0.0,
    dx: torch.Tensor | None = None,
    method: str = "jvp",
    eps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, d/dtau f(s + tau ds, t + tau dt, x + tau dx) at tau = 0) for f = fn(s, t, x).

    x: (batch, *event); s, t, ds, dt: float, 0-d or (batch,); dx: shape of x or None (zero).
    E.g. MeanFlow's total derivative of v_{s,t}(I_s) along the flow is ds = 1, dt = 0, dx = b_s.
    """
    x = check_tensor(x, "x")
    sb, tb = _times(x, s, t)
    dsb, dtb = _tangent_time(ds, x, "ds"), _tangent_time(dt, x, "dt")
    if dx is None:
        dx = torch.zeros_like(x)
    else:
        dx = check_tensor(dx, "dx")
        if dx.shape != x.shape:
            raise ValueError(f"dx must have the shape of x {tuple(x.shape)}, got {tuple(dx.shape)}")
    return directional_derivative(fn, (sb, tb, x), (dsb, dtb, dx), method=method, eps=eps)


def flow_map_dt(model, s, t, x: torch.Tensor, *, method: str = "jvp", eps: float | None = None):
    """(X_{s,t}(x), d_t X_{s,t}(x)), both of x's shape; a jvp in the scalar t only (B25 LSD)."""
    x = check_tensor(x, "x")
    sb, tb = _times(x, s, t)
    return directional_derivative(lambda tt: model.flow_map(sb, tt, x), (tb,), (torch.ones_like(tb),),
                                  method=method, eps=eps)


def flow_map_ds(model, s, t, x: torch.Tensor, *, method: str = "jvp", eps: float | None = None):
    """(X_{s,t}(x), d_s X_{s,t}(x)), both of x's shape; a jvp in the scalar s only (B25 ESD)."""
    x = check_tensor(x, "x")
    sb, tb = _times(x, s, t)
    return directional_derivative(lambda ss: model.flow_map(ss, tb, x), (sb,), (torch.ones_like(sb),),
                                  method=method, eps=eps)


def flow_map_dx(model, s, t, x: torch.Tensor, w: torch.Tensor, *, method: str = "jvp",
                eps: float | None = None):
    """(X_{s,t}(x), grad X_{s,t}(x) w): the spatial Jacobian of the map applied to w (shape of x)."""
    x = check_tensor(x, "x")
    w = check_tensor(w, "w")
    if w.shape != x.shape:
        raise ValueError(f"w must have the shape of x {tuple(x.shape)}, got {tuple(w.shape)}")
    sb, tb = _times(x, s, t)
    return directional_derivative(lambda xx: model.flow_map(sb, tb, xx), (x,), (w,), method=method, eps=eps)
