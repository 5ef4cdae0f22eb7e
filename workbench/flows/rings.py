"""Data = uniform on concentric circles of radii R_j (weights pi_j) in 2-D: a closed-form radial map.

Derivation in docs/flows_analytic.md 2.6. The base N(0, I_2) and the data are rotation invariant, so
p_t and b_t are radial and angles are preserved:

    X_{s,t}(x) = R_{s,t}(|x|) x / |x|,      R_{s,t} = G_t^{-1} o G_s,      G_t(r) = P(|I_t| <= r)
    G_t(r)     = sum_j pi_j [1 - Q_1(a_j, r / alpha_t)],  a_j = beta_t R_j / alpha_t   (Rice law, Marcum Q)
    p_t(x)     = sum_j pi_j (2 pi alpha^2)^{-1} exp(-(r - beta R_j)^2 / 2 alpha^2) I0e(kappa_j),
                 kappa_j = beta R_j r / alpha^2,  radial density g_t(r) = 2 pi r p_t(r)
    D_t(x)     = E[x1 | I_t = x] = sum_j w_j R_j (I1/I0)(kappa_j) x / r,  w_j = posterior of ring j
    b_t(x)     = (alpha'/alpha) (x - beta D) + beta' D                   (von Mises posterior on the angle)

The Rice CDF is computed in torch, in log space (log G and log S = log(1 - G)), by two routes that
each hold ~1e-16 relative accuracy (checked against 40-digit mpmath series):

* a*b <= 1000 (b = r / alpha): the Poisson-mixture series 1 - Q_1(a, b) = P(N_nu > N_mu) with
  N_mu ~ Pois(a^2/2), N_nu ~ Pois(b^2/2) independent, summed in log space with Loader's
  saddle-point Poisson probabilities;
* otherwise: 1 - Q_1 = int phi(y) [Phi(w - a) - Phi(-w - a)] dy, w = sqrt(b^2 - y^2) (condition on
  the coordinate orthogonal to the offset), by Gauss-Hermite quadrature scaled to the curvature of
  the integrand (width about sqrt(b / a)); the survival function likewise.

The inverse transports the level G_s(r) as an offset from the ring boundary next to it
(``cdf_inversion.cdf_level``: a point 21 alpha_s outside a ring keeps its tail mass of 1e-98 instead of
being rounded onto the boundary between the rings' shares), by a safeguarded Newton iteration in
log r with rigorous brackets (p_t <= 1/(2 pi alpha^2); |Z + a e| <= |Z| + a); levels below exp(-1e306)
are refused (ValueError). Derivatives use zero-valued terms with the closed-form coefficients
dR/dr = g_s(r) / g_t(R), dR/ds = -b_s(r) g_s(r) / g_t(R), dR/dt = b_t(R) (radial velocities), so
autograd and ``torch.func.jvp`` give exact first derivatives (not second ones). X(0) = 0; at the
origin X = c0 x with c0 = sqrt(p_s(0) / p_t(0)). t = 1 is singular (alpha_t <= 4 eps beta_t counts as
t = 1: trig gives alpha_1 = 6e-17): as a start time it is refused; as an end time the map sends each
radius to its ring (the quantile of the ring law). ``flow_map`` runs in float64 internally and returns
the input dtype; it is not vmappable (the series length depends on the data).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core.times import broadcast_time
from ..core.tolerances import eps
from ..core.validation import check_probability_vector, check_tensor, value_checks_enabled
from .base import AnalyticFlow, as_param, at_data_end, check_not_data_end
from .cdf_inversion import (
    LOG_HALF,
    CdfLevel,
    cdf_level,
    check_level_resolved,
    level_residual,
    log1mexp,
    mills_ratio,
    ndtri_exp,
    safeguarded_newton,
)

_LOG_2PI = math.log(2.0 * math.pi)
_SERIES_MAX_AB = 100.0  # a*b below which the Poisson series is used (quadrature holds 5e-16 above 50)
_GH_NODES = 64
_GH_CACHE: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


# -- Rice (noncentral chi, 2 degrees of freedom) CDF in log space ----------------------------------
def _stirlerr(k: torch.Tensor) -> torch.Tensor:
    """lgamma(k + 1) - (k + 1/2) log k + k - log(2 pi)/2 for integers k >= 1 (series above 15)."""
    k = k.clamp_min(1.0)
    direct = torch.lgamma(k + 1) - (k + 0.5) * torch.log(k) + k - 0.5 * _LOG_2PI
    i2 = 1.0 / (k * k)
    series = (1 / 12 - i2 * (1 / 360 - i2 * (1 / 1260 - i2 * (1 / 1680 - i2 / 1188)))) / k
    return torch.where(k > 15, series, direct)


def _bd0(k: torch.Tensor, mu: torch.Tensor, log_mu: torch.Tensor) -> torch.Tensor:
    """k log(k / mu) + mu - k (k (K,), mu (E, 1)), by a series where k is close to mu (Loader 2000)."""
    k = k.clamp_min(1.0)
    out = k * (torch.log(k) - log_mu) + mu - k
    near = (k - mu).abs() < 0.1 * (k + mu)
    if bool(near.any()):
        kn, mn = k.expand_as(out)[near], mu.expand_as(out)[near]
        v = (kn - mn) / (kn + mn)
        v2, term, acc = v * v, v * v * v, torch.zeros_like(v)
        for j in range(1, 11):  # |v| < 0.1: the terms fall by 100 each, 10 reach 1e-20 relative
            acc = acc + term / (2 * j + 1)
            term = term * v2
        out = out.masked_scatter(near, (kn - mn) * v + 2 * kn * acc)
    return out


def _log_poisson(k: torch.Tensor, mu: torch.Tensor, log_mu: torch.Tensor) -> torch.Tensor:
    """log Pois(k; mu) for k (K,) and mu, log_mu (E, 1): shape (E, K)."""
    val = -_stirlerr(k) - _bd0(k, mu, log_mu) - 0.5 * (_LOG_2PI + torch.log(k.clamp_min(1.0)))
    return torch.where(k == 0, -mu.expand_as(val), val)


def _rice_series(a, log_b):
    mu, log_mu = 0.5 * a * a, 2.0 * torch.log(a) - math.log(2.0)
    log_nu = 2.0 * log_b - math.log(2.0)
    nu = torch.exp(log_nu)
    lower = log_nu < log_mu  # b < a: G is the small side, S = 1 - G
    direct_G = lower | (nu <= 50)  # else b >= max(a, 10): G >= ~1/4, G = 1 - S is accurate
    # the terms are Poisson-like around sqrt(mu nu) = ab/2 (tail sums) or max(mu, nu) <= 50
    center = torch.where(direct_G & ~lower, torch.maximum(nu, mu), torch.exp(0.5 * (log_mu + log_nu)))
    c = float(center.max()) if center.numel() else 0.0
    K = int(min(c + 12.0 * math.sqrt(c) + 40.0, 400.0))
    k = torch.arange(K, dtype=a.dtype, device=a.device)
    lp = _log_poisson(k, mu[:, None], log_mu[:, None])
    lq = _log_poisson(k, nu[:, None], log_nu[:, None])
    log_S = torch.logsumexp(lp + torch.logcumsumexp(lq, -1), -1)  # P(N_nu <= N_mu)
    log_G = torch.logsumexp(lq[:, 1:] + torch.logcumsumexp(lp, -1)[:, :-1], -1)  # P(N_nu > N_mu)
    log_G = torch.where(direct_G, log_G, log1mexp(log_S))
    log_S = torch.where(lower, log1mexp(log_G), log_S)
    return log_G, log_S


def _gauss_hermite(dtype, device):
    key = (dtype, device)
    if key not in _GH_CACHE:
        x, w = np.polynomial.hermite.hermgauss(_GH_NODES)
        keep = x > 0  # the integrands are even in y
        _GH_CACHE[key] = (
            torch.tensor(x[keep], dtype=dtype, device=device),
            torch.tensor(np.log(2.0 * w[keep]), dtype=dtype, device=device),
        )
    return _GH_CACHE[key]


def _rice_quadrature(a, b, d):
    x, log_w = _gauss_hermite(a.dtype, a.device)
    a_, b_, d_ = a[:, None], b[:, None], d[:, None]

    def integral(curv, lower):
        sig = torch.rsqrt(curv)[:, None]
        y = math.sqrt(2.0) * sig * x
        w = torch.sqrt(torch.clamp(b_ * b_ - y * y, min=0.0))
        b_minus_w = y * y / (b_ + w)
        l_far = torch.special.log_ndtr(-w - a_)  # Phi(-w - a)
        if lower:  # Phi(w - a) - Phi(-w - a)
            l_near = torch.special.log_ndtr(d_ - b_minus_w)
            lh = l_near + log1mexp(torch.clamp(l_far - l_near, max=0.0))
        else:  # Phi(a - w) + Phi(-w - a)
            lh = torch.logaddexp(torch.special.log_ndtr(b_minus_w - d_), l_far)
        lh = torch.where(y < b_, lh, torch.full_like(lh, -math.inf))
        terms = log_w + torch.log(sig) - 0.5 * math.log(math.pi) + (1.0 - sig * sig) * x * x + lh
        return torch.logsumexp(terms, -1)

    log_G = integral(1.0 + mills_ratio(d) / b, True)
    log_S = torch.logaddexp(
        integral(torch.maximum(1.0 - mills_ratio(-d) / b, 0.25 * a / b), False),
        math.log(2.0) + torch.special.log_ndtr(-b),  # |y| > b lies outside the disc
    )
    small = log_G < LOG_HALF
    return torch.where(small, log_G, log1mexp(log_S)), torch.where(small, log1mexp(log_G), log_S)


def rice_log_cdf(a: torch.Tensor, log_b: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log P(|Z + a e| <= b), log P(|Z + a e| > b)) for Z ~ N(0, I_2): log(1 - Q_1(a, b)), log Q_1(a, b).

    a >= 0, log_b = log b and d = b - a (passed separately to avoid cancellation), any common shape.
    No gradient (the flow supplies derivatives in closed form).
    """
    shape = a.shape
    a, log_b, d = a.reshape(-1), log_b.reshape(-1), d.reshape(-1)
    b = torch.exp(log_b)
    series = a * b <= _SERIES_MAX_AB
    log_G, log_S = torch.empty_like(a), torch.empty_like(a)
    if bool(series.any()):
        g, s = _rice_series(a[series], log_b[series])
        log_G[series], log_S[series] = g, s
    if not bool(series.all()):
        q = ~series
        g, s = _rice_quadrature(a[q], b[q], d[q])
        log_G[q], log_S[q] = g, s
    return log_G.reshape(shape), log_S.reshape(shape)


