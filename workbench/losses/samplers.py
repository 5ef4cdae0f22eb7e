"""Time samplers for flow-map objectives: pairs (s, t) with s <= t, intermediate times u, and the
diagonal / off-diagonal split of a batch.

Every pair sampler is a frozen dataclass with

* ``sample(n, generator=None, dtype=torch.float64, device=None) -> (s, t)``, two (n,) tensors with
  lo <= s <= t <= hi (the off-diagonal law), and
* ``sample_diagonal(n, generator=None, dtype=torch.float64, device=None) -> t``, one (n,) tensor
  (the law of the diagonal time s = t).

``lo`` and ``hi`` rescale the unit-interval law affinely to [lo, hi] (keep hi < 1 for flows that are
singular at the data end, e.g. ``PointMassFlow``). Draws are made on the generator's device and moved
to ``device`` afterwards, so a CPU generator can feed CUDA tensors.

Laws on [0, 1] (before the affine map):

| sampler                     | pair (s, t)                                   | s law          | t law          |
|-----------------------------|-----------------------------------------------|----------------|----------------|
| ``UniformTriangle``         | uniform on {0 <= s <= t <= 1} (B25 code)      | Beta(1, 2)     | Beta(2, 1)     |
| ``BetaPair(a, b)``          | two iid Beta(a, b), sorted (iSD: a=1, b=0.8)  | min of two     | max of two     |
| ``LogitNormalPair(m, sd)``  | two iid sigmoid(N(m, sd^2)), sorted (MeanFlow)| min of two     | max of two     |
| ``DiscreteGapSampler(d)``   | uniform on {t - s >= d} (or t = t_end fixed)  | see class      | see class      |

(The min of two iid draws with CDF F has CDF 1 - (1 - F)^2, the max has CDF F^2.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.contract import IntermediateSampler, TimeSampler, check_implements
from ..core.validation import check_positive_int
from .base import TimeBatch

__all__ = [
    "INTERMEDIATES",
    "BetaPair",
    "DiscreteGapSampler",
    "LogitNormalPair",
    "Midpoint",
    "UniformIntermediate",
    "UniformTriangle",
    "beta",
    "check_fraction",
    "get_intermediate",
    "intermediate_time",
    "n_diagonal",
    "normal",
    "sample_times",
    "uniform",
]


# -- random draws on the generator's device, returned on the requested one -----------------------------
def _device(generator: torch.Generator | None, device: object) -> tuple[torch.device, torch.device]:
    """(device to draw on, device to return on)."""
    out = torch.device(device) if device is not None else (
        torch.device(generator.device) if generator is not None else torch.device("cpu")
    )
    draw = torch.device(generator.device) if generator is not None else out
    return draw, out


def _check_dtype(dtype: torch.dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype (float32 or float64), got {dtype!r}")
    return dtype


def uniform(n: int, generator=None, dtype=torch.float64, device=None) -> torch.Tensor:
    """n iid U[0, 1) draws, shape (n,)."""
    draw, out = _device(generator, device)
    return torch.rand(n, generator=generator, dtype=_check_dtype(dtype), device=draw).to(out)


def normal(n: int, generator=None, dtype=torch.float64, device=None) -> torch.Tensor:
    """n iid N(0, 1) draws, shape (n,)."""
    draw, out = _device(generator, device)
    return torch.randn(n, generator=generator, dtype=_check_dtype(dtype), device=draw).to(out)


def beta(n: int, a: float, b: float, generator=None, dtype=torch.float64, device=None) -> torch.Tensor:
    """n iid Beta(a, b) draws as G_a / (G_a + G_b) with independent Gamma(a), Gamma(b), shape (n,).

    (torch.distributions.Beta takes no generator; the Gamma draws do.)"""
    draw, out = _device(generator, device)
    dtype = _check_dtype(dtype)
    ga = torch._standard_gamma(torch.full((n,), float(a), dtype=dtype, device=draw), generator=generator)
    gb = torch._standard_gamma(torch.full((n,), float(b), dtype=dtype, device=draw), generator=generator)
    return (ga / (ga + gb)).to(out)


def _check_range(lo: float, hi: float) -> None:
    if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float))):
        raise TypeError(f"lo and hi must be floats, got {lo!r}, {hi!r}")
    if not (0.0 <= lo < hi <= 1.0):
        raise ValueError(f"lo and hi must satisfy 0 <= lo < hi <= 1, got lo={lo!r}, hi={hi!r}")


def _sorted_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.minimum(a, b), torch.maximum(a, b)


class _Affine:
    """Mixin: map unit-interval draws to [lo, hi]."""

    lo: float
    hi: float

    def _scale(self, u: torch.Tensor) -> torch.Tensor:
        if self.lo == 0.0 and self.hi == 1.0:
            return u
        return self.lo + (self.hi - self.lo) * u


# -- pair samplers ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UniformTriangle(_Affine):
    """(s, t) uniform on the triangle lo <= s <= t <= hi: two iid uniforms, s = min, t = max (B25
    code); the diagonal time is uniform on [lo, hi]. On [0, 1]: s ~ Beta(1, 2), t ~ Beta(2, 1)."""

    lo: float = 0.0
    hi: float = 1.0

    def __post_init__(self) -> None:
        _check_range(self.lo, self.hi)

    def sample(self, n: int, generator=None, dtype=torch.float64, device=None):
        check_positive_int(n, "n")
        a = uniform(n, generator, dtype, device)
        b = uniform(n, generator, dtype, device)
        s, t = _sorted_pair(a, b)
        return self._scale(s), self._scale(t)

    def sample_diagonal(self, n: int, generator=None, dtype=torch.float64, device=None):
        check_positive_int(n, "n")
        return self._scale(uniform(n, generator, dtype, device))


@dataclass(frozen=True)
class BetaPair(_Affine):
    """Two iid Beta(a, b) times sorted into s <= t; the diagonal time is one Beta(a, b) draw. The
    default is iSD's law in this clock: K26's iSD code draws Beta(0.8, 1.0) in its own clock, where
    t = 1 is noise, and 1 - Beta(0.8, 1) is Beta(1, 0.8)."""

    a: float = 1.0
    b: float = 0.8
    lo: float = 0.0
    hi: float = 1.0

    def __post_init__(self) -> None:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (self.a, self.b))
        if not (ok and self.a > 0 and self.b > 0 and math.isfinite(self.a) and math.isfinite(self.b)):
            raise ValueError(f"BetaPair needs finite a > 0 and b > 0, got a={self.a!r}, b={self.b!r}")
        _check_range(self.lo, self.hi)

    def sample(self, n: int, generator=None, dtype=torch.float64, device=None):
        check_positive_int(n, "n")
        x = beta(n, self.a, self.b, generator, dtype, device)
        y = beta(n, self.a, self.b, generator, dtype, device)
        s, t = _sorted_pair(x, y)
        return self._scale(s), self._scale(t)

    def sample_diagonal(self, n: int, generator=None, dtype=torch.float64, device=None):
        check_positive_int(n, "n")
        return self._scale(beta(n, self.a, self.b, generator, dtype, device))


@dataclass(frozen=True)
class LogitNormalPair(_Affine):
    """Two iid logit-normal times sigmoid(N(mean, std^2)) sorted into s <= t (MeanFlow's sampler;
    note MeanFlow's clock runs data -> noise, so its mean -0.4 favours *noisy* times there, i.e. a
    mean of +0.4 here); the diagonal time is one logit-normal draw."""

    mean: float = 0.0
    std: float = 1.0
    lo: float = 0.0
    hi: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and self.std > 0 and math.isfinite(self.std)):
            raise ValueError(f"LogitNormalPair needs a finite mean and std > 0, got {self.mean!r}, {self.std!r}")
        _check_range(self.lo, self.hi)

    def _draw(self, n, generator, dtype, device):
        return torch.sigmoid(self.mean + self.std * normal(n, generator, dtype, device))

    def sample(self, n: int, generator=None, dtype=torch.float64, device=None):
        check_positive_int(n, "n")
        s, t = _sorted_pair(self._draw(n, generator, dtype, device), self._draw(n, generator, dtype, device))
        return self._scale(s), self._scale(t)

    def sample_diagonal(self, n: int, generator=None, dtype=torch.float64, device=None):
        check_positive_int(n, "n")
        return self._scale(self._draw(n, generator, dtype, device))


@dataclass(frozen=True)
class DiscreteGapSampler(_Affine):
    """Pairs with a gap of at least ``delta`` for discrete consistency training (step s -> s + delta).

    * ``t_end=None``: (s, t) uniform on {lo <= s, s + delta <= t <= hi} (a uniform triangle on
      [lo, hi - delta] with t shifted by delta); with lo = 0, hi = 1: s / (1 - delta) ~ Beta(1, 2)
      and (t - delta) / (1 - delta) ~ Beta(2, 1).
    * ``t_end`` a float: t = t_end (e.g. 1.0, the consistency-function slice X_{s,1}) and
      s ~ U[lo, t_end - delta].

    ``delta`` is a field, so a curriculum replaces it: ``dataclasses.replace(sampler, delta=...)``.
    The intermediate time of the one-step target is ``u = s + delta`` (:meth:`step_time`).
    The diagonal time is uniform on [lo, hi].
    """

    delta: float = 0.1
    t_end: float | None = None
    lo: float = 0.0
    hi: float = 1.0

    def __post_init__(self) -> None:
        _check_range(self.lo, self.hi)
        top = self.hi if self.t_end is None else self.t_end
        if self.t_end is not None and not (self.lo < self.t_end <= self.hi):
            raise ValueError(f"t_end must lie in (lo, hi] = ({self.lo}, {self.hi}], got {self.t_end!r}")
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta < top - self.lo):
            raise ValueError(
                f"delta must satisfy 0 < delta < {top - self.lo!r} (the room left in [lo, {top}]), got {self.delta!r}"
            )

    def sample(self, n: int, generator=None, dtype=torch.float64, device=None):
        check_positive_int(n, "n")
        if self.t_end is not None:
            s = self.lo + (self.t_end - self.delta - self.lo) * uniform(n, generator, dtype, device)
            return s, torch.full_like(s, float(self.t_end))
        width = self.hi - self.delta - self.lo
        a = uniform(n, generator, dtype, device)
        b = uniform(n, generator, dtype, device)
        s, t = _sorted_pair(a, b)
        return self.lo + width * s, self.lo + width * t + self.delta

    def sample_diagonal(self, n: int, generator=None, dtype=torch.float64, device=None):
        check_positive_int(n, "n")
        return self._scale(uniform(n, generator, dtype, device))

    def step_time(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """u = min(s + delta, t): the time reached by one step of size delta from s."""
        return torch.minimum(s + self.delta, t)


# -- intermediate times u = gamma s + (1 - gamma) t ---------------------------------------------------
@dataclass(frozen=True)
class Midpoint:
    """gamma = 1/2, u = (s + t) / 2 (PSD-M, shortcut models)."""

    def sample_gamma(self, n: int, generator=None, dtype=torch.float64, device=None) -> torch.Tensor:
        _, out = _device(generator, device)
        return torch.full((n,), 0.5, dtype=_check_dtype(dtype), device=out)

    def sample(self, s: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
        """u for each pair, shape of s."""
        return intermediate_time(s, t, self.sample_gamma(s.shape[0], generator, s.dtype, s.device))


@dataclass(frozen=True)
class UniformIntermediate:
    """gamma ~ U[0, 1], so u is uniform on [s, t] (PSD-U; B25 code: h ~ U[0,1], u = h s + (1 - h) t)."""

    def sample_gamma(self, n: int, generator=None, dtype=torch.float64, device=None) -> torch.Tensor:
        return uniform(n, generator, dtype, device)

    def sample(self, s: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
        return intermediate_time(s, t, self.sample_gamma(s.shape[0], generator, s.dtype, s.device))


INTERMEDIATES = {"midpoint": Midpoint, "uniform": UniformIntermediate}


def get_intermediate(spec: object) -> Midpoint | UniformIntermediate:
    """An intermediate-time sampler from an instance or a name ('midpoint', 'uniform')."""
    if isinstance(spec, str):
        if spec in INTERMEDIATES:
            return INTERMEDIATES[spec]()
        raise ValueError(f"intermediate must be 'midpoint', 'uniform' or a sampler instance, got {spec!r}")
    return check_implements(spec, IntermediateSampler, "intermediate")


def intermediate_time(s: torch.Tensor, t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """u = gamma s + (1 - gamma) t (B25's PSD), all (batch,)."""
    return gamma * s + (1.0 - gamma) * t


# -- the batch split ---------------------------------------------------------------------------------
def n_diagonal(n: int, diag_fraction: float) -> int:
    """Number of diagonal samples in a batch of n: floor(n * diag_fraction), at least 1 when
    diag_fraction > 0 (B25's ``max(1, int(bs * diag_fraction))``) and n itself when it is 1.
    A relative 1e-9 guards the floor against round-off (n * 0.29 with n = 100 is 28.999...)."""
    check_positive_int(n, "n")
    check_fraction(diag_fraction, "diag_fraction")
    if diag_fraction == 0:
        return 0
    return min(n, max(1, math.floor(n * diag_fraction * (1 + 1e-9))))


def check_fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def sample_times(
    n: int,
    *,
    sampler: object = None,
    diag_fraction: float = 0.75,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: object = None,
    intermediate: object = None,
) -> TimeBatch:
    """Times of one batch: the first ``n_diagonal(n, diag_fraction)`` samples are diagonal (s = t
    drawn from ``sampler.sample_diagonal``), the rest off-diagonal ((s, t) from ``sampler.sample``),
    as in B25's code. ``intermediate`` ('midpoint', 'uniform', a sampler or None) adds
    u = gamma s + (1 - gamma) t (u = t on diagonal samples). All tensors (n,), ``diagonal`` bool.
    """
    check_positive_int(n, "n")
    sampler = UniformTriangle() if sampler is None else sampler
    check_implements(sampler, TimeSampler, "sampler")
    n_d = n_diagonal(n, diag_fraction)
    _, out = _device(generator, device)
    parts_s, parts_t = [], []
    if n_d > 0:
        td = sampler.sample_diagonal(n_d, generator, dtype, out)
        parts_s.append(td)
        parts_t.append(td)
    if n - n_d > 0:
        so, to = sampler.sample(n - n_d, generator, dtype, out)
        parts_s.append(so)
        parts_t.append(to)
    s, t = torch.cat(parts_s), torch.cat(parts_t)
    diagonal = torch.arange(n, device=out) < n_d
    u = None
    if intermediate is not None:
        u = get_intermediate(intermediate).sample(s, t, generator)
        u = torch.where(diagonal, t, u)
    return TimeBatch(s=s, t=t, diagonal=diagonal, u=u)
