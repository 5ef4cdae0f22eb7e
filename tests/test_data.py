"""Data sources: sample statistics against exact laws (supports, mode counts, KS where a CDF is known)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from workbench.core import make_generator
from workbench.data import DATA, Checkerboard, DataSource, EightGaussians, FlowData, Rings, TwoMoons, get_data
from workbench.flows import GaussianFlow

N = 20_000
P_MIN = 1e-4  # fixed seeds make every test deterministic; this only guards against a wrong law


def _without_cuda(monkeypatch):
    """This machine as one without CUDA, whatever it has: the no-CUDA branch runs on every machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _gen(seed=0):
    return make_generator(seed)


@pytest.mark.parametrize("variant,h", [("unit", 1.0), ("realnvp", 4.0)])
def test_checkerboard_support_cells_and_marginals(variant, h):
    src = Checkerboard(variant)
    x = src.sample(N, _gen(), dtype=torch.float64).numpy()
    assert x.shape == (N, 2)
    assert np.all(np.abs(x) <= h)
    w = 2 * h / 4
    ij = np.floor((x + h) / w).astype(int)
    assert np.all((ij.sum(1) % 2) == 0), "a sample fell on a white cell"
    counts = np.bincount(ij[:, 0] * 4 + ij[:, 1], minlength=16)
    black = [i * 4 + j for i in range(4) for j in range(4) if (i + j) % 2 == 0]
    assert stats.chisquare(counts[black]).pvalue > P_MIN
    for k in range(2):  # each marginal is U[-h, h]
        assert stats.kstest(x[:, k], stats.uniform(-h, 2 * h).cdf).pvalue > P_MIN
    frac = (x + h) / w - ij  # position inside the cell is U[0, 1]^2
    assert stats.kstest(frac.ravel(), "uniform").pvalue > P_MIN
    assert abs(x.std(0).mean() - src.std) < 5 * src.std / math.sqrt(N)


def test_checkerboard_realnvp_equals_the_forks_procedure():
    """B25's fork sampler, written out here, gives the same law as variant='realnvp' (two-sample KS)."""
    rng = np.random.default_rng(1)
    x1 = rng.uniform(-2, 2, N)
    x2 = rng.uniform(0, 1, N) - 2 * rng.integers(0, 2, N) + np.mod(np.floor(x1), 2)
    ref = 2 * np.stack([x1, x2], 1)
    ours = Checkerboard("realnvp").sample(N, _gen(2), dtype=torch.float64).numpy()
    for k in range(2):
        assert stats.ks_2samp(ref[:, k], ours[:, k]).pvalue > P_MIN
    cells = lambda a: np.floor((a + 4) / 2).astype(int) @ np.array([4, 1])
    table = np.stack([np.bincount(cells(ref), minlength=16), np.bincount(cells(ours), minlength=16)])
    assert set(np.nonzero(table[0])[0]) == set(np.nonzero(table[1])[0])
    assert stats.chi2_contingency(table[:, table[0] > 0]).pvalue > P_MIN


def test_eight_gaussians_modes_and_spread():
    src = EightGaussians(radius=2.0, std=0.1)
    x = src.sample(N, _gen(), dtype=torch.float64).numpy()
    ang = 2 * np.pi * np.arange(8) / 8
    centres = 2.0 * np.stack([np.cos(ang), np.sin(ang)], 1)
    nearest = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), 1)
    assert stats.chisquare(np.bincount(nearest, minlength=8)).pvalue > P_MIN
    resid = x - centres[nearest]
    assert stats.kstest(resid.ravel(), stats.norm(0, 0.1).cdf).pvalue > P_MIN
    assert np.all(np.abs(x.mean(0)) < 5 * x.std(0) / math.sqrt(N))


def test_two_moons_lie_on_their_arcs():
    src = TwoMoons(noise=0.0)
    x = src.sample(N, _gen(), dtype=torch.float64).numpy() + np.array([0.5, 0.25])
    r_up = np.hypot(x[:, 0], x[:, 1])
    r_lo = np.hypot(x[:, 0] - 1, x[:, 1] - 0.5)
    up = np.isclose(r_up, 1.0, atol=1e-12) & (x[:, 1] >= -1e-12)
    lo = np.isclose(r_lo, 1.0, atol=1e-12) & (x[:, 1] <= 0.5 + 1e-12)
    assert np.all(up | lo)
    assert stats.binomtest(int(up.sum()), N, 0.5).pvalue > P_MIN
    # x = cos(theta), theta ~ U[0, pi]:  P(x <= a) = 1 - arccos(a) / pi
    assert stats.kstest(x[up, 0], lambda a: 1 - np.arccos(np.clip(a, -1, 1)) / np.pi).pvalue > P_MIN


