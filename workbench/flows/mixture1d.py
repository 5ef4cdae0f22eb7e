"""Data = a 1-D Gaussian mixture sum_k pi_k N(mu_k, sigma_k^2): closed-form flow map F_t^{-1}(F_s(x)).

Derivation in docs/flows_analytic.md 2.4. With m_k = beta_t mu_k, s_k(t) = sqrt(alpha_t^2 + beta_t^2 sigma_k^2)
and z_k = (x - m_k) / s_k:

    F_t(x) = sum_k pi_k Phi(z_k),        p_t(x) = sum_k pi_k phi(z_k) / s_k
    b_t(x) = sum_k r_k [beta'_t mu_k + gamma_k (x - beta_t mu_k)],   gamma_k = (alpha alpha' + beta beta' sigma_k^2) / s_k^2
    X_{s,t}(x) = F_t^{-1}(F_s(x))                                    (1-D trajectories cannot cross)

with posterior weights r_k = pi_k phi(z_k) / (s_k p_t(x)) (the Gaussian-mixture velocity with isotropic
components).
The inverse transports the level F_s(x) as an offset from the component boundary next to it
(``cdf_inversion.cdf_level``: the components whose median lies below x count as inner, and the
offset is their mass above x against the others' mass below x, each a log-space tail), so neither
the far tails nor the gaps between narrow components lose the level to rounding; levels below
exp(-1e306) are refused (ValueError). The root is bracketed by
[min_k (m_k + s_k q), max_k (m_k + s_k q)], q = Phi^{-1}(u) (F_t is a convex combination of the
component CDFs), and found by a vectorised safeguarded Newton iteration (Newton with bisection
fallback, ``safeguarded_newton``) in float64, to about one ulp.

Derivatives: the root y* is found without gradient; the returned value is
y = y* + [dL_s(x) - dL_t(y*)] / L'_t(y*) where dL = L - L.detach() is zero-valued, so the value is the
float64 root and the first derivatives (autograd and ``torch.func.jvp``, in s, t and x) are exactly the
implicit-function ones: dX/dx = p_s(x) / p_t(X), dX/dt = b_t(X), dX/ds = -p_s(x) b_s(x) / p_t(X).
Second derivatives are not exact.

Zero stds are atoms: then ``singular_at_data`` is True (t = 1 is singular for velocity/log_prob and as
a start time); X_{s,1} is still defined (it sends intervals onto the atoms, derivative 0 in x there).
``flow_map`` runs in float64 internally and returns the input dtype; under ``torch.func.vmap`` (with
``value_checks_disabled``) the root finder runs a fixed number of steps.
"""

from __future__ import annotations

import math

import torch

