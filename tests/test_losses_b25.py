"""B25's self-distillation family and its distillation twins: residuals vanish on the exact flow map
and not off it, the diagonal term equals the closed-form flow-matching variance, jvp and finite
differences agree, stop-gradients stop gradients, bad family-specific fields fail. The contract
every objective keeps (shapes, bad input, training an MLP, the registry) is in test_objectives.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from workbench.core import eps as finfo_eps
from workbench.core import fd_step, fd_tol
from workbench.flows import GaussianFlow, PointMassFlow
from workbench.losses import (
    OBJECTIVES,
    EulerianSelfDistillation,
    FlowMatching,
    LagrangianSelfDistillation,
    ProgressiveSelfDistillation,
    UniformTriangle,
    Weighting,
    sample_times,
)
from workbench.models import ExactFlowMap, make_mlp_flow_map
from workbench.models.perturbed import PerturbedFlowMap, smooth_direction

F64 = torch.float64
OFF_DIAGONAL = ["lsd", "esd", "psd_midpoint", "psd_uniform", "lmd", "emd", "pd"]
DISTILLATION = ["lmd", "emd", "pd"]
MEAN, COV = [0.5, -1.0], [[2.0, 0.6], [0.6, 0.5]]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_flow(kind: str, interpolant: str):
    if kind == "gaussian":
        return GaussianFlow(MEAN, COV, interpolant=interpolant)
    return PointMassFlow([1.0, -2.0], interpolant=interpolant)


def configure(name: str, flow, **kw):
    """The registry entry on this flow's interpolant, with the exact teacher for the twins; the
    point mass is singular at t = 1 (alpha = 0), so its times stay in [0, 0.9]."""
    hi = 0.9 if isinstance(flow, PointMassFlow) else 1.0
    obj = dataclasses.replace(OBJECTIVES[name], interpolant=flow.interpolant, sampler=UniformTriangle(hi=hi), **kw)
    return dataclasses.replace(obj, teacher=flow) if name in DISTILLATION else obj


def off_term(result):
    (name,) = [k for k in result.terms if k != "diag_fm"]
    return result.terms[name]


def off_scale(result):
    """Per off-diagonal sample: 1 + |student side| + |target| (the size of the residual's parts)."""
    a = result.aux
    side = a["tangent_norm"] if "tangent_norm" in a else a["student_norm"]
    return 1.0 + side + a["target_norm"]


def truth_tolerance(result, method: str):
    """Residual norm allowed at the exact map, per off-diagonal sample. jvp: 64 eps of the residual's
    scale, times (1 + 1 / (t - s)) because ExactFlowMap's average velocity is the secant
    (X - x) / (t - s) (its round-off grows like eps / gap); fd: fd_tol of that scale."""
    tb = result.times
    n_d = int(tb.diagonal.sum())
    gap = (tb.t - tb.s)[n_d:]
    if method == "fd":
        return fd_tol(F64) * off_scale(result)
    return 64 * finfo_eps(F64) * off_scale(result) * (1.0 + 1.0 / gap)


# -- residuals vanish at the truth and not off it ---------------------------------------------------
@pytest.mark.parametrize("kind,interpolant", [("gaussian", "linear"), ("gaussian", "trig"),
                                              ("point_mass", "linear"), ("point_mass", "trig")])
@pytest.mark.parametrize("name", OFF_DIAGONAL)
def test_off_diagonal_residual_zero_at_truth_positive_off_it(kind, interpolant, name):
    flow = make_flow(kind, interpolant)
    x1 = flow.sample_data(256, gen(0))
    variants = [{}]
    if name == "lsd":
        variants = [{"stopgrad": "convex"}, {"stopgrad": "none"}, {"method": "fd"}]
    elif name == "esd":
        variants = [{"stopgrad": sg} for sg in ("full", "convex", "none")] + [{"method": "fd"}]
    elif name in ("lmd", "emd"):
        variants = [{}, {"method": "fd"}]
    elif name == "pd":
        variants = [{"teacher_map": "compose"}, {"teacher_map": "direct"}]
    for kw in variants:
        obj = configure(name, flow, diag_fraction=0.25, **kw)
        method = kw.get("method", "jvp")
        exact = ExactFlowMap(flow)
        at_truth = obj(exact, x1, gen(1))
        r = off_term(at_truth).sqrt()
        tol = truth_tolerance(at_truth, method)
        assert r.shape == (192,)
        assert bool((r <= tol).all()), (kw, float((r / tol).max()))
        # off the truth: a perturbed student (the teacher, if any, stays exact)
        pert = obj(PerturbedFlowMap(exact, smooth_direction, eps=1e-2), x1, gen(1))
        rp = off_term(pert).detach()
        assert float(rp.mean()) > 1e-7, kw
        assert bool((rp.sqrt() > 1e3 * tol).all()), kw


def test_self_distillation_sees_a_perturbed_diagonal_teacher():
    """Perturbing only the diagonal v_{t,t} (the self-teacher) also leaves a positive residual."""
    flow = make_flow("gaussian", "linear")
    x1 = flow.sample_data(128, gen(2))
    exact = ExactFlowMap(flow)

    def diagonal_only(s, t, x):  # nonzero only on s = t
        return (s == t).to(x.dtype)[:, None] * torch.tanh(x)

    for name in ("lsd", "esd"):
        obj = configure(name, flow, diag_fraction=0.25)
        res = obj(PerturbedFlowMap(exact, diagonal_only, eps=1e-2), x1, gen(3))
        assert float(off_term(res).detach().min()) > 1e-10


# -- the diagonal term is the irreducible flow-matching variance ---------------------------------------
@dataclass(frozen=True)
class FixedTimes:
    """A test sampler: every pair is (s, t), every diagonal time is t."""

    s: float
    t: float

    def sample(self, n, generator=None, dtype=F64, device=None):
        return torch.full((n,), self.s, dtype=dtype), torch.full((n,), self.t, dtype=dtype)

    def sample_diagonal(self, n, generator=None, dtype=F64, device=None):
        return torch.full((n,), self.t, dtype=dtype)


def fm_variance_closed_form(interpolant: str, t: float) -> float:
    """E|dI_t - b_t(I_t)|^2 = tr Cov(dI_t | I_t) for x0 ~ N(0, I), x1 ~ N(m, S): (dI, I) is jointly
    Gaussian with Cov(I) = a^2 I + b^2 S, Cov(dI) = a'^2 I + b'^2 S, Cov(dI, I) = a a' I + b b' S,
    so tr[Cov(dI) - Cov(dI, I) Cov(I)^-1 Cov(I, dI)] (derived here, independently of the flow code)."""
    S, eye = np.array(COV), np.eye(2)
    if interpolant == "linear":
        a, b, da, db = 1 - t, t, -1.0, 1.0
    else:
        h = np.pi / 2
        a, b, da, db = np.cos(h * t), np.sin(h * t), -h * np.sin(h * t), h * np.cos(h * t)
    C_I = a * a * eye + b * b * S
    C_d = da * da * eye + db * db * S
    C_dI = a * da * eye + b * db * S
    return float(np.trace(C_d - C_dI @ np.linalg.solve(C_I, C_dI.T)))


@pytest.mark.parametrize("interpolant", ["linear", "trig"])
@pytest.mark.parametrize("t", [0.3, 0.8])
def test_diagonal_term_is_flow_matching_variance(interpolant, t):
    flow = make_flow("gaussian", interpolant)
    n = 16000
    x1 = flow.sample_data(n, gen(4))
    expected = fm_variance_closed_form(interpolant, t)
    exact = ExactFlowMap(flow)
    for obj in (FlowMatching(interpolant=interpolant, sampler=FixedTimes(0.1, t)),
                LagrangianSelfDistillation(interpolant=interpolant, sampler=FixedTimes(0.1, t))):
        diag = obj(exact, x1, gen(5)).terms["diag_fm"]
        se = float(diag.std()) / diag.numel() ** 0.5
        assert abs(float(diag.mean()) - expected) < 4 * se, (float(diag.mean()), expected, se)
    # power: a visibly wrong diagonal is rejected by the same statistic
    wrong = FlowMatching(interpolant=interpolant, sampler=FixedTimes(0.1, t))(
        PerturbedFlowMap(exact, smooth_direction, eps=1.0), x1, gen(5)).terms["diag_fm"].detach()
    assert float(wrong.mean()) - expected > 10 * float(wrong.std()) / n**0.5


def test_expected_gradient_vanishes_at_truth():
    """d/d eps of the batch-mean loss along a fixed perturbation of the exact map: the diagonal
    flow-matching part has zero mean at eps = 0 (b_t = E[dI_t | I_t]) but not at eps = 0.1; the
    self-distillation part is exactly zero at eps = 0 (its residual vanishes there). Per-sample
    derivatives by a central difference in eps, exact for a loss quadratic in eps (FM)."""
    flow = make_flow("gaussian", "linear")
    n = 8000
    x1 = flow.sample_data(n, gen(30))
    x0 = torch.randn(n, 2, dtype=F64, generator=gen(31))
    fm = FlowMatching()
    times = sample_times(n, sampler=UniformTriangle(), diag_fraction=1.0, generator=gen(32))

    def per_sample_grad(eps0):
        h = 1e-3
        up = fm(PerturbedFlowMap(ExactFlowMap(flow), eps=eps0 + h), x1, x0=x0, times=times).loss.detach()
        dn = fm(PerturbedFlowMap(ExactFlowMap(flow), eps=eps0 - h), x1, x0=x0, times=times).loss.detach()
        return (up - dn) / (2 * h)

    g0, g1 = per_sample_grad(0.0), per_sample_grad(0.1)
    se0, se1 = float(g0.std()) / n**0.5, float(g1.std()) / n**0.5
    assert abs(float(g0.mean())) < 4 * se0
    assert float(g1.mean()) > 10 * se1
    # the per-sample differences add up to autograd's d/d eps
    model = PerturbedFlowMap(ExactFlowMap(flow), eps=0.1)
    (g,) = torch.autograd.grad(fm(model, x1, x0=x0, times=times).loss.mean(), model.eps)
    assert float(g) == pytest.approx(float(g1.mean()), rel=1e-8)
    # self-distillation terms: exactly zero gradient at the truth
    for name in ("lsd", "esd", "psd_midpoint"):
        obj = dataclasses.replace(OBJECTIVES[name], diag_fraction=0.0)
        model = PerturbedFlowMap(ExactFlowMap(flow), eps=0.0)
        (g,) = torch.autograd.grad(obj(model, x1[:256], gen(33)).loss.mean(), model.eps)
        assert abs(float(g)) < 1e3 * finfo_eps(F64), name


# -- jvp and finite differences agree inside the objectives ------------------------------------------
@pytest.mark.parametrize("name,kw", [("lsd", {}), ("lsd", {"stopgrad": "none"}), ("esd", {}),
                                     ("esd", {"stopgrad": "none"}), ("lmd", {}), ("emd", {})])
def test_objective_jvp_matches_fd_on_mlp(name, kw):
    torch.manual_seed(0)
    model = make_mlp_flow_map(2, hidden=32, depth=3, time_embedding="raw").double()
    flow = make_flow("gaussian", "linear")
    x1 = flow.sample_data(64, gen(6))
    x0 = torch.randn(64, 2, dtype=F64, generator=gen(7))
    times = sample_times(64, sampler=UniformTriangle(), diag_fraction=0.25, generator=gen(8))
    a = configure(name, flow, diag_fraction=0.25, **kw)(model, x1, x0=x0, times=times)
    b = configure(name, flow, diag_fraction=0.25, method="fd", **kw)(model, x1, x0=x0, times=times)
    assert torch.equal(a.terms["diag_fm"], b.terms["diag_fm"])
    ra, rb = off_term(a).detach(), off_term(b).detach()
    # |r|^2 moves by at most 2 |r| d + d^2 when each side moves by d = fd_tol * scale
    assert bool(((ra - rb).abs() <= 3 * fd_tol(F64) * off_scale(a) ** 2).all())


# -- stop-gradients ---------------------------------------------------------------------------------------
def test_lsd_convex_gradient_is_the_sg_residual_form():
    """grad of LSD-convex = grad_theta mean_i 2 <d_t X_theta, sg r_i>, r = d_t X - v_{t,t}(X):
    the manual side computes d_t X by a central difference in t, written out here."""
    torch.manual_seed(1)
    model = make_mlp_flow_map(2, hidden=16, depth=2, time_embedding="raw").double()
    params = list(model.parameters())
    n = 32
    x1 = torch.randn(n, 2, dtype=F64, generator=gen(9))
    x0 = torch.randn(n, 2, dtype=F64, generator=gen(10))
    times = sample_times(n, sampler=UniformTriangle(hi=0.9), diag_fraction=0.0, generator=gen(11))
    s, t = times.s, times.t

    def grads(stopgrad):
        res = LagrangianSelfDistillation(diag_fraction=0.0, stopgrad=stopgrad)(model, x1, x0=x0, times=times)
        return torch.autograd.grad(res.loss.mean(), params)

    g_convex, g_none = grads("convex"), grads("none")
    x_s = (1 - s)[:, None] * x0 + s[:, None] * x1
    h = fd_step(F64)
    dtX = (model.flow_map(s, t + h, x_s) - model.flow_map(s, t - h, x_s)) / (2 * h)
    target = model.velocity(t, model.flow_map(s, t, x_s)).detach()
    r = (dtX - target).detach()
    g_manual = torch.autograd.grad((2 * (dtX * r).sum(1)).mean(), params)
    scale = 1 + max(float(g.abs().max()) for g in g_manual)
    err = max(float((a - b).abs().max()) for a, b in zip(g_convex, g_manual))
    diff_none = max(float((a - b).abs().max()) for a, b in zip(g_none, g_manual))
    tol = fd_tol(F64) * scale
    assert err < tol, err
    assert diff_none > 1e3 * tol  # the unstopped gradient is visibly different


def test_esd_full_stops_gradient_through_the_advective_term():
    """ESD-full's gradient equals that of |d_s X + sg(adv)|^2 with adv fixed, and differs from
    ESD-convex (gradient through the spatial JVP)."""
    torch.manual_seed(2)
    model = make_mlp_flow_map(2, hidden=16, depth=2, time_embedding="raw").double()
    params = list(model.parameters())
    n = 32
    x1 = torch.randn(n, 2, dtype=F64, generator=gen(12))
    x0 = torch.randn(n, 2, dtype=F64, generator=gen(13))
    times = sample_times(n, sampler=UniformTriangle(hi=0.9), diag_fraction=0.0, generator=gen(14))
    s, t = times.s, times.t

    def grads(stopgrad):
        res = EulerianSelfDistillation(diag_fraction=0.0, stopgrad=stopgrad)(model, x1, x0=x0, times=times)
        return torch.autograd.grad(res.loss.mean(), params)

    x_s = (1 - s)[:, None] * x0 + s[:, None] * x1
    h = fd_step(F64)
    dsX = (model.flow_map(s + h, t, x_s) - model.flow_map(s - h, t, x_s)) / (2 * h)
    with torch.no_grad():
        b = model.velocity(s, x_s)
        adv = (model.flow_map(s, t, x_s + h * b) - model.flow_map(s, t, x_s - h * b)) / (2 * h)
    g_manual = torch.autograd.grad(((dsX + adv) ** 2).sum(1).mean(), params)
    scale = 1 + max(float(g.abs().max()) for g in g_manual)
    tol = fd_tol(F64) * scale
    g_full, g_convex = grads("full"), grads("convex")
    assert max(float((a - b).abs().max()) for a, b in zip(g_full, g_manual)) < tol
    assert max(float((a - b).abs().max()) for a, b in zip(g_convex, g_manual)) > 1e3 * tol


def test_psd_convex_stops_gradient_through_the_teacher():
    """PSD-convex's gradient equals that of |v_{s,t}(x_s) - sg T|^2 with the midpoint teacher
    T = (v_{s,u}(x_s) + v_{u,t}(x_s + (u - s) v_{s,u}(x_s))) / 2 written out here, and differs from 'none'."""
    torch.manual_seed(6)
    model = make_mlp_flow_map(2, hidden=16, depth=2, time_embedding="raw").double()
    params = list(model.parameters())
    n = 32
    x1 = torch.randn(n, 2, dtype=F64, generator=gen(40))
    x0 = torch.randn(n, 2, dtype=F64, generator=gen(41))
    times = sample_times(n, diag_fraction=0.0, generator=gen(42))
    s, t = times.s, times.t
    u = 0.5 * (s + t)
    x_s = (1 - s)[:, None] * x0 + s[:, None] * x1
    with torch.no_grad():
        v_su = model.average_velocity(s, u, x_s)
        teacher = 0.5 * (v_su + model.average_velocity(u, t, x_s + (u - s)[:, None] * v_su))
    g_manual = torch.autograd.grad(((model.average_velocity(s, t, x_s) - teacher) ** 2).sum(1).mean(), params)

    def grads(stopgrad):
        res = ProgressiveSelfDistillation(diag_fraction=0.0, stopgrad=stopgrad)(model, x1, x0=x0, times=times)
        return torch.autograd.grad(res.loss.mean(), params)

    tol = 1e3 * finfo_eps(F64) * (1 + max(float(g.abs().max()) for g in g_manual))
    assert max(float((a - b).abs().max()) for a, b in zip(grads("convex"), g_manual)) < tol
    assert max(float((a - b).abs().max()) for a, b in zip(grads("none"), g_manual)) > 1e3 * tol


# -- realised times and the result structure ---------------------------------------------------------------
def test_result_structure_and_psd_intermediate_time():
    flow = make_flow("gaussian", "linear")
    x1 = flow.sample_data(40, gen(15))
    for name, gamma_is_half in (("psd_midpoint", True), ("psd_uniform", False)):
        res = OBJECTIVES[name](ExactFlowMap(flow), x1, gen(16))
        tb = res.times
        assert int(tb.diagonal.sum()) == 30 and res.terms["diag_fm"].shape == (30,)
        assert res.terms["psd"].shape == (10,) and res.loss.shape == (40,)
        off = ~tb.diagonal
        assert bool((tb.u[off] >= tb.s[off]).all()) and bool((tb.u[off] <= tb.t[off]).all())
        assert torch.equal(tb.u[tb.diagonal], tb.t[tb.diagonal])
        assert torch.allclose(tb.u[off], 0.5 * (tb.s[off] + tb.t[off])) == gamma_is_half
        assert torch.equal(res.aux["raw_loss"], torch.cat([res.terms["diag_fm"], res.terms["psd"]]))
    # the X-form is the v-form times (t - s)^2
    x0 = torch.randn(40, 2, dtype=F64, generator=gen(17))
    times = sample_times(40, diag_fraction=0.5, generator=gen(18))
    model = PerturbedFlowMap(ExactFlowMap(flow), eps=0.1)
    v = ProgressiveSelfDistillation(diag_fraction=0.5)(model, x1, x0=x0, times=times).terms["psd"]
    X = ProgressiveSelfDistillation(diag_fraction=0.5, form="X")(model, x1, x0=x0, times=times).terms["psd"]
    assert torch.allclose(X, v * (times.t - times.s)[20:] ** 2, rtol=1e-12, atol=0)


def test_weightings_inside_an_objective():
    torch.manual_seed(3)
    model = make_mlp_flow_map(2, hidden=16, depth=2, learned_weight=True).double()
    x1 = torch.randn(16, 2, dtype=F64, generator=gen(19))
    x0 = torch.randn(16, 2, dtype=F64, generator=gen(20))
    times = sample_times(16, generator=gen(21))
    base = LagrangianSelfDistillation()
    raw = base(model, x1, x0=x0, times=times).loss.detach()
    with torch.no_grad():
        model.weight_linear.bias.fill_(0.5)
    learned = dataclasses.replace(base, weighting="learned")(model, x1, x0=x0, times=times).loss.detach()
    assert torch.allclose(learned, np.exp(-0.5) * raw + 0.5, rtol=1e-12, atol=0)
    adaptive = dataclasses.replace(base, weighting=Weighting("adaptive", c=1e-2))(model, x1, x0=x0, times=times)
    assert torch.allclose(adaptive.loss.detach(), raw / (raw + 1e-2), rtol=1e-12, atol=0)


# -- bad configuration (the generic bad-input cases are in test_objectives.py) ---------------------------
def test_bad_configuration_raises():
    lsd = OBJECTIVES["lsd"]
    with pytest.raises(ValueError, match="stopgrad"):
        dataclasses.replace(lsd, stopgrad="half")
    with pytest.raises(ValueError, match="stopgrad"):
        dataclasses.replace(OBJECTIVES["esd"], stopgrad="convexx")
    with pytest.raises(ValueError, match="stopgrad"):
        dataclasses.replace(OBJECTIVES["emd"], stopgrad="convex")
    with pytest.raises(ValueError, match="intermediate"):
        dataclasses.replace(OBJECTIVES["psd_midpoint"], intermediate="third")
    with pytest.raises(ValueError, match="form"):
        dataclasses.replace(OBJECTIVES["pd"], form="w")
    with pytest.raises(ValueError, match="teacher_map"):
        dataclasses.replace(OBJECTIVES["pd"], teacher_map="chain")
    with pytest.raises(TypeError, match="teacher"):  # pd also needs the teacher's map
        dataclasses.replace(OBJECTIVES["pd"], teacher=_VelocityOnly())


class _VelocityOnly:
    """A teacher with a velocity but no flow map."""

    dim = 2

    def velocity(self, t, x):
        return x
