"""Neural flow maps X_{s,t}(x) = x + (t - s) v_theta(s, t, x), so X_{s,s} = id exactly.

The model implements the flow contract (``velocity``, ``flow_map``, ``dim``) plus
``average_velocity``; every identity residual of ``workbench.flows.identities`` applies to it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.times import broadcast_time, expand_as_state
from ..core.validation import check_dtype_matches, check_state


class NeuralFlowMap(nn.Module):
    """v_{s,t}(x) = c_out * backbone(c_in * x, s, t - s); X_{s,t}(x) = x + (t - s) v_{s,t}(x).

    The model computes in its parameters' dtype: an ``x`` of another floating dtype is refused with a
    TypeError naming it (cast x, or the model with ``model.to(dtype)``); times are cast to x's dtype.
    ``data_std`` sets the preconditioning c_in = 1 / data_std, c_out = data_std (B25's
    ``rescale``); 1.0 means none. ``learned_weight`` adds a head w(s, t) for B25's uncertainty
    weighting exp(-w) * loss + w.
    """

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        *,
        data_std: float = 1.0,
        learned_weight: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be a torch.nn.Module forward(x, s, dt), got {type(backbone).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if isinstance(data_std, bool) or not isinstance(data_std, (int, float)) or not (math.isfinite(data_std) and data_std > 0):
            raise ValueError(f"data_std must be a finite number > 0, got {data_std!r}")
        self.backbone = backbone
        self.dim = dim
        self.data_std = float(data_std)
        self.learned_weight = bool(learned_weight)
        if self.learned_weight:
            from .embeddings import TimeEmbedding

            self.weight_embed = TimeEmbedding("sinusoidal", n_freq=8)
            self.weight_linear = nn.Linear(self.weight_embed.out_dim, 1)
            nn.init.zeros_(self.weight_linear.weight)
            nn.init.zeros_(self.weight_linear.bias)

    @property
    def dtype(self) -> torch.dtype | None:
        """The floating dtype the model computes in (its parameters'); None for a backbone without parameters."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return None

    def _state(self, x: object) -> torch.Tensor:
        """x checked against the contract and against the parameters' dtype (refused, never cast)."""
        x = check_state(x, self.dim)
        dtype = self.dtype
        if dtype is not None:
            check_dtype_matches(x, "x", dtype, f"{type(self).__name__}'s parameters")
        return x

    def _times(self, s, t, x):
        return broadcast_time(s, x, "s"), broadcast_time(t, x, "t")

    def _v(self, sb: torch.Tensor, tb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.data_std * self.backbone(x / self.data_std, sb, tb - sb)

    def average_velocity(self, s, t, x: torch.Tensor) -> torch.Tensor:
        """v_{s,t}(x) = c_out backbone(c_in x, s, t - s): x (batch, dim), s, t float / 0-d / (batch,) in
        [0, 1]; returns the shape of x."""
        x = self._state(x)
        sb, tb = self._times(s, t, x)
        return self._v(sb, tb, x)

    def flow_map(self, s, t, x: torch.Tensor) -> torch.Tensor:
        """X_{s,t}(x) = x + (t - s) v_{s,t}(x) (B25's parametrisation), shape of x; X_{s,s} = id exactly."""
        x = self._state(x)
        sb, tb = self._times(s, t, x)
        return x + expand_as_state(tb - sb, x) * self._v(sb, tb, x)

    def velocity(self, t, x: torch.Tensor) -> torch.Tensor:
        """b_t(x) = v_{t,t}(x) (the tangent condition)."""
        return self.average_velocity(t, t, x)

    def loss_weight(self, s, t, x: torch.Tensor) -> torch.Tensor:
        """Learned log-variance w(s, t) = Linear(embed(s, t)) of B25's uncertainty weighting (as in
        B25 code: raw s and t, w_{t,t} on the diagonal), shape (batch,); zero when the head is off."""
        x = self._state(x)
        sb, tb = self._times(s, t, x)
        if not self.learned_weight:
            return torch.zeros_like(sb)
        return self.weight_linear(self.weight_embed(sb, tb).to(x.dtype)).squeeze(-1)
