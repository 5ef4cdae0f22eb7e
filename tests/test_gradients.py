"""Gradient statistics vs independent computations: a Python loop of separate backward passes,
closed-form gradients of a linear model, torch.nn.utils.clip_grad_norm_, numpy histograms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jvp

from workbench.core import ulps
from workbench.diagnostics.gradients import (
    Bins,
    bin_by_gap,
    bin_by_times,
    count_nonfinite,
    global_norm,
    gradient_report,
    layer_norms,
    module_norms,
    nonfinite_by_parameter,
    parameter_gradients,
    per_sample_grad_norms,
    stored_gradients,
    term_gradient_stats,
)
from workbench.losses.base import ObjectiveResult, TimeBatch
from workbench.models import make_mlp_flow_map

F64 = torch.float64
TOL = ulps(F64, 1000)


def small_model(seed=0):
    torch.manual_seed(seed)
    return make_mlp_flow_map(2, hidden=16, depth=2).double()


def fm_loss(model, x1, x0, t):
    """Per-sample diagonal flow matching |v_{t,t}(I_t) - (x1 - x0)|^2 (linear schedule)."""
    xt = (1 - t)[:, None] * x0 + t[:, None] * x1
    return ((model.velocity(t, xt) - (x1 - x0)) ** 2).sum(-1)


def lagrangian_loss(model, x1, x0, s, t):
    """Per-sample |d_t X_{s,t}(x) - sg v_{t,t}(X_{s,t}(x))|^2 with torch.func.jvp inside (LSD-like)."""
    xs = (1 - s)[:, None] * x0 + s[:, None] * x1
    X, dX = jvp(lambda tt: model.flow_map(s, tt, xs), (t,), (torch.ones_like(t),))
    return ((dX - model.velocity(t, X).detach()) ** 2).sum(-1)


def loop_norms(model, loss_fn, *batch):
    out = []
    for i in range(batch[0].shape[0]):
        model.zero_grad()
        loss_fn(model, *(a[i:i + 1] for a in batch))[0].backward()
        out.append(math.sqrt(sum(float((p.grad**2).sum()) for p in model.parameters() if p.grad is not None)))
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("which", ["fm", "lagrangian"])
def test_per_sample_norms_vs_loop(which):
    model = small_model()
    g = torch.Generator().manual_seed(1)
    n = 12
    x1, x0 = torch.randn(n, 2, dtype=F64, generator=g), torch.randn(n, 2, dtype=F64, generator=g)
    s, t = torch.rand(n, dtype=F64, generator=g) * 0.5, 0.5 + 0.5 * torch.rand(n, dtype=F64, generator=g)
    fn, batch = (fm_loss, (x1, x0, t)) if which == "fm" else (lagrangian_loss, (x1, x0, s, t))
    got = per_sample_grad_norms(model, fn, *batch)
    ref = loop_norms(model, fn, *batch)
    assert got.shape == (n,)
    assert float(((got - ref).abs() / (1 + ref)).max()) < TOL
    assert float(per_sample_grad_norms(model, fn, *batch, chunk_size=5).sub(got).abs().max()) < TOL


class Linear(nn.Module):
    """v = W u: per-sample term |W u - y|^2 has gradient 2 (W u - y) u^T (closed form)."""

    def __init__(self, W):
        super().__init__()
        self.lin = nn.Linear(2, 2, bias=True, dtype=F64)
        with torch.no_grad():
            self.lin.weight.copy_(torch.as_tensor(W))
            self.lin.bias.zero_()


def test_term_norms_and_cosines_linear_model():
    W = np.array([[1.0, -0.5], [0.3, 2.0]])
    model = Linear(W)
    g = torch.Generator().manual_seed(2)
    ua, ya = torch.randn(5, 2, dtype=F64, generator=g), torch.randn(5, 2, dtype=F64, generator=g)
    ub, yb = torch.randn(3, 2, dtype=F64, generator=g), torch.randn(3, 2, dtype=F64, generator=g)
    ta = ((model.lin(ua) - ya) ** 2).sum(-1)
    tb = ((model.lin(ub) - yb) ** 2).sum(-1)
    times = TimeBatch(s=torch.zeros(8, dtype=F64), t=torch.ones(8, dtype=F64), diagonal=torch.arange(8) < 5)
    result = ObjectiveResult(loss=torch.cat([ta, tb]), terms={"diag_fm": ta, "lsd": tb, "empty": ta[:0]}, times=times)
    stats = term_gradient_stats(model, result)

    def closed(u, y):  # d/dW and d/db of mean_i |W u_i + b - y_i|^2 at b = 0
        r = u.numpy() @ W.T - y.numpy()
        return np.concatenate([(2 * r.T @ u.numpy() / len(u)).ravel(), 2 * r.mean(0)])

    Ga, Gb = closed(ua, ya), closed(ub, yb)
    Gt = (5 * Ga + 3 * Gb) / 8  # grad of the mean of the per-sample total
    assert abs(stats.norms["diag_fm"] - np.linalg.norm(Ga)) < TOL
    assert abs(stats.norms["lsd"] - np.linalg.norm(Gb)) < TOL
    assert abs(stats.cosines[("diag_fm", "lsd")] - Ga @ Gb / np.linalg.norm(Ga) / np.linalg.norm(Gb)) < TOL
    assert abs(stats.total_norm - np.linalg.norm(Gt)) < TOL
    assert stats.norms["empty"] == 0.0 and stats.cosines[("diag_fm", "empty")] is None
    # the graph is retained: the caller can still backward
    result.loss.mean().backward()
    assert abs(global_norm(stored_gradients(model)) - np.linalg.norm(Gt)) < TOL


def test_term_stats_leave_out_nonfinite_entries():
    """A term whose gradient is [nan, 1] in the bias and unused in W: norm 1 (the finite entry), one
    non-finite entry counted, and a finite cosine with a term whose bias gradient is [0, 2]."""
    model = Linear(np.eye(2))
    b = model.lin.bias
    bad = (b[0] * math.nan + b[1]).expand(2)
    good = (2 * b[1]).expand(3)
    times = TimeBatch(s=torch.zeros(5, dtype=F64), t=torch.ones(5, dtype=F64), diagonal=torch.zeros(5, dtype=torch.bool))
    stats = term_gradient_stats(model, ObjectiveResult(loss=torch.cat([bad, good]), terms={"bad": bad, "good": good},
                                                       times=times))
    assert stats.norms == {"bad": 1.0, "good": 2.0} and stats.nonfinite == {"bad": 1, "good": 0}
    assert stats.cosines[("bad", "good")] == 1.0
    with pytest.raises(ValueError, match="s contains 1 non-finite"):
        bin_by_times(torch.ones(2), torch.tensor([0.1, math.nan]), torch.tensor([0.5, 0.5]))


def test_term_stats_on_a_real_objective():
    """Works on an ObjectiveResult of a library objective; norms equal separate autograd passes."""
    from workbench.losses import OBJECTIVES

    model = small_model(3)
    result = OBJECTIVES["lsd"](model, torch.randn(16, 2, dtype=F64), generator=torch.Generator().manual_seed(4))
    stats = term_gradient_stats(model, result)
    params = list(model.parameters())
    for name, term in result.terms.items():
        gs = torch.autograd.grad(term.mean(), params, retain_graph=True, allow_unused=True)
        ref = math.sqrt(sum(float((g**2).sum()) for g in gs if g is not None))
        assert abs(stats.norms[name] - ref) < TOL * (1 + ref), name


def test_global_layer_module_norms():
    model = small_model(5)
    x1, x0 = torch.randn(32, 2, dtype=F64), torch.randn(32, 2, dtype=F64)
    fm_loss(model, x1, x0, torch.rand(32, dtype=F64)).mean().backward()
    grads = stored_gradients(model)
    ref = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=math.inf))
    assert abs(global_norm(grads) - ref) < TOL * ref
    layers = layer_norms(grads)
    assert set(layers) == {k for k, _ in model.named_parameters()}
    for k, p in model.named_parameters():
        assert abs(layers[k] - float(np.linalg.norm(p.grad.numpy()))) < TOL * (1 + layers[k])
    mods = module_norms(grads)
    head = math.hypot(layers["backbone.head.weight"], layers["backbone.head.bias"])
    assert abs(mods["backbone.head"] - head) < TOL * (1 + head)
    assert abs(math.sqrt(sum(v * v for v in mods.values())) - ref) < TOL * ref
    pg = parameter_gradients(model, fm_loss(model, x1, x0, torch.full((32,), 0.3, dtype=F64)).mean())
    assert set(pg) == set(grads) and all(v.shape == dict(model.named_parameters())[k].shape for k, v in pg.items())


def test_nonfinite_counts_and_finite_norm():
    grads = {"a.weight": torch.tensor([[1.0, math.nan], [math.inf, 2.0]], dtype=F64),
             "a.bias": torch.tensor([3.0, -math.inf], dtype=F64), "b.weight": torch.tensor([4.0], dtype=F64)}
    assert count_nonfinite(grads) == 3
    assert nonfinite_by_parameter(grads) == {"a.weight": 2, "a.bias": 1, "b.weight": 0}
    rep = gradient_report(grads)
    assert rep.n_nonfinite == 3 and abs(rep.global_norm - math.sqrt(1 + 4 + 9 + 16)) < TOL
    assert abs(rep.module_norms["a"] - math.sqrt(14)) < TOL and math.isfinite(rep.layer_norms["a.bias"])


def test_bin_by_times_vs_histogram2d():
    g = torch.Generator().manual_seed(6)
    n = 500
    s = torch.rand(n, dtype=F64, generator=g)
    t = s + (1 - s) * torch.rand(n, dtype=F64, generator=g)
    v = torch.randn(n, dtype=F64, generator=g).abs()
    v[:7] = math.nan
    b = bin_by_times(v, s, t, bins=(8, 5))
    edges = [np.linspace(0, 1, 9), np.linspace(0, 1, 6)]
    ok = np.isfinite(v.numpy())
    hs = np.histogram2d(s.numpy()[ok], t.numpy()[ok], bins=edges, weights=v.numpy()[ok])[0]
    hc = np.histogram2d(s.numpy()[ok], t.numpy()[ok], bins=edges)[0]
    hb = np.histogram2d(s.numpy()[~ok], t.numpy()[~ok], bins=edges)[0]
    assert np.abs(b.sum.numpy() - hs).max() < TOL * n and np.array_equal(b.count.numpy(), hc)
    assert np.array_equal(b.nonfinite.numpy(), hb) and int(b.nonfinite.sum()) == 7
    mean = b.mean.numpy()
    assert np.array_equal(np.isnan(mean), hc == 0)
    assert np.abs(mean[hc > 0] - hs[hc > 0] / hc[hc > 0]).max() < TOL
    # merging two halves = binning the whole batch
    h1, h2 = bin_by_times(v[:250], s[:250], t[:250], bins=(8, 5)), bin_by_times(v[250:], s[250:], t[250:], bins=(8, 5))
    m = h1.merge(h2)
    assert isinstance(m, Bins) and torch.equal(m.count, b.count) and float((m.sum - b.sum).abs().max()) < TOL * n
    # the upper edge belongs to the last bin, as in numpy
    edge = bin_by_times(torch.ones(1, dtype=F64), torch.ones(1, dtype=F64), torch.ones(1, dtype=F64), bins=4)
    assert float(edge.count[3, 3]) == 1.0


def test_bin_by_gap_vs_histogram():
    g = torch.Generator().manual_seed(7)
    gap = torch.rand(300, dtype=F64, generator=g)
    v = torch.rand(300, dtype=F64, generator=g)
    b = bin_by_gap(v, gap, bins=10)
    hs = np.histogram(gap.numpy(), bins=np.linspace(0, 1, 11), weights=v.numpy())[0]
    hc = np.histogram(gap.numpy(), bins=np.linspace(0, 1, 11))[0]
    assert np.abs(b.sum.numpy() - hs).max() < TOL * 300 and np.array_equal(b.count.numpy(), hc)


def test_bad_input():
    model = small_model()
    with pytest.raises(ValueError, match="scalar"):
        parameter_gradients(model, torch.zeros(3, dtype=F64, requires_grad=True))
    with pytest.raises(TypeError, match="nn.Module"):
        stored_gradients(object())
    times = TimeBatch(s=torch.zeros(2), t=torch.ones(2), diagonal=torch.zeros(2, dtype=torch.bool))
    res = ObjectiveResult(loss=torch.zeros(2), terms={"a": torch.zeros(2)}, times=times)
    with pytest.raises(ValueError, match="not terms"):
        term_gradient_stats(model, res, names=["b"])
    with pytest.raises(TypeError, match="ObjectiveResult"):
        term_gradient_stats(model, object())
    with pytest.raises(ValueError, match="leading batch dimension"):
        per_sample_grad_norms(model, fm_loss, torch.zeros(4, 2, dtype=F64), torch.zeros(3, 2, dtype=F64),
                              torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="gap must lie in"):
        bin_by_gap(torch.ones(2), torch.tensor([-0.5, 0.5]))
    with pytest.raises(ValueError, match="identical edges"):
        bin_by_gap(torch.ones(2), torch.tensor([0.1, 0.5]), bins=3).merge(bin_by_gap(torch.ones(2), torch.tensor([0.1, 0.5]), bins=4))
