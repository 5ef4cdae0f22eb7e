"""Figures of learned flow maps: samples against the step count, and (s, t) maps of errors.

* :func:`samples_vs_steps`: the layout of B25's checkerboard figure (samples per method against
  the number of steps; B25 code, its logging panels): rows = methods, a first
  column of trajectories t -> X_{0,t}(x0) from noise (t = 0) to data (t = 1), then one column per
  number of sampling steps N with the N-step samples x_{k+1} = X_{t_k,t_{k+1}}(x_k), t_k = k / N,
  drawn over samples of the data.
* :func:`st_maps`: heat maps over the upper triangle s <= t (s on x, t on y, log colour scale,
  empty and below-diagonal bins masked) with by-gap curves underneath.
* :func:`by_gap`: by-gap curves of several runs, one panel per quantity, one line per run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

from .figures_training import set_value_scale
from .style import PALETTE, WIDTH_FULL, use_style


@dataclass(frozen=True)
class SampleGrid:
    """Samples per method and step count, from one shared noise batch x0.

    methods: row labels; steps: (N_1, ..., N_k); samples[method]: (k, n, d) with samples[m][i] the
    N_i-step samples; data: (m, d) data samples; times: (T,) and trajectories[method]: (T, n_traj, d),
    the states X_{0,times[j]}(x0) (``trajectories`` may be empty: no trajectory column). Only the
    first two coordinates are drawn.
    """

    methods: tuple
    steps: tuple
    samples: dict
    data: np.ndarray
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    trajectories: dict = field(default_factory=dict)


def _box(points: np.ndarray, pad: float = 0.12) -> tuple[tuple[float, float], tuple[float, float]]:
    """A square box around the first two coordinates of the finite points, padded by ``pad``."""
    pts = points[:, :2][np.isfinite(points[:, :2]).all(axis=1)]
    lo, hi = (pts.min(axis=0), pts.max(axis=0)) if len(pts) else (np.full(2, -1.0), np.ones(2))
    centre, half = 0.5 * (lo + hi), max(0.5 * float((hi - lo).max()), 1e-6) * (1 + pad)
    return (float(centre[0] - half), float(centre[0] + half)), (float(centre[1] - half), float(centre[1] + half))


def _outside(x: np.ndarray, box) -> float:
    (x0, x1), (y0, y1) = box
    bad = ~np.isfinite(x[:, :2]).all(axis=1)
    out = bad | (x[:, 0] < x0) | (x[:, 0] > x1) | (x[:, 1] < y0) | (x[:, 1] > y1)
    return float(out.mean()) if len(x) else 0.0


def _clean_axes(ax, box) -> None:
    ax.set_xlim(*box[0])
    ax.set_ylim(*box[1])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(True)
        ax.spines[side].set_linewidth(0.5)


def samples_vs_steps(grid: SampleGrid, *, point_size: float = 0.6):
    """Rows = methods; columns = trajectories t -> X_{0,t}(x0) (when given), then the N-step samples
    for each N in ``grid.steps`` (blue) over data samples (grey). Sample panels share the data's
    box; the share of samples outside it (or non-finite) is printed in the panel's corner, and a
    panel whose samples are all non-finite (a diverged model) says "non-finite samples". A row label
    "method (run)" is set on two lines, shrunk and broken further until it fits beside its row."""
    if not grid.methods:
        raise ValueError("grid.methods must name at least one method")
    use_style()
    has_traj = bool(grid.trajectories)
    ncol = len(grid.steps) + int(has_traj)
    nrow = len(grid.methods)
    side = WIDTH_FULL / ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(WIDTH_FULL, side * nrow + 0.35), squeeze=False)
    data = np.asarray(grid.data)
    if data.shape[1] == 1:
        _one_dimensional(axes, grid, data, has_traj)
        fig.tight_layout(pad=0.3, w_pad=0.15, h_pad=0.15)
        _fit_row_labels(fig, [row[0] for row in axes])
        return fig
    box = _box(data)
    for r, method in enumerate(grid.methods):
        row = axes[r]
        if has_traj:
            ax = row[0]
            traj = np.asarray(grid.trajectories[method])
            ax.scatter(data[:, 0], data[:, 1], s=point_size, color="0.75", rasterized=True, lw=0)
            for k in range(traj.shape[1]):
                ax.plot(traj[:, k, 0], traj[:, k, 1], color=PALETTE[0], lw=0.4, alpha=0.6)
            ax.scatter(traj[0, :, 0], traj[0, :, 1], s=2, color=PALETTE[7], lw=0, label="$t=0$")
            ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=2, color=PALETTE[3], lw=0, label="$t=1$")
            _clean_axes(ax, _box(np.concatenate([data, traj.reshape(-1, traj.shape[-1])])))
            if traj.size and not np.isfinite(traj[1:, :, :2]).any():
                _non_finite(ax, "trajectories")
            if r == 0:
                ax.set_title("$X_{0,t}(x_0)$, $t \\in [0,1]$", fontsize=8)
        samples = np.asarray(grid.samples[method])
        for i, n_steps in enumerate(grid.steps):
            ax = row[i + int(has_traj)]
            x = samples[i]
            ax.scatter(data[:, 0], data[:, 1], s=point_size, color="0.78", rasterized=True, lw=0)
            ax.scatter(x[:, 0], x[:, 1], s=point_size, color=PALETTE[0], alpha=0.7, rasterized=True, lw=0)
            _clean_axes(ax, box)
            frac = _outside(x, box)
            if len(x) and not np.isfinite(x[:, :2]).any():
                _non_finite(ax)
            elif frac > 0.005:
                ax.text(0.97, 0.97, f"{100 * frac:.0f}% out", transform=ax.transAxes, ha="right", va="top",
                        fontsize=6, color=PALETTE[3], bbox=dict(facecolor="white", alpha=0.8, lw=0, pad=0.8))
            if r == 0:
                ax.set_title(f"$N = {n_steps}$", fontsize=8)
        row[0].set_ylabel(_wrap(method), fontsize=8)
    fig.tight_layout(pad=0.3, w_pad=0.15, h_pad=0.15)
    _fit_row_labels(fig, [row[0] for row in axes])
    return fig


def _non_finite(ax, what: str = "samples") -> None:
    """The placeholder of a panel whose samples are all non-finite (a diverged model)."""
    ax.text(0.5, 0.5, f"non-finite\n{what}", transform=ax.transAxes, ha="center", va="center", fontsize=7,
            color=PALETTE[3], bbox=dict(facecolor="white", alpha=0.85, lw=0, pad=1.0))


def _wrap(label: str) -> str:
    """A row label "method (run)" on two lines, so that it fits beside one panel."""
    head, sep, tail = label.partition(" (")
    return f"{head}\n({tail}" if sep and head else label


def _fit_row_labels(fig, axes, smallest: float = 6.0) -> None:
    """Make every row label (y label) fit beside its panel: shrink it down to ``smallest`` pt, then
    break its longest lines (at '-', '_', '.', ' ' where possible) until its extent is no taller than
    the panel; the figure is laid out again after each change, so the labels stay inside it."""
    for _ in range(4):  # a relayout shrinks the panels a little: check again
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        changed = False
        for ax in axes:
            label = ax.yaxis.label
            room = ax.get_window_extent(renderer).height
            original, width = label.get_text(), None
            while (height := label.get_window_extent(renderer).height) > room:
                if label.get_fontsize() > smallest:
                    label.set_fontsize(max(smallest, label.get_fontsize() - 0.5))
                else:  # lines of ``width`` characters, from the proportional guess down
                    longest = max(len(line) for line in label.get_text().split("\n"))
                    width = int(longest * room / height) if width is None else width - 1
                    if width < 4:
                        break
                    label.set_text(_break_lines(original, width))
                changed = True
        if not changed:
            return
        fig.tight_layout(pad=0.3, w_pad=0.15, h_pad=0.15)


def _break_lines(text: str, width: int) -> str:
    """Lines of at most ``width`` characters, cut after a '-', '_', '.' or ' ' where one is close."""
    out = []
    for line in text.split("\n"):
        while len(line) > width:
            cut = max(line.rfind(c, 0, width) for c in "-_. ")
            cut = cut + 1 if cut >= width // 2 else width
            out.append(line[:cut].rstrip())
            line = line[cut:]
        out.append(line)
    return "\n".join(out)


def _one_dimensional(axes, grid: SampleGrid, data: np.ndarray, has_traj: bool) -> None:
    """1-D data: trajectories as x against t, samples as histograms (outline) over the data's."""
    lo, hi = np.percentile(data[:, 0], [0.5, 99.5])
    pad = 0.15 * (hi - lo + 1e-6)
    bins = np.linspace(lo - pad, hi + pad, 41)
    for r, method in enumerate(grid.methods):
        row = axes[r]
        if has_traj:
            traj = np.asarray(grid.trajectories[method])
            row[0].plot(grid.times, traj[:, :, 0], color=PALETTE[0], lw=0.4, alpha=0.6)
            row[0].set_xlabel("$t$", fontsize=7)
            if r == 0:
                row[0].set_title("$X_{0,t}(x_0)$", fontsize=8)
        for i, n_steps in enumerate(grid.steps):
            ax = row[i + int(has_traj)]
            x = np.asarray(grid.samples[method])[i][:, 0]
            ax.hist(data[:, 0], bins=bins, density=True, color="0.78")
            ax.hist(x[np.isfinite(x)], bins=bins, density=True, histtype="step", color=PALETTE[0], lw=1.0)
            if len(x) and not np.isfinite(x).any():
                _non_finite(ax)
            ax.set_yticks([])
            ax.tick_params(labelsize=6)
            if r == 0:
                ax.set_title(f"$N = {n_steps}$", fontsize=8)
        row[0].set_ylabel(_wrap(method), fontsize=8)


