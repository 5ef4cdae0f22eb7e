"""Shortcut models (Frans et al. 2025) in flow-map form.

Mapping (B25 recovers shortcut models from PSD). Shortcut models use the same clock as the
workbench (t = 0 noise, t = 1 data, x_t = (1 - t) x0 + t x1) and a network s_theta(x_t, t, d) that moves x_t by one step
of size d: x_{t+d} ~ x_t + d s_theta(x_t, t, d). So s_theta(x, t, d) = v_{t,t+d}(x), and
d -> 0 is the diagonal v_{t,t} (the flow-matching velocity). Their self-consistency
s(x_t, t, 2d) = [s(x_t, t, d) + s(x'_{t+d}, t + d, d)] / 2, x'_{t+d} = x_t + d s(x_t, t, d), reads for a
step D = 2d from s, with the midpoint m = s + D/2 and t = s + D:

    target = sg ½ [ v_{s,m}(x) + v_{m,t}(x + (D/2) v_{s,m}(x)) ],   loss_i = |v_{s,t}(I_s) - target|^2,

which is B25's PSD-M (gamma = 1/2, the semigroup identity P5' in v-form) restricted to dyadic
steps. Steps: D = 2^-k with k uniform in {0, ..., levels - 1} (levels = log2 of the finest number of
steps; the paper's 128 steps is levels = 7, whose targets use half-steps down to 2^-7); start
times on the grid s in {0, D, ..., 1 - D} (``grid=True``, as the paper) or s ~ U[0, 1 - D].
The rest of the batch (``diag_fraction``, the paper's 3/4) carries flow matching at d = 0 (term
``diag_fm``). The paper treats its smallest step 1/128 as the flow-matching velocity; with
``finest="velocity"`` half-steps of size <= 2^-levels use the diagonal v_{s,s} (two Euler steps,
O(D^2) away from the flow map); the default ``finest="map"`` queries v_{s,s+D/2} itself, so the
residual vanishes identically at the true map. Targets come from the current parameters under
stop-gradient (the paper's code uses an EMA teacher; B25's code and this workbench do not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.times import expand_as_state
from ..core.validation import check_positive_int
from ..flows.interpolants import LinearInterpolant
from .base import ObjectiveResult
from .samplers import uniform
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

__all__ = ["DyadicSampler", "Shortcut"]


@dataclass(frozen=True)
class DyadicSampler:
    """(s, t = s + 2^-k) with k uniform in {0, ..., levels - 1}; s on the grid of multiples of the step
    (``grid``) or uniform on [0, 1 - 2^-k]; the diagonal time is uniform on [0, 1]."""

    levels: int = 7
    grid: bool = True

    def __post_init__(self) -> None:
        check_positive_int(self.levels, "levels")
        if not isinstance(self.grid, bool):
            raise TypeError(f"grid must be a bool, got {type(self.grid).__name__}")

    def sample(self, n, generator=None, dtype=torch.float64, device=None):
        k = torch.floor(self.levels * uniform(n, generator, dtype, device)).clamp_max(self.levels - 1)
        step = torch.pow(torch.full_like(k, 0.5), k)
        a = uniform(n, generator, dtype, device)
        if self.grid:
            s = torch.floor(a / step).clamp_max(torch.round(1.0 / step) - 1) * step
        else:
            s = a * (1.0 - step)
        return s, s + step

    def sample_diagonal(self, n, generator=None, dtype=torch.float64, device=None):
        return uniform(n, generator, dtype, device)


@dataclass(frozen=True)
class Shortcut:
    """"shortcut": shortcut-model self-consistency on dyadic steps plus flow matching (module docstring):

        loss_i = w( | v_{s,s+D}(I_s) - sg ½[ v_{s,m}(I_s) + v_{m,s+D}(I_s + (D/2) v_{s,m}(I_s)) ] |^2 ),  m = s + D/2.

    Fields: ``levels`` (finest step 2^-levels for the half-steps, default 7), ``grid``,
    ``finest`` ("map" or "velocity", see the module docstring), ``diag_fraction`` (default 0.75),
    ``interpolant``, ``weighting``. Terms: ``shortcut`` and ``diag_fm``. aux: ``target_norm``,
    ``raw_loss``, ``weight``. Explicit ``times`` may be any s < t (the target then is PSD-M).
    """

    name: str = "shortcut"
    interpolant: object = LinearInterpolant()
    levels: int = 7
    grid: bool = True
    finest: str = "map"
    diag_fraction: float = 0.75
    weighting: object = Weighting()

    requires_teacher: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_choice(self.finest, "finest", ("map", "velocity"))
        normalise_fields(self)

    def split_config(self) -> SplitConfig:
        """Dyadic steps D = 2^-k from ``levels`` and ``grid``."""
        return SplitConfig.of(self, sampler=DyadicSampler(self.levels, self.grid))

    def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, _ = interpolate(self.interpolant, s, x0, x1)
        half = 0.5 * (t - s)
        m = s + half
        if self.finest == "velocity":
            fine = half <= 0.5**self.levels * (1.0 + 1e-9)
            end1, end2 = torch.where(fine, s, m), torch.where(fine, m, t)
        else:
            end1, end2 = m, t
        with torch.no_grad():
            v1 = model.average_velocity(s, end1, x_s)
            x_m = x_s + expand_as_state(half, x_s) * v1
            v2 = model.average_velocity(m, end2, x_m)
            target = (0.5 * (v1 + v2)).detach()
        raw = squared_error(model.average_velocity(s, t, x_s), target)
        return OffDiagonal(raw=raw, aux={"target_norm": norm(target)}, u=m).named("shortcut")

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,) for data x1 (batch, dim); ``x0`` / ``times`` fix noise and times."""
        return evaluate_split(self, model, x1, generator, x0=x0, times=times)
