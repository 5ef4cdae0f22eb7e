"""MeanFlow and shortcut objectives against independent computations on analytic flows.

* MeanFlow (conditional-velocity target, linear in dI_s/ds): the expected gradient along a fixed
  perturbation vanishes at the truth (Monte Carlo, and exactly on antithetic pairs), not off it;
  the gradient equals 2 d . (v - T) with T from a central difference of the closed-form map.
* Shortcut (model-built target): the residual is zero at the exact map (semigroup), positive off
  it; with the paper's finest step treated as the velocity it is O(D) at the finest level.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import scipy.stats
import torch

from workbench.core import fd_step, fd_tol, ulps
from workbench.flows import GaussianFlow, PointMassFlow
from workbench.losses.base import TimeBatch
from workbench.losses.meanflow import MeanFlow
from workbench.losses.shortcut import DyadicSampler, Shortcut
from workbench.losses.weighting import Weighting
from workbench.models import ExactFlowMap
from workbench.models.perturbed import PerturbedFlowMap, smooth_direction

F64 = torch.float64
FLOW = GaussianFlow([0.5, -1.0], [[2.0, 0.6], [0.6, 0.5]])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturbed(eps: float = 0.0, flow=FLOW) -> PerturbedFlowMap:
    return PerturbedFlowMap(ExactFlowMap(flow), smooth_direction, eps=eps)


def mc_gradient(objective, model, n: int, *, chunks: int = 128, seed: int = 0) -> tuple[float, float]:
    """Monte Carlo d/d eps of the batch-mean loss over n samples, and its standard error from
    ``chunks`` independent batch means."""
    g = gen(seed)
    grads = []
    for _ in range(chunks):
        res = objective(model, FLOW.sample_data(n // chunks, g), g)
        grads.append(torch.autograd.grad(res.loss.mean(), model.eps)[0])
    grads = torch.stack(grads)
    return float(grads.mean()), float(grads.std() / math.sqrt(chunks))


def off_times(s: torch.Tensor, t: torch.Tensor) -> TimeBatch:
    return TimeBatch(s=s, t=t, diagonal=torch.zeros(s.shape[0], dtype=torch.bool))


def fixed_batch(n: int, seed: int = 0):
    g = gen(seed)
    s = 0.05 + 0.4 * torch.rand(n, dtype=F64, generator=g)
    t = s + 0.3 + 0.2 * torch.rand(n, dtype=F64, generator=g)
    x1 = FLOW.sample_data(n, g)
    x0 = torch.randn(n, 2, dtype=F64, generator=g)
    return s, t, x0, x1


def antithetic(s, x0, x1):
    """Twins with the same I_s and dI' = 2 b_s(I_s) - dI (linear interpolant)."""
    se = s[:, None]
    x_s, dx = (1 - se) * x0 + se * x1, x1 - x0
    dx2 = 2 * FLOW.velocity(s, x_s) - dx
    return torch.cat([x0, x_s - se * dx2]), torch.cat([x1, x_s + (1 - se) * dx2])


def grad_eps(objective, model, x1, x0, times) -> float:
    res = objective(model, x1, x0=x0, times=times)
    return float(torch.autograd.grad(res.loss.mean(), model.eps)[0])


def v_pert(eps, s, t, x):
    """Closed-form perturbed average velocity (X_{s,t}(x) - x) / (t - s) + eps d(s, t, x), t != s."""
    return (FLOW.flow_map(s, t, x) - x) / (t - s)[:, None] + eps * smooth_direction(s, t, x)


def central(fn, s, x, w):
    """d/dtau fn(s + tau, x + tau w) by a central difference with the finfo-optimal step."""
    h = fd_step(F64)
    return (fn(s + h, x + h * w) - fn(s - h, x - h * w)) / (2 * h)


# -- MeanFlow ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", [MeanFlow(), MeanFlow(diag_fraction=0.0, weighting="none")],
                         ids=["default", "pure"])
def test_meanflow_expected_gradient_vanishes_at_truth(objective):
    m1, se1 = mc_gradient(objective, perturbed(0.0), 4096, seed=1)
    m4, se4 = mc_gradient(objective, perturbed(0.0), 4 * 4096, seed=2)
    assert abs(m1) < 4 * se1 and abs(m4) < 4 * se4, (m1, se1, m4, se4)
    assert 0.35 < se4 / se1 < 0.7
    # off the truth it is many standard errors from zero (and restoring: positive for eps > 0)
    mp, sep = mc_gradient(objective, perturbed(0.5), 4096, seed=3)
    assert mp > 10 * sep, (mp, sep)


@pytest.mark.parametrize("weighting", ["none", Weighting("adaptive", c=1e-3, p=1.0)])
def test_meanflow_antithetic_gradient_is_zero_at_truth(weighting):
    """The MeanFlow residual at the true map is -(I + (t - s) grad v)(dI_s/ds - b_s): odd under the
    antithetic twin (with the sign "+ (t - s) D_s v" of our clock; the other sign would not cancel)."""
    s, t, x0, x1 = fixed_batch(64)
    x0, x1 = antithetic(s, x0, x1)
    times = off_times(torch.cat([s, s]), torch.cat([t, t]))
    mf = MeanFlow(diag_fraction=0.0, weighting=weighting)
    assert abs(grad_eps(mf, perturbed(0.0), x1, x0, times)) <= ulps(F64, 1e4)
    assert abs(grad_eps(mf, perturbed(0.05), x1, x0, times)) > 1e-6


