"""The figure style (one .mplstyle), fixed widths, and saving as PDF + PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # the backend is matplotlib's choice: Agg headless, inline in JupyterLab

from workbench.rundir import atomic_write

STYLE = Path(__file__).with_name("style.mplstyle")
#: fixed figure widths (inches): one column and full page
WIDTH_SINGLE = 3.35
WIDTH_FULL = 6.75
#: Okabe-Ito colour-blind-safe palette
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def use_style() -> None:
    plt.style.use(str(STYLE))


def save_figure(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``name``.pdf and ``name``.png into out_dir (created), each atomically (a crash leaves
    the previous file or none, never a torn one); close the figure; return the paths."""
    out = Path(out_dir)
    paths = [out / f"{name}.pdf", out / f"{name}.png"]
    try:
        for p in paths:
            atomic_write(p, lambda f, fmt=p.suffix[1:]: fig.savefig(f, format=fmt))
    finally:
        plt.close(fig)
    return paths
