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
# # 4. Gradient norms: what theory predicts, what training shows
#
# A short analysis of the per-sample gradient predicts where its norm blows up (the instability of
# consistency training that K26 studies). Write the per-sample loss as $\lambda\, d(F, \mathrm{sg}\,T)$ with residual $r = F - T$ and parameter
# Jacobian $J = \nabla_\theta F$; the per-sample gradient is $g = \lambda\, J^\top \partial_r d$.
# This notebook measures $|g|$ on the workbench's own objectives and prints each **fitted**
# exponent or bound next to the **predicted** one:
#
# 1. **discrete CT against the gap** $\Delta$, for $\lambda \in \{1, 1/\Delta, 1/\Delta^2\}$,
#    with the squared distance and with pseudo-Huber, on the exact map and on an MLP;
# 2. the same scaling in the **batch gradient norm the trainer logs**;
# 3. **LSD against ESD** (B25's Lagrangian and Eulerian self-distillation) over $(s, t)$: heat maps of per-sample norms, and the extra gradient
#    that flows through ESD's spatial Jacobian;
# 4. the **adaptive-weighting bound** $|\partial \mathcal{L} / \partial F| \le 1/\sqrt{c}$.
#
# Set `SMOKE=1` to run it in seconds (the test suite does).

# %%
import dataclasses
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from analysis.notebook_plots import PowerLawCurve, bound_scatter, fit_slope, power_law_panels, time_heatmaps
from workbench.diagnostics import bin_by_gap, bin_by_times
from workbench.experiments.presets import GAUSS2D
from workbench.flows.registry import make_flow
from workbench.losses import OBJECTIVES, TimeBatch, Weighting
from workbench.models import ExactFlowMap, make_mlp_flow_map
from workbench.models.perturbed import PerturbedFlowMap, smooth_direction
from workbench.training import DataConfig, ModelConfig, ObjectiveConfig, OptimConfig, TrainConfig, Trainer, read_metrics

# %matplotlib inline

SMOKE = os.environ.get("SMOKE") == "1"
torch.set_num_threads(1)
F64 = torch.float64
OUT = Path(os.environ.get("WORKBENCH_OUT", Path(tempfile.gettempdir()) / "workbench-notebooks"))  # run dirs
OUT.mkdir(parents=True, exist_ok=True)
RUNS = Path(tempfile.mkdtemp(prefix="nb04-", dir=OUT))


