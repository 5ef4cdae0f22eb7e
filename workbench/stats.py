"""Intervals and rankings for comparisons: every table that compares methods goes through here.

* :func:`mean_ci`: the Student-t interval of a mean over independent repeats (seeds),
  mean +- t_{n-1, (1+level)/2} * sd / sqrt(n), with sd the unbiased standard deviation. One repeat
  has no interval (low = -inf, high = +inf): it can never separate from anything.
* :func:`bootstrap_ci`: the percentile bootstrap interval of a statistic of one sample set
  (a sample metric such as W2 between two finite sample sets), resampling the rows of each set with
  replacement; every random number comes from ``seed``.
* :func:`rank`: orders methods by their intervals and ranks one method ahead of another only where
  their intervals do not overlap. A method's rank is 1 + the number of methods that are separated
  from it AND better; methods whose intervals overlap are reported as tied with each other.

An :class:`Interval` prints as ``mean ± half-width`` (or ``mean [low, high]`` when asymmetric).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["Interval", "RankEntry", "bootstrap_ci", "format_interval", "mean_ci", "rank"]


def _check_level(level: object) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    return float(level)


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval [low, high] at ``level``, from ``n`` values."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return max(self.mean - self.low, self.high - self.mean)

    @property
    def defined(self) -> bool:
        """True when the interval is finite (at least two finite repeats)."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    def separated_from(self, other: Interval) -> bool:
        """True when the two intervals do not overlap (touching endpoints count as overlap)."""
        return self.high < other.low or other.high < self.low

    def to_dict(self) -> dict[str, float | int | None]:
        def f(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {"mean": f(self.mean), "low": f(self.low), "high": f(self.high), "n": self.n, "level": self.level}

    def __str__(self) -> str:
        return format_interval(self)


def format_interval(iv: Interval | None, digits: int = 3) -> str:
    """``mean ± h`` with ``digits`` significant digits; ``mean [low, high]`` when the interval is
    asymmetric (a bootstrap); ``mean (n=1)`` without an interval; "n/a" without a value."""
    if iv is None or not math.isfinite(iv.mean):
        return "n/a"
    m = f"{iv.mean:.{digits}g}"
    if not iv.defined:
        return f"{m} (n={iv.n})"
    lo, hi = iv.mean - iv.low, iv.high - iv.mean
    if math.isclose(lo, hi, rel_tol=1e-6, abs_tol=1e-300):
        return f"{m} ± {iv.half_width:.2g}"
    return f"{m} [{iv.low:.{digits}g}, {iv.high:.{digits}g}]"


def _finite_values(values: object, name: str) -> np.ndarray:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if arr.size == 0:
        raise ValueError(f"{name} must hold at least one value")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()} (leave failed runs out and say so)")
    return arr


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean of independent repeats: mean +- t * sd / sqrt(n)."""
    level = _check_level(level)
    arr = _finite_values(values, "values")
    n = int(arr.size)
    mean = float(arr.mean())
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1, level)
    sd = float(arr.std(ddof=1))
    half = float(_scipy_stats.t.ppf(0.5 + level / 2.0, df=n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, level)


def bootstrap_ci(statistic: Callable[..., float], *samples: np.ndarray, n_boot: int = 200,
                 level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap of ``statistic(*samples)``: each sample set (rows = samples) is resampled
    with replacement ``n_boot`` times; the interval is the (1 -+ level)/2 quantiles of the
    resampled statistics and the point estimate is the statistic of the original sets."""
    level = _check_level(level)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 2:
        raise ValueError(f"n_boot must be an int >= 2, got {n_boot!r}")
    if not callable(statistic):
        raise TypeError(f"statistic must be callable, got {type(statistic).__name__}")
    if not samples:
        raise ValueError("bootstrap_ci needs at least one sample set")
    sizes = []
    for i, x in enumerate(samples):
        if not hasattr(x, "shape") or len(x.shape) < 1 or x.shape[0] < 2:
            raise ValueError(f"samples[{i}] must be an array or tensor with at least 2 rows")
        sizes.append(int(x.shape[0]))
    point = float(statistic(*samples))
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        idx = [rng.integers(0, n, size=n) for n in sizes]
        boots[b] = float(statistic(*[x[i] for x, i in zip(samples, idx, strict=True)]))
    if not np.all(np.isfinite(boots)):
        raise ValueError("statistic returned a non-finite value on a bootstrap resample")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boots, [alpha, 1.0 - alpha])
    return Interval(point, float(min(low, point)), float(max(high, point)), min(sizes), level)


@dataclass(frozen=True)
class RankEntry:
    """One method's place: ``rank`` = 1 + how many methods are separated from it and better;
    ``tied_with``: the methods whose intervals overlap its own."""

    name: str
    rank: int
    interval: Interval
    tied_with: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.rank}" + (f" (tied: {', '.join(self.tied_with)})" if self.tied_with else "")


def rank(intervals: Mapping[str, Interval], *, lower_is_better: bool = True) -> list[RankEntry]:
    """Rank methods only where their intervals separate; sorted by rank, then by mean."""
    if not isinstance(intervals, Mapping):
        raise TypeError(f"intervals must be a mapping name -> Interval, got {type(intervals).__name__}")
    for k, iv in intervals.items():
        if not isinstance(iv, Interval):
            raise TypeError(f"intervals[{k!r}] must be an Interval, got {type(iv).__name__}")
    sign = 1.0 if lower_is_better else -1.0
    out = []
    for name, iv in intervals.items():
        better = sum(1 for o, jv in intervals.items()
                     if o != name and jv.separated_from(iv) and sign * jv.mean < sign * iv.mean)
        tied = tuple(o for o, jv in intervals.items() if o != name and not jv.separated_from(iv))
        out.append(RankEntry(name, 1 + better, iv, tied))
    return sorted(out, key=lambda e: (e.rank, sign * e.interval.mean))
