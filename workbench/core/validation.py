"""Input validation with messages that name the argument, the expectation and the fix.

Checks that need the *values* of a tensor (finiteness, ranges) cannot run inside
``torch.func.vmap``; code that vmaps over the contract wraps the call in
:func:`value_checks_disabled`.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

_VALUE_CHECKS = contextvars.ContextVar("workbench_value_checks", default=True)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@contextlib.contextmanager
def value_checks_disabled() -> Iterator[None]:
    """Skip data-dependent checks (needed under ``torch.func.vmap``); shape/dtype checks remain."""
    token = _VALUE_CHECKS.set(False)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def value_checks_enabled() -> bool:
    return _VALUE_CHECKS.get()


def check_tensor(x: object, name: str) -> torch.Tensor:
    """x must be a floating-point torch.Tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(x).__name__}; wrap it with torch.as_tensor(...)"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float32 or float64), got {x.dtype}; "
            f"convert with {name}.to(torch.float64)"
        )
    return x


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise ValueError if x holds NaN or inf (skipped when value checks are disabled)."""
    if value_checks_enabled() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {n_bad} non-finite value(s) (NaN or inf); expected finite numbers")
    return x


def check_state(x: object, dim: int | None, name: str = "x") -> torch.Tensor:
    """x must be a finite floating tensor of shape (batch, dim) (or (batch, *event) if dim is None)."""
    x = check_tensor(x, name)
    if dim is not None:
        if x.ndim != 2 or x.shape[-1] != dim:
            raise ValueError(f"{name} must have shape (batch, {dim}), got {tuple(x.shape)}")
    elif x.ndim < 2:
        raise ValueError(f"{name} must have shape (batch, *event), got {tuple(x.shape)}")
    return check_finite(x, name)


def check_positive_int(n: object, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return n


def check_probability_vector(w: torch.Tensor, name: str = "weights") -> torch.Tensor:
    """w must be 1-D, non-negative, finite and sum to 1 (to 1e-6 relative)."""
    if w.ndim != 1 or w.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {tuple(w.shape)}")
    check_finite(w, name)
    if bool((w < 0).any()):
        raise ValueError(f"{name} must be non-negative, got {w.tolist()}")
    total = float(w.sum())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1, got sum {total!r}; normalise with w / w.sum()")
    return w
