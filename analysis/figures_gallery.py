"""Drawing the analytic-flow gallery: trajectories and flow-map displacement fields per flow.

The arrays come from a gallery run (``workbench.experiments.gallery_run`` computes and writes them,
``analysis.loaders.load_gallery`` reads them back as :class:`GalleryPanel`); notebooks build panels
directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from .style import PALETTE, WIDTH_FULL, use_style


@dataclass(frozen=True)
class GalleryPanel:
    """Data for one flow: trajectories (T, n, d) on times (T,), displacement fields on a grid.

    ``fields`` maps a label "X_{s,t}" to (grid (m, d), displacement (m, d)); for d = 1 the grid is
    (m, 1) and the displacement X_{s,t}(x) - x is drawn as a curve. ``data`` are samples at t = 1.
    """

    name: str
    description: str
    times: np.ndarray
    trajectories: np.ndarray
    fields: dict
    data: np.ndarray


def flow_gallery(panels: list[GalleryPanel]):
    """Rows = flows; columns = trajectories from noise (t = 0) to data (t = 1), then one column per field."""
    use_style()
    n_fields = max(len(p.fields) for p in panels)
    ncol = 1 + n_fields
    fig, axes = plt.subplots(len(panels), ncol, figsize=(WIDTH_FULL, 2.0 * len(panels)), squeeze=False)
    for row, p in zip(axes, panels):
        d = p.trajectories.shape[-1]
        ax = row[0]
        if d == 1:
            ax.plot(p.times, p.trajectories[:, :, 0], color=PALETTE[0], lw=0.5, alpha=0.6)
            ax.set_xlabel("$t$")
            ax.set_ylabel("$x$")
        else:
            for k in range(p.trajectories.shape[1]):
                ax.plot(p.trajectories[:, k, 0], p.trajectories[:, k, 1], color=PALETTE[0], lw=0.5, alpha=0.5)
            ax.scatter(p.data[:, 0], p.data[:, 1], s=1, color=PALETTE[1], alpha=0.4, label="data")
            ax.scatter(p.trajectories[0, :, 0], p.trajectories[0, :, 1], s=3, color=PALETTE[7], label="$t=0$")
            ax.scatter(p.trajectories[-1, :, 0], p.trajectories[-1, :, 1], s=3, color=PALETTE[3], label="$t=1$")
            ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"{p.name}: trajectories", loc="left")
        for j, (label, (grid, disp)) in enumerate(p.fields.items()):
            ax = row[1 + j]
            if d == 1:
                ax.plot(grid[:, 0], disp[:, 0], color=PALETTE[2])
                ax.set_xlabel("$x$")
                ax.set_ylabel(f"${label}(x) - x$")
            else:
                mag = np.linalg.norm(disp, axis=1)
                ax.quiver(grid[:, 0], grid[:, 1], disp[:, 0], disp[:, 1], mag, angles="xy", scale_units="xy",
                          scale=1.0, width=0.004, cmap="viridis")
                ax.set_aspect("equal", adjustable="datalim")
            ax.set_title(f"${label}(x) - x$", loc="left")
        for ax in row[1 + len(p.fields):]:
            ax.axis("off")
    fig.tight_layout()
    return fig


def pushforward_panel(x_s: np.ndarray, pushed: np.ndarray, y_t: np.ndarray, s: float, t: float, title: str = ""):
    """Samples of p_s, their images X_{s,t}(x_s) and fresh samples of p_t (2-D or 1-D histograms)."""
    use_style()
    fig, ax = plt.subplots(figsize=(WIDTH_FULL / 2, WIDTH_FULL / 2))
    if x_s.shape[1] == 1:
        bins = np.linspace(min(x_s.min(), y_t.min()) - 0.5, max(x_s.max(), y_t.max()) + 0.5, 60)
        ax.hist(x_s[:, 0], bins=bins, density=True, alpha=0.4, color=PALETTE[7], label=f"$p_{{{s:.2f}}}$")
        ax.hist(y_t[:, 0], bins=bins, density=True, alpha=0.4, color=PALETTE[1], label=f"$p_{{{t:.2f}}}$")
        ax.hist(pushed[:, 0], bins=bins, density=True, histtype="step", color=PALETTE[0], lw=1.5,
                label="$X_{s,t}\\#p_s$")
    else:
        ax.scatter(x_s[:, 0], x_s[:, 1], s=2, color=PALETTE[7], alpha=0.3, label=f"$x \\sim p_{{{s:.2f}}}$")
        ax.scatter(y_t[:, 0], y_t[:, 1], s=2, color=PALETTE[1], alpha=0.3, label=f"$y \\sim p_{{{t:.2f}}}$")
        ax.scatter(pushed[:, 0], pushed[:, 1], s=2, color=PALETTE[0], alpha=0.6, label="$X_{s,t}(x)$")
        ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title or f"push-forward from $s={s:.2f}$ to $t={t:.2f}$", loc="left")
    fig.tight_layout()
    return fig
