"""Time samplers: the realised (s, t) laws match the configured ones (Kolmogorov-Smirnov tests of the
marginals against their exact laws, fixed seeds), the diagonal split is exact, bad input fails."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats

from workbench.losses.samplers import (
    BetaPair,
    DiscreteGapSampler,
    LogitNormalPair,
    Midpoint,
    UniformIntermediate,
    UniformTriangle,
    n_diagonal,
    sample_times,
)

N = 4000
P_MIN = 1e-3  # KS p-value threshold; seeds are fixed, so each test is deterministic


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ks(x: torch.Tensor, cdf) -> float:
    return stats.kstest(x.numpy(), cdf).pvalue


def min_of_two(cdf):
    return lambda x: 1.0 - (1.0 - cdf(x)) ** 2


def max_of_two(cdf):
    return lambda x: cdf(x) ** 2


def test_uniform_triangle_marginals_and_gap():
    s, t = UniformTriangle().sample(N, gen(1))
    assert s.dtype == torch.float64 and s.shape == (N,)
    assert bool((s <= t).all()) and bool((s >= 0).all()) and bool((t <= 1).all())
    assert ks(s, stats.beta(1, 2).cdf) > P_MIN
    assert ks(t, stats.beta(2, 1).cdf) > P_MIN
    # uniform on the triangle: the gap t - s has density 2 (1 - g), i.e. Beta(1, 2)
    assert ks(t - s, stats.beta(1, 2).cdf) > P_MIN
    # the test has power: the same samples are rejected as uniform
    assert ks(s, stats.uniform().cdf) < 1e-6
    assert ks(UniformTriangle().sample_diagonal(N, gen(2)), stats.uniform().cdf) > P_MIN


def test_uniform_triangle_rescaled_range():
    lo, hi = 0.1, 0.9
    s, t = UniformTriangle(lo=lo, hi=hi).sample(N, gen(3))
    assert ks(s, stats.beta(1, 2, loc=lo, scale=hi - lo).cdf) > P_MIN
    assert ks(t, stats.beta(2, 1, loc=lo, scale=hi - lo).cdf) > P_MIN
    d = UniformTriangle(lo=lo, hi=hi).sample_diagonal(N, gen(4))
    assert ks(d, stats.uniform(loc=lo, scale=hi - lo).cdf) > P_MIN


def test_beta_pair_is_sorted_iid_beta():
    a, b = 0.8, 1.0
    s, t = BetaPair(a, b).sample(N, gen(5))
    assert bool((s <= t).all())
    F = stats.beta(a, b).cdf
    assert ks(s, min_of_two(F)) > P_MIN
    assert ks(t, max_of_two(F)) > P_MIN
    assert ks(s, F) < 1e-6  # power: s is not a single Beta draw
    assert ks(BetaPair(a, b).sample_diagonal(N, gen(6)), F) > P_MIN
    # another shape, to exercise both Gamma parameters
    s2, t2 = BetaPair(2.0, 3.0).sample(N, gen(7))
    F2 = stats.beta(2.0, 3.0).cdf
    assert ks(s2, min_of_two(F2)) > P_MIN and ks(t2, max_of_two(F2)) > P_MIN
    # the default is iSD's law in this clock, Beta(1, 0.8) (mass near the data end)
    assert ks(BetaPair().sample_diagonal(N, gen(8)), stats.beta(1.0, 0.8).cdf) > P_MIN


def test_logit_normal_pair():
    m, sd = 0.4, 1.2

    def F(x):
        x = np.clip(x, 1e-300, 1 - 1e-16)
        return stats.norm.cdf((np.log(x) - np.log1p(-x) - m) / sd)

    s, t = LogitNormalPair(m, sd).sample(N, gen(18))
    assert bool((s <= t).all())
    assert ks(s, min_of_two(F)) > P_MIN
    assert ks(t, max_of_two(F)) > P_MIN
    assert ks(LogitNormalPair(m, sd).sample_diagonal(N, gen(9)), F) > P_MIN


def test_discrete_gap_sampler():
    delta = 0.2
    sp = DiscreteGapSampler(delta=delta)
    s, t = sp.sample(N, gen(10))
    assert float((t - s).min()) >= delta - 1e-15
    assert ks(s / (1 - delta), stats.beta(1, 2).cdf) > P_MIN
    assert ks((t - delta) / (1 - delta), stats.beta(2, 1).cdf) > P_MIN
    u = sp.step_time(s, t)
    assert torch.equal(u, s + delta)
    # consistency-function slice: t = 1, s uniform on [0, 1 - delta]
    s1, t1 = DiscreteGapSampler(delta=delta, t_end=1.0).sample(N, gen(11))
    assert bool((t1 == 1.0).all())
    assert ks(s1, stats.uniform(scale=1 - delta).cdf) > P_MIN


def test_intermediate_times():
    s, t = UniformTriangle().sample(N, gen(12))
    assert torch.allclose(Midpoint().sample(s, t), 0.5 * (s + t), rtol=0, atol=1e-15)
    u = UniformIntermediate().sample(s, t, gen(13))
    assert bool((u >= s).all()) and bool((u <= t).all())
    frac = (u - s) / (t - s)
    assert ks(frac, stats.uniform().cdf) > P_MIN


@pytest.mark.parametrize("n,f,expected", [(512, 0.75, 384), (8, 0.75, 6), (100, 0.29, 29), (4, 0.0, 0),
                                          (4, 1.0, 4), (3, 0.1, 1), (1, 0.75, 1)])
def test_diagonal_split_is_exact(n, f, expected):
    assert n_diagonal(n, f) == expected
    tb = sample_times(n, sampler=UniformTriangle(), diag_fraction=f, generator=gen(14))
    assert int(tb.diagonal.sum()) == expected
    assert bool(tb.diagonal[:expected].all()) and not bool(tb.diagonal[expected:].any())
    assert torch.equal(tb.s[tb.diagonal], tb.t[tb.diagonal])
    assert bool((tb.s <= tb.t).all())


def test_sample_times_laws_dtype_and_reproducibility():
    tb = sample_times(2 * N, sampler=UniformTriangle(), diag_fraction=0.5, generator=gen(15),
                      dtype=torch.float32, intermediate="midpoint")
    assert tb.s.dtype == torch.float32 and tb.diagonal.dtype == torch.bool
    off = ~tb.diagonal
    assert ks(tb.s[off].double(), stats.beta(1, 2).cdf) > P_MIN
    assert ks(tb.t[off].double(), stats.beta(2, 1).cdf) > P_MIN
    assert ks(tb.t[tb.diagonal].double(), stats.uniform().cdf) > P_MIN
    assert torch.equal(tb.u[tb.diagonal], tb.t[tb.diagonal])
    assert torch.allclose(tb.u[off], 0.5 * (tb.s[off] + tb.t[off]))
    again = sample_times(2 * N, sampler=UniformTriangle(), diag_fraction=0.5, generator=gen(15),
                         dtype=torch.float32, intermediate="midpoint")
    assert torch.equal(tb.s, again.s) and torch.equal(tb.t, again.t)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, "half", True])
def test_bad_diag_fraction(bad):
    with pytest.raises(ValueError, match="diag_fraction"):
        sample_times(8, diag_fraction=bad)


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="lo and hi"):
        UniformTriangle(lo=0.5, hi=0.2)
    with pytest.raises(ValueError, match="BetaPair"):
        BetaPair(a=0.0)
    with pytest.raises(ValueError, match="LogitNormalPair"):
        LogitNormalPair(std=-1.0)
    with pytest.raises(ValueError, match="delta"):
        DiscreteGapSampler(delta=1.5)
    with pytest.raises(ValueError, match="t_end"):
        DiscreteGapSampler(delta=0.1, t_end=0.0)
    with pytest.raises(ValueError, match="n must be"):
        UniformTriangle().sample(0)
    with pytest.raises(TypeError, match="dtype"):
        UniformTriangle().sample(4, dtype=torch.int64)
    with pytest.raises(TypeError, match="sampler"):
        sample_times(4, sampler=object())
    with pytest.raises(ValueError, match="intermediate"):
        sample_times(4, intermediate="third")


def test_sampler_contracts_go_through_check_implements():
    """Time and intermediate samplers are checked against their protocols (TimeSampler,
    IntermediateSampler) by the one contract check: the message names the argument, the protocol
    and what is missing, at every entry that takes a sampler."""
    from workbench.losses import OBJECTIVES
    from workbench.losses.flow_matching import _DiagonalOnly
    from workbench.losses.samplers import get_intermediate

    class DiagonalOnly:
        def sample_diagonal(self, n, generator=None, dtype=torch.float64, device=None):
            return torch.zeros(n, dtype=dtype)

    want = r"^sampler must implement TimeSampler \(sample, sample_diagonal\); DiagonalOnly lacks sample$"
    with pytest.raises(TypeError, match=want):
        sample_times(4, sampler=DiagonalOnly())
    with pytest.raises(TypeError, match=want):
        _DiagonalOnly(DiagonalOnly())
    with pytest.raises(TypeError, match=want):
        dataclasses.replace(OBJECTIVES["lsd"], sampler=DiagonalOnly())
    with pytest.raises(TypeError, match=r"^intermediate must implement IntermediateSampler \(sample, sample_gamma\); "
                                        r"DiagonalOnly lacks sample, sample_gamma$"):
        get_intermediate(DiagonalOnly())
    mid = get_intermediate("midpoint")
    assert get_intermediate(mid) is mid
