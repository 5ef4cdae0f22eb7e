"""Stochastic interpolants I_t = alpha_t x0 + beta_t x1, x0 ~ N(0, I) (t = 0) and x1 ~ data (t = 1).

Two schedules are provided:

* ``LinearInterpolant``: alpha_t = 1 - t, beta_t = t.
* ``TrigInterpolant``:   alpha_t = cos(pi t / 2), beta_t = sin(pi t / 2)  (variance preserving).

Each gives alpha_t, beta_t, their derivatives, samples of (I_t, dI_t/dt), and conversions to the
parametrisations used by diffusion / consistency codebases:

* variance exploding (VE / EDM): I_t = beta_t (x1 + sigma z) with sigma = alpha_t / beta_t, so
  ``to_ve(t, x) = (sigma_t, x / beta_t)``;
* variance preserving (VP / DDPM): I_t / sqrt(alpha^2 + beta^2) = sqrt(abar) x1 + sqrt(1 - abar) z
  with abar = beta^2 / (alpha^2 + beta^2), so ``to_vp(t, x) = (abar_t, x / sqrt(alpha^2 + beta^2))``.

Both peer conventions run the clock the other way (noise at large sigma / small abar); the
conversions carry the state with them, so a model in either convention can be wrapped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.times import broadcast_time, expand_as_state
from ..core.validation import check_state, check_tensor


@dataclass(frozen=True)
class InterpolantSample:
    """One draw of the interpolant: times t (batch,), endpoints x0, x1, I_t = x_t and dI_t/dt = dx_t."""

    t: torch.Tensor
    x0: torch.Tensor
    x1: torch.Tensor
    x_t: torch.Tensor
    dx_t: torch.Tensor


class _InterpolantOps:
    """Methods shared by every schedule; a schedule supplies alpha, beta and their derivatives."""

    name: str

    def alpha(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def beta(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def dbeta(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- sampling -----------------------------------------------------------------------------
    def sample(
        self,
        x1: torch.Tensor,
        t: object = None,
        x0: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> InterpolantSample:
        """Draw I_t = alpha_t x0 + beta_t x1 and dI_t/dt = alpha'_t x0 + beta'_t x1.

        x1: (batch, *event) data; t: float, 0-d or (batch,) tensor, or None for t ~ U[0, 1];
        x0: base noise of x1's shape, or None to draw N(0, I) with ``generator``.
        """
        x1 = check_tensor(x1, "x1")
        if x1.ndim < 2:
            raise ValueError(f"x1 must have shape (batch, *event), got {tuple(x1.shape)}")
        if t is None:
            t = torch.rand(x1.shape[0], dtype=x1.dtype, device=x1.device, generator=generator)
        t = broadcast_time(t, x1, "t")
        if x0 is None:
            x0 = torch.randn(x1.shape, dtype=x1.dtype, device=x1.device, generator=generator)
        else:
            x0 = check_tensor(x0, "x0")
            if x0.shape != x1.shape:
                raise ValueError(f"x0 must have the shape of x1 {tuple(x1.shape)}, got {tuple(x0.shape)}")
        te = expand_as_state(t, x1)
        x_t = self.alpha(te) * x0 + self.beta(te) * x1
        dx_t = self.dalpha(te) * x0 + self.dbeta(te) * x1
        return InterpolantSample(t=t, x0=x0, x1=x1, x_t=x_t, dx_t=dx_t)

    def alpha_dalpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_t alpha'_t (finite wherever the law of I_t is defined)."""
        return self.alpha(t) * self.dalpha(t)

    def beta_dbeta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta(t) * self.dbeta(t)

    # -- variance exploding ---------------------------------------------------------------------
    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma_t = alpha_t / beta_t (inf at t = 0, 0 at t = 1)."""
        return self.alpha(t) / self.beta(t)

    def to_ve(self, t: object, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma_t, x / beta_t): I_t / beta_t = x1 + sigma_t z. Undefined at t = 0 (beta = 0)."""
        x = check_state(x, None)
        tb = broadcast_time(t, x, "t")
        if bool((self.beta(tb) <= 0).any()):
            raise ValueError("t must be > 0 for the VE parametrisation (beta_0 = 0 makes sigma infinite)")
        return self.t_to_sigma(tb), x / expand_as_state(self.beta(tb), x)

    def from_ve(self, sigma: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`to_ve`: (t, beta_t u) from (sigma, u)."""
        u = check_state(u, None, "u")
        sigma = broadcast_time(sigma, u, "sigma", lo=0.0, hi=None)
        t = self.sigma_to_t(sigma)
        return t, u * expand_as_state(self.beta(t), u)

    # -- variance preserving --------------------------------------------------------------------
    def t_to_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """abar_t = beta^2 / (alpha^2 + beta^2) (0 at t = 0, 1 at t = 1)."""
        a, b = self.alpha(t), self.beta(t)
        return b * b / (a * a + b * b)

    def alpha_bar_to_t(self, alpha_bar: torch.Tensor) -> torch.Tensor:
        # sigma^2 = (1 - abar) / abar; written as a ratio so abar = 0 maps to sigma = inf -> t = 0.
        return self.sigma_to_t(torch.sqrt((1.0 - alpha_bar) / alpha_bar))

    def to_vp(self, t: object, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(abar_t, x / sqrt(alpha_t^2 + beta_t^2)): sqrt(abar) x1 + sqrt(1 - abar) z."""
        x = check_state(x, None)
        tb = broadcast_time(t, x, "t")
        a, b = self.alpha(tb), self.beta(tb)
        return self.t_to_alpha_bar(tb), x / expand_as_state(torch.sqrt(a * a + b * b), x)

    def from_vp(self, alpha_bar: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`to_vp`."""
        u = check_state(u, None, "u")
        alpha_bar = broadcast_time(alpha_bar, u, "alpha_bar")
        t = self.alpha_bar_to_t(alpha_bar)
        a, b = self.alpha(t), self.beta(t)
        return t, u * expand_as_state(torch.sqrt(a * a + b * b), u)


@dataclass(frozen=True)
class LinearInterpolant(_InterpolantOps):
    """alpha_t = 1 - t, beta_t = t (rectified flow / flow matching with the OT path)."""

    name: str = "linear"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - t

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.ones_like(t)

    def dbeta(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        # sigma = (1 - t) / t  <=>  t = 1 / (1 + sigma)
        return 1.0 / (1.0 + sigma)


@dataclass(frozen=True)
class TrigInterpolant(_InterpolantOps):
    """alpha_t = cos(pi t / 2), beta_t = sin(pi t / 2) (variance preserving, TrigFlow)."""

    name: str = "trig"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(0.5 * math.pi * t)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sin(0.5 * math.pi * t)

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def dbeta(self, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        # sigma = cot(pi t / 2)  <=>  t = (2 / pi) atan2(1, sigma)
        return (2.0 / math.pi) * torch.atan2(torch.ones_like(sigma), sigma)


Interpolant = LinearInterpolant | TrigInterpolant

INTERPOLANTS = {"linear": LinearInterpolant, "trig": TrigInterpolant}


def get_interpolant(spec: object = None) -> Interpolant:
    """An interpolant from an instance, a name ('linear', 'trig') or None (linear)."""
    if spec is None:
        return LinearInterpolant()
    if isinstance(spec, (LinearInterpolant, TrigInterpolant)):
        return spec
    if isinstance(spec, str) and spec in INTERPOLANTS:
        return INTERPOLANTS[spec]()
    raise ValueError(f"interpolant must be 'linear', 'trig' or an interpolant instance, got {spec!r}")