@dataclass(frozen=True)
class TimeGridMap:
    """A non-negative quantity on an (s, t) grid: values[i, j] over s in [s_edges[i], s_edges[i+1])
    and t in [t_edges[j], t_edges[j+1]); count[i, j] samples behind it (None: every finite value
    counts). ``label`` (mathtext) names the quantity; ``title`` the panel."""

    title: str
    label: str
    s_edges: np.ndarray
    t_edges: np.ndarray
    values: np.ndarray
    count: np.ndarray | None = None


@dataclass(frozen=True)
class GapCurve:
    """A quantity against the gap t - s: values[k] at gap[k] (bin centres), count[k] samples (None:
    all); series of several curves share one panel, ``label`` names this one."""

    label: str
    gap: np.ndarray
    values: np.ndarray
    count: np.ndarray | None = None


def masked_map(m: TimeGridMap) -> np.ma.MaskedArray:
    """The (ns, nt) values with empty bins (count 0), non-finite or non-positive values (log scale)
    and cells entirely below the diagonal (t_edges[j + 1] <= s_edges[i]) masked."""
    v = np.asarray(m.values, dtype=float)
    s_e, t_e = np.asarray(m.s_edges, dtype=float), np.asarray(m.t_edges, dtype=float)
    if v.shape != (len(s_e) - 1, len(t_e) - 1):
        raise ValueError(f"values must have shape (len(s_edges) - 1, len(t_edges) - 1) = "
                         f"{(len(s_e) - 1, len(t_e) - 1)}, got {v.shape}")
    mask = ~np.isfinite(v) | (v <= 0)
    if m.count is not None:
        c = np.asarray(m.count)
        if c.shape != v.shape:
            raise ValueError(f"count must have the shape of values {v.shape}, got {c.shape}")
        mask |= c <= 0
    mask |= t_e[None, 1:] <= s_e[:-1, None]
    return np.ma.masked_array(v, mask=mask)