def _safe_radius(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(|x|, |x| with 1 at the origin): differentiable everywhere (gradient 0 at the origin)."""
    zero = (x == 0).all(-1)
    r_safe = torch.hypot(*torch.where(zero[:, None], torch.ones_like(x), x).unbind(-1))
    return torch.where(zero, torch.zeros_like(r_safe), r_safe), r_safe


def _bessel_h(kappa: torch.Tensor) -> torch.Tensor:
    """I1(kappa) / (kappa I0(kappa)), smooth at 0 (series 1/2 - k^2/16 + k^4/96 below 1e-4)."""
    small = kappa < 1e-4
    k = torch.where(small, torch.ones_like(kappa), kappa)
    k2 = kappa * kappa
    return torch.where(small, 0.5 - k2 / 16 + k2 * k2 / 96, torch.special.i1e(k) / (k * torch.special.i0e(k)))


class RingsFlow(AnalyticFlow):
    """Probability flow from N(0, I_2) to uniform on circles of radii ``radii`` with ``weights``."""

    singular_at_data = True

    def __init__(self, radii: object, weights: object, *, interpolant: object = None) -> None:
        R = as_param(radii, "radii", ndim=1)
        w = check_probability_vector(as_param(weights, "weights", ndim=1), "weights")
        if R.numel() == 0 or R.numel() != w.numel():
            raise ValueError(f"radii and weights must be non-empty and of the same length, got {R.numel()} and {w.numel()}")
        if bool((R <= 0).any()):
            raise ValueError(f"radii must be > 0, got {R.tolist()}")
        super().__init__(2, interpolant)
        self.radii, self.weights = R, w
        keep = w > 0
        order = torch.argsort(R[keep])
        self._R, self._w = R[keep][order], (w[keep] / w[keep].sum())[order]

    def _params(self, like: torch.Tensor):
        return self._cast("Rlw", lambda: (self._R, self._w.log(), self._w), like)

    # -- radial pieces --------------------------------------------------------------------------
    def _radial(self, t: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p_t at radius r, radial velocity b_t(r)), shapes (B,)."""
        R, log_pi, _ = self._params(r)
        ip, te, re = self.interpolant, t[:, None], r[:, None]
        al, be = ip.alpha(te), ip.beta(te)
        kappa = be * R * re / al**2
        comp = log_pi - _LOG_2PI - 2 * torch.log(al) - (re - be * R) ** 2 / (2 * al**2) + torch.log(torch.special.i0e(kappa))
        w = torch.softmax(comp, -1)
        D_r = re[:, 0] * (w * be * R**2 / al**2 * _bessel_h(kappa)).sum(-1)
        da, db, a1, b1 = ip.dalpha(t), ip.dbeta(t), ip.alpha(t), ip.beta(t)
        return torch.logsumexp(comp, -1), (da / a1) * r + (db - da * b1 / a1) * D_r

    def _ring_log_cdf(self, t: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi_j G_j(r), log pi_j S_j(r)) per ring j (G_j the Rice CDF of ring j at time t, S_j = 1 - G_j)
        for r > 0 and alpha_t > 0, shapes (B, J)."""
        R, log_pi, _ = self._params(r)
        al, be = self.interpolant.alpha(t)[:, None], self.interpolant.beta(t)[:, None]
        re = r[:, None]
        a = be * R / al
        log_b = (torch.log(re) - torch.log(al)).expand_as(a)
        log_G, log_S = rice_log_cdf(a, log_b, (re - be * R) / al)
        return log_pi + log_G, log_pi + log_S

    def _log_cdf(self, t: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log G_t(r), log S_t(r)) for r > 0 and alpha_t > 0, shapes (B,)."""
        log_G, log_S = self._ring_log_cdf(t, r)
        return torch.logsumexp(log_G, -1), torch.logsumexp(log_S, -1)

    def _ring_log_density(self, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """log pi_j g_j(r) per ring, g_j(r) = (r / alpha^2) exp(-(r - beta R_j)^2 / 2 alpha^2) I0e(kappa_j) the
        radial (Rice) density of ring j at time t; shape (B, J)."""
        R, log_pi, _ = self._params(r)
        ip, te, re = self.interpolant, t[:, None], r[:, None]
        al, be = ip.alpha(te), ip.beta(te)
        kappa = be * R * re / al**2
        return (log_pi + torch.log(re) - 2 * torch.log(al) - (re - be * R) ** 2 / (2 * al**2)
                + torch.log(torch.special.i0e(kappa)))

    def _level(self, s: torch.Tensor, r: torch.Tensor) -> CdfLevel:
        """G_s(r) split at the inner rings, those whose median lies below r (``cdf_inversion.cdf_level``);
        G_j(r) decreases with R_j, so the inner rings are the first k = inner.sum(-1)."""
        log_G, log_S = self._ring_log_cdf(s, r)
        log_pi = self._params(r)[1]
        level = cdf_level(log_G, log_S, log_pi, log_G - log_pi > LOG_HALF)
        check_level_resolved(level, "RingsFlow", "|x| more than ~1e153 alpha_s from every ring")
        return level

    def radial_log_cdf(self, t: object, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log G_t(r), log(1 - G_t(r))) with G_t(r) = P(|I_t| <= r); r (batch,) radii > 0, t < 1 (alpha_t > 0)."""
        r = check_tensor(r, "r")
        if r.ndim != 1:
            raise ValueError(f"r must have shape (batch,), got {tuple(r.shape)}")
        if value_checks_enabled() and not bool((r > 0).all() & torch.isfinite(r).all()):
            raise ValueError("r must hold finite radii > 0")
        tb = broadcast_time(t, r[:, None], "t")
        self._check_regular(tb, "t")
        with torch.no_grad():
            log_G, log_S = self._log_cdf(tb.to(torch.float64), r.to(torch.float64))
        return log_G.to(r.dtype), log_S.to(r.dtype)

    # -- contract -------------------------------------------------------------------------------
    def _velocity(self, t, x):
        r, _ = _safe_radius(x)
        R, log_pi, _ = self._params(x)
        ip, te, re = self.interpolant, t[:, None], r[:, None]
        al, be = ip.alpha(te), ip.beta(te)
        kappa = be * R * re / al**2
        w = torch.softmax(log_pi - (re - be * R) ** 2 / (2 * al**2) + torch.log(torch.special.i0e(kappa)), -1)
        D = x * (w * be * R**2 / al**2 * _bessel_h(kappa)).sum(-1, keepdim=True)
        da, db = ip.dalpha(te), ip.dbeta(te)
        return (da / al) * x + (db - da * be / al) * D

    def _log_prob(self, t, x):
        r, _ = _safe_radius(x)
        return self._radial(t, r)[0]

    def _flow_map(self, s, t, x):
        check_not_data_end(self, s, "s")
        wide = torch.float64
        s64, t64, x64 = s.to(wide), t.to(wide), x.to(wide)
        r, r_safe = _safe_radius(x64)
        rho_star, J_r, J_s, J_t = self._solve(s64.detach(), t64.detach(), r_safe.detach())
        zero = r == 0
        rho = rho_star + J_r * (r - r.detach()) + J_s * (s64 - s64.detach()) + J_t * (t64 - t64.detach())
        log_c0 = 0.5 * (self._radial(s64, torch.zeros_like(r))[0] - self._radial(t64, torch.zeros_like(r))[0])
        c0 = torch.exp(log_c0.clamp_max(0.5 * math.log(torch.finfo(wide).max)))
        scale = torch.where(zero, c0, rho / r_safe)
        return (scale[:, None] * x64).to(x.dtype)

    def _solve(self, s, t, r):
        """(R*, dR/dr, dR/ds, dR/dt) in float64 without gradient; r > 0 (B,).

        R* solves G_t(R) = G_s(r) as the level equation of ``cdf_inversion`` (the rings split at the same
        inner set as at s) in v = log R: a level 1e-98 below a ring boundary c_k (a point 21 alpha_s
        outside the inner ring) is transported as such instead of being rounded onto c_k.
        """
        ip = self.interpolant
        R = self._params(r)[0]
        lev = self._level(s, r)
        upper = lev.log_F > LOG_HALF
        L = torch.where(upper, lev.log_S, lev.log_F)
        al, be = ip.alpha(t), ip.beta(t)
        singular = at_data_end(al, be)
        al_ = torch.where(singular, torch.ones_like(al), al)
        t_ = torch.where(singular, torch.zeros_like(t), t)  # placeholder time for the singular rows
        lo = torch.where(
            upper,
            torch.log(torch.maximum(be * R[0], 0.5 * al_)),
            torch.log(al_) + 0.5 * (math.log(2.0) + L),
        )
        hi = torch.log(be * R[-1] + al_ * torch.where(upper, torch.sqrt(-2.0 * L), torch.full_like(L, 1.2)))
        pad = 1e-10 * (1.0 + torch.maximum(lo.abs(), hi.abs()))
        # singular rows (alpha_t = 0) are answered below: an empty bracket ends their iteration at once
        lo, hi = torch.where(singular, torch.zeros_like(lo), lo - pad), torch.where(singular, torch.zeros_like(hi), hi + pad)

        def fun(v):
            rho = torch.exp(v)
            log_G, log_S = self._ring_log_cdf(t_, rho)
            f, log_df = level_residual(lev, log_G, log_S, self._ring_log_density(t_, rho))
            return f, torch.exp(v + log_df)  # d/dv = rho d/drho

        # tighten with the Gaussian picture of one ring (radius ~ N(beta R_j, alpha^2) when alpha is small,
        # j the ring whose share of the mass holds the level), kept only where f confirms it brackets the
        # root: saves the ~20 linearly converging steps from afar near t = 1
        j, q = self._ring_quantile(lev)
        rho_c = be * R[j] + al_ * q
        tiny = torch.finfo(r.dtype).tiny
        lo_c = torch.log((rho_c - 4.0 * al_).clamp_min(tiny))
        hi_c = torch.log((rho_c + 4.0 * al_).clamp_min(tiny))
        ok_lo = torch.isfinite(lo_c) & (lo_c > lo) & (lo_c < hi) & ~singular
        ok_hi = torch.isfinite(hi_c) & (hi_c > lo) & (hi_c < hi) & ~singular
        ok_lo = ok_lo & (fun(torch.where(ok_lo, lo_c, lo))[0] <= 0)
        ok_hi = ok_hi & (fun(torch.where(ok_hi, hi_c, hi))[0] >= 0)
        lo, hi = torch.where(ok_lo, lo_c, lo), torch.where(ok_hi, hi_c, hi)
        # f is a difference of logs each good to a few eps relative: noise below 16 eps (1 + |log D|)
        v, done = safeguarded_newton(fun, lo, hi, atol=4 * eps(r.dtype), ftol=16 * eps(r.dtype) * (1 + lev.scale))
        if value_checks_enabled() and not bool((done | singular).all()):
            raise RuntimeError(
                f"RingsFlow.flow_map: the radial CDF inversion did not converge for {int((~done).sum())} point(s); "
                "please report the inputs"
            )
        rho = torch.exp(v)
        log_p_s, b_s = self._radial(s, r)
        log_p_t, b_t = self._radial(t_, rho)
        big = torch.finfo(r.dtype).max
        J_r = torch.exp(torch.log(r) + log_p_s - v - log_p_t).clamp_max(big)
        J_s, J_t = (-b_s * J_r).clamp(-big, big), b_t
        if bool(singular.any()):
            # alpha_t = 0: the radius goes to ring j, the one whose share of the mass holds G_s(r); the
            # standardised position q within that share gives the limit dR/dt = beta' R_j + alpha' q
            rho = torch.where(singular, be * R[j], rho)
            J_t = torch.where(singular, ip.dbeta(t) * R[j] + ip.dalpha(t) * q, J_t)
            J_r = torch.where(singular, torch.zeros_like(J_r), J_r)
            J_s = torch.where(singular, torch.zeros_like(J_s), J_s)
        return rho, J_r, J_s, J_t

    def _ring_quantile(self, lev: CdfLevel) -> tuple[torch.Tensor, torch.Tensor]:
        """(j, q): the ring j whose share [c_{j-1}, c_j] of the radial mass holds the level G, and q = Phi^-1 of
        the level's position within that share (the standardised radius in ring j's Gaussian picture).

        When the level lies in the share of a ring next to its boundary c_k (D >= 0: ring k + 1 from below,
        fraction D / pi_{k+1}; D < 0: ring k from above, fraction |D| / pi_k) the fraction comes from D in log
        space at full relative accuracy; elsewhere (overlapping rings, far from a boundary) from G itself."""
        _, log_pi, w = self._params(lev.log_D)
        J = len(w)
        cum = torch.cumsum(w, 0)
        u = torch.where(lev.log_F > LOG_HALF, -torch.expm1(lev.log_S), torch.exp(lev.log_F))  # G
        j = torch.searchsorted(cum, u[:, None]).clamp_max(J - 1)[:, 0]
        below = torch.where(j > 0, cum[(j - 1).clamp_min(0)], torch.zeros_like(u))
        log_frac = torch.log((u - below).clamp_min(0.0)) - log_pi[j]
        k = lev.inner.sum(-1)
        j_up, j_down = k.clamp_max(J - 1), (k - 1).clamp_min(0)
        from_below = lev.positive & (k < J) & (lev.log_D <= log_pi[j_up])
        from_above = ~lev.positive & (k > 0) & (lev.log_D <= log_pi[j_down])
        j = torch.where(from_below, j_up, torch.where(from_above, j_down, j))
        lf_above = lev.log_D - log_pi[j_down]
        lf_below = torch.where(from_below, lev.log_D - log_pi[j_up],
                               torch.where(from_above, log1mexp(lf_above.clamp_max(0.0)), log_frac)).clamp_max(0.0)
        lf_above = torch.where(from_above, lf_above, log1mexp(lf_below)).clamp_max(0.0)
        # a level exactly on a boundary (fraction 0) would give q = -inf: clamp to the smallest normal fraction
        floor = math.log(torch.finfo(lev.log_D.dtype).tiny)
        lf_below, lf_above = lf_below.clamp_min(floor), lf_above.clamp_min(floor)
        q = torch.where(lf_below <= LOG_HALF, ndtri_exp(lf_below.clamp_max(LOG_HALF)),
                        -ndtri_exp(lf_above.clamp_max(LOG_HALF)))
        return j, q

    def _sample_data(self, n, generator, dtype, device):
        j = torch.multinomial(self._w.to(device=device), n, replacement=True, generator=generator)
        theta = 2 * math.pi * torch.rand(n, dtype=dtype, device=device, generator=generator)
        R = self._R.to(dtype=dtype, device=device)[j]
        return torch.stack([R * torch.cos(theta), R * torch.sin(theta)], -1)

    def __repr__(self) -> str:
        return f"RingsFlow(radii={self.radii.tolist()}, weights={self.weights.tolist()}, interpolant={self.interpolant.name!r})"


__all__ = ["RingsFlow", "rice_log_cdf"]
