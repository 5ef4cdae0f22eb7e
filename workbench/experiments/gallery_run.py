"""The gallery run: computes, for each analytic flow, trajectories from noise to data and flow-map
displacement fields, and writes them as a run directory of kind "gallery".

``write_gallery_run(run_dir)`` writes ``RunDir.config`` ({"kind": "gallery", "flows", "fields",
"seed", "descriptions"}) and ``RunDir.gallery`` (arrays ``<flow>/times``, ``<flow>/trajectories``,
``<flow>/data``, ``<flow>/field_<s>_<t>_grid`` and ``..._disp``), from which
``analysis.make_figures`` draws the gallery figure (``analysis.figures_gallery``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..flows.base import data_end_time
from ..flows.registry import FLOW_INFO, FLOW_NAMES, make_flow
from ..rundir import atomic_write_json, check_run_dir, save_npz
from ..sampling import flow_map_trajectory

__all__ = ["FIELDS", "gallery_arrays", "write_gallery_run"]

FIELDS = ((0.0, 0.5), (0.5, 0.95))


def gallery_arrays(name: str, *, n_traj: int = 48, n_times: int = 41, grid_n: int = 15, seed: int = 0) -> dict:
    """Arrays for one flow: times (T,), trajectories (T, n, d), fields per (s, t), data samples."""
    flow = make_flow(name)
    g = torch.Generator().manual_seed(seed)
    t_end = data_end_time(flow)
    times = torch.linspace(0.0, t_end, n_times, dtype=torch.float64)
    x0 = flow.sample_marginal(0.0, n_traj, g)
    traj = flow_map_trajectory(flow, x0, grid=times)  # along the grid (semigroup): one integration for ODE oracles
    data = flow.sample_data(2000, g)
    out = {"times": times.numpy(), "trajectories": traj.numpy(), "data": data.numpy()}
    lo, hi = -3.0, 3.0
    for s, t in FIELDS:
        if flow.dim == 1:
            grid = torch.linspace(lo, hi, 200, dtype=torch.float64)[:, None]
        else:
            ax = torch.linspace(lo, hi, grid_n, dtype=torch.float64)
            gx, gy = torch.meshgrid(ax, ax, indexing="xy")
            grid = torch.zeros(grid_n * grid_n, flow.dim, dtype=torch.float64)
            grid[:, 0], grid[:, 1] = gx.reshape(-1), gy.reshape(-1)
        disp = flow.flow_map(s, t, grid) - grid
        out[f"field_{s}_{t}_grid"] = grid.numpy()[:, :2] if flow.dim > 1 else grid.numpy()
        out[f"field_{s}_{t}_disp"] = disp.numpy()[:, :2] if flow.dim > 1 else disp.numpy()
    if flow.dim > 2:  # draw the first two coordinates
        out["trajectories"] = out["trajectories"][..., :2]
        out["data"] = out["data"][:, :2]
    return out


def write_gallery_run(run_dir: str | Path, names: tuple[str, ...] = FLOW_NAMES, *, seed: int = 0,
                      progress: bool = True) -> Path:
    """Compute the gallery for ``names`` and write the run directory's config and gallery arrays
    (atomically; the arrays first, so a config always describes arrays that exist)."""
    rd = check_run_dir(run_dir, "run_dir")
    unknown = [n for n in names if n not in FLOW_NAMES]
    if isinstance(names, str) or unknown or not names:
        raise ValueError(f"names must be a non-empty tuple of flow names from {FLOW_NAMES}, got {names!r}")
    arrays = {}
    for name in tqdm(names, desc="analytic-flow gallery", disable=not progress):
        for k, v in gallery_arrays(name, seed=seed).items():
            arrays[f"{name}/{k}"] = v
    save_npz(rd.gallery, arrays)
    config = {"kind": "gallery", "flows": list(names), "fields": [list(f) for f in FIELDS], "seed": seed,
              "descriptions": {n: FLOW_INFO[n] for n in names}}
    atomic_write_json(rd.config, config)
    return rd.path
