"""Consistency training and distillation in flow-map form: discrete CT / CD and continuous-time CT
(sCM style).

Convention (the workbench's): t = 0 is noise, t = 1 is data, X_{s,t}(x) = x + (t - s) v_{s,t}(x)
for s <= t. A consistency function (Song, Dhariwal, Chen & Sutskever 2023), which maps a noisy
point to the data end, is the slice f(x, s) = X_{s,1}(x); CM codebases run the clock the other way
(noise level sigma, data at sigma = 0; ``LinearInterpolant.to_ve`` gives sigma_s = alpha_s /
beta_s), so their student time t_{n+1} (noisier) is our s and their teacher time t_n is our
u = s + Delta. A general end time t gives the two-time (CTM) form. Both live on the Eulerian
characterisation d/ds X_{s,t}(x_s) = 0 along the flow (B25's P4; B25 recovers CT and CD as
discretisations of its Eulerian losses).

Discrete CT / CD (Song et al. 2023; iCT, Song & Dhariwal 2023):

    L = lambda(h) d( X_{s,t}(I_s), sg X_{u,t}(x_u) ),   u = s + h,  h = Delta,
    CT: x_u = I_s + h dI_s/ds     one Euler step along the conditional velocity (= I_u for the
                                  linear interpolant; ``step="interpolant"`` uses I_u for any)
    CD: x_u = I_s + h b_s(I_s)    one Euler (or Heun) step along a teacher velocity b,
    d(a, b) = |a - b|^2 ("l2") or sqrt(|a - b|^2 + c^2) - c ("pseudo_huber", iCT c = 0.00054 sqrt(dim)),
    lambda(h) in {1, 1/h, 1/h^2} ("one", "inverse", "inverse_square").

The target is built from the current parameters under stop-gradient (iCT: no EMA teacher). At the
true map the CD residual is the one-step solver error O(h^2) (Heun: O(h^3)). CT's target is noisy
and its conditional mean is off by O(h^2): the Euler step's local error, plus, where X is nonlinear
in x, the Jensen gap h^2/2 tr(grad^2 X Cov(dI_s/ds | I_s)) (a second-order Taylor expansion of
X_{u,t} about the conditional-mean step). So with lambda = 1/h its expected gradient at the truth
is O(h), not zero; for an affine map (Gaussian data) it equals CD's expected gradient exactly.

Continuous CT (sCM, Lu & Song 2024), in flow-map form for any interpolant: the limit h -> 0 of CT
with lambda = 1/h has gradient -2 E[grad_theta X_{s,t}(I_s)^T sg g] with the Eulerian tangent along
the conditional velocity

    g = d/dtau X_{s+tau,t}(I_s + tau dI_s/ds) = dI_s/ds - v_{s,t} + r (t - s) D_s v,
    D_s v = d/dtau v_{s+tau,t}(I_s + tau dI_s/ds)|_{tau=0}          (one JVP, tangent (dx, ds, dt) = (dI_s/ds, 1, 0)),

with tangent warm-up factor r in [0, 1] (sCM's r scales the term holding the network's own time
derivative; r = 1 is the exact tangent), then sCM's tangent normalisation g <- g / (|g| + c),
c = 0.1. It is minimised as the pseudo-loss |X_{s,t}(I_s) - sg(X_{s,t}(I_s) + g)|^2, whose value is
|g|^2 (uninformative by design; the diagnostics are in ``aux``) and whose gradient is the sCM one.
At the true map g = grad X_{s,t}(I_s) (dI_s/ds - b_s(I_s)) has zero conditional mean (and, for
Gaussian conditional noise, the normalised g too), so the expected gradient vanishes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.times import expand_as_state
from ..flows.interpolants import LinearInterpolant
from .base import ObjectiveResult
from .derivatives import total_derivative
from .samplers import DiscreteGapSampler, UniformTriangle, check_fraction, uniform
from .split import (
    OffDiagonal,
    SplitConfig,
    check_choice,
    check_positive,
    check_teacher,
    evaluate_split,
    interpolate,
    norm,
    normalise_fields,
    squared_error,
)
from .weighting import Weighting

__all__ = [
    "ConsistencyDistillation",
    "ConsistencyTraining",
    "ContinuousConsistencyTraining",
    "SliceSampler",
    "consistency_residual",
]

DISTANCES = ("l2", "pseudo_huber")
DELTA_WEIGHTS = ("one", "inverse", "inverse_square")


@dataclass(frozen=True)
class SliceSampler:
    """Times of the consistency-function slice: s ~ U[lo, t_end], t = t_end (the diagonal time is
    uniform on [lo, t_end]). A private-purpose sampler for objectives with a ``t_end`` field."""

    t_end: float = 1.0
    lo: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.t_end, (int, float)) and isinstance(self.lo, (int, float))
                and 0.0 <= self.lo < self.t_end <= 1.0):
            raise ValueError(f"t_end must satisfy 0 <= lo < t_end <= 1, got t_end={self.t_end!r}, lo={self.lo!r}")

    def sample_diagonal(self, n, generator=None, dtype=torch.float64, device=None):
        return self.lo + (self.t_end - self.lo) * uniform(n, generator, dtype, device)

    def sample(self, n, generator=None, dtype=torch.float64, device=None):
        s = self.sample_diagonal(n, generator, dtype, device)
        return s, torch.full_like(s, float(self.t_end))


# -- discrete CT / CD ------------------------------------------------------------------------------------
def _distance(diff: torch.Tensor, distance: str, c: float | None) -> torch.Tensor:
    sq = diff.pow(2).flatten(1).sum(1)
    if distance == "l2":
        return sq
    if c is None:
        c = 0.00054 * math.sqrt(math.prod(diff.shape[1:]))  # d = numel per sample (the batch may be empty)
    return torch.sqrt(sq + c * c) - c


def _delta_weight(h: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "one":
        return torch.ones_like(h)
    return 1.0 / h if kind == "inverse" else 1.0 / (h * h)


def _check_discrete(obj) -> None:
    """The fields CT and CD share (then their split configuration, which checks delta against t_end)."""
    check_positive(obj.delta, "delta")
    if obj.t_end is not None:
        check_positive(obj.t_end, "t_end")
    check_choice(obj.distance, "distance", DISTANCES)
    check_positive(obj.huber_c, "huber_c", allow_none=True)
    check_choice(obj.delta_weight, "delta_weight", DELTA_WEIGHTS)
    check_fraction(obj.diag_fraction, "diag_fraction")
    normalise_fields(obj)


def consistency_residual(model, s, t, u, x_s, x_u, *, distance: str, huber_c: float | None,
                         delta_weight: str) -> OffDiagonal:
    """The discrete consistency term per sample: lambda(h) d( X_{s,t}(x_s), sg X_{u,t}(x_u) ), h = u - s.

    s, t, u (n,); x_s, x_u (n, *event) (x_u built by the caller without gradient: CT's Euler step
    along dI_s/ds, CD's teacher step). ``distance`` "l2" / "pseudo_huber" (c = ``huber_c``, None:
    0.00054 sqrt(dim)), ``delta_weight`` lambda = 1, 1/h, 1/h^2 (ValueError if some h = 0 then).
    aux: ``target_norm``, ``residual_norm`` |X_{s,t}(x_s) - target|, ``step`` h; ``u`` the step time.
    """
    h = u - s
    if delta_weight != "one" and not bool((h > 0).all()):
        raise ValueError(f"times: every off-diagonal sample needs t > s for delta_weight {delta_weight!r} "
                         f"(lambda = 1/h is infinite at h = 0); mark s = t samples as diagonal")
    with torch.no_grad():
        target = model.flow_map(u, t, x_u).detach()
    student = model.flow_map(s, t, x_s)
    raw = _delta_weight(h, delta_weight) * _distance(student - target, distance, huber_c)
    aux = {"target_norm": norm(target), "residual_norm": norm(student - target), "step": h.detach()}
    return OffDiagonal(raw=raw, aux=aux, u=u)


@dataclass(frozen=True)
class ConsistencyTraining:
    """"ct": discrete consistency training in flow-map form (see the module docstring):

        loss_i = lambda(h) d( X_{s,t}(I_s), sg X_{s+h,t}(I_s + h dI_s/ds) ),   h = delta.

    Fields: ``delta`` (the gap h; a curriculum replaces it: ``dataclasses.replace(ct, delta=...)``,
    iCT doubles the number of steps N, i.e. halves delta, at fixed intervals); ``t_end`` (1.0: the
    consistency function X_{s,1}, s ~ U[0, 1 - delta]; None: two-time form, (s, t) uniform on
    {t - s >= delta}, see ``DiscreteGapSampler``); ``distance`` "l2" / "pseudo_huber" with
    ``huber_c`` (None: 0.00054 sqrt(dim)); ``delta_weight`` lambda = 1, 1/h, 1/h^2; ``step``
    "euler" (I_s + h dI_s/ds) or "interpolant" (I_{s+h}, same x0, x1; equal for the linear
    interpolant); ``diag_fraction`` of samples carrying diagonal flow matching instead (0: pure CT);
    ``weighting`` applied on top (e.g. "learned"). Given ``times`` may be any s <= t; the step is
    u = min(s + delta, t). Terms: ``ct`` = lambda d (and ``diag_fm``).
    aux: ``raw_loss``, ``weight``, ``target_norm``, ``residual_norm``, ``step`` (h).
    """

    name: str = "ct"
    interpolant: object = LinearInterpolant()
    delta: float = 0.1
    t_end: float | None = 1.0
    distance: str = "pseudo_huber"
    huber_c: float | None = None
    delta_weight: str = "inverse"
    step: str = "euler"
    diag_fraction: float = 0.0
    weighting: object = Weighting()

    requires_teacher: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_choice(self.step, "step", ("euler", "interpolant"))
        _check_discrete(self)

    def split_config(self) -> SplitConfig:
        """(s, t) with a gap of at least delta (t = t_end if set)."""
        return SplitConfig.of(self, sampler=DiscreteGapSampler(delta=self.delta, t_end=self.t_end))

    def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, dx_s = interpolate(self.interpolant, s, x0, x1)
        u = self.split_config().sampler.step_time(s, t)
        with torch.no_grad():
            if self.step == "interpolant":
                x_u = interpolate(self.interpolant, u, x0, x1)[0]
            else:
                x_u = x_s + expand_as_state(u - s, x_s) * dx_s
        return consistency_residual(model, s, t, u, x_s, x_u, distance=self.distance, huber_c=self.huber_c,
                                    delta_weight=self.delta_weight).named("ct")

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,) for data x1 (batch, dim); ``x0`` / ``times`` fix the noise and the
        (s, t) times (the step is u = min(s + delta, t)) instead of drawing them."""
        return evaluate_split(self, model, x1, generator, x0=x0, times=times)


