"""Self-distillation of a flow map (Boffi, Albergo & Vanden-Eijnden 2025, B25).

The model's own diagonal v_{t,t} (trained by flow matching on the diagonal samples) stands in for
the velocity b in B25's characterisations of the flow map (its proposition: Lagrangian,
Eulerian, semigroup). For the off-diagonal samples, (s, t) with s <= t, x0 ~ N(0, I), x1 ~ data
and I_s = alpha_s x0 + beta_s x1 (the convention of this workbench and of B25: t = 0 noise, t = 1
data, maps run forward s -> t):

* LSD  | d_t X_{s,t}(I_s) - v_{t,t}(X_{s,t}(I_s)) |^2                      (Lagrangian, P3)
* ESD  | d_s X_{s,t}(I_s) + grad X_{s,t}(I_s) v_{s,s}(I_s) |^2              (Eulerian, P4)
* PSD  | v_{s,t}(I_s) - [(1 - g) v_{s,u}(I_s) + g v_{u,t}(X_{s,u}(I_s))] |^2, u = g s + (1 - g) t (P5')

Stop-gradients follow B25's released code (``losses.py``: LSD "convex", ESD "full", PSD
"convex"); targets use the CURRENT parameters under stop-gradient (no EMA teacher). Every residual
vanishes on the exact flow map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..flows.interpolants import LinearInterpolant
from .base import ObjectiveResult
from .derivatives import flow_map_ds, flow_map_dt, flow_map_dx
from .samplers import Midpoint, UniformTriangle, get_intermediate, intermediate_time
from .split import (
    OffDiagonal,
    SplitConfig,
    check_choice,
    evaluate_split,
    interpolate,
    norm,
    normalise_fields,
    squared_error,
)
from .weighting import Weighting

__all__ = [
    "EulerianSelfDistillation",
    "LagrangianSelfDistillation",
    "ProgressiveSelfDistillation",
    "eulerian_residual",
    "lagrangian_residual",
    "semigroup_target",
]


# -- the three residuals, for a self-teacher (here) or an external teacher (distillation.py) ----------
def lagrangian_residual(model, velocity, s, t, x_s, *, stop_target: bool, method: str, eps) -> OffDiagonal:
    """Lagrangian residual (B25 P3) per sample: | d_t X_{s,t}(x_s) - b_t(X_{s,t}(x_s)) |^2.

    ``velocity(t, x)`` is b: the model's own diagonal (LSD) or a teacher's (LMD). ``stop_target``:
    b is evaluated at sg X without gradient (the gradient flows only through d_t X, "convex");
    otherwise through b_t(X) too. s, t (n,), x_s (n, *event); d_t X by ``method`` ('jvp' / 'fd', step
    ``eps``). aux: ``tangent_norm`` |d_t X|, ``target_norm`` |b_t(X)|.
    """
    X, dtX = flow_map_dt(model, s, t, x_s, method=method, eps=eps)
    if stop_target:
        with torch.no_grad():
            target = velocity(t, X.detach())
    else:
        target = velocity(t, X)
    return OffDiagonal(raw=squared_error(dtX, target), aux={"tangent_norm": norm(dtX), "target_norm": norm(target)})


def eulerian_residual(model, b_s, s, t, x_s, *, stop_advection: bool, method: str, eps) -> OffDiagonal:
    """Eulerian residual (B25 P4) per sample: | d_s X_{s,t}(x_s) + grad X_{s,t}(x_s) b_s |^2.

    ``b_s`` (shape of x_s) is the velocity at (s, x_s), computed by the caller (with or without
    gradient). ``stop_advection``: the advective term grad X b_s is computed without gradient (the
    gradient flows only through d_s X, "full"). aux: ``tangent_norm`` |d_s X|, ``advection_norm`` =
    ``target_norm`` |grad X b_s| (-grad X b_s is the target of d_s X).
    """
    _, dsX = flow_map_ds(model, s, t, x_s, method=method, eps=eps)
    if stop_advection:
        with torch.no_grad():
            _, adv = flow_map_dx(model, s, t, x_s, b_s, method=method, eps=eps)
    else:
        _, adv = flow_map_dx(model, s, t, x_s, b_s, method=method, eps=eps)
    a = norm(adv)
    return OffDiagonal(raw=squared_error(dsX, -adv), aux={"tangent_norm": norm(dsX), "advection_norm": a, "target_norm": a})


def semigroup_target(average_velocity, flow_map, s, u, t, gamma, x_s) -> torch.Tensor:
    """The v-form semigroup target (B25 P5') (1 - g) V_{s,u}(x_s) + g V_{u,t}(Y_{s,u}(x_s)),
    u = g s + (1 - g) t, for the average velocity V and map Y of the model (PSD) or of a teacher (PD).
    s, u, t, gamma (n,); x_s (n, *event); returns the shape of x_s (with whatever graph V and Y carry)."""
    g = gamma.reshape(-1, *([1] * (x_s.ndim - 1)))
    return (1.0 - g) * average_velocity(s, u, x_s) + g * average_velocity(u, t, flow_map(s, u, x_s))


@dataclass(frozen=True)
class LagrangianSelfDistillation:
    """"lsd": Lagrangian self-distillation (B25's L_LSD; P3):

        off-diagonal:  | d_t X_{s,t}(I_s) - sg( v_{t,t}( sg X_{s,t}(I_s) ) ) |^2

    d_t X is a forward-mode derivative in the scalar t (``method='jvp'``) or its central difference
    (``'fd'``, step ``fd_eps``). ``stopgrad``: ``'convex'`` (B25's choice: the gradient flows only
    through d_t X), ``'none'`` (everything differentiated, including the target's dependence on X).
    Split fields: ``interpolant``, ``diag_fraction`` (0.75), ``sampler`` (uniform on the triangle),
    ``weighting``. Terms: ``lsd`` and ``diag_fm``. aux: ``tangent_norm`` |d_t X|, ``target_norm``
    |v_{t,t}(X)|, over the off-diagonal samples.
    """

    name: str = "lsd"
    interpolant: object = LinearInterpolant()
    diag_fraction: float = 0.75
    sampler: object = UniformTriangle()
    weighting: object = Weighting()
    method: str = "jvp"
    fd_eps: float | None = None
    stopgrad: str = "convex"

    requires_teacher: ClassVar[bool] = False

    def __post_init__(self) -> None:
        normalise_fields(self)
        check_choice(self.stopgrad, "stopgrad", ("convex", "none"))

    def split_config(self) -> SplitConfig:
        return SplitConfig.of(self)

    def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, _ = interpolate(self.interpolant, s, x0, x1)
        return lagrangian_residual(model, model.velocity, s, t, x_s, stop_target=self.stopgrad == "convex",
                                   method=self.method, eps=self.fd_eps).named("lsd")

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,) for data x1 (batch, *event); ``x0`` / ``times`` fix the noise /
        the times (a TimeBatch with the diagonal samples first) instead of drawing them."""
        return evaluate_split(self, model, x1, generator, x0=x0, times=times)


@dataclass(frozen=True)
class EulerianSelfDistillation:
    """"esd": Eulerian self-distillation (B25's L_ESD; P4):

        off-diagonal:  | d_s X_{s,t}(I_s) + grad X_{s,t}(I_s) v_{s,s}(I_s) |^2

    d_s X by a forward-mode derivative in s, the advective term grad X . v_{s,s} by a spatial JVP
    (or central differences with ``method='fd'``). ``stopgrad``: ``'full'`` (B25's choice: sg on the
    whole advective term, the gradient flows only through d_s X), ``'convex'`` (sg on v_{s,s} only,
    the gradient also flows through the spatial JVP: "like EMD"), ``'none'`` (everything).
    Split fields as :class:`LagrangianSelfDistillation`. Terms: ``esd`` and ``diag_fm``.
    aux: ``tangent_norm`` |d_s X|, ``advection_norm`` |grad X v_{s,s}|, ``target_norm`` (= the
    advection norm: -grad X v_{s,s} is the target of d_s X), over the off-diagonal samples.
    """

    name: str = "esd"
    interpolant: object = LinearInterpolant()
    diag_fraction: float = 0.75
    sampler: object = UniformTriangle()
    weighting: object = Weighting()
    method: str = "jvp"
    fd_eps: float | None = None
    stopgrad: str = "full"

    requires_teacher: ClassVar[bool] = False

    def __post_init__(self) -> None:
        normalise_fields(self)
        check_choice(self.stopgrad, "stopgrad", ("full", "convex", "none"))

    def split_config(self) -> SplitConfig:
        return SplitConfig.of(self)

    def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, _ = interpolate(self.interpolant, s, x0, x1)
        with torch.set_grad_enabled(self.stopgrad == "none" and torch.is_grad_enabled()):
            b = model.velocity(s, x_s)
        return eulerian_residual(model, b, s, t, x_s, stop_advection=self.stopgrad == "full",
                                 method=self.method, eps=self.fd_eps).named("esd")

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,); see :class:`LagrangianSelfDistillation` for ``x0`` / ``times``."""
        return evaluate_split(self, model, x1, generator, x0=x0, times=times)


@dataclass(frozen=True)
class ProgressiveSelfDistillation:
    """"psd_midpoint" / "psd_uniform": progressive self-distillation, v-form with a sg teacher
    (B25's practical v-form L_PSD; P5'):

        off-diagonal:  | v_{s,t}(I_s) - sg[ (1 - g) v_{s,u}(I_s) + g v_{u,t}(X_{s,u}(I_s)) ] |^2,
                       u = g s + (1 - g) t

    with g = 1/2 (``intermediate='midpoint'``, PSD-M) or g ~ U[0, 1] (``'uniform'``, PSD-U).
    No derivatives: three forward passes, two without gradient (``stopgrad='convex'``; ``'none'``
    differentiates the teacher too). ``form='X'`` multiplies the residual by (t - s)^2, i.e. the
    X-form |X_{s,t}(I_s) - X_{u,t}(X_{s,u}(I_s))|^2 with the same sg teacher. The realised u is in
    ``result.times.u``. Split fields as :class:`LagrangianSelfDistillation` (``method`` unused).
    Terms: ``psd`` and ``diag_fm``. aux: ``student_norm`` |v_{s,t}|, ``target_norm`` |teacher|.
    """

    name: str = "psd_midpoint"
    interpolant: object = LinearInterpolant()
    diag_fraction: float = 0.75
    sampler: object = UniformTriangle()
    weighting: object = Weighting()
    method: str = "jvp"
    fd_eps: float | None = None
    intermediate: object = Midpoint()
    stopgrad: str = "convex"
    form: str = "v"

    requires_teacher: ClassVar[bool] = False

    def __post_init__(self) -> None:
        normalise_fields(self)
        object.__setattr__(self, "intermediate", get_intermediate(self.intermediate))
        check_choice(self.stopgrad, "stopgrad", ("convex", "none"))
        check_choice(self.form, "form", ("v", "X"))

    def split_config(self) -> SplitConfig:
        return SplitConfig.of(self)

    def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, _ = interpolate(self.interpolant, s, x0, x1)
        gamma = self.intermediate.sample_gamma(s.shape[0], generator, s.dtype, s.device)
        u = intermediate_time(s, t, gamma)
        student = model.average_velocity(s, t, x_s)
        with torch.set_grad_enabled(self.stopgrad == "none" and torch.is_grad_enabled()):
            target = semigroup_target(model.average_velocity, model.flow_map, s, u, t, gamma, x_s)
        raw = squared_error(student, target)
        if self.form == "X":
            raw = raw * (t - s) ** 2
        return OffDiagonal(raw=raw, aux={"student_norm": norm(student), "target_norm": norm(target)}, u=u).named("psd")

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,); see :class:`LagrangianSelfDistillation` for ``x0`` / ``times``."""
        return evaluate_split(self, model, x1, generator, x0=x0, times=times)
