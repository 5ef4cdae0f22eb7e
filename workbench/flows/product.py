"""Data = c + Q y with independent 1-D Gaussian-mixture coordinates y_i: closed-form rotated products.

Derivation in docs/flows_analytic.md 2.5. With Q orthogonal, Q^T (I_t - beta_t c) = alpha_t (Q^T z) + beta_t y
and Q^T z ~ N(0, I), so the coordinates are independent 1-D interpolants:

    b_t(x)     = beta'_t c + Q [b^i_t(xi_i)]_i,          xi = Q^T (x - beta_t c)
    X_{s,t}(x) = beta_t c + Q [X^i_{s,t}(xi_i)]_i,      xi = Q^T (x - beta_s c)
    log p_t(x) = sum_i log p^i_t(xi_i),                  xi = Q^T (x - beta_t c)
    grad X     = Q diag(dX^i/dxi_i) Q^T                  (symmetric positive definite: an OT map)

The law is also a d-D Gaussian mixture with K_1 K_2 ... K_d components
(``as_gaussian_mixture_parameters``), which the Gaussian-mixture flow can be cross-checked against.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..core.times import expand_as_state
from ..core.tolerances import eps
from .base import AnalyticFlow, as_param
from .interpolants import get_interpolant
from .mixture1d import Mixture1DFlow


@dataclass(frozen=True)
class GaussianMixtureParameters:
    """A Gaussian mixture sum_k weights[k] N(means[k], covs[k]): weights (K,), means (K, d), covs (K, d, d)."""

    weights: torch.Tensor
    means: torch.Tensor
    covs: torch.Tensor

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Unpack as ``weights, means, covs = params``."""
        return iter((self.weights, self.means, self.covs))


def _input_eps(value: object) -> float:
    """Unit round-off of the dtype the rotation was given in (float64 for Python lists)."""
    dtype = getattr(value, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return eps(dtype)
    if dtype is not None and str(dtype) in ("float32", "float16"):
        return eps(getattr(torch, str(dtype)))
    return eps(torch.float64)


class ProductFlow(AnalyticFlow):
    """Probability flow from N(0, I_d) to c + Q y, y_i ~ factors[i] independent (d = len(factors)).

    factors: Mixture1DFlow instances sharing one interpolant; rotation: orthogonal (d, d) matrix Q
    (default identity), orthonormal to 16 d eps of the dtype it is given in, then re-orthonormalised
    (polar factor) in float64; shift: c of shape (d,) (default 0).
    """

    def __init__(
        self,
        factors: Sequence[Mixture1DFlow],
        rotation: object = None,
        shift: object = None,
        *,
        interpolant: object = None,
    ) -> None:
        if isinstance(factors, Mixture1DFlow) or not isinstance(factors, (list, tuple)) or len(factors) == 0:
            raise TypeError("factors must be a non-empty list of Mixture1DFlow")
        for i, f in enumerate(factors):
            if not isinstance(f, Mixture1DFlow):
                raise TypeError(f"factors[{i}] must be a Mixture1DFlow, got {type(f).__name__}")
        ip = factors[0].interpolant if interpolant is None else get_interpolant(interpolant)
        for i, f in enumerate(factors):
            if f.interpolant != ip:
                raise ValueError(
                    f"factors[{i}] uses the {f.interpolant.name!r} interpolant but the product uses {ip.name!r}; "
                    "build every factor with the same interpolant"
                )
        d = len(factors)
        if rotation is None:
            Q = torch.eye(d, dtype=torch.float64)
        else:
            Q = as_param(rotation, "rotation", ndim=2)
            if Q.shape != (d, d):
                raise ValueError(f"rotation must have shape ({d}, {d}) for {d} factors, got {tuple(Q.shape)}")
            dev = float((Q.T @ Q - torch.eye(d, dtype=torch.float64)).abs().max())
            tol = 16 * d * _input_eps(rotation)
            if dev > tol:
                raise ValueError(
                    f"rotation must be orthogonal (Q^T Q = I), got max |Q^T Q - I| = {dev:.3g} > {tol:.3g}; "
                    "use e.g. torch.linalg.qr(A).Q"
                )
            U, _, Vh = torch.linalg.svd(Q)
            Q = U @ Vh
        c = torch.zeros(d, dtype=torch.float64) if shift is None else as_param(shift, "shift", ndim=1)
        if c.shape != (d,):
            raise ValueError(f"shift must have shape ({d},) for {d} factors, got {tuple(c.shape)}")
        super().__init__(d, ip)
        self.factors = tuple(factors)
        self.rotation, self.shift = Q, c
        self.singular_at_data = any(f.singular_at_data for f in factors)

    def _Qc(self, like: torch.Tensor):
        return self._cast("Qc", lambda: (self.rotation, self.shift), like)

    def _frame(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """xi = Q^T (x - beta_t c), shape (B, d)."""
        Q, c = self._Qc(x)
        return (x - expand_as_state(self.interpolant.beta(t), x) * c) @ Q

    def _velocity(self, t, x):
        Q, c = self._Qc(x)
        xi = self._frame(t, x)
        b = torch.cat([f._velocity(t, xi[:, i : i + 1]) for i, f in enumerate(self.factors)], -1)
        return expand_as_state(self.interpolant.dbeta(t), x) * c + b @ Q.T

    def _flow_map(self, s, t, x):
        Q, c = self._Qc(x)
        xi = self._frame(s, x)
        y = torch.cat([f._flow_map(s, t, xi[:, i : i + 1]) for i, f in enumerate(self.factors)], -1)
        return expand_as_state(self.interpolant.beta(t), x) * c + y @ Q.T

    def _log_prob(self, t, x):
        xi = self._frame(t, x)
        return sum(f._log_prob(t, xi[:, i : i + 1]) for i, f in enumerate(self.factors))

    def _sample_data(self, n, generator, dtype, device):
        y = torch.cat([f._sample_data(n, generator, dtype, device) for f in self.factors], -1)
        Q, c = self.rotation.to(dtype=dtype, device=y.device), self.shift.to(dtype=dtype, device=y.device)
        return c + y @ Q.T

    def as_gaussian_mixture_parameters(self) -> GaussianMixtureParameters:
        """The same law as a d-D Gaussian mixture (float64, CPU), components in lexicographic order.

        Component (k_1, ..., k_d): weight prod_i pi^i_{k_i}, mean c + Q [mu^i_{k_i}]_i,
        covariance Q diag([sigma^i_{k_i}^2]_i) Q^T.
        """
        Q, c = self.rotation, self.shift
        weights, means, covs = [], [], []
        for ks in itertools.product(*(range(f._w.numel()) for f in self.factors)):
            weights.append(torch.stack([f._w[k] for f, k in zip(self.factors, ks)]).prod())
            mu = torch.stack([f._mu[k] for f, k in zip(self.factors, ks)])
            var = torch.stack([f._sd[k] ** 2 for f, k in zip(self.factors, ks)])
            means.append(c + Q @ mu)
            covs.append(Q @ torch.diag(var) @ Q.T)
        return GaussianMixtureParameters(torch.stack(weights), torch.stack(means), torch.stack(covs))

    def __repr__(self) -> str:
        return f"ProductFlow(dim={self.dim}, factors={len(self.factors)}, interpolant={self.interpolant.name!r})"


__all__ = ["GaussianMixtureParameters", "ProductFlow"]
