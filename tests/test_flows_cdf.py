"""CDF-based closed-form flows (1-D mixtures, rotated products, rings) against independent computations.

Each closed form is checked against something it does not share code with:

* flow maps vs ``scipy.integrate.solve_ivp`` (DOP853, rtol = atol = 1e-13) of the flow's own velocity;
  where the map from s near 1 expands by alpha_t / alpha_s ~ 1e6 (atoms, rings) the ODE is run the
  well-conditioned way, forward from X_{s,t}(x) back to s, and compared with x;
* velocities vs a second formula computed here in numpy/scipy (-d_t F / p for 1-D; the equivalent
  d-D Gaussian mixture for products; angular quadrature of E[alpha' z + beta' x1 | x] for rings);
* CDFs and densities vs scipy.stats (norm, ncx2) and quadrature; derivatives (torch.func.jvp and
  autograd) vs the flow-map identities and vs central finite differences; samples vs exact CDFs (KS).

Tolerances come from torch.finfo (workbench.core.tolerances) except the ODE comparison, which is
bounded by the solver: ODE_TOL = 1e4 x the solver's rtol (DOP853's global error over these spans is
1e2-1e3 x rtol).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from scipy import stats
from scipy.integrate import quad, solve_ivp
from scipy.special import logsumexp
from torch.func import jvp

from workbench.core.tolerances import fd_step, fd_tol, ulps
from workbench.flows.base import DATA_END_MARGIN, data_end_time
from workbench.flows.interpolants import LinearInterpolant, TrigInterpolant
from workbench.flows.mixture1d import Mixture1DFlow
from workbench.flows.point_mass import PointMassFlow
from workbench.flows.product import ProductFlow
from workbench.flows.rings import RingsFlow

F64 = torch.float64
ODE_RTOL = 1e-13
ODE_TOL = 1e4 * ODE_RTOL
NEAR_ONE = 1.0 - 1e-6
IPS = ["linear", "trig"]
SCHED = {"linear": LinearInterpolant(), "trig": TrigInterpolant()}

MIX = dict(weights=[0.3, 0.5, 0.2], means=[-2.0, 0.5, 3.0], stds=[0.3, 0.7, 0.1])
ATOMS = dict(weights=[0.3, 0.4, 0.3], means=[-1.5, 0.0, 2.0], stds=[0.0, 0.4, 0.0])
RINGS = dict(radii=[1.0, 2.5], weights=[0.4, 0.6])
THETA = 0.6
ROT = [[math.cos(THETA), -math.sin(THETA)], [math.sin(THETA), math.cos(THETA)]]
SHIFT = [0.3, -0.2]
FACTORS = [dict(weights=[0.5, 0.5], means=[-1.0, 1.0], stds=[0.25, 0.25]),
           dict(weights=[0.4, 0.6], means=[-0.8, 1.2], stds=[0.3, 0.2])]


def product(ip):
    return ProductFlow([Mixture1DFlow(**f, interpolant=ip) for f in FACTORS], rotation=ROT, shift=SHIFT)


def ab(ip, t):
    """(alpha, beta, alpha', beta') as floats, computed here from the schedule's definition."""
    if ip == "linear":
        return 1.0 - t, t, -1.0, 1.0
    h = 0.5 * math.pi
    return math.cos(h * t), math.sin(h * t), -h * math.sin(h * t), h * math.cos(h * t)


def rel(a, b):
    """Per-point |a - b| / (1 + |b|) (Euclidean over the state), numpy."""
    a, b = np.asarray(a).reshape(len(a), -1), np.asarray(b).reshape(len(b), -1)
    return np.linalg.norm(a - b, axis=1) / (1.0 + np.linalg.norm(b, axis=1))


def ode(flow, s, t, x):
    """X_{s,t}(x) by DOP853 on the flattened batch of the flow's velocity (numpy in, numpy out)."""
    x = np.asarray(x, dtype=np.float64)
    B, d = x.shape

    def rhs(tau, y):
        return flow.velocity(float(tau), torch.from_numpy(y.reshape(B, d).copy())).numpy().ravel()

    sol = solve_ivp(rhs, (s, t), x.ravel(), method="DOP853", rtol=ODE_RTOL, atol=ODE_RTOL)
    assert sol.success, sol.message
    return sol.y[:, -1].reshape(B, d)


def ode_error(flow, s, t, x):
    """Max rel. error of the closed form vs the ODE; backward maps from alpha_s < 1e-3 run the ODE forward."""
    X = flow.flow_map(s, t, x).numpy()
    if flow.singular_at_data and t < s and ab(flow.interpolant.name, s)[0] < 1e-3:
        return rel(ode(flow, t, s, X), x.numpy()).max()
    return rel(X, ode(flow, s, t, x.numpy())).max()


