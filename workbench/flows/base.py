"""Shared machinery of the analytic flows: validation, parameter casting, marginal sampling.

An analytic flow is the probability flow of the interpolant I_t = alpha_t x0 + beta_t x1 with
x0 ~ N(0, I) and x1 ~ the flow's data law. Each concrete flow supplies ``_velocity``,
``_flow_map``, ``_log_prob`` and ``sample_data``; the public methods validate inputs, broadcast
times and follow the dtype and device of x. Concrete flows are not subclassed again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.times import broadcast_time, expand_as_state
from ..core.tolerances import eps
from ..core.validation import check_sampling_args, check_state, value_checks_enabled
from .interpolants import Interpolant, get_interpolant

#: how far short of t = 1 sampling and evaluation stop for flows singular at the data end
DATA_END_MARGIN = 1e-3


def data_end_time(flow: object) -> float:
    """The last time at which one-step maps of ``flow`` are evaluated: 1, or 1 - DATA_END_MARGIN
    when the flow is singular at the data end (atoms, circles: alpha_1 = 0)."""
    return 1.0 - DATA_END_MARGIN if getattr(flow, "singular_at_data", False) else 1.0


def at_data_end(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """alpha_t <= 4 eps beta_t: the noise is below rounding (trig gives alpha_1 = cos(pi/2) = 6e-17, not 0)."""
    return alpha <= 4 * eps(alpha.dtype) * beta


def check_not_data_end(flow: object, t: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` if a flow singular at the data end (atoms, circles: alpha_1 = 0, no
    density) is asked about a time whose alpha is 0 to rounding. The message quotes
    :func:`data_end_time`, the last time the workbench itself evaluates such a flow at."""
    if not (getattr(flow, "singular_at_data", False) and value_checks_enabled()):
        return
    ip = flow.interpolant
    if bool(at_data_end(ip.alpha(t), ip.beta(t)).any()):
        raise ValueError(
            f"{name} = 1 is singular for {type(flow).__name__} (alpha_{name} is 0 to rounding: its data law has "
            f"atoms or lives on circles, no density there); use {name} <= {data_end_time(flow)} "
            f"(data_end_time, 1 - DATA_END_MARGIN)"
        )


class AnalyticFlow:
    """Base of the analytic flows; see the module docstring."""

    dim: int
    #: True when the data law has atoms (or lives on a null set), so alpha_t = 0 (t = 1) is singular.
    singular_at_data: bool = False

    def __init__(self, dim: int, interpolant: object = None) -> None:
        self.dim = dim
        self.interpolant: Interpolant = get_interpolant(interpolant)
        self._cache: dict[tuple[str, torch.dtype, torch.device], object] = {}

    # -- parameters follow the input --------------------------------------------------------------
    def _cast(self, key: str, make: Callable[[], object], like: torch.Tensor):
        """Cache of float64 parameters cast to like's dtype and device."""
        k = (key, like.dtype, like.device)
        if k not in self._cache:
            val = make()
            if isinstance(val, torch.Tensor):
                val = val.to(dtype=like.dtype, device=like.device)
            elif isinstance(val, (tuple, list)):
                val = type(val)(v.to(dtype=like.dtype, device=like.device) for v in val)
            self._cache[k] = val
        return self._cache[k]

    def _check_regular(self, t: torch.Tensor, name: str) -> None:
        check_not_data_end(self, t, name)

    # -- public contract --------------------------------------------------------------------------
    def velocity(self, t: object, x: torch.Tensor) -> torch.Tensor:
        """b_t(x) = E[alpha'_t x0 + beta'_t x1 | I_t = x]; x (batch, dim), t float/0-d/(batch,)."""
        x = check_state(x, self.dim)
        tb = broadcast_time(t, x, "t")
        self._check_regular(tb, "t")
        return self._velocity(tb, x)

    def flow_map(self, s: object, t: object, x: torch.Tensor) -> torch.Tensor:
        """X_{s,t}(x): the solution at time t of dx/dt = b_t(x) started from x at time s (t < s allowed)."""
        x = check_state(x, self.dim)
        sb = broadcast_time(s, x, "s")
        tb = broadcast_time(t, x, "t")
        self._check_regular(sb, "s")
        return self._flow_map(sb, tb, x)

    def log_prob(self, t: object, x: torch.Tensor) -> torch.Tensor:
        """log p_t(x), shape (batch,), where p_t is the law of I_t."""
        x = check_state(x, self.dim)
        tb = broadcast_time(t, x, "t")
        self._check_regular(tb, "t")
        return self._log_prob(tb, x)

    def sample_marginal(
        self,
        t: object,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """n samples of p_t = law(alpha_t x0 + beta_t x1), shape (n, dim), in ``dtype`` on ``device`` (default:
        the generator's device, else CPU); every random number comes from ``generator``."""
        n, dtype, dev = check_sampling_args(n, generator, dtype, device)
        x1 = self._sample_data(n, generator, dtype, dev)
        z = torch.randn(x1.shape, dtype=dtype, device=x1.device, generator=generator)
        tb = broadcast_time(t, x1, "t")
        te = expand_as_state(tb, x1)
        return self.interpolant.alpha(te) * z + self.interpolant.beta(te) * x1

    def sample_data(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """n samples of the data law p_1 (the law of x1), shape (n, dim), in ``dtype`` on ``device``
        (default: the generator's device, else CPU)."""
        n, dtype, dev = check_sampling_args(n, generator, dtype, device)
        return self._sample_data(n, generator, dtype, dev)

    # -- to be supplied -------------------------------------------------------------------------
    def _velocity(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _flow_map(self, s: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _log_prob(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _sample_data(self, n: int, generator: torch.Generator | None, dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, interpolant={self.interpolant.name!r})"


def as_param(value: object, name: str, *, ndim: int | None = None) -> torch.Tensor:
    """Convert a parameter to a finite float64 CPU tensor, checking its number of dimensions."""
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu().clone()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be array-like of numbers, got {type(value).__name__}") from err
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t
