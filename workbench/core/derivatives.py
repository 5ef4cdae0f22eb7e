"""Directional derivatives of functions of tensors: forward-mode AD with a finite-difference twin.

``directional_derivative(fn, primals, tangents)`` returns (fn(*primals), d/dh fn(primals + h tangents)|_{h=0}).

* ``method="jvp"``: ``torch.func.jvp`` (exact to round-off, one forward pass at about 2-3x cost).
* ``method="fd"``: central difference [fn(p + h v) - fn(p - h v)] / (2h), truncation O(h^2),
  round-off O(eps/h); the default h = eps^(1/3) (``tolerances.fd_step``) balances the two.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.func import jvp

from .tolerances import fd_step

_METHODS = ("jvp", "fd")


def directional_derivative(
    fn: Callable[..., torch.Tensor],
    primals: Sequence[torch.Tensor],
    tangents: Sequence[torch.Tensor],
    *,
    method: str = "jvp",
    eps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, derivative) of fn at primals along tangents; see the module docstring."""
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise ValueError(f"primals and tangents must have the same length, got {len(primals)} and {len(tangents)}")
    for i, (p, v) in enumerate(zip(primals, tangents)):
        if p.shape != v.shape:
            raise ValueError(f"tangents[{i}] must have the shape of primals[{i}] {tuple(p.shape)}, got {tuple(v.shape)}")
    if method == "jvp":
        return jvp(fn, primals, tangents)
    if method == "fd":
        h = fd_step(primals[0].dtype) if eps is None else float(eps)
        if not h > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        plus = fn(*(p + h * v for p, v in zip(primals, tangents)))
        minus = fn(*(p - h * v for p, v in zip(primals, tangents)))
        return fn(*primals), (plus - minus) / (2 * h)
    raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
