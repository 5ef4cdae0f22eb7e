"""Types every objective shares: the realised times of a batch, the objective's result and the
objective protocol.

An objective is a frozen dataclass, callable as ``objective(model, x1, generator=None, *, x0=None,
times=None)``: it draws the base noise x0 and the times itself (unless given) and returns an
:class:`ObjectiveResult`. How to write one: ``workbench.losses.registry``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class TimeBatch:
    """Realised times of one batch, all (batch,): from-time s, to-time t, optional intermediate u,
    and ``diagonal`` (bool) marking the samples that carry the diagonal (s = t) term."""

    s: torch.Tensor
    t: torch.Tensor
    diagonal: torch.Tensor
    u: torch.Tensor | None = None

    @property
    def gap(self) -> torch.Tensor:
        """t - s, shape (batch,)."""
        return self.t - self.s


@dataclass(frozen=True)
class ObjectiveResult:
    """Per-sample loss (batch,), named per-term values and the realised times.

    ``terms[name]`` is a per-sample tensor over the samples that carry that term (the diagonal
    term, whose name contains ``diag``, over ``times.diagonal``; off-diagonal terms over the rest;
    an objective whose term is carried by every sample says so, e.g. iSD's ``diag_fm`` anchor with
    ``anchor="every"`` spans the batch, in batch order); consumers average terms, never index them
    by ``times``;
    ``loss`` is the per-sample total actually minimised (after weighting). ``aux`` holds
    detached per-sample diagnostics (tangent norms, raw unweighted losses, ...).
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    times: TimeBatch
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Objective(Protocol):
    """``objective(model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult``: draws
    x0 ~ N(0, I) and the times with ``generator`` (unless given) and returns the per-sample loss of
    data x1 (batch, *event). ``requires_teacher`` (a class attribute) says whether it needs a
    ``teacher`` field set before it can run."""

    name: str
    requires_teacher: ClassVar[bool]

    def __call__(
        self,
        model: object,
        x1: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        x0: torch.Tensor | None = None,
        times: TimeBatch | None = None,
    ) -> ObjectiveResult: ...
