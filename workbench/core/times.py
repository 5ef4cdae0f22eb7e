"""One helper broadcasts times against a batch of states.

A time is a Python float, a 0-d tensor or a (batch,) tensor. It comes back as a (batch,) tensor in
the dtype and on the device of x (a float is converted there, a tensor is checked and cast).
"""

from __future__ import annotations

import torch

from .validation import check_finite, value_checks_enabled


def broadcast_time(
    t: object,
    x: torch.Tensor,
    name: str = "t",
    *,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
) -> torch.Tensor:
    """Return t as a (batch,) tensor with x's dtype and device, validated to lie in [lo, hi]."""
    batch = x.shape[0]
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a float or a tensor, got bool")
    if isinstance(t, (int, float)):
        out = torch.full((batch,), float(t), dtype=x.dtype, device=x.device)
    elif isinstance(t, torch.Tensor):
        if not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")
        if t.ndim == 0:
            out = t.to(dtype=x.dtype, device=x.device).expand(batch)
        elif t.ndim == 1 and t.shape[0] == batch:
            out = t.to(dtype=x.dtype, device=x.device)
        else:
            raise ValueError(
                f"{name} must be a float, a 0-d tensor or a ({batch},) tensor matching the batch of x, "
                f"got shape {tuple(t.shape)}"
            )
    else:
        raise TypeError(f"{name} must be a float or a torch.Tensor, got {type(t).__name__}")
    check_finite(out, name)
    if value_checks_enabled():
        if lo is not None and bool((out < lo).any()):
            raise ValueError(f"{name} must lie in [{lo}, {hi}], got min {float(out.min())!r}")
        if hi is not None and bool((out > hi).any()):
            raise ValueError(f"{name} must lie in [{lo}, {hi}], got max {float(out.max())!r}")
    return out


def expand_as_state(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a (batch,) time as (batch, 1, ..., 1) so it broadcasts against x of shape (batch, *event)."""
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))
