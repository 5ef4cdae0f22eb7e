"""Map distillation from an external teacher: the twins of the self-distillation losses with a given
velocity b (Boffi et al. 2024, FMM; digest B25 sec. 2.4), in the workbench convention (t = 0
noise, t = 1 data, s <= t):

* LMD  | d_t X_{s,t}(I_s) - b_t(X_{s,t}(I_s)) |^2                  (Lagrangian map distillation)
* EMD  | d_s X_{s,t}(I_s) + grad X_{s,t}(I_s) b_s(I_s) |^2          (Eulerian map distillation)
* PD   | v_{s,t}(I_s) - [(1 - g) V_{s,u}(I_s) + g V_{u,t}(Y_{s,u}(I_s))] |^2   (progressive distillation)

The ``teacher`` is anything with ``velocity(t, x)`` (LMD, EMD) and ``flow_map(s, t, x)`` (PD): an
analytic flow (``workbench.flows``) or a frozen model. For PD, Y is the teacher's map and V its
average velocity (``teacher.average_velocity`` when it has one, else the secant of its map, with
V_{t,t} = b_t). The student trains its diagonal by flow matching on the diagonal samples, as in the
self-distillation losses. Teacher evaluations run without gradient.

Registry entries carry ``teacher=None``; set one with ``dataclasses.replace(obj, teacher=flow)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.exact import ExactFlowMap
from .base import ObjectiveResult
from .flow_matching import OffDiagonal, SplitConfig, check_choice, evaluate_split, interpolate, norm, squared_error
from .samplers import Midpoint, get_intermediate, intermediate_time
from .self_distillation import eulerian_residual, lagrangian_residual, semigroup_target

__all__ = ["EulerianMapDistillation", "LagrangianMapDistillation", "ProgressiveDistillation"]


def _check_teacher(obj: object, needs: tuple[str, ...]) -> object:
    teacher = obj.teacher
    if teacher is None:
        raise ValueError(
            f"objective {obj.name!r} needs a teacher (an analytic flow or a frozen model); set one with "
            f"dataclasses.replace(OBJECTIVES[{obj.name!r}], teacher=flow)"
        )
    for attr in needs:
        if not callable(getattr(teacher, attr, None)):
            raise TypeError(f"teacher for {obj.name!r} must implement {attr}; {type(teacher).__name__} does not")
    return teacher


@dataclass(frozen=True)
class LagrangianMapDistillation(SplitConfig):
    """"lmd": Lagrangian map distillation (B25 sec. 2.4, FMM):

        off-diagonal:  | d_t X_{s,t}(I_s) - b_t( sg X_{s,t}(I_s) ) |^2,   b = teacher.velocity

    ``stopgrad``: ``'convex'`` (default, the teacher is evaluated at sg X: gradient only through
    d_t X, the twin of LSD-convex) or ``'none'`` (also through b_t(X) via X). aux: ``tangent_norm``,
    ``target_norm``.
    """

    name: str = "lmd"
    teacher: object = None
    stopgrad: str = "convex"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.stopgrad, "stopgrad", ("convex", "none"))

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,); ``x0`` / ``times`` fix the noise / the times."""
        _check_teacher(self, ("velocity",))
        return evaluate_split(self, model, x1, generator, "lmd", self._off_diagonal, x0=x0, times=times)

    def _off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, _ = interpolate(self.interpolant, s, x0, x1)
        return lagrangian_residual(model, self.teacher.velocity, s, t, x_s, stop_target=self.stopgrad == "convex",
                                   method=self.method, eps=self.fd_eps)


@dataclass(frozen=True)
class EulerianMapDistillation(SplitConfig):
    """"emd": Eulerian map distillation (B25 sec. 2.4, FMM; AYF-EMD):

        off-diagonal:  | d_s X_{s,t}(I_s) + grad X_{s,t}(I_s) b_s(I_s) |^2,   b = teacher.velocity

    ``stopgrad``: ``'full'`` (default: sg on the advective term grad X b, the gradient flows through
    d_s X only, the twin of ESD-full) or ``'none'`` (also through the spatial JVP; b itself has no
    model parameters). aux: ``tangent_norm``, ``advection_norm``, ``target_norm``.
    """

    name: str = "emd"
    teacher: object = None
    stopgrad: str = "full"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.stopgrad, "stopgrad", ("full", "none"))

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,); ``x0`` / ``times`` fix the noise / the times."""
        _check_teacher(self, ("velocity",))
        return evaluate_split(self, model, x1, generator, "emd", self._off_diagonal, x0=x0, times=times)

    def _off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, _ = interpolate(self.interpolant, s, x0, x1)
        with torch.no_grad():
            b = self.teacher.velocity(s, x_s)
        return eulerian_residual(model, b, s, t, x_s, stop_advection=self.stopgrad == "full",
                                 method=self.method, eps=self.fd_eps)


@dataclass(frozen=True)
class ProgressiveDistillation(SplitConfig):
    """"pd": progressive distillation from a teacher map (B25 sec. 2.4; Salimans & Ho), v-form:

        off-diagonal:  | v_{s,t}(I_s) - [(1 - g) V_{s,u}(I_s) + g V_{u,t}(Y_{s,u}(I_s))] |^2,
                       u = g s + (1 - g) t

    ``teacher_map='compose'`` (default): the teacher composes two of its own shorter jumps
    (g = 1/2 or U[0, 1] by ``intermediate``), the twin of PSD; ``'direct'``: the target is the
    teacher's own long jump V_{s,t}(I_s) (for an exact teacher both are the true v_{s,t}).
    ``form='X'`` multiplies by (t - s)^2 (the X-form). aux: ``student_norm``, ``target_norm``.
    """

    name: str = "pd"
    teacher: object = None
    intermediate: object = Midpoint()
    teacher_map: str = "compose"
    form: str = "v"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "intermediate", get_intermediate(self.intermediate))
        check_choice(self.teacher_map, "teacher_map", ("compose", "direct"))
        check_choice(self.form, "form", ("v", "X"))

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,); ``x0`` / ``times`` fix the noise / the times."""
        _check_teacher(self, ("velocity", "flow_map"))
        return evaluate_split(self, model, x1, generator, "pd", self._off_diagonal, x0=x0, times=times)

    def _teacher_average_velocity(self):
        teacher = self.teacher
        if callable(getattr(teacher, "average_velocity", None)):
            return teacher.average_velocity
        return ExactFlowMap(teacher).average_velocity

    def _off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
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
        return OffDiagonal(raw=raw, aux={"student_norm": norm(student), "target_norm": norm(target)}, u=u)
