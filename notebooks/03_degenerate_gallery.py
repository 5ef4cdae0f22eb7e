# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. A gallery of degenerate solutions, and how each detector sees them
#
# Flow-map objectives have fixed points that are not the flow (K26 analyses how training falls into
# them; the codes D1-D9 are catalogued in `docs/detectors.md`): the identity map (D1), collapse onto
# a point or one trajectory (D2, D4), a self-consistent map of the wrong velocity field (D3),
# one-step maps that break the semigroup (D5), fast time oscillations (D7).
# `workbench.flows.degenerate` builds each of them *exactly* around an analytic flow (closed forms
# in its module docstring), and each one implements the flow contract, so it can be handed to
# `diagnose` as if it were a trained network. Here we look at
#
# 1. which flow-map identities each map satisfies (residuals in float64),
# 2. which detectors fire on it (a matrix of maps against detectors),
# 3. what its one-step samples $X_{0,1}(x_0)$ look like against the data.
#
# The exact map (`ExactFlowMap`) comes first: no detector may fire on it. Set `SMOKE=1` to run in
# seconds (the test suite does); the full run adds eight Gaussians, whose ODE oracle is slower.

# %%
import os

import matplotlib.pyplot as plt
import torch

from analysis.notebook_plots import detector_matrix, detector_table, sample_panels
from workbench.diagnostics import DETECTORS, MAP_DETECTORS, Probe, diagnose, format_diagnosis
from workbench.flows import identities as idn
from workbench.flows.base import data_end_time
from workbench.flows.degenerate import degenerate_maps
from workbench.flows.registry import FLOW_INFO, make_flow
from workbench.models import ExactFlowMap

# %matplotlib inline

SMOKE = os.environ.get("SMOKE") == "1"
torch.set_num_threads(1)
FLOWS = ["gaussian_2d", "product_4"] if SMOKE else ["gaussian_2d", "product_4", "gmm_8"]
N_PROBE = 128 if SMOKE else 1024


def gallery(flow_name: str) -> dict:
    """The exact map and every degenerate map of one flow, with their detector reports."""
    flow = make_flow(flow_name)
    maps = {"exact map": ExactFlowMap(flow), **degenerate_maps(flow)}
    probe = Probe(flow.dim, reference=flow, n=N_PROBE, generator=torch.Generator().manual_seed(0))
    reports = {name: diagnose(m, probe=probe) for name, m in maps.items()}
    return {"flow": flow, "maps": maps, "reports": reports}


results = {name: gallery(name) for name in FLOWS}
for name in FLOWS:
    print(f"{name}: {FLOW_INFO[name]}; {len(results[name]['maps']) - 1} degenerate maps")

# %% [markdown]
# ## 1. Which identities hold
# Residuals of the flow-map identities (`workbench.flows.identities`, as in notebook 1) at
# $(s, t) = (0.2, 0.7)$ on samples of $p_{0.2}$, largest over the points. Each map's `velocity` is
# its own diagonal $v_{t,t}$ (what a trained network's diagonal is), so `tangent`, `lagrangian`
# and `eulerian` test the map against *itself*; the column `v vs b` is $\max |v_{s,s} - b_s|$
# against the reference velocity. The last column lists what holds by construction for every
# reference flow (`DegenerateMap.guaranteed`). Small residuals do not mean correct: the
# self-consistent maps pass every identity and fail only against the reference.

# %%
flow = results["gaussian_2d"]["flow"]
x = flow.sample_marginal(0.2, 16, torch.Generator().manual_seed(1))
keys = None
for name, m in results["gaussian_2d"]["maps"].items():
    rep = idn.identity_report(m, 0.2, 0.7, x)
    rep["v vs b"] = float((m.velocity(0.2, x) - flow.velocity(0.2, x)).norm(dim=1).max())
    if keys is None:
        keys = list(rep)
        print(f"{'map':>20} " + " ".join(f"{k[:10]:>10}" for k in keys) + "  guaranteed")
    guaranteed = ", ".join(sorted(getattr(m, "guaranteed", ()))) or "(the flow itself)"
    print(f"{name:>20} " + " ".join(f"{rep.get(k, float('nan')):10.1e}" for k in keys) + f"  {guaranteed}")

# %% [markdown]
# ## 2. Which detectors fire
# Every map-level detector against the oracle. Colour: how far the detector's statistic is past
# (red) or short of (blue) its threshold; dots: the detector fired (some also need a second
# condition, named in their evidence, so a red cell without a dot is possible).

# %%
for name in FLOWS:
    reports = results[name]["reports"]
    rows = list(reports)
    cols = ["non_finite", *MAP_DETECTORS]
    labels = [f"{c} [{DETECTORS[c][1]}]" if DETECTORS[c][1] else c for c in cols]
    score, fired = detector_table(reports, cols)
    fig = detector_matrix(rows, labels, score, fired, title=f"{name}: detectors (columns) on each map (rows)")
    plt.show()
    print(f"{name}: false alarms on the exact map: {[r.name for r in reports['exact map'] if r.fired] or 'none'}")
    silent = [row for row in rows[1:] if not any(r.fired for r in reports[row])]
    print(f"{name}: degenerate maps no detector catches: {silent or 'none'}")

# %% [markdown]
# ## 3. What the samples look like
# One-step samples $X_{0,T}(x_0)$, $x_0 \sim N(0, I)$ (blue), over data samples (grey), with the
# detectors that fired; $T$ is `data_end_time(flow)`: 1, or just short of it for data with atoms.
# Some degenerate maps are invisible here — the time-warped flow has the
# exact endpoint map, the Cholesky transport the exact marginals — which is why the detectors look
# at the diagonal, the intermediate times and the coupling, not only at samples.

# %%
for name in FLOWS:
    res = results[name]
    flow = res["flow"]
    T = data_end_time(flow)
    g = torch.Generator().manual_seed(2)
    n = 500 if SMOKE else 2000
    x0 = torch.randn(n, flow.dim, generator=g, dtype=torch.float64)
    data = flow.sample_data(n, g).numpy()
    panels, notes = {}, {}
    for map_name, m in res["maps"].items():
        with torch.no_grad():
            panels[map_name] = m.flow_map(0.0, T, x0).numpy()
        notes[map_name] = "\n".join(f"{r.name} [{r.code}]" if r.code else r.name
                                    for r in res["reports"][map_name] if r.fired)
    fig = sample_panels(panels, data, ncols=4, notes=notes, title=f"{name}: one-step samples and what fired")
    plt.show()

# %% [markdown]
# ## The evidence, in words
# `format_diagnosis` for three instructive cases: a self-consistent map of the wrong field, a map
# with the right marginals but the wrong coupling, and a one-step Euler map.

# %%
for map_name in ("other_data_flow", "cholesky_transport", "euler_step"):
    print(format_diagnosis(results["gaussian_2d"]["reports"][map_name], title=map_name), "\n")
