"""Shared loss utilities: forward-mode vs finite-difference derivatives (and closed forms on the
Gaussian and point-mass flows), the weightings, and PerturbedFlowMap."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.core import fd_tol, rel_err, ulps
from workbench.flows import GaussianFlow, PointMassFlow
from workbench.losses.base import TimeBatch
from workbench.losses.derivatives import (
    directional_derivative,
    flow_map_ds,
    flow_map_dt,
    flow_map_dx,
    total_derivative,
)
from workbench.losses.weighting import Weighting, apply_weighting
from workbench.models import ExactFlowMap, make_mlp_flow_map
from workbench.models.perturbed import PerturbedFlowMap, smooth_direction

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def maxerr(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over the batch of |a - b| / (1 + |b|)."""
    return float(rel_err(a.detach(), b.detach()).max())


def batch(n=64, dim=2, dtype=F64, seed=0, s_max=0.5, gap_max=0.4):
    g = gen(seed)
    x = torch.randn(n, dim, dtype=dtype, generator=g)
    s = s_max * torch.rand(n, dtype=dtype, generator=g)
    t = s + gap_max * torch.rand(n, dtype=dtype, generator=g)
    w = torch.randn(n, dim, dtype=dtype, generator=g)
    return s, t, x, w


def gaussian_flow(interpolant="linear"):
    return GaussianFlow([0.5, -1.0], [[2.0, 0.6], [0.6, 0.5]], interpolant=interpolant)


def mlp(dtype, time_embedding="sinusoidal", seed=0):
    torch.manual_seed(seed)
    return make_mlp_flow_map(2, hidden=32, depth=3, time_embedding=time_embedding).to(dtype)


def mlp_fd_tol(model, dtype):
    """Central differences are accurate to fd_tol in units of the function's own time scale; the
    sinusoidal time features oscillate at angular frequencies up to w_max = max(freqs), which
    magnifies the error of a derivative in t (or s) by up to w_max (raw embedding: 1)."""
    freqs = model.backbone.embed.freqs
    w_max = float(freqs.max()) if model.backbone.embed.kind == "sinusoidal" else 1.0
    return fd_tol(dtype) * max(1.0, w_max)


# -- JVP vs finite differences on the MLP -------------------------------------------------------------
@pytest.mark.parametrize("emb,dtype", [("sinusoidal", F64), ("raw", F64), ("raw", torch.float32)])
def test_jvp_matches_fd_on_mlp(emb, dtype):
    m = mlp(dtype, emb)
    s, t, x, w = batch(dtype=dtype)
    tol = mlp_fd_tol(m, dtype)
    for fn in (flow_map_dt, flow_map_ds):
        X_j, d_j = fn(m, s, t, x)
        X_f, d_f = fn(m, s, t, x, method="fd")
        assert X_j.dtype == dtype and d_j.shape == x.shape
        assert torch.equal(X_j, X_f) or maxerr(X_f, X_j) <= ulps(dtype, 8)
        assert maxerr(d_f, d_j) < tol, fn.__name__
    _, a = flow_map_dx(m, s, t, x, w)
    _, b = flow_map_dx(m, s, t, x, w, method="fd")
    assert maxerr(b, a) < fd_tol(dtype)  # no time features in a spatial derivative
    _, a = total_derivative(m.average_velocity, s, t, x, ds=1.0, dt=0.5, dx=w)
    _, b = total_derivative(m.average_velocity, s, t, x, ds=1.0, dt=0.5, dx=w, method="fd")
    assert maxerr(b, a) < tol


def test_total_derivative_is_sum_of_partials_on_mlp():
    """Linearity of the derivative in the tangent: D_(ds, dt, dx) = ds D_s + dt D_t + D_dx."""
    m = mlp(F64)
    s, t, x, w = batch(seed=1)
    _, tot = total_derivative(m.flow_map, s, t, x, ds=0.7, dt=-1.3, dx=w)
    _, ds_ = flow_map_ds(m, s, t, x)
    _, dt_ = flow_map_dt(m, s, t, x)
    _, dx_ = flow_map_dx(m, s, t, x, w)
    assert maxerr(tot, 0.7 * ds_ - 1.3 * dt_ + dx_) < ulps(F64, 1e3)


def test_gradient_flows_through_jvp_tangent():
    """d/dtheta of sum(d_t X) by autograd through torch.func.jvp equals a central difference of the jvp
    output in that parameter."""
    m = mlp(F64, "raw")
    s, t, x, _ = batch(n=8, seed=2)
    p = m.backbone.head.bias
    g = torch.autograd.grad(flow_map_dt(m, s, t, x)[1].sum(), p)[0]
    h = 1e-6
    fd = torch.empty_like(p)
    with torch.no_grad():
        for i in range(p.numel()):
            p[i] += h
            up = flow_map_dt(m, s, t, x)[1].sum()
            p[i] -= 2 * h
            dn = flow_map_dt(m, s, t, x)[1].sum()
            p[i] += h
            fd[i] = (up - dn) / (2 * h)
    assert float((g - fd).abs().max()) < fd_tol(F64) * (1 + float(g.abs().max()))


