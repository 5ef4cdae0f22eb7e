"""The CDF-based oracles (rings, 1-D mixtures) near the data end, between and outside the components.

There a point's CDF level differs from a component boundary by tail masses of 1e-98 or far less; a
float64 CDF (or log CDF) rounds them away, and the inverse then returned NaN (X_{s,1} of the rings)
or landed anywhere in the gap between two components (round-trip errors of 0.5). The oracles now
transport the level as an offset from the boundary (``workbench.flows.cdf_inversion``). Checked
here against computations that share no code with them:

* the ODE oracle ``solve_flow`` (Dormand-Prince on the flow's own velocity, itself checked against
  scipy in test_ode.py), run in the contracting direction (forward in time: backward maps from near
  t = 1 expand by alpha_s / alpha_t, so X_{s,t} with t < s is checked as X_{t,s}(X) = x);
* mpmath at 60 digits (``tests/cdf_reference.py``): Gaussian CDFs and the Bessel series of Marcum's Q,
  levels formed from directly evaluated tails, maps by bisection;
* for t = 1 (singular: the map sends each radius onto a ring, each x onto an atom): the ring the ODE
  reaches at t = 1 - 1e-6, and the sign of the mpmath level offset.
"""

from __future__ import annotations

import math

import mpmath as mp
import pytest
import torch
from cdf_reference import mixture_map, rings_density, rings_level, rings_offset, schedule
from hypothesis import example, given, settings
from hypothesis import strategies as st

from workbench.core.tolerances import ulps
from workbench.flows.mixture1d import Mixture1DFlow
from workbench.flows.ode import solve_flow
from workbench.flows.registry import make_flow
from workbench.flows.rings import RingsFlow

F64 = torch.float64
RADII, WEIGHTS = [1.0, 2.5], [0.4, 0.6]  # the registry's "rings"
# the reported point: X_{s,1} was NaN, X_{s,0.999} landed between the rings (|X| = 1.575, round trip 0.5)
ISSUE_S = 0.9969404339790344
ISSUE_X = [0.3905434022917875, 0.9865226634729689]
NEAR_ONE = 1.0 - 1e-6
ORACLE_TOL = 1e-9  # the ODE oracle's relative accuracy at rtol = atol = 1e-11 (test_ode.py)
data_end_times = st.floats(0.5, NEAR_ONE)


def rings(ip):
    return RingsFlow(RADII, WEIGHTS, interpolant=ip)


def rel(a, b):
    return ((a - b).norm(dim=1) / (1 + b.norm(dim=1))).max().item()


def off_distribution(seed, n=8, dim=2, half_width=3.0):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.rand(n, dim, dtype=F64, generator=g) - 1) * half_width


def ring_tails(flow, s, seed, n=8):
    """n points 5 to 40 alpha_s inside or outside a ring at time s (tail masses 1e-6 to 1e-350)."""
    g = torch.Generator().manual_seed(seed)
    st_ = torch.tensor(s, dtype=F64)
    al, be = flow.interpolant.alpha(st_), flow.interpolant.beta(st_)
    j = torch.randint(len(RADII), (n,), generator=g)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(F64)
    r = be * torch.tensor(RADII, dtype=F64)[j] + al * sign * (5 + 35 * torch.rand(n, dtype=F64, generator=g))
    theta = 2 * math.pi * torch.rand(n, dtype=F64, generator=g)
    return torch.stack([r * theta.cos(), r * theta.sin()], -1)


def ode_error(flow, s, t, x):
    """Relative error of X_{s,t}(x) against the ODE oracle, run forward in time (contracting)."""
    X = flow.flow_map(s, t, x)
    if t >= s:
        return rel(X, solve_flow(flow.velocity, s, t, x).x)
    return rel(solve_flow(flow.velocity, t, s, X).x, x)


