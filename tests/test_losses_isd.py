"""iSD (improved self-distillation, K26) against independent computations on analytic flows.

* At the exact map the off-diagonal residual vanishes: to round-off with the JVP tangent, as
  O(eps^2) with the central-difference tangent (the residual norm quarters when eps halves).
* Off the truth (PerturbedFlowMap) it is clearly positive.
* The gradient matches 2 d . (v - T) (+ the anchor) with T built from a central difference of the
  closed-form perturbed map: the stop-gradient sits on the whole target; for "isd_unstopped" the
  extra -2 (t - s) D_s d . (v - T) appears.
* The realised times follow iSD's Beta(0.8, 1) pair in its own clock (KS test after the flip).
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
from workbench.losses.isd import ImprovedSelfDistillation
from workbench.models import ExactFlowMap, make_mlp_flow_map
from workbench.models.perturbed import PerturbedFlowMap, smooth_direction

F64 = torch.float64
FLOW = GaussianFlow([0.5, -1.0], [[2.0, 0.6], [0.6, 0.5]])
ISD = ImprovedSelfDistillation()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturbed(eps: float = 0.0, flow=FLOW) -> PerturbedFlowMap:
    return PerturbedFlowMap(ExactFlowMap(flow), smooth_direction, eps=eps)


def fixed_batch(n: int, flow=FLOW, seed: int = 0):
    """Times away from the singular corners: s in [0.05, 0.45], t - s in [0.3, 0.5] (t <= 0.95)."""
    g = gen(seed)
    s = 0.05 + 0.4 * torch.rand(n, dtype=F64, generator=g)
    t = s + 0.3 + 0.2 * torch.rand(n, dtype=F64, generator=g)
    x1 = flow.sample_data(n, g)
    x0 = torch.randn(n, 2, dtype=F64, generator=g)
    return TimeBatch(s=s, t=t, diagonal=torch.zeros(n, dtype=torch.bool)), x0, x1


FLOWS = [FLOW, GaussianFlow([0.5, -1.0], [[2.0, 0.6], [0.6, 0.5]], interpolant="trig"), PointMassFlow([1.0, -2.0])]
FLOW_IDS = ["gauss-linear", "gauss-trig", "point-mass"]


# -- residual at and off the truth ---------------------------------------------------------------------
@pytest.mark.parametrize("flow", FLOWS, ids=FLOW_IDS)
def test_isd_residual_vanishes_at_truth_with_jvp(flow):
    times, x0, x1 = fixed_batch(64, flow)
    isd = dataclasses.replace(ISD, interpolant=flow.interpolant, method="jvp")
    res = isd(ExactFlowMap(flow), x1, x0=x0, times=times)
    scale = 1 + res.aux["target_norm"]
    assert bool((res.terms["isd_fmd"].sqrt() <= ulps(F64, 1e3) * scale).all()), float(res.terms["isd_fmd"].max())
    pert = isd(perturbed(1e-2, flow), x1, x0=x0, times=times)
    assert bool((pert.terms["isd_fmd"].sqrt() > 1e6 * ulps(F64, 1e3) * scale).all())
    # the anchor is the flow-matching term at (s, s) on every sample: the irreducible FM variance,
    # positive for a spread-out data law and zero for a point mass (dI_s/ds = b_s(I_s) there)
    assert res.terms["diag_fm"].shape == (64,)
    if isinstance(flow, PointMassFlow):
        assert float(res.terms["diag_fm"].sqrt().max()) <= ulps(F64, 1e3)
    else:
        assert float(res.terms["diag_fm"].mean()) > 0.1


@pytest.mark.parametrize("flow", FLOWS[:2], ids=FLOW_IDS[:2])
def test_isd_finite_difference_tangent_residual_is_second_order(flow):
    times, x0, x1 = fixed_batch(64, flow, seed=1)
    norms = []
    for fd_eps in (0.02, 0.01, 0.005):
        isd = dataclasses.replace(ISD, interpolant=flow.interpolant, method="fd", fd_eps=fd_eps)
        norms.append(float(isd(ExactFlowMap(flow), x1, x0=x0, times=times).terms["isd_fmd"].sqrt().max()))
    for big, small in zip(norms, norms[1:]):
        assert 3.6 < big / small < 4.4, norms  # O(eps^2)
    assert norms[-1] > 1e6 * ulps(F64, 1)  # far above round-off: truncation, as claimed


# -- gradients against an independent target ------------------------------------------------------------
def v_pert(eps, s, t, x):
    """Closed-form perturbed average velocity; the velocity b_s on the diagonal."""
    same = (t == s)[:, None]
    gap = torch.where(t == s, torch.ones_like(s), t - s)[:, None]
    v = torch.where(same, FLOW.velocity(s, x), (FLOW.flow_map(s, t, x) - x) / gap)
    return v + eps * smooth_direction(s, t, x)


def central(fn, s, x, w):
    h = fd_step(F64)
    return (fn(s + h, x + h * w) - fn(s - h, x - h * w)) / (2 * h)


@pytest.mark.parametrize("stop", [True, False])
def test_isd_gradient_matches_independent_target(stop):
    """Weighting none, anchor every: d loss / d eps = mean[2 d(s,s,x).(v^ - dI) + 2 d(s,t,x).(v - T)
    - (not stopped) 2 (t - s) D_s d . (v - T)], T = v^ + (t - s) D_s v by central differences."""
    times, x0, x1 = fixed_batch(16, seed=2)
    s, t = times.s, times.t
    eps = 0.05
    isd = dataclasses.replace(ISD, method="jvp", weighting="none", stop_tangent_gradient=stop)
    model = perturbed(eps)
    res = isd(model, x1, x0=x0, times=times)
    got = float(torch.autograd.grad(res.loss.mean(), model.eps)[0])
    x_s, dx = (1 - s[:, None]) * x0 + s[:, None] * x1, x1 - x0
    v_hat = v_pert(eps, s, s, x_s)
    target = v_hat + (t - s)[:, None] * central(lambda ss, xx: v_pert(eps, ss, t, xx), s, x_s, v_hat)
    r = v_pert(eps, s, t, x_s) - target
    per = 2 * (smooth_direction(s, s, x_s) * (v_hat - dx)).sum(1) + 2 * (smooth_direction(s, t, x_s) * r).sum(1)
    if not stop:
        dd = central(lambda ss, xx: smooth_direction(ss, t, xx), s, x_s, v_hat)
        per = per - 2 * ((t - s)[:, None] * dd * r).sum(1)
    want = float(per.mean())
    assert abs(got - want) < fd_tol(F64) * (1 + abs(want)), (got, want)
    # the FMD value itself is the independent |v - T|^2
    assert torch.allclose(res.terms["isd_fmd"].detach(), (r * r).sum(1), rtol=fd_tol(F64), atol=fd_tol(F64))


def test_unstopped_gradient_differs_on_a_network_but_not_its_loss():
    torch.manual_seed(0)
    net = make_mlp_flow_map(2, hidden=32, depth=2).double()
    x1 = FLOW.sample_data(32, gen(0))
    grads = {}
    losses = {}
    for stop in (True, False):
        net.zero_grad()
        isd = dataclasses.replace(ISD, method="jvp", stop_tangent_gradient=stop)
        res = isd(net, x1, gen(1))
        res.loss.mean().backward()
        losses[stop] = res.loss.detach()
        grads[stop] = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
    assert torch.allclose(losses[True], losses[False], rtol=ulps(F64, 16), atol=0)
    assert float((grads[True] - grads[False]).norm()) > 1e-3 * float(grads[True].norm())


# -- weightings, anchor modes, times ----------------------------------------------------------------------
def test_isd_weightings_and_anchor_modes():
    model = perturbed(0.1)
    times, x0, x1 = fixed_batch(16, seed=3)
    base = dataclasses.replace(ISD, method="jvp")
    plain = dataclasses.replace(base, weighting="none")(model, x1, x0=x0, times=times)
    fm, fmd = plain.terms["diag_fm"].detach(), plain.terms["isd_fmd"].detach()
    total = fm + fmd
    assert torch.allclose(plain.aux["raw_loss"], total, rtol=ulps(F64, 8), atol=0)
    ada = base(model, x1, x0=x0, times=times)  # default: adaptive, c = 0.01, p = 1, on the total
    assert torch.allclose(ada.loss.detach(), total / (total + 0.01), rtol=ulps(F64, 8), atol=0)
    assert torch.allclose(ada.aux["weight"], 1 / (total + 0.01), rtol=ulps(F64, 8), atol=0)
    hub = dataclasses.replace(base, weighting="pseudo_huber", time_weight="sin")(model, x1, x0=x0, times=times)
    want = (fm + torch.sqrt(fmd + 25.0) - 5.0) * torch.sin(0.5 * math.pi * times.s)
    assert torch.allclose(hub.loss.detach(), want, rtol=ulps(F64, 64), atol=0)
    # split anchor: diagonal samples carry only flow matching, the rest only the FMD term
    split = dataclasses.replace(base, anchor="split", diag_fraction=0.25, weighting="none")
    res = split(model, x1, gen(4))
    n_d = int(res.times.diagonal.sum())
    assert n_d == 4 and res.terms["diag_fm"].shape == (4,) and res.terms["isd_fmd"].shape == (12,)
    assert torch.allclose(res.loss[n_d:].detach(), res.terms["isd_fmd"].detach(), rtol=0, atol=0)
    # every anchor with extra diagonal samples: diag_fm spans the batch
    every = dataclasses.replace(base, diag_fraction=0.25, weighting="none")(model, x1, gen(4))
    assert every.terms["diag_fm"].shape == (16,) and every.terms["isd_fmd"].shape == (12,)


def test_isd_time_law_is_the_flipped_beta_pair():
    """iSD draws two iid Beta(0.8, 1) in its clock (t_iSD = 1 - ours) and sorts them; so our start
    s = 1 - max and end t = 1 - min, with CDFs 1 - G(1 - x)^2 and (1 - G(1 - x))^2 (G the Beta(0.8, 1)
    CDF). The unflipped law BetaPair(0.8, 1) is rejected."""
    res = ISD(ExactFlowMap(FLOW), FLOW.sample_data(4000, gen(0)), gen(1))
    s, t = res.times.s.numpy(), res.times.t.numpy()
    G = scipy.stats.beta(0.8, 1.0).cdf
    assert scipy.stats.kstest(s, lambda x: 1 - G(1 - x) ** 2).pvalue > 1e-3
    assert scipy.stats.kstest(t, lambda x: (1 - G(1 - x)) ** 2).pvalue > 1e-3
    assert scipy.stats.kstest(t, lambda x: G(x) ** 2).pvalue < 1e-6  # max of two unflipped draws


# -- bad configuration (the generic contract is in test_objectives.py) -------------------------------------
def test_isd_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="anchor"):
        dataclasses.replace(ISD, anchor="none")
    with pytest.raises(ValueError, match="time_weight"):
        dataclasses.replace(ISD, time_weight="cos")
    with pytest.raises(TypeError, match="stop_tangent_gradient"):
        dataclasses.replace(ISD, stop_tangent_gradient=1)
