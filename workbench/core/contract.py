"""The flow contract shared by analytic flows and neural flow maps.

| maths                                   | code                         |
|-----------------------------------------|------------------------------|
| X_{s,t}(x): move x from time s to time t | ``flow.flow_map(s, t, x)``   |
| b_t(x): probability-flow velocity        | ``flow.velocity(t, x)``      |
| v_{s,t}(x), X = x + (t - s) v            | ``model.average_velocity``   |

Times broadcast from a Python float, a 0-d tensor or a (batch,) tensor; x is (batch, *event).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

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
class InterpolantFlow(Flow, Protocol):
    """A flow of the interpolant I_t = alpha_t x0 + beta_t x1: it carries ``interpolant`` (alpha_t, beta_t
    and their derivatives), as every analytic flow does."""

    interpolant: Any


@runtime_checkable
class DataSampler(Protocol):
    """A law of x1 (the data, t = 1) that can be sampled: ``sample_data(n, generator, *, dtype, device)``."""

    dim: int

    def sample_data(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> torch.Tensor: ...


@runtime_checkable
class Density(Protocol):
    """Anything with a marginal log-density ``log_prob(t, x)`` of shape (batch,)."""

    def log_prob(self, t: TimeLike, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class FlowMapModel(Flow, Protocol):
    """A flow map parametrised by its average velocity: X_{s,t}(x) = x + (t - s) v_{s,t}(x).

    ``velocity(t, x)`` is the diagonal v_{t,t}(x) (the tangent condition makes it b_t).
    """

    def average_velocity(self, s: TimeLike, t: TimeLike, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class TimeSampler(Protocol):
    """A law of training times: pairs (s, t) with s <= t from ``sample(n, generator, dtype, device)`` and
    diagonal times from ``sample_diagonal(n, generator, dtype, device)``, each (n,)."""

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
               device: Any = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def sample_diagonal(self, n: int, generator: torch.Generator | None = None,
                        dtype: torch.dtype = torch.float64, device: Any = None) -> torch.Tensor: ...


@runtime_checkable
class IntermediateSampler(Protocol):
    """A law of the intermediate time u = gamma s + (1 - gamma) t: ``sample_gamma(n, generator, dtype,
    device)`` gives gamma (n,), ``sample(s, t, generator)`` gives u (batch,)."""

    def sample_gamma(self, n: int, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float64, device: Any = None) -> torch.Tensor: ...

    def sample(self, s: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...


def protocol_members(protocol: type) -> list[str]:
    """The public attributes and methods a runtime-checkable protocol requires, sorted."""
    names: set[str] = set()
    for base in protocol.__mro__:
        if getattr(base, "_is_protocol", False) and base is not Protocol:
            names |= {k for k in vars(base) if not k.startswith("_")}
            names |= set(getattr(base, "__annotations__", {}))
    return sorted(names)


def check_implements(obj: object, protocol: type, name: str, *, also: tuple[str, ...] = ()) -> Any:
    """obj must implement ``protocol`` (one of the runtime-checkable protocols above) and have the
    attributes ``also``: TypeError naming ``name``, the protocol and the members obj lacks otherwise.
    Returns obj. The one contract check of the project (flows, models, losses, diagnostics)."""
    missing = [] if isinstance(obj, protocol) else [m for m in protocol_members(protocol) if not hasattr(obj, m)]
    missing += [m for m in also if not hasattr(obj, m)]
    if missing:
        wanted = ", ".join([*protocol_members(protocol), *also])
        raise TypeError(f"{name} must implement {protocol.__name__} ({wanted}); "
                        f"{type(obj).__name__} lacks {', '.join(missing)}")
    return obj