# -- rings ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ip", ["linear", "trig"])
def test_rings_issue_point_reaches_the_inner_ring(ip):
    flow = make_flow("rings", ip)
    x = torch.tensor([ISSUE_X], dtype=F64)
    r = float(x.norm())
    inner, offset = rings_level(RADII, WEIGHTS, ip, ISSUE_S, r)
    # mpmath: the level sits 1e-98 (linear; 1e-37 trig) below the boundary 0.4, in the inner ring's share
    assert inner == [True, False] and offset < 0 and -120 < float(mp.log10(-offset)) < -30
    X = flow.flow_map(ISSUE_S, 1.0, x)
    assert bool(torch.isfinite(X).all())
    assert abs(float(X.norm()) - RADII[0]) <= ulps(F64, 8)
    assert rel(X / X.norm(), x / r) <= ulps(F64, 8)


@pytest.mark.parametrize("ip", ["linear", "trig"])
def test_rings_issue_point_near_the_data_end_matches_ode_and_mpmath(ip):
    flow = make_flow("rings", ip)
    x = torch.tensor([ISSUE_X], dtype=F64)
    t = 0.999
    assert ode_error(flow, ISSUE_S, t, x) <= ORACLE_TOL
    X = flow.flow_map(ISSUE_S, t, x)
    assert rel(flow.flow_map(t, ISSUE_S, X), x) <= ORACLE_TOL
    _assert_level_transported(ip, ISSUE_S, t, float(x.norm()), float(X.norm()))


def _assert_level_transported(ip, s, t, r, rho, n_ulps=64):
    """mpmath: rho is the root of G_t(rho) - c = G_s(r) - c to n_ulps, measured by one Newton step in 60-digit
    arithmetic. The float64 inputs carry the level to eps |ln |D_s|| relative (a log of magnitude |ln D|
    is good to its last ulp), which moves the root by that over the log-slope kappa = d ln|D_t| / d ln rho."""
    inner, level_s = rings_level(RADII, WEIGHTS, ip, s, r)
    with mp.workdps(60):
        level_t = rings_offset(RADII, WEIGHTS, ip, t, rho, inner)
        density = rings_density(RADII, WEIGHTS, ip, t, rho)
        step = (level_t - level_s) / density
        kappa = abs(rho * density / level_t)
        tol = ulps(F64, n_ulps) * rho * (1 + float(abs(mp.log(abs(level_s))) / kappa))
        assert abs(float(step)) <= tol, (s, t, r, rho, float(step), tol)


@pytest.mark.parametrize(
    ("s", "t", "r"),
    [
        (ISSUE_S, 0.999, 1.0609864306068428),  # 21 alpha_s outside the inner ring (level 1e-98 off 0.4)
        (0.999, 0.9999, 1.75),  # midway between the rings: both tails ~exp(-2.8e5)
        (0.995, 0.999, 2.6),  # outside the outer ring (upper tail ~1e-200)
        (0.995, 0.9, 0.9),  # inside the inner ring, mapped backward
    ],
)
def test_rings_level_is_transported_in_the_gaps(s, t, r):
    x = torch.tensor([[0.6 * r, -0.8 * r]], dtype=F64)
    X = rings("linear").flow_map(s, t, x)
    _assert_level_transported("linear", s, t, float(x.norm()), float(X.norm()))


@settings(max_examples=20, deadline=None)
@given(s=data_end_times, t=data_end_times, seed=st.integers(0, 2**16), ip=st.sampled_from(["linear", "trig"]))
@example(s=ISSUE_S, t=0.999, seed=0, ip="linear")
@example(s=ISSUE_S, t=0.999, seed=0, ip="trig")
@example(s=0.5, t=NEAR_ONE, seed=1, ip="linear")
def test_rings_near_data_end_off_distribution_matches_ode(s, t, seed, ip):
    """0.5 <= s <= t <= 1 - 1e-6, points anywhere in [-3, 3]^2 and 5-40 alpha_s off a ring.

    Forward maps only: a backward map from near t = 1 sends whole gaps between the rings to one float64
    radius (from s = 1 - 1e-6 to 0.5 every point between the rings has a level within exp(-1e9) of 0.4),
    so it cannot be checked by inverting it; the backward maps are checked against mpmath above and by
    the round trips of the sweep below."""
    s, t = min(s, t), max(s, t)
    flow = make_flow("rings", ip)
    x = torch.cat([torch.tensor([ISSUE_X], dtype=F64), off_distribution(seed), ring_tails(flow, s, seed)])
    assert ode_error(flow, s, t, x) <= ORACLE_TOL


