"""Figures of a training run: loss and gradient-norm curves with events, quality against steps.

One function per figure, data in (frozen dataclasses of numpy arrays), matplotlib Figure out:

* :func:`training_curves`: loss per term, gradient norms per term and (when logged) the flow-map
  error against the oracle, all against the optimiser step; detector events as labelled vertical
  lines, skipped (non-finite) steps as crosses on the step axis, a diverged stop as a solid line.
* :func:`steps_quality`: sample quality of N-step flow-map sampling x_{k+1} = X_{t_k,t_{k+1}}(x_k)
  (B25's headline comparison: quality against the number of steps N = 1, 2, 4, 8, 16) against N,
  one panel per metric, one line per method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator
from matplotlib.transforms import blended_transform_factory

from .style import PALETTE, WIDTH_FULL, use_style

Series = tuple[np.ndarray, np.ndarray]  # (steps, values)

#: mathtext labels of metric names (workbench.diagnostics.metrics.SAMPLE_METRICS and friends)
METRIC_LABELS = {
    "w2": "$W_2$",
    "sliced_w2": "sliced $W_2$",
    "mmd2": r"$\mathrm{MMD}^2$",
    "energy": "energy distance",
    "kl": r"$\mathrm{KL}$ (histogram)",
    "drift": r"$\|x^{(N)} - x^{(1)}\|$ (RMS)",
    "oracle": r"$\|x^{(N)} - X_{0,1}(x_0)\|$ (RMS)",
}


def metric_label(name: str) -> str:
    """The mathtext label of a metric name (the name itself when unknown)."""
    return METRIC_LABELS.get(name, name.replace("_", " "))


def set_value_scale(ax, values: list[np.ndarray], axis: str = "y") -> str:
    """Log scale when every finite value is > 0; otherwise symlog with the linear range set by the
    smallest non-zero magnitude (so signed terms stay visible). Returns the scale chosen."""
    finite = np.concatenate([np.asarray(v, dtype=float).ravel() for v in values] or [np.zeros(0)])
    finite = finite[np.isfinite(finite)]
    setter = ax.set_yscale if axis == "y" else ax.set_xscale
    if finite.size == 0 or np.all(finite > 0):
        setter("log")
        if finite.size and finite.max() < 10 * finite.min():  # less than a decade: plain tick labels
            target = ax.yaxis if axis == "y" else ax.xaxis
            plain = FuncFormatter(lambda v, _: f"{v:.3g}")
            target.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            target.set_major_formatter(plain)
            target.set_minor_formatter(plain)
        return "log"
    nonzero = np.abs(finite[finite != 0])
    setter("symlog", linthresh=float(nonzero.min()) if nonzero.size else 1.0)
    return "symlog"


@dataclass(frozen=True)
class Event:
    """A detector event: detector ``name`` fired (first) at optimiser step ``step``."""

    step: int
    name: str


@dataclass(frozen=True)
class TrainingCurves:
    """What :func:`training_curves` draws, all series as (steps (k,), values (k,)) with NaN for
    non-finite values.

    loss: the total loss; terms: per-term batch means by term name; grad_norm: the global gradient
    norm before clipping; term_grad_norms: |grad of each term's batch mean| (periodic);
    grad_norm_max: the largest global gradient norm of each logging window (catches spikes
    between logged steps);
    oracle: flow-map RMS error against the oracle by label (online model, EMAs); events:
    detector events; skipped: steps whose update was skipped (non-finite loss or gradient);
    diverged_at: the step where the run stopped as diverged (None when it did not).
    """

    name: str
    loss: Series
    terms: dict = field(default_factory=dict)
    grad_norm: Series | None = None
    term_grad_norms: dict = field(default_factory=dict)
    grad_norm_max: Series | None = None
    oracle: dict = field(default_factory=dict)
    events: tuple = ()
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    diverged_at: int | None = None


def _mark_steps(ax, curves: TrainingCurves, *, label_events: bool) -> None:
    """Events (dashed lines, names on top), skipped steps (crosses on the step axis), divergence."""
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    names = sorted({e.name for e in curves.events})
    event_colours = [PALETTE[k] for k in (2, 4, 5, 1, 6, 0, 7)]  # red (PALETTE[3]) is for failures
    colour = {n: event_colours[k % len(event_colours)] for k, n in enumerate(names)}
    seen: set[str] = set()
    for e in sorted(curves.events, key=lambda e: e.step):
        label = f"fired: {e.name}" if label_events and e.name not in seen else None
        ax.axvline(e.step, color=colour[e.name], ls="--", lw=0.9, alpha=0.9, label=label)
        seen.add(e.name)
        if label_events:
            ax.text(e.step, 0.98, f" {e.name}", transform=trans, rotation=90, va="top", ha="right",
                    fontsize=6.5, color=colour[e.name], bbox=dict(facecolor="white", alpha=0.7, lw=0, pad=0.5))
    if len(curves.skipped):
        ax.plot(curves.skipped, np.full(len(curves.skipped), 0.02), "x", color=PALETTE[3], ms=4, mew=1.0,
                transform=trans, clip_on=False, label="skipped step (non-finite)" if label_events else None)
    if curves.diverged_at is not None:
        ax.axvline(curves.diverged_at, color=PALETTE[3], lw=1.6, label="diverged (stopped)" if label_events else None)


def _plot_series(ax, series: Mapping[str, Series], *, marker: str | None = None) -> list[np.ndarray]:
    """One line per series through its finite points (non-finite steps are marked separately as
    skipped); markers when a series has few points."""
    drawn = []
    for k, (label, (steps, values)) in enumerate(series.items()):
        v = np.asarray(values, dtype=float)
        ok = np.isfinite(v)
        if not ok.any():
            continue
        few = int(ok.sum()) <= 12
        ax.plot(np.asarray(steps)[ok], v[ok], color=PALETTE[k % len(PALETTE)], marker=marker or ("o" if few else None),
                ms=3, label=label)
        drawn.append(v[ok])
    return drawn


def training_curves(curves: TrainingCurves):
    """Panels against the optimiser step k: (a) loss L and each term L_j (log scale, symlog when a
    term is signed); (b) gradient norms |grad L| and |grad L_j| (log); (c) the flow-map error
    sqrt(mean |hat X_{s,t}(x) - X_{s,t}(x)|^2) against the oracle (log), when logged. Every panel
    marks detector events, skipped steps and a diverged stop."""
    use_style()
    panels = ["loss", "grad"] + (["oracle"] if curves.oracle else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(WIDTH_FULL, 2.7), squeeze=False, layout="constrained")
    axes = axes[0]
    for ax, kind in zip(axes, panels):
        if kind == "loss":
            series = {"total": curves.loss}
            series.update({f"term {n}": s for n, s in curves.terms.items()})
            set_value_scale(ax, _plot_series(ax, series))
            ax.set_title("loss per term", loc="left")
            ax.set_ylabel(r"batch mean of $\mathcal{L}$, $\mathcal{L}_j$")
        elif kind == "grad":
            series = {} if curves.grad_norm is None else {"total": curves.grad_norm}
            drawn = _plot_series(ax, series)
            if curves.grad_norm_max is not None and len(curves.grad_norm_max[0]):
                steps, values = curves.grad_norm_max
                v = np.asarray(values, dtype=float)
                ok = np.isfinite(v)
                ax.plot(np.asarray(steps)[ok], v[ok], color=PALETTE[0], lw=0.7, ls=":", label="total, window max")
                drawn.append(v[ok])
            per_term = {f"term {n}": s for n, s in curves.term_grad_norms.items()}
            for k, (label, (steps, values)) in enumerate(per_term.items()):
                v = np.asarray(values, dtype=float)
                ok = np.isfinite(v)
                ax.plot(np.asarray(steps)[ok], v[ok], color=PALETTE[(k + 1) % len(PALETTE)], marker="o", ms=3, lw=1.0,
                        label=label)
                drawn.append(v[ok])
            set_value_scale(ax, drawn)
            ax.set_title("gradient norm (before clipping)", loc="left")
            ax.set_ylabel(r"$\|\nabla_\theta \mathcal{L}\|$, $\|\nabla_\theta \mathcal{L}_j\|$")
        else:
            set_value_scale(ax, _plot_series(ax, curves.oracle, marker="o"))
            ax.set_title("flow-map error vs oracle", loc="left")
            ax.set_ylabel(r"RMS $|\hat X_{s,t}(x) - X_{s,t}(x)|$")
        _mark_steps(ax, curves, label_events=(kind == "loss"))
        ax.set_xlabel("optimiser step $k$")
        ax.legend(loc="best", fontsize=6, framealpha=0.8)
    fig.suptitle(curves.name, x=0.01, ha="left", fontsize=9)
    return fig


def steps_quality(qualities: Mapping[str, object], *, drift: bool = True, floors: Mapping[str, float] | None = None,
                  title: str = "sample quality against the number of steps"):
    """Quality of N-step sampling against N (log2 axis), one panel per metric (log scale; symlog
    when a value is <= 0, e.g. the unbiased MMD^2) and one line per method; with ``drift`` a last
    panel shows the RMS drift |x^(N)(x0) - x^(1)(x0)| of N-step from one-step samples (N > 1).

    qualities: method label -> :class:`workbench.diagnostics.metrics.StepsQuality` (or any object
    with ``steps``, ``metrics`` (name -> values) and ``drift``); floors: metric -> its value between
    two independent data samples of the same size (what a perfect model scores), drawn dotted.
    """
    if not qualities:
        raise ValueError("qualities must name at least one method")
    use_style()
    names: list[str] = []
    for q in qualities.values():
        names += [n for n in q.metrics if n not in names]
    if drift:
        names.append("drift")
    ncol = min(len(names), 3)
    nrow = -(-len(names) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(WIDTH_FULL, 2.2 * nrow + 0.4), squeeze=False, layout="constrained")
    flat = axes.ravel()
    all_steps: set[int] = set()
    for ax, name in zip(flat, names):
        drawn = []
        for k, (method, q) in enumerate(qualities.items()):
            steps = np.asarray(q.steps, dtype=float)
            if name == "drift":
                values = np.asarray(q.drift, dtype=float)
                keep = steps > 1  # the drift of N = 1 is 0 by definition
                steps, values = steps[keep], values[keep]
            elif name in q.metrics:
                values = np.asarray(q.metrics[name], dtype=float)
            else:
                continue
            all_steps.update(int(s) for s in steps)
            ax.plot(steps, values, marker="o", ms=3.5, color=PALETTE[k % len(PALETTE)], label=method)
            drawn.append(values)
        floor = (floors or {}).get(name)
        if floor is not None and math.isfinite(floor):
            ax.axhline(floor, color="0.45", ls=":", lw=1.2, label="floor (data vs data)")
            drawn.append(np.array([floor]))
        set_value_scale(ax, drawn)
        ax.set_xscale("log", base=2)
        ax.set_title(metric_label(name), loc="left")
        ax.set_xlabel("sampling steps $N$")
    for ax in flat:
        if ax.has_data():
            ticks = sorted(all_steps)
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_locator(plt.NullLocator())
    for ax in flat[len(names):]:
        ax.axis("off")
    handles, labels = [], []
    for ax in flat:  # every method once, and the floor when drawn
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if len(flat) > len(names):  # an empty panel holds the legend
        flat[-1].legend(handles, labels, loc="center", fontsize=7, frameon=False)
    else:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=7, frameon=False)
    fig.suptitle(title, x=0.01, ha="left", fontsize=9)
    return fig
