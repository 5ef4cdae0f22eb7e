"""Inverting a mixture CDF in log space: the tools shared by the 1-D mixture and the rings flows.

A CDF-based flow map sends x to the root y of F_t(y) = F_s(x) (1-D trajectories, or radii, cannot
cross), with F = sum_k pi_k F_k a mixture of component CDFs. Three tools:

* ``log1mexp``, ``ndtri_exp``: log(1 - e^a) and Phi^{-1}(e^a), accurate where e^a underflows;
* ``safeguarded_newton``: a vectorised Newton iteration with bisection fallback on brackets;
* ``cdf_level`` / ``level_residual``: the level F_s(x) written as an offset from the component
  boundary next to it, so that it is transported without cancellation (below).

Why the offset. Between two well-separated components near the data end (narrow Gaussians, atoms,
rings), F_s(x) = pi_1 + (mass of component 2 below x) - (mass of component 1 above x), where both
corrections can be 1e-98 or far smaller: stored as a float64 F (or log F) the level rounds to the
boundary pi_1 and the inverse lands anywhere in the gap between the components. Splitting the
components into an *inner* set I (those whose median lies below x) and the rest,

    F = c + D,   c = sum_{k in I} pi_k,   D = P - N,
    P = sum_{k not in I} pi_k F_k(x),   N = sum_{k in I} pi_k S_k(x),   S_k = 1 - F_k,

is exact algebra, and P and N are sums of positive terms that log-space component CDFs give at full
relative accuracy. The map keeps the split and solves P_t(y) - N_t(y) = D as the increasing equation

    f(y) = log(P_t(y) + D^-) - log(N_t(y) + D^+) = 0,      D^+ = max(D, 0),  D^- = max(-D, 0),
    f'(y) = sum_{k not in I} pi_k p_k(y) / (P_t + D^-) + sum_{k in I} pi_k p_k(y) / (N_t + D^+),

in which no two nearly equal numbers are subtracted (p_k the component densities). With I empty
this is log F_t(y) - log F_s(x), with I everything log S_s(x) - log S_t(y): the usual two tails.
Because each inner S_k and each outer F_k is at most 1/2, |D| <= c / 2 when D < 0 and
|D| <= (1 - c) / 2 when D > 0, so log F and log S follow from (c, D) without loss as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.tolerances import eps
from ..core.validation import value_checks_enabled

LOG_HALF = -math.log(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a <= 0, accurate on both sides of a = -log 2 (Maechler 2012)."""
    return torch.where(a > LOG_HALF, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def mills_ratio(z: torch.Tensor) -> torch.Tensor:
    """phi(z) / Phi(z) for any z: sqrt(2 / pi) / erfcx(-z / sqrt 2) for z < 0 (Phi(z) = erfc(-z / sqrt 2) / 2
    with its Gaussian factor cancelled exactly), phi(z) / Phi(z) directly for z >= 0 (Phi >= 1/2). The
    naive exp(-z^2 / 2 - log Phi(z)) subtracts two numbers of size z^2 / 2 and is NaN beyond |z| ~ 1e17."""
    neg = torch.clamp(z, max=0.0)
    pos = torch.clamp(z, min=0.0)
    left = math.sqrt(2.0 / math.pi) / torch.special.erfcx(-neg / math.sqrt(2.0))
    right = torch.exp(-0.5 * pos * pos - _LOG_SQRT_2PI) / torch.special.ndtr(pos)
    return torch.where(z < 0, left, right)


def ndtri_exp(log_u: torch.Tensor) -> torch.Tensor:
    """q = Phi^{-1}(exp(log_u)) for log_u <= log(1/2), also where exp(log_u) underflows.

    ``ndtri(exp(log_u))`` where that is representable, else Newton on log_ndtr(q) = log_u from the
    asymptotic start q = -sqrt(-2 log_u) (log Phi(q) ~ -q^2/2 - log(-q sqrt(2 pi)) as q -> -inf).
    """
    tiny = math.log(torch.finfo(log_u.dtype).tiny) + 10.0
    direct = torch.special.ndtri(torch.exp(log_u.clamp_min(tiny)))
    q = -torch.sqrt(-2.0 * log_u.clamp_max(tiny))
    for _ in range(8):
        lphi = torch.special.log_ndtr(q)
        q = q - (lphi - log_u.clamp_max(tiny)) / mills_ratio(q)
    return torch.where(log_u > tiny, direct, q)


def safeguarded_newton(
    fun: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    atol: torch.Tensor | float = 0.0,
    rtol: float | None = None,
    ftol: torch.Tensor | float = 0.0,
    max_iter: int = 200,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise root of an increasing function f on brackets [lo, hi] (f(lo) <= 0 <= f(hi)).

    ``fun(y) -> (f(y), f'(y))``. Each step is Newton's, replaced by bisection when it leaves the
    current bracket, does not move, or (while above the tolerance) does not halve the previous step
    (rtsafe); the bracket shrinks with the sign of f. An element stops when its bracket is below
    tol = rtol |y| + atol (rtol default 4 eps), when |f| <= ftol (the rounding level of f), or when
    its Newton step is below tol while |f| <= sqrt(eps) (a tiny step next to a jump of f, e.g. an
    atom, is no evidence of a root). Returns (y, converged). With value checks disabled (under
    ``torch.func.vmap``) it runs ``max_iter`` steps without data-dependent early exit.
    """
    rtol = 4.0 * eps(lo.dtype) if rtol is None else rtol
    f_conv = math.sqrt(eps(lo.dtype))
    lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
    y = 0.5 * (lo + hi)
    step_old = hi - lo
    done = torch.zeros_like(y, dtype=torch.bool)
    early_exit = value_checks_enabled()
    for _ in range(max_iter):
        f, df = fun(y)
        lo = torch.where(f <= 0, y, lo)
        hi = torch.where(f >= 0, y, hi)
        newton = y - f / df
        tol = rtol * y.abs() + atol
        f_ok = f.abs() <= f_conv
        step_newton = (newton - y).abs()
        moving = step_newton > 0
        use_newton = (
            torch.isfinite(newton) & (newton >= lo) & (newton <= hi) & moving
            & ((f_ok & (step_newton <= 8 * tol)) | (step_newton <= 0.5 * step_old.abs()))
        )
        done = done | (f.abs() <= ftol) | (f_ok & ((step_newton <= tol) | ~moving))
        y_new = torch.where(use_newton, newton, 0.5 * (lo + hi))
        step = y_new - y
        y_new = torch.where(done, y, y_new)
        step_old = torch.where(done, step_old, step)
        done = done | ((hi - lo) <= tol)
        y = y_new
        if early_exit and bool(done.all()):
            break
    return y, done


@dataclass(frozen=True)
class CdfLevel:
    """A mixture CDF level F = c + D split at the inner components (see the module docstring).

    All fields have shape (batch,) except ``inner`` (batch, K). ``log_D`` is log |D| (-inf for D = 0)
    and ``positive`` says D >= 0; ``log_F`` and ``log_S`` are log F and log(1 - F), each as accurate as
    a float64 logarithm of F or 1 - F can be.
    """

    inner: torch.Tensor
    log_P: torch.Tensor
    log_N: torch.Tensor
    log_D: torch.Tensor
    positive: torch.Tensor
    log_F: torch.Tensor
    log_S: torch.Tensor

    @property
    def log_D_plus(self) -> torch.Tensor:
        """log D^+ = log max(D, 0)."""
        return torch.where(self.positive, self.log_D, torch.full_like(self.log_D, -math.inf))

    @property
    def log_D_minus(self) -> torch.Tensor:
        """log D^- = log max(-D, 0)."""
        return torch.where(self.positive, torch.full_like(self.log_D, -math.inf), self.log_D)

    @property
    def scale(self) -> torch.Tensor:
        """|log| of the level's magnitude, for the rounding level of f: log |D|, or log max(P, N) when D = 0."""
        return torch.where(torch.isfinite(self.log_D), self.log_D, torch.maximum(self.log_P, self.log_N)).abs()


def _masked_logsumexp(v: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(torch.where(keep, v, torch.full_like(v, -math.inf)), -1)


def cdf_level(log_F_k: torch.Tensor, log_S_k: torch.Tensor, log_pi: torch.Tensor, inner: torch.Tensor) -> CdfLevel:
    """The level of a mixture CDF from its components: log pi_k F_k and log pi_k S_k (batch, K), log pi_k
    (K,), and the inner set (batch, K) (components whose median lies below the point: S_k <= 1/2)."""
    log_P = _masked_logsumexp(log_F_k, ~inner)
    log_N = _masked_logsumexp(log_S_k, inner)
    top, low = torch.maximum(log_P, log_N), torch.minimum(log_P, log_N)
    finite = torch.isfinite(top)
    log_D = top + log1mexp(torch.where(finite, low - top, torch.zeros_like(top)))
    log_w = log_pi.expand_as(log_F_k)
    log_c, log_cbar = _masked_logsumexp(log_w, inner), _masked_logsumexp(log_w, ~inner)  # c, 1 - c
    positive = log_P >= log_N
    # F = c + D and S = (1 - c) - D; the subtracted |D| is at most half of what it is subtracted from
    log_F = torch.where(positive, torch.logaddexp(log_c, log_D), log_c + log1mexp(torch.clamp(log_D - log_c, max=LOG_HALF)))
    log_S = torch.where(positive, log_cbar + log1mexp(torch.clamp(log_D - log_cbar, max=LOG_HALF)), torch.logaddexp(log_cbar, log_D))
    return CdfLevel(inner, log_P, log_N, log_D, positive, log_F, log_S)


#: levels whose log lies below this are refused: inverting them squares standardised distances |z| ~ 1e153
#: near the top of float64's range (z^2 / 2 = -log level), which the root search would overflow
LOG_LEVEL_FLOOR = -1e306


def check_level_resolved(level: CdfLevel, owner: str, region: str) -> None:
    """Refuse (ValueError) points whose level is beyond float64 even in log space (log of the larger of P
    and N below ``LOG_LEVEL_FLOOR``, or -inf): their image cannot be computed, only guessed."""
    if not value_checks_enabled():
        return
    bad = ~(torch.maximum(level.log_P, level.log_N) >= LOG_LEVEL_FLOOR)
    if bool(bad.any()):
        raise ValueError(
            f"{owner}.flow_map cannot resolve {int(bad.sum())} point(s): their CDF level at time s is below "
            f"exp({LOG_LEVEL_FLOOR:.0e}), beyond float64 even in log space ({region})"
        )


def level_residual(
    level: CdfLevel, log_F_k: torch.Tensor, log_S_k: torch.Tensor, log_p_k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(y), log f'(y)) of the level equation at the points y whose component terms are given (each
    (batch, K): log pi_k F_k(y), log pi_k S_k(y), log pi_k p_k(y)); f is increasing in y."""
    num = torch.logaddexp(_masked_logsumexp(log_F_k, ~level.inner), level.log_D_minus)  # log(P_t + D^-)
    den = torch.logaddexp(_masked_logsumexp(log_S_k, level.inner), level.log_D_plus)  # log(N_t + D^+)
    log_slope = torch.logaddexp(_masked_logsumexp(log_p_k, ~level.inner) - num, _masked_logsumexp(log_p_k, level.inner) - den)
    return num - den, log_slope


__all__ = [
    "LOG_HALF",
    "LOG_LEVEL_FLOOR",
    "CdfLevel",
    "cdf_level",
    "check_level_resolved",
    "level_residual",
    "log1mexp",
    "mills_ratio",
    "ndtri_exp",
    "safeguarded_newton",
]
