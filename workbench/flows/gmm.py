"""Data = a Gaussian mixture sum_k pi_k N(mu_k, Sigma_k): closed-form velocity, ODE flow map.

Derivation in docs/flows_analytic.md 2.3. With C_k(t) = alpha_t^2 I + beta_t^2 Sigma_k:

    p_t(x)   = sum_k pi_k N(x; beta_t mu_k, C_k(t))
    r_k(t,x) = pi_k N(x; beta_t mu_k, C_k) / p_t(x)                   (softmax of the log terms)
    b_t(x)   = sum_k r_k [beta'_t mu_k + (alpha alpha' I + beta beta' Sigma_k) C_k^{-1} (x - beta mu_k)]
    D_t(x)   = E[x1 | I_t = x] = sum_k r_k [mu_k + beta Sigma_k C_k^{-1} (x - beta mu_k)]
    s_t(x)   = grad log p_t(x) = -sum_k r_k C_k^{-1} (x - beta mu_k)

(exact: given the component k, (x0, x1, I_t) is jointly Gaussian). Every C_k is diagonal in the
eigenbasis of Sigma_k = U_k diag(lam_k) U_k^T, with eigenvalues c_ki = alpha^2 + beta^2 lam_ki, so
C_k^{-1} and log det C_k are exact and cheap. Components with Sigma_k = 0 (or any zero eigenvalue)
are atoms in those directions: ``singular_at_data`` is then True and t = 1 is excluded.

The flow map has no closed form; it is the float64 ODE oracle of :mod:`workbench.flows.ode`
(Dormand-Prince 5(4), every sample held to rtol/atol). Velocity, denoiser, score and log_prob are
computed in the dtype of the input; ``flow_map`` always integrates in float64 and casts the result
back to the input dtype and device.
"""

from __future__ import annotations

import math

import torch

from ..core.times import broadcast_time, expand_as_state
from ..core.validation import check_probability_vector, check_state
from .base import AnalyticFlow, as_param
from .ode import ODESolution, check_tolerances, default_tolerances, solve_flow

#: eigenvalues below this multiple of the covariance scale are set to exactly zero (atoms).
ZERO_EIG_REL = 1e-12


