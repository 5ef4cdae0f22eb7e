"""sympy derivations of the point-mass and Gaussian flow maps, checked and compared with the code."""

import numpy as np
import pytest
import torch

from workbench.core import ulps
from workbench.flows import GaussianFlow, PointMassFlow, get_interpolant
from workbench.flows import symbolic as sym


@pytest.mark.parametrize("schedule", [None, "linear", "trig"])
def test_derived_maps_solve_the_ode_with_boundary_and_semigroup(schedule):
    for checks in (sym.check_point_mass(schedule), sym.check_gaussian(schedule)):
        assert checks.ode == 0 and checks.boundary == 0 and checks.semigroup == 0


def test_wrong_map_is_caught_by_the_symbolic_check():
    # the Cholesky-like / wrong-exponent map must NOT pass: use c_t/c_s instead of its square root
    X = sym.derive_gaussian_flow_map()
    c = lambda tt: sym.alpha(tt) ** 2 + sym.beta(tt) ** 2 * sym.lam
    wrong = sym.beta(sym.t) * sym.mu + c(sym.t) / c(sym.s) * (sym.x0 - sym.beta(sym.s) * sym.mu)
    assert sym._checks(wrong, sym.gaussian_velocity, "linear").ode != 0
    assert sym._checks(X, sym.gaussian_velocity, "linear").ode == 0


@pytest.mark.parametrize("schedule", ["linear", "trig"])
def test_lambdified_derivations_equal_the_torch_closed_forms(schedule):
    g = torch.Generator().manual_seed(0)
    ip = get_interpolant(schedule)
    a = np.array([0.7, -1.2])
    pm = PointMassFlow(a, interpolant=ip)
    f_pm = sym.lambdify_point_mass(schedule)
    mu = np.array([1.0, -2.0])
    lam = np.array([0.3, 2.0])
    gf = GaussianFlow(mu, np.diag(lam), interpolant=ip)  # diagonal: eigen-directions are the axes
    f_g = sym.lambdify_gaussian(schedule)
    for s, t in [(0.1, 0.7), (0.8, 0.2), (0.0, 0.95)]:
        x = torch.randn(5, 2, dtype=torch.float64, generator=g)
        np.testing.assert_allclose(pm.flow_map(s, t, x).numpy(), f_pm(s, t, x.numpy(), a), rtol=0, atol=ulps(torch.float64, 64))
        np.testing.assert_allclose(gf.flow_map(s, t, x).numpy(), f_g(s, t, x.numpy(), mu, lam), rtol=0, atol=ulps(torch.float64, 64))
