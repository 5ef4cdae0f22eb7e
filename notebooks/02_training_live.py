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
# # 2. Training a flow map and watching its diagnostics live
#
# Three self-distillation objectives of Boffi, Albergo & Vanden-Eijnden (NeurIPS 2025, "B25") train
# the same MLP flow map $\hat X_{s,t}(x) = x + (t - s)\, v_\theta(s, t, x)$ on eight Gaussians.
# Each has the diagonal flow-matching term $\mathcal{L}_{\mathrm{diag\_fm}}$ on a share of the
# batch and one off-diagonal term built from the model's own diagonal $v_{t,t}$:
#
# * **LSD** (Lagrangian): $|\partial_t X_{s,t}(I_s) - v_{t,t}(X_{s,t}(I_s))|^2$,
# * **ESD** (Eulerian): $|\partial_s X_{s,t}(I_s) + \nabla X_{s,t}(I_s)\, v_{s,s}(I_s)|^2$,
# * **PSD** (progressive): $|v_{s,t} - [\tfrac12 v_{s,u} + \tfrac12 v_{u,t}(X_{s,u})]|^2$, $u = (s + t)/2$,
#
# and, for comparison, **iSD** (the stop-gradient self-distillation with adaptive weighting of the
# stabilising-CT work, K26). The data law is `make_flow("gmm_8")`, an analytic flow, so the same
# object is the **oracle**: `FlowMapErrorCallback` measures the RMS distance of $\hat X_{s,t}$ to
# the exact $X_{s,t}$ (an ODE solve in float64) while training runs.
#
# The live plot is `workbench.diagnostics.live.LivePlot`: a trainer callback that redraws, every
# few steps, what the run has logged to `metrics.jsonl` (one colour per objective). Outside a
# notebook it does nothing. Set `SMOKE=1` to run the notebook in seconds (the test suite does).
# Run directories go under `$WORKBENCH_OUT` (default: a folder in the system's temporary directory).

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from analysis.notebook_plots import live_curves, sample_panels
from workbench.diagnostics import FlowMapErrorCallback, Probe, diagnose, format_diagnosis, sliced_wasserstein2
from workbench.diagnostics.live import LivePlot
from workbench.flows.registry import make_flow
from workbench.sampling import sample
from workbench.training import (
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    TrainConfig,
    Trainer,
    read_metrics,
)

# %matplotlib inline

SMOKE = os.environ.get("SMOKE") == "1"
torch.set_num_threads(1)
OUT = Path(os.environ.get("WORKBENCH_OUT", Path(tempfile.gettempdir()) / "workbench-notebooks"))  # run dirs
OUT.mkdir(parents=True, exist_ok=True)
RUNS = Path(tempfile.mkdtemp(prefix="nb02-", dir=OUT))  # a fresh directory per execution
print("runs in", RUNS)

# %% [markdown]
# ## The data law is its own oracle
# A run's `config.json` must describe its data, so the mixture is passed by its parameters
# (`get_data("gmm", ...)` rebuilds exactly `make_flow("gmm_8")`).

# %%
flow = make_flow("gmm_8")
GMM8 = DataConfig("gmm", {"weights": flow.weights.tolist(), "means": flow.means.tolist(), "covs": flow.covs.tolist()})
OBJECTIVE_NAMES = ["lsd", "esd", "psd_midpoint", "isd"]
STEPS = 40 if SMOKE else 1500
EVAL_EVERY = 10 if SMOKE else 100