def per_sample_grad_norms(model: torch.nn.Module, loss: torch.Tensor) -> np.ndarray:
    """|grad_theta loss_i| for every sample i of a per-sample loss (batch,), one backward each
    (the objectives validate their inputs, which torch.func.vmap cannot trace)."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(loss.shape[0]):
        grads = torch.autograd.grad(loss[i], params, retain_graph=True, allow_unused=True)
        out.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))))
    return np.array(out)


def fixed_times(s: torch.Tensor, t: torch.Tensor) -> TimeBatch:
    """Off-diagonal (s, t) pairs handed to an objective instead of drawing them."""
    return TimeBatch(s=s, t=t, diagonal=torch.zeros(s.shape, dtype=torch.bool))


# %% [markdown]
# ## 1. Discrete CT: the gradient against the gap
#
# CT's target is one Euler step along the conditional velocity, $x_u = I_s + \Delta\, \dot I_s$,
# so even at the exact map the residual is $r \approx -\Delta\, \nabla X\, (\dot I_s - b_s(I_s))
# = O(\Delta)$, and for any smooth model $r = \Delta \dot f + O(\Delta^2)$. Hence:
#
# | $\lambda(\Delta)$ | squared distance, $\lVert g\rVert \propto \lambda\Delta$ | pseudo-Huber, $\lVert g\rVert \propto \lambda$ |
# |---|---|---|
# | $1$ | $\Delta^{1}$ | $\Delta^{0}$ |
# | $1/\Delta$ (iCT-like) | $\Delta^{0}$ | $\Delta^{-1}$ |
# | $1/\Delta^2$ | $\Delta^{-1}$ | $\Delta^{-2}$ |
#
# The next order, $\tfrac12 \Delta^2 \ddot f$, bends the curves at the largest gaps, so the fit over
# the small gaps alone sits closer to the prediction. Pseudo-Huber normalises the residual
# ($|\partial_r d| < 1$), which is exactly what an $O(1)$ noise floor $\xi$ (EMA teacher,
# dropout, bf16) does to the squared distance: its column is the prediction for a residual dominated by such noise (it holds
# while the residual is much larger than $c$, here $0.00054\sqrt{2}$). Two models: the exact flow
# map of a 2-D Gaussian moved by one parameter $\varepsilon$ along a fixed direction
# (`PerturbedFlowMap` at $\varepsilon = 0$, so the model *is* the truth and
# $J = (t - s)\, d(s, t, x)$ is known), and an MLP at initialisation.

# %%
flow = make_flow("gaussian_2d")
exact = PerturbedFlowMap(ExactFlowMap(flow), eps=0.0)
torch.manual_seed(0)
mlp = make_mlp_flow_map(2, hidden=64, depth=3, time_embedding="raw").double()

LAMBDAS = {"one": ("$\\lambda = 1$", 1.0), "inverse": ("$1/\\Delta$", 0.0), "inverse_square": ("$1/\\Delta^2$", -1.0)}
DISTANCES = {"l2": 0.0, "pseudo_huber": -1.0}  # exponent shift relative to the l2 column
deltas = np.geomspace(0.01, 0.3, 5 if SMOKE else 9)
n_g1 = {"exact": 64 if SMOKE else 512, "MLP": 32 if SMOKE else 256}
g = torch.Generator().manual_seed(0)
x1_all, x0_all = flow.sample_data(512, g), torch.randn(512, 2, generator=g, dtype=F64)
u_all = torch.rand(512, generator=g, dtype=F64)

g1, rows, bound_ratio = {}, [], 0.0
for model_name, model in {"exact": exact, "MLP": mlp}.items():
    n = n_g1[model_name]
    x1, x0, u = x1_all[:n], x0_all[:n], u_all[:n]
    for dist, shift in DISTANCES.items():
        curves = []
        for lam, (label, p_l2) in LAMBDAS.items():
            norms = []
            for d in deltas:
                ct = dataclasses.replace(OBJECTIVES["ct"], delta=float(d), delta_weight=lam, distance=dist)
                s = u * (1 - d)  # s ~ U[0, 1 - delta], t = 1 (the consistency function)
                loss = ct(model, x1, x0=x0, times=fixed_times(s, torch.ones_like(s))).loss
                gn = per_sample_grad_norms(model, loss)
                norms.append(gn.mean())
                if model_name == "exact" and dist == "pseudo_huber":  # |g| <= lambda |J| (|d d/dr| < 1)
                    xs = (1 - s)[:, None] * x0 + s[:, None] * x1
                    J = ((1 - s)[:, None] * smooth_direction(s, torch.ones_like(s), xs)).norm(dim=1).numpy()
                    lam_value = {"one": 1.0, "inverse": 1 / d, "inverse_square": 1 / d**2}[lam]
                    bound_ratio = max(bound_ratio, float((gn / (lam_value * J)).max()))
            predicted = p_l2 + shift
            curves.append(PowerLawCurve(label, deltas, np.array(norms), predicted))
            small = deltas <= 0.06
            rows.append((model_name, dist, lam, fit_slope(deltas, np.array(norms)),
                         fit_slope(deltas[small], np.array(norms)[small]), predicted))
        g1[f"{model_name}, {dist.replace('_', '-')}"] = curves

print(f"{'model':>6} {'distance':>13} {'lambda':>15} {'fitted':>7} {'fitted, gap <= 0.06':>20} {'predicted':>9}")
for model_name, dist, lam, fitted, fitted_small, predicted in rows:
    print(f"{model_name:>6} {dist:>13} {lam:>15} {fitted:7.3f} {fitted_small:20.3f} {predicted:9.0f}")
print(f"pseudo-Huber bound: max over samples and gaps of |g| / (lambda |J|) = {bound_ratio:.8f} (theory: < 1)")
fig = power_law_panels(g1, xlabel="gap $\\Delta$", ylabel="mean per-sample $|g|$", ncols=2,
                       title="discrete CT: per-sample gradient norm against the gap")
plt.show()

# %% [markdown]
# ## 2. What training shows: the logged batch gradient norm
# The trainer logs $|\nabla_\theta \mathcal{L}|$ of the batch mean before clipping. Train the same
# MLP with CT (squared distance) at two gaps for each $\lambda$ and compare the median logged norm:
# the predicted ratio is $(\Delta_2 / \Delta_1)^{p}$ with $p$ from the table above.

# %%
D1, D2 = 0.02, 0.2
train_steps = 8 if SMOKE else 200
logged = {}
for lam in LAMBDAS:
    for d in (D1, D2):
        cfg = TrainConfig(
            model=ModelConfig(hidden=64, depth=3, time_embedding="raw"),
            objective=ObjectiveConfig("ct", {"delta": d, "delta_weight": lam, "distance": "l2"}),
            data=GAUSS2D, optim=OptimConfig(name="adam", lr=1e-3, schedule="constant", grad_clip=1.0),
            batch_size=256, steps=train_steps, seed=0, device="cpu", ema_rates=(), log_every=1,
            checkpoint_every=0, tensorboard=False, progress=False)
        Trainer(cfg, RUNS / f"ct-{lam}-{d}").fit()
        logged[lam, d] = np.median([r["grad_norm"] for r in read_metrics(RUNS / f"ct-{lam}-{d}") if "grad_norm" in r])
print(f"{'lambda':>15} {'median |grad| at 0.02':>22} {'at 0.2':>9} {'fitted p':>9} {'predicted p':>11}")
for lam, (_, p) in LAMBDAS.items():
    fitted = np.log(logged[lam, D2] / logged[lam, D1]) / np.log(D2 / D1)
    print(f"{lam:>15} {logged[lam, D1]:22.4g} {logged[lam, D2]:9.4g} {fitted:9.3f} {p:11.0f}")

# %% [markdown]
# ## 3. LSD against ESD over $(s, t)$
# Both residuals vanish linearly as $t - s \to 0$ for a smooth map (at $t = s$,
# $\partial_t X = v_{s,s}$ and $\partial_s X = -v_{s,s}$, $\nabla X = I$), so per-sample gradients
# should grow like $(t - s)^1$ at small gaps. ESD's residual carries the spatial Jacobian,
# $\nabla X_{s,t}\, v_{s,s}$; B25's ESD stops the gradient through it (`stopgrad="full"`), while
# letting it flow (`"convex"`) adds the mixed derivative $\nabla_\theta (\nabla_x F\, v)$, whose
# size scales with $(t - s)$: the ratio convex / full should be $\approx 1$ at small gaps and grow
# with the gap. The model: an MLP trained briefly with LSD on eight Gaussians, whose mode
# boundaries make $\nabla_x X$ large towards $t = 1$.

# %%
gmm = make_flow("gmm_8")
GMM8 = DataConfig("gmm", {"weights": gmm.weights.tolist(), "means": gmm.means.tolist(), "covs": gmm.covs.tolist()})
cfg = TrainConfig(model=ModelConfig(hidden=64, depth=3, time_embedding="raw", data_std=2.0),
                  objective=ObjectiveConfig("lsd"), data=GMM8,
                  optim=OptimConfig(name="adam", lr=2e-3, schedule="constant"), batch_size=256,
                  steps=30 if SMOKE else 600, seed=0, device="cpu", ema_rates=(), log_every=10,
                  checkpoint_every=0, tensorboard=False, progress=False)
trainer = Trainer(cfg, RUNS / "lsd-gmm8")
trainer.fit()
net = trainer.model.double()

n3 = 96 if SMOKE else 768
g = torch.Generator().manual_seed(3)
x1, x0 = gmm.sample_data(n3, g), torch.randn(n3, 2, generator=g, dtype=F64)
st = torch.rand(n3, 2, generator=g, dtype=F64).sort(dim=1).values
s, t = st[:, 0], st[:, 1]
objectives = {"LSD": OBJECTIVES["lsd"], "ESD, sg full": OBJECTIVES["esd"],
              "ESD, grad via $\\nabla_x X$": dataclasses.replace(OBJECTIVES["esd"], stopgrad="convex")}
norms = {k: per_sample_grad_norms(net, obj(net, x1, x0=x0, times=fixed_times(s, t)).loss)
         for k, obj in objectives.items()}

bins = 4 if SMOKE else 8
maps, gaps = {}, {}
gap = (t - s).numpy()
for k, v in norms.items():
    b = bin_by_times(torch.as_tensor(v), s, t, bins=bins)
    maps[k] = (b.edges[0].numpy(), b.edges[1].numpy(), b.mean.numpy())
    bg = bin_by_gap(torch.as_tensor(v), t - s, bins=bins)
    centres = 0.5 * (bg.edges[0][1:] + bg.edges[0][:-1])
    gaps[k] = (centres.numpy(), bg.mean.numpy())
fig = time_heatmaps(maps, label="mean per-sample $|g|$", gaps=gaps, title="per-sample gradient norm over $(s, t)$")
plt.show()

small = gap < np.quantile(gap, 0.5)
print(f"{'objective':>28} {'exponent in t - s (lower half)':>31} {'predicted':>9}")
for k, v in norms.items():
    print(f"{k:>28} {fit_slope(gap[small], v[small]):31.3f} {1:9d}")
ratio = norms[list(objectives)[2]] / norms["ESD, sg full"]
edges = np.quantile(gap, [0, 1 / 3, 2 / 3, 1])
print("ESD convex / full, median per gap tercile (predicted: ~1 at small gaps, growing with the gap):")
for lo, hi in zip(edges[:-1], edges[1:]):
    sel = (gap >= lo) & (gap <= hi)
    print(f"  t - s in [{lo:.2f}, {hi:.2f}]: {np.median(ratio[sel]):.3f}")
print(f"median ESD (full) / LSD: {np.median(norms['ESD, sg full'] / norms['LSD']):.3f}")

# %% [markdown]
# ## 4. The adaptive-weighting bound
# Adaptive weighting divides each sample's loss by $\mathrm{sg}(\ell + c)^p$. With the squared
# distance $\ell = |r|^2$ and $p = 1$, $|\partial \mathcal{L}/\partial F| = 2|r| / (|r|^2 + c)
# \le 1/\sqrt{c}$, with equality at $|r| = \sqrt{c}$ (the maximum of $2a / (a^2 + c)$ over $a \ge 0$),
# so $|g| \le |J| / \sqrt{c}$.
# Measured on CT ($\lambda = 1$) at the exact map over gaps that sweep $|r|$ through $\sqrt{c}$:
# the derivative from the objective's own `aux` (`weight` = $\partial\mathcal{L}/\partial\ell$,
# times $2|r|$), and the parameter gradient by autograd against $|J|$.

# %%
points, curves, bounds = {}, {}, {}
n4 = 64 if SMOKE else 256
g = torch.Generator().manual_seed(4)
print(f"{'c':>7} {'max |dL/dF| sqrt(c)':>20} {'max |g| sqrt(c) / |J|':>22} {'theory':>7}")
for c in (1e-4, 1e-3, 1e-2):
    r_all, dF_all, ratio_g = [], [], 0.0
    for d in np.geomspace(1e-3, 0.5, 6 if SMOKE else 12):
        ct = dataclasses.replace(OBJECTIVES["ct"], delta=float(d), delta_weight="one", distance="l2",
                                 weighting=Weighting("adaptive", c=c, p=1.0))
        x1, x0 = flow.sample_data(n4, g), torch.randn(n4, 2, generator=g, dtype=F64)
        s = torch.rand(n4, generator=g, dtype=F64) * (1 - d)
        res = ct(exact, x1, x0=x0, times=fixed_times(s, torch.ones_like(s)))
        r = res.aux["residual_norm"].numpy()
        r_all.append(r)
        dF_all.append(res.aux["weight"].numpy() * 2 * r)
        xs = (1 - s)[:, None] * x0 + s[:, None] * x1
        J = ((1 - s)[:, None] * smooth_direction(s, torch.ones_like(s), xs)).norm(dim=1).numpy()
        ratio_g = max(ratio_g, float(np.max(per_sample_grad_norms(exact, res.loss) / J)))
    r_all, dF_all = np.concatenate(r_all), np.concatenate(dF_all)
    label = f"$c = 10^{{{int(np.log10(c))}}}$"
    points[label] = (r_all, dF_all)
    grid = np.geomspace(r_all.min(), r_all.max(), 200)
    curves[label] = (grid, 2 * grid / (grid**2 + c))
    bounds[label] = 1 / np.sqrt(c)
    print(f"{c:7.0e} {dF_all.max() * np.sqrt(c):20.9f} {ratio_g * np.sqrt(c):22.6f} {'<= 1':>7}")
fig = bound_scatter(points, curves=curves, bounds=bounds, xlabel="residual $|r|$",
                    ylabel="$|\\partial \\mathcal{L} / \\partial F|$", title="adaptive weighting, $p = 1$")
plt.show()
