"""Map-level detectors: each evaluates the flow map itself.

Each takes the model (anything with the :class:`workbench.core.contract.Flow` contract:
``flow_map(s, t, x)``, ``velocity(t, x)``, ``dim``) and either a
:class:`~workbench.diagnostics.detectors.base.Probe` or the inputs to build one (``reference=`` an
analytic flow, ``data=`` samples of the data law, ``generator=``, ``n=``), and returns a
:class:`~workbench.diagnostics.detectors.base.DetectorReport`. Each docstring states the statistic
and the threshold; the catalogue with the D-codes is ``docs/detectors.md``. Notation: z ~ N(0, I)
(t = 0), x_s ~ p_s, X* the reference map, X^ the model's map, T the one-step end time
(:func:`workbench.flows.base.data_end_time`: 1, or 1 - ``DATA_END_MARGIN`` for singular references),
tr C_t = tr Cov(p_t).

Rationale of the thresholds: the exact map gives rho ~ 1, boundary 0, collapse ~ 1, q = 1,
e = 0, e_map = 0, f ~ 0.05, step 0 and a time-spectrum share of at most 0.006 on the analytic
flows of the registry; the constructed degenerate maps of :mod:`workbench.flows.degenerate` sit at
the other end (rho = 0, collapse = 0, q = 0, e >= 0.09, ...). Thresholds sit between, at round
ratios (a factor 2 in rms, 10% of a variance, 4x a nominal rate), so that sampling noise at
n = 256-512 is far below them.
"""

from __future__ import annotations

import math

import torch

from ...flows.identities import energy_statistic
from .base import (
    F64,
    DetectorReport,
    Probe,
    not_applicable,
    report,
    resolve_probe,
    run_map,
    run_velocity,
    sq_norms,
    trace_cov,
)

TH_IDENTITY = 0.25
TH_BOUNDARY = 1e-2
TH_COLLAPSE = 0.1
TH_DENOISER = 0.5
TH_COV_SHRINK = 0.5
TH_WRONG_FIELD = 0.05
TH_OWN_ODE = 0.5
TH_COUPLING = 0.05
TH_MARGINAL = 0.05
TH_OFF_SUPPORT = 0.2
NOMINAL_QUANTILE = 0.95
TH_STEPS = 0.1
TH_OSCILLATION = 0.05

#: fractions of T at which the one-step denoiser comparison starts (s) / tangents are checked (t)
DENOISER_S = (0.0, 0.25, 0.5, 0.75)
TANGENT_T = (0.1, 0.3, 0.5, 0.7, 0.9)
#: times of the boundary check X_{t,t} = id (t < 1: some maps are singular at the data end)
BOUNDARY_T = (0.0, 0.25, 0.5, 0.75, 0.95)


def _pairs(T: float) -> tuple[tuple[float, float], ...]:
    """(s, t) pairs of the map-level checks: the one-step map and three interior maps."""
    return ((0.0, T), (0.0, 0.5), (0.3, 0.8), (0.5, T))


def _need(cond: bool, name: str, what: str) -> None:
    if not cond:
        raise ValueError(f"detector {name!r} needs {what}")


def _mean(v: torch.Tensor) -> float:
    return float(v.to(F64).mean())


# -- D1 -------------------------------------------------------------------------------------------
def detect_identity(model: object, *, reference: object = None, data: torch.Tensor | None = None,
                    generator: torch.Generator | None = None, n: int = 512, probe: Probe | None = None) -> DetectorReport:
    """D1, identity / zero-velocity map: rho = E|X^_{0,T}(z) - z|^2 / E|X*_{0,T}(z) - z|^2 < 0.25.

    Without a reference the denominator is W2^2(N(0, I), data) (exact OT on the samples, the least
    mean square displacement of any transport of noise to data). rho = 0 for the identity map
    (the exact fixed point of every self-distillation and consistency loss), ~ 1 for the flow.
    """
    p = resolve_probe(model, probe, reference, data, generator, n)
    _need(p.has_samples, "identity", "reference= or data=")
    moved = _mean(sq_norms(run_map(model, 0.0, p.T, p.z) - p.z))
    if p.has_reference:
        required = _mean(sq_norms(p.oracle(0.0, p.T) - p.z))
        how = "the reference map moves it"
    else:
        from ..metrics import wasserstein2

        required = wasserstein2(p.z, p.target(p.T)) ** 2
        how = "optimal transport to the data needs"
    rho = moved / required if required > 0 else math.inf
    return report("identity", "D1", rho, TH_IDENTITY, rho < TH_IDENTITY,
                  f"the one-step map X_(0,{p.T:g}) moves noise by rms {math.sqrt(moved):.3g}; {how} rms "
                  f"{math.sqrt(required):.3g} (ratio of mean squares {rho:.3g}, fires below {TH_IDENTITY})",
                  fires_above=False)


