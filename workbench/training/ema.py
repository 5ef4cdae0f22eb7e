"""Exponential moving averages of the parameters at several rates (B25: 0.999 and 0.9999).

theta_k <- k theta_k + (1 - k) theta after every applied update, for each rate k; floating
buffers are copied from the online model (they are not averaged). Evaluation in B25 uses the
0.9999 average.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Averaged copies of a model, ``models[rate]`` (frozen, eval mode), one per rate."""

    def __init__(self, model: nn.Module, rates: tuple[float, ...]) -> None:
        for r in rates:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r < 1.0:
                raise ValueError(f"EMA rates must lie in (0, 1), got {r!r}")
        self.rates = tuple(float(r) for r in rates)
        self.models: dict[float, nn.Module] = {}
        for r in self.rates:
            avg = copy.deepcopy(model)
            avg.requires_grad_(False)
            avg.eval()
            self.models[r] = avg

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """theta_k <- k theta_k + (1 - k) theta for every parameter and rate."""
        params = [p.detach() for p in model.parameters()]
        for r, avg in self.models.items():
            mine = list(avg.parameters())
            torch._foreach_mul_(mine, r)
            torch._foreach_add_(mine, params, alpha=1.0 - r)
            for b_avg, b in zip(avg.buffers(), model.buffers()):
                b_avg.copy_(b)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """{str(rate): model state dict} (string keys so the checkpoint holds primitives only)."""
        return {repr(r): avg.state_dict() for r, avg in self.models.items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        if sorted(state) != sorted(repr(r) for r in self.rates):
            raise ValueError(f"EMA state holds rates {sorted(state)}, expected {[repr(r) for r in self.rates]}")
        for r, avg in self.models.items():
            avg.load_state_dict(state[repr(r)])
