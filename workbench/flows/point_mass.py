"""Data = a point mass delta_a: the simplest flow with a closed-form map.

p_t = N(beta_t a, alpha_t^2 I)
b_t(x) = beta'_t a + (alpha'_t / alpha_t) (x - beta_t a)
X_{s,t}(x) = beta_t a + (alpha_t / alpha_s) (x - beta_s a)

Singular at alpha = 0 (t = 1): X_{s,1} = a for every x and X_{1,t} is undefined.
"""

from __future__ import annotations

import math

import torch

from ..core.times import expand_as_state
from .base import AnalyticFlow, as_param


class PointMassFlow(AnalyticFlow):
    """Probability flow from N(0, I) to the point mass at ``a`` (shape (dim,))."""

    singular_at_data = True

    def __init__(self, a: object, *, interpolant: object = None) -> None:
        a_ = as_param(a, "a", ndim=1)
        if a_.numel() == 0:
            raise ValueError("a must have at least one coordinate")
        super().__init__(a_.numel(), interpolant)
        self.a = a_

    def _a(self, x: torch.Tensor) -> torch.Tensor:
        return self._cast("a", lambda: self.a, x)

    def _velocity(self, t, x):
        ip, a = self.interpolant, self._a(x)
        te = expand_as_state(t, x)
        return ip.dbeta(te) * a + (ip.dalpha(te) / ip.alpha(te)) * (x - ip.beta(te) * a)

    def _flow_map(self, s, t, x):
        ip, a = self.interpolant, self._a(x)
        se, te = expand_as_state(s, x), expand_as_state(t, x)
        return ip.beta(te) * a + (ip.alpha(te) / ip.alpha(se)) * (x - ip.beta(se) * a)

    def _log_prob(self, t, x):
        ip, a = self.interpolant, self._a(x)
        al = ip.alpha(t)
        r2 = ((x - ip.beta(t)[:, None] * a) ** 2).sum(-1)
        return -0.5 * self.dim * torch.log(2 * math.pi * al**2) - r2 / (2 * al**2)

    def _sample_data(self, n, generator, dtype, device):
        return self.a.to(dtype=dtype, device=device).expand(n, self.dim).clone()
