"""Interpolants: coefficients, derivatives, samples, and the VE / VP conversions (round trips)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.func import jvp

from workbench.core import fd_step, fd_tol, ulps
from workbench.flows import LinearInterpolant, TrigInterpolant, get_interpolant

F64 = torch.float64
INTERPOLANTS = [LinearInterpolant(), TrigInterpolant()]

# independent numpy formulas (not the code under test)
NP = {
    "linear": dict(alpha=lambda t: 1 - t, beta=lambda t: t, sigma=lambda t: (1 - t) / t),
    "trig": dict(alpha=lambda t: np.cos(np.pi * t / 2), beta=lambda t: np.sin(np.pi * t / 2),
                 sigma=lambda t: 1 / np.tan(np.pi * t / 2)),
}


@pytest.mark.parametrize("ip", INTERPOLANTS, ids=lambda i: i.name)
def test_endpoints(ip):
    t = torch.tensor([0.0, 1.0], dtype=F64)
    a, b = ip.alpha(t), ip.beta(t)
    tol = ulps(F64, 4)
    assert abs(float(a[0]) - 1) <= tol and abs(float(b[0])) <= tol
    assert abs(float(a[1])) <= tol and abs(float(b[1]) - 1) <= tol


@pytest.mark.parametrize("ip", INTERPOLANTS, ids=lambda i: i.name)
def test_coefficients_match_independent_formulas(ip):
    t = torch.linspace(0, 1, 101, dtype=F64)
    tn = t.numpy()
    np.testing.assert_allclose(ip.alpha(t).numpy(), NP[ip.name]["alpha"](tn), rtol=0, atol=ulps(F64, 4))
    np.testing.assert_allclose(ip.beta(t).numpy(), NP[ip.name]["beta"](tn), rtol=0, atol=ulps(F64, 4))


@pytest.mark.parametrize("ip", INTERPOLANTS, ids=lambda i: i.name)
def test_derivatives_match_autodiff_and_finite_differences(ip):
    t = torch.linspace(0.01, 0.99, 50, dtype=F64)
    one = torch.ones_like(t)
    for f, df in ((ip.alpha, ip.dalpha), (ip.beta, ip.dbeta)):
        _, auto = jvp(f, (t,), (one,))
        torch.testing.assert_close(df(t), auto, rtol=0, atol=ulps(F64, 16))
        h = fd_step(F64)
        fd = (f(t + h) - f(t - h)) / (2 * h)
        torch.testing.assert_close(df(t), fd, rtol=0, atol=fd_tol(F64))
    torch.testing.assert_close(ip.alpha_dalpha(t), ip.alpha(t) * ip.dalpha(t))


@pytest.mark.parametrize("ip", INTERPOLANTS, ids=lambda i: i.name)
def test_sample_time_derivative_is_dI_dt(ip):
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(16, 3, dtype=F64, generator=g)
    x0 = torch.randn(16, 3, dtype=F64, generator=g)
    t = torch.rand(16, dtype=F64, generator=g)
    smp = ip.sample(x1, t=t, x0=x0)
    _, dI = jvp(lambda tt: ip.sample(x1, t=tt, x0=x0).x_t, (t,), (torch.ones_like(t),))
    torch.testing.assert_close(smp.dx_t, dI, rtol=0, atol=ulps(F64, 16))
    tn = t.numpy()[:, None]
    expect = NP[ip.name]["alpha"](tn) * x0.numpy() + NP[ip.name]["beta"](tn) * x1.numpy()
    np.testing.assert_allclose(smp.x_t.numpy(), expect, rtol=0, atol=ulps(F64, 16))


def test_sample_draws_times_and_noise_from_generator():
    ip = LinearInterpolant()
    x1 = torch.zeros(5000, 1, dtype=F64)
    a = ip.sample(x1, generator=torch.Generator().manual_seed(3))
    b = ip.sample(x1, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.x_t, b.x_t)
    # t ~ U[0,1]: mean 1/2 within 5 standard errors (sd of U[0,1] is 1/sqrt(12))
    assert abs(float(a.t.mean()) - 0.5) < 5 / math.sqrt(12 * 5000)


times = st.floats(min_value=1e-3, max_value=1.0, allow_nan=False)


@given(t=times, which=st.sampled_from(["linear", "trig"]), seed=st.integers(0, 2**16))
def test_ve_conversion_matches_definition_and_round_trips(t, which, seed):
    ip = get_interpolant(which)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(4, 2, dtype=F64, generator=g)
    x1 = torch.randn(4, 2, dtype=F64, generator=g)
    I = ip.sample(x1, t=t, x0=x0).x_t
    sigma, u = ip.to_ve(t, I)
    sig_np = NP[which]["sigma"](t)
    assert abs(float(sigma[0]) - sig_np) <= ulps(F64, 64) * (1 + sig_np)
    # I_t / beta_t = x1 + sigma_t x0
    torch.testing.assert_close(u, x1 + sig_np * x0, rtol=0, atol=ulps(F64, 64) * (1 + float(u.abs().max())))
    t_back, I_back = ip.from_ve(sigma, u)
    assert float((t_back - t).abs().max()) <= ulps(F64, 64)
    torch.testing.assert_close(I_back, I, rtol=0, atol=ulps(F64, 256) * (1 + float(I.abs().max())))


@given(t=st.floats(min_value=1e-3, max_value=1 - 1e-3), which=st.sampled_from(["linear", "trig"]),
       seed=st.integers(0, 2**16))
def test_vp_conversion_matches_definition_and_round_trips(t, which, seed):
    # abar = 1 - O((1 - t)^2) saturates at the data end, so t (and the state scale) is recovered from
    # abar only to ~eps / (1 - t): the round trip is checked where that stays within round-off
    ip = get_interpolant(which)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(4, 2, dtype=F64, generator=g)
    x1 = torch.randn(4, 2, dtype=F64, generator=g)
    I = ip.sample(x1, t=t, x0=x0).x_t
    abar, u = ip.to_vp(t, I)
    a, b = NP[which]["alpha"](t), NP[which]["beta"](t)
    ab_np = b * b / (a * a + b * b)
    assert abs(float(abar[0]) - ab_np) <= ulps(F64, 64)
    expect = math.sqrt(ab_np) * x1 + math.sqrt(1 - ab_np) * x0
    torch.testing.assert_close(u, expect, rtol=0, atol=ulps(F64, 64) * 10)
    t_back, I_back = ip.from_vp(abar, u)
    # t(abar) loses accuracy like eps / (d abar / dt) near the ends; compare through abar instead
    torch.testing.assert_close(ip.t_to_alpha_bar(t_back), abar, rtol=0, atol=ulps(F64, 64))
    torch.testing.assert_close(I_back, I, rtol=0, atol=ulps(F64, 1024) * (1 + float(I.abs().max())))


def test_ve_undefined_at_t0_and_unknown_interpolant():
    ip = LinearInterpolant()
    with pytest.raises(ValueError, match="t must be > 0"):
        ip.to_ve(0.0, torch.zeros(2, 2, dtype=F64))
    with pytest.raises(ValueError, match="interpolant must be"):
        get_interpolant("cosine")
    with pytest.raises(ValueError, match="t must lie in"):
        ip.sample(torch.zeros(3, 2), t=1.5)
    with pytest.raises(ValueError, match="x0 must have the shape"):
        ip.sample(torch.zeros(3, 2), t=0.5, x0=torch.zeros(3, 3))
