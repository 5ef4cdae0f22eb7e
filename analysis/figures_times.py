"""The realised (s, t) distribution of an objective against its configured law.

Objectives draw a share ``diag_fraction`` of each batch on the diagonal (s = t, the flow-matching
term) and the rest off the diagonal, (s, t) with s <= t from a pair sampler (B25 code, its batch
split and time sampling; ``workbench.losses.samplers``). :func:`time_distribution` draws the joint histogram of the
off-diagonal pairs over the triangle, the marginals of s and t with the configured densities, and
the diagonal times with theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from .style import PALETTE, WIDTH_FULL, use_style


@dataclass(frozen=True)
class ConfiguredLaw:
    """Densities of the configured time law on ``grid`` (m,): ``s_pdf``, ``t_pdf`` (off-diagonal
    marginals) and ``diag_pdf`` (the diagonal time), each (m,) or None when the marginal is an atom
    (then ``s_atom`` / ``t_atom`` give its location) or unknown; ``diag_fraction`` the configured
    share of diagonal samples; ``label`` says where the law comes from."""

    grid: np.ndarray
    s_pdf: np.ndarray | None
    t_pdf: np.ndarray | None
    diag_pdf: np.ndarray | None
    diag_fraction: float
    label: str = "configured law"
    s_atom: float | None = None
    t_atom: float | None = None


@dataclass(frozen=True)
class TimeSamples:
    """Realised times of an objective: s, t (n,) and diagonal (n,) bool; configured: the law they
    should follow (None when unknown)."""

    name: str
    s: np.ndarray
    t: np.ndarray
    diagonal: np.ndarray
    configured: ConfiguredLaw | None = None


def _hist(ax, x: np.ndarray, bins: np.ndarray, *, horizontal: bool) -> None:
    if x.size:
        ax.hist(x, bins=bins, density=True, color=PALETTE[0], alpha=0.45,
                orientation="horizontal" if horizontal else "vertical", label="realised")


def _pdf(ax, grid, pdf, atom, label: str, *, horizontal: bool) -> None:
    kw = dict(color=PALETTE[7], ls="--", lw=1.1, label=label)
    if pdf is not None:
        (ax.plot(pdf, grid, **kw) if horizontal else ax.plot(grid, pdf, **kw))
    elif atom is not None:
        (ax.axhline(atom, **kw) if horizontal else ax.axvline(atom, **kw))


def time_distribution(ts: TimeSamples, *, bins: int = 25):
    """Joint histogram of the off-diagonal (s, t) over the triangle (s on x, t on y, linear colour
    scale, empty bins masked), the s marginal above it, the t marginal to its right, and in the
    corner the diagonal times; configured densities dashed. The title gives the realised and the
    configured diagonal share."""
    s, t = np.asarray(ts.s, dtype=float), np.asarray(ts.t, dtype=float)
    diag = np.asarray(ts.diagonal, dtype=bool)
    if not (s.shape == t.shape == diag.shape) or s.ndim != 1:
        raise ValueError(f"s, t and diagonal must be 1-D of one length, got {s.shape}, {t.shape}, {diag.shape}")
    use_style()
    fig = plt.figure(figsize=(WIDTH_FULL * 0.62, WIDTH_FULL * 0.62))
    gs = fig.add_gridspec(2, 2, width_ratios=(3.2, 1), height_ratios=(1, 3.2), hspace=0.16, wspace=0.1)
    ax = fig.add_subplot(gs[1, 0])
    ax_s = fig.add_subplot(gs[0, 0], sharex=ax)
    ax_t = fig.add_subplot(gs[1, 1], sharey=ax)
    ax_d = fig.add_subplot(gs[0, 1])
    edges = np.linspace(0.0, 1.0, bins + 1)
    so, to = s[~diag], t[~diag]
    h, _, _ = np.histogram2d(so, to, bins=[edges, edges], density=True)
    z = np.ma.masked_less_equal(h, 0)
    ax.set_facecolor("0.93")
    if z.count():
        mesh = ax.pcolormesh(edges, edges, z.T, vmin=0.0, vmax=float(z.max()), cmap="viridis", shading="flat")
        cax = ax.inset_axes((0.55, 0.1, 0.4, 0.04))
        fig.colorbar(mesh, cax=cax, orientation="horizontal", ticks=MaxNLocator(3))
        cax.tick_params(labelsize=6)
        cax.set_title("density of $(s, t)$", fontsize=6.5)
    ax.plot([0, 1], [0, 1], color="k", lw=0.6)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="$s$ (from)", ylabel="$t$ (to)")
    ax.grid(False)
    law = ts.configured
    _hist(ax_s, so, edges, horizontal=False)
    _hist(ax_t, to, edges, horizontal=True)
    _hist(ax_d, t[diag], edges, horizontal=False)
    if law is not None:
        _pdf(ax_s, law.grid, law.s_pdf, law.s_atom, law.label, horizontal=False)
        _pdf(ax_t, law.grid, law.t_pdf, law.t_atom, law.label, horizontal=True)
        if law.diag_fraction != 0:  # (NaN: unknown share, the law of the diagonal time still holds)
            _pdf(ax_d, law.grid, law.diag_pdf, None, law.label, horizontal=False)
    if not diag.any():
        ax_d.text(0.5, 0.5, "none", transform=ax_d.transAxes, ha="center", va="center", fontsize=7)
        ax_d.set_yticks([])
    ax_s.set_ylabel("density of $s$", fontsize=7)
    ax_t.set_xlabel("density of $t$", fontsize=7)
    ax_d.set_title("diagonal $s = t$", fontsize=7)
    ax_d.set_xlim(0, 1)
    ax_d.set_xticks([0, 1])
    ax_d.yaxis.tick_right()
    for a in (ax_s, ax_t, ax_d):
        a.tick_params(labelsize=6)
    plt.setp(ax_s.get_xticklabels(), visible=False)
    plt.setp(ax_t.get_yticklabels(), visible=False)
    ax_s.legend(fontsize=6, loc="upper right", framealpha=0.85)
    share = f"diagonal share {diag.mean():.3f}" if diag.size else "no samples"
    if law is not None:
        share += f" (configured {law.diag_fraction:.3f})"
    elif diag.size:
        share += " (configured law unknown)"
    fig.suptitle(f"{ts.name}: realised times, n = {s.size}; {share}", x=0.02, ha="left", fontsize=8)
    return fig
