"""Any flow as a model: ExactFlowMap(flow) exposes average_velocity, so objectives and
diagnostics can be evaluated on the truth.

v_{s,t}(x) = (X_{s,t}(x) - x) / (t - s) for t != s, and v_{t,t}(x) = b_t(x) on the diagonal
(the limit of the secant slope). Off the diagonal the division loses about eps / |t - s| in
relative accuracy, so gaps far below sqrt(eps) are better evaluated on the diagonal.
This module knows nothing about concrete analytic flows: it uses only the flow contract.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.contract import Flow, check_implements
from ..core.times import broadcast_time, expand_as_state
from ..core.validation import check_state


class ExactFlowMap(nn.Module):
    """Wrap a flow (``velocity``, ``flow_map``, ``dim``) as a flow-map model without parameters."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        check_implements(flow, Flow, "flow")
        self.flow = flow
        self.dim = flow.dim
        self.learned_weight = False

    def average_velocity(self, s, t, x: torch.Tensor) -> torch.Tensor:
        """v_{s,t}(x) = (X_{s,t}(x) - x) / (t - s) for t != s, b_t(x) for t = s; x (batch, dim), shape of x."""
        x = check_state(x, self.dim)
        sb, tb = broadcast_time(s, x, "s"), broadcast_time(t, x, "t")
        gap = tb - sb
        on_diag = gap == 0
        safe = torch.where(on_diag, torch.ones_like(gap), gap)
        secant = (self.flow.flow_map(sb, tb, x) - x) / expand_as_state(safe, x)
        if not bool(on_diag.any()):
            return secant
        return torch.where(expand_as_state(on_diag, x), self.flow.velocity(sb, x), secant)

    def flow_map(self, s, t, x: torch.Tensor) -> torch.Tensor:
        """The flow's own X_{s,t}(x)."""
        return self.flow.flow_map(s, t, x)

    def velocity(self, t, x: torch.Tensor) -> torch.Tensor:
        """The flow's own b_t(x) (= v_{t,t}(x))."""
        return self.flow.velocity(t, x)

    def loss_weight(self, s, t, x: torch.Tensor) -> torch.Tensor:
        """No learned weight: w(s, t) = 0, shape (batch,)."""
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