# -- D4 -------------------------------------------------------------------------------------------
def detect_boundary(model: object, *, reference: object = None, data: torch.Tensor | None = None,
                    generator: torch.Generator | None = None, n: int = 512, probe: Probe | None = None) -> DetectorReport:
    """D4, boundary condition lost: max_t E|X^_{t,t}(x_t) - x_t|^2 / tr Cov(x_t) > 0.01.

    x_t ~ p_t when samples are available, else the noise z at every t. Without the boundary condition
    X_{t,t} = id, the semigroup and the Lagrangian / Eulerian equations admit a collapse onto a constant
    or onto any single trajectory (both sides of those equations vanish), so a map that is not the
    identity on the diagonal is where such collapses live.
    """
    p = resolve_probe(model, probe, reference, data, generator, n)
    worst, worst_t = -1.0, 0.0
    for t in BOUNDARY_T:
        x = p.source(t) if p.has_samples else p.z
        ratio = _mean(sq_norms(run_map(model, t, t, x) - x)) / max(trace_cov(x), 1e-300)
        if ratio > worst:
            worst, worst_t = ratio, t
    return report("boundary", "D4", worst, TH_BOUNDARY, worst > TH_BOUNDARY,
                  f"X_(t,t) differs from the identity by {worst:.3g} of the spread tr Cov(x_t) at t = {worst_t:.3g} "
                  f"(worst of {len(BOUNDARY_T)} times; fires above {TH_BOUNDARY})")


def detect_collapse(model: object, *, reference: object = None, data: torch.Tensor | None = None,
                    generator: torch.Generator | None = None, n: int = 512, probe: Probe | None = None) -> DetectorReport:
    """D4, collapse onto a constant or a single trajectory: min over (s, t) pairs of
    tr Cov(X^_{s,t}(x_s)) / tr Cov(p_t) < 0.1 (between-sample variance -> 0)."""
    p = resolve_probe(model, probe, reference, data, generator, n)
    _need(p.has_samples, "collapse", "reference= or data=")
    worst, where = math.inf, (0.0, 0.0)
    for s, t in _pairs(p.T):
        ratio = trace_cov(run_map(model, s, t, p.source(s))) / max(p.trace_cov(t), 1e-300)
        if ratio < worst:
            worst, where = ratio, (s, t)
    return report("collapse", "D4", worst, TH_COLLAPSE, worst < TH_COLLAPSE,
                  f"between-sample variance of X_(s,t)(x_s) is {worst:.3g} of tr Cov(p_t) at (s, t) = "
                  f"({where[0]:g}, {where[1]:g}) (smallest of {len(_pairs(p.T))} pairs; fires below {TH_COLLAPSE})",
                  fires_above=False)


# -- D2 -------------------------------------------------------------------------------------------
def detect_denoiser_collapse(model: object, *, reference: object = None, data: torch.Tensor | None = None,
                             generator: torch.Generator | None = None, n: int = 512,
                             probe: Probe | None = None) -> DetectorReport:
    """D2, mean / denoiser collapse: the one-step map X^_{s,T} is closer to the posterior mean
    D_s(x) = E[x1 | I_s = x] than to X*_{s,T} (q = d_D / (d_D + d_X) < 0.5, pooled over s in
    {0, .25, .5, .75} T) and the one-step samples shrink (c = tr Cov(X^_{0,T}(z)) / tr C_T < 0.5).

    Without a reference only c is available and is the statistic. Does not apply where D_s and X*_{s,T}
    coincide (point-mass data).
    """
    p = resolve_probe(model, probe, reference, data, generator, n)
    _need(p.has_samples, "denoiser_collapse", "reference= or data=")
    c = trace_cov(run_map(model, 0.0, p.T, p.z)) / max(p.trace_cov(p.T), 1e-300)
    shrink = f"one-step sample covariance trace is {c:.3g} of the data's"
    if not p.has_reference:
        return report("denoiser_collapse", "D2", c, TH_COV_SHRINK, c < TH_COV_SHRINK,
                      f"{shrink} (no reference: fires below {TH_COV_SHRINK})", fires_above=False)
    from ..theory import denoiser

    d_D = d_X = sep = spread = 0.0
    for frac in DENOISER_S:
        s = frac * p.T
        x = p.source(s)
        X_hat, X_star = run_map(model, s, p.T, x), p.oracle(s, p.T)
        D = denoiser(p.reference, s, x).to(F64)
        d_D += _mean(sq_norms(X_hat - D))
        d_X += _mean(sq_norms(X_hat - X_star))
        sep += _mean(sq_norms(D - X_star))
        spread += p.trace_cov(p.T)
    if sep < 1e-3 * spread:
        return not_applicable("denoiser_collapse", "D2", TH_DENOISER,
                              f"the posterior mean and the flow map coincide for this reference "
                              f"(E|D_s - X*_(s,T)|^2 = {sep:.3g})", fires_above=False)
    q = d_D / (d_D + d_X) if d_D + d_X > 0 else 0.5
    fired = q < TH_DENOISER and c < TH_COV_SHRINK
    return report("denoiser_collapse", "D2", q, TH_DENOISER, fired,
                  f"mean square distance of X_(s,{p.T:g}) to the posterior mean D_s is {d_D:.3g} vs {d_X:.3g} to the "
                  f"true map (q = {q:.3g}, fires below {TH_DENOISER}); {shrink} (needs < {TH_COV_SHRINK})",
                  fires_above=False)


