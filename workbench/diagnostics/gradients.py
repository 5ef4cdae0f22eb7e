"""Gradient statistics of a flow-map model: pure functions, they never step an optimiser.

* Gradients as a mapping parameter name -> tensor: :func:`parameter_gradients` (autograd of a
  scalar) or :func:`stored_gradients` (the ``.grad`` left by ``backward``).
* Global / per-parameter / per-module norms and non-finite counts: :func:`gradient_report`.
* Per-term gradients of an :class:`~workbench.losses.base.ObjectiveResult` and their cosines
  (objective conflict: terms whose gradients point against each other): :func:`term_gradient_stats`.
* Per-sample gradient norms |grad_theta l_i| with ``torch.func`` (functional_call + vmap(grad)):
  :func:`per_sample_grad_norms`, and heat-map binning over (s, t) and over the gap t - s:
  :func:`bin_by_times`, :func:`bin_by_gap`.

Norms are accumulated in float64 over the FINITE entries; non-finite entries are counted, never
folded into a NaN norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.validation import check_tensor, value_checks_disabled
from ..losses.base import ObjectiveResult

Grads = Mapping[str, torch.Tensor]


def _named_trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return [(k, p) for k, p in model.named_parameters() if p.requires_grad]


def parameter_gradients(model: nn.Module, loss: torch.Tensor, *, retain_graph: bool = True) -> dict[str, torch.Tensor]:
    """{name: d loss / d theta_name} for every trainable parameter (zeros where loss does not depend on it).

    loss: a scalar tensor. ``retain_graph`` (default True) keeps the graph for a later ``backward``.
    """
    loss = check_tensor(loss, "loss")
    if loss.numel() != 1:
        raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}; reduce it with .mean()")
    named = _named_trainable(model)
    if not loss.requires_grad:
        return {k: torch.zeros_like(p) for k, p in named}
    grads = torch.autograd.grad(loss.reshape(()), [p for _, p in named], retain_graph=retain_graph, allow_unused=True)
    return {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(named, grads)}


def stored_gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    """{name: p.grad} after ``backward`` (zeros for parameters without a gradient)."""
    return {k: torch.zeros_like(p) if p.grad is None else p.grad for k, p in _named_trainable(model)}


def _sq_finite(g: torch.Tensor) -> float:
    g = g.detach().to(torch.float64)
    return float(torch.where(torch.isfinite(g), g, torch.zeros_like(g)).pow(2).sum())


def global_norm(grads: Grads) -> float:
    """(sum over all parameters and finite entries of g^2)^{1/2}."""
    return math.sqrt(sum(_sq_finite(g) for g in grads.values()))


def layer_norms(grads: Grads) -> dict[str, float]:
    """{parameter name: |g|} (finite entries), e.g. 'backbone.body.0.weight'."""
    return {k: math.sqrt(_sq_finite(g)) for k, g in grads.items()}


def module_norms(grads: Grads) -> dict[str, float]:
    """{module name: (sum of its parameters' |g|^2)^{1/2}}, grouping 'a.b.weight' and 'a.b.bias' as 'a.b'."""
    sq: dict[str, float] = {}
    for k, g in grads.items():
        mod = k.rsplit(".", 1)[0] if "." in k else k
        sq[mod] = sq.get(mod, 0.0) + _sq_finite(g)
    return {k: math.sqrt(v) for k, v in sq.items()}


def nonfinite_by_parameter(grads: Grads) -> dict[str, int]:
    """{parameter name: number of NaN / inf gradient entries}."""
    return {k: int((~torch.isfinite(g.detach())).sum()) for k, g in grads.items()}


def count_nonfinite(grads: Grads) -> int:
    """Total number of NaN / inf gradient entries."""
    return sum(nonfinite_by_parameter(grads).values())


@dataclass(frozen=True)
class GradientReport:
    """Global norm, per-parameter and per-module norms (finite entries) and non-finite counts."""

    global_norm: float
    layer_norms: dict[str, float]
    module_norms: dict[str, float]
    n_nonfinite: int
    nonfinite_by_parameter: dict[str, int]


def gradient_report(grads: Grads) -> GradientReport:
    """All the statistics of one gradient mapping (see :func:`parameter_gradients`, :func:`stored_gradients`)."""
    bad = nonfinite_by_parameter(grads)
    return GradientReport(global_norm=global_norm(grads), layer_norms=layer_norms(grads),
                          module_norms=module_norms(grads), n_nonfinite=sum(bad.values()), nonfinite_by_parameter=bad)


def _flat_finite(grads: Grads) -> tuple[torch.Tensor, int]:
    """All gradient entries as one float64 vector with the non-finite ones set to 0, and their count."""
    flat = torch.cat([g.detach().reshape(-1).to(torch.float64) for g in grads.values()])
    ok = torch.isfinite(flat)
    return torch.where(ok, flat, torch.zeros_like(flat)), int((~ok).sum())


@dataclass(frozen=True)
class TermGradientStats:
    """Per-term gradient norms |grad mean_i term_i|, pairwise cosines, and the norm of grad mean(loss).

    Norms and cosines use the finite gradient entries; ``nonfinite[name]`` counts the NaN / inf
    entries left out. ``cosines[(a, b)]`` (a before b in ``names``) is <g_a, g_b> / (|g_a| |g_b|), or
    None when either gradient is zero (e.g. a term carried by no sample of the batch).
    """

    names: tuple[str, ...]
    norms: dict[str, float]
    cosines: dict[tuple[str, str], float | None]
    total_norm: float
    nonfinite: dict[str, int] = field(default_factory=dict)


def term_gradient_stats(model: nn.Module, result: object, *, names: Sequence[str] | None = None) -> TermGradientStats:
    """Gradient of each named term's batch mean (terms are per-sample tensors) w.r.t. the parameters.

    Uses ``torch.autograd.grad(..., retain_graph=True)`` for every term and for ``result.loss.mean()``,
    so the caller can still call ``backward``. An empty term has a zero gradient.
    """
    if not isinstance(result, ObjectiveResult):
        raise TypeError(f"result must be an ObjectiveResult (loss, terms), got {type(result).__name__}")
    names = tuple(result.terms) if names is None else tuple(names)
    missing = [k for k in names if k not in result.terms]
    if missing:
        raise ValueError(f"names {missing} are not terms of the result; available: {sorted(result.terms)}")
    flat: dict[str, torch.Tensor] = {}
    bad: dict[str, int] = {}
    for k in names:
        term = check_tensor(result.terms[k], f"terms[{k!r}]")
        mean = term.mean() if term.numel() else term.sum()
        flat[k], bad[k] = _flat_finite(parameter_gradients(model, mean, retain_graph=True))
    norms = {k: float(v.norm()) for k, v in flat.items()}
    cos: dict[tuple[str, str], float | None] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            den = norms[a] * norms[b]
            cos[(a, b)] = float(flat[a] @ flat[b]) / den if den > 0 else None
    total = parameter_gradients(model, check_tensor(result.loss, "result.loss").mean(), retain_graph=True)
    return TermGradientStats(names=names, norms=norms, cosines=cos, total_norm=global_norm(total), nonfinite=bad)


class _LossModule(nn.Module):
    def __init__(self, model: nn.Module, loss_fn: Callable) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, *args)


def per_sample_grad_norms(model: nn.Module, loss_fn: Callable[..., torch.Tensor], *batch: torch.Tensor,
                          chunk_size: int | None = None) -> torch.Tensor:
    """|grad_theta l_i(theta)| for every sample i, shape (batch,), by vmap(grad) over functional_call.

    ``loss_fn(model, *batch) -> (batch,)`` is the per-sample loss used in training; every tensor of
    ``batch`` has the batch size as its first dimension (pass the noise x0 and the times s, t as
    inputs: random draws inside loss_fn are refused by vmap). Each sample is evaluated as a batch
    of one under :func:`value_checks_disabled`, so torch.func.jvp inside loss_fn works.
    """
    named = _named_trainable(model)
    if not batch:
        raise ValueError("batch must hold at least one tensor with a leading batch dimension")
    n = batch[0].shape[0] if isinstance(batch[0], torch.Tensor) else None
    for i, a in enumerate(batch):
        if not isinstance(a, torch.Tensor) or a.ndim == 0 or a.shape[0] != n:
            raise ValueError(f"batch[{i}] must be a tensor with leading batch dimension {n}")
    wrapper = _LossModule(model, loss_fn)
    params = {f"model.{k}": p.detach() for k, p in named}
    buffers = {f"model.{k}": b for k, b in model.named_buffers()}

    def one(p, *sample):
        out = torch.func.functional_call(wrapper, (p, buffers), tuple(a.unsqueeze(0) for a in sample))
        return out.sum()

    def norm_of_grad(p, *sample):
        g = torch.func.grad(one)(p, *sample)
        return torch.sqrt(sum(v.pow(2).sum() for v in g.values()))

    with value_checks_disabled():
        return torch.func.vmap(norm_of_grad, in_dims=(None,) + (0,) * len(batch), chunk_size=chunk_size)(params, *batch)


# -- binning for heat maps ----------------------------------------------------------------------
def _bin_index(key: torch.Tensor, edges: torch.Tensor, name: str) -> torch.Tensor:
    lo, hi = float(edges[0]), float(edges[-1])
    if not bool(torch.isfinite(key).all()):
        raise ValueError(f"{name} contains {int((~torch.isfinite(key)).sum())} non-finite value(s); expected finite "
                         "times to bin by")
    if bool((key < lo).any()) or bool((key > hi).any()):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got [{float(key.min())}, {float(key.max())}]; "
                         "widen the range")
    idx = torch.searchsorted(edges, key.contiguous(), right=True) - 1
    return idx.clamp(0, edges.numel() - 2)  # the upper edge belongs to the last bin (numpy convention)