@settings(max_examples=20, deadline=None)
@given(s=data_end_times, seed=st.integers(0, 2**16), ip=st.sampled_from(["linear", "trig"]))
@example(s=ISSUE_S, seed=0, ip="linear")
@example(s=ISSUE_S, seed=0, ip="trig")
def test_rings_map_to_data_picks_the_ring_the_ode_reaches(s, seed, ip):
    """X_{s,1}(x) lies on the ring the ODE reaches at t = 1 - 1e-6 (the rings are 1.5 apart, the ODE
    radius is within alpha_t |q| ~ 1e-3 of its ring)."""
    flow = make_flow("rings", ip)
    x = torch.cat([torch.tensor([ISSUE_X], dtype=F64), off_distribution(seed), ring_tails(flow, s, seed)])
    X = flow.flow_map(s, 1.0, x)
    assert bool(torch.isfinite(X).all())
    beta_1 = float(schedule(ip, 1.0)[1])
    rings_at_1 = torch.tensor(RADII, dtype=F64) * beta_1
    radius = X.norm(dim=1)
    assert float((radius[:, None] - rings_at_1).abs().min(dim=1).values.max()) <= ulps(F64, 8) * max(RADII)
    reached = solve_flow(flow.velocity, s, NEAR_ONE, x).x.norm(dim=1)
    nearest = rings_at_1[(reached[:, None] - rings_at_1).abs().argmin(dim=1)]
    assert torch.equal(torch.isclose(radius, nearest, rtol=ulps(F64, 8), atol=0.0), torch.ones_like(radius, dtype=torch.bool))


@pytest.mark.parametrize("ip", ["linear", "trig"])
def test_rings_sweep_of_the_report_is_finite_and_inverts(ip):
    """The reported sweep: 3000 points with s in [0.5, 1) (199 gave NaN at t = 1), and t = 0.999 round trips."""
    flow = make_flow("rings", ip)
    g = torch.Generator().manual_seed(0)
    n = 3000
    s = (0.5 + 0.5 * torch.rand(n, dtype=F64, generator=g)).clamp_max(NEAR_ONE)
    x = (2 * torch.rand(n, 2, dtype=F64, generator=g) - 1) * 3.0
    X1 = flow.flow_map(s, 1.0, x)
    assert bool(torch.isfinite(X1).all())
    on_ring = (X1.norm(dim=1)[:, None] - torch.tensor(RADII, dtype=F64) * float(schedule(ip, 1.0)[1])).abs().min(1).values
    assert float(on_ring.max()) <= ulps(F64, 8) * max(RADII)
    X = flow.flow_map(s, 0.999, x)
    # backward legs expand by alpha_s / alpha_t <= 1e3: the round trip holds ORACLE_TOL, not round-off
    assert rel(flow.flow_map(0.999, s, X), x) <= ORACLE_TOL


def test_rings_refuse_levels_beyond_float64():
    """|x| ~ 1e200 alpha_s from the rings: the tail mass is exp(-1e400), below even log-space range."""
    flow = rings("linear")
    with pytest.raises(ValueError, match="cannot resolve 1 point"):
        flow.flow_map(0.5, 0.7, torch.tensor([[1e200, 0.0]], dtype=F64))


# -- 1-D mixtures ----------------------------------------------------------------------------------------
NARROW = dict(weights=[0.3, 0.4, 0.3], means=[-1.5, 0.0, 2.0], stds=[0.01, 0.02, 0.01])
ATOMS = dict(weights=[0.3, 0.4, 0.3], means=[-1.5, 0.0, 2.0], stds=[0.0, 0.4, 0.0])
# the mixture map's accuracy: the root is found to a few ulps of the level equation; the level's own
# rounding (a few eps relative in a log CDF of magnitude |log D| <= ~1e5) moves it by ~eps |log D| / |z|
MIX_TOL = ulps(F64, 256)


