"""Sample metrics on distributions of known distance, N-step sampling quality and the RK4 reference.

Statistical checks use fixed seeds and replicate spreads: |mean - truth| < Z * (replicate sd) /
sqrt(R); exact checks (translations, 1-D sorting, numpy/scipy re-implementations) use ulps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from scipy.spatial.distance import cdist, pdist

from workbench.core import ulps
from workbench.diagnostics.metrics import (
    SAMPLE_METRICS,
    StepsQuality,
    energy_distance,
    histogram_kl,
    map_vs_own_ode,
    median_distance,
    mmd2,
    quality_vs_steps,
    rk4_flow,
    sliced_wasserstein2,
    wasserstein2,
)
from workbench.flows import GaussianFlow
from workbench.flows.degenerate import euler_step, other_data_flow
from workbench.models import ExactFlowMap

F64 = torch.float64
Z = 5.0
TOL = ulps(F64, 1000)


def gauss(mean, cov, n, g):
    L = torch.linalg.cholesky(torch.as_tensor(cov, dtype=F64))
    return torch.as_tensor(mean, dtype=F64) + torch.randn(n, len(mean), dtype=F64, generator=g) @ L.T


def gaussian_w2(m1, S1, m2, S2):
    r1 = scipy.linalg.sqrtm(S1).real
    return math.sqrt(np.sum((m1 - m2) ** 2) + np.trace(S1 + S2 - 2 * scipy.linalg.sqrtm(r1 @ S2 @ r1).real))


# -- W2 ---------------------------------------------------------------------------------------------
def test_w2_exact_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, dtype=F64, generator=g)
    c = torch.tensor([0.4, -1.0, 2.0], dtype=F64)
    # translation of the same empirical measure: W2 = |c| exactly
    assert abs(wasserstein2(x, x + c) - float(c.norm())) < TOL * float(c.norm())
    # 1-D: the monotone (sorted) coupling is optimal
    u, v = torch.randn(257, 1, dtype=F64, generator=g), 2 + 0.5 * torch.randn(257, 1, dtype=F64, generator=g)
    sorted_w2 = math.sqrt(np.mean((np.sort(u.numpy()[:, 0]) - np.sort(v.numpy()[:, 0])) ** 2))
    assert abs(wasserstein2(u, v) - sorted_w2) < TOL * sorted_w2


def test_w2_gaussians_converges_to_closed_form():
    """Empirical W2 -> |m1 - m2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) (then sqrt), error ~ n^-1/2."""
    m1, m2 = np.array([0.0, 0.0]), np.array([1.0, 0.5])
    S1, S2 = np.array([[1.0, 0.3], [0.3, 0.5]]), np.array([[0.6, -0.2], [-0.2, 1.2]])
    truth = gaussian_w2(m1, S1, m2, S2)
    errs = {}
    for n in (100, 800):
        errs[n] = np.array([wasserstein2(gauss(m1, S1, n, g), gauss(m2, S2, n, g)) - truth
                            for g in (torch.Generator().manual_seed(k) for k in range(4))])
    rms = {n: float(np.sqrt(np.mean(e**2))) for n, e in errs.items()}
    assert rms[800] < rms[100] / 2  # n^-1/2 predicts / 2.8
    assert abs(errs[800].mean()) < 3 * errs[800].std()


# -- sliced W2 --------------------------------------------------------------------------------------
def test_sliced_w2_one_dimension_equals_w2_unequal_sizes():
    """In 1-D every projection is +-1, so SW2 = W2 exactly; sizes 100 vs 37 exercise the quantile merge."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(100, 1, dtype=F64, generator=g), 1 + 2 * torch.rand(37, 1, dtype=F64, generator=g)
    ref = wasserstein2(x, y)
    assert abs(sliced_wasserstein2(x, y, n_projections=3, generator=g) - ref) < TOL * ref