# -- D3 -------------------------------------------------------------------------------------------
def detect_wrong_field(model: object, *, reference: object = None, generator: torch.Generator | None = None,
                       n: int = 512, n_steps: int = 64, probe: Probe | None = None) -> DetectorReport:
    """D3, a self-consistent map of the wrong velocity field: the model's diagonal v^_t = v_{t,t}
    misses the reference b_t (e = sum_t E|v^_t(x_t) - b_t(x_t)|^2 / sum_t E|b_t(x_t)|^2 > 0.05 over
    t in {.1, ..., .9} T) while the one-step map agrees with an RK4 solve (``n_steps``) of its own
    diagonal better than with the oracle (kappa = rms(X^ - ODE_own) / rms(X^ - X*) < 0.5).
    """
    from ..metrics import rk4_flow

    p = resolve_probe(model, probe, reference, None, generator, n)
    _need(p.has_reference, "wrong_field", "reference=")
    num = den = 0.0
    for frac in TANGENT_T:
        t = frac * p.T
        x = p.source(t)
        b = p.reference_velocity(t, x)
        num += _mean(sq_norms(run_velocity(model, t, x) - b))
        den += _mean(sq_norms(b))
    e = num / den if den > 0 else math.inf
    sq_own = sq_true = 0.0
    for s, t in _pairs(p.T)[:3]:
        x = p.source(s)
        one = run_map(model, s, t, x)
        own = rk4_flow(lambda tau, y: run_velocity(model, tau, y), s, t, x, n_steps=n_steps)
        sq_own += _mean(sq_norms(one - own))
        sq_true += _mean(sq_norms(one - p.oracle(s, t)))
    to_own, to_true = math.sqrt(sq_own), math.sqrt(sq_true)
    kappa = to_own / to_true if to_true > 0 else math.inf
    fired = e > TH_WRONG_FIELD and kappa < TH_OWN_ODE
    return report("wrong_field", "D3", e, TH_WRONG_FIELD, fired,
                  f"the diagonal misses the reference velocity by {e:.3g} of E|b|^2 (fires above {TH_WRONG_FIELD}); "
                  f"its maps X_(s,t) are rms {to_own:.3g} from ODE solves of its own diagonal and {to_true:.3g} from "
                  f"the oracle (ratio {kappa:.3g}, needs < {TH_OWN_ODE} for a self-consistent map)")


# -- coupling -------------------------------------------------------------------------------------
def map_error(model: object, probe: Probe) -> float:
    """e_map = sum over the (s, t) pairs of E|X^_{s,t}(x_s) - X*_{s,t}(x_s)|^2 / sum tr Cov(X*_{s,t})."""
    num = den = 0.0
    for s, t in _pairs(probe.T):
        ref = probe.oracle(s, t)
        num += _mean(sq_norms(run_map(model, s, t, probe.source(s)) - ref))
        den += trace_cov(ref)
    return num / den if den > 0 else math.inf