@pytest.mark.parametrize("method", ["jvp", "fd"])
def test_meanflow_gradient_matches_closed_form_target(method):
    s, t, x0, x1 = fixed_batch(16, seed=4)
    eps = 0.05
    mf = MeanFlow(diag_fraction=0.0, weighting="none", method=method)
    got = grad_eps(mf, perturbed(eps), x1, x0, off_times(s, t))
    x_s, dx = (1 - s[:, None]) * x0 + s[:, None] * x1, x1 - x0
    target = dx + (t - s)[:, None] * central(lambda ss, xx: v_pert(eps, ss, t, xx), s, x_s, dx)
    want = float((2 * smooth_direction(s, t, x_s) * (v_pert(eps, s, t, x_s) - target)).sum(1).mean())
    assert abs(got - want) < fd_tol(F64) * (1 + abs(want)), (got, want)


# -- shortcut ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flow", [FLOW, GaussianFlow([0.5, -1.0], [[2.0, 0.6], [0.6, 0.5]], interpolant="trig"),
                                  PointMassFlow([1.0, -2.0])], ids=["gauss-linear", "gauss-trig", "point-mass"])
def test_shortcut_residual_vanishes_at_truth_and_not_off_it(flow):
    sc = Shortcut(interpolant=flow.interpolant, diag_fraction=0.25)
    x1 = flow.sample_data(256, gen(0))
    exact = sc(ExactFlowMap(flow), x1, gen(1))
    off = exact.times.diagonal.logical_not()
    assert int(off.sum()) == 192
    scale = 1 + exact.aux["target_norm"]
    tol = ulps(F64, 1e4) * scale  # secants over gaps >= 2^-7 lose at most eps / gap
    assert bool((exact.terms["shortcut"].sqrt() <= tol).all()), float((exact.terms["shortcut"].sqrt() / scale).max())
    pert = sc(perturbed(1e-2, flow), x1, gen(1))
    assert bool((pert.terms["shortcut"].sqrt() > 1e4 * tol).float().mean() > 0.9)


def test_shortcut_finest_velocity_mode_is_two_euler_steps():
    """finest="velocity" replaces half-steps of size 2^-levels by the diagonal velocity (the paper's
    d = 1/128 flow-matching model): at the finest level the v-residual is the two-step Euler error
    divided by the step, O(D) (it halves with D); the default "map" mode stays exact."""
    s, _, x0, x1 = fixed_batch(32, seed=5)
    res = []
    for levels in (5, 6, 7):
        step = 2.0 * 0.5**levels
        times = off_times(s, s + step)
        sc = Shortcut(levels=levels, diag_fraction=0.0, finest="velocity")
        res.append(float(sc(ExactFlowMap(FLOW), x1, x0=x0, times=times).terms["shortcut"].sqrt().max()))
        exact = dataclasses.replace(sc, finest="map")(ExactFlowMap(FLOW), x1, x0=x0, times=times)
        assert float(exact.terms["shortcut"].sqrt().max()) < ulps(F64, 1e5)
    for big, small in zip(res, res[1:]):
        assert 1.7 < big / small < 2.3, res


def test_dyadic_sampler_law():
    n, levels = 20000, 4
    s, t = DyadicSampler(levels).sample(n, gen(0))
    step = t - s
    k = torch.round(-torch.log2(step))
    assert torch.equal(step, 0.5**k) and bool(((k >= 0) & (k < levels)).all())
    counts = torch.bincount(k.long(), minlength=levels).numpy()
    assert scipy.stats.chisquare(counts).pvalue > 1e-3  # k uniform on {0, ..., levels - 1}
    j = s / step
    assert torch.equal(j, torch.round(j)) and bool((t <= 1).all()) and bool((s >= 0).all())
    # on the finest level the grid index is uniform on {0, ..., 2^(levels-1) - 1}
    fine = j[k == levels - 1].long()
    assert scipy.stats.chisquare(torch.bincount(fine, minlength=2 ** (levels - 1)).numpy()).pvalue > 1e-3
    s2, t2 = DyadicSampler(levels, grid=False).sample(n, gen(1))
    assert bool((t2 <= 1).all()) and not torch.equal(s2 / (t2 - s2), torch.round(s2 / (t2 - s2)))


# -- weighting; bad configuration (the generic contract is in test_objectives.py) ---------------------
def test_meanflow_adaptive_weight_and_aux():
    """loss = l / sg(l + c)^p with l the raw loss; aux weight = 1 / (l + c)^p."""
    mf = MeanFlow(weighting=Weighting("adaptive", c=1e-3, p=0.5))
    res = mf(perturbed(0.1), FLOW.sample_data(16, gen(0)), gen(1))
    raw = res.aux["raw_loss"]
    assert torch.allclose(res.loss.detach(), raw / (raw + 1e-3) ** 0.5, rtol=ulps(F64, 8), atol=0)
    assert torch.allclose(res.aux["weight"], (raw + 1e-3) ** -0.5, rtol=ulps(F64, 8), atol=0)


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="levels"):
        Shortcut(levels=0)
    with pytest.raises(ValueError, match="finest"):
        Shortcut(finest="euler")
    with pytest.raises(TypeError, match="grid"):
        Shortcut(grid="yes")
