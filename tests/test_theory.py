"""Theory references: flow-matching floor and posterior-mean denoiser vs independent derivations
(sympy per eigen-direction, numpy joint-Gaussian conditioning, quadrature, Monte Carlo)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import sympy as sp
import torch

from workbench.core import ulps
from workbench.diagnostics.theory import (
    MonteCarloEstimate,
    denoiser,
    denoiser_from_velocity,
    flow_matching_floor,
    flow_matching_floor_mc,
    mean_flow_matching_floor,
)
from workbench.flows import GaussianFlow, PointMassFlow

F64 = torch.float64
MU = np.array([1.0, -1.0, 0.5])
A = np.array([[1.0, 0.3, 0.0], [0.2, 0.7, 0.1], [0.0, -0.4, 0.5]])
SIGMA = A @ A.T
TOL = ulps(F64, 1000)  # closed forms vs a second closed form: round-off only
Z = 5.0  # Monte Carlo: |estimate - truth| < Z standard errors


def schedule(name):
    if name == "linear":
        return (lambda t: 1 - t, lambda t: t, lambda t: -1.0, lambda t: 1.0)
    h = math.pi / 2
    return (lambda t: math.cos(h * t), lambda t: math.sin(h * t), lambda t: -h * math.sin(h * t), lambda t: h * math.cos(h * t))


class Wrapped:
    """A flow that is not a GaussianFlow instance: forces the generic (Monte Carlo / velocity) paths."""

    def __init__(self, flow):
        self.inner = flow
        self.dim, self.interpolant = flow.dim, flow.interpolant

    def velocity(self, t, x):
        return self.inner.velocity(t, x)

    def flow_map(self, s, t, x):
        return self.inner.flow_map(s, t, x)

    def sample_data(self, n, generator=None, *, dtype=F64, device=None):
        return self.inner.sample_data(n, generator, dtype=dtype, device=device)


def test_floor_sympy_per_eigendirection():
    """Var(dI | I) per eigen-direction from the Gaussian conditioning formula, for symbolic alpha(t), beta(t),
    simplifies to lam (alpha beta' - alpha' beta)^2 / (alpha^2 + beta^2 lam)."""
    t, lam = sp.symbols("t lam", positive=True)
    a, b = sp.Function("alpha")(t), sp.Function("beta")(t)
    da, db = sp.diff(a, t), sp.diff(b, t)
    var_d, cov, var_i = da**2 + db**2 * lam, a * da + b * db * lam, a**2 + b**2 * lam
    cond = var_d - cov**2 / var_i
    claim = lam * (a * db - da * b) ** 2 / (a**2 + b**2 * lam)
    assert sp.simplify(cond - claim) == 0
    # and the library's numbers equal the sympy expression for concrete schedules
    lam_v = np.linalg.eigvalsh(SIGMA)
    for name, (al, be) in {"linear": (1 - t, t), "trig": (sp.cos(sp.pi * t / 2), sp.sin(sp.pi * t / 2))}.items():
        expr = cond.subs({a: al, b: be}).doit()
        fn = sp.lambdify((t, lam), expr, "numpy")
        flow = GaussianFlow(MU, SIGMA, interpolant=name)
        for tv in (0.0, 0.2, 0.5, 0.9, 1.0):
            ref = sum(float(fn(tv, lv)) for lv in lam_v)
            assert abs(float(flow_matching_floor(flow, tv)) - ref) < TOL * (1 + ref), (name, tv)


@pytest.mark.parametrize("interp", ["linear", "trig"])
def test_floor_numpy_full_conditioning(interp):
    """tr(Cov(dI) - Cov(dI, I) Cov(I)^{-1} Cov(I, dI)) with full matrices (no eigen-decomposition)."""
    flow = GaussianFlow(MU, SIGMA, interpolant=interp)
    al, be, dal, dbe = schedule(interp)
    I3 = np.eye(3)
    ts = np.array([0.0, 0.1, 0.35, 0.6, 0.99, 1.0])
    got = flow_matching_floor(flow, torch.tensor(ts)).numpy()
    for tv, g in zip(ts, got):
        a, b, da, db = al(tv), be(tv), dal(tv), dbe(tv)
        cov_d = da**2 * I3 + db**2 * SIGMA
        cross = a * da * I3 + b * db * SIGMA
        C = a**2 * I3 + b**2 * SIGMA
        ref = np.trace(cov_d - cross @ np.linalg.solve(C, cross.T))
        assert abs(g - ref) < TOL * (1 + abs(ref)) * np.linalg.cond(C), (tv, g, ref)
    assert got.shape == ts.shape


@pytest.mark.parametrize("interp", ["linear", "trig"])
def test_floor_monte_carlo(interp):
    flow = GaussianFlow(MU, SIGMA, interpolant=interp)
    g = torch.Generator().manual_seed(0)
    for tv in (0.25, 0.8):
        est = flow_matching_floor_mc(Wrapped(flow), tv, 100_000, generator=g)
        assert isinstance(est, MonteCarloEstimate) and est.n == 100_000
        cf = float(flow_matching_floor(flow, tv))
        assert abs(est.mean - cf) < Z * est.stderr, (tv, est, cf)
        assert est.stderr < 0.02 * cf  # the test has power
    est = flow_matching_floor_mc(Wrapped(flow), None, 100_000, generator=g)
    assert abs(est.mean - mean_flow_matching_floor(flow)) < Z * est.stderr


@pytest.mark.parametrize("interp", ["linear", "trig"])
def test_mean_floor_vs_quadrature(interp):
    flow = GaussianFlow(MU, SIGMA, interpolant=interp)
    quad, err = scipy.integrate.quad(lambda t: float(flow_matching_floor(flow, t)), 0.0, 1.0, epsabs=1e-13, epsrel=1e-12)
    assert abs(mean_flow_matching_floor(flow) - quad) < 1e-10 + 10 * err


def test_point_mass_floor_is_zero():
    flow = PointMassFlow([1.0, -2.0])
    assert float(flow_matching_floor(flow, 0.4)) == 0.0 and mean_flow_matching_floor(flow) == 0.0
    est = flow_matching_floor_mc(Wrapped(flow), 0.4, 10_000, generator=torch.Generator().manual_seed(1))
    assert est.mean < TOL  # I_t determines x0: dI - b(I) vanishes up to round-off


def test_denoiser_gaussian_vs_numpy_conditioning():
    """E[x1 | I_t = x] = mu + Cov(x1, I) Cov(I)^{-1} (x - beta mu) with Cov(x1, I) = beta Sigma."""
    g = torch.Generator().manual_seed(2)
    for interp in ("linear", "trig"):
        flow = GaussianFlow(MU, SIGMA, interpolant=interp)
        al, be, _, _ = schedule(interp)
        for tv in (0.0, 0.3, 0.7, 1.0):
            x = flow.sample_marginal(tv, 16, g)
            a, b = al(tv), be(tv)
            C = a**2 * np.eye(3) + b**2 * SIGMA
            ref = MU + (x.numpy() - b * MU) @ np.linalg.solve(C, b * SIGMA).T
            got = denoiser(flow, tv, x).numpy()
            assert np.abs(got - ref).max() < TOL * np.linalg.cond(C) * (1 + np.abs(ref).max()), (interp, tv)
            if 0 < tv < 1:  # the inversion of G1 through the flow's velocity
                inv = denoiser_from_velocity(flow, tv, x).numpy()
                assert np.abs(inv - ref).max() < TOL * 100 * (1 + np.abs(ref).max()), (interp, tv)


def test_denoiser_monte_carlo_importance_sampling():
    """Self-normalised importance sampling: D_t(x) = E[x1 w] / E[w], x1 ~ data, w = N(x; beta x1, alpha^2 I)."""
    flow = GaussianFlow(MU, SIGMA)
    g = torch.Generator().manual_seed(3)
    n = 400_000
    x1 = flow.sample_data(n, g)
    for tv in (0.3, 0.6):
        x = flow.sample_marginal(tv, 3, g)
        D = denoiser(Wrapped(flow), tv, x)  # generic path (inversion of the velocity)
        for i in range(3):
            logw = -((x[i] - tv * x1) ** 2).sum(1) / (2 * (1 - tv) ** 2)
            w = torch.softmax(logw, 0)
            est = (w[:, None] * x1).sum(0)
            se = torch.sqrt((w[:, None] ** 2 * (x1 - est) ** 2).sum(0))
            assert bool(((est - D[i]).abs() < Z * se).all()), (tv, est, D[i], se)


def test_point_mass_denoiser_and_delegation():
    for interp in ("linear", "trig"):
        flow = PointMassFlow([0.5, -1.5], interpolant=interp)
        x = flow.sample_marginal(0.4, 8, torch.Generator().manual_seed(4))
        a = torch.tensor([0.5, -1.5], dtype=F64)
        assert torch.equal(denoiser(flow, 0.4, x), a.expand(8, 2))
        assert float((denoiser_from_velocity(flow, 0.4, x) - a).abs().max()) < TOL

    class WithDenoiser(Wrapped):
        def denoiser(self, t, x):
            return torch.full_like(x, 7.0)

    assert float(denoiser(WithDenoiser(PointMassFlow([0.0, 0.0])), 0.5, torch.zeros(2, 2, dtype=F64)).min()) == 7.0


def test_bad_input():
    flow = GaussianFlow(MU, SIGMA)
    with pytest.raises(TypeError, match="flow_matching_floor_mc"):
        flow_matching_floor(Wrapped(flow), 0.5)
    with pytest.raises(TypeError, match="flow_matching_floor_mc"):
        mean_flow_matching_floor(Wrapped(flow))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flow_matching_floor(flow, 1.5)
    with pytest.raises(ValueError, match="n must be a positive int"):
        flow_matching_floor_mc(flow, 0.5, 0)
    with pytest.raises(TypeError, match="interpolant"):
        flow_matching_floor_mc(object(), 0.5, 10)
    with pytest.raises(ValueError, match="one time"):
        flow_matching_floor_mc(flow, torch.tensor([0.2, 0.5]), 10)
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        denoiser(flow, 0.5, torch.zeros(2, 2, dtype=F64))
