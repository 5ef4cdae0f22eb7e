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
# # 1. A tour of analytic flows and flow-map identities
#
# Every analytic flow in the workbench is the probability flow of the interpolant
# $I_t = \alpha_t x_0 + \beta_t x_1$ with $x_0 \sim N(0, I)$ at $t = 0$ (noise) and $x_1 \sim$ data at
# $t = 1$. Each ships its own oracle for the flow map $X_{s,t}$: a closed form, or a float64 ODE solve.
# They all implement one contract, `velocity(t, x)` and `flow_map(s, t, x)`, so every identity
# check below works unchanged on a trained network.
#
# Set `SMOKE=1` in the environment to run this notebook quickly (the test suite does).

# %%
import os

import matplotlib.pyplot as plt
import torch

from analysis.figures_gallery import GalleryPanel, flow_gallery, pushforward_panel
from workbench.experiments.gallery_run import FIELDS, gallery_arrays
from workbench.flows import identities as idn
from workbench.flows.registry import FLOW_INFO, FLOW_NAMES, make_flow

SMOKE = os.environ.get("SMOKE") == "1"
torch.set_num_threads(1)
for name in FLOW_NAMES:
    print(f"{name:>14}: {FLOW_INFO[name]}")

# %% [markdown]
# ## The gallery
# Trajectories from noise to data, and the displacement $X_{s,t}(x) - x$ on a grid.

# %%
names = ["gaussian_2d", "product_4"] if SMOKE else list(FLOW_NAMES)
panels = []
for name in names:
    arr = gallery_arrays(name, n_traj=16 if SMOKE else 48, n_times=11 if SMOKE else 41, grid_n=9 if SMOKE else 15)
    fields = {f"X_{{{s},{t}}}": (arr[f"field_{s}_{t}_grid"], arr[f"field_{s}_{t}_disp"]) for s, t in FIELDS}
    panels.append(GalleryPanel(name, FLOW_INFO[name], arr["times"], arr["trajectories"], fields, arr["data"]))
fig = flow_gallery(panels)
plt.show()

# %% [markdown]
# ## Push-forward with sliders
# Move $s$ and $t$: samples of $p_s$ pushed through $X_{s,t}$ land on $p_t$ (forward *and* backward).
# The table beside the plot gives the largest residual of each identity at that $(s, t)$, in float64.

# %%
import ipywidgets as widgets

flow_choice = "product_4"


def show(name=flow_choice, s=0.1, t=0.8):
    flow = make_flow(name)
    g = torch.Generator().manual_seed(0)
    n = 300 if SMOKE else 2000
    x_s = flow.sample_marginal(s, n, g)
    y_t = flow.sample_marginal(t, n, g)
    pushed = flow.flow_map(s, t, x_s)
    pushforward_panel(x_s.numpy(), pushed.numpy(), y_t.numpy(), s, t, title=f"{name}: $X_{{{s:.2f},{t:.2f}}}$")
    plt.show()
    report = idn.identity_report(flow, s, t, x_s[:16])
    for k, v in report.items():
        print(f"{k:>20}: {v:.2e}")


t_hi = 0.99  # atoms and circles are singular at t = 1
widgets.interact(show, name=list(FLOW_NAMES), s=widgets.FloatSlider(value=0.1, min=0.0, max=t_hi, step=0.01),
                 t=widgets.FloatSlider(value=0.8, min=0.0, max=t_hi, step=0.01))

# %% [markdown]
# ## Identities hold to float64 round-off on every flow
# The same residual functions on every registry flow, at one $(s, t)$. Closed forms reach
# ~1e-15; the ODE-oracle flows (Gaussian mixtures) sit at their solver tolerance.

# %%
rows = []
for name in (["gaussian_2d", "mixture1d"] if SMOKE else FLOW_NAMES):
    flow = make_flow(name)
    x = flow.sample_marginal(0.2, 8, torch.Generator().manual_seed(1))
    rows.append((name, idn.identity_report(flow, 0.2, 0.7, x)))
keys = list(rows[0][1])
print(f"{'flow':>14} " + " ".join(f"{k[:10]:>10}" for k in keys))
for name, rep in rows:
    print(f"{name:>14} " + " ".join(f"{rep.get(k, float('nan')):10.1e}" for k in keys))

# %% [markdown]
# ## A map that is self-consistent but wrong
# The trig-schedule Gaussian flow, used as if it were the linear one: the semigroup holds exactly,
# yet the tangent condition fails by O(1). Only derivative-level identities see this.

# %%
true_flow, other = make_flow("gaussian_2d", "linear"), make_flow("gaussian_2d", "trig")


class WrongMap:
    dim = 2

    def flow_map(self, s, t, x):
        return other.flow_map(s, t, x)

    def velocity(self, t, x):
        return true_flow.velocity(t, x)


x = true_flow.sample_marginal(0.3, 8, torch.Generator().manual_seed(2))
for k, v in idn.identity_report(WrongMap(), 0.3, 0.8, x).items():
    print(f"{k:>12}: {v:.2e}")
