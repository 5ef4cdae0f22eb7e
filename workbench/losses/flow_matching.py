"""Diagonal flow matching (B25's L_b, the tangent condition v_{t,t} = b_t of its lemma):

    L_b = E_t E_{x0, x1} | v_{t,t}(I_t) - dI_t/dt |^2,   I_t = alpha_t x0 + beta_t x1,  x0 ~ N(0, I).

Its minimum over v is not zero but the irreducible variance E|dI_t/dt - b_t(I_t)|^2, reached at
v_{t,t} = b_t = E[dI_t/dt | I_t]. The batch machinery it shares with every split objective lives in
``split``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.contract import TimeSampler, check_implements
from ..flows.interpolants import LinearInterpolant
from .base import ObjectiveResult, TimeBatch
from .samplers import UniformTriangle
from .split import OffDiagonal, SplitConfig, evaluate_split, normalise_fields
from .weighting import Weighting

__all__ = ["FlowMatching"]


@dataclass(frozen=True)
class FlowMatching:
    """"fm": diagonal flow matching on every sample (B25's L_b):

        loss_i = w( | v_{t,t}(I_t) - dI_t/dt |^2 ),   t ~ sampler.sample_diagonal, s = t.

    Trains only the tangent v_{t,t} = b_t; terms: ``diag_fm``. Fields: ``interpolant``, ``sampler``
    (its diagonal law; default U[0, 1]), ``weighting``.
    """

    name: str = "fm"
    interpolant: object = LinearInterpolant()
    sampler: object = UniformTriangle()
    weighting: object = Weighting()

    requires_teacher: ClassVar[bool] = False

    def __post_init__(self) -> None:
        normalise_fields(self)

    def split_config(self) -> SplitConfig:
        """Every sample diagonal, t from the sampler's diagonal law."""
        return SplitConfig.of(self, diag_fraction=1.0, sampler=_DiagonalOnly(self.sampler))

    def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        """No off-diagonal term: every sample is diagonal (the batch has no off-diagonal samples)."""
        return OffDiagonal(raw=x1.new_zeros(0))

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,) for data x1 (batch, *event); ``x0`` / ``times`` fix the noise and
        the times (all diagonal) instead of drawing them."""
        if times is not None and not isinstance(times, TimeBatch):
            raise TypeError(f"times must be a TimeBatch or None, got {type(times).__name__}")
        if times is not None and not bool(torch.as_tensor(times.diagonal).all()):
            raise ValueError("FlowMatching takes only diagonal times (times.diagonal all True)")
        return evaluate_split(self, model, x1, generator, x0=x0, times=times)


@dataclass(frozen=True)
class _DiagonalOnly:
    """Adapter: a sampler used for its diagonal law only."""

    base: object

    def __post_init__(self) -> None:
        check_implements(self.base, TimeSampler, "sampler")

    def sample(self, n, generator=None, dtype=torch.float64, device=None):  # pragma: no cover - unused
        t = self.base.sample_diagonal(n, generator, dtype, device)
        return t, t

    def sample_diagonal(self, n, generator=None, dtype=torch.float64, device=None):
        return self.base.sample_diagonal(n, generator, dtype, device)
