"""Rebuild every figure from run directories alone.

    python -m analysis.make_figures RUN_DIR [RUN_DIR ...] --out figures/

Each run directory's config.json names its ``kind``; the matching builder reads the run's data
files and calls one figure function per figure (data in, Figure out).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .gallery import GalleryPanel, flow_gallery
from .style import save_figure


def load_gallery(run_dir: Path) -> list[GalleryPanel]:
    cfg = json.loads((run_dir / "config.json").read_text())
    arrays = np.load(run_dir / "gallery.npz")
    panels = []
    for name in cfg["flows"]:
        fields = {}
        for s, t in cfg["fields"]:
            fields[f"X_{{{s},{t}}}"] = (arrays[f"{name}/field_{s}_{t}_grid"], arrays[f"{name}/field_{s}_{t}_disp"])
        panels.append(GalleryPanel(name=name, description=cfg["descriptions"][name], times=arrays[f"{name}/times"],
                                   trajectories=arrays[f"{name}/trajectories"], fields=fields,
                                   data=arrays[f"{name}/data"]))
    return panels


def _gallery(run_dir: Path, out: Path) -> list[Path]:
    return save_figure(flow_gallery(load_gallery(run_dir)), out, "gallery")


BUILDERS = {"gallery": _gallery}


def make_figures(run_dirs: list[Path], out: Path) -> list[Path]:
    """Build every figure the given run directories support; return the written paths."""
    written: list[Path] = []
    for rd in map(Path, run_dirs):
        cfg_path = rd / "config.json"
        if not cfg_path.exists():
            raise ValueError(f"run directory {rd} has no config.json")
        kind = json.loads(cfg_path.read_text()).get("kind")
        if kind not in BUILDERS:
            raise ValueError(f"run directory {rd} has kind {kind!r}; known kinds: {sorted(BUILDERS)}")
        written += BUILDERS[kind](rd, out)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.make_figures", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("figures"))
    args = p.parse_args(argv)
    try:
        paths = make_figures(args.run_dirs, args.out)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
