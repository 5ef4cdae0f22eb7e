"""Per-sample loss weightings, applied to the raw per-sample squared error l (batch,).

| kind             | weighted loss                          | source                                   |
|------------------|----------------------------------------|------------------------------------------|
| ``none``         | l                                      |                                          |
| ``learned``      | exp(-w) l + w,  w = model.loss_weight  | B25 code (EDM2 uncertainty weighting)    |
| ``adaptive``     | l / sg(l + c)^p                        | MeanFlow (c = 1e-3), iSD (c = 1e-2, p = 1) |
| ``pseudo_huber`` | sqrt(l + c^2) - c                      | iCT (c = 0.00054 sqrt(d)); iSD (c = 5)     |

``sg`` is ``.detach()``: the adaptive weight rescales the gradient of each sample by
1 / (l + c)^p without being differentiated itself (its gradient is p-dependent: l^(1-p) for c -> 0).
For ``learned`` the weight w(s, t) is the model's learned log-variance, evaluated at the sample's
(s, t) (w_{t,t} on diagonal samples); a model without ``loss_weight`` has w = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.validation import check_tensor
from .base import TimeBatch

__all__ = ["KINDS", "Weighting", "apply_weighting", "get_weighting", "gradient_weight"]

KINDS = ("none", "learned", "adaptive", "pseudo_huber")

#: default c per kind (pseudo_huber's None means 0.00054 * sqrt(d), d = numel per sample, as iCT).
DEFAULT_C = {"adaptive": 1e-3, "pseudo_huber": None}


@dataclass(frozen=True)
class Weighting:
    """A weighting configuration: ``kind`` in KINDS, constant ``c`` (None: the kind's default) and
    power ``p`` (adaptive only). Callable as ``weighting(raw, model, times, x)``."""

    kind: str = "none"
    c: float | None = None
    p: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"weighting kind must be one of {KINDS}, got {self.kind!r}")
        if self.c is not None and not (isinstance(self.c, (int, float)) and math.isfinite(self.c) and self.c > 0):
            raise ValueError(f"weighting c must be a finite number > 0 (or None for the default), got {self.c!r}")
        if not (isinstance(self.p, (int, float)) and math.isfinite(self.p) and self.p >= 0):
            raise ValueError(f"weighting p must be a finite number >= 0, got {self.p!r}")

    def __call__(self, raw, model=None, times=None, x=None) -> torch.Tensor:
        return apply_weighting(raw, self, model, times, x)


def get_weighting(spec: object) -> Weighting:
    """A Weighting from an instance, a kind name, or None ('none')."""
    if spec is None:
        return Weighting()
    if isinstance(spec, Weighting):
        return spec
    if isinstance(spec, str):
        return Weighting(spec)
    raise TypeError(f"weighting must be a Weighting, one of {KINDS} or None, got {type(spec).__name__}")


def apply_weighting(
    raw: torch.Tensor,
    kind: object = "none",
    model: object = None,
    times: object = None,
    x: torch.Tensor | None = None,
    **params: float,
) -> torch.Tensor:
    """Weighted per-sample loss (batch,) from the raw per-sample loss l = raw (batch,), l >= 0.

    kind: a name in KINDS or a :class:`Weighting`; ``params`` (c, p) override its fields.
    ``learned`` needs ``model`` and ``times``: a :class:`TimeBatch` or a pair (s, t) of (batch,)
    tensors (x is passed on to ``loss_weight``);
    ``pseudo_huber`` with the default c needs x (batch, *event) for d.
    """
    w = get_weighting(kind)
    if params:
        unknown = set(params) - {"c", "p"}
        if unknown:
            raise TypeError(f"apply_weighting got unknown parameter(s) {sorted(unknown)}; expected c and/or p")
        w = Weighting(w.kind, params.get("c", w.c), params.get("p", w.p))
    raw = check_tensor(raw, "raw")
    if raw.ndim != 1:
        raise ValueError(f"raw must be a per-sample loss of shape (batch,), got {tuple(raw.shape)}")
    if w.kind == "none":
        return raw
    if w.kind == "learned":
        if model is None or times is None:
            raise ValueError("weighting 'learned' needs model and times (the learned log-variance w(s, t))")
        if isinstance(times, TimeBatch):
            s, t = times.s, times.t
        elif isinstance(times, (tuple, list)) and len(times) == 2:
            s, t = times
        else:
            raise TypeError(f"times must be a TimeBatch or a pair (s, t) of (batch,) tensors, got {type(times).__name__}")
        like = x if x is not None else raw[:, None]
        lw = getattr(model, "loss_weight", None)
        logvar = torch.zeros_like(raw) if lw is None else lw(s, t, like).to(raw.dtype)
        if logvar.shape != raw.shape:
            raise ValueError(f"model.loss_weight must return shape {tuple(raw.shape)}, got {tuple(logvar.shape)}")
        return torch.exp(-logvar) * raw + logvar
    c = w.c if w.c is not None else DEFAULT_C[w.kind]
    if w.kind == "adaptive":
        return raw / (raw.detach() + c) ** w.p
    # pseudo_huber
    if c is None:
        if x is None:
            raise ValueError("weighting 'pseudo_huber' with the default c = 0.00054 sqrt(d) needs x to know d; pass x or c")
        c = 0.00054 * math.sqrt(x[0].numel())
    return torch.sqrt(raw + c * c) - c


def gradient_weight(weighting: object, raw: torch.Tensor, model: object = None, times: object = None,
                    x: torch.Tensor | None = None) -> torch.Tensor:
    """d loss_i / d raw_i of a weighting, detached, shape (batch,): the factor by which the weighting
    rescales each sample's gradient (adaptive: 1 / (l + c)^p; learned: exp(-w); pseudo_huber:
    1 / (2 sqrt(l + c^2)); none: 1). Arguments as :func:`apply_weighting`."""
    w = get_weighting(weighting)
    if w.kind == "none":
        return torch.ones_like(raw).detach()
    with torch.enable_grad():
        r = raw.detach().clone().requires_grad_(True)
        out = apply_weighting(r, w, model, times, x)
        (grad,) = torch.autograd.grad(out.sum(), r)
    return grad.detach()
