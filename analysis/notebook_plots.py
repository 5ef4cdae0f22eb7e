"""Small figures the notebooks need: data in (numpy arrays, plain mappings), matplotlib Figure out,
in the house style (:mod:`analysis.style`).

* :func:`live_curves`: the house-style drawing of :class:`workbench.diagnostics.live.LivePlot`
  (pass ``draw=live_curves``): one panel per metric group, colour = run, line style = metric.
* :func:`sample_panels`: 2-D samples of several maps (one panel each) over reference samples, with a
  note per panel (e.g. the detectors that fired).
* :func:`detector_table` and :func:`detector_matrix`: maps x detectors, coloured by how far each
  statistic is past its threshold, fired cells marked.
* :func:`fit_slope` and :func:`power_law_panels`: log-log curves with their fitted slopes beside the
  predicted ones (theory against practice).
* :func:`time_heatmaps`: per-sample quantities binned over (s, t) (e.g.
  ``workbench.diagnostics.bin_by_times``), log colour scale, one panel each, and their by-gap curves.
* :func:`bound_scatter`: per-sample values against a variable with closed-form curves and
  horizontal bounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm, TwoSlopeNorm
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from .style import PALETTE, WIDTH_FULL, use_style

__all__ = ["PowerLawCurve", "bound_scatter", "detector_matrix", "detector_table", "fit_slope", "live_curves",
           "metric_tex", "power_law_panels", "sample_panels", "time_heatmaps"]

_METRIC_TEX = {
    "loss": r"$\mathcal{L}$",
    "grad_norm": r"$\|\nabla_\theta \mathcal{L}\|$",
    "oracle/map_rmse": r"$\hat X_{s,t}$ on the triangle",
    "oracle/map01_rmse": r"one step $\hat X_{0,1}$",
}


def metric_tex(key: str) -> str:
    """A mathtext label of a logged metric name (``terms/lsd`` -> $\\mathcal{L}_{lsd}$); the name
    itself when unknown."""
    if key in _METRIC_TEX:
        return _METRIC_TEX[key]
    if key.startswith("terms/"):
        return r"$\mathcal{L}_{\mathrm{" + key[6:].replace("_", r"\_") + "}}$"
    return key


def live_curves(series, panels):
    """House-style drawing for ``LivePlot(draw=live_curves)``: ``series`` run label -> metric ->
    (steps, values), ``panels`` title -> metric patterns (see ``workbench.diagnostics.live``)."""
    from workbench.diagnostics.live import draw_metrics

    use_style()
    height = 2.5 if len(panels) > 1 else 2.2
    return draw_metrics(series, panels, colors=PALETTE, key_label=metric_tex, figsize=(WIDTH_FULL, height))


def _scatter_box(arrays: Sequence[np.ndarray], pad: float = 0.1) -> tuple[tuple[float, float], tuple[float, float]]:
    """Square-ish limits holding the central 99.5% of the points of every array."""
    pts = np.concatenate([a[np.all(np.isfinite(a), axis=1)] for a in arrays if len(a)])
    lo, hi = np.quantile(pts, 0.0025, axis=0), np.quantile(pts, 0.9975, axis=0)
    c, half = (lo + hi) / 2, (1 + pad) * float(np.max(hi - lo)) / 2 + 1e-9
    return (c[0] - half, c[0] + half), (c[1] - half, c[1] + half)


def sample_panels(panels: Mapping[str, np.ndarray], reference: np.ndarray | None = None, *, ncols: int = 4,
                  notes: Mapping[str, str] | None = None, title: str = "", point_size: float = 1.5):
    """One square panel per entry: samples (n, 2) in colour over the ``reference`` samples (grey),
    common limits from the reference (points outside are counted in the corner; a sample set
    collapsed to a point is drawn as a star), ``notes[key]`` written in the panel's corner."""
    if not panels:
        raise ValueError("panels must hold at least one (name -> (n, 2) samples) entry")
    for k, v in panels.items():
        if np.ndim(v) != 2 or np.shape(v)[1] != 2:
            raise ValueError(f"panels[{k!r}] must be (n, 2) samples, got shape {np.shape(v)}")
    use_style()
    notes = notes or {}
    n = len(panels)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    w = WIDTH_FULL / ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH_FULL, (w + 0.35) * nrows), squeeze=False)
    ref = None if reference is None else np.asarray(reference, dtype=float)
    (x0, x1), (y0, y1) = _scatter_box([ref] if ref is not None else [np.asarray(v, float) for v in panels.values()])
    for ax, (name, pts) in zip(axes.ravel(), panels.items()):
        pts = np.asarray(pts, dtype=float)
        if ref is not None:
            ax.scatter(ref[:, 0], ref[:, 1], s=point_size, color="0.75", lw=0, rasterized=True)
        ax.scatter(pts[:, 0], pts[:, 1], s=point_size, color=PALETTE[0], lw=0, rasterized=True)
        if len(pts) and float(np.nanmax(np.nanstd(pts, axis=0))) < 1e-3 * (x1 - x0):  # collapsed: make it visible
            ax.scatter(*np.nanmean(pts, axis=0), s=60, marker="*", color=PALETTE[0], zorder=3)
        out = int(np.sum(~((pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1))))
        if out:
            ax.text(0.98, 0.02, f"{out} outside", transform=ax.transAxes, ha="right", va="bottom", fontsize=6)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        ax.set_title(name, loc="left", fontsize=7.5)
        if notes.get(name):
            ax.text(0.02, 0.98, notes[name], transform=ax.transAxes, ha="left", va="top", fontsize=5.5,
                    color=PALETTE[3], bbox={"facecolor": "white", "alpha": 0.75, "lw": 0, "pad": 1.0})
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontsize=9)
    fig.tight_layout()
    return fig


