"""GaussianMixtureFlow against independent computations.

The reference here is written separately from the library: a numpy mixture that inverts each
C_k = alpha^2 I + beta^2 Sigma_k with ``np.linalg.inv`` / ``slogdet`` (the library uses the eigen-
decomposition of Sigma_k) and its own copy of the schedules. Its velocity is integrated by scipy's
DOP853 at rtol = atol = 1e-13 as the flow-map ground truth. Further checks: a one-component mixture
equals the closed-form GaussianFlow; Tweedie and the continuity equation through autograd of
log_prob; semigroup and inverse; the variational Jacobian against finite differences and the
change of variables p_t(X) det grad X = p_s(x) (derivations in docs/flows_analytic.md, sections 1, 2.3, 3).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

from workbench.core import fd_step, fd_tol, rel_err, ulps
from workbench.flows import GaussianFlow, LinearInterpolant, PointMassFlow, TrigInterpolant
from workbench.flows.gmm import GaussianMixtureFlow
from workbench.flows.ode import ODESolution

F64 = torch.float64
MAP_TOL = 1e-9  # promised accuracy of the oracle at its default tolerance (relative)
CLOSED_TOL = ulps(F64, 2e4)  # closed forms vs the numpy reference (~4e-12; softmax/inverse rounding)
HI_ATOMS = 1 - 1e-6  # atoms are singular at t = 1; stop here (docs/flows_analytic.md section 3)


# -- an independent numpy mixture ------------------------------------------------------------------
def schedule(name: str, u: float) -> tuple[float, float, float, float]:
    """(alpha, beta, alpha', beta') written out again for the reference."""
    if name == "linear":
        return 1.0 - u, u, -1.0, 1.0
    h = 0.5 * math.pi
    return math.cos(h * u), math.sin(h * u), -h * math.sin(h * u), h * math.cos(h * u)


class NumpyMixture:
    def __init__(self, weights, means, covs, interpolant: str):
        self.w, self.mu, self.S = (np.asarray(a, dtype=float) for a in (weights, means, covs))
        self.name = interpolant
        self.d = self.mu.shape[1]

    def _terms(self, u: float, x: np.ndarray):
        al, be, dal, dbe = schedule(self.name, u)
        eye = np.eye(self.d)
        logits, drift, post_mean, neg_score = [], [], [], []
        for w, mu, S in zip(self.w, self.mu, self.S):
            C = al**2 * eye + be**2 * S
            Ci = np.linalg.inv(C)
            diff = x - be * mu  # (B, d)
            sol = diff @ Ci.T  # C^{-1}(x - beta mu), C symmetric
            logdet = np.linalg.slogdet(C)[1]
            logits.append(np.log(w) - 0.5 * (self.d * math.log(2 * math.pi) + logdet + (diff * sol).sum(1)))
            drift.append(dbe * mu + sol @ (al * dal * eye + be * dbe * S).T)
            post_mean.append(mu + be * sol @ S.T)
            neg_score.append(sol)
        logits = np.stack(logits, 1)
        top = logits.max(1, keepdims=True)
        logp = top[:, 0] + np.log(np.exp(logits - top).sum(1))
        r = np.exp(logits - logp[:, None])
        mix = lambda parts: np.einsum("bk,kbd->bd", r, np.stack(parts))
        return logp, mix(drift), mix(post_mean), -mix(neg_score)

    def velocity(self, u, x):
        return self._terms(u, x)[1]

    def flow_map(self, s: float, t: float, x: np.ndarray) -> np.ndarray:
        """scipy DOP853 at rtol = atol = 1e-13 on the flattened batch (all points share s, t)."""
        if s == t:
            return x.copy()
        B = x.shape[0]
        rhs = lambda u, y: self.velocity(u, y.reshape(B, self.d)).ravel()
        sol = solve_ivp(rhs, (s, t), x.ravel(), method="DOP853", rtol=1e-13, atol=1e-13)
        assert sol.success
        return sol.y[:, -1].reshape(B, self.d)


# -- test mixtures -----------------------------------------------------------------------------------
def k3(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(3, 2, 2, generator=g, dtype=F64)
    covs = 0.3 * A @ A.transpose(1, 2) + 0.02 * torch.eye(2, dtype=F64)
    means = 1.5 * torch.randn(3, 2, generator=g, dtype=F64)
    return torch.tensor([0.2, 0.3, 0.5], dtype=F64), means, covs


def ring(n: int = 8, radius: float = 2.0, sd: float = 0.05):
    ang = torch.arange(n, dtype=F64) * 2 * math.pi / n
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return torch.full((n,), 1.0 / n, dtype=F64), means, sd**2 * torch.eye(2, dtype=F64).expand(n, 2, 2).clone()


def atoms():
    means = torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]], dtype=F64)
    return torch.tensor([0.25, 0.25, 0.5], dtype=F64), means, torch.zeros(3, 2, 2, dtype=F64)


CASES = {"K3": k3, "ring": ring, "atoms": atoms}
PAIRS = {  # (s, t): forward, backward, and to / from the data end
    "regular": [(0.0, 1.0), (1.0, 0.0), (0.05, 0.99), (0.8, 0.3)],
    "atoms": [(0.0, HI_ATOMS), (0.4, HI_ATOMS), (0.9, 0.01), (0.8, 0.3)],
}


def make(case: str, interpolant: str, **kw):
    w, m, c = CASES[case]()
    return GaussianMixtureFlow(w, m, c, interpolant=interpolant, **kw), NumpyMixture(w, m, c, interpolant)


def batch_for(flow, pairs, n_on: int, n_off: int, seed: int):
    """Per-sample (s, t) and x: n_on samples of p_s and n_off points from [-3, 3]^2 per pair."""
    g = torch.Generator().manual_seed(seed)
    s, t, x = [], [], []
    for s0, t0 in pairs:
        on = flow.sample_marginal(s0, n_on, generator=g)
        off = 6 * torch.rand(n_off, flow.dim, generator=g, dtype=F64) - 3
        x.append(torch.cat([on, off]))
        s.append(torch.full((n_on + n_off,), s0, dtype=F64))
        t.append(torch.full((n_on + n_off,), t0, dtype=F64))
    return torch.cat(s), torch.cat(t), torch.cat(x)


# -- the oracle against scipy -----------------------------------------------------------------------
@pytest.mark.parametrize("interpolant", ["linear", "trig"])
@pytest.mark.parametrize("case", ["K3", "ring", "atoms"])
def test_flow_map_matches_scipy_dop853(case, interpolant):
    flow, ref = make(case, interpolant)
    pairs = PAIRS["atoms" if case == "atoms" else "regular"]
    n_on, n_off = 6, 2
    s, t, x = batch_for(flow, pairs, n_on, n_off, seed=1)
    sol = flow.flow_solution(s, t, x)  # all pairs in one batch: per-sample times
    n = n_on + n_off
    expected = torch.cat(
        [torch.from_numpy(ref.flow_map(s0, t0, x[i * n : (i + 1) * n].numpy())) for i, (s0, t0) in enumerate(pairs)]
    )
    err = rel_err(sol.x, expected)
    assert float(err.max()) <= MAP_TOL, err.reshape(len(pairs), n).amax(1)
    assert sol.stats.n_steps > 0


@pytest.mark.parametrize("interpolant", [LinearInterpolant(), TrigInterpolant()])
def test_one_component_equals_gaussian_flow(interpolant):
    mean = torch.tensor([1.0, -1.0], dtype=F64)
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=F64)
    gmm = GaussianMixtureFlow([1.0], mean[None], cov[None], interpolant=interpolant)
    gauss = GaussianFlow(mean, cov, interpolant=interpolant)
    s, t, x = batch_for(gauss, PAIRS["regular"], 6, 2, seed=2)
    assert float(rel_err(gmm.velocity(t, x), gauss.velocity(t, x)).max()) <= ulps(F64, 64)
    assert torch.allclose(gmm.log_prob(t, x), gauss.log_prob(t, x), rtol=ulps(F64, 64), atol=0)
    sol = gmm.flow_solution(s, t, x, jacobian=True)
    assert float(rel_err(sol.x, gauss.flow_map(s, t, x)).max()) <= MAP_TOL
    assert float(rel_err(sol.jacobian, gauss.flow_jacobian(s, t, x)).max()) <= MAP_TOL


@pytest.mark.parametrize("interpolant", ["linear", "trig"])
def test_one_atom_equals_point_mass_flow(interpolant):
    """Sigma = 0 in 3-D: the closed-form PointMassFlow, up to t = 1 - 1e-6 (pole at t = 1)."""
    a = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    gmm = GaussianMixtureFlow([1.0], a[None], torch.zeros(1, 3, 3), interpolant=interpolant)
    pm = PointMassFlow(a, interpolant=interpolant)
    g = torch.Generator().manual_seed(12)
    s = 0.99 * torch.rand(32, generator=g, dtype=F64)
    t = HI_ATOMS * torch.rand(32, generator=g, dtype=F64)
    t[:8] = HI_ATOMS
    x = pm.sample_marginal(s, 32, generator=g)
    assert gmm.singular_at_data
    assert float(rel_err(gmm.velocity(t, x), pm.velocity(t, x)).max()) <= CLOSED_TOL
    assert float(rel_err(gmm.flow_map(s, t, x), pm.flow_map(s, t, x)).max()) <= MAP_TOL


# -- closed forms against the numpy reference --------------------------------------------------------
@pytest.mark.parametrize("interpolant", ["linear", "trig"])
@pytest.mark.parametrize("case", ["K3", "ring", "atoms"])
def test_closed_forms_match_independent_numpy(case, interpolant):
    flow, ref = make(case, interpolant)
    hi = HI_ATOMS if flow.singular_at_data else 1.0
    g = torch.Generator().manual_seed(3)
    for u in (0.0, 1e-3, 0.37, 0.9, 0.999, hi):
        x = torch.cat([flow.sample_marginal(u, 8, generator=g), 6 * torch.rand(4, 2, generator=g, dtype=F64) - 3])
        logp, b, D, score = (torch.from_numpy(a) for a in ref._terms(u, x.numpy()))
        # atoms: x - beta mu_k is a cancellation of size alpha_u on the data, so both computations
        # carry a relative rounding error of about eps |x| / alpha_u (conditioning, not a bug)
        alpha = schedule(interpolant, u)[0]
        tol = CLOSED_TOL
        if flow.singular_at_data:
            tol = torch.clamp(ulps(F64, 16) * (1 + x.norm(dim=1)) / alpha, min=CLOSED_TOL)
        assert bool((rel_err(flow.velocity(u, x), b) <= tol).all()), u
        assert bool((rel_err(flow.denoiser(u, x), D) <= tol).all()), u
        assert bool((rel_err(flow.score(u, x), score) <= tol).all()), u
        assert bool(((flow.log_prob(u, x) - logp).abs() / (1 + logp.abs()) <= tol).all()), u


@given(
    u=st.floats(0.0, 1.0),
    xy=st.lists(st.floats(-4.0, 4.0), min_size=2, max_size=2),
    interpolant=st.sampled_from(["linear", "trig"]),
)
def test_velocity_matches_numpy_property(u, xy, interpolant):
    flow, ref = make("K3", interpolant)
    x = torch.tensor([xy], dtype=F64)
    assert float(rel_err(flow.velocity(u, x), torch.from_numpy(ref.velocity(u, x.numpy()))).max()) <= CLOSED_TOL


# -- identities by autograd ---------------------------------------------------------------------------
def _grad_log_prob(flow, t, x):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(flow.log_prob(t, x).sum(), x)
    return g


@pytest.mark.parametrize("interpolant", ["linear", "trig"])
@pytest.mark.parametrize("case", ["K3", "ring", "atoms"])
def test_tweedie_velocity_from_score(case, interpolant):
    """b = (beta'/beta) x + (alpha^2 beta'/beta - alpha alpha') grad log p_t  (T2 of docs/flows_analytic.md), t >= 1e-3."""
    flow, _ = make(case, interpolant)
    ip = flow.interpolant
    hi = HI_ATOMS if flow.singular_at_data else 1.0
    g = torch.Generator().manual_seed(4)
    t = torch.cat([torch.tensor([1e-3, hi], dtype=F64), 1e-3 + (hi - 1e-3) * torch.rand(30, generator=g, dtype=F64)])
    x = torch.cat([flow.sample_marginal(t[:24], 24, generator=g), 6 * torch.rand(8, 2, generator=g, dtype=F64) - 3])
    score = _grad_log_prob(flow, t, x)
    al, be, dal, dbe = (f(t)[:, None] for f in (ip.alpha, ip.beta, ip.dalpha, ip.dbeta))
    tweedie = (dbe / be) * x + (al**2 * dbe / be - al * dal) * score
    # the two terms are each ~1/t = 1e3 times |x| at t = 1e-3 and cancel: scale the bound by that
    scale = 1 + ((dbe / be) * x).norm(dim=1)
    err = (flow.velocity(t, x) - tweedie).norm(dim=1) / scale
    assert float(err.max()) <= CLOSED_TOL


@pytest.mark.parametrize("interpolant", ["linear", "trig"])
@pytest.mark.parametrize("case", ["K3", "ring", "atoms"])
def test_continuity_equation(case, interpolant):
    """d_t log p + b . grad log p + div b = 0 (G3), normalised by the sum of the terms' sizes."""
    flow, _ = make(case, interpolant)
    hi = HI_ATOMS if flow.singular_at_data else 1.0
    g = torch.Generator().manual_seed(5)
    t = torch.cat([torch.tensor([0.0, hi], dtype=F64), hi * torch.rand(22, generator=g, dtype=F64)])
    x = torch.cat([flow.sample_marginal(t[:18], 18, generator=g), 6 * torch.rand(6, 2, generator=g, dtype=F64) - 3])
    t_ = t.clone().requires_grad_(True)
    x_ = x.clone().requires_grad_(True)
    dt_logp, score = torch.autograd.grad(flow.log_prob(t_, x_).sum(), (t_, x_))
    xb = x.clone().requires_grad_(True)
    b = flow.velocity(t, xb)
    div = sum(torch.autograd.grad(b[:, i].sum(), xb, retain_graph=True)[0][:, i] for i in range(2))
    b = b.detach()
    transport = (b * score).sum(1)
    # relative-or-absolute: at t = 0 (trig, ring with mean 0) every term vanishes
    residual = (dt_logp + transport + div).abs() / (1 + dt_logp.abs() + transport.abs() + div.abs())
    assert float(residual.max()) <= CLOSED_TOL


# -- the ODE map: semigroup, inverse, Jacobian ---------------------------------------------------------
@pytest.mark.parametrize("case", ["K3", "ring"])
def test_semigroup_and_inverse(case):
    flow, _ = make(case, "linear")
    g = torch.Generator().manual_seed(6)
    n = 16
    s, t, u = (torch.rand(n, generator=g, dtype=F64) for _ in range(3))
    s[0], t[0], u[0] = 0.0, 1.0, 0.5
    x = flow.sample_marginal(s, n, generator=g)
    direct = flow.flow_map(s, t, x)
    assert float(rel_err(flow.flow_map(u, t, flow.flow_map(s, u, x)), direct).max()) <= MAP_TOL
    assert float(rel_err(flow.flow_map(t, s, direct), x).max()) <= MAP_TOL


@pytest.mark.parametrize("interpolant", ["linear", "trig"])
@pytest.mark.parametrize("case", ["K3", "ring", "atoms"])
def test_variational_jacobian_vs_finite_differences_and_change_of_variables(case, interpolant):
    flow, _ = make(case, interpolant)
    hi = HI_ATOMS if flow.singular_at_data else 1.0
    pairs = [(0.0, 0.9 * hi), (0.2, 0.7), (0.9, 0.1)]
    s, t, x = batch_for(flow, pairs, 4, 0, seed=7)
    sol = flow.flow_solution(s, t, x, jacobian=True)
    assert isinstance(sol, ODESolution) and sol.jacobian.shape == (x.shape[0], 2, 2)
    # change of variables: log p_t(X) + log det grad X = log p_s(x) (P8, absolute in log)
    logdet = torch.linalg.slogdet(sol.jacobian)
    assert bool((logdet.sign > 0).all())
    cov = flow.log_prob(t, sol.x) + logdet.logabsdet - flow.log_prob(s, x)
    assert float(cov.abs().max()) <= MAP_TOL
    # central differences with one Richardson step (error O(h^4) + eps/h, h = eps^(1/5)); all
    # shifted copies share one batch, hence one step sequence, so the oracle's error is a smooth
    # function of x and does not spoil the difference quotients
    h = fd_step(F64, order=4)
    eye = torch.eye(2, dtype=F64)
    shifts = [sign * k * h * eye[j] for j in range(2) for k in (1.0, 0.5) for sign in (1.0, -1.0)]
    n = x.shape[0]
    out = flow.flow_map_with_tolerance(
        s.repeat(len(shifts)), t.repeat(len(shifts)), torch.cat([x + d for d in shifts]), rtol=1e-13, atol=1e-13
    ).split(n)
    cols = []
    for j in range(2):
        p, m, p2, m2 = out[4 * j : 4 * j + 4]
        d_h, d_h2 = (p - m) / (2 * h), (p2 - m2) / h
        cols.append((4 * d_h2 - d_h) / 3)
    fd = torch.stack(cols, dim=-1)
    assert float(rel_err(sol.jacobian, fd).max()) <= fd_tol(F64)


# -- dtype, device, data -------------------------------------------------------------------------------
def test_float32_in_float32_out():
    flow, _ = make("ring", "linear")
    g = torch.Generator().manual_seed(8)
    x64 = flow.sample_marginal(0.6, 32, generator=g)
    x32 = x64.float()
    for out32, out64 in (
        (flow.velocity(0.6, x32), flow.velocity(0.6, x64)),
        (flow.denoiser(0.6, x32), flow.denoiser(0.6, x64)),
        (flow.score(0.6, x32), flow.score(0.6, x64)),
    ):
        assert out32.dtype == torch.float32
        assert float(rel_err(out32.double(), out64).max()) <= ulps(torch.float32, 100)
    lp32 = flow.log_prob(0.6, x32)
    assert lp32.dtype == torch.float32
    sol = flow.flow_solution(0.6, 0.1, x32, jacobian=True)
    assert sol.x.dtype == torch.float32 and sol.jacobian.dtype == torch.float32
    # the oracle integrates in float64: the only float32 error is the final rounding
    assert float(rel_err(sol.x.double(), flow.flow_map(0.6, 0.1, x32.double())).max()) <= ulps(torch.float32, 2)


@pytest.mark.gpu
def test_runs_on_cuda():
    flow, _ = make("K3", "trig")
    x = flow.sample_marginal(0.3, 16, generator=torch.Generator().manual_seed(9))
    xc = x.cuda()
    assert flow.velocity(0.3, xc).device.type == "cuda"
    assert float(rel_err(flow.velocity(0.3, xc).cpu(), flow.velocity(0.3, x)).max()) <= CLOSED_TOL
    out = flow.flow_map(0.3, 0.9, xc)
    assert out.device.type == "cuda"
    assert float(rel_err(out.cpu(), flow.flow_map(0.3, 0.9, x)).max()) <= MAP_TOL
    assert flow.sample_data(8, torch.Generator("cuda").manual_seed(0), device="cuda").device.type == "cuda"


def test_sample_data_moments():
    """Monte Carlo mean and covariance of sample_data vs the mixture's, within 5 standard errors."""
    w, m, c = k3()
    flow = GaussianMixtureFlow(w, m, c)
    n = 20_000
    xs = flow.sample_data(n, torch.Generator().manual_seed(10))
    mean = (w[:, None] * m).sum(0)
    second = (w[:, None, None] * (c + m[:, :, None] * m[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :]
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert bool(((xs.mean(0) - mean).abs() <= 5 * se_mean).all())
    emp = torch.cov(xs.T)
    se_cov = torch.sqrt((torch.diagonal(cov)[:, None] * torch.diagonal(cov)[None, :] + cov**2) / n)
    assert bool(((emp - cov).abs() <= 5 * se_cov).all())


def test_zero_weight_components_are_ignored():
    w, m, c = k3()
    w0 = torch.cat([w, torch.zeros(1, dtype=F64)])
    full = GaussianMixtureFlow(w0, torch.cat([m, m[:1] + 5]), torch.cat([c, c[:1]]))
    part = GaussianMixtureFlow(w, m, c)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(11), dtype=F64)
    assert torch.equal(full.velocity(0.4, x), part.velocity(0.4, x))
    assert full.n_components == 4


# -- bad input -----------------------------------------------------------------------------------------
def test_bad_input_raises():
    w, m, c = k3()
    with pytest.raises(ValueError, match="weights"):
        GaussianMixtureFlow(w * 1.1, m, c)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixtureFlow(torch.tensor([1.2, -0.2, 0.0], dtype=F64), m, c)
    with pytest.raises(ValueError, match="means"):
        GaussianMixtureFlow(w, m[:2], c)
    with pytest.raises(ValueError, match="means"):
        GaussianMixtureFlow(w, m[:, 0], c)
    with pytest.raises(ValueError, match="covs"):
        GaussianMixtureFlow(w, m, c[:, :1, :1])
    bad = c.clone()
    bad[1] = torch.tensor([[1.0, 0.0], [0.0, -0.1]], dtype=F64)
    with pytest.raises(ValueError, match=r"covs\[1\].*positive semi-definite"):
        GaussianMixtureFlow(w, m, bad)
    bad[1] = torch.tensor([[1.0, 0.3], [0.0, 1.0]], dtype=F64)
    with pytest.raises(ValueError, match=r"covs\[1\].*symmetric"):
        GaussianMixtureFlow(w, m, bad)
    with pytest.raises(ValueError, match="rtol"):
        GaussianMixtureFlow(w, m, c, rtol=1e-18)
    with pytest.raises(TypeError, match="weights"):
        GaussianMixtureFlow("abc", m, c)
    flow = GaussianMixtureFlow(*atoms())
    x = torch.zeros(2, 2, dtype=F64)
    assert flow.singular_at_data
    for call in (lambda: flow.velocity(1.0, x), lambda: flow.flow_map(0.2, 1.0, x), lambda: flow.flow_map(1.0, 0.2, x)):
        with pytest.raises(ValueError, match="singular"):
            call()
    with pytest.raises(ValueError, match="x"):
        flow.velocity(0.5, torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="t"):
        flow.velocity(1.5, x)