def test_sliced_w2_isotropic_gaussians():
    """SW2^2(N(m1, s1^2 I), N(m2, s2^2 I)) = |m1 - m2|^2 / d + (s1 - s2)^2."""
    d, dm, s1, s2 = 3, torch.tensor([1.0, -0.5, 0.3], dtype=F64), 1.0, 0.6
    truth = math.sqrt(float(dm @ dm) / d + (s1 - s2) ** 2)
    vals = []
    for k in range(6):
        g = torch.Generator().manual_seed(k)
        x, y = s1 * torch.randn(2000, d, dtype=F64, generator=g), dm + s2 * torch.randn(2000, d, dtype=F64, generator=g)
        vals.append(sliced_wasserstein2(x, y, n_projections=500, generator=g))
    vals = np.array(vals)
    assert abs(vals.mean() - truth) < Z * vals.std(ddof=1) / math.sqrt(len(vals))
    assert vals.std(ddof=1) < 0.05 * truth  # the test has power


# -- MMD --------------------------------------------------------------------------------------------
def expected_rbf(m1, S1, m2, S2, h):
    """E exp(-|x - x'|^2 / 2h^2), x ~ N(m1, S1), x' ~ N(m2, S2) independent: u = x - x' ~ N(D, S), S = S1 + S2,
    int N(u; D, S) exp(-|u|^2/2h^2) du = det(I + S/h^2)^(-1/2) exp(-D^T (S + h^2 I)^(-1) D / 2)."""
    S, D = S1 + S2, m1 - m2
    I = np.eye(len(D))
    return np.linalg.det(I + S / h**2) ** -0.5 * math.exp(-0.5 * D @ np.linalg.solve(S + h**2 * I, D))


def test_mmd_unbiased_vs_closed_form():
    m1, m2 = np.array([0.0, 0.0]), np.array([0.5, -0.3])
    S1, S2 = np.array([[1.0, 0.2], [0.2, 0.6]]), np.array([[0.8, 0.0], [0.0, 1.0]])
    hs = (0.5, 2.0)
    truth = sum(expected_rbf(m1, S1, m1, S1, h) + expected_rbf(m2, S2, m2, S2, h) - 2 * expected_rbf(m1, S1, m2, S2, h)
                for h in hs)
    g = torch.Generator().manual_seed(2)
    vals = np.array([mmd2(gauss(m1, S1, 150, g), gauss(m2, S2, 150, g), bandwidths=hs) for _ in range(40)])
    assert abs(vals.mean() - truth) < Z * vals.std(ddof=1) / math.sqrt(len(vals))
    assert vals.std(ddof=1) / math.sqrt(len(vals)) < 0.2 * truth


def test_mmd_vs_numpy_and_median_heuristic():
    """U- and V-statistics vs a direct numpy computation (n > the chunk size), median vs scipy pdist."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2100, 2, dtype=F64, generator=g), 0.3 + torch.randn(300, 2, dtype=F64, generator=g)
    X, Y = x.numpy(), y.numpy()
    med = np.median(pdist(np.concatenate([X[:1000], Y[:1000]])))
    assert abs(median_distance(x, y) - med) < TOL * med
    hs = [f * med for f in (0.25, 0.5, 1.0, 2.0, 4.0)]
    k = lambda D: sum(np.exp(-D**2 / (2 * h * h)) for h in hs)
    Kxx, Kyy, Kxy = k(cdist(X, X)), k(cdist(Y, Y)), k(cdist(X, Y))
    n, m = len(X), len(Y)
    u = (Kxx.sum() - np.trace(Kxx)) / (n * (n - 1)) + (Kyy.sum() - np.trace(Kyy)) / (m * (m - 1)) - 2 * Kxy.mean()
    v = Kxx.mean() + Kyy.mean() - 2 * Kxy.mean()
    assert abs(mmd2(x, y) - u) < TOL * 10
    assert abs(mmd2(x, y, unbiased=False) - v) < TOL * 10


# -- energy distance --------------------------------------------------------------------------------
def test_energy_vs_scipy_1d():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(500, 1, dtype=F64, generator=g), 0.7 + 1.3 * torch.randn(333, 1, dtype=F64, generator=g)
    ref = scipy.stats.energy_distance(x.numpy()[:, 0], y.numpy()[:, 0]) ** 2
    assert abs(energy_distance(x, y) - ref) < TOL * (1 + ref)


def test_energy_unbiased_vs_closed_form_1d():
    """N(0, 1) vs N(mu, 1): X - Y ~ N(-mu, 2), E|N(m, v)| = sqrt(2v/pi) exp(-m^2/2v) + m (1 - 2 Phi(-m/sqrt v)),
    E|X - X'| = 2 / sqrt(pi)."""
    mu = 0.8
    sd = math.sqrt(2.0)
    e_xy = sd * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / 4) + mu * (1 - 2 * scipy.stats.norm.cdf(-mu / sd))
    truth = 2 * e_xy - 2 * (2 / math.sqrt(math.pi))
    g = torch.Generator().manual_seed(5)
    vals = np.array([energy_distance(torch.randn(200, 1, dtype=F64, generator=g),
                                     mu + torch.randn(200, 1, dtype=F64, generator=g), unbiased=True) for _ in range(40)])
    assert abs(vals.mean() - truth) < Z * vals.std(ddof=1) / math.sqrt(len(vals))
    assert vals.std(ddof=1) / math.sqrt(len(vals)) < 0.1 * truth


