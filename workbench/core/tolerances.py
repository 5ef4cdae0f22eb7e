"""Tolerances derived from ``torch.finfo``, never typed in as magic numbers.

Each tolerance is a multiple of the unit round-off eps of the dtype, or a power of it where a
derivative is approximated (central differences balance truncation h^2 against round-off eps/h,
giving an optimal error of order eps^(2/3)).
"""

from __future__ import annotations

import torch


def eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def ulps(dtype: torch.dtype, n: float) -> float:
    """n units of round-off in dtype."""
    return n * eps(dtype)


def fd_step(dtype: torch.dtype, order: int = 2) -> float:
    """Optimal finite-difference step for a central difference of the given order: eps^(1/(order+1))."""
    return eps(dtype) ** (1.0 / (order + 1))


def fd_tol(dtype: torch.dtype, factor: float = 100.0) -> float:
    """Expected accuracy of an optimally stepped central difference, times a safety factor."""
    return factor * eps(dtype) ** (2.0 / 3.0)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-point |a - b| / (1 + |b|), Euclidean norm over all but the batch dimension."""
    diff = (a - b).reshape(a.shape[0], -1).norm(dim=1)
    return diff / (1.0 + b.reshape(b.shape[0], -1).norm(dim=1))