@dataclass(frozen=True)
class ConsistencyDistillation:
    """"cd": discrete consistency distillation in flow-map form (see the module docstring):

        loss_i = lambda(h) d( X_{s,t}(I_s), sg X_{s+h,t}(x_{s+h}) ),
        euler: x_{s+h} = I_s + h b_s(I_s);  heun: x~ = I_s + h b_s(I_s), x_{s+h} = I_s + h/2 (b_s(I_s) + b_{s+h}(x~)),

    with b = ``teacher.velocity`` (an analytic flow, ``ExactFlowMap`` or a trained flow-matching
    model; run without gradient). At the exact map and teacher the residual is the solver's local
    error, O(h^2) for Euler and O(h^3) for Heun. Same fields as :class:`ConsistencyTraining` plus
    ``teacher`` (required at call time: ``dataclasses.replace(OBJECTIVES["cd"], teacher=flow)``)
    and ``solver``. Terms: ``cd`` (and ``diag_fm``).
    """

    name: str = "cd"
    interpolant: object = LinearInterpolant()
    teacher: object = None
    delta: float = 0.1
    t_end: float | None = 1.0
    distance: str = "pseudo_huber"
    huber_c: float | None = None
    delta_weight: str = "inverse"
    solver: str = "euler"
    diag_fraction: float = 0.0
    weighting: object = Weighting()

    requires_teacher: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_choice(self.solver, "solver", ("euler", "heun"))
        check_teacher(self.teacher, ("velocity",))
        _check_discrete(self)

    def split_config(self) -> SplitConfig:
        """(s, t) with a gap of at least delta (t = t_end if set)."""
        return SplitConfig.of(self, sampler=DiscreteGapSampler(delta=self.delta, t_end=self.t_end))

    def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, _ = interpolate(self.interpolant, s, x0, x1)
        u = self.split_config().sampler.step_time(s, t)
        b = self.teacher.velocity
        with torch.no_grad():
            he = expand_as_state(u - s, x_s)
            b0 = b(s, x_s)
            x_u = x_s + he * b0
            if self.solver == "heun":
                x_u = x_s + 0.5 * he * (b0 + b(u, x_u))
        return consistency_residual(model, s, t, u, x_s, x_u, distance=self.distance, huber_c=self.huber_c,
                                    delta_weight=self.delta_weight).named("cd")

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,); see :meth:`ConsistencyTraining.__call__`."""
        return evaluate_split(self, model, x1, generator, x0=x0, times=times)


# -- continuous-time CT (sCM) ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ContinuousConsistencyTraining:
    """"scm": continuous-time consistency training in the sCM style, flow-map form (module docstring):

        g = dI_s/ds - v_{s,t}(I_s) + r (t - s) D_s v_{s,t}(I_s),  D_s along (dx, ds, dt) = (dI_s/ds, 1, 0),
        g <- g / (|g| + c),   loss_i = | X_{s,t}(I_s) - sg( X_{s,t}(I_s) + g ) |^2   (gradient -2 J^T g).

    Fields: ``t_end`` (1.0: the consistency function X_{s,1}, s ~ U[0, 1]; None: (s, t) from
    ``sampler``); ``tangent_c`` (c of the normalisation, None: no normalisation); ``warmup`` (r in
    [0, 1], a field the trainer replaces to warm the tangent up, sCM: 0 -> 1 over 10k steps);
    ``teacher`` (None: CT with the conditional velocity; a flow: sCD with b_s(I_s) in place of
    dI_s/ds); ``diag_fraction`` (samples carrying flow matching instead); ``weighting``; ``method``
    ("jvp" or "fd" with step ``fd_eps``). Terms: ``scm`` (the pseudo-loss, = |g|^2) and ``diag_fm``.
    aux: ``tangent_norm`` |g| before normalisation, ``target_norm``, ``raw_loss``, ``weight``.
    """

    name: str = "scm"
    interpolant: object = LinearInterpolant()
    t_end: float | None = None
    sampler: object = UniformTriangle()
    tangent_c: float | None = 0.1
    warmup: float = 1.0
    teacher: object = None
    diag_fraction: float = 0.0
    weighting: object = Weighting()
    method: str = "jvp"
    fd_eps: float | None = None

    requires_teacher: ClassVar[bool] = False  # teacher=None is consistency training, a teacher makes it sCD

    def __post_init__(self) -> None:
        if self.t_end is not None:
            SliceSampler(self.t_end)
        check_positive(self.tangent_c, "tangent_c", allow_none=True)
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, float)) or not 0.0 <= self.warmup <= 1.0:
            raise ValueError(f"warmup (the tangent warm-up factor r) must be a number in [0, 1], got {self.warmup!r}")
        check_teacher(self.teacher, ("velocity",))
        normalise_fields(self)

    def split_config(self) -> SplitConfig:
        """(s, t) from ``sampler``, or the slice t = t_end when it is set."""
        return SplitConfig.of(self, sampler=self.sampler if self.t_end is None else SliceSampler(self.t_end))

    def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, dx_s = interpolate(self.interpolant, s, x0, x1)
        if self.teacher is not None:
            with torch.no_grad():
                dx_s = self.teacher.velocity(s, x_s)
        v, dv = total_derivative(model.average_velocity, s, t, x_s, ds=1.0, dt=0.0, dx=dx_s,
                                 method=self.method, eps=self.fd_eps)
        gap = expand_as_state(t - s, x_s)
        g = (dx_s - v + self.warmup * gap * dv).detach()
        g_norm = norm(g)
        if self.tangent_c is not None:
            g = g / expand_as_state(g_norm + self.tangent_c, g)
        student = x_s + gap * v
        target = (student + g).detach()
        raw = squared_error(student, target)
        return OffDiagonal(raw=raw, aux={"tangent_norm": g_norm, "target_norm": norm(target)}).named("scm")

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,) for data x1 (batch, dim); ``x0`` / ``times`` fix noise and times."""
        return evaluate_split(self, model, x1, generator, x0=x0, times=times)