# -- numpy/scipy references --------------------------------------------------------------------------
def mix_parts(p, ip, t):
    a, b, da, db = ab(ip, t)
    w, mu, sd = (np.asarray(p[k], dtype=float) for k in ("weights", "means", "stds"))
    s = np.sqrt(a * a + b * b * sd * sd)
    ds = (a * da + b * db * sd * sd) / s
    return w, b * mu, s, db * mu, ds


def mix_cdf(p, ip, t, x):
    w, m, s, _, _ = mix_parts(p, ip, t)
    return (w * stats.norm.cdf((np.asarray(x)[:, None] - m) / s)).sum(-1)


def mix_pdf(p, ip, t, x):
    w, m, s, _, _ = mix_parts(p, ip, t)
    return (w * stats.norm.pdf((np.asarray(x)[:, None] - m) / s) / s).sum(-1)


def mix_velocity_continuity(p, ip, t, x):
    """b = -d_t F_t / p_t with d_t F = -sum pi phi(z) (m' + z s') / s (docs/flows_analytic.md 2.4)."""
    w, m, s, dm, ds = mix_parts(p, ip, t)
    z = (np.asarray(x)[:, None] - m) / s
    dF = -(w * stats.norm.pdf(z) * (dm + z * ds) / s).sum(-1)
    return -dF / mix_pdf(p, ip, t, x)


def rings_posterior(ip, t, x, M=4096):
    """(density, velocity) of the rings by trapezoidal quadrature over the angle (periodic: spectral)."""
    a, b, da, db = ab(ip, t)
    x = np.asarray(x, dtype=float)
    th = 2 * np.pi * np.arange(M) / M
    e = np.stack([np.cos(th), np.sin(th)], -1)
    logk, vel = [], []
    for R, w in zip(RINGS["radii"], RINGS["weights"]):
        x1 = R * e  # (M, 2)
        diff = x[:, None, :] - b * x1[None]
        logk.append(np.log(w / M) - (diff**2).sum(-1) / (2 * a * a) - np.log(2 * np.pi * a * a))  # (B, M)
        vel.append(da * diff / a + db * x1[None])
    logk, vel = np.concatenate(logk, 1), np.concatenate(vel, 1)
    log_dens = logsumexp(logk, axis=1)
    post = np.exp(logk - log_dens[:, None])
    return log_dens, np.einsum("bm,bmd->bd", post, vel)


def rings_cdf_scipy(ip, t, r):
    a, b, _, _ = ab(ip, t)
    r = np.asarray(r, dtype=float)
    G, S = np.zeros_like(r), np.zeros_like(r)
    for R, w in zip(RINGS["radii"], RINGS["weights"]):
        q, nc = r**2 / a**2, (b * R / a) ** 2
        # Boost's ncx2 is wrong for a subnormal nc (cdf off by 1e-6 at nc = 5.6e-319); the law differs
        # from the central chi2 by O(nc) there, far below eps, so flush it to 0
        nc = 0.0 if nc < np.finfo(float).tiny else nc
        g = stats.ncx2.cdf(q, 2, nc)
        big = g >= 0.5  # Boost's sf overflows for tiny q and large nc, where 1 - cdf is exact enough
        sf = 1.0 - g
        sf[big] = stats.ncx2.sf(q[big], 2, nc)
        G, S = G + w * g, S + w * sf
    return G, S


def gmm_of_product():
    """The product law as a 2-D Gaussian mixture, built here from the factor parameters."""
    Q, c = np.array(ROT), np.array(SHIFT)
    W, M, C = [], [], []
    for w1, m1, s1 in zip(*FACTORS[0].values()):
        for w2, m2, s2 in zip(*FACTORS[1].values()):
            W.append(w1 * w2)
            M.append(c + Q @ np.array([m1, m2]))
            C.append(Q @ np.diag([s1**2, s2**2]) @ Q.T)
    return np.array(W), np.array(M), np.array(C)