def config(objective: str) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(hidden=64 if SMOKE else 128, depth=3, time_embedding="raw", data_std=2.0),
        objective=ObjectiveConfig(objective),
        data=GMM8,
        optim=OptimConfig(name="adam", lr=2e-3, schedule="sqrt", decay_start=max(STEPS // 3, 1), grad_clip=10.0),
        batch_size=128 if SMOKE else 256,
        steps=STEPS,
        seed=0,
        device="cpu",
        ema_rates=(0.995,),
        log_every=1 if SMOKE else 10,
        checkpoint_every=0,
        tensorboard=False,
        progress=False,
    )


print(config("lsd"))

# %% [markdown]
# ## Train side by side, watch live
# Panels: the diagonal flow-matching term (the same quantity for every objective), each
# objective's own off-diagonal term, the global gradient norm (before clipping), and the oracle
# error of the map over the triangle $0 \le s \le t \le 1$ and of the one-step map $X_{0,1}$.
# Runs train one after the other; the figure keeps every finished run.

# %%
live = LivePlot({"diagonal FM term": ("terms/diag_fm",),
                 "off-diagonal term": ("terms/lsd", "terms/esd", "terms/psd", "terms/isd_fmd"),
                 "gradient norm": ("grad_norm",),
                 "RMS error vs oracle": ("oracle/map_rmse", "oracle/map01_rmse")},
                draw=live_curves, min_interval_s=0.5 if SMOKE else 2.0)
results = {}
for name in OBJECTIVE_NAMES:
    trainer = Trainer(config(name), RUNS / name, callbacks=[
        FlowMapErrorCallback(flow, every=EVAL_EVERY, n=256 if SMOKE else 2048, seed=1),
        live.callback(name, every=EVAL_EVERY),
    ])
    results[name] = (trainer.fit(), trainer.model, trainer.ema.models)
    print(f"{name:>13}: {results[name][0].message}")
if not live.active:  # outside a notebook: draw the finished runs once
    fig = live.figure()
    plt.show()

# %% [markdown]
# ## Where they ended
# The last logged oracle errors (online model and EMA), the sliced $W_2$ of one-step samples to
# fresh data, and how many updates were skipped as non-finite.

# %%
g = torch.Generator().manual_seed(7)
n_eval = 512 if SMOKE else 4000
data = flow.sample_data(n_eval, g, dtype=torch.float32)
print(f"{'objective':>13} {'map rmse':>9} {'ema rmse':>9} {'X01 rmse':>9} {'SW2 1-step':>10} {'skipped':>7}")
for name, (res, model, _ema) in results.items():
    rows = [r for r in read_metrics(res.run_dir) if "oracle/map_rmse" in r]
    last = rows[-1]
    x1 = sample(model, n_eval, n_steps=1, generator=torch.Generator().manual_seed(8))
    sw2 = sliced_wasserstein2(x1, data, generator=torch.Generator().manual_seed(9))
    print(f"{name:>13} {last['oracle/map_rmse']:9.4f} {last['oracle/ema0.995/map_rmse']:9.4f} "
          f"{last['oracle/map01_rmse']:9.4f} {sw2:10.4f} {res.skipped_total:7d}")

# %% [markdown]
# ## Samples: one step and four steps
# $x_{k+1} = \hat X_{t_k, t_{k+1}}(x_k)$ on a uniform grid from $x_0 \sim N(0, I)$ (blue), over
# data samples (grey). A flow map that has learned its two-time structure improves or stays flat
# with more steps.

# %%
panels = {}
for k in (1, 4):
    for name, (_, model, _) in results.items():
        panels[f"{name}, {k} step{'s' if k > 1 else ''}"] = sample(
            model, 1000 if SMOKE else 3000, n_steps=k, generator=torch.Generator().manual_seed(10)).numpy()
fig = sample_panels(panels, data.numpy(), ncols=len(results), title="flow-map samples (blue) over data (grey)")
plt.show()

# %% [markdown]
# ## What the detectors say
# `diagnose` runs every degenerate-solution detector against the oracle (K26 sec. 3) and the
# history detectors on the logged metrics. One `Probe` is shared, so the oracle solves once.

# %%
probe = Probe(flow.dim, reference=flow, n=128 if SMOKE else 512, generator=torch.Generator().manual_seed(11))
for name, (res, model, _) in results.items():
    reports = diagnose(model, probe=probe, history=read_metrics(res.run_dir))
    print(format_diagnosis(reports, title=name), "\n")