def detect_wrong_coupling(model: object, *, reference: object = None, generator: torch.Generator | None = None,
                          n: int = 512, probe: Probe | None = None) -> DetectorReport:
    """Right marginals, wrong coupling (e.g. the Cholesky transport m_t + L_t L_s^{-1} (x - m_s) of a
    Gaussian, which satisfies the boundary condition, the semigroup and every marginal p_t): the map
    error e_map > 0.05 while the push-forwards carry almost none of it: m = max_{(s,t)} energy
    distance between X^_{s,t}(x_s) and X*_{s,t}(x_s) / E|X* - X*'| is below 0.05 e_map (both are
    quadratic in a small error; a map whose error is a marginal error has m / e_map of order 0.1-1,
    a re-coupling of the same marginals ~ 0.01). Sample metrics are blind to this degeneracy.

    The transport cost E|X^_{0,T}(z) - z|^2 vs E|X*_{0,T}(z) - z|^2 is reported as evidence.
    """
    p = resolve_probe(model, probe, reference, None, generator, n)
    _need(p.has_reference, "wrong_coupling", "reference=")
    num = den = 0.0
    marginal = 0.0
    for s, t in _pairs(p.T):
        ref, out = p.oracle(s, t), run_map(model, s, t, p.source(s))
        num += _mean(sq_norms(out - ref))
        den += trace_cov(ref)
        scale = float(torch.cdist(ref, ref).mean())
        marginal = max(marginal, float(energy_statistic(out, ref)) / max(scale, 1e-300))
    e_map = num / den if den > 0 else math.inf
    share = marginal / e_map if e_map > 0 else math.inf
    cost_hat = _mean(sq_norms(run_map(model, 0.0, p.T, p.z) - p.z))
    cost = _mean(sq_norms(p.oracle(0.0, p.T) - p.z))
    fired = e_map > TH_COUPLING and share < TH_MARGINAL
    return report("wrong_coupling", "", e_map, TH_COUPLING, fired,
                  f"map error {e_map:.3g} of the spread (fires above {TH_COUPLING}) while the push-forwards differ by "
                  f"only {marginal:.3g} (energy distance / mean distance; {share:.3g} of the map error, needs < "
                  f"{TH_MARGINAL}); transport cost E|X(z) - z|^2 = {cost_hat:.3g} vs {cost:.3g} for the reference")


