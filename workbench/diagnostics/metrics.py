"""Sample metrics between two sample sets, quality versus the number of flow-map steps, and the
agreement of a one-step map with an ODE solve of the model's own diagonal velocity.

Every metric takes two tensors of shape (n, *event) and (m, *event) (flattened to vectors), runs on
their device in their dtype (float64 recommended) and returns a Python float:

* :func:`wasserstein2`: exact W2 by linear programming (POT ``ot.emd2``, float64 on the CPU);
* :func:`sliced_wasserstein2`: random projections, 1-D W2 by sorting;
* :func:`mmd2`: unbiased MMD^2 with a sum of RBF kernels (median-heuristic bandwidths);
* :func:`energy_distance`: 2 E|X - Y| - E|X - X'| - E|Y - Y'|;
* :func:`histogram_kl`: KL between smoothed histograms on a fixed grid (B25's checkerboard table).

Dtypes: the diagnostics layer evaluates a model in the dtype it computes in
(:func:`workbench.core.validation.model_dtype`) and casts at its own entry, as the detectors do:
:func:`quality_vs_steps` draws its noise in the model's dtype and compares the model's samples with
the reference samples in float64, so a float32 model is evaluated against float64 references without
the caller casting anything. The metrics themselves take samples of any floating dtype (the second set
is cast to the first's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.times import broadcast_time, expand_as_state
from ..core.validation import check_finite, check_positive_int, check_tensor, model_dtype
from ..sampling import sample_flow_map, sample_ode

_CHUNK = 2048


def _samples(x: object, name: str) -> torch.Tensor:
    x = check_tensor(x, name)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n, *event) with n >= 1, got {tuple(x.shape)}")
    return check_finite(x.reshape(x.shape[0], -1), name)


def _pair(x: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _samples(x, "x"), _samples(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same event size, got {x.shape[1]} and {y.shape[1]}")
    return x, y.to(dtype=x.dtype, device=x.device)


def wasserstein2(x: torch.Tensor, y: torch.Tensor, *, max_iter: int = 10_000_000) -> float:
    """W2(mu_x, mu_y) = (min_{P in Pi(1/n, 1/m)} sum_ij P_ij |x_i - y_j|^2)^{1/2} between the empirical
    measures of x (n, *event) and y (m, *event), solved exactly by network simplex (``ot.emd2``).

    Cost matrix: exact squared differences (scipy ``cdist``), float64 on the CPU. O(n m) memory;
    a few thousand points per side is the practical limit. Raises RuntimeError if the solver stops
    before optimality (raise ``max_iter``).
    """
    import ot
    from scipy.spatial.distance import cdist

    x, y = _pair(x, y)
    X = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    Y = y.detach().to(device="cpu", dtype=torch.float64).numpy()
    a, b = np.full(len(X), 1.0 / len(X)), np.full(len(Y), 1.0 / len(Y))
    cost, log = ot.emd2(a, b, cdist(X, Y, "sqeuclidean"), numItermax=int(max_iter), log=True)
    if log.get("result_code", 1) != 1:
        raise RuntimeError(f"ot.emd2 did not reach the optimum ({log.get('warning')}); raise max_iter")
    return math.sqrt(max(float(cost), 0.0))


def _w2_squared_1d(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """W2^2 between 1-D empirical measures, rows of u (P, n) and v (P, m): int_0^1 (F_u^-1 - F_v^-1)^2.

    The quantile functions are step functions with jumps at k/n and k/m; on each cell of the merged
    grid both are constant, so the integral is an exact finite sum.
    """
    n, m = u.shape[1], v.shape[1]
    u, v = u.sort(dim=1).values, v.sort(dim=1).values
    if n == m:
        return ((u - v) ** 2).mean(dim=1)
    grid = torch.cat([torch.arange(1, n + 1, dtype=u.dtype, device=u.device) / n,
                      torch.arange(1, m + 1, dtype=u.dtype, device=u.device) / m]).sort().values
    width = torch.diff(grid, prepend=grid.new_zeros(1))
    mid = grid - 0.5 * width
    iu = (mid * n).floor().long().clamp(0, n - 1)
    iv = (mid * m).floor().long().clamp(0, m - 1)
    return (((u[:, iu] - v[:, iv]) ** 2) * width).sum(dim=1)


def sliced_wasserstein2(x: torch.Tensor, y: torch.Tensor, *, n_projections: int = 256,
                        generator: torch.Generator | None = None) -> float:
    """SW2 = (E_theta W2^2(<theta, X>, <theta, Y>))^{1/2}, theta uniform on the unit sphere.

    Estimated with ``n_projections`` directions theta = g / |g|, g ~ N(0, I) from ``generator``;
    each 1-D W2^2 is exact (sorting / quantile coupling, sizes may differ). For N(m1, s1^2 I) vs
    N(m2, s2^2 I) in d dims: SW2^2 = |m1 - m2|^2 / d + (s1 - s2)^2.
    """
    x, y = _pair(x, y)
    check_positive_int(n_projections, "n_projections")
    g = torch.randn(n_projections, x.shape[1], dtype=x.dtype, device=x.device, generator=generator)
    theta = g / g.norm(dim=1, keepdim=True)
    return math.sqrt(float(_w2_squared_1d(theta @ x.T, theta @ y.T).mean()))


def _pairwise_sum(a: torch.Tensor, b: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """sum_ij fn(|a_i - b_j|) in row chunks (exact differences, no |a|^2 + |b|^2 - 2ab expansion)."""
    total = 0.0
    for i in range(0, a.shape[0], _CHUNK):
        d = torch.cdist(a[i:i + _CHUNK], b, compute_mode="donot_use_mm_for_euclid_dist")
        total += float(fn(d).sum(dtype=torch.float64))
    return total


def median_distance(x: torch.Tensor, y: torch.Tensor, *, max_points: int = 1000) -> float:
    """Median of |z_i - z_j| (i < j) over the pooled points z = (x[:max_points], y[:max_points])."""
    x, y = _pair(x, y)
    z = torch.cat([x[:max_points], y[:max_points]])
    d = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
    iu = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
    v = d[iu[0], iu[1]].sort().values
    return 0.5 * float(v[(v.numel() - 1) // 2] + v[v.numel() // 2])  # the midpoint median, as numpy


def mmd2(x: torch.Tensor, y: torch.Tensor, *, bandwidths: Sequence[float] | None = None,
         bandwidth_factors: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0), unbiased: bool = True) -> float:
    """MMD^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y), k(a, b) = sum_j exp(-|a - b|^2 / (2 h_j^2)).

    Bandwidths h_j: ``bandwidths`` if given, else ``bandwidth_factors`` times the median pooled
    pairwise distance (:func:`median_distance`). ``unbiased`` (default): U-statistics for the
    within-sample terms, sum_{i != j} k(x_i, x_j) / (n (n - 1)) (needs n, m >= 2; may be < 0);
    else V-statistics (divide by n^2, always >= 0).
    """
    x, y = _pair(x, y)
    if bandwidths is None:
        med = median_distance(x, y)
        if not med > 0:
            raise ValueError("the median pairwise distance is 0 (duplicated points); pass bandwidths=")
        bandwidths = [f * med for f in bandwidth_factors]
    hs = [float(h) for h in bandwidths]
    if not hs or not all(math.isfinite(h) and h > 0 for h in hs):
        raise ValueError(f"bandwidths must be positive finite numbers, got {hs}")
    n, m = x.shape[0], y.shape[0]
    if unbiased and min(n, m) < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 points per sample, got n={n}, m={m}")

    def k(d: torch.Tensor) -> torch.Tensor:
        return sum(torch.exp(-(d * d) / (2 * h * h)) for h in hs)

    kxx, kyy, kxy = _pairwise_sum(x, x, k), _pairwise_sum(y, y, k), _pairwise_sum(x, y, k)
    if unbiased:
        J = len(hs)  # k(a, a) = J
        return (kxx - n * J) / (n * (n - 1)) + (kyy - m * J) / (m * (m - 1)) - 2 * kxy / (n * m)
    return kxx / n**2 + kyy / m**2 - 2 * kxy / (n * m)


def energy_distance(x: torch.Tensor, y: torch.Tensor, *, unbiased: bool = False) -> float:
    """Szekely's energy distance E = 2 E|X - Y| - E|X - X'| - E|Y - Y'| (a squared distance, >= 0).

    Default: V-statistics (all pairs / n^2), so in 1-D it equals scipy.stats.energy_distance(x, y)^2
    (scipy returns the square root). ``unbiased``: U-statistics for the within-sample terms.
    """
    x, y = _pair(x, y)
    n, m = x.shape[0], y.shape[0]
    if unbiased and min(n, m) < 2:
        raise ValueError(f"the unbiased energy distance needs at least 2 points per sample, got n={n}, m={m}")
    dxx, dyy, dxy = (_pairwise_sum(a, b, lambda d: d) for a, b in ((x, x), (y, y), (x, y)))
    nx, ny = (n * (n - 1), m * (m - 1)) if unbiased else (n * n, m * m)
    return 2 * dxy / (n * m) - dxx / nx - dyy / ny


def histogram_kl(data: torch.Tensor, model: torch.Tensor, *, bins: int = 64,
                 box: Sequence[tuple[float, float]] | None = None, smoothing: float = 1e-6,
                 direction: str = "data||model") -> float:
    """KL between histograms of two sample sets on one fixed grid (B25's checkerboard table).

    Binning: ``bins`` equal cells per axis over ``box`` = [(lo_1, hi_1), ..., (lo_d, hi_d)] (default:
    the bounding box of ``data``), half-open cells with the upper edge closed as numpy.histogramdd;
    points outside the box are dropped. Smoothing: h_i = count_i / n_inside, p_i = (h_i + eps) /
    (1 + B eps) over all B = bins^d cells, eps = ``smoothing`` >= 0. ``direction`` "data||model"
    (default) gives KL(p_data || p_model) = sum_i p_i log(p_i / q_i); "model||data" the reverse.
    """
    data, model = _pair(data, model)
    check_positive_int(bins, "bins")
    if direction not in ("data||model", "model||data"):
        raise ValueError(f"direction must be 'data||model' or 'model||data', got {direction!r}")
    if not (math.isfinite(smoothing) and smoothing >= 0):
        raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing!r}")
    d = data.shape[1]
    if bins**d > 10**7:
        raise ValueError(f"bins**dim = {bins}**{d} cells is too many; project to <= 3 dims or lower bins")
    if box is None:
        box = list(zip(data.min(0).values.tolist(), data.max(0).values.tolist()))
    if len(box) != d or not all(float(hi) > float(lo) for lo, hi in box):
        raise ValueError(f"box must be {d} pairs (lo, hi) with hi > lo, got {box}")

    def hist(z: torch.Tensor, name: str) -> torch.Tensor:
        flat = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        inside = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        for k, (lo, hi) in enumerate(box):
            edges = torch.linspace(float(lo), float(hi), bins + 1, dtype=torch.float64, device=z.device)
            col = z[:, k].to(torch.float64).contiguous()
            idx = torch.searchsorted(edges, col, right=True) - 1
            idx = torch.where(col == edges[-1], torch.full_like(idx, bins - 1), idx)
            inside &= (idx >= 0) & (idx < bins)
            flat = flat * bins + idx.clamp(0, bins - 1)
        if not bool(inside.any()):
            raise ValueError(f"no {name} sample lies inside box {box}")
        counts = torch.bincount(flat[inside], minlength=bins**d).to(torch.float64)
        return (counts / counts.sum() + smoothing) / (1 + bins**d * smoothing)

    p, q = hist(data, "data"), hist(model, "model")
    if direction == "model||data":
        p, q = q, p
    if bool(((q == 0) & (p > 0)).any()):
        return math.inf
    pos = p > 0
    return float((p[pos] * torch.log(p[pos] / q[pos])).sum())


# -- ODE references ---------------------------------------------------------------------------------
class _Normalised:
    """dy/dtau = (t - s) b_{u(tau)}(y), u(tau) = lerp(s, t, tau): per-sample (s, t) on one grid tau in [0, 1]."""

    def __init__(self, velocity: Callable, s: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> None:
        self.b, self.s, self.t = velocity, s, t
        self.span = expand_as_state(t - s, x)

    def velocity(self, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # lerp is exact at both ends, so the stage times stay in [s, t] and hit t at tau = 1
        return self.span * self.b(torch.lerp(self.s, self.t, tau.to(self.s.dtype)), y)


def rk4_flow(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], s: object, t: object,
             x: torch.Tensor, *, n_steps: int = 64) -> torch.Tensor:
    """Classical fixed-step RK4 for dx/dtau = velocity(tau, x) from tau = s to tau = t (per-sample s, t
    allowed, t < s runs backward), n_steps steps of h = (t - s) / n_steps; global error O(h^4).

    Runs :func:`workbench.sampling.sample_ode` (method "rk4") on the normalised problem
    dy/dr = (t - s) velocity(s + r (t - s), y), r in [0, 1], which takes the same steps.
    """
    check_positive_int(n_steps, "n_steps")
    x = _samples(x, "x").reshape(x.shape)
    sb, tb = broadcast_time(s, x, "s"), broadcast_time(t, x, "t")
    return sample_ode(_Normalised(velocity, sb, tb, x), x, method="rk4", n_steps=n_steps)


@dataclass(frozen=True)
class DiagonalAgreement:
    """|X_{s,t}(x) - RK4 solve of the model's own diagonal v_{tau,tau} from s to t| per point
    (``errors``, (batch,)), with its root mean square and maximum."""

    errors: torch.Tensor
    rms: float
    max: float


def map_vs_own_ode(model: object, x: torch.Tensor, s: float = 0.0, t: float = 1.0, *,
                   n_steps: int = 64) -> DiagonalAgreement:
    """Agreement of the one-step map with the ODE of its own diagonal (used by the D3 detector, ``detect_wrong_field``).

    A self-consistent map of a wrong field agrees (small), an inconsistent map (e.g. one Euler step)
    does not; compare with the true map separately. RK4 with ``n_steps`` steps, no gradients.
    """
    with torch.no_grad():
        one = model.flow_map(s, t, x)
        ode = rk4_flow(model.velocity, s, t, x, n_steps=n_steps)
    err = (one - ode).reshape(x.shape[0], -1).norm(dim=1)
    return DiagonalAgreement(errors=err, rms=float(err.pow(2).mean().sqrt()), max=float(err.max()))


def _sliced_fixed(x: torch.Tensor, y: torch.Tensor) -> float:
    g = torch.Generator(device=x.device).manual_seed(0)
    return sliced_wasserstein2(x, y, generator=g)


#: metrics used by :func:`quality_vs_steps`, called as metric(reference_samples, generated)
SAMPLE_METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "w2": wasserstein2,
    "sliced_w2": _sliced_fixed,  # the same 256 projections (seed 0) for every step count
    "mmd2": mmd2,
    "energy": energy_distance,
}


@dataclass(frozen=True)
class StepsQuality:
    """Sample quality against the number of sampling steps.

    ``metrics[name][i]`` is the metric at ``steps[i]``; ``drift[i]`` is the RMS over samples of
    |x^(N)(x0) - x^(1)(x0)|, the N-step minus the one-step sample from the same noise x0.
    """

    steps: tuple[int, ...]
    metrics: dict[str, tuple[float, ...]]
    drift: tuple[float, ...]

    def rows(self) -> list[dict[str, float]]:
        """One dict per step count: {'steps': N, <metric>: value, ..., 'drift': value}."""
        return [{"steps": n, **{k: v[i] for k, v in self.metrics.items()}, "drift": self.drift[i]}
                for i, n in enumerate(self.steps)]


def _finite_samples(x: torch.Tensor, n_steps: int) -> torch.Tensor:
    if not bool(torch.isfinite(x).all()):
        from .detectors.base import NonFiniteOutput

        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteOutput(f"the model's {n_steps}-step samples hold {bad} non-finite value(s); "
                              "run workbench.diagnostics.detect_non_finite / diagnose for a divergence report")
    return x


def quality_vs_steps(model: object, reference_samples: torch.Tensor, steps: Sequence[int] = (1, 2, 4, 8, 16), *,
                     n: int | None = None, generator: torch.Generator | None = None,
                     metrics: Sequence[str] | Mapping[str, Callable] = ("w2", "sliced_w2", "mmd2", "energy"),
                     ) -> StepsQuality:
    """Sample quality of N-step flow-map sampling (:func:`workbench.sampling.sample_flow_map` on the
    uniform grid, without autograd) for N in ``steps``.

    x0 ~ N(0, I) of shape (n, dim) (n defaults to the number of reference samples) in the dtype the
    model computes in (:func:`workbench.core.validation.model_dtype`; that of ``reference_samples``
    for a model that follows its input) on the device of ``reference_samples``, drawn once from
    ``generator`` and shared by every N. Samples and references are compared in float64.
    ``metrics``: names from :data:`SAMPLE_METRICS` or a mapping name -> metric(reference, generated).
    Raises :class:`~workbench.diagnostics.detectors.base.NonFiniteOutput` (a ValueError) when the
    model's samples hold NaN / inf.
    """
    ref = _samples(reference_samples, "reference_samples")
    steps = tuple(check_positive_int(int(k), "steps") for k in steps)
    if not steps:
        raise ValueError("steps must name at least one number of steps")
    chosen = dict(metrics) if isinstance(metrics, Mapping) else {}
    if not isinstance(metrics, Mapping):
        for name in metrics:
            if name not in SAMPLE_METRICS:
                raise ValueError(f"unknown metric {name!r}; choose from {sorted(SAMPLE_METRICS)} or pass a mapping")
            chosen[name] = SAMPLE_METRICS[name]
    n = ref.shape[0] if n is None else check_positive_int(n, "n")
    dtype = model_dtype(model) or ref.dtype
    x0 = torch.randn((n, *reference_samples.shape[1:]), dtype=dtype, device=ref.device, generator=generator)
    with torch.no_grad():
        one = _finite_samples(sample_flow_map(model, x0, n_steps=1), 1).to(torch.float64)
        samples = {k: one if k == 1 else _finite_samples(sample_flow_map(model, x0, n_steps=k), k).to(torch.float64)
                   for k in steps}
    ref = ref.to(torch.float64)
    values: dict[str, list[float]] = {k: [] for k in chosen}
    drift = []
    for k in steps:
        xs = samples[k]
        for name, fn in chosen.items():
            values[name].append(float(fn(ref, xs)))
        drift.append(float((xs - one).reshape(n, -1).pow(2).sum(dim=1).mean().sqrt()))
    return StepsQuality(steps=steps, metrics={k: tuple(v) for k, v in values.items()}, drift=tuple(drift))
