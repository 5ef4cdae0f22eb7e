"""A flow-map model moved off a base model along a fixed direction by one scalar parameter eps.

    v^eps_{s,t}(x) = v_{s,t}(x) + eps d(s, t, x)
    X^eps_{s,t}(x) = X_{s,t}(x) + (t - s) eps d(s, t, x)

The map is built from the base *map* (not from x + (t - s) v), so an exact base stays exact to
round-off at eps = 0. Used to check that an objective's residual vanishes at the truth and not off
it, and that the expected gradient d/d eps of a loss vanishes at the truth (eps is an
``nn.Parameter``, so ``torch.autograd.grad(loss, model.eps)`` gives it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.contract import FlowMapModel, check_implements
from ..core.times import broadcast_time, expand_as_state
from ..core.validation import check_state

Direction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def smooth_direction(s: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A smooth, generic direction d(s, t, x) = (1 + s + t^2) tanh(x) + (t - s) cos(x) (shape of x).

    Nonlinear in x and not of the special form that would keep the perturbed map the flow of its
    own diagonal (so self-distillation residuals see it)."""
    se, te = expand_as_state(s, x), expand_as_state(t, x)
    return (1.0 + se + te * te) * torch.tanh(x) + (te - se) * torch.cos(x)


class PerturbedFlowMap(nn.Module):
    """``PerturbedFlowMap(base, direction, eps=0.0)``: base moved by eps along direction(s, t, x).

    base: any flow-map model (average_velocity, flow_map, dim); direction: callable (s, t, x) -> a
    tensor of x's shape, with s, t given as (batch,) tensors; eps: the initial value of the scalar
    parameter ``self.eps`` (float64; cast to x's dtype when used).
    """

    def __init__(self, base: nn.Module, direction: Direction = smooth_direction, eps: float = 0.0) -> None:
        super().__init__()
        check_implements(base, FlowMapModel, "base")
        if not callable(direction):
            raise TypeError(f"direction must be a callable (s, t, x) -> tensor, got {type(direction).__name__}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise TypeError(f"eps must be a float, got {type(eps).__name__}")
        self.base = base
        self.direction = direction
        self.dim = base.dim
        self.learned_weight = bool(getattr(base, "learned_weight", False))
        self.eps = nn.Parameter(torch.tensor(float(eps), dtype=torch.float64))

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype the base model computes in (``eps`` is float64 and cast to x's dtype when used)."""
        dtype = getattr(self.base, "dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else None

    def _shift(self, s: object, t: object, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(s, t) as (batch,) tensors and eps d(s, t, x)."""
        sb, tb = broadcast_time(s, x, "s"), broadcast_time(t, x, "t")
        d = self.direction(sb, tb, x)
        if d.shape != x.shape:
            raise ValueError(f"direction must return a tensor of x's shape {tuple(x.shape)}, got {tuple(d.shape)}")
        return sb, tb, self.eps.to(dtype=x.dtype, device=x.device) * d

    def average_velocity(self, s, t, x: torch.Tensor) -> torch.Tensor:
        """v^eps_{s,t}(x) = v_{s,t}(x) + eps d(s, t, x), shape of x."""
        x = check_state(x, self.dim)
        sb, tb, shift = self._shift(s, t, x)
        return self.base.average_velocity(sb, tb, x) + shift

    def flow_map(self, s, t, x: torch.Tensor) -> torch.Tensor:
        """X^eps_{s,t}(x) = X_{s,t}(x) + (t - s) eps d(s, t, x), shape of x."""
        x = check_state(x, self.dim)
        sb, tb, shift = self._shift(s, t, x)
        return self.base.flow_map(sb, tb, x) + expand_as_state(tb - sb, x) * shift

    def velocity(self, t, x: torch.Tensor) -> torch.Tensor:
        """v^eps_{t,t}(x) = v_{t,t}(x) + eps d(t, t, x)."""
        return self.average_velocity(t, t, x)

    def loss_weight(self, s, t, x: torch.Tensor) -> torch.Tensor:
        """The base's learned log-variance (zeros if it has none), shape (batch,)."""
        lw = getattr(self.base, "loss_weight", None)
        if lw is None:
            return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return lw(s, t, x)