from ..core.times import broadcast_time
from ..core.tolerances import eps
from ..core.validation import check_probability_vector, check_state, value_checks_enabled
from .base import AnalyticFlow, as_param, check_not_data_end
from .cdf_inversion import (
    LOG_HALF,
    cdf_level,
    check_level_resolved,
    level_residual,
    log1mexp,
    ndtri_exp,
    safeguarded_newton,
)

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for half precision (torch has no log_ndtr below float32; the result is cast back)."""
    return torch.float64 if dtype in (torch.float16, torch.bfloat16) else dtype


class Mixture1DFlow(AnalyticFlow):
    """Probability flow from N(0, 1) to sum_k weights[k] N(means[k], stds[k]^2) in one dimension.

    weights (K,) non-negative summing to 1; means (K,); stds (K,) >= 0 (0 gives an atom).
    States x have shape (batch, 1).
    """

    def __init__(self, weights: object, means: object, stds: object, *, interpolant: object = None) -> None:
        w = check_probability_vector(as_param(weights, "weights", ndim=1), "weights")
        mu = as_param(means, "means", ndim=1)
        sd = as_param(stds, "stds", ndim=1)
        K = w.numel()
        if mu.numel() != K or sd.numel() != K:
            raise ValueError(
                f"weights, means and stds must have the same length, got {K}, {mu.numel()} and {sd.numel()}"
            )
        if bool((sd < 0).any()):
            raise ValueError(f"stds must be >= 0 (0 gives an atom), got {sd.tolist()}")
        super().__init__(1, interpolant)
        keep = w > 0
        self.weights, self.means, self.stds = w, mu, sd
        self._w, self._mu, self._sd = w[keep] / w[keep].sum(), mu[keep], sd[keep]
        self.singular_at_data = bool((self._sd == 0).any())

    # -- marginal pieces ------------------------------------------------------------------------
    def _params(self, like: torch.Tensor):
        return self._cast("pms", lambda: (self._w.log(), self._mu, self._sd), like)

    def _components(self, t: torch.Tensor, like: torch.Tensor):
        """(log pi (K,), m_k (B, K), s_k (B, K)); s_k floored at sqrt(tiny) so atoms at alpha = 0 stay finite."""
        log_pi, mu, sd = self._params(like)
        ip, te = self.interpolant, t[:, None]
        var = ip.alpha(te) ** 2 + ip.beta(te) ** 2 * sd**2
        return log_pi, ip.beta(te) * mu, torch.sqrt(var.clamp_min(torch.finfo(like.dtype).tiny))

    def _component_terms(self, t: torch.Tensor, y: torch.Tensor):
        """(log pi_k F_k(y), log pi_k S_k(y), log pi_k p_k(y), z_k) per component, each (B, K), y (B,)."""
        log_pi, m, s = self._components(t, y)
        z = (y[:, None] - m) / s
        return (log_pi + torch.special.log_ndtr(z), log_pi + torch.special.log_ndtr(-z),
                log_pi - 0.5 * z * z - _LOG_SQRT_2PI - torch.log(s), z)

    def _log_cdf_sf_pdf(self, t: torch.Tensor, y: torch.Tensor):
        """(log F_t(y), log S_t(y), log p_t(y)) for y of shape (B,)."""
        log_F, log_S, log_p, _ = self._component_terms(t, y)
        return torch.logsumexp(log_F, -1), torch.logsumexp(log_S, -1), torch.logsumexp(log_p, -1)

    def log_cdf(self, t: object, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log F_t(x), log S_t(x)) with S = 1 - F, each of shape (batch,); x (batch, 1)."""
        x = check_state(x, 1)
        tb = broadcast_time(t, x, "t")
        wide = _working_dtype(x.dtype)
        log_F, log_S, _ = self._log_cdf_sf_pdf(tb.to(wide), x[:, 0].to(wide))
        return log_F.to(x.dtype), log_S.to(x.dtype)

    # -- contract -------------------------------------------------------------------------------
    def _velocity(self, t, x):
        log_pi, mu, sd = self._params(x)
        ip, te = self.interpolant, t[:, None]
        _, m, s = self._components(t, x)
        z = (x - m) / s
        r = torch.softmax(log_pi - 0.5 * z * z - torch.log(s), -1)
        gamma = (ip.alpha_dalpha(te) + ip.beta_dbeta(te) * sd**2) / s**2
        b_k = ip.dbeta(te) * mu + gamma * (x - m)
        return (r * b_k).sum(-1, keepdim=True)

    def _log_prob(self, t, x):
        wide = _working_dtype(x.dtype)
        return self._log_cdf_sf_pdf(t.to(wide), x[:, 0].to(wide))[2].to(x.dtype)

    def _flow_map(self, s, t, x):
        check_not_data_end(self, s, "s")
        # float64 throughout (the root and the zero-valued correction), cast back at the end
        wide = torch.float64
        s64, t64, x64 = s.to(wide), t.to(wide), x[:, 0].to(wide)
        y_star = self._solve(s64.detach(), t64.detach(), x64.detach())
        log_F_s, log_S_s, _ = self._log_cdf_sf_pdf(s64, x64)
        upper = log_F_s.detach() > LOG_HALF
        log_F_t, log_S_t, log_p_t = self._log_cdf_sf_pdf(t64, y_star)
        L_s = torch.where(upper, log_S_s, log_F_s)
        L_t = torch.where(upper, log_S_t, log_F_t)
        # |L'_t(y*)| = p/F or p/S, floored so that a density below range (an atom at t = 1) cannot give 0/0
        tiny = torch.finfo(wide).tiny
        dL = torch.where(
            upper, -torch.exp(log_p_t - log_S_t).clamp_min(tiny), torch.exp(log_p_t - log_F_t).clamp_min(tiny)
        ).detach()
        y = y_star + ((L_s - L_s.detach()) - (L_t - L_t.detach())) / dL
        return y.to(x.dtype)[:, None]

    def _solve(self, s: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The root y* of F_t(y) = F_s(x) in float64 (no gradient), with the level F_s(x) split at the
        components whose median lies below x (``cdf_inversion.cdf_level``: no cancellation between
        well-separated components)."""
        log_F_k, log_S_k, _, z = self._component_terms(s, x)
        log_pi = self._params(x)[0]
        level = cdf_level(log_F_k, log_S_k, log_pi, z > 0)
        check_level_resolved(level, "Mixture1DFlow", "|x| more than ~1e153 component widths from every component")
        upper = level.log_F > LOG_HALF
        target = torch.where(upper, level.log_S, level.log_F)
        sign = torch.where(upper, -1.0, 1.0).to(x.dtype)
        q = sign * ndtri_exp(target.clamp_max(LOG_HALF))
        _, m, sd = self._components(t, x)
        ends = m + sd * q[:, None]
        lo, hi = ends.min(-1).values, ends.max(-1).values
        scale = sd.min(-1).values
        pad = 16 * eps(x.dtype) * (lo.abs() + hi.abs() + scale)
        lo, hi = lo - pad, hi + pad

        def fun(y):
            F_k, S_k, p_k, _ = self._component_terms(t, y)
            f, log_df = level_residual(level, F_k, S_k, p_k)
            return f, torch.exp(log_df)

        # f is a difference of logs, each good to a few eps of its magnitude: noise below 16 eps (1 + |log D|)
        ftol = 16 * eps(x.dtype) * (1 + level.scale)
        y, done = safeguarded_newton(fun, lo, hi, atol=eps(x.dtype) * scale, ftol=ftol)
        if value_checks_enabled() and not bool(done.all()):
            raise RuntimeError(
                f"Mixture1DFlow.flow_map: the CDF inversion did not converge for {int((~done).sum())} point(s); "
                "please report the inputs"
            )
        return y

    def _sample_data(self, n, generator, dtype, device):
        k = torch.multinomial(self._w.to(device=device), n, replacement=True, generator=generator)
        z = torch.randn(n, dtype=dtype, device=device, generator=generator)
        mu, sd = self._mu.to(dtype=dtype, device=device), self._sd.to(dtype=dtype, device=device)
        return (mu[k] + sd[k] * z)[:, None]

    def __repr__(self) -> str:
        return (
            f"Mixture1DFlow(weights={self.weights.tolist()}, means={self.means.tolist()}, "
            f"stds={self.stds.tolist()}, interpolant={self.interpolant.name!r})"
        )


__all__ = ["Mixture1DFlow", "log1mexp", "ndtri_exp", "safeguarded_newton"]
