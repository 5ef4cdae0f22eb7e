"""Point-mass and Gaussian flows: closed forms against independent computations."""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from ode_reference import rel_err_max, scipy_flow_map

from workbench.core import ulps
from workbench.flows import GaussianFlow, LinearInterpolant, PointMassFlow, TrigInterpolant
from workbench.flows.identities import flow_jacobian
from workbench.flows.registry import make_flow

F64 = torch.float64
IPS = [LinearInterpolant(), TrigInterpolant()]
ORACLE_TOL = 1e-9  # the ODE oracle's promise: closed form vs ODE to 1e-9 relative
PAIRS = [(0.0, 0.5), (0.1, 0.9), (0.8, 0.3), (0.05, 0.99), (0.0, 0.99), (0.99, 0.0)]


def _np_coeffs(name, t):
    if name == "linear":
        return 1 - t, t, -1.0, 1.0
    c, s = np.cos(np.pi * t / 2), np.sin(np.pi * t / 2)
    return c, s, -np.pi / 2 * s, np.pi / 2 * c


@pytest.mark.parametrize("ip", IPS, ids=lambda i: i.name)
@pytest.mark.parametrize("name", ["point_mass_2d", "gaussian_2d", "gaussian_5d"])
def test_closed_form_matches_scipy_dop853(name, ip):
    flow = make_flow(name, ip)
    pairs = PAIRS + ([(0.0, 1.0), (0.3, 1.0), (1.0, 0.2)] if name != "point_mass_2d" else [(0.2, 0.999999)])
    for s, t in pairs:
        x = flow.sample_marginal(s, 16, torch.Generator().manual_seed(7))
        err = rel_err_max(flow.flow_map(s, t, x), scipy_flow_map(flow, s, t, x))
        assert err < ORACLE_TOL, (name, ip.name, s, t, err)


@pytest.mark.parametrize("ip", IPS, ids=lambda i: i.name)
def test_gaussian_velocity_matches_linear_algebra_form(ip):
    # b_t(x) = beta' mu + (alpha alpha' I + beta beta' Sigma) C_t^{-1} (x - beta mu), via np.linalg.solve
    mu, S = np.array([1.0, -1.0]), np.array([[1.0, 0.6], [0.6, 0.5]])
    flow = GaussianFlow(mu, S, interpolant=ip)
    g = torch.Generator().manual_seed(1)
    for t in (0.0, 0.3, 0.77, 1.0):
        x = torch.randn(8, 2, dtype=F64, generator=g) * 2
        a, b, da, db = _np_coeffs(ip.name, t)
        C = a * a * np.eye(2) + b * b * S
        M = a * da * np.eye(2) + b * db * S
        expect = db * mu + np.linalg.solve(C, M @ (x.numpy() - b * mu).T).T
        np.testing.assert_allclose(flow.velocity(t, x).numpy(), expect, rtol=0, atol=ulps(F64, 64) * 10)


@pytest.mark.parametrize("ip", IPS, ids=lambda i: i.name)
def test_point_mass_velocity_matches_formula(ip):
    a_ = np.array([1.0, -0.5])
    flow = PointMassFlow(a_, interpolant=ip)
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    for t in (0.0, 0.4, 0.9):
        a, b, da, db = _np_coeffs(ip.name, t)
        expect = db * a_ + da / a * (x.numpy() - b * a_)
        np.testing.assert_allclose(flow.velocity(t, x).numpy(), expect, rtol=0, atol=ulps(F64, 64) * 10)


@pytest.mark.parametrize("ip", IPS, ids=lambda i: i.name)
@pytest.mark.parametrize("name", ["point_mass_2d", "gaussian_2d", "gaussian_5d"])
def test_log_prob_matches_scipy_and_sampling_matches_moments(name, ip):
    flow = make_flow(name, ip)
    mu = flow.a if name.startswith("point") else flow.mean
    S = torch.zeros(flow.dim, flow.dim, dtype=F64) if name.startswith("point") else flow.cov
    for t in (0.0, 0.5, 0.9):
        a, b, _, _ = _np_coeffs(ip.name, t)
        mean, cov = (b * mu).numpy(), a * a * np.eye(flow.dim) + b * b * S.numpy()
        x = flow.sample_marginal(t, 20000, torch.Generator().manual_seed(11))
        lp = scipy.stats.multivariate_normal(mean, cov).logpdf(x[:50].numpy())
        np.testing.assert_allclose(flow.log_prob(t, x[:50]).numpy(), lp, rtol=ulps(F64, 1e3), atol=ulps(F64, 1e3))
        # moments: z-scores of the sample mean per coordinate, and covariance within 5 standard errors
        se_mean = np.sqrt(np.diag(cov) / x.shape[0])
        assert np.all(np.abs(x.mean(0).numpy() - mean) < 5 * se_mean)
        emp = np.cov(x.numpy().T)
        se_cov = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / x.shape[0])
        assert np.all(np.abs(emp - cov) < 5 * se_cov + ulps(F64, 1e3))