def _gap_values(c: GapCurve) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(c.values, dtype=float).copy()
    if c.count is not None:
        v[np.asarray(c.count) <= 0] = np.nan
    v[~np.isfinite(v)] = np.nan
    return np.asarray(c.gap, dtype=float), v


def _heatmap(ax, fig, m: TimeGridMap) -> None:
    z = masked_map(m)
    ax.set_facecolor("0.93")
    if z.count() == 0:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        mesh = None
    else:
        lo, hi = float(z.min()), float(z.max())
        norm = LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 1.0001)
        mesh = ax.pcolormesh(m.s_edges, m.t_edges, z.T, norm=norm, cmap="viridis", shading="flat")
        fig.colorbar(mesh, ax=ax, label=m.label, shrink=0.9)
    lo = min(float(m.s_edges[0]), float(m.t_edges[0]))
    hi = max(float(m.s_edges[-1]), float(m.t_edges[-1]))
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.6)
    ax.set_xlim(float(m.s_edges[0]), float(m.s_edges[-1]))
    ax.set_ylim(float(m.t_edges[0]), float(m.t_edges[-1]))
    ax.set_aspect("equal")
    ax.grid(False)
    ax.set_xlabel("$s$ (from)")
    ax.set_ylabel("$t$ (to)")
    ax.set_title(m.title, loc="left")