@dataclass(frozen=True)
class Bins:
    """Binned per-sample values: ``edges`` per axis (float64), and per cell the ``sum`` and ``count``
    of the finite values and the number ``nonfinite`` of NaN / inf values.

    ``mean`` = sum / count, and NaN in empty cells (count = 0) on purpose: heat maps leave them blank;
    mask with ``count > 0`` before reducing. ``merge`` adds the statistics of another batch.
    """

    edges: tuple[torch.Tensor, ...]
    sum: torch.Tensor
    count: torch.Tensor
    nonfinite: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return torch.where(self.count > 0, self.sum / self.count.clamp_min(1), torch.full_like(self.sum, math.nan))

    def merge(self, other: Bins) -> Bins:
        if len(self.edges) != len(other.edges) or not all(torch.equal(a, b) for a, b in zip(self.edges, other.edges)):
            raise ValueError("can only merge bins with identical edges")
        return Bins(self.edges, self.sum + other.sum, self.count + other.count, self.nonfinite + other.nonfinite)


def _binned(values: torch.Tensor, keys: Sequence[tuple[torch.Tensor, str]], bins: Sequence[int],
            ranges: Sequence[tuple[float, float]]) -> Bins:
    values = check_tensor(values, "values").detach().reshape(-1).to(torch.float64)
    edges, flat = [], torch.zeros_like(values, dtype=torch.long)
    for (key, name), nb, (lo, hi) in zip(keys, bins, ranges):
        if isinstance(nb, bool) or not isinstance(nb, int) or nb < 1 or not hi > lo:
            raise ValueError(f"bins for {name} must be a positive int and its range (lo, hi) with hi > lo, "
                             f"got {nb}, {(lo, hi)}")
        key = check_tensor(key, name).detach().reshape(-1).to(device=values.device, dtype=torch.float64)
        if key.numel() != values.numel():
            raise ValueError(f"{name} must have one entry per value ({values.numel()}), got {key.numel()}")
        e = torch.linspace(float(lo), float(hi), nb + 1, dtype=torch.float64, device=values.device)
        edges.append(e)
        flat = flat * nb + _bin_index(key, e, name)
    shape, size = tuple(bins), math.prod(bins)
    ok = torch.isfinite(values)
    total = torch.zeros(size, dtype=torch.float64, device=values.device).index_add_(0, flat[ok], values[ok])
    count = torch.bincount(flat[ok], minlength=size).to(torch.float64)
    bad = torch.bincount(flat[~ok], minlength=size).to(torch.float64)
    return Bins(tuple(edges), total.reshape(shape), count.reshape(shape), bad.reshape(shape))


def bin_by_times(values: torch.Tensor, s: torch.Tensor, t: torch.Tensor, *, bins: int | tuple[int, int] = 16,
                 s_range: tuple[float, float] = (0.0, 1.0), t_range: tuple[float, float] = (0.0, 1.0)) -> Bins:
    """Bin per-sample ``values`` (batch,) on a uniform (s, t) grid: sum[i, j], count[i, j] over the
    samples with s in cell i and t in cell j (cells as numpy.histogram2d). Out-of-range times raise."""
    nb = (bins, bins) if isinstance(bins, int) else tuple(bins)
    return _binned(values, ((s, "s"), (t, "t")), nb, (s_range, t_range))


def bin_by_gap(values: torch.Tensor, gap: torch.Tensor, *, bins: int = 16,
               gap_range: tuple[float, float] = (0.0, 1.0)) -> Bins:
    """Bin per-sample ``values`` (batch,) by the gap t - s on a uniform grid over ``gap_range``."""
    return _binned(values, ((gap, "gap"),), (bins,), (gap_range,))
