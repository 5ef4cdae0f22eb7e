"""One helper broadcasts times against a batch of states.

A time is a Python float, a 0-d tensor or a (batch,) tensor. It comes back as a (batch,) tensor in
the dtype and on the device of x (a float is converted there, a tensor is checked and cast).
"""

from __future__ import annotations

import torch

from .validation import check_finite, value_checks_enabled


def _check_range(values: torch.Tensor, name: str, lo: float | None, hi: float | None) -> None:
    """Finite and inside [lo, hi], checked on the values as given (before any cast)."""
    check_finite(values, name)
    if value_checks_enabled():
        if lo is not None and bool((values < lo).any()):
            raise ValueError(f"{name} must lie in [{lo}, {hi}], got min {float(values.min())!r}")
        if hi is not None and bool((values > hi).any()):
            raise ValueError(f"{name} must lie in [{lo}, {hi}], got max {float(values.max())!r}")


def broadcast_time(
    t: object,
    x: torch.Tensor,
    name: str = "t",
    *,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
) -> torch.Tensor:
    """Return t as a (batch,) tensor with x's dtype and device, validated to lie in [lo, hi].

    The range is checked on t as given, before it is cast to x's dtype: a time of 1e300 with float32 x
    is refused as out of range (not reported as the inf its cast would give); a time that fits the
    range but not x's dtype cannot occur for finite bounds.
    """
    batch = x.shape[0]
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a float or a tensor, got bool")
    if isinstance(t, (int, float)):
        _check_range(torch.tensor(float(t), dtype=torch.float64), name, lo, hi)
        out = torch.full((batch,), float(t), dtype=x.dtype, device=x.device)
    elif isinstance(t, torch.Tensor):
        if not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")
        if t.ndim == 0:
            out = t.expand(batch)
        elif t.ndim == 1 and t.shape[0] == batch:
            out = t
        else:
            raise ValueError(
                f"{name} must be a float, a 0-d tensor or a ({batch},) tensor matching the batch of x, "
                f"got shape {tuple(t.shape)}"
            )
        _check_range(out, name, lo, hi)
        out = out.to(dtype=x.dtype, device=x.device)
    else:
        raise TypeError(f"{name} must be a float or a torch.Tensor, got {type(t).__name__}")
    if lo is None or hi is None:
        check_finite(out, name)  # an unbounded time may still overflow x's dtype
    return out


def expand_as_state(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a (batch,) time as (batch, 1, ..., 1) so it broadcasts against x of shape (batch, *event)."""
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))