class GaussianMixtureFlow(AnalyticFlow):
    """Probability flow from N(0, I) to sum_k weights[k] N(means[k], covs[k]).

    weights (K,) non-negative, summing to 1; means (K, d); covs (K, d, d) symmetric positive
    semi-definite (zero matrices give atoms). rtol, atol: tolerances of the float64 ODE oracle
    used by ``flow_map`` (default :func:`workbench.flows.ode.default_tolerances` of float64).
    """

    def __init__(
        self,
        weights: object,
        means: object,
        covs: object,
        *,
        interpolant: object = None,
        rtol: float | None = None,
        atol: float | None = None,
    ) -> None:
        w = check_probability_vector(as_param(weights, "weights", ndim=1), "weights")
        mu = as_param(means, "means", ndim=2)
        S = as_param(covs, "covs", ndim=3)
        K = w.numel()
        if mu.shape[0] != K or mu.shape[1] == 0:
            raise ValueError(f"means must have shape ({K}, dim) to match weights of length {K}, got {tuple(mu.shape)}")
        d = mu.shape[1]
        if S.shape != (K, d, d):
            raise ValueError(f"covs must have shape ({K}, {d}, {d}) to match means, got {tuple(S.shape)}")
        scale = max(float(S.abs().max()), 1.0)
        asym = (S - S.transpose(1, 2)).abs().amax(dim=(1, 2))
        if bool((asym > 1e-12 * scale).any()):
            k = int(asym.argmax())
            raise ValueError(f"covs[{k}] must be symmetric; symmetrise with (c + c.T) / 2")
        lam, U = torch.linalg.eigh(0.5 * (S + S.transpose(1, 2)))
        if bool((lam < -ZERO_EIG_REL * scale).any()):
            k = int(lam.amin(dim=1).argmin())
            raise ValueError(
                f"covs[{k}] must be positive semi-definite, got smallest eigenvalue {float(lam[k].min())!r}"
            )
        lam = torch.where(lam.abs() <= ZERO_EIG_REL * scale, torch.zeros_like(lam), lam)
        super().__init__(d, interpolant)
        self.weights, self.means, self.covs = w / w.sum(), mu, S
        self.n_components = K
        keep = self.weights > 0  # zero-weight components never contribute
        self._logw = torch.log(self.weights[keep])
        self._mu, self._lam, self._U = mu[keep], lam[keep], U[keep]
        self._muU = torch.einsum("kd,kde->ke", self._mu, self._U)  # U_k^T mu_k
        self.singular_at_data = bool((self._lam == 0).any())
        d_rtol, d_atol = default_tolerances(torch.float64)
        self.rtol = d_rtol if rtol is None else rtol
        self.atol = d_atol if atol is None else atol
        check_tolerances(self.rtol, self.atol, torch.float64)  # fail here, not at the first flow_map

    # -- the posterior over components ------------------------------------------------------------
    def _params(self, x: torch.Tensor):
        """(log pi, mu, lam, U_in, U_out, U^T mu) in x's dtype/device; U_in (d, K d), U_out (K d, d) are
        the eigenbases stacked so that rotations into and out of every eigenframe are one matmul."""

        def make():
            K, d = self._lam.shape
            U_in = self._U.permute(1, 0, 2).reshape(d, K * d)  # (x @ U_in)[b, (k, e)] = (U_k^T x)_e
            U_out = self._U.transpose(1, 2).reshape(K * d, d)  # (g @ U_out)[b] = sum_k U_k g_k
            return (self._logw, self._mu, self._lam, U_in, U_out, self._muU)

        return self._cast("gmm", make, x)

    def _parts(self, t: torch.Tensor, x: torch.Tensor):
        """y_k = U_k^T (x - beta mu_k) and c_k (B, K, d); log pi_k + log N_k + (d/2) log 2pi (B, K)."""
        logw, _, lam, U_in, _, muU = self._params(x)
        ip = self.interpolant
        al, be = ip.alpha(t)[:, None, None], ip.beta(t)[:, None, None]
        c = torch.addcmul(al * al, be * be, lam)  # alpha^2 + beta^2 lam
        y = torch.addcmul((x @ U_in).view(c.shape), be, muU, value=-1.0)
        logits = logw - 0.5 * (torch.log(c) + y * y / c).sum(-1)
        return y, c, logits

    def _posterior(self, t, x):
        y, c, logits = self._parts(t, x)
        return y, c, torch.softmax(logits, dim=-1)

    @staticmethod
    def _mix(r: torch.Tensor, g: torch.Tensor, U_out: torch.Tensor) -> torch.Tensor:
        """sum_k r_k U_k g_k for g (B, K, d) in the eigenframes; shape (B, d)."""
        return (r[..., None] * g).flatten(1) @ U_out

    # -- closed forms -----------------------------------------------------------------------------
    def _velocity(self, t, x):
        _, mu, lam, _, U_out, _ = self._params(x)
        ip = self.interpolant
        y, c, r = self._posterior(t, x)
        gain = torch.addcmul(ip.alpha_dalpha(t)[:, None, None], ip.beta_dbeta(t)[:, None, None], lam) / c
        return expand_as_state(ip.dbeta(t), x) * (r @ mu) + self._mix(r, gain * y, U_out)

    def _log_prob(self, t, x):
        _, _, logits = self._parts(t, x)
        return torch.logsumexp(logits, dim=-1) - 0.5 * self.dim * math.log(2 * math.pi)

    def _checked(self, t: object, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = check_state(x, self.dim)
        tb = broadcast_time(t, x, "t")
        self._check_regular(tb, "t")
        return tb, x

    def posterior_weights(self, t: object, x: torch.Tensor) -> torch.Tensor:
        """r_k(t, x) = P(component k | I_t = x), shape (batch, K') over the components of positive weight."""
        tb, x = self._checked(t, x)
        return self._posterior(tb, x)[2]

    def denoiser(self, t: object, x: torch.Tensor) -> torch.Tensor:
        """D_t(x) = E[x1 | I_t = x] = sum_k r_k (mu_k + beta Sigma_k C_k^{-1} (x - beta mu_k)); (batch, dim)."""
        tb, x = self._checked(t, x)
        _, mu, lam, _, U_out, _ = self._params(x)
        y, c, r = self._posterior(tb, x)
        be = self.interpolant.beta(tb)[:, None, None]
        return r @ mu + self._mix(r, be * lam / c * y, U_out)

    def score(self, t: object, x: torch.Tensor) -> torch.Tensor:
        """s_t(x) = grad log p_t(x) = -sum_k r_k C_k^{-1} (x - beta mu_k); (batch, dim)."""
        tb, x = self._checked(t, x)
        U_out = self._params(x)[4]
        y, c, r = self._posterior(tb, x)
        return -self._mix(r, y / c, U_out)

    # -- the ODE oracle ---------------------------------------------------------------------------
    def _flow_map(self, s, t, x):
        if bool((s == t).all()):
            # Zero-length map: X = x exactly, written as x + (t - s) b_s(x) so that derivatives taken
            # at the diagonal (torch.func.jvp) are the exact first-order ones: d_t X = b_s, d_s X = -b_s.
            return x + (t - s)[:, None] * self._velocity(s, x)
        return self.flow_solution(s, t, x).x

    def flow_solution(
        self,
        s: object,
        t: object,
        x: torch.Tensor,
        *,
        jacobian: bool = False,
        rtol: float | None = None,
        atol: float | None = None,
    ) -> ODESolution:
        """X_{s,t}(x) (and grad X_{s,t}(x) if ``jacobian``) by the float64 ODE oracle, with its stats.

        Integrates dX/du = b_u(X) (and dJ/du = grad b_u(X) J) in float64 at (rtol, atol) (default:
        the constructor's); x and J come back in x's dtype and on its device. t = 1 is refused
        when the data has atoms (X_{s,1} is piecewise constant there).
        """
        x = check_state(x, self.dim)
        sb, tb = broadcast_time(s, x, "s"), broadcast_time(t, x, "t")
        self._check_regular(sb, "s")
        self._check_regular(tb, "t")
        sol = solve_flow(
            self._velocity,
            sb.to(torch.float64),
            tb.to(torch.float64),
            x.to(torch.float64),
            rtol=self.rtol if rtol is None else rtol,
            atol=self.atol if atol is None else atol,
            jacobian=jacobian,
        )
        jac = None if sol.jacobian is None else sol.jacobian.to(x.dtype)
        return ODESolution(x=sol.x.to(x.dtype), jacobian=jac, stats=sol.stats)

    def flow_map_with_tolerance(
        self, s: object, t: object, x: torch.Tensor, *, rtol: float, atol: float
    ) -> torch.Tensor:
        """X_{s,t}(x) by the float64 ODE oracle at the given (rtol, atol); shape and dtype of x."""
        return self.flow_solution(s, t, x, rtol=rtol, atol=atol).x

    def flow_jacobian(self, s: object, t: object, x: torch.Tensor) -> torch.Tensor:
        """grad X_{s,t}(x) by the variational equation dJ/du = grad b_u(X) J, J_s = I; (batch, dim, dim)."""
        return self.flow_solution(s, t, x, jacobian=True).jacobian

    # -- sampling ---------------------------------------------------------------------------------
    def _sample_data(self, n, generator, dtype, device):
        """n samples of the mixture, shape (n, dim): k ~ Categorical(weights), x1 = mu_k + U_k sqrt(lam_k) z."""
        w = torch.exp(self._logw).to(device=device)
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=dtype, device=device, generator=generator)
        mu = self._mu.to(dtype=dtype, device=device)[k]
        U = self._U.to(dtype=dtype, device=device)[k]
        lam = self._lam.to(dtype=dtype, device=device)[k]
        return mu + torch.einsum("nde,ne->nd", U, lam.sqrt() * z)

    def __repr__(self) -> str:
        return (
            f"GaussianMixtureFlow(K={self.n_components}, dim={self.dim}, "
            f"interpolant={self.interpolant.name!r}, rtol={self.rtol}, atol={self.atol})"
        )