# -- closed forms on analytic flows -------------------------------------------------------------------
@pytest.mark.parametrize("interpolant", ["linear", "trig"])
@pytest.mark.parametrize("method", ["jvp", "fd"])
def test_gaussian_flow_derivatives_match_closed_forms(interpolant, method):
    flow = gaussian_flow(interpolant)
    model = ExactFlowMap(flow)
    s, t, x, w = batch(seed=3, s_max=0.6, gap_max=0.35)
    tol = ulps(F64, 1e3) if method == "jvp" else fd_tol(F64)
    X, dtX = flow_map_dt(model, s, t, x, method=method)
    # Lagrangian: d_t X_{s,t}(x) = b_t(X_{s,t}(x))
    assert maxerr(dtX, flow.velocity(t, X)) < tol
    # Eulerian: d_s X_{s,t}(x) = -grad X_{s,t}(x) b_s(x), with grad X in closed form
    J = flow.flow_jacobian(s, t, x)
    _, dsX = flow_map_ds(model, s, t, x, method=method)
    expected = -torch.einsum("bij,bj->bi", J, flow.velocity(s, x))
    assert maxerr(dsX, expected) < tol
    _, jw = flow_map_dx(model, s, t, x, w, method=method)
    assert maxerr(jw, torch.einsum("bij,bj->bi", J, w)) < tol
    # the Eulerian total derivative along the flow vanishes: D_(ds=1, dx=b_s) X_{s,t}(x) = 0
    _, tot = total_derivative(model.flow_map, s, t, x, ds=1.0, dx=flow.velocity(s, x), method=method)
    assert float(tot.norm(dim=1).max()) < tol * (1 + float(X.norm(dim=1).max()))


@pytest.mark.parametrize("interpolant", ["linear", "trig"])
def test_point_mass_time_derivative_closed_form(interpolant):
    a = torch.tensor([1.0, -2.0], dtype=F64)
    flow = PointMassFlow(a, interpolant=interpolant)
    ip = flow.interpolant
    s, t, x, _ = batch(seed=4, s_max=0.5, gap_max=0.4)
    _, dtX = flow_map_dt(ExactFlowMap(flow), s, t, x)
    se, te = s[:, None], t[:, None]
    # X = beta_t a + (alpha_t / alpha_s)(x - beta_s a)  =>  d_t X = beta'_t a + (alpha'_t / alpha_s)(x - beta_s a)
    expected = ip.dbeta(te) * a + ip.dalpha(te) / ip.alpha(se) * (x - ip.beta(se) * a)
    assert maxerr(dtX, expected) < ulps(F64, 1e3)


def test_derivative_bad_input():
    m = mlp(F64, "raw")
    s, t, x, w = batch(n=4)
    with pytest.raises(ValueError, match="method"):
        flow_map_dt(m, s, t, x, method="autograd")
    with pytest.raises(ValueError, match="w must have the shape"):
        flow_map_dx(m, s, t, x, w[:, :1])
    with pytest.raises(ValueError, match="eps"):
        flow_map_dt(m, s, t, x, method="fd", eps=0.0)
    with pytest.raises(ValueError, match="tangents"):
        directional_derivative(torch.sin, (x,), (w[:2],))
    with pytest.raises(ValueError, match="dx must have"):
        total_derivative(m.flow_map, s, t, x, dx=w[:, :1])
    with pytest.raises(ValueError, match="t must"):
        flow_map_dt(m, s, t[:2], x)


# -- weightings ------------------------------------------------------------------------------------
def test_weightings_values_and_gradients():
    raw = torch.tensor([0.0, 0.5, 2.0, 10.0], dtype=F64, requires_grad=True)
    assert torch.equal(apply_weighting(raw, "none"), raw)
    # adaptive: value l / (l + c)^p, gradient 1 / (l + c)^p (the weight is not differentiated)
    c, p = 1e-2, 1.0
    out = apply_weighting(raw, Weighting("adaptive", c=c, p=p))
    expected = raw.detach() / (raw.detach() + c) ** p
    assert torch.allclose(out, expected, rtol=ulps(F64, 4), atol=0)
    (g,) = torch.autograd.grad(out.sum(), raw)
    assert torch.allclose(g, 1.0 / (raw.detach() + c) ** p, rtol=ulps(F64, 4), atol=0)
    out = apply_weighting(raw, "adaptive", p=0.5)  # default c = 1e-3, p overridden
    assert torch.allclose(out, raw.detach() / (raw.detach() + 1e-3) ** 0.5, rtol=ulps(F64, 4), atol=0)
    # pseudo-Huber: sqrt(l + c^2) - c, default c = 0.00054 sqrt(d)
    x = torch.zeros(4, 16, dtype=F64)
    c0 = 0.00054 * math.sqrt(16)
    out = apply_weighting(raw, "pseudo_huber", x=x)
    assert torch.allclose(out, torch.sqrt(raw.detach() + c0**2) - c0, rtol=ulps(F64, 8), atol=0)
    assert torch.allclose(apply_weighting(raw, "pseudo_huber", c=5.0), torch.sqrt(raw.detach() + 25) - 5)


