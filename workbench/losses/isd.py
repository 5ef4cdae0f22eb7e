"""Improved self-distillation (iSD) of Kim, Kim, Kim & Park 2026 (K26), in flow-map form.

Source: K26 code (the official release, ``methods/isd.py``; the paper's text was not available to
this translation). iSD's network F(x, t, s) maps its noise level t to a target level s <= t
(t = 1 noise) with Phi_{t->s}(x) = x + (s - t) F(x, t, s). With tau_iSD = 1 - tau here, its t is our
start s, its s our end t, and F = -v_{s,t}; the model's own velocity v^ = sg F(x, t, t) is
-sg v_{s,s}; its tangent dF/dt = d/dtau F(x + tau v^, t + tau, s) is D_s v_{s,t} below; and its
Linear target T = v^ - (t - s) dF/dt becomes (the MeanFlow identity, B25's Eulerian v-form P4')

    v^ = sg v_{s,s}(I_s),
    D_s v = d/dtau v_{s+tau,t}(I_s + tau v^)|_{tau=0}       (JVP, or central difference with step 0.005),
    L_FMD = | v_{s,t}(I_s) - sg[ v^ + (t - s) D_s v ] |^2,
    L_FM  = | v_{s,s}(I_s) - dI_s/ds |^2,
    loss  = w(L_FM + L_FMD),  w = adaptive l / sg(l + c)^p, c = 0.01, p = 1;  or
    loss  = L_FM + sqrt(L_FMD + c^2) - c, c = 5 (the "augmented" variant's pseudo-Huber),

i.e. MeanFlow's target with the model's own diagonal velocity in place of the conditional one, in
both the target and the tangent: the target is deterministic given theta (no conditional-velocity
noise), and every derivative term sits inside the stop-gradient, so the gradient flows only through
v_{s,t}(I_s) and v_{s,s}(I_s). In the workbench's parametrisation X = x + (t - s) v this target is
exact for any interpolant (the code's separate TrigFlow target belongs to its cos/sin
parametrisation, not used here). At the true map v^ = b_s and the target equals v_{s,t} (P4'),
so the residual vanishes (with the finite-difference tangent up to O(eps^2)).

FM anchor (``anchor``): "every" (K26 code: each sample carries L_FM at its own (s, s) as well as
L_FMD; ``diag_fraction`` then adds pure diagonal samples, default 0) or "split" (B25's batch split:
``diag_fraction`` of the samples carry only L_FM at (t, t), the rest only L_FMD; with
diag_fraction = 0 nothing anchors the diagonal and F = 0 is a fixed point, the degenerate
solution the detectors call D1).
Times: iSD draws two iid Beta(0.8, 1.0) in its clock and sorts them; 1 - Beta(0.8, 1) is
Beta(1, 0.8), so here ``BetaPair(1.0, 0.8)`` (mass near the data end t = 1).
Not reproduced: label dropout and training-time CFG (unconditional models here).

``stop_tangent_gradient=False`` ("isd_unstopped"): the ablation where v^ stays stopped but the
gradient also flows through D_s v (the term with the spatial Jacobian, B25's ESD "convex"
analogue), the gradient-pathology case.

Stability. The defaults (adaptive weighting on the sum, anchor "every", diag_fraction 0) can run
away on B25's checkerboard although the fixed point is right: the target feeds the model's own
velocity back with gain (I + (t - s) grad v_{s,t}) > 1 where the flow expands, and one adaptive
weight on L_FM + L_FMD lets L_FMD swamp the anchor. Pseudo-Huber on L_FMD ("isd_huber") or pure
flow-matching samples (``diag_fraction`` > 0) keep the anchor's share of the gradient and are
stable. Measurements and the full mechanism: ``docs/losses_isd_stability.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.times import expand_as_state
from ..flows.interpolants import LinearInterpolant
from .base import ObjectiveResult
from .derivatives import total_derivative
from .samplers import BetaPair
from .split import (
    DIAGONAL_TERM,
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

__all__ = ["ISD_PSEUDO_HUBER_C", "ImprovedSelfDistillation"]

#: c of the pseudo-Huber on L_FMD when the weighting's c is None (K26 code, "augmented" variant)
ISD_PSEUDO_HUBER_C = 5.0


@dataclass(frozen=True)
class ImprovedSelfDistillation:
    """"isd": improved self-distillation (module docstring):

        loss_i = w( |v_{s,s}(I_s) - dI_s/ds|^2 + |v_{s,t}(I_s) - sg[v^ + (t - s) D_s v]|^2 ),  v^ = sg v_{s,s}(I_s).

    Fields: ``anchor`` "every" / "split"; ``diag_fraction`` (default 0); ``sampler`` (default
    ``BetaPair(1.0, 0.8)``); ``weighting`` (default adaptive c = 0.01, p = 1; "pseudo_huber" acts on
    L_FMD only, default c = 5; "none" and "learned" act on the per-sample total); ``time_weight``
    "none" or "sin" (multiply by sin(pi s / 2) = cos(pi t_iSD / 2), the augmented variant);
    ``method`` "fd" (default, as the released configs) with step ``fd_eps`` = 0.005, or "jvp";
    ``stop_tangent_gradient`` (False: "isd_unstopped").
    Terms: ``isd_fmd`` (off-diagonal samples) and ``diag_fm`` (anchor "every": every sample, at
    (s, s) off the diagonal; "split": the diagonal samples). aux: ``tangent_norm`` |D_s v|,
    ``target_norm``, ``velocity_norm`` |v^| (off-diagonal samples), ``raw_loss`` (L_FM + L_FMD
    before weighting) and ``weight`` (d loss / d raw, for pseudo-Huber d loss / d L_FMD).
    """

    name: str = "isd"
    interpolant: object = LinearInterpolant()
    anchor: str = "every"
    diag_fraction: float = 0.0
    sampler: object = BetaPair(1.0, 0.8)
    weighting: object = Weighting("adaptive", c=0.01, p=1.0)
    time_weight: str = "none"
    method: str = "fd"
    fd_eps: float | None = 0.005
    stop_tangent_gradient: bool = True

    requires_teacher: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_choice(self.anchor, "anchor", ("every", "split"))
        check_choice(self.time_weight, "time_weight", ("none", "sin"))
        if not isinstance(self.stop_tangent_gradient, bool):
            raise TypeError(f"stop_tangent_gradient must be a bool, got {type(self.stop_tangent_gradient).__name__}")
        normalise_fields(self)

    def split_config(self) -> SplitConfig:
        """The split weighting acts on the per-sample total, except pseudo-Huber, which
        :meth:`off_diagonal` applies to L_FMD itself (the split then adds no weighting)."""
        huber = self.weighting.kind == "pseudo_huber"
        return SplitConfig.of(self, weighting=Weighting() if huber else self.weighting)

    def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, dx_s = interpolate(self.interpolant, s, x0, x1)
        v_diag = model.velocity(s, x_s)
        v_hat = v_diag.detach()
        v, dv = total_derivative(model.average_velocity, s, t, x_s, ds=1.0, dt=0.0, dx=v_hat,
                                 method=self.method, eps=self.fd_eps)
        if self.stop_tangent_gradient:
            dv = dv.detach()
        target = v_hat + expand_as_state(t - s, x_s) * dv
        fmd = squared_error(v, target)
        terms = {"isd_fmd": fmd}
        raw = fmd
        if self.anchor == "every":
            terms[DIAGONAL_TERM] = fm = squared_error(v_diag, dx_s)
            raw = fm + fmd
        loss = weight = None
        if self.weighting.kind == "pseudo_huber":
            c = ISD_PSEUDO_HUBER_C if self.weighting.c is None else self.weighting.c
            huber = torch.sqrt(fmd + c * c) - c
            loss = terms[DIAGONAL_TERM] + huber if self.anchor == "every" else huber
            weight = 0.5 / torch.sqrt(fmd.detach() + c * c)
        aux = {"tangent_norm": norm(dv), "target_norm": norm(target), "velocity_norm": norm(v_hat)}
        return OffDiagonal(raw=raw, terms=terms, aux=aux, loss=loss, weight=weight)

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,) for data x1 (batch, dim); ``x0`` / ``times`` fix noise and times."""
        return evaluate_split(self, model, x1, generator, x0=x0, times=times)