def test_energy_multivariate_vs_numpy():
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(300, 3, dtype=F64, generator=g), torch.rand(200, 3, dtype=F64, generator=g)
    X, Y = x.numpy(), y.numpy()
    v = 2 * cdist(X, Y).mean() - cdist(X, X).mean() - cdist(Y, Y).mean()
    u = 2 * cdist(X, Y).mean() - pdist(X).mean() - pdist(Y).mean()
    assert abs(energy_distance(x, y) - v) < TOL and abs(energy_distance(x, y, unbiased=True) - u) < TOL


# -- histogram KL -----------------------------------------------------------------------------------
def test_histogram_kl_vs_scipy_entropy():
    g = torch.Generator().manual_seed(7)
    data, model = torch.rand(5000, 2, dtype=F64, generator=g) * 2 - 1, 0.6 * torch.randn(4000, 2, dtype=F64, generator=g)
    box, bins, eps = [(-1.0, 1.0), (-1.0, 1.0)], 12, 1e-4
    edges = [np.linspace(-1, 1, bins + 1)] * 2
    hp = np.histogramdd(data.numpy(), bins=edges)[0].ravel()
    hq = np.histogramdd(model.numpy(), bins=edges)[0].ravel()
    p = (hp / hp.sum() + eps) / (1 + bins**2 * eps)
    q = (hq / hq.sum() + eps) / (1 + bins**2 * eps)
    for direction, ref in (("data||model", scipy.stats.entropy(p, q)), ("model||data", scipy.stats.entropy(q, p))):
        got = histogram_kl(data, model, bins=bins, box=box, smoothing=eps, direction=direction)
        assert abs(got - ref) < TOL * (1 + ref), direction


def quantile_samples(dist, n):
    """Stratified 'samples' F^-1((i + 1/2) / n): histograms equal the bin probabilities up to 1 / n."""
    return torch.tensor(dist.ppf((np.arange(n) + 0.5) / n), dtype=F64)[:, None]


