"""Optimiser, learning-rate schedule and gradient statistics/clipping.

B25's released training code uses optax.radam (b1 0.9, b2 0.999, eps 1e-8) after
clip_by_global_norm, and the schedule lr(k) = lr0 / sqrt(max(k / T, 1)) with T = 35,000 (constant,
then inverse square root).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .config import OptimConfig, check_schedule


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """torch.optim.Adam or RAdam with the config's betas, eps and weight decay (lr set per step)."""
    cls = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}[cfg.name]
    return cls(list(params), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def lr_at(k: int, cfg: OptimConfig) -> float:
    """Learning rate of the update that follows k completed updates (k >= 0).

    "sqrt": lr0 / sqrt(max(k / T, 1)), T = ``cfg.decay_start``; "constant": lr0.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0 (completed updates), got {k!r}")
    if cfg.schedule == "constant":
        return cfg.lr
    return cfg.lr / math.sqrt(max(k / cfg.decay_start, 1.0))


def grad_stats(params: Iterable[torch.nn.Parameter]) -> tuple[torch.Tensor, torch.Tensor]:
    """(global norm sqrt(sum_p |g_p|^2), number of non-finite gradient entries), as 0-d tensors.

    Parameters without a gradient are ignored; computed without host synchronisation.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        z = torch.zeros(())
        return z, z.long()
    norms = torch.stack([torch.linalg.vector_norm(g.detach(), dtype=torch.float64) for g in grads])
    n_bad = torch.stack([(~torch.isfinite(g.detach())).sum() for g in grads]).sum()
    return torch.linalg.vector_norm(norms), n_bad


def clip_gradients(params: Iterable[torch.nn.Parameter], total_norm: float, max_norm: float) -> bool:
    """Scale every gradient by max_norm / total_norm when total_norm > max_norm > 0; True if scaled.

    Same rule as optax.clip_by_global_norm (no epsilon added to the norm).
    """
    if max_norm <= 0 or not total_norm > max_norm:
        return False
    scale = max_norm / total_norm
    for p in params:
        if p.grad is not None:
            p.grad.mul_(scale)
    return True


def scheduled_value(spec: dict, k: int) -> float:
    """Value of an objective-field schedule after k completed updates (see ``ObjectiveConfig``).

    linear:    start + (end - start) min(k / steps, 1)
    geometric: clip(start factor^floor(k / every), lo, hi)   (iCT halves the gap: factor 0.5)
    """
    check_schedule("schedule", spec)
    if spec["kind"] == "linear":
        return spec["start"] + (spec["end"] - spec["start"]) * min(k / spec["steps"], 1.0)
    value = spec["start"] * spec["factor"] ** (k // spec["every"])
    return min(max(value, spec.get("lo", -math.inf)), spec.get("hi", math.inf))
