"""workbench.stats: intervals checked against tabulated quantiles and by simulated coverage, the
bootstrap against the normal-theory interval, rankings on constructed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workbench.stats import Interval, bootstrap_ci, format_interval, mean_ci, rank

# Student-t quantiles t_{p, df}, p = 0.975, from the closed forms of the t CDF for df = 1, 2, 4
# (Hill 1970): independent of scipy, which the code under test uses
_P = 0.975
_A = 4 * _P * (1 - _P)
T975 = {
    1: math.tan(math.pi * (_P - 0.5)),
    2: (2 * _P - 1) / math.sqrt(2 * _P * (1 - _P)),
    4: 2 * math.sqrt(math.cos(math.acos(math.sqrt(_A)) / 3) / math.sqrt(_A) - 1),
}


@pytest.mark.parametrize("df", sorted(T975))
def test_mean_ci_matches_tabulated_t(df):
    rng = np.random.default_rng(df)
    x = rng.normal(size=df + 1)
    iv = mean_ci(x)
    sd = math.sqrt(sum((v - sum(x) / len(x)) ** 2 for v in x) / df)
    half = T975[df] * sd / math.sqrt(df + 1)
    assert iv.mean == pytest.approx(float(np.mean(x)), rel=1e-14)
    assert iv.high - iv.mean == pytest.approx(half, rel=1e-12)
    assert iv.mean - iv.low == pytest.approx(half, rel=1e-12)
    assert iv.n == df + 1 and iv.defined


def test_mean_ci_by_hand():
    iv = mean_ci([1.0, 2.0, 3.0])
    assert (iv.mean, iv.n) == (2.0, 3)
    assert iv.half_width == pytest.approx(T975[2] / math.sqrt(3), rel=1e-12)


def test_mean_ci_coverage_simulated():
    """The 95% interval of n = 5 normal draws covers the true mean in 95% of repeats
    (4000 repeats: binomial sd 0.0034, the band is 4 sd)."""
    rng = np.random.default_rng(0)
    draws = rng.normal(loc=3.0, scale=2.0, size=(4000, 5))
    cover = np.mean([mean_ci(row).low <= 3.0 <= mean_ci(row).high for row in draws])
    assert abs(cover - 0.95) < 4 * math.sqrt(0.95 * 0.05 / 4000)
    iv80 = [mean_ci(row, level=0.8) for row in draws[:2000]]
    cover80 = np.mean([iv.low <= 3.0 <= iv.high for iv in iv80])
    assert abs(cover80 - 0.8) < 4 * math.sqrt(0.8 * 0.2 / 2000)


def test_one_repeat_has_no_interval():
    iv = mean_ci([0.5])
    assert iv.mean == 0.5 and not iv.defined and iv.low == -math.inf and iv.high == math.inf
    assert format_interval(iv) == "0.5 (n=1)"
    assert iv.to_dict()["low"] is None


def test_bootstrap_of_the_mean_agrees_with_normal_theory():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 1))
    iv = bootstrap_ci(lambda a: float(a.mean()), x, n_boot=400, seed=3)
    normal_half = 1.959963984540054 * float(x.std(ddof=1)) / math.sqrt(len(x))
    assert iv.mean == pytest.approx(float(x.mean()), rel=1e-14)
    assert (iv.high - iv.low) / 2 == pytest.approx(normal_half, rel=0.15)
    # reproducible from the seed, different with another seed
    assert bootstrap_ci(lambda a: float(a.mean()), x, n_boot=400, seed=3) == iv
    assert bootstrap_ci(lambda a: float(a.mean()), x, n_boot=400, seed=4) != iv


def test_bootstrap_two_sample_statistic():
    """A two-sample statistic (difference of means) resamples each set independently."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(1500, 1)), rng.normal(loc=0.3, size=(1000, 1))
    iv = bootstrap_ci(lambda u, v: float(v.mean() - u.mean()), a, b, n_boot=400, seed=0)
    half = 1.959963984540054 * math.sqrt(a.var(ddof=1) / 1500 + b.var(ddof=1) / 1000)
    assert (iv.high - iv.low) / 2 == pytest.approx(half, rel=0.15)
    assert iv.low <= iv.mean <= iv.high


def test_rank_only_where_intervals_separate():
    ivs = {"a": Interval(1.0, 0.9, 1.1, 3), "b": Interval(1.15, 1.05, 1.25, 3),
           "c": Interval(2.0, 1.9, 2.1, 3), "d": Interval(1.0, -math.inf, math.inf, 1)}
    r = {e.name: e for e in rank(ivs)}
    assert r["a"].rank == 1 and r["b"].rank == 1          # overlap: tied
    assert r["c"].rank == 3                                # a and b are separated from c and better
    assert r["d"].rank == 1 and set(r["d"].tied_with) == {"a", "b", "c"}   # no interval: tied with all
    assert set(r["a"].tied_with) == {"b", "d"}
    assert [e.name for e in rank(ivs)][-1] == "c"
    hi = {e.name: e.rank for e in rank(ivs, lower_is_better=False)}
    assert hi["c"] == 1 and hi["a"] == 2 and hi["b"] == 2


@pytest.mark.parametrize(("bad", "match"), [
    (dict(values=[]), "at least one"), (dict(values=[1.0, math.nan]), "finite"),
    (dict(values="abc"), "sequence"), (dict(values=[1.0, 2.0], level=1.0), "level"),
    (dict(values=[1.0, 2.0], level=True), "level"),
])
def test_mean_ci_bad_input(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        mean_ci(**bad)


def test_bootstrap_and_rank_bad_input():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(np.mean, x, n_boot=1)
    with pytest.raises(ValueError, match=r"samples\[0\]"):
        bootstrap_ci(np.mean, np.zeros((1, 2)))
    with pytest.raises(TypeError, match="statistic"):
        bootstrap_ci(3, x)
    with pytest.raises(TypeError, match=r"intervals\['a'\]"):
        rank({"a": 1.0})
