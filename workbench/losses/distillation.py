"""Map distillation from an external teacher: the twins of the self-distillation losses with a given
velocity b (flow map matching, Boffi, Albergo & Vanden-Eijnden 2024; B25's distillation
counterparts), in the workbench convention (t = 0 noise, t = 1 data, s <= t):

* LMD  | d_t X_{s,t}(I_s) - b_t(X_{s,t}(I_s)) |^2                  (Lagrangian map distillation)
* EMD  | d_s X_{s,t}(I_s) + grad X_{s,t}(I_s) b_s(I_s) |^2          (Eulerian map distillation)
* PD   | v_{s,t}(I_s) - [(1 - g) V_{s,u}(I_s) + g V_{u,t}(Y_{s,u}(I_s))] |^2   (progressive distillation)

The ``teacher`` is anything with ``velocity(t, x)`` (LMD, EMD) and ``flow_map(s, t, x)`` (PD): an
analytic flow (``workbench.flows``) or a frozen model. For PD, Y is the teacher's map and V its
average velocity (``teacher.average_velocity`` when it has one, else the secant of its map, with
V_{t,t} = b_t). The student trains its diagonal by flow matching on the diagonal samples, as in the
self-distillation losses. Teacher evaluations run without gradient.

Registry entries carry ``teacher=None`` (``requires_teacher``: calling them raises a ValueError);
set one with ``dataclasses.replace(obj, teacher=flow)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..flows.interpolants import LinearInterpolant
from ..models.exact import ExactFlowMap
from .base import ObjectiveResult
from .samplers import Midpoint, UniformTriangle, get_intermediate, intermediate_time
from .self_distillation import eulerian_residual, lagrangian_residual, semigroup_target
from .split import (
    OffDiagonal,
    SplitConfig,
    check_choice,
    check_teacher,
    evaluate_split,
    interpolate,
    norm,
    normalise_fields,
    squared_error,
)
from .weighting import Weighting

__all__ = ["EulerianMapDistillation", "LagrangianMapDistillation", "ProgressiveDistillation"]


@dataclass(frozen=True)
class LagrangianMapDistillation:
    """"lmd": Lagrangian map distillation (B25's LMD, from flow map matching):

        off-diagonal:  | d_t X_{s,t}(I_s) - b_t( sg X_{s,t}(I_s) ) |^2,   b = teacher.velocity

    ``stopgrad``: ``'convex'`` (default, the teacher is evaluated at sg X: gradient only through
    d_t X, the twin of LSD-convex) or ``'none'`` (also through b_t(X) via X). Split fields as
    :class:`~workbench.losses.LagrangianSelfDistillation`. Terms: ``lmd`` and ``diag_fm``.
    aux: ``tangent_norm``, ``target_norm``.
    """

    name: str = "lmd"
    interpolant: object = LinearInterpolant()
    diag_fraction: float = 0.75
    sampler: object = UniformTriangle()
    weighting: object = Weighting()
    method: str = "jvp"
    fd_eps: float | None = None
    teacher: object = None
    stopgrad: str = "convex"

    requires_teacher: ClassVar[bool] = True

    def __post_init__(self) -> None:
        normalise_fields(self)
        check_teacher(self.teacher, ("velocity",))
        check_choice(self.stopgrad, "stopgrad", ("convex", "none"))

    def split_config(self) -> SplitConfig:
        return SplitConfig.of(self)

    def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, _ = interpolate(self.interpolant, s, x0, x1)
        return lagrangian_residual(model, self.teacher.velocity, s, t, x_s, stop_target=self.stopgrad == "convex",
                                   method=self.method, eps=self.fd_eps).named("lmd")

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,); ``x0`` / ``times`` fix the noise / the times."""
        return evaluate_split(self, model, x1, generator, x0=x0, times=times)


@dataclass(frozen=True)
class EulerianMapDistillation:
    """"emd": Eulerian map distillation (B25's EMD, from flow map matching; AYF-EMD):

        off-diagonal:  | d_s X_{s,t}(I_s) + grad X_{s,t}(I_s) b_s(I_s) |^2,   b = teacher.velocity

    ``stopgrad``: ``'full'`` (default: sg on the advective term grad X b, the gradient flows through
    d_s X only, the twin of ESD-full) or ``'none'`` (also through the spatial JVP; b itself has no
    model parameters). Terms: ``emd`` and ``diag_fm``. aux: ``tangent_norm``, ``advection_norm``,
    ``target_norm``.
    """

    name: str = "emd"
    interpolant: object = LinearInterpolant()
    diag_fraction: float = 0.75
    sampler: object = UniformTriangle()
    weighting: object = Weighting()
    method: str = "jvp"
    fd_eps: float | None = None
    teacher: object = None
    stopgrad: str = "full"

    requires_teacher: ClassVar[bool] = True

    def __post_init__(self) -> None:
        normalise_fields(self)
        check_teacher(self.teacher, ("velocity",))
        check_choice(self.stopgrad, "stopgrad", ("full", "none"))

    def split_config(self) -> SplitConfig:
        return SplitConfig.of(self)

    def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, _ = interpolate(self.interpolant, s, x0, x1)
        with torch.no_grad():
            b = self.teacher.velocity(s, x_s)
        return eulerian_residual(model, b, s, t, x_s, stop_advection=self.stopgrad == "full",
                                 method=self.method, eps=self.fd_eps).named("emd")

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,); ``x0`` / ``times`` fix the noise / the times."""
        return evaluate_split(self, model, x1, generator, x0=x0, times=times)


@dataclass(frozen=True)
class ProgressiveDistillation:
    """"pd": progressive distillation from a teacher map (B25's PD; Salimans & Ho 2022), v-form:

        off-diagonal:  | v_{s,t}(I_s) - [(1 - g) V_{s,u}(I_s) + g V_{u,t}(Y_{s,u}(I_s))] |^2,
                       u = g s + (1 - g) t

    ``teacher_map='compose'`` (default): the teacher composes two of its own shorter jumps
    (g = 1/2 or U[0, 1] by ``intermediate``), the twin of PSD; ``'direct'``: the target is the
    teacher's own long jump V_{s,t}(I_s) (for an exact teacher both are the true v_{s,t}).
    ``form='X'`` multiplies by (t - s)^2 (the X-form). Terms: ``pd`` and ``diag_fm``.
    aux: ``student_norm``, ``target_norm``.
    """

    name: str = "pd"
    interpolant: object = LinearInterpolant()
    diag_fraction: float = 0.75
    sampler: object = UniformTriangle()
    weighting: object = Weighting()
    method: str = "jvp"
    fd_eps: float | None = None
    teacher: object = None
    intermediate: object = Midpoint()
    teacher_map: str = "compose"
    form: str = "v"

    requires_teacher: ClassVar[bool] = True

    def __post_init__(self) -> None:
        normalise_fields(self)
        check_teacher(self.teacher, ("velocity", "flow_map"))
        object.__setattr__(self, "intermediate", get_intermediate(self.intermediate))
        check_choice(self.teacher_map, "teacher_map", ("compose", "direct"))
        check_choice(self.form, "form", ("v", "X"))

    def split_config(self) -> SplitConfig:
        return SplitConfig.of(self)

    def _teacher_average_velocity(self):
        teacher = self.teacher
        if callable(getattr(teacher, "average_velocity", None)):
            return teacher.average_velocity
        return ExactFlowMap(teacher).average_velocity

    def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, _ = interpolate(self.interpolant, s, x0, x1)
        gamma = self.intermediate.sample_gamma(s.shape[0], generator, s.dtype, s.device)
        u = intermediate_time(s, t, gamma)
        student = model.average_velocity(s, t, x_s)
        V = self._teacher_average_velocity()
        with torch.no_grad():
            if self.teacher_map == "direct":
                target = V(s, t, x_s)
            else:
                target = semigroup_target(V, self.teacher.flow_map, s, u, t, gamma, x_s)
        raw = squared_error(student, target)
        if self.form == "X":
            raw = raw * (t - s) ** 2
        return OffDiagonal(raw=raw, aux={"student_norm": norm(student), "target_norm": norm(target)}, u=u).named("pd")

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,); ``x0`` / ``times`` fix the noise / the times."""
        return evaluate_split(self, model, x1, generator, x0=x0, times=times)