def gmm_velocity_logp(ip, t, x):
    """b_t = sum_k r_k [beta' mu_k + (a a' I + b b' S_k) C_k^{-1} (x - beta mu_k)] (docs/flows_analytic.md 2.3), log p_t."""
    a, b, da, db = ab(ip, t)
    W, M, S = gmm_of_product()
    C = a * a * np.eye(2) + b * b * S
    Ci = np.linalg.inv(C)
    diff = x[:, None, :] - b * M[None]
    maha = np.einsum("bki,kij,bkj->bk", diff, Ci, diff)
    logc = np.log(W) - 0.5 * maha - 0.5 * np.log(np.linalg.det(2 * np.pi * C))
    logp = logsumexp(logc, axis=1)
    r = np.exp(logc - logp[:, None])
    A = np.einsum("kij,kjl->kil", a * da * np.eye(2) + b * db * S, Ci)
    bk = db * M[None] + np.einsum("kij,bkj->bki", A, diff)
    return (r[..., None] * bk).sum(1), logp


# -- 1-D mixtures ---------------------------------------------------------------------------------------
X_GRID = torch.tensor([-12.0, -7.5, -3.0, -1.0, 0.0, 0.7, 2.9, 5.0, 7.5, 12.0], dtype=F64)[:, None]
PAIRS_REGULAR = [(0.0, 1.0), (1.0, 0.0), (0.0, 0.5), (0.5, 0.0), (0.1, 0.9), (0.9, 0.1), (0.05, 0.99), (0.8, 0.3)]
PAIRS_SINGULAR = [(0.0, NEAR_ONE), (0.2, 0.9), (0.9, 0.2), (0.5, NEAR_ONE), (NEAR_ONE, 0.1), (NEAR_ONE, 0.6)]


@pytest.mark.parametrize("ip", IPS)
def test_mixture_map_matches_ode_including_tails_and_t1(ip):
    flow = Mixture1DFlow(**MIX, interpolant=ip)
    errs = [ode_error(flow, s, t, X_GRID) for s, t in PAIRS_REGULAR]
    assert max(errs) < ODE_TOL, errs


@pytest.mark.parametrize("ip", IPS)
def test_mixture_with_atoms_matches_ode_up_to_near_one(ip):
    flow = Mixture1DFlow(**ATOMS, interpolant=ip)
    assert flow.singular_at_data
    g = torch.Generator().manual_seed(3)
    for s, t in PAIRS_SINGULAR:
        x = torch.cat([X_GRID[2:8], flow.sample_marginal(s, 6, g)])
        err = ode_error(flow, s, t, x)
        assert err < ODE_TOL, (s, t, err)


def test_pure_atoms_map_to_data_is_the_discrete_quantile():
    flow = Mixture1DFlow(weights=[0.2, 0.5, 0.3], means=[-1.0, 0.5, 2.0], stds=[0.0, 0.0, 0.0])
    x = torch.linspace(-3, 3, 41, dtype=F64)[:, None]
    u = stats.norm.cdf(x.numpy()[:, 0])
    expected = np.array([-1.0, 0.5, 2.0])[np.searchsorted(np.cumsum([0.2, 0.5, 0.3]), u)]
    X = flow.flow_map(0.0, 1.0, x)[:, 0].numpy()
    assert np.abs(X - expected).max() <= ulps(F64, 8)


@pytest.mark.parametrize("ip", IPS)
def test_mixture_velocity_posterior_form_vs_continuity_form(ip):
    flow = Mixture1DFlow(**MIX, interpolant=ip)
    x = torch.linspace(-6, 6, 49, dtype=F64)[:, None]
    for t in [0.0, 0.3, 0.7, 0.95, 1.0]:
        b = flow.velocity(t, x)[:, 0].numpy()
        ref = mix_velocity_continuity(MIX, ip, t, x.numpy()[:, 0])
        assert rel(b, ref).max() < ulps(F64, 1e3), t


@pytest.mark.parametrize("ip", IPS)
def test_mixture_cdf_is_transported_and_map_is_monotone(ip):
    flow = Mixture1DFlow(**MIX, interpolant=ip)
    x = torch.linspace(-12, 12, 241, dtype=F64)[:, None]
    for s, t in [(0.1, 0.95), (0.95, 0.1), (0.0, 1.0), (0.6, 0.2)]:
        X = flow.flow_map(s, t, x)[:, 0].numpy()
        assert np.abs(mix_cdf(MIX, ip, t, X) - mix_cdf(MIX, ip, s, x.numpy()[:, 0])).max() <= ulps(F64, 64)
        assert (np.diff(X) > 0).all()
        # far tails in log space: log S_t(X) = log S_s(x) (relative), S from scipy's logsf
        log_F_t, log_S_t = flow.log_cdf(t, torch.from_numpy(X[:, None]))
        w, m, sd, _, _ = mix_parts(MIX, ip, s)
        ref_S = logsumexp(np.log(w) + stats.norm.logsf((x.numpy() - m) / sd), axis=1)
        ref_F = logsumexp(np.log(w) + stats.norm.logcdf((x.numpy() - m) / sd), axis=1)
        assert rel(log_S_t.numpy(), ref_S).max() < ulps(F64, 256)
        assert rel(log_F_t.numpy(), ref_F).max() < ulps(F64, 256)


