"""Consistency objectives (discrete CT / CD, continuous-time sCM-style CT) against independent
computations on the Gaussian flow, whose flow map is affine in x with a closed form.

* CD with the exact teacher: residual = the solver's local error, O(h^2) Euler / O(h^3) Heun.
* CT's expected gradient at the truth equals CD's exactly for an affine flow map (the Euler point
  I_s + h dI_s/ds enters X_{u,t} affinely and E[dI_s/ds | I_s] = b_s): checked exactly with
  antithetic pairs, and in Monte Carlo, and it is O(h) with lambda = 1/h (the Jensen-free bias of an
  Euler step), not zero.
* sCM-style CT: the expected gradient along a fixed perturbation vanishes at the truth (Monte Carlo
  mean within 4 standard errors, standard error halving from n to 4n; exactly zero on antithetic
  pairs) and is many standard errors away from zero off the truth.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from workbench.core import eps as machine_eps
from workbench.core import ulps
from workbench.flows import GaussianFlow
from workbench.losses.base import TimeBatch
from workbench.losses.consistency import (
    ConsistencyDistillation,
    ConsistencyTraining,
    ContinuousConsistencyTraining,
)
from workbench.models import ExactFlowMap
from workbench.models.perturbed import PerturbedFlowMap, smooth_direction

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


FLOW = GaussianFlow([0.5, -1.0], [[2.0, 0.6], [0.6, 0.5]])


def perturbed(eps: float = 0.0) -> PerturbedFlowMap:
    return PerturbedFlowMap(ExactFlowMap(FLOW), smooth_direction, eps=eps)


def mc_gradient(objective, model, n: int, *, chunks: int = 128, seed: int = 0) -> tuple[float, float]:
    """Monte Carlo estimate of d/d eps E[loss] (the batch mean over n samples) and its standard
    error from ``chunks`` independent batch means (batch-means estimator)."""
    g = gen(seed)
    per = n // chunks
    grads = []
    for _ in range(chunks):
        x1 = FLOW.sample_data(per, g)
        res = objective(model, x1, g)
        (d,) = torch.autograd.grad(res.loss.mean(), model.eps)
        grads.append(d)
    grads = torch.stack(grads)
    return float(grads.mean()), float(grads.std() / math.sqrt(chunks))


def antithetic_batch(n: int, s: torch.Tensor, seed: int = 0):
    """(x0, x1) of 2n samples, the second half the antithetic twins of the first for the linear
    interpolant: same I_s, conditional velocity reflected about b_s(I_s): dI' = 2 b_s(I_s) - dI."""
    g = gen(seed)
    x1 = FLOW.sample_data(n, g)
    x0 = torch.randn(n, 2, dtype=F64, generator=g)
    se = s[:, None]
    x_s, dx = (1 - se) * x0 + se * x1, x1 - x0
    dx_twin = 2 * FLOW.velocity(s, x_s) - dx
    x1_twin, x0_twin = x_s + (1 - se) * dx_twin, x_s - se * dx_twin
    return torch.cat([x0, x0_twin]), torch.cat([x1, x1_twin])


def off_times(s: torch.Tensor, t: torch.Tensor) -> TimeBatch:
    return TimeBatch(s=s, t=t, diagonal=torch.zeros(s.shape[0], dtype=torch.bool))


def fixed_times(n: int, seed: int = 1, t_end: float | None = None):
    g = gen(seed)
    s = 0.05 + 0.4 * torch.rand(n, dtype=F64, generator=g)
    t = torch.full_like(s, t_end) if t_end is not None else s + 0.3 + 0.2 * torch.rand(n, dtype=F64, generator=g)
    return s, t