@settings(max_examples=30, deadline=None)
@given(s=st.floats(0.5, NEAR_ONE), t=st.floats(0.0, 1.0), x=st.floats(-3.0, 3.0), ip=st.sampled_from(["linear", "trig"]))
@example(s=0.99, t=0.999, x=-0.75, ip="linear")  # was -0.6296 (between the components), is -0.6764
@example(s=0.95, t=1.0, x=1.0, ip="linear")  # was 0.2552 (component 2's tail), is 1.8232 (component 3's)
@example(s=0.9, t=0.95, x=-0.8, ip="linear")  # round trip was off by 4e-10
def test_mixture_between_narrow_components_matches_mpmath(s, t, x, ip):
    flow = Mixture1DFlow(**NARROW, interpolant=ip)
    y = float(flow.flow_map(s, t, torch.tensor([[x]], dtype=F64)))
    y_ref = mixture_map(NARROW, ip, s, t, x)
    assert abs(y - y_ref) <= MIX_TOL * (1 + abs(y_ref)), (y, y_ref)


@settings(max_examples=20, deadline=None)
@given(s=st.floats(0.5, NEAR_ONE), x=st.floats(-3.0, 3.0), ip=st.sampled_from(["linear", "trig"]))
@example(s=0.9999, x=-0.9, ip="linear")
def test_mixture_with_atoms_to_data_end_matches_mpmath(s, x, ip):
    """X_{s,1} sends x onto the atom (or the point of the continuous component) whose share holds F_s(x)."""
    flow = Mixture1DFlow(**ATOMS, interpolant=ip)
    y = float(flow.flow_map(s, 1.0, torch.tensor([[x]], dtype=F64)))
    y_ref = mixture_map(ATOMS, ip, s, 1.0, x)
    assert math.isfinite(y)
    assert abs(y - y_ref) <= MIX_TOL * (1 + abs(y_ref)), (y, y_ref)


@settings(max_examples=10, deadline=None)
@given(log10_x=st.floats(2.0, 152.0), sign=st.sampled_from([-1.0, 1.0]), s=st.floats(0.0, 0.999),
       t=st.floats(0.0, 1.0), ip=st.sampled_from(["linear", "trig"]))
@example(log10_x=18.0, sign=1.0, s=0.2, t=0.7, ip="linear")  # the root search stalled on a NaN bracket
@example(log10_x=100.0, sign=1.0, s=0.0, t=0.5, ip="linear")
def test_mixture_far_tails_match_mpmath(log10_x, sign, s, t, ip):
    """|x| from 1e2 to 1e152: the level is a tail of log-size up to 1e304, still transported (Phi^-1 of such
    levels used a Mills ratio exp(-q^2 / 2 - log Phi(q)) that is NaN beyond |q| ~ 1e17)."""
    p = dict(weights=[0.3, 0.7], means=[-1.5, 1.0], stds=[0.3, 0.5])  # the registry's "mixture1d"
    x = sign * 10.0**log10_x
    y = float(Mixture1DFlow(**p, interpolant=ip).flow_map(s, t, torch.tensor([[x]], dtype=F64)))
    y_ref = mixture_map(p, ip, s, t, x)
    assert abs(y - y_ref) <= MIX_TOL * (1 + abs(y_ref)), (y, y_ref)


def test_rings_far_out_match_the_ode():
    """|x| = 1e18 (the quadrature's Mills ratio had the same NaN)."""
    flow = rings("linear")
    x = torch.tensor([[6e17, -8e17]], dtype=F64)
    for s, t in [(0.2, 0.7), (0.0, 0.5)]:
        assert ode_error(flow, s, t, x) <= ORACLE_TOL


@pytest.mark.parametrize("x", [1e154, -1e200])
def test_mixture_refuses_levels_beyond_float64(x):
    """Beyond ~1e153 component widths the level is below exp(-1e306): refused, not guessed."""
    flow = Mixture1DFlow(**NARROW)
    with pytest.raises(ValueError, match="cannot resolve 1 point"):
        flow.flow_map(0.5, 0.7, torch.tensor([[x]], dtype=F64))