@given(s=st.floats(0.0, 1.0), t=st.floats(0.0, 1.0), x=st.floats(-8.0, 8.0))
def test_mixture_cdf_identity_property(s, t, x):
    flow = Mixture1DFlow(**MIX, interpolant="trig")
    X = flow.flow_map(s, t, torch.tensor([[x]], dtype=F64))[:, 0].numpy()
    assert abs(mix_cdf(MIX, "trig", t, X)[0] - mix_cdf(MIX, "trig", s, [x])[0]) <= ulps(F64, 64)


def _time_derivatives(flow, s, t, x):
    """(X, d/dt X, d/ds X, grad X . b_s(x)) by torch.func.jvp."""
    sv, tv = torch.full((x.shape[0],), s, dtype=F64), torch.full((x.shape[0],), t, dtype=F64)
    X, dXdt = jvp(lambda tt: flow.flow_map(sv, tt, x), (tv,), (torch.ones_like(tv),))
    _, dXds = jvp(lambda ss: flow.flow_map(ss, tv, x), (sv,), (torch.ones_like(sv),))
    _, gradX_b = jvp(lambda xx: flow.flow_map(sv, tv, xx), (x,), (flow.velocity(sv, x),))
    return X, dXdt, dXds, gradX_b


def _fd_time_derivatives(flow, s, t, x):
    h = fd_step(F64)
    dXdt = (flow.flow_map(s, t + h, x) - flow.flow_map(s, t - h, x)) / (2 * h)
    dXds = (flow.flow_map(s + h, t, x) - flow.flow_map(s - h, t, x)) / (2 * h)
    b = flow.velocity(s, x)
    gradX_b = (flow.flow_map(s, t, x + h * b) - flow.flow_map(s, t, x - h * b)) / (2 * h)
    return dXdt, dXds, gradX_b


def _jacobian(flow, s, t, x):
    """grad X_{s,t}(x), shape (B, d, d), column j by a jvp along e_j."""
    cols = [jvp(lambda v: flow.flow_map(s, t, v), (x,), (torch.zeros_like(x).index_fill_(1, torch.tensor([j]), 1.0),))[1]
            for j in range(x.shape[1])]
    return torch.stack(cols, -1)


def _check_lagrangian_eulerian(flow, s, t, x):
    X, dXdt, dXds, gradX_b = _time_derivatives(flow, s, t, x)
    b_t = flow.velocity(t, X)
    assert rel(dXdt.numpy(), b_t.numpy()).max() < ulps(F64, 1e4)  # Lagrangian, exact derivative
    assert rel((dXds + gradX_b).numpy(), 0 * gradX_b.numpy()).max() < ulps(F64, 1e4) * (1 + gradX_b.abs().max())
    # central differences: the truncation h^2 X'''/6 grows near t = 1 with narrow modes, hence factor 1e3
    f_dt, f_ds, f_gb = _fd_time_derivatives(flow, s, t, x)
    assert rel(dXdt.numpy(), f_dt.numpy()).max() < fd_tol(F64, 1e3)
    assert rel(dXds.numpy(), f_ds.numpy()).max() < fd_tol(F64, 1e3)
    assert rel(gradX_b.numpy(), f_gb.numpy()).max() < fd_tol(F64, 1e3)
    # autograd agrees with forward mode
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(flow.flow_map(s, t, xr).sum(), xr)
    _, jv = jvp(lambda xx: flow.flow_map(s, t, xx).sum(-1), (x,), (torch.ones_like(x),))
    assert (g.sum(-1) - jv).abs().max() <= ulps(F64, 64) * (1 + jv.abs().max())


@pytest.mark.parametrize("ip", IPS)
def test_mixture_derivatives_lagrangian_eulerian_density_ratio(ip):
    flow = Mixture1DFlow(**MIX, interpolant=ip)
    x = torch.linspace(-4, 5, 13, dtype=F64)[:, None]
    for s, t in [(0.1, 0.8), (0.8, 0.1), (0.4, 0.4), (0.02, 0.97)]:
        _check_lagrangian_eulerian(flow, s, t, x)
        X, dXdx = jvp(lambda xx: flow.flow_map(s, t, xx), (x,), (torch.ones_like(x),))
        ratio = mix_pdf(MIX, ip, s, x.numpy()[:, 0]) / mix_pdf(MIX, ip, t, X.numpy()[:, 0])
        assert rel(dXdx.numpy()[:, 0], ratio).max() < ulps(F64, 1e3)