def affine_direction(s: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d(s, t, x) = (1 + s + t^2) x M + (t - s) c: a perturbation that keeps the map affine in x."""
    M = torch.tensor([[0.3, -0.7], [0.5, 0.2]], dtype=x.dtype)
    c = torch.tensor([1.0, -0.4], dtype=x.dtype)
    return (1 + s + t * t)[:, None] * (x @ M) + (t - s)[:, None] * c


def grad_eps(objective, model, x1, x0, times) -> float:
    res = objective(model, x1, x0=x0, times=times)
    (d,) = torch.autograd.grad(res.loss.mean(), model.eps)
    return float(d)


# -- CD: the one-step solver error --------------------------------------------------------------------
@pytest.mark.parametrize("solver,order", [("euler", 2), ("heun", 3)])
def test_cd_with_exact_teacher_residual_is_local_solver_error(solver, order):
    n = 32
    s, t = fixed_times(n, t_end=None)
    times = off_times(s, t)
    x1 = FLOW.sample_data(n, gen(2))
    x0 = torch.randn(n, 2, dtype=F64, generator=gen(3))
    cd = ConsistencyDistillation(teacher=FLOW, distance="l2", delta_weight="one", solver=solver)
    deltas = [0.04, 0.02, 0.01]

    def residual(model, delta):
        res = dataclasses.replace(cd, delta=delta)(model, x1, x0=x0, times=times)
        return res.aux["residual_norm"].max().item()

    exact = [residual(ExactFlowMap(FLOW), d) for d in deltas]
    for big, small in zip(exact, exact[1:]):
        ratio = big / small  # 2^order for an O(h^order) residual
        assert 0.8 * 2**order < ratio < 1.25 * 2**order, (solver, exact)
    # off the truth (student perturbed, exact teacher) the residual is only O(h): it halves with h
    deltas = [0.01, 0.005, 0.0025]
    exact = [residual(ExactFlowMap(FLOW), d) for d in deltas]
    pert = [residual(perturbed(0.2), d) for d in deltas]
    assert all(p > 5 * r for p, r in zip(pert, exact)), (pert, exact)
    for big, small in zip(pert, pert[1:]):
        assert 1.7 < big / small < 2.4, pert


def test_cd_and_ct_need_valid_fields():
    """Family-specific fields (the teacher and the split fields are checked for every objective in
    test_objectives.py)."""
    with pytest.raises(ValueError, match="solver"):
        ConsistencyDistillation(teacher=FLOW, solver="rk4")
    with pytest.raises(ValueError, match="delta"):
        ConsistencyTraining(delta=0.0)
    with pytest.raises(ValueError, match="delta"):
        ConsistencyTraining(delta=1.5)
    with pytest.raises(ValueError, match="distance"):
        ConsistencyTraining(distance="l1")
    with pytest.raises(ValueError, match="delta_weight"):
        ConsistencyTraining(delta_weight="sqrt")
    with pytest.raises(ValueError, match="huber_c"):
        ConsistencyTraining(huber_c=-1.0)
    with pytest.raises(ValueError, match="step"):
        ConsistencyTraining(step="heun")
    with pytest.raises(ValueError, match="warmup"):
        ContinuousConsistencyTraining(warmup=1.5)
    with pytest.raises(ValueError, match="tangent_c"):
        ContinuousConsistencyTraining(tangent_c=0.0)
    with pytest.raises(ValueError, match="t_end"):
        ContinuousConsistencyTraining(t_end=1.5)
    # given times with an off-diagonal s = t: lambda = 1/h is infinite there (it was a silent NaN)
    times = TimeBatch(s=torch.tensor([0.2, 0.5], dtype=F64), t=torch.tensor([0.6, 0.5], dtype=F64),
                      diagonal=torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs t > s"):
        ConsistencyTraining(t_end=None)(ExactFlowMap(FLOW), FLOW.sample_data(2), times=times)
    one = ConsistencyTraining(t_end=None, delta_weight="one")(ExactFlowMap(FLOW), FLOW.sample_data(2), times=times)
    assert float(one.terms["ct"][1]) == 0.0  # lambda = 1 and X_{s,s} = id: a zero residual, not a NaN


# -- CT: expected gradient = CD's for an affine map, O(h) -------------------------------------------------
@pytest.mark.parametrize("t_end", [1.0, None])
def test_ct_antithetic_gradient_equals_cd_gradient_exactly(t_end):
    """For an affine flow map, averaging CT over an antithetic pair replaces dI_s/ds by b_s(I_s):
    the CT gradient on the pair batch equals the CD (Euler, exact teacher) gradient, to round-off."""
    n = 64
    s, t = fixed_times(n, t_end=t_end)
    x0, x1 = antithetic_batch(n, s)
    times2 = off_times(torch.cat([s, s]), torch.cat([t, t]))
    for eps in (0.0, 0.05):
        # at eps != 0 the perturbation is affine in x, so the map stays affine and the identity holds
        model = PerturbedFlowMap(ExactFlowMap(FLOW), affine_direction, eps=eps)
        ct = ConsistencyTraining(distance="l2", delta=0.1, t_end=t_end)
        cd = ConsistencyDistillation(teacher=FLOW, distance="l2", delta=0.1, t_end=t_end)
        g_ct = grad_eps(ct, model, x1, x0, times2)
        g_cd = grad_eps(cd, model, x1, x0, times2)  # the pair's two halves share I_s: same CD terms
        assert abs(g_ct - g_cd) <= ulps(F64, 1e4) * (1 + abs(g_cd)), (eps, g_ct, g_cd)
        if eps == 0.0:
            assert abs(g_cd) > 1e-3  # the Euler-step bias: not zero at the truth


def test_ct_expected_gradient_at_truth_is_order_delta():
    model = perturbed(0.0)
    n = 16384
    ct = ConsistencyTraining(distance="l2", delta_weight="inverse", t_end=1.0)
    cd = ConsistencyDistillation(teacher=FLOW, distance="l2", delta_weight="inverse", t_end=1.0)
    est = {}
    for d in (0.4, 0.1):
        est[("ct", d)] = mc_gradient(dataclasses.replace(ct, delta=d), model, n, seed=10)
    for d in (0.4, 0.1, 0.05, 0.025):
        est[("cd", d)] = mc_gradient(dataclasses.replace(cd, delta=d), model, n, seed=11)
    for d in (0.4, 0.1):
        (m_ct, se_ct), (m_cd, se_cd) = est[("ct", d)], est[("cd", d)]
        assert abs(m_ct) > 4 * se_ct  # CT is biased at the truth ...
        assert abs(m_ct - m_cd) < 4 * math.hypot(se_ct, se_cd)  # ... exactly by CD's Euler bias
    # ... which is O(delta): halving delta about halves it (ratio -> 2 as delta -> 0)
    assert abs(est[("ct", 0.1)][0]) < 0.5 * abs(est[("ct", 0.4)][0])
    for big, small in ((0.1, 0.05), (0.05, 0.025)):
        (mb, sb), (ms, ss) = est[("cd", big)], est[("cd", small)]
        assert max(sb / abs(mb), ss / abs(ms)) < 0.05
        assert 1.7 < mb / ms < 2.6, (big, mb, ms)


def test_ct_expected_gradient_off_truth_is_clearly_nonzero():
    ct = ConsistencyTraining(distance="l2", delta=0.05)
    m0, se0 = mc_gradient(ct, perturbed(0.0), 4096, seed=3)
    m1, se1 = mc_gradient(ct, perturbed(0.3), 4096, seed=3)
    assert abs(m1 - m0) > 10 * math.hypot(se0, se1)


# -- continuous-time CT ---------------------------------------------------------------------------------
@pytest.mark.parametrize("t_end", [None, 1.0])
def test_scm_expected_gradient_vanishes_at_truth(t_end):
    scm = ContinuousConsistencyTraining(t_end=t_end)
    model = perturbed(0.0)
    m1, se1 = mc_gradient(scm, model, 4096, seed=5)
    m4, se4 = mc_gradient(scm, model, 4 * 4096, seed=6)
    assert abs(m1) < 4 * se1 and abs(m4) < 4 * se4, (m1, se1, m4, se4)
    assert 0.35 < se4 / se1 < 0.7  # the estimate shrinks like 1 / sqrt(n)
    mp, sep = mc_gradient(scm, perturbed(0.2), 4096, seed=7)
    assert abs(mp) > 10 * sep, (mp, sep)


@pytest.mark.parametrize("tangent_c", [0.1, None])
def test_scm_antithetic_gradient_is_zero_at_truth(tangent_c):
    """At the true map the tangent g = grad X (dI_s/ds - b_s) is odd under the antithetic twin, so is
    the normalised g: the pair batch's gradient vanishes to round-off (and not off the truth)."""
    n = 64
    s, t = fixed_times(n)
    x0, x1 = antithetic_batch(n, s)
    times2 = off_times(torch.cat([s, s]), torch.cat([t, t]))
    scm = ContinuousConsistencyTraining(tangent_c=tangent_c)
    g0 = grad_eps(scm, perturbed(0.0), x1, x0, times2)
    g1 = grad_eps(scm, perturbed(0.05), x1, x0, times2)
    assert abs(g0) <= ulps(F64, 1e4), g0
    assert abs(g1) > 1e6 * ulps(F64, 1e4), g1
    # a tangent warm-up r < 1 drops part of the tangent: biased at the truth
    g_warm = grad_eps(dataclasses.replace(scm, warmup=0.5), perturbed(0.0), x1, x0, times2)
    assert abs(g_warm) > 1e6 * ulps(F64, 1e4)


def test_scm_gradient_is_minus_two_jacobian_times_normalised_tangent():
    """Independent check of the target: with a perturbed Gaussian map, d loss / d eps must equal
    -2 (t - s) d(s, t, x) . g / (|g| + c), where g = d/dtau X_{s+tau,t}(x + tau dI_s/ds) is computed
    here by a central difference of the closed-form perturbed map."""
    n = 16
    s, t = fixed_times(n)
    x1 = FLOW.sample_data(n, gen(4))
    x0 = torch.randn(n, 2, dtype=F64, generator=gen(5))
    eps = 0.05
    scm = ContinuousConsistencyTraining()
    got = grad_eps(scm, perturbed(eps), x1, x0, off_times(s, t))
    se = s[:, None]
    x_s, dx = (1 - se) * x0 + se * x1, x1 - x0

    def X(ss, x):
        return FLOW.flow_map(ss, t, x) + (t - ss)[:, None] * eps * smooth_direction(ss, t, x)

    h = machine_eps(F64) ** (1 / 3)
    g = (X(s + h, x_s + h * dx) - X(s - h, x_s - h * dx)) / (2 * h)
    g_hat = g / (g.norm(dim=1, keepdim=True) + 0.1)
    want = float((-2 * (t - s)[:, None] * smooth_direction(s, t, x_s) * g_hat).sum(1).mean())
    assert abs(got - want) < 100 * machine_eps(F64) ** (2 / 3) * (1 + abs(want)), (got, want)
