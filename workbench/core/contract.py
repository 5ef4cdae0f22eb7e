"""The flow contract shared by analytic flows and neural flow maps.

| maths                                   | code                         |
|-----------------------------------------|------------------------------|
| X_{s,t}(x): move x from time s to time t | ``flow.flow_map(s, t, x)``   |
| b_t(x): probability-flow velocity        | ``flow.velocity(t, x)``      |
| v_{s,t}(x), X = x + (t - s) v            | ``model.average_velocity``   |

Times broadcast from a Python float, a 0-d tensor or a (batch,) tensor; x is (batch, *event).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

TimeLike = float | int | torch.Tensor


@runtime_checkable
class Flow(Protocol):
    """Anything that maps points through time: ``velocity(t, x)``, ``flow_map(s, t, x)``, ``dim``."""

    dim: int

    def velocity(self, t: TimeLike, x: torch.Tensor) -> torch.Tensor:
        """b_t(x), shape of x."""
        ...

    def flow_map(self, s: TimeLike, t: TimeLike, x: torch.Tensor) -> torch.Tensor:
        """X_{s,t}(x), shape of x; t < s runs backward."""
        ...


@runtime_checkable
class AnalyticFlowLike(Flow, Protocol):
    """A flow whose marginals are known: it can sample p_t and evaluate log p_t."""

    def sample_marginal(
        self, t: TimeLike, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...

    def log_prob(self, t: TimeLike, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class FlowMapModel(Flow, Protocol):
    """A flow map parametrised by its average velocity: X_{s,t}(x) = x + (t - s) v_{s,t}(x).

    ``velocity(t, x)`` is the diagonal v_{t,t}(x) (the tangent condition makes it b_t).
    """

    def average_velocity(self, s: TimeLike, t: TimeLike, x: torch.Tensor) -> torch.Tensor: ...
