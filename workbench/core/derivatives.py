"""Directional derivatives of functions of tensors: forward-mode AD with a finite-difference twin.

``directional_derivative(fn, primals, tangents)`` returns (fn(*primals), d/dh fn(primals + h tangents)|_{h=0}).

* ``method="jvp"``: ``torch.func.jvp`` (exact to round-off, one forward pass at about 2-3x cost).
* ``method="fd"``: central difference [fn(p + h v) - fn(p - h v)] / (2h), truncation O(h^2),
  round-off O(eps/h); the default h = eps^(1/3) (``tolerances.fd_step``) balances the two.
  The stencil may leave [0, 1] in time by h, so it runs with value checks disabled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.func import jvp

from .tolerances import fd_step
from .validation import check_tensor, value_checks_disabled

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
    if not primals:
        raise ValueError("primals must be non-empty")
    for i, (p, v) in enumerate(zip(primals, tangents)):
        check_tensor(p, f"primals[{i}]")
        check_tensor(v, f"tangents[{i}]")
        if p.shape != v.shape:
            raise ValueError(f"tangents[{i}] must have the shape of primals[{i}] {tuple(p.shape)}, got {tuple(v.shape)}")
    if method == "jvp":
        return jvp(fn, primals, tuple(v.to(dtype=p.dtype) for p, v in zip(primals, tangents)))
    if method == "fd":
        h = fd_step(primals[0].dtype) if eps is None else float(eps)
        if not h > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        value = fn(*primals)
        # the stencil may step outside [0, 1] in time by h: the caller has validated the primals
        with value_checks_disabled():
            plus = fn(*(p + h * v for p, v in zip(primals, tangents)))
            minus = fn(*(p - h * v for p, v in zip(primals, tangents)))
        return value, (plus - minus) / (2 * h)
    raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