def test_histogram_kl_fine_bin_limit():
    """KL(N(0, 1) || N(.5, 1.2^2)) = log(s2/s1) + (s1^2 + dm^2) / (2 s2^2) - 1/2 and
    KL(U[.2, .8] || U[0, 1]) = log(1 / .6), recovered as the bins shrink (error O(h^2) + O(bins / n))."""
    n = 400_000
    p, q = scipy.stats.norm(0, 1), scipy.stats.norm(0.5, 1.2)
    truth = math.log(1.2) + (1 + 0.25) / (2 * 1.44) - 0.5
    errs = [abs(histogram_kl(quantile_samples(p, n), quantile_samples(q, n), bins=b, box=[(-7.0, 7.0)], smoothing=0.0)
                - truth) for b in (25, 50, 100)]
    assert all(3 < errs[k] / errs[k + 1] < 5 for k in range(2)), errs  # second order in the bin width
    assert errs[2] < 2e-3 * truth
    u = histogram_kl(quantile_samples(scipy.stats.uniform(0.2, 0.6), n), quantile_samples(scipy.stats.uniform(0, 1), n),
                     bins=50, box=[(0.0, 1.0)], smoothing=0.0)
    assert abs(u - math.log(1 / 0.6)) < 50 / n
    # disjoint supports without smoothing: infinite, not NaN
    assert histogram_kl(quantile_samples(scipy.stats.uniform(0, 1), 1000), quantile_samples(scipy.stats.uniform(2, 1), 1000),
                        bins=10, box=[(0.0, 3.0)], smoothing=0.0) == math.inf


# -- sampling with steps ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flow():
    return GaussianFlow([1.0, -1.0], [[1.0, 0.6], [0.6, 0.5]])


def test_quality_vs_steps_exact_and_euler(flow):
    g = torch.Generator().manual_seed(8)
    ref = flow.sample_data(400, g)
    exact = quality_vs_steps(ExactFlowMap(flow), ref, steps=(1, 2, 4), generator=torch.Generator().manual_seed(9))
    assert isinstance(exact, StepsQuality) and exact.steps == (1, 2, 4)
    assert max(exact.drift) < TOL  # semigroup: N steps of the exact map = one step
    for name, vals in exact.metrics.items():
        assert max(vals) - min(vals) < 1e3 * TOL, name
    eul = quality_vs_steps(euler_step(flow), ref, steps=(1, 4, 16), generator=torch.Generator().manual_seed(9))
    # one Euler step from t = 0 (linear) maps every x0 to mu: W2(delta_mu, ref) = sqrt(mean |ref - mu|^2)
    mu = torch.tensor([1.0, -1.0], dtype=F64)
    assert abs(eul.metrics["w2"][0] - float(((ref - mu) ** 2).sum(1).mean().sqrt())) < TOL * 10
    for name in SAMPLE_METRICS:
        assert eul.metrics[name][2] < eul.metrics[name][0], name
    assert eul.drift[0] == 0.0 and eul.drift[2] > eul.drift[1] > 0.5
    rows = eul.rows()
    assert rows[1]["steps"] == 4 and set(rows[1]) == {"steps", "w2", "sliced_w2", "mmd2", "energy", "drift"}


def test_quality_vs_steps_refuses_nonfinite_samples(flow):
    from workbench.diagnostics import NonFiniteOutput

    class Diverged(torch.nn.Module):
        dim = 2

        def flow_map(self, s, t, x):
            return x * math.inf

    with pytest.raises(NonFiniteOutput, match="1-step samples hold 8 non-finite"):
        quality_vs_steps(Diverged(), flow.sample_data(4, torch.Generator().manual_seed(1)), steps=(1,), n=4)


def test_quality_vs_steps_samples_with_the_manual_loop_without_autograd(flow):
    """The N-step samples behind quality_vs_steps are N Euler steps written out by hand, from the noise
    drawn by the generator, and they are drawn without building an autograd graph."""

    class Recording(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.dim, self.grad_enabled = euler_step(flow), 2, []
            self.w = torch.nn.Parameter(torch.ones((), dtype=F64))

        def flow_map(self, s, t, x):
            self.grad_enabled.append(torch.is_grad_enabled())
            return self.w * self.inner.flow_map(s, t, x)

    model = Recording()
    ref = flow.sample_data(16, torch.Generator().manual_seed(9))
    q = quality_vs_steps(model, ref, steps=(1, 3), generator=torch.Generator().manual_seed(10), metrics=("energy",))
    x0 = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(10))
    one = x0 + flow.velocity(0.0, x0)
    x = x0
    for k in range(3):
        x = x + (1 / 3) * flow.velocity(k / 3, x)
    assert abs(q.drift[1] - float((x - one).pow(2).sum(1).mean().sqrt())) < TOL
    assert abs(q.metrics["energy"][1] - energy_distance(ref, x)) < TOL
    assert model.grad_enabled and not any(model.grad_enabled)
    from workbench.diagnostics import metrics

    assert not hasattr(metrics, "sample_with_steps")  # one N-step sampler: workbench.sampling.sample_flow_map