def _gap_panel(ax, curves: Sequence[GapCurve], ylabel: str) -> None:
    drawn = []
    for k, c in enumerate(curves):
        g, v = _gap_values(c)
        ax.plot(g, v, marker="o", ms=3, color=PALETTE[k % len(PALETTE)], label=c.label)
        drawn.append(v)
    set_value_scale(ax, drawn)
    ax.set_xlabel("gap $t - s$")
    ax.set_ylabel(ylabel)
    if len(curves) > 1:
        ax.legend(fontsize=6.5)


def st_maps(maps: Sequence[TimeGridMap], gaps: Sequence[Sequence[GapCurve]] | None = None, *, title: str = ""):
    """One row per quantity: its (s, t) heat map (:func:`masked_map`, log colour scale, grey = no
    data) and, when ``gaps`` is given, its by-gap curves beside it (``gaps[k]`` belongs to
    ``maps[k]``; an empty list leaves that panel blank)."""
    if not maps:
        raise ValueError("maps must hold at least one TimeGridMap")
    if gaps is not None and len(gaps) != len(maps):
        raise ValueError(f"gaps must hold one list of GapCurve per map ({len(maps)}), got {len(gaps)}")
    use_style()
    fig, axes = plt.subplots(len(maps), 2, figsize=(WIDTH_FULL, 2.7 * len(maps)), squeeze=False,
                             layout="constrained", gridspec_kw={"width_ratios": (1.15, 1)})
    for j, m in enumerate(maps):
        _heatmap(axes[j, 0], fig, m)
        if gaps is not None and gaps[j]:
            _gap_panel(axes[j, 1], gaps[j], m.label)
            axes[j, 1].set_title("by gap", loc="left")
        else:
            axes[j, 1].axis("off")
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontsize=9)
    return fig


def by_gap(curves: Mapping[str, Sequence[GapCurve]], *, title: str = ""):
    """One panel per quantity (key: its mathtext label) with one line per curve (log scale)."""
    if not curves:
        raise ValueError("curves must name at least one quantity")
    use_style()
    fig, axes = plt.subplots(1, len(curves), figsize=(WIDTH_FULL, 2.5), squeeze=False, layout="constrained")
    for ax, (label, series) in zip(axes[0], curves.items()):
        _gap_panel(ax, series, label)
        ax.legend(fontsize=6.5)
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontsize=9)
    return fig