@pytest.mark.parametrize("ip", IPS)
def test_mixture_log_prob_normalised_and_matches_scipy(ip):
    flow = Mixture1DFlow(**MIX, interpolant=ip)
    for t in [0.0, 0.5, 0.95, 1.0]:
        dens = lambda v: float(flow.log_prob(t, torch.tensor([[v]], dtype=F64)).exp())
        total = quad(dens, -np.inf, np.inf, points=None, epsabs=0, epsrel=1e-13, limit=200)[0]
        assert abs(total - 1.0) < ulps(F64, 1e3)
        x = torch.linspace(-8, 8, 81, dtype=F64)[:, None]
        ref = np.log(mix_pdf(MIX, ip, t, x.numpy()[:, 0]))
        assert rel(flow.log_prob(t, x).numpy(), ref).max() < ulps(F64, 64)


@pytest.mark.parametrize("ip", IPS)
def test_mixture_samples_and_pushforward_match_exact_cdf(ip):
    flow = Mixture1DFlow(**MIX, interpolant=ip)
    g = torch.Generator().manual_seed(11)
    for t in [0.0, 0.6, 1.0]:
        xs = flow.sample_marginal(t, 2000, g)[:, 0].numpy()
        assert stats.kstest(xs, lambda v: mix_cdf(MIX, ip, t, v)).pvalue > 1e-3
    x0 = flow.sample_marginal(0.2, 2000, g)
    pushed = flow.flow_map(0.2, 0.9, x0)[:, 0].numpy()
    assert stats.kstest(pushed, lambda v: mix_cdf(MIX, ip, 0.9, v)).pvalue > 1e-3


