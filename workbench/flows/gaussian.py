"""Data = N(mean, cov) with a full covariance: a closed-form affine flow map.

With cov = U diag(lam) U^T and c_i(t) = alpha_t^2 + beta_t^2 lam_i (so C_t = alpha^2 I + beta^2 cov):

p_t = N(beta_t mean, C_t)
b_t(x) = beta'_t mean + U diag(c'_i / (2 c_i)) U^T (x - beta_t mean)
X_{s,t}(x) = beta_t mean + U diag(sqrt(c_i(t) / c_i(s))) U^T (x - beta_s mean)

The symmetric square root C_t^{1/2} C_s^{-1/2} is the flow because every C_t is a function of cov
(they commute). A Cholesky factor L_t L_s^{-1} gives the same marginals, semigroup and Jacobian
determinant but is *not* the flow unless cov is diagonal (see
``workbench.flows.degenerate.cholesky_transport``): the tangent condition tells them apart.
"""

from __future__ import annotations

import math

import torch

from ..core.times import expand_as_state
from .base import AnalyticFlow, as_param


class GaussianFlow(AnalyticFlow):
    """Probability flow from N(0, I) to N(mean, cov); cov symmetric positive semi-definite."""

    def __init__(self, mean: object, cov: object, *, interpolant: object = None) -> None:
        mu = as_param(mean, "mean", ndim=1)
        S = as_param(cov, "cov", ndim=2)
        d = mu.numel()
        if d == 0:
            raise ValueError("mean must have at least one coordinate")
        if S.shape != (d, d):
            raise ValueError(f"cov must have shape ({d}, {d}) to match mean, got {tuple(S.shape)}")
        scale = float(S.abs().max()) if S.numel() else 1.0
        if float((S - S.T).abs().max()) > 1e-12 * max(scale, 1.0):
            raise ValueError("cov must be symmetric; symmetrise with (cov + cov.T) / 2")
        lam, U = torch.linalg.eigh(0.5 * (S + S.T))
        if float(lam.min()) < -1e-12 * max(scale, 1.0):
            raise ValueError(
                f"cov must be positive semi-definite, got smallest eigenvalue {float(lam.min())!r}"
            )
        super().__init__(d, interpolant)
        self.mean, self.cov = mu, S
        self.eigvals = lam.clamp_min(0.0)
        self.eigvecs = U
        self.singular_at_data = bool(self.eigvals.min() == 0.0)

    def _params(self, x):
        return self._cast("mUl", lambda: (self.mean, self.eigvecs, self.eigvals), x)

    def _c(self, t, lam):
        ip = self.interpolant
        te = t[:, None]
        c = ip.alpha(te) ** 2 + ip.beta(te) ** 2 * lam
        dc = 2 * ip.alpha_dalpha(te) + 2 * ip.beta_dbeta(te) * lam
        return c, dc

    def _velocity(self, t, x):
        mu, U, lam = self._params(x)
        ip = self.interpolant
        te = expand_as_state(t, x)
        c, dc = self._c(t, lam)
        y = (x - ip.beta(te) * mu) @ U
        return ip.dbeta(te) * mu + (y * dc / (2 * c)) @ U.T

    def _flow_map(self, s, t, x):
        mu, U, lam = self._params(x)
        ip = self.interpolant
        se, te = expand_as_state(s, x), expand_as_state(t, x)
        cs, _ = self._c(s, lam)
        ct, _ = self._c(t, lam)
        y = (x - ip.beta(se) * mu) @ U
        return ip.beta(te) * mu + (y * torch.sqrt(ct / cs)) @ U.T

    def flow_jacobian(self, s, t, x):
        """grad X_{s,t} = U diag(sqrt(c(t)/c(s))) U^T, shape (batch, dim, dim)."""
        from ..core.times import broadcast_time

        sb, tb = broadcast_time(s, x, "s"), broadcast_time(t, x, "t")
        _, U, lam = self._params(x)
        r = torch.sqrt(self._c(tb, lam)[0] / self._c(sb, lam)[0])
        return torch.einsum("ij,bj,kj->bik", U, r, U)

    def _log_prob(self, t, x):
        mu, U, lam = self._params(x)
        ip = self.interpolant
        c, _ = self._c(t, lam)
        y = (x - ip.beta(t)[:, None] * mu) @ U
        return -0.5 * (self.dim * math.log(2 * math.pi) + torch.log(c).sum(-1) + (y * y / c).sum(-1))

    def _sample_data(self, n, generator, dtype, device):
        z = torch.randn(n, self.dim, dtype=dtype, device=device, generator=generator)
        U = self.eigvecs.to(dtype=dtype, device=device)
        lam = self.eigvals.to(dtype=dtype, device=device)
        return self.mean.to(dtype=dtype, device=device) + (z * lam.sqrt()) @ U.T