def test_learned_weighting_uses_model_log_variance():
    torch.manual_seed(0)
    m = make_mlp_flow_map(2, hidden=8, depth=1, learned_weight=True).double()
    with torch.no_grad():
        m.weight_linear.bias.fill_(0.3)
    raw = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    x = torch.zeros(3, 2, dtype=F64)
    times = TimeBatch(s=torch.zeros(3, dtype=F64), t=torch.full((3,), 0.5, dtype=F64),
                      diagonal=torch.zeros(3, dtype=torch.bool))
    out = apply_weighting(raw, "learned", m, times, x)
    assert torch.allclose(out, math.exp(-0.3) * raw + 0.3, rtol=ulps(F64, 8), atol=0)
    (g,) = torch.autograd.grad(out.sum(), m.weight_linear.bias)
    assert float(g) == pytest.approx(float(3 - math.exp(-0.3) * raw.sum()), rel=1e-12)
    # a model without a weight head: w = 0, so the loss is unchanged
    plain = ExactFlowMap(gaussian_flow())
    assert torch.equal(apply_weighting(raw, "learned", plain, (times.s, times.t), x), raw)


def test_weighting_bad_input():
    raw = torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match="kind"):
        apply_weighting(raw, "cauchy")
    with pytest.raises(ValueError, match="raw must"):
        apply_weighting(raw[:, None], "none")
    with pytest.raises(ValueError, match="c must"):
        Weighting("adaptive", c=-1.0)
    with pytest.raises(ValueError, match="needs model"):
        apply_weighting(raw, "learned")
    with pytest.raises(ValueError, match="needs x"):
        apply_weighting(raw, "pseudo_huber")
    with pytest.raises(TypeError, match="times must be a TimeBatch or a pair"):
        apply_weighting(raw, "learned", make_mlp_flow_map(2, hidden=4, depth=1), torch.zeros(3))


# -- PerturbedFlowMap ------------------------------------------------------------------------------
def test_perturbed_flow_map_definition():
    flow = gaussian_flow()
    exact = ExactFlowMap(flow)
    s, t, x, _ = batch(seed=5)
    p0 = PerturbedFlowMap(exact, smooth_direction, eps=0.0)
    assert torch.equal(p0.flow_map(s, t, x), flow.flow_map(s, t, x))  # exact stays exact at eps = 0
    assert torch.equal(p0.velocity(t, x), flow.velocity(t, x))
    pe = PerturbedFlowMap(exact, smooth_direction, eps=1e-2)
    d = smooth_direction(s, t, x)
    tol = ulps(F64, 16)
    assert maxerr(pe.flow_map(s, t, x) - flow.flow_map(s, t, x), 1e-2 * (t - s)[:, None] * d) < tol
    assert maxerr(pe.average_velocity(s, t, x), exact.average_velocity(s, t, x) + 1e-2 * d) < tol
    assert torch.allclose(pe.velocity(t, x), flow.velocity(t, x) + 1e-2 * smooth_direction(t, t, x))
    # X = x + (t - s) v holds for the perturbed model too
    assert maxerr(pe.flow_map(s, t, x), x + (t - s)[:, None] * pe.average_velocity(s, t, x)) < ulps(F64, 1e4)
    # d/d eps X = (t - s) d by autograd
    (g,) = torch.autograd.grad(pe.flow_map(s, t, x).sum(), pe.eps)
    assert float(g) == pytest.approx(float(((t - s)[:, None] * d).sum()), rel=ulps(F64, 64))
    assert list(pe.parameters()) == [pe.eps]
    assert torch.equal(pe.loss_weight(s, t, x), torch.zeros(64, dtype=F64))


def test_perturbed_flow_map_float32_and_bad_input():
    exact = ExactFlowMap(gaussian_flow())
    pe = PerturbedFlowMap(exact, eps=1e-2)
    s, t, x, _ = batch(dtype=torch.float32)
    assert pe.flow_map(s, t, x).dtype == torch.float32
    with pytest.raises(TypeError, match="base"):
        PerturbedFlowMap(object())
    with pytest.raises(TypeError, match="direction"):
        PerturbedFlowMap(exact, direction=3)
    bad = PerturbedFlowMap(exact, direction=lambda s, t, x: x[:, :1])
    with pytest.raises(ValueError, match="direction must return"):
        bad.flow_map(s, t, x)
    with pytest.raises(ValueError, match="x contains"):
        pe.flow_map(s, t, torch.full_like(x, float("nan")))
