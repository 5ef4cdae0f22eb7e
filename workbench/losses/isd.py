"""Improved self-distillation (iSD) of Kim, Kim, Kim & Park 2026 (K26), in flow-map form.

Source: the official code (``methods/isd.py``), K26 digest sec. 1.3 and 2.2; the paper's text
was not readable. iSD's network F(x, t, s) maps its noise level t to a target level s <= t
(t = 1 noise) with Phi_{t->s}(x) = x + (s - t) F(x, t, s). With tau_iSD = 1 - tau here, its t is our
start s, its s our end t, and F = -v_{s,t}; the model's own velocity v^ = sg F(x, t, t) is
-sg v_{s,s}; its tangent dF/dt = d/dtau F(x + tau v^, t + tau, s) is D_s v_{s,t} below; and its
Linear target T = v^ - (t - s) dF/dt becomes (K26 digest sec. 2.1, the MeanFlow identity = B25 P4')

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

FM anchor (``anchor``): "every" (the code: each sample carries L_FM at its own (s, s) as well as
L_FMD; ``diag_fraction`` then adds pure diagonal samples, default 0) or "split" (B25's batch split:
``diag_fraction`` of the samples carry only L_FM at (t, t), the rest only L_FMD; with
diag_fraction = 0 nothing anchors the diagonal and F = 0 is a fixed point, K26 D1).
Times: iSD draws two iid Beta(0.8, 1.0) in its clock and sorts them; 1 - Beta(0.8, 1) is
Beta(1, 0.8), so here ``BetaPair(1.0, 0.8)`` (mass near the data end t = 1).
Not reproduced: label dropout and training-time CFG (unconditional models here).

``stop_tangent_gradient=False`` ("isd_unstopped"): the ablation (c) of K26 sec. 3 / B25's ESD
"convex" analogue, where v^ stays stopped but the gradient also flows through D_s v (the term with
the spatial Jacobian), the gradient-pathology case.

Stability (measured Nov 2026, not a bug). The translation above was re-derived against the code's
T = v^ - (t_iSD - s_iSD) dF/dt (F = -v, t_iSD = 1 - s, so dF/dt_iSD = +D_s v and the sign of both
terms carries over), and the tests pin the fixed point (residual 0 at the exact map with the JVP,
O(eps^2) with the central difference in the (s, x) tangent). Yet the defaults (adaptive on the sum,
anchor "every", diag_fraction 0) can run away on B25's checkerboard: MLP 256 x 3 on raw (s, t - s),
batch 256, RAdam, clip 10, 400 steps, std of the one-step map X_{0,1}(z) (truth 2.31):

    lr 3e-3:                 seed 0 max 8.0 -> 3.3 (recovers);  seed 1 runs away: 17 @100, 280 @400
    lr 3e-3, data_std 2.31:  seeds 0 / 1 run away: 452 / 390 @400 (L_FM 13 -> 6e5, L_FMD -> 1e10)
    lr 1e-3 (3e-4), data_std: 133 (22) @400 and growing; without data_std max 7.2 (4.8), recovers
    data_std, lr 3e-3 and:   JVP tangent 510, clip 1 527, clip 0.1 1130, p = 0.5 1.4e4,
                             weighting "none" 6e4 (so the adaptive weight is not the cause)
    stable (data_std, lr 3e-3): pseudo-Huber max 2.5 (seeds 0, 1; 2.27 after 1200 steps),
                             pseudo-Huber + "sin" 2.6; diag_fraction 0.25 max 3.3 / 3.6 -> 2.5,
                             diag_fraction 0.1 max 4.6 -> 2.0-3.4; anchor "split" 0.25: 600 (runs away).
    8 Gaussians (data_std, lr 3e-3, 1000 steps, mean |X_{0,1}(z) - exact|; |X_{0,1/2}| error):
                             default 0.73; 0.47, pseudo-Huber 0.40; 0.075, diag_fraction 0.25
                             0.28; 0.48, LSD 0.31; 0.11 (same budget).

Mechanism: the target feeds the model's own velocity back, dT = (I + (t - s) grad v_{s,t}) dv^,
with gain > 1 where the flow expands (data wider than the noise: for N(0,1) -> N(0, 2.31^2) the gain
at (0, 1) is 2.31), and the network carries the off-diagonal error to the diagonal (smooth in
t - s), so v^ grows with it. Only L_FM pulls back, and with one weight on L_FM + L_FMD per sample
the anchor is swamped once L_FMD >> L_FM (L_FM itself then grows: it is the velocity that diverges,
not just the off-diagonal). The grad norm under adaptive weighting stays below ~2, so clip 10 never
acts and lr / clipping only delay it. What stabilises it keeps the anchor's share of the gradient
bounded away from 0: pseudo-Huber on L_FMD (its gradient scaled by 0.5 / sqrt(L_FMD + 25) <= 0.1
beside an unweighted L_FM; K26's released "augmented" configuration) or pure flow-matching samples
with their own adaptive weight (``diag_fraction`` > 0 with anchor "every").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.times import expand_as_state
from ..flows.interpolants import LinearInterpolant, get_interpolant
from .base import ObjectiveResult
from .consistency import gradient_weight
from .derivatives import check_method, total_derivative
from .flow_matching import OffDiagonal, SplitConfig, check_choice, evaluate_split, interpolate, norm, squared_error
from .samplers import BetaPair
from .weighting import Weighting, apply_weighting

__all__ = ["ImprovedSelfDistillation"]

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "interpolant", get_interpolant(self.interpolant))
        check_choice(self.anchor, "anchor", ("every", "split"))
        check_choice(self.time_weight, "time_weight", ("none", "sin"))
        check_method(self.method)
        if not isinstance(self.stop_tangent_gradient, bool):
            raise TypeError(f"stop_tangent_gradient must be a bool, got {type(self.stop_tangent_gradient).__name__}")
        object.__setattr__(self, "weighting", self._config(self.weighting).weighting)

    def _config(self, weighting) -> SplitConfig:
        return SplitConfig(interpolant=self.interpolant, diag_fraction=self.diag_fraction, sampler=self.sampler,
                           weighting=weighting, method=self.method, fd_eps=self.fd_eps)

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,) for data x1 (batch, dim); ``x0`` / ``times`` fix noise and times."""
        cfg = self._config(Weighting())  # raw totals; the weighting is applied below
        parts: dict[str, torch.Tensor] = {}

        def off(model, s, t, x0, x1, generator):
            x_s, dx_s = interpolate(cfg.interpolant, s, x0, x1)
            v_diag = model.velocity(s, x_s)
            v_hat = v_diag.detach()
            v, dv = total_derivative(model.average_velocity, s, t, x_s, ds=1.0, dt=0.0, dx=v_hat,
                                     method=cfg.method, eps=cfg.fd_eps)
            if self.stop_tangent_gradient:
                dv = dv.detach()
            target = v_hat + expand_as_state(t - s, x_s) * dv
            parts["fmd"] = fmd = squared_error(v, target)
            raw = fmd
            if self.anchor == "every":
                parts["fm"] = fm = squared_error(v_diag, dx_s)
                raw = fm + fmd
            aux = {"tangent_norm": norm(dv), "target_norm": norm(target), "velocity_norm": norm(v_hat)}
            return OffDiagonal(raw=raw, aux=aux)

        result = evaluate_split(cfg, model, x1, generator, "isd", off, x0=x0, times=times)
        tb, raw = result.times, result.aux["raw_loss"]
        diag = result.terms["diag_fm"]
        fmd = parts.get("fmd", raw.new_zeros(0))
        fm_all = torch.cat([diag, parts["fm"]]) if self.anchor == "every" and "fm" in parts else diag
        w = self.weighting
        if w.kind == "pseudo_huber":
            c = ISD_PSEUDO_HUBER_C if w.c is None else w.c
            huber = torch.sqrt(fmd + c * c) - c
            off_fm = parts.get("fm", torch.zeros_like(fmd))
            loss = torch.cat([diag, off_fm + huber])
            weight = torch.cat([torch.ones_like(diag), 0.5 / torch.sqrt(fmd.detach() + c * c)]).detach()
        else:
            total = torch.cat([diag, result.terms["isd"]])
            loss = apply_weighting(total, w, model, tb, x1)
            weight = gradient_weight(w, total, model, tb, x1)
        if self.time_weight == "sin":
            tw = torch.sin(0.5 * math.pi * tb.s)
            loss, weight = loss * tw, weight * tw.detach()
        terms = {"diag_fm": fm_all, "isd_fmd": fmd}
        aux = dict(result.aux)
        aux["weight"] = weight
        return ObjectiveResult(loss=loss, terms=terms, times=tb, aux=aux)