@pytest.mark.parametrize("ip", IPS, ids=lambda i: i.name)
def test_gaussian_structure_p12_p13_p17(ip):
    flow = make_flow("gaussian_5d", ip)
    mu, S = flow.mean, flow.cov
    x = torch.randn(6, 5, dtype=F64, generator=torch.Generator().manual_seed(3))
    sqrtS = torch.from_numpy(np.real(scipy.linalg.sqrtm(S.numpy())))
    tol = ulps(F64, 1e3)
    for s, t in [(0.1, 0.8), (0.9, 0.2), (0.0, 1.0)]:
        a_s, b_s, _, _ = _np_coeffs(ip.name, s)
        a_t, b_t, _, _ = _np_coeffs(ip.name, t)
        m_s, m_t = b_s * mu, b_t * mu
        torch.testing.assert_close(flow.flow_map(s, t, m_s[None]), m_t[None], rtol=0, atol=tol)  # P12a
        J = flow_jacobian(flow, s, t, x)  # by autodiff, independent of flow.flow_jacobian's eigen formula
        torch.testing.assert_close(J, flow.flow_jacobian(s, t, x), rtol=0, atol=tol)
        C_s = a_s**2 * torch.eye(5, dtype=F64) + b_s**2 * S
        C_t = a_t**2 * torch.eye(5, dtype=F64) + b_t**2 * S
        torch.testing.assert_close(J[0] @ C_s @ J[0].T, C_t, rtol=0, atol=tol * 10)  # P12b
        torch.testing.assert_close(J[0], J[0].T, rtol=0, atol=tol)  # P17: symmetric
        assert float(torch.linalg.eigvalsh(J[0]).min()) > 0  # positive definite (an OT map)
    # P13: X_{0,1}(x) = mu + Sigma^{1/2} x for every schedule with exact endpoints
    torch.testing.assert_close(flow.flow_map(0.0, 1.0, x), mu + x @ sqrtS.T, rtol=0, atol=ulps(F64, 1e4))


@pytest.mark.parametrize("ip", IPS, ids=lambda i: i.name)
def test_gaussian_rotation_and_translation_equivariance_p14(ip):
    mu, S = torch.tensor([1.0, -1.0], dtype=F64), torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=F64)
    th = 0.7
    Q = torch.tensor([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]], dtype=F64)
    c = torch.tensor([0.3, 2.0], dtype=F64)
    base = GaussianFlow(mu, S, interpolant=ip)
    rot = GaussianFlow(Q @ mu, Q @ S @ Q.T, interpolant=ip)
    shf = GaussianFlow(mu + c, S, interpolant=ip)
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    s, t = 0.2, 0.85
    _, b_s, _, _ = _np_coeffs(ip.name, s)
    _, b_t, _, _ = _np_coeffs(ip.name, t)
    tol = ulps(F64, 1e3)
    torch.testing.assert_close(rot.flow_map(s, t, x @ Q.T), base.flow_map(s, t, x) @ Q.T, rtol=0, atol=tol)
    torch.testing.assert_close(shf.flow_map(s, t, x + b_s * c), base.flow_map(s, t, x) + b_t * c, rtol=0, atol=tol)


@pytest.mark.parametrize("name", ["point_mass_2d", "gaussian_2d"])
def test_float32_follows_input_and_stays_close_to_float64(name):
    flow = make_flow(name)
    x64 = flow.sample_marginal(0.2, 64, torch.Generator().manual_seed(0))
    x32 = x64.float()
    for s, t in [(0.2, 0.9), (0.9, 0.2)]:
        X32 = flow.flow_map(s, t, x32)
        assert X32.dtype == torch.float32
        # amplification alpha_t/alpha_s for backward point-mass maps (docs/flows_analytic.md section 3)
        assert rel_err_max(X32, flow.flow_map(s, t, x32.double())) < ulps(torch.float32, 64)
    assert flow.velocity(0.5, x32).dtype == torch.float32
    assert flow.log_prob(0.5, x32).dtype == torch.float32