# -- D5 -------------------------------------------------------------------------------------------
def _kth_distance(x: torch.Tensor, pool: torch.Tensor, k: int) -> torch.Tensor:
    out = []
    for i in range(0, x.shape[0], 1024):
        d = torch.cdist(x[i:i + 1024], pool)
        out.append(d.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(out)


def _mode_hit_rate(reference: object, x: torch.Tensor) -> float | None:
    """Fraction of x within Mahalanobis distance 3 of some component (Gaussian mixtures only)."""
    means, covs = getattr(reference, "means", None), getattr(reference, "covs", None)
    if not (isinstance(means, torch.Tensor) and isinstance(covs, torch.Tensor)) or means.shape[0] < 2:
        return None
    covs = covs.to(x)
    if float(torch.linalg.eigvalsh(covs).min()) <= 0:
        return None
    diff = x[:, None, :] - means.to(x)[None]
    m2 = (diff * torch.linalg.solve(covs[None], diff[..., None])[..., 0]).sum(-1)
    return float((m2.min(dim=1).values <= 9.0).to(F64).mean())


def detect_mode_averaging(model: object, *, reference: object = None, data: torch.Tensor | None = None,
                          generator: torch.Generator | None = None, n: int = 512, k: int = 5,
                          probe: Probe | None = None) -> DetectorReport:
    """D5, mode averaging / mass between modes: f = fraction of one-step samples X^_{0,T}(z) whose
    k-th nearest data point is farther than the 95% quantile of the same distance for held-out data
    (0.05 for a sampler of the data law); fires above 0.2. For Gaussian-mixture references the
    mode-hit rate (within Mahalanobis 3 of a component) of samples vs data is added as evidence.
    """
    p = resolve_probe(model, probe, reference, data, generator, n)
    _need(p.has_samples, "mode_averaging", "reference= or data=")
    pool, held = p.target(p.T, 0), p.target(p.T, 1)
    k = max(1, min(int(k), pool.shape[0] - 1))
    radius = torch.quantile(_kth_distance(held, pool, k), NOMINAL_QUANTILE)
    samples = run_map(model, 0.0, p.T, p.z)
    f = _mean((_kth_distance(samples, pool, k) > radius).to(F64))
    extra = ""
    if p.has_reference:
        hit, hit_data = _mode_hit_rate(p.reference, samples), _mode_hit_rate(p.reference, held)
        if hit is not None:
            extra = f"; mode-hit rate {hit:.3g} vs {hit_data:.3g} for data"
    return report("mode_averaging", "D5", f, TH_OFF_SUPPORT, f > TH_OFF_SUPPORT,
                  f"{f:.3g} of one-step samples lie off the data support (beyond the {NOMINAL_QUANTILE:.0%} {k}-NN "
                  f"radius {float(radius):.3g}; nominal {1 - NOMINAL_QUANTILE:.2g}, fires above {TH_OFF_SUPPORT}){extra}")


def detect_step_inconsistency(model: object, *, reference: object = None, data: torch.Tensor | None = None,
                              generator: torch.Generator | None = None, n: int = 512, n_steps: int = 8,
                              probe: Probe | None = None) -> DetectorReport:
    """D5 step-count test / semigroup: E|x^(N) - x^(1)|^2 / tr C_T > 0.1, where x^(N) chains
    X^_{t_k, t_(k+1)} on t_k = k T / N from the same noise (zero for any flow map, by the semigroup
    property). Normalised by the dimension when no samples of p_T are available. The threshold (an
    rms drift of a third of the data spread) leaves room for the accumulated errors of an imperfect
    but sound map (a 3000-step LSD model on gaussian_2d sits at ~0.06); one Euler step, the denoiser
    step and mode-averaged maps sit at 0.25-0.95.
    """
    p = resolve_probe(model, probe, reference, data, generator, n)
    one = run_map(model, 0.0, p.T, p.z)
    x = p.z
    for j in range(n_steps):
        x = run_map(model, j * p.T / n_steps, (j + 1) * p.T / n_steps, x)
    scale, scale_name = (p.trace_cov(p.T), "tr Cov(p_T)") if p.has_samples else (float(p.dim), "dim")
    drift = _mean(sq_norms(x - one))
    ratio = drift / max(scale, 1e-300)
    return report("step_inconsistency", "D5", ratio, TH_STEPS, ratio > TH_STEPS,
                  f"{n_steps}-step samples differ from one-step samples by rms {math.sqrt(drift):.3g} "
                  f"({ratio:.3g} of {scale_name}; fires above {TH_STEPS})")


# -- D7 -------------------------------------------------------------------------------------------
def _dct_basis(N: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    j = torch.arange(N, dtype=dtype, device=device)
    B = torch.cos(math.pi * j[:, None] * (j[None, :] + 0.5) / N)  # B[k, j]
    B[0] *= math.sqrt(1.0 / N)
    B[1:] *= math.sqrt(2.0 / N)
    return B


def detect_time_oscillation(model: object, *, reference: object = None, data: torch.Tensor | None = None,
                            generator: torch.Generator | None = None, n: int = 512, n_times: int = 256,
                            n_points: int = 64, cutoff: int = 8, window: float = 0.8,
                            probe: Probe | None = None) -> DetectorReport:
    """D7, time oscillation: the share of the variation of t -> v^_t(x) (the model's diagonal at a
    fixed x, t on a uniform grid of ``n_times`` points in [0, ``window`` T]) carried by DCT-II modes of
    index >= ``cutoff`` (faster than cutoff / 2 cycles over the window, 5 per unit time by default),
    pooled over ``n_points`` noise points and coordinates; fires above 0.05. The registry's analytic
    flows stay below 0.01 on [0, .8]; the window stops short of the data end because for singular data
    (atoms, rings) the exact velocity at a fixed x varies on the scale 1 - t there (rings reach 0.11
    on [0, .95]).
    """
    p = resolve_probe(model, probe, reference, data, generator, n)
    m = min(n_points, p.z.shape[0])
    x = p.z[:m]
    t = torch.linspace(0.0, window * p.T, n_times, dtype=F64, device=x.device)
    tt = t.repeat_interleave(m)
    v = run_velocity(model, tt, x.repeat(n_times, 1)).reshape(n_times, m, -1)
    series = v.permute(1, 2, 0).reshape(-1, n_times)
    coef = series @ _dct_basis(n_times, F64, x.device).T
    total = float(coef[:, 1:].pow(2).sum())
    high = float(coef[:, cutoff:].pow(2).sum())
    # a diagonal constant in t (up to round-off) has no variation to speak of
    share = high / total if total > 1e-20 * float(coef.pow(2).sum()) else 0.0
    return report("time_oscillation", "D7", share, TH_OSCILLATION, share > TH_OSCILLATION,
                  f"{share:.3g} of the variation of the diagonal velocity along t is faster than {cutoff / 2:g} cycles "
                  f"per window [0, {window * p.T:.3g}] (fires above {TH_OSCILLATION})")
