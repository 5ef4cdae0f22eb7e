"""The main job (the README's first command): ``python -m workbench.experiments main``.

Stage 1 (analytic flows): writes the gallery run directory and regenerates its figure.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .gallery import write_gallery_run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbench.experiments main",
                                description="Run the workbench's main job and regenerate every figure.")
    p.add_argument("--runs", default="runs", help="directory for run directories (default: runs)")
    p.add_argument("--figures", default="figures", help="directory for figures (default: figures)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    runs = Path(args.runs)
    gallery = write_gallery_run(runs / "gallery", seed=args.seed, progress=not args.no_progress)
    # the entry point wires layers: analysis is imported here only, never by the library
    from analysis.make_figures import make_figures

    paths = make_figures([gallery], Path(args.figures))
    print(f"main job finished in {time.perf_counter() - t0:.1f} s")
    for p in paths:
        print(f"  wrote {p}")
    return 0