def test_mixture_validation_and_dtype():
    with pytest.raises(ValueError, match="stds must be >= 0"):
        Mixture1DFlow([0.5, 0.5], [0.0, 1.0], [0.1, -0.1])
    with pytest.raises(ValueError, match="sum to 1"):
        Mixture1DFlow([0.5, 0.6], [0.0, 1.0], [0.1, 0.1])
    with pytest.raises(ValueError, match="same length"):
        Mixture1DFlow([0.5, 0.5], [0.0, 1.0, 2.0], [0.1, 0.1])
    flow = Mixture1DFlow(**MIX)
    with pytest.raises(ValueError, match=r"shape \(batch, 1\)"):
        flow.flow_map(0.0, 0.5, torch.zeros(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="s = 1 is singular"):
        Mixture1DFlow(**ATOMS, interpolant="trig").flow_map(1.0, 0.5, torch.zeros(3, 1, dtype=F64))
    x32 = torch.linspace(-3, 3, 7)[:, None]
    for s, t in [(0.1, 0.9), (0.9, 0.2)]:
        X32 = flow.flow_map(s, t, x32)
        assert X32.dtype == torch.float32
        assert rel(X32.double().numpy(), flow.flow_map(s, t, x32.double()).numpy()).max() <= ulps(torch.float32, 4)
    assert flow.velocity(0.5, x32).dtype == flow.log_prob(0.5, x32).dtype == torch.float32


# -- rotated products --------------------------------------------------------------------------------
@pytest.mark.parametrize("ip", IPS)
def test_product_map_matches_ode(ip):
    flow = product(ip)
    g = torch.Generator().manual_seed(5)
    x = torch.cat([torch.tensor([[-6.0, 4.0], [0.0, 0.0], [3.0, -7.0]], dtype=F64), flow.sample_marginal(0.0, 5, g)])
    errs = [ode_error(flow, s, t, x) for s, t in [(0.0, 1.0), (1.0, 0.0), (0.1, 0.9), (0.8, 0.3), (0.05, 0.99)]]
    assert max(errs) < ODE_TOL, errs


@pytest.mark.parametrize("ip", IPS)
def test_product_velocity_and_density_equal_the_gaussian_mixture(ip):
    flow = product(ip)
    W, M, C = gmm_of_product()
    params = flow.as_gaussian_mixture_parameters()
    w_, m_, c_ = params  # unpacks
    assert np.abs(w_.numpy() - W).max() <= ulps(F64, 4)
    assert np.abs(m_.numpy() - M).max() <= ulps(F64, 16) and np.abs(c_.numpy() - C).max() <= ulps(F64, 16)
    x = torch.from_numpy(np.random.default_rng(0).uniform(-3, 3, size=(64, 2)))
    for t in [0.0, 0.3, 0.8, 1.0]:
        b_ref, logp_ref = gmm_velocity_logp(ip, t, x.numpy())
        assert rel(flow.velocity(t, x).numpy(), b_ref).max() < ulps(F64, 256)
        assert rel(flow.log_prob(t, x).numpy(), logp_ref).max() < ulps(F64, 256)


@pytest.mark.parametrize("ip", IPS)
def test_product_derivatives_and_symmetric_jacobian(ip):
    flow = product(ip)
    x = flow.sample_marginal(0.3, 8, torch.Generator().manual_seed(2))
    _check_lagrangian_eulerian(flow, 0.3, 0.85, x)
    _check_lagrangian_eulerian(flow, 0.85, 0.3, x)
    J = _jacobian(flow, 0.3, 0.85, x)
    assert (J - J.transpose(1, 2)).abs().max() <= ulps(F64, 64) * J.abs().max()
    assert (torch.linalg.eigvalsh(0.5 * (J + J.transpose(1, 2))) > 0).all()


def test_product_samples_factor_coordinates_ks():
    flow = product("trig")
    Q, c = np.array(ROT), np.array(SHIFT)
    t = 0.7
    a, b, _, _ = ab("trig", t)
    xs = flow.sample_marginal(t, 2000, torch.Generator().manual_seed(7)).numpy()
    xi = (xs - b * c) @ Q
    for i, f in enumerate(FACTORS):
        assert stats.kstest(xi[:, i], lambda v: mix_cdf(f, "trig", t, v)).pvalue > 1e-3


def test_product_validation():
    f_lin = Mixture1DFlow(**FACTORS[0])
    f_trig = Mixture1DFlow(**FACTORS[1], interpolant="trig")
    with pytest.raises(ValueError, match="same interpolant"):
        ProductFlow([f_lin, f_trig])
    with pytest.raises(ValueError, match="same interpolant"):
        ProductFlow([f_lin, f_lin], interpolant="trig")
    with pytest.raises(ValueError, match="orthogonal"):
        ProductFlow([f_lin, f_lin], rotation=[[1.0, 0.1], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        ProductFlow([f_lin, f_lin], rotation=np.eye(3))
    with pytest.raises(ValueError, match=r"shift must have shape \(2,\)"):
        ProductFlow([f_lin, f_lin], shift=[0.0])
    with pytest.raises(TypeError, match="Mixture1DFlow"):
        ProductFlow([f_lin, "x"])
    # a float32 rotation is orthonormal only to float32 round-off: accepted and re-orthonormalised
    R32 = torch.tensor(ROT, dtype=torch.float32)
    flow = ProductFlow([f_lin, f_lin], rotation=R32)
    assert (flow.rotation.T @ flow.rotation - torch.eye(2, dtype=F64)).abs().max() <= ulps(F64, 8)
    x32 = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    assert flow.flow_map(0.2, 0.7, x32).dtype == torch.float32


# -- rings ---------------------------------------------------------------------------------------------
R_GRID = torch.tensor([1e-6, 1e-3, 0.3, 1.0, 1.7, 2.5, 4.0, 6.0], dtype=F64)
ANGLES = torch.linspace(0.0, 5.0, len(R_GRID), dtype=F64)
X_RINGS = torch.stack([R_GRID * ANGLES.cos(), R_GRID * ANGLES.sin()], -1)
PAIRS_RINGS = [(0.0, 0.5), (0.5, 0.0), (0.1, 0.9), (0.9, 0.1), (0.05, 0.99), (0.8, 0.3), (0.0, NEAR_ONE),
               (0.5, NEAR_ONE), (NEAR_ONE, 0.1)]


@pytest.mark.parametrize("ip", IPS)
def test_rings_map_matches_ode_near_origin_and_near_one(ip):
    flow = RingsFlow(**RINGS, interpolant=ip)
    g = torch.Generator().manual_seed(4)
    for s, t in PAIRS_RINGS:
        # from s near 1 a point between or inside the rings has p_s ~ exp(-1e11): its image under the
        # expanding backward map underflows (or sits on a flat basin boundary), so use on-distribution
        # points and points outside the rings there (the gaps near the data end: test_cdf_tails.py)
        fixed = X_RINGS if s < 0.99 else X_RINGS[-2:]
        x = torch.cat([fixed, flow.sample_marginal(s, 6, g)])
        err = ode_error(flow, s, t, x)
        assert err < ODE_TOL, (s, t, err)


@pytest.mark.parametrize("ip", IPS)
def test_rings_velocity_and_density_vs_angular_quadrature(ip):
    flow = RingsFlow(**RINGS, interpolant=ip)
    x = torch.cat([X_RINGS, torch.zeros(1, 2, dtype=F64)])
    for t in [0.0, 0.3, 0.7, 0.95]:
        log_dens, b_ref = rings_posterior(ip, t, x.numpy())
        assert rel(flow.velocity(t, x).numpy(), b_ref).max() < ulps(F64, 1e3)
        assert rel(flow.log_prob(t, x).numpy(), log_dens).max() < ulps(F64, 1e3)


@pytest.mark.parametrize("ip", IPS)
def test_rings_radial_cdf_vs_scipy_ncx2_and_normalisation(ip):
    flow = RingsFlow(**RINGS, interpolant=ip)
    r = torch.tensor([1e-6, 1e-3, 0.1, 0.5, 0.9, 1.0, 1.1, 2.0, 2.4, 2.5, 2.6, 3.5, 6.0], dtype=F64)
    for t in [0.0, 0.4, 0.9, 0.97]:  # Boost's ncx2 overflows (tgamma) for larger nc = (beta R / alpha)^2
        log_G, log_S = flow.radial_log_cdf(t, r)
        G_ref, S_ref = rings_cdf_scipy(ip, t, r.numpy())
        ok = (G_ref > 1e-290) & (S_ref > 1e-290)
        # Boost's ncx2 agrees with mpmath to ~1e-15 relative (test_cdf_tails.py); 1e-12 leaves room for both
        assert np.abs(np.expm1(log_G.numpy()[ok] - np.log(G_ref[ok]))).max() < 1e-12
        assert np.abs(np.expm1(log_S.numpy()[ok] - np.log(S_ref[ok]))).max() < 1e-12
        radial = lambda v: 2 * math.pi * v * float(flow.log_prob(t, torch.tensor([[v, 0.0]], dtype=F64)).exp())
        pts = sorted({ab(ip, t)[1] * R for R in RINGS["radii"]})
        total = quad(radial, 0, 12, points=pts, epsabs=0, epsrel=1e-13, limit=400)[0]
        assert abs(total - 1.0) < ulps(F64, 1e3)


@pytest.mark.parametrize("ip", IPS)
def test_rings_derivatives_symmetric_jacobian_and_origin(ip):
    flow = RingsFlow(**RINGS, interpolant=ip)
    x = torch.cat([flow.sample_marginal(0.3, 6, torch.Generator().manual_seed(9)), X_RINGS[1:3]])
    _check_lagrangian_eulerian(flow, 0.3, 0.8, x)
    _check_lagrangian_eulerian(flow, 0.8, 0.3, x)
    J = _jacobian(flow, 0.3, 0.8, x)
    assert (J - J.transpose(1, 2)).abs().max() <= ulps(F64, 64) * J.abs().max()
    # X(0) = 0 and grad X(0) = sqrt(p_s(0) / p_t(0)) I (densities from the angular quadrature)
    zero = torch.zeros(1, 2, dtype=F64)
    X0, dX0 = jvp(lambda v: flow.flow_map(0.3, 0.8, v), (zero,), (torch.tensor([[0.6, -0.8]], dtype=F64),))
    c0 = math.exp(0.5 * (rings_posterior(ip, 0.3, zero.numpy())[0][0] - rings_posterior(ip, 0.8, zero.numpy())[0][0]))
    assert float(X0.abs().max()) == 0.0
    assert rel(dX0.numpy(), c0 * np.array([[0.6, -0.8]])).max() < ulps(F64, 1e3)
    # near the origin X(x) = c0 x (1 + O(|x|^2 / l^2)), l ~ alpha / beta R ~ 0.03 here: |x| = 1e-9 gives ~1e-15
    tiny = 1e-9 * torch.tensor([[0.6, -0.8]], dtype=F64)
    assert rel(flow.flow_map(0.3, 0.8, tiny).numpy() / 1e-9, c0 * np.array([[0.6, -0.8]])).max() < ulps(F64, 1e3)


@pytest.mark.parametrize("ip", IPS)
def test_rings_map_to_data_is_the_ring_quantile(ip):
    flow = RingsFlow(**RINGS, interpolant=ip)
    r = torch.linspace(0.05, 4.0, 40, dtype=F64)
    x = torch.stack([r * 0.6, -r * 0.8], -1)
    X = flow.flow_map(0.0, 1.0, x)
    u = 1.0 - np.exp(-0.5 * r.numpy() ** 2)  # G_0 = Rayleigh CDF
    expected = np.array(RINGS["radii"])[np.searchsorted(np.cumsum(RINGS["weights"]), u)]
    assert np.abs(X.norm(dim=1).numpy() - expected).max() <= ulps(F64, 16)
    assert np.abs((X / X.norm(dim=1, keepdim=True) - x / r[:, None]).numpy()).max() <= ulps(F64, 16)


@given(s=st.floats(0.0, 0.99), t=st.floats(0.0, 0.99), r=st.floats(1e-3, 6.0))
@example(s=0.0, t=2.9933610628579454e-160, r=2.0)  # the reference's ncx2 with nc = 5.6e-319 (subnormal)
def test_rings_radial_cdf_transport_property(s, t, r):
    flow = RingsFlow(**RINGS, interpolant="linear")
    X = flow.flow_map(s, t, torch.tensor([[r, 0.0]], dtype=F64))
    G_t, S_t = rings_cdf_scipy("linear", t, X.norm(dim=1).numpy())
    G_s, S_s = rings_cdf_scipy("linear", s, [r])
    assert abs(G_t[0] - G_s[0]) <= 1e-12 and abs(S_t[0] - S_s[0]) <= 1e-12


def test_rings_samples_ks_radius_and_angle():
    flow = RingsFlow(**RINGS, interpolant="trig")
    g = torch.Generator().manual_seed(13)
    for t in [0.0, 0.5, 0.9]:
        xs = flow.sample_marginal(t, 2000, g).numpy()
        rad = np.linalg.norm(xs, axis=1)
        assert stats.kstest(rad, lambda v: rings_cdf_scipy("trig", t, v)[0]).pvalue > 1e-3
        assert stats.kstest(np.arctan2(xs[:, 1], xs[:, 0]), stats.uniform(-np.pi, 2 * np.pi).cdf).pvalue > 1e-3
    x0 = flow.sample_marginal(0.1, 2000, g)
    pushed = flow.flow_map(0.1, 0.8, x0).norm(dim=1).numpy()
    assert stats.kstest(pushed, lambda v: rings_cdf_scipy("trig", 0.8, v)[0]).pvalue > 1e-3


def test_rings_validation_and_dtype():
    with pytest.raises(ValueError, match="radii must be > 0"):
        RingsFlow([1.0, 0.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="same length"):
        RingsFlow([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="sum to 1"):
        RingsFlow([1.0, 2.0], [0.5, 0.2])
    flow = RingsFlow(**RINGS, interpolant="trig")
    for s in [1.0, 1.0 - 1e-17]:
        with pytest.raises(ValueError, match="s = 1 is singular"):
            flow.flow_map(s, 0.5, X_RINGS)
    with pytest.raises(ValueError, match="t = 1 is singular"):
        RingsFlow(**RINGS).velocity(1.0, X_RINGS)
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        flow.flow_map(0.0, 0.5, torch.zeros(3, 1, dtype=F64))
    x32 = X_RINGS.float()
    X32 = flow.flow_map(0.2, 0.7, x32)
    assert X32.dtype == torch.float32
    assert rel(X32.double().numpy(), flow.flow_map(0.2, 0.7, X_RINGS).numpy()).max() <= ulps(torch.float32, 8)
    assert flow.velocity(0.5, x32).dtype == flow.log_prob(0.5, x32).dtype == torch.float32


@pytest.mark.parametrize("ip", ["linear", "trig"])
def test_data_end_message_quotes_data_end_time(ip):
    """Every flow singular at the data end refuses s = 1 (and t = 1 for the velocity) with one message that
    quotes data_end_time (1 - DATA_END_MARGIN), the time the workbench itself stops at, not another bound."""
    cases = [
        (RingsFlow(**RINGS, interpolant=ip), X_RINGS),
        (Mixture1DFlow(**ATOMS, interpolant=ip), torch.zeros(3, 1, dtype=F64)),
        (PointMassFlow([1.0, -1.0], interpolant=ip), X_RINGS),
    ]
    for flow, x in cases:
        T = data_end_time(flow)
        assert T == 1.0 - DATA_END_MARGIN
        for call, name in ((lambda: flow.flow_map(1.0, 0.5, x), "s"), (lambda: flow.velocity(1.0, x), "t")):
            with pytest.raises(ValueError, match=rf"{name} = 1 is singular for {type(flow).__name__}.*{name} <= {T}"):
                call()
        flow.flow_map(T, 0.5, x)  # the quoted time is accepted