def test_level_offsets_keep_full_relative_accuracy():
    """cdf_level on two components with tails 1e-98 and 1e-120: D = 1e-98 pi_2 - 1e-120 pi_1, exactly."""
    from workbench.flows.cdf_inversion import cdf_level

    log_pi = torch.log(torch.tensor([0.4, 0.6], dtype=F64))
    log_F = log_pi + torch.tensor([[math.log1p(-1e-120), -98 * math.log(10)]], dtype=F64)
    log_S = log_pi + torch.tensor([[-120 * math.log(10), math.log1p(-1e-98)]], dtype=F64)
    level = cdf_level(log_F, log_S, log_pi, torch.tensor([[True, False]]))
    D = 0.6e-98 - 0.4e-120
    assert bool(level.positive.all())
    # the inputs are logs of magnitude ~226, themselves good to an ulp of that magnitude
    assert abs(math.expm1(float(level.log_D) - math.log(D))) <= ulps(F64, 8) * abs(math.log(D))
    assert abs(float(level.log_F) - math.log(0.4 + D)) <= ulps(F64, 8)


def test_references_agree_with_scipy_where_scipy_holds():
    """The mpmath references themselves: Marcum's Q against scipy's ncx2 (|Z + a e|^2 ~ chi'^2_2(a^2)) and
    the mixture bisection against a scipy root, at moderate arguments where both are accurate."""
    from cdf_reference import rice_cdf
    from scipy import optimize, stats

    # scipy's ncx2 log-CDF / log-SF and the brentq root (xtol = rtol = 1e-15, then the mixture CDF's own
    # few-ulp error over a slope of O(1)) are each good to some hundred ulps at these moderate arguments
    tol = ulps(F64, 500)
    for a, b in [(0.1, 0.05), (3.0, 5.0), (5.0, 3.0), (30.0, 29.0), (20.0, 25.0)]:
        G, S = rice_cdf(a, b)
        assert abs(math.expm1(float(mp.log(G)) - stats.ncx2.logcdf(b * b, 2, a * a))) <= tol
        assert abs(math.expm1(float(mp.log(S)) - stats.ncx2.logsf(b * b, 2, a * a))) <= tol
    p = dict(weights=[0.3, 0.7], means=[-1.0, 1.0], stds=[0.5, 0.8])

    def cdf(t, y):
        sd = [math.sqrt((1 - t) ** 2 + t * t * v * v) for v in p["stds"]]
        return sum(w * stats.norm.cdf((y - t * m) / s) for w, m, s in zip(p["weights"], p["means"], sd))

    y_ref = optimize.brentq(lambda y: cdf(0.7, y) - cdf(0.2, 0.4), -10, 10, xtol=1e-15, rtol=1e-15)
    assert abs(mixture_map(p, "linear", 0.2, 0.7, 0.4) - y_ref) <= tol


def test_mills_ratio_against_mpmath_over_the_whole_range():
    """phi(z) / Phi(z) from z = -1e18 to 40: the naive exp(-z^2/2 - log Phi(z)) is NaN below -1e17."""
    from workbench.flows.cdf_inversion import mills_ratio

    zs = [-1e18, -1e8, -1e3, -40.0, -5.0, -0.5, 0.0, 0.5, 5.0, 30.0]
    got = mills_ratio(torch.tensor(zs, dtype=F64))
    with mp.workdps(120):  # mpmath's own ncdf needs the digits at z = -1e18 (at 40 digits it is off by 5e-9)
        ref = [float(mp.npdf(z) / mp.ncdf(z)) for z in map(mp.mpf, zs)]
    for z, g, r in zip(zs, got.tolist(), ref):
        # for z > 0, phi(z) = exp(-z^2 / 2) carries the rounding of z^2 / 2 (relative eps z^2 / 2)
        assert abs(g / r - 1) <= ulps(F64, 16) * (1 + max(z, 0.0) ** 2), (z, g, r)
