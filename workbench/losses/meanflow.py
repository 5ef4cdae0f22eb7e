"""MeanFlow (Geng et al. 2025) in flow-map form.

Translation (B25 recovers MeanFlow from its Eulerian losses). MeanFlow runs its clock from data (0)
to noise (1): z_tau = (1 - tau) x + tau eps, velocity v_MF = eps - x, and its average velocity
u(z, r, t) moves z from its time t to an earlier (less noisy) time r < t by z_r = z_t - (t - r) u.
With tau_MF = 1 - tau here: MeanFlow's t is our start s (t_MF = 1 - s), its r is our end t
(r_MF = 1 - t), t_MF - r_MF = t - s, v_MF = -dI_s/ds and u = -v_{s,t}. Its identity

    u = v_MF - (t_MF - r_MF) du/dt_MF,   du/dt_MF = v_MF . grad u + d_t u,

becomes, since d/dt_MF along (dz, dt_MF) = (v_MF, 1) is -d/ds along (dx, ds) = (dI_s/ds, 1), the
Eulerian v-form identity P4' of B25:

    v_{s,t}(x) = v_{s,s}(x) + (t - s) [ d_s v_{s,t}(x) + grad v_{s,t}(x) v_{s,s}(x) ].

(Note the sign: "+ (t - s) d/ds" in our clock; "- (t - r) d/dt" in MeanFlow's.) MeanFlow regresses
v_{s,t}(I_s) onto the right-hand side with the conditional velocity v_c = dI_s/ds in place of the
velocity, all of it under stop-gradient:

    T = sg[ v_c + (t - s) D_s v_{s,t}(I_s) ],   D_s = d/dtau v_{s+tau,t}(I_s + tau v_c)|_{tau=0},
    loss_i = w( |v_{s,t}(I_s) - T|^2 ),  w = adaptive l / sg(l + c)^p (c = 1e-3, p = 1 by default).

D_s is one JVP with tangent (dx, ds, dt) = (v_c, 1, 0) (MeanFlow's (v, 0, 1) on (z, r, t)). The
target is linear in v_c, so at the true map the residual -(I + (t - s) grad v)(v_c - b_s) has zero
conditional mean: the expected gradient vanishes at the truth (its variance sets a loss floor).
A fraction ``diag_fraction`` of samples (MeanFlow's "r = t" ratio, 75% in its best setting) has
s = t, where the target is v_c: plain flow matching (term ``diag_fm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.times import expand_as_state
from ..flows.interpolants import LinearInterpolant
from .base import ObjectiveResult
from .derivatives import total_derivative
from .samplers import LogitNormalPair
from .split import OffDiagonal, SplitConfig, evaluate_split, interpolate, norm, normalise_fields, squared_error
from .weighting import Weighting

__all__ = ["MeanFlow", "eulerian_target"]


def eulerian_target(model, s: torch.Tensor, t: torch.Tensor, x: torch.Tensor, velocity: torch.Tensor, *,
                    method: str = "jvp", eps: float | None = None):
    """(v_{s,t}(x), D_s v_{s,t}(x), T) for the Eulerian v-form target (B25 P4'):

        D_s v = d/dtau v_{s+tau,t}(x + tau velocity)|_{tau=0},   T = velocity + (t - s) D_s v.

    s, t: (batch,); x, velocity: (batch, dim). v carries the model's autograd graph, D_s v too (the
    caller detaches what it wants stopped); T is built from them as given.
    """
    v, dv = total_derivative(model.average_velocity, s, t, x, ds=1.0, dt=0.0, dx=velocity, method=method, eps=eps)
    return v, dv, velocity + expand_as_state(t - s, x) * dv


@dataclass(frozen=True)
class MeanFlow:
    """"meanflow": MeanFlow in flow-map form (module docstring):

        loss_i = w( | v_{s,t}(I_s) - sg[ dI_s/ds + (t - s) D_s v_{s,t}(I_s) ] |^2 ).

    Fields: ``interpolant``; ``diag_fraction`` (the r = t ratio, default 0.75); ``sampler`` (default
    ``LogitNormalPair(0.4, 1.0)``: MeanFlow's logit-normal(-0.4, 1) in its clock is +0.4 in ours);
    ``weighting`` (default adaptive, c = 1e-3, p = 1); ``method`` "jvp" / "fd" (step ``fd_eps``).
    Terms: ``meanflow`` and ``diag_fm``. aux: ``tangent_norm`` |D_s v|, ``target_norm`` |T|,
    ``raw_loss`` (before the adaptive weight) and ``weight`` (1 / (l + c)^p).
    """

    name: str = "meanflow"
    interpolant: object = LinearInterpolant()
    diag_fraction: float = 0.75
    sampler: object = LogitNormalPair(0.4, 1.0)
    weighting: object = Weighting("adaptive", c=1e-3, p=1.0)
    method: str = "jvp"
    fd_eps: float | None = None

    requires_teacher: ClassVar[bool] = False

    def __post_init__(self) -> None:
        normalise_fields(self)

    def split_config(self) -> SplitConfig:
        return SplitConfig.of(self)

    def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, dx_s = interpolate(self.interpolant, s, x0, x1)
        v, dv, target = eulerian_target(model, s, t, x_s, dx_s, method=self.method, eps=self.fd_eps)
        target = target.detach()
        return OffDiagonal(raw=squared_error(v, target),
                           aux={"tangent_norm": norm(dv), "target_norm": norm(target)}).named("meanflow")

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,) for data x1 (batch, dim); ``x0`` / ``times`` fix noise and times."""
        return evaluate_split(self, model, x1, generator, x0=x0, times=times)