def _oriented_score(statistic: float, threshold: float, fires_above: bool) -> float:
    """statistic / threshold oriented so that > 1 is past the threshold; NaN when not evaluated; a
    zero threshold (fires on any positive count) gives 0 below it and inf past it."""
    if not np.isfinite(statistic):
        return float("nan")
    num, den = (statistic, threshold) if fires_above else (threshold, statistic)
    if den == 0:
        return float("inf") if num > 0 else 0.0
    return float(num / den)


def detector_table(reports: Mapping[str, Sequence[object]], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(score, fired), each (len(reports), len(names)), from detector reports per row
    (``workbench.diagnostics.DetectorReport``: name, statistic, threshold, fires_above, fired):
    score = statistic / threshold oriented so that > 1 is past the threshold, NaN where a detector
    did not run or did not apply."""
    score = np.full((len(reports), len(names)), np.nan)
    fired = np.zeros(score.shape, dtype=bool)
    col = {n: j for j, n in enumerate(names)}
    for i, row in enumerate(reports.values()):
        for r in row:
            if r.name in col:
                score[i, col[r.name]] = _oriented_score(float(r.statistic), float(r.threshold), bool(r.fires_above))
                fired[i, col[r.name]] = bool(r.fired)
    return score, fired


def detector_matrix(rows: Sequence[str], cols: Sequence[str], score: np.ndarray, fired: np.ndarray, *,
                    title: str = ""):
    """maps (rows) x detectors (cols): colour = log10 of ``score`` (statistic / threshold, oriented
    so that > 1 is past the threshold; NaN = not evaluated, grey), fired cells marked with a dot."""
    score = np.asarray(score, dtype=float)
    fired = np.asarray(fired, dtype=bool)
    if score.shape != (len(rows), len(cols)) or fired.shape != score.shape:
        raise ValueError(f"score and fired must have shape (len(rows), len(cols)) = {(len(rows), len(cols))}, "
                         f"got {score.shape} and {fired.shape}")
    use_style()
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log10(np.clip(score, 1e-3, 1e3))
    z = np.ma.masked_invalid(z)
    fig, ax = plt.subplots(figsize=(WIDTH_FULL, 0.28 * len(rows) + 1.4))
    ax.set_facecolor("0.9")
    mesh = ax.pcolormesh(z, cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-3, vmax=3))
    rr, cc = np.nonzero(fired)
    ax.plot(cc + 0.5, rr + 0.5, "o", color="k", ms=4)
    ax.set_xticks(np.arange(len(cols)) + 0.5, cols, rotation=40, ha="right", fontsize=7)
    ax.set_yticks(np.arange(len(rows)) + 0.5, rows, fontsize=7)
    ax.invert_yaxis()
    ax.grid(False)
    fig.colorbar(mesh, ax=ax, label=r"$\log_{10}$ (statistic / threshold), $>0$: past it", fraction=0.04, pad=0.02)
    ax.set_title(title or "which detectors fire (dots)", loc="left")
    fig.tight_layout()
    return fig


def fit_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of log y against log x (the exponent p of y ~ x^p), over the finite
    positive pairs; NaN when fewer than two remain."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


@dataclass(frozen=True)
class PowerLawCurve:
    """A measured curve y(x) with the exponent theory predicts for it (None: no prediction)."""

    label: str
    x: np.ndarray
    y: np.ndarray
    predicted: float | None = None


def power_law_panels(panels: Mapping[str, Sequence[PowerLawCurve]], *, xlabel: str, ylabel: str, title: str = "",
                     ncols: int | None = None):
    """Log-log panels of measured curves (markers) with, for each, a dashed line of the predicted
    slope through the curve's geometric centre; the legend gives fitted vs predicted exponents.
    ``ncols`` panels per row (default: all in one row)."""
    if not panels:
        raise ValueError("panels must hold at least one panel of curves")
    use_style()
    ncols = min(ncols or len(panels), len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH_FULL, 2.7 * nrows), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    for ax, (name, curves) in zip(axes.ravel(), panels.items()):
        for k, c in enumerate(curves):
            x, y = np.asarray(c.x, float), np.asarray(c.y, float)
            colour = PALETTE[k % len(PALETTE)]
            fitted = fit_slope(x, y)
            pred = "" if c.predicted is None else f", theory {c.predicted:g}"
            ax.plot(x, y, "o-", ms=3, lw=0.8, color=colour, label=f"{c.label}: fit {fitted:.2f}{pred}")
            ok = (x > 0) & (y > 0) & np.isfinite(y)
            if c.predicted is not None and ok.sum() >= 2:
                lx, ly = np.log(x[ok]), np.log(y[ok])
                xs = np.exp(np.array([lx.min(), lx.max()]))
                ax.plot(xs, np.exp(ly.mean() + c.predicted * (np.log(xs) - lx.mean())), "--", color=colour, lw=1.0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(name, loc="left")
        ax.legend(fontsize=6.5)
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontsize=9)
    fig.tight_layout()
    return fig


def time_heatmaps(maps: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], *, label: str,
                  gaps: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None, title: str = ""):
    """One heat map per entry ``title -> (s_edges (ns+1,), t_edges (nt+1,), values (ns, nt))`` on a
    shared log colour scale (empty / non-positive cells grey, the diagonal drawn), and with ``gaps``
    (curve label -> (gap centres, values)) a row underneath with the by-gap curves on log axes."""
    if not maps:
        raise ValueError("maps must hold at least one (s_edges, t_edges, values) entry")
    use_style()
    vals = [np.asarray(v, float) for _, _, v in maps.values()]
    pos = np.concatenate([v[np.isfinite(v) & (v > 0)].ravel() for v in vals])
    norm = LogNorm(vmin=float(pos.min()), vmax=float(pos.max())) if pos.size else None
    n = len(maps)
    mosaic = [[f"m{j}" for j in range(n)]] + ([["gap"] * n] if gaps else [])
    w = WIDTH_FULL / max(n, 2)
    fig = plt.figure(figsize=(WIDTH_FULL, w + 0.7 + (2.2 if gaps else 0)), layout="constrained")
    axd = fig.subplot_mosaic(mosaic, height_ratios=[w, 1.9] if gaps else None)
    mesh = None
    for j, (name, (se, te, v)) in enumerate(maps.items()):
        ax = axd[f"m{j}"]
        v = np.asarray(v, float)
        z = np.ma.masked_where(~np.isfinite(v) | (v <= 0), v)
        ax.set_facecolor("0.93")
        mesh = ax.pcolormesh(se, te, z.T, norm=norm, cmap="viridis", shading="flat")
        ax.plot([0, 1], [0, 1], color="k", lw=0.6)
        ax.set_aspect("equal")
        ax.grid(False)
        ax.set_xlabel("$s$ (from)")
        if j == 0:
            ax.set_ylabel("$t$ (to)")
        ax.set_title(name, loc="left", fontsize=8)
    if mesh is not None:
        fig.colorbar(mesh, ax=[axd[f"m{j}"] for j in range(n)], label=label, shrink=0.9)
    if gaps:
        ax = axd["gap"]
        for k, (name, (g, v)) in enumerate(gaps.items()):
            ax.plot(g, v, "o-", ms=3, color=PALETTE[k % len(PALETTE)], label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        centres = np.asarray(next(iter(gaps.values()))[0], float)
        centres = centres[centres > 0]
        ax.set_xticks(centres[::2] if centres.size > 5 else centres)
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.2g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("gap $t - s$ (bin centre)")
        ax.set_ylabel(label)
        ax.set_title("by gap", loc="left")
        ax.legend(fontsize=6.5)
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontsize=9)
    return fig


def bound_scatter(points: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                  curves: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                  bounds: Mapping[str, float] | None = None, xlabel: str, ylabel: str, title: str = ""):
    """Per-sample values (x, y) per label as dots, the closed-form ``curves`` (same labels) as lines
    and the ``bounds`` (same labels) as dashed horizontal lines, log-log, colour per label."""
    use_style()
    fig, ax = plt.subplots(figsize=(WIDTH_FULL / 2, 2.6))
    for k, (name, (x, y)) in enumerate(points.items()):
        colour = PALETTE[k % len(PALETTE)]
        ax.scatter(x, y, s=3, color=colour, lw=0, alpha=0.6, label=name, rasterized=True)
        if curves and name in curves:
            ax.plot(*curves[name], color=colour, lw=1.0)
        if bounds and name in bounds:
            ax.axhline(bounds[name], color=colour, ls="--", lw=0.9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left")
    ax.legend(fontsize=6.5, markerscale=3)
    fig.tight_layout()
    return fig