def test_rk4_fourth_order(flow):
    x = flow.sample_marginal(0.1, 32, torch.Generator().manual_seed(11))
    s = torch.full((32,), 0.1, dtype=F64)
    t = torch.linspace(0.0, 0.95, 32, dtype=F64)  # per-sample times, forward and backward
    exact = flow.flow_map(s, t, x)
    err = [float((rk4_flow(flow.velocity, s, t, x, n_steps=k) - exact).norm(dim=1).max()) for k in (8, 16, 32)]
    assert 16 / 1.6 < err[0] / err[1] < 16 * 1.6 and 16 / 1.6 < err[1] / err[2] < 16 * 1.6, err


def test_map_vs_own_ode(flow):
    """The truth and a self-consistent wrong field agree with their own ODE; one Euler step does not."""
    x0 = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(12))
    assert map_vs_own_ode(ExactFlowMap(flow), x0, n_steps=64).max < 1e-7
    wrong = other_data_flow(flow)
    assert map_vs_own_ode(wrong, x0, n_steps=64).max < 1e-7
    assert float((wrong.flow_map(0.0, 1.0, x0) - flow.flow_map(0.0, 1.0, x0)).norm(dim=1).max()) > 0.1
    res = map_vs_own_ode(euler_step(flow), x0, n_steps=64)
    assert res.rms > 0.3 and res.errors.shape == (64,) and res.max >= res.rms


def test_metrics_follow_float32_and_bad_input():
    g = torch.Generator().manual_seed(13)
    x, y = torch.randn(50, 2, generator=g), torch.randn(40, 2, generator=g) + 1
    for fn in (wasserstein2, sliced_wasserstein2, mmd2, energy_distance, histogram_kl):
        assert math.isfinite(fn(x, y))
    with pytest.raises(ValueError, match="same event size"):
        energy_distance(x, torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"shape \(n, \*event\)"):
        mmd2(torch.zeros(5), y)
    with pytest.raises(ValueError, match="non-finite"):
        wasserstein2(torch.full((3, 2), math.nan), y)
    with pytest.raises(ValueError, match="direction"):
        histogram_kl(x, y, direction="forward")
    with pytest.raises(ValueError, match="too many"):
        histogram_kl(torch.zeros(4, 5), torch.zeros(4, 5), bins=64)
    with pytest.raises(ValueError, match="bandwidths"):
        mmd2(x, y, bandwidths=[-1.0])
    with pytest.raises(ValueError, match="unknown metric"):
        quality_vs_steps(euler_step(GaussianFlow([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]])), x.double(), metrics=("fid",))


def test_quality_vs_steps_evaluates_a_float32_model_on_float64_references(flow):
    """The diagnostics layer casts at its own entry (as the detectors do): a float32 MLP against
    float64 reference samples runs (it raised "x has dtype torch.float64", an internal name); the
    noise is drawn in the model's dtype and the samples compared in float64, so the values equal
    the metrics computed here on the model's own float32 samples."""
    from workbench.models import make_mlp_flow_map

    torch.manual_seed(0)
    model = make_mlp_flow_map(2, hidden=8, depth=1).to(torch.float32)
    ref = flow.sample_data(64, torch.Generator().manual_seed(1))
    res = quality_vs_steps(model, ref, steps=(1, 2), metrics=("w2",), generator=torch.Generator().manual_seed(2))
    x0 = torch.randn(64, 2, dtype=torch.float32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x1 = model.flow_map(0.0, 1.0, x0).double()
    assert abs(res.metrics["w2"][0] - wasserstein2(ref, x1)) < TOL