def test_two_moons_centred_and_scaled():
    src = TwoMoons(noise=0.1, scale=2.0)
    x = src.sample(N, _gen(3), dtype=torch.float64).numpy()
    assert np.all(np.abs(x.mean(0)) < 5 * x.std(0) / math.sqrt(N))


def test_rings_radii_weights_and_angles():
    src = Rings(radii=(1.0, 2.5), weights=(0.3, 0.7))
    x = src.sample(N, _gen(), dtype=torch.float64).numpy()
    r = np.hypot(x[:, 0], x[:, 1])
    on1, on2 = np.isclose(r, 1.0, atol=1e-12), np.isclose(r, 2.5, atol=1e-12)
    assert np.all(on1 | on2)
    assert stats.binomtest(int(on1.sum()), N, 0.3).pvalue > P_MIN
    phi = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * np.pi)
    assert stats.kstest(phi, stats.uniform(0, 2 * np.pi).cdf).pvalue > P_MIN
    noisy = Rings(noise=0.05).sample(N, _gen(1), dtype=torch.float64).numpy()
    assert stats.binomtest(int((np.hypot(*noisy.T) < 1.75).sum()), N, 1 / 3.5).pvalue > P_MIN


def test_flow_data_samples_the_t1_marginal():
    mean, cov = np.array([1.0, -0.5]), np.array([[0.5, 0.2], [0.2, 0.3]])
    src = get_data("gaussian", mean=mean.tolist(), cov=cov.tolist())
    x = src.sample(N, _gen(), dtype=torch.float64).numpy()
    se = np.sqrt(np.diag(cov) / N)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se)
    # sample covariance entries: sd of S_ij is sqrt((S_ii S_jj + S_ij^2) / N)
    sd_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / N)
    assert np.all(np.abs(np.cov(x.T) - cov) < 5 * sd_cov)
    assert isinstance(src.as_flow(), GaussianFlow)


@pytest.mark.parametrize("name", ["checkerboard", "eight_gaussians", "two_moons", "rings", "gaussian", "point_mass"])
def test_interface_dtype_and_determinism(name):
    src = get_data(name)
    assert isinstance(src, DataSource) and src.name == name and src.dim == 2
    a = src.sample(64, _gen(7))
    b = src.sample(64, _gen(7), dtype=torch.float64)
    assert a.dtype == torch.float32 and b.dtype == torch.float64 and a.shape == (64, 2)
    torch.testing.assert_close(src.sample(64, _gen(7)), a, rtol=0, atol=0)
    assert torch.isfinite(b).all()


def test_bad_input():
    with pytest.raises(ValueError, match="data name"):
        get_data("nope")
    with pytest.raises(TypeError, match="bad parameters"):
        get_data("two_moons", bogus=1)
    with pytest.raises(ValueError, match="variant"):
        Checkerboard("tiny")
    with pytest.raises(ValueError, match="n must be"):
        EightGaussians().sample(0)
    with pytest.raises(ValueError, match="std"):
        EightGaussians(std=-1.0)
    with pytest.raises(ValueError, match="weights"):
        Rings(radii=(1.0, 2.0), weights=(0.5, 0.6))
    with pytest.raises(TypeError, match="dtype"):
        TwoMoons().sample(3, dtype=torch.int64)
    with pytest.raises(TypeError, match="sample_data"):
        FlowData(object())
    with pytest.raises(ValueError, match="closed-form"):
        Checkerboard().as_flow()
    assert sorted(DATA) == sorted(["checkerboard", "eight_gaussians", "two_moons", "rings", "gaussian", "point_mass", "gmm"])


@pytest.mark.parametrize("name", ["checkerboard", "eight_gaussians", "two_moons", "rings", "gaussian", "point_mass"])
def test_sample_arguments_are_validated(name, monkeypatch):
    src = get_data(name)
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator or None, got int; for a seed use"):
        src.sample(4, 7)
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        src.sample(4, dtype=torch.int64)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        src.sample(4, dtype="float32")
    with pytest.raises(ValueError, match="device 'gpu0' is not a device torch knows"):
        src.sample(4, device="gpu0")
    _without_cuda(monkeypatch)
    with pytest.raises(ValueError, match="device 'cuda' needs CUDA"):
        src.sample(4, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["checkerboard", "eight_gaussians", "two_moons", "rings", "gaussian", "point_mass"])
def test_sample_on_cuda_refuses_a_cpu_generator(name):
    src = get_data(name)
    with pytest.raises(ValueError, match="differs from the generator's device"):
        src.sample(4, _gen(0), device="cuda")
    assert src.sample(4, device="cuda").device.type == "cuda"


def test_flow_data_names_the_missing_members():
    with pytest.raises(TypeError, match=r"flow must implement DataSampler \(dim, sample_data\); object lacks dim, sample_data"):
        FlowData(object())
