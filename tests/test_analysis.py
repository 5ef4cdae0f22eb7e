"""Analysis figures from run directories: figure functions on synthetic data, loaders
against hand computations, closed-form time laws against Monte Carlo, make_figures end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import QuadMesh
from scipy import stats

from analysis import derived, loaders
from analysis.figures_maps import GapCurve, SampleGrid, TimeGridMap, by_gap, masked_map, samples_vs_steps, st_maps
from analysis.figures_times import TimeSamples, time_distribution
from analysis.figures_training import Event, TrainingCurves, steps_quality, training_curves
from analysis.make_figures import Options, main, make_figures
from workbench.core.tolerances import eps
from workbench.diagnostics.metrics import StepsQuality
from workbench.flows import GaussianFlow
from workbench.losses.samplers import BetaPair, DiscreteGapSampler, LogitNormalPair, UniformTriangle
from workbench.models import ExactFlowMap

F64 = torch.float64


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _legend_labels(ax) -> list[str]:
    return ax.get_legend_handles_labels()[1]


def _data_axes(fig) -> list:
    """Axes that are not colour bars (colour bars carry the attribute ``_colorbar``)."""
    return [ax for ax in fig.axes if not hasattr(ax, "_colorbar") and ax.get_label() != "<colorbar>"]


# -- figure 4: training curves ---------------------------------------------------------------------------
def _curves(signed: bool = False) -> TrainingCurves:
    k = np.arange(1, 41)
    loss = 1.0 / k
    loss[7] = np.nan  # a non-finite loss, logged as null
    b = -0.01 * np.ones(40) if signed else 0.01 * np.ones(40)
    return TrainingCurves(
        name="lsd (run)", loss=(k, loss), terms={"diag_fm": (k, 2.0 / k), "lsd": (k, b)},
        grad_norm=(k, np.sqrt(k)), grad_norm_max=(k[::5], 2 * np.sqrt(k[::5])),
        term_grad_norms={"diag_fm": (k[::10], k[::10] * 0.5), "lsd": (k[::10], k[::10] * 0.1)},
        oracle={"online: $X_{s,t}$": (k[::5], 1.0 / np.sqrt(k[::5]))},
        events=(Event(12, "identity"), Event(30, "grad_explosion")), skipped=np.array([8, 9, 33]), diverged_at=40,
    )


def test_training_curves_panels_lines_events_and_skipped_steps():
    fig = training_curves(_curves())
    axes = _data_axes(fig)
    assert len(axes) == 3
    loss_ax, grad_ax, oracle_ax = axes
    labels = _legend_labels(loss_ax)
    for want in ("total", "term diag_fm", "term lsd", "fired: identity", "fired: grad_explosion",
                 "skipped step (non-finite)", "diverged (stopped)"):
        assert want in labels
    assert [l for l in _legend_labels(grad_ax) if l.startswith(("total", "term"))] == [
        "total", "total, window max", "term diag_fm", "term lsd"]
    assert _legend_labels(oracle_ax)[0] == "online: $X_{s,t}$"
    # event names written on the loss panel; skipped steps drawn at their steps
    assert {t.get_text().strip() for t in loss_ax.texts} == {"identity", "grad_explosion"}
    skipped = [ln for ln in loss_ax.get_lines() if ln.get_label() == "skipped step (non-finite)"][0]
    np.testing.assert_array_equal(skipped.get_xdata(), [8, 9, 33])
    vlines = {float(ln.get_xdata()[0]) for ln in loss_ax.get_lines() if ln.get_label().startswith(("fired", "diverged"))}
    assert vlines == {12.0, 30.0, 40.0}
    # the other panels mark the same steps, unlabelled; the total loss skips its non-finite step
    crosses = [ln for ln in oracle_ax.get_lines() if ln.get_marker() == "x"]
    np.testing.assert_array_equal(crosses[0].get_xdata(), [8, 9, 33])
    total = [ln for ln in loss_ax.get_lines() if ln.get_label() == "total"][0]
    assert 8 not in total.get_xdata() and len(total.get_xdata()) == 39
    assert loss_ax.get_yscale() == "log" and oracle_ax.get_yscale() == "log"
    assert loss_ax.get_xlabel() == "optimiser step $k$"


def test_training_curves_signed_term_uses_symlog_and_no_oracle_panel():
    c = _curves(signed=True)
    c = TrainingCurves(name=c.name, loss=c.loss, terms=c.terms, grad_norm=c.grad_norm)
    fig = training_curves(c)
    axes = _data_axes(fig)
    assert len(axes) == 2
    assert axes[0].get_yscale() == "symlog"


# -- figure 2: quality against steps -----------------------------------------------------------------------
def test_steps_quality_one_panel_per_metric_one_line_per_method():
    steps = (1, 2, 4, 8)
    q = {
        "lsd": StepsQuality(steps, {"w2": (0.5, 0.4, 0.3, 0.3), "mmd2": (0.1, 0.01, -0.001, 0.002)},
                            (0.0, 0.1, 0.2, 0.25)),
        "psd_midpoint": StepsQuality(steps, {"w2": (0.9, 0.5, 0.3, 0.2), "mmd2": (0.2, 0.05, 0.01, 0.003)},
                                     (0.0, 0.3, 0.4, 0.45)),
    }
    fig = steps_quality(q)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["lsd", "psd_midpoint"]  # no empty panel
    visible = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title(loc="left") for ax in visible] == [
        "$W_2$", r"$\mathrm{MMD}^2$", r"$\|x^{(N)} - x^{(1)}\|$ (RMS)"]
    for ax in visible:
        assert len(ax.get_lines()) == 2
        assert ax.get_xscale() == "log"
    assert visible[0].get_yscale() == "log"
    assert visible[1].get_yscale() == "symlog"  # the unbiased MMD^2 went negative
    np.testing.assert_array_equal(visible[2].get_lines()[0].get_xdata(), [2, 4, 8])  # drift of N = 1 is 0
    np.testing.assert_allclose(visible[0].get_lines()[1].get_ydata(), q["psd_midpoint"].metrics["w2"])
    with pytest.raises(ValueError, match="qualities"):
        steps_quality({})


# -- figure 1: samples against steps -----------------------------------------------------------------------
def test_samples_vs_steps_grid_layout_and_points():
    rng = np.random.default_rng(0)
    data = rng.uniform(-1, 1, (300, 2))
    samples = {m: rng.normal(0, 0.3, (3, 200, 2)) for m in ("lsd", "esd")}
    samples["esd"][2, :20] = 50.0  # 10 % far outside the data box
    traj = {m: rng.normal(0, 1, (5, 7, 2)) for m in samples}
    grid = SampleGrid(methods=("lsd", "esd"), steps=(1, 2, 4), samples=samples, data=data,
                      times=np.linspace(0, 1, 5), trajectories=traj)
    fig = samples_vs_steps(grid)
    axes = np.array(fig.axes).reshape(2, 4)
    assert [ax.get_title() for ax in axes[0, 1:]] == ["$N = 1$", "$N = 2$", "$N = 4$"]
    assert [row[0].get_ylabel() for row in axes] == ["lsd", "esd"]
    # panel (esd, N = 2): the second scatter holds exactly the N = 2 samples
    np.testing.assert_array_equal(axes[1, 2].collections[1].get_offsets(), samples["esd"][1])
    assert len(axes[0, 0].get_lines()) == 7  # one trajectory per noise point
    assert [t.get_text() for t in axes[1, 3].texts] == ["10% out"]
    assert not axes[0, 3].texts


def test_samples_vs_steps_one_dimensional_data_as_histograms():
    rng = np.random.default_rng(1)
    grid = SampleGrid(methods=("fm",), steps=(1, 2), samples={"fm": rng.normal(0, 1, (2, 300, 1))},
                      data=rng.normal(0, 1, (300, 1)), times=np.linspace(0, 1, 4),
                      trajectories={"fm": rng.normal(0, 1, (4, 6, 1))})
    fig = samples_vs_steps(grid)
    axes = fig.axes
    assert len(axes) == 3 and len(axes[0].get_lines()) == 6  # x against t, one line per point
    assert [ax.get_title() for ax in axes[1:]] == ["$N = 1$", "$N = 2$"]
    assert all(len(ax.patches) == 41 for ax in axes[1:])  # 40 data bars + one outline


def test_sample_grid_exact_map_is_step_independent():
    """For the exact flow map every N gives X_{0,1}(x0) (semigroup); x0 is one shared draw."""
    flow = GaussianFlow(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64))
    data = types.SimpleNamespace(dim=2, sample=lambda n, g, dtype=F64: flow.sample_data(n, g).to(dtype))
    grid = derived.sample_grid({"exact": ExactFlowMap(flow)}, data, steps=(1, 4), n=64, n_traj=5, n_times=3, seed=3)
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    want = flow.flow_map(0.0, 1.0, x0).numpy()
    tol = 1e3 * eps(F64)
    np.testing.assert_allclose(grid.samples["exact"][0], want, atol=tol, rtol=tol)
    np.testing.assert_allclose(grid.samples["exact"][1], want, atol=tol, rtol=tol)
    np.testing.assert_allclose(grid.trajectories["exact"][0], x0[:5].numpy())
    np.testing.assert_allclose(grid.trajectories["exact"][1], flow.flow_map(0.0, 0.5, x0[:5]).numpy(), atol=tol)


# -- figure 3: (s, t) maps and by-gap curves ----------------------------------------------------------------
def _map(count_zero=((0, 3),)) -> TimeGridMap:
    edges = np.linspace(0, 1, 5)
    values = np.arange(1.0, 17.0).reshape(4, 4)
    values[1, 2] = np.nan
    count = np.full((4, 4), 7)
    for i, j in count_zero:
        count[i, j] = 0
    return TimeGridMap("grad", r"$\|g\|$", edges, edges, values, count)


def test_masked_map_masks_empty_nonfinite_and_lower_triangle():
    m = _map()
    z = masked_map(m)
    want = np.zeros((4, 4), dtype=bool)
    for i in range(4):
        for j in range(4):
            below = m.t_edges[j + 1] <= m.s_edges[i]
            want[i, j] = below or m.count[i, j] == 0 or not math.isfinite(m.values[i, j])
    np.testing.assert_array_equal(np.ma.getmaskarray(z), want)
    with pytest.raises(ValueError, match="values must have shape"):
        masked_map(TimeGridMap("x", "x", m.s_edges, m.t_edges[:-1], m.values))


def test_st_maps_heatmaps_mask_empty_bins_and_draw_gap_curves():
    m1, m2 = _map(), _map(count_zero=((0, 0), (2, 3)))
    gaps = [[GapCurve("step 1", np.arange(4) / 4, np.array([1.0, 2.0, 3.0, 4.0])),
             GapCurve("step 2", np.arange(4) / 4, np.array([1.0, 0.5, 0.2, 9.0]), count=np.array([1, 1, 0, 1]))],
            []]
    fig = st_maps([m1, m2], gaps, title="run")
    meshes = [c for ax in _data_axes(fig) for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 2
    for mesh, m in zip(meshes, (m1, m2)):
        drawn = np.ma.getmaskarray(mesh.get_array()).reshape(4, 4)  # (t, s) order as drawn
        np.testing.assert_array_equal(drawn, np.ma.getmaskarray(masked_map(m)).T)
        assert isinstance(mesh.norm, matplotlib.colors.LogNorm)
    heat = [ax for ax in _data_axes(fig) if ax.collections]
    assert heat[0].get_xlabel() == "$s$ (from)" and heat[0].get_ylabel() == "$t$ (to)"
    gap_ax = [ax for ax in _data_axes(fig) if ax.get_title(loc="left") == "by gap"]
    assert len(gap_ax) == 1 and len(gap_ax[0].get_lines()) == 2
    assert np.isnan(gap_ax[0].get_lines()[1].get_ydata()[2])  # empty gap bin masked


def test_by_gap_one_panel_per_quantity():
    g = np.linspace(0, 1, 5)
    fig = by_gap({"a": [GapCurve("lsd", g, g + 1), GapCurve("esd", g, g + 2)], "b": [GapCurve("lsd", g, 2 * g + 1)]})
    axes = _data_axes(fig)
    assert [len(ax.get_lines()) for ax in axes] == [2, 1]
    assert _legend_labels(axes[0]) == ["lsd", "esd"]


# -- figure 5: realised times against the configured law ------------------------------------------------------
def _bin_means(pdf_fn, edges, per_bin=400):
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        x = a + (b - a) * (np.arange(per_bin) + 0.5) / per_bin  # midpoint rule
        out.append(pdf_fn(x).mean())
    return np.array(out)


@pytest.mark.parametrize("sampler", [UniformTriangle(lo=0.1, hi=0.9), BetaPair(1.0, 0.8), LogitNormalPair(0.4, 1.0),
                                     DiscreteGapSampler(delta=0.2)],
                         ids=lambda s: type(s).__name__)
def test_configured_law_matches_monte_carlo_of_the_sampler(sampler):
    """Closed-form marginals of s, t and the diagonal time against histograms of the sampler's own
    draws (n = 200,000; each bin within 5 Monte Carlo standard errors plus 1 % for the midpoint rule
    at integrable endpoint singularities)."""
    obj = types.SimpleNamespace(sampler=sampler, diag_fraction=0.75)
    n, edges = 200_000, np.linspace(0, 1, 21)
    g = torch.Generator().manual_seed(1)
    s, t = (v.numpy() for v in sampler.sample(n, g))
    d = sampler.sample_diagonal(n, g).numpy()
    law = derived.configured_law(obj, np.linspace(0, 1, 11))
    assert law.diag_fraction == 0.75 and law.s_atom is None and law.t_atom is None
    for draws, key in ((s, "s_pdf"), (t, "t_pdf"), (d, "diag_pdf")):
        p = np.histogram(draws, bins=edges)[0] / n
        pdf = _bin_means(lambda x: getattr(derived.configured_law(obj, x), key), edges) * np.diff(edges)
        se = np.sqrt(np.maximum(pdf * (1 - pdf), 1e-12) / n)
        assert np.all(np.abs(p - pdf) <= 5 * se + 0.01 * pdf), (key, p, pdf)


def test_configured_law_consistency_slice_has_an_atom_and_unknown_sampler_gives_none():
    ct = types.SimpleNamespace(delta=0.25, t_end=1.0, diag_fraction=0.0)
    law = derived.configured_law(ct, np.array([0.1, 0.5, 0.8]))
    assert law.t_atom == 1.0 and law.t_pdf is None
    np.testing.assert_allclose(law.s_pdf, [1 / 0.75, 1 / 0.75, 0.0])  # U[0, t_end - delta]
    assert derived.configured_law(types.SimpleNamespace(levels=7), np.array([0.5])) is None


def test_time_distribution_panels_and_diagonal_share():
    from workbench.losses.samplers import sample_times

    tb = sample_times(4000, sampler=UniformTriangle(), diag_fraction=0.75, generator=torch.Generator().manual_seed(0))
    obj = types.SimpleNamespace(sampler=UniformTriangle(), diag_fraction=0.75)
    ts = TimeSamples("lsd", tb.s.numpy(), tb.t.numpy(), tb.diagonal.numpy(),
                     derived.configured_law(obj, np.linspace(0, 1, 101)))
    fig = time_distribution(ts, bins=10)
    assert "diagonal share 0.750 (configured 0.750)" in fig._suptitle.get_text()
    joint = [ax for ax in fig.axes if ax.get_xlabel() == "$s$ (from)"][0]
    mesh = [c for c in joint.collections if isinstance(c, QuadMesh)][0]
    mask = np.ma.getmaskarray(mesh.get_array()).reshape(10, 10)  # (t, s)
    assert mask[0, 9] and not mask[9, 0]  # below the diagonal empty, above filled
    dashed = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 3  # s, t and diagonal densities
    with pytest.raises(ValueError, match="1-D of one length"):
        time_distribution(TimeSamples("x", np.zeros(3), np.zeros(2), np.zeros(3, bool)))


# -- loaders -------------------------------------------------------------------------------------------------
def test_gap_curve_from_grid_pools_rms_per_diagonal():
    rng = np.random.default_rng(2)
    v = rng.uniform(0.1, 1.0, (4, 4))
    v[np.tril_indices(4, -1)] = np.nan
    v[0, 2] = np.nan
    c = loaders.gap_curve_from_grid(v, np.linspace(0, 1, 5), "x")
    for d in range(4):
        cells = [v[i, i + d] for i in range(4 - d) if math.isfinite(v[i, i + d])]
        assert c.count[d] == len(cells)
        assert c.values[d] == pytest.approx(math.sqrt(sum(x * x for x in cells) / len(cells)), rel=1e-14)
    np.testing.assert_allclose(c.gap, [0, 0.25, 0.5, 0.75])


def _write_diagnostics(rd: Path, steps=(10, 20)) -> dict:
    """Files in the format of workbench.diagnostics.callbacks (grad_bins.npz, map_error.npz, diagnosis.json)."""
    rng = np.random.default_rng(5)
    k, b, g = len(steps), 4, 3
    st_count = rng.integers(0, 3, (k, b, b)).astype(float)
    st_sum = st_count * rng.uniform(0.5, 2.0, (k, b, b))
    gap_count = rng.integers(0, 3, (k, b)).astype(float)
    gap_sum = gap_count * 3.0
    rmse = rng.uniform(0.01, 1.0, (k, g, g))
    rmse[:, np.tril_indices(g, -1)[0], np.tril_indices(g, -1)[1]] = np.nan
    (rd / "diagnostics").mkdir(parents=True, exist_ok=True)
    e = np.linspace(0, 1, b + 1)
    np.savez(rd / "diagnostics" / "grad_bins.npz", steps=np.array(steps), st_sum=st_sum, st_count=st_count,
             gap_sum=gap_sum, gap_count=gap_count, s_edges=e, t_edges=e, gap_edges=e)
    np.savez(rd / "diagnostics" / "map_error.npz", steps=np.array(steps), rmse=rmse, spread=np.ones((g, g)),
             edges=np.linspace(0, 1, g + 1))
    (rd / "diagnosis.json").write_text(json.dumps({"step": steps[-1], "first_fired": {"identity": 20, "collapse": 15}}))
    return {"st_sum": st_sum, "st_count": st_count, "gap_sum": gap_sum, "gap_count": gap_count, "rmse": rmse}


def _hand_run(rd: Path, objective: str = "fm") -> None:
    from workbench.training import ModelConfig, ObjectiveConfig, TrainConfig

    rd.mkdir(parents=True)
    from workbench.experiments.presets import GAUSS2D

    TrainConfig(model=ModelConfig(hidden=8, depth=1), objective=ObjectiveConfig(objective), data=GAUSS2D,
                steps=30).save(rd)
    rows = [{"step": 5, "loss": 1.0, "terms/diag_fm": 1.0, "grad_norm": 2.0, "skipped": False},
            {"step": 10, "loss": None, "terms/diag_fm": None, "grad_norm": None, "skipped": True,
             "diagnosis/collapse_fired": 1.0, "grads/term/diag_fm": 0.7, "oracle/map_rmse": 0.3,
             "oracle/ema0.999/map_rmse": 0.4, "oracle/ema0.999/map01_rmse": 0.5},
            {"step": 20, "loss": 0.5, "terms/diag_fm": 0.5, "grad_norm": 1.0, "skipped": False,
             "signals/grad_norm_max": 3.0,
             "quality/w2/1": 0.9, "quality/w2/2": 0.5, "quality/drift/1": 0.0, "quality/drift/2": 0.2,
             "quality/ema0.999/w2/1": 7.0},
            {"step": 30, "loss": None, "skipped": True, "stopped": "diverged", "message": "..."}]
    torn = '{"step": 31, "loss": 0.'  # a torn last line from a crash
    (rd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)


def test_loaders_read_metrics_events_bins_and_quality(tmp_path):
    rd = tmp_path / "fm-run"
    _hand_run(rd)
    arrays = _write_diagnostics(rd)
    run = loaders.load_training_run(rd)
    assert run.method == "fm" and run.name == "fm-run" and len(run.metrics) == 4
    c = loaders.training_curves_of(run)
    np.testing.assert_array_equal(c.loss[0], [5, 10, 20, 30])
    assert np.isnan(c.loss[1][1]) and c.loss[1][2] == 0.5
    np.testing.assert_array_equal(c.skipped, [10, 30])
    assert c.diverged_at == 30
    assert set(c.oracle) == {"online: $X_{s,t}$", "EMA 0.999: $X_{s,t}$"}
    assert c.term_grad_norms["diag_fm"][1].tolist() == [0.7]
    assert c.grad_norm_max[0].tolist() == [20] and c.grad_norm_max[1].tolist() == [3.0]
    # collapse: metrics say 10, diagnosis.json 15 -> 10; identity only in diagnosis.json
    assert c.events == (Event(10, "collapse"), Event(20, "identity"))
    q = loaders.quality_from_metrics(run.metrics)
    assert q.steps == (1, 2) and q.metrics == {"w2": (0.9, 0.5)} and q.drift == (0.0, 0.2)
    m, gap = loaders.load_grad_bins(rd)
    pooled = arrays["st_count"].sum(0)
    for i in range(4):
        for j in range(4):
            want = arrays["st_sum"][:, i, j].sum() / pooled[i, j] if pooled[i, j] else np.nan
            np.testing.assert_equal(m.values[i, j], want)
    np.testing.assert_allclose(gap.values[gap.count > 0], 3.0)
    maps = loaders.load_map_errors(rd)
    tm, curves = maps["model"]
    np.testing.assert_array_equal(tm.values, arrays["rmse"][-1])
    assert [cv.label for cv in curves] == ["step 10", "step 20"]


def _write_evaluation(rd: Path, steps=(1, 2)) -> None:
    """evaluation.json in the format of workbench.experiments.evaluate."""
    doc = {"run": rd.name, "steps": list(steps),
           "quality": {"w2": [0.4, 0.3], "mmd2": [0.01, None], "drift": [0.0, 0.1], "kl": [0.2, 0.1]},
           "floor": {"w2": 0.05, "mmd2": 0.0, "kl": 0.01},
           "oracle": {"steps_rmse": [0.5, 0.25], "map_rmse": 0.3, "map_spread": 1.0, "t_max": 1.0}}
    (rd / "evaluation.json").write_text(json.dumps(doc))


def test_quality_from_evaluation_and_floors_in_the_figure(tmp_path):
    _write_evaluation(tmp_path)
    q, floors = loaders.quality_from_evaluation(tmp_path)
    assert q.steps == (1, 2) and q.drift == (0.0, 0.1)
    assert q.metrics["w2"] == (0.4, 0.3) and q.metrics["oracle"] == (0.5, 0.25) and q.metrics["kl"] == (0.2, 0.1)
    assert q.metrics["mmd2"][0] == 0.01 and math.isnan(q.metrics["mmd2"][1])
    assert floors == {"w2": 0.05, "mmd2": 0.0, "kl": 0.01}
    fig = steps_quality({"lsd": q}, floors=floors)
    w2 = [ax for ax in fig.axes if ax.get_title(loc="left") == "$W_2$"][0]
    floor_lines = [ln for ln in w2.get_lines() if ln.get_label() == "floor (data vs data)"]
    assert len(floor_lines) == 1 and floor_lines[0].get_ydata()[0] == 0.05
    legend = [ax for ax in fig.axes if not ax.axison][0].get_legend()  # the empty sixth panel holds it
    assert [t.get_text() for t in legend.get_texts()] == ["lsd", "floor (data vs data)"]
    assert loaders.quality_from_evaluation(tmp_path / "none") is None
    (tmp_path / "evaluation.json").write_text('{"steps": [1, 2], "quality": {"w2": [0.1]}}')
    with pytest.raises(ValueError, match="not an evaluation document"):
        loaders.quality_from_evaluation(tmp_path)


def test_detector_events_read_first_fired_json(tmp_path):
    rd = tmp_path / "run"
    _hand_run(rd)
    (rd / "diagnostics").mkdir()
    (rd / "diagnostics" / "first_fired.json").write_text('{"boundary": 4, "collapse": 25}')
    events = loaders.detector_events(loaders.load_training_run(rd))
    assert events == (Event(4, "boundary"), Event(10, "collapse"))  # metrics say collapse fired at 10


def test_read_config_rejects_non_runs(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        loaders.read_config(tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        loaders.read_config(tmp_path / "missing")
    (tmp_path / "config.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a training config"):
        loaders.run_kind(loaders.read_config(tmp_path))


def test_oracle_map_error_of_a_shifted_exact_map_is_the_shift():
    """hat X = X + c gives RMS error |c| in every cell of the upper triangle, NaN below."""
    flow = GaussianFlow(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64))
    c = torch.tensor([0.3, -0.4], dtype=F64)

    class Shifted(torch.nn.Module):
        def flow_map(self, s, t, x):
            return flow.flow_map(s, t, x) + c

    values, edges = derived.oracle_map_error(Shifted(), flow, grid=4, n_cell=8)
    np.testing.assert_allclose(edges, np.linspace(0, 1, 5))
    upper = np.triu(np.ones((4, 4), dtype=bool))
    np.testing.assert_allclose(values[upper], 0.5, rtol=1e3 * eps(F64))
    assert np.isnan(values[~upper]).all()


# -- make_figures end to end ---------------------------------------------------------------------------------
def _real_run(rd: Path) -> None:
    from workbench.diagnostics import FlowMapErrorCallback
    from workbench.experiments.presets import get_presets
    from workbench.training import Trainer, apply_overrides

    cfg = apply_overrides(get_presets()["gauss2d-lsd"].config, {
        "steps": "6", "log_every": "2", "batch_size": "64", "hidden": "16", "depth": "2", "checkpoint_every": "0",
        "tensorboard": "false", "progress": "false", "eval_every": "3"})
    flow = GaussianFlow(torch.tensor(cfg.data.kwargs["mean"]), torch.tensor(cfg.data.kwargs["cov"]))
    result = Trainer(cfg, rd, callbacks=[FlowMapErrorCallback(flow, every=3, n=64)]).fit()
    assert result.status == "completed"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    rd = tmp_path_factory.mktemp("runs") / "lsd-run"
    _real_run(rd)
    return rd


def test_realised_times_of_a_real_run_follow_the_configured_law(real_run):
    """The LSD objective's own draws: diagonal share floor(0.75 * 64) / 64 exactly, and the
    off-diagonal s, t pass a Kolmogorov-Smirnov test against Beta(1, 2) and Beta(2, 1) (p > 1e-3)."""
    run = loaders.load_training_run(real_run)
    data = derived.data_source(run)
    ts = derived.realised_times(run, derived.load_model(run, data=data), data, n=64 * 40, seed=1)
    assert ts.diagonal.mean() == math.floor(0.75 * 64) / 64 == ts.configured.diag_fraction
    off = ~ts.diagonal
    assert np.all(ts.s[off] <= ts.t[off]) and np.all(ts.s[ts.diagonal] == ts.t[ts.diagonal])
    assert stats.kstest(ts.s[off], stats.beta(1, 2).cdf).pvalue > 1e-3
    assert stats.kstest(ts.t[off], stats.beta(2, 1).cdf).pvalue > 1e-3


def test_make_figures_on_a_real_and_a_hand_written_run(real_run, tmp_path, capsys):
    a, b, out = real_run, tmp_path / "fm-run", tmp_path / "figs"
    _write_diagnostics(a, steps=(3, 6))
    _write_evaluation(a)
    _hand_run(b)
    _write_diagnostics(b)
    # --ema: the logged map error is the online model's, so the EMA's is computed against the oracle
    rc = main([str(a), str(b), "--out", str(out), "--n-samples", "128", "--steps", "1,2", "--n-times", "640",
               "--ema", "0.999"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    names = ["lsd-run_training", "lsd-run_times", "lsd-run_st_maps", "fm-run_training", "fm-run_st_maps",
             "samples_vs_steps", "quality_vs_steps", "by_gap"]
    printed = captured.out.split()
    for name in names:
        for ext in (".pdf", ".png"):
            path = out / f"{name}{ext}"
            assert str(path) in printed
            assert path.stat().st_size > 1000
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(printed) == 2 * len(names)
    assert "fm-run" in captured.err and "no readable checkpoint" in captured.err


def test_make_figures_api_options_and_errors(tmp_path, capsys):
    (tmp_path / "not-a-run").mkdir()
    assert main([str(tmp_path / "not-a-run"), "--out", str(tmp_path / "o")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"kind": "mystery"}')
    with pytest.raises(ValueError, match="kind 'mystery'"):
        make_figures([tmp_path / "odd"], tmp_path / "o", options=Options())
    for bad, match in (({"n_samples": 0}, "n_samples"), ({"steps": (1, 0)}, "steps"), ({"ema": 1.5}, "ema")):
        with pytest.raises(ValueError, match=match):
            Options(**bad)
    rd = tmp_path / "fm-run"
    _hand_run(rd)
    with pytest.raises(ValueError, match="ema_rates"):
        derived.load_model(loaders.load_training_run(rd), ema=0.5)
    assert main([str(rd), "--out", str(tmp_path / "o"), "--ema", "0.5"]) == 2
    assert "not an EMA rate" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # checked before any figure is written


def test_gallery_builder_still_works(tmp_path):
    from workbench.experiments.gallery_run import write_gallery_run

    rd = write_gallery_run(tmp_path / "gallery", names=("gaussian_2d",), progress=False)
    paths = make_figures([rd], tmp_path / "figs")
    assert [p.name for p in paths] == ["gallery.pdf", "gallery.png"]


def test_library_does_not_import_analysis():
    code = ("import sys, workbench, workbench.training, workbench.diagnostics, workbench.losses, workbench.flows, "
            "workbench.experiments.cli; print(any(m == 'analysis' or m.startswith('analysis.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


# -- diverged runs and row labels -------------------------------------------------------------------------------
def _diverge(rd: Path) -> None:
    """Scale every weight of the run's newest checkpoint by 1e30: the float32 model overflows to inf."""
    from workbench.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

    step, ck = list_checkpoints(rd)[-1]
    state = load_checkpoint(ck)
    state["model"] = {k: v * 1e30 if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(state, rd, step)  # finite weights, a new checksum: a checkpoint the trainer could write


def test_make_figures_with_a_diverged_run_keeps_every_figure_and_notes_it(real_run, tmp_path):
    import shutil

    from workbench.sampling import sample_flow_map

    good, bad, out = tmp_path / "good", tmp_path / "bad", tmp_path / "figs"
    shutil.copytree(real_run, good)
    shutil.copytree(real_run, bad)
    for f in ("evaluation.json", "diagnostics"):  # quality and maps from the checkpoints, not the files
        for rd in (good, bad):
            p = rd / f
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    _diverge(bad)
    model = derived.load_model(loaders.load_training_run(bad))
    with pytest.raises(ValueError, match="non-finite"):  # the defect: the sampler's input check at step 2
        sample_flow_map(model, torch.zeros(4, 2, dtype=torch.float32), n_steps=2)
    opts = Options(n_samples=64, steps=(1, 2), n_times=128)
    paths = make_figures([good, bad], out, options=opts)
    names = {p.name for p in paths}
    for name in ("good_training", "bad_training", "samples_vs_steps", "quality_vs_steps"):
        assert {f"{name}.pdf", f"{name}.png"} <= names
        assert (out / f"{name}.png").stat().st_size > 1000
    bad_notes = [n for n in opts.notes if str(bad) in n and "non-finite" in n]
    assert len(bad_notes) == 1 and "N = 1: 64/64" in bad_notes[0] and "left out of quality_vs_steps" in bad_notes[0]
    assert not any(str(good) in n for n in opts.notes)


def test_sample_grid_marks_non_finite_samples_and_the_panel_says_so(real_run, tmp_path):
    import shutil

    from workbench.sampling import sample_flow_map

    bad = tmp_path / "bad"
    shutil.copytree(real_run, bad)
    _diverge(bad)
    runs = [loaders.load_training_run(rd) for rd in (real_run, bad)]
    data = derived.data_source(runs[0])
    models = {"lsd (good)": derived.load_model(runs[0], data=data), "lsd (bad)": derived.load_model(runs[1], data=data)}
    grid = derived.sample_grid(models, data, steps=(1, 3), n=50, n_traj=4, n_times=5, seed=2)
    assert np.isnan(grid.samples["lsd (bad)"]).all()
    # the good model's samples are those of workbench.sampling from the same seeded noise
    x0 = torch.randn(50, 2, generator=torch.Generator().manual_seed(2), dtype=F64).float()
    for i, k in enumerate((1, 3)):
        want = sample_flow_map(models["lsd (good)"], x0, n_steps=k).detach().double().numpy()
        np.testing.assert_array_equal(grid.samples["lsd (good)"][i], want)
    axes = np.array(samples_vs_steps(grid).axes).reshape(2, 3)
    assert [t.get_text() for t in axes[1, 0].texts] == ["non-finite\ntrajectories"]
    assert all([t.get_text() for t in ax.texts] == ["non-finite\nsamples"] for ax in axes[1, 1:])
    assert not any("non-finite" in t.get_text() for ax in axes[0] for t in ax.texts)


def test_row_labels_are_unique_per_data_set_and_fit_their_row():
    from analysis.make_figures import _labels, group_by_data

    def run(name, method, data):
        return types.SimpleNamespace(name=name, method=method,
                                     config=types.SimpleNamespace(data=types.SimpleNamespace(name=data, kwargs={})))

    runs = [run("checkerboard-lsd", "lsd", "checkerboard"), run("gauss-lsd", "lsd", "gaussian"),
            run("checkerboard-esd", "esd", "checkerboard"), run("gauss-lsd-2", "lsd", "gaussian")]
    groups = list(group_by_data(runs).values())
    assert [[r.name for r in g] for g in groups] == [["checkerboard-lsd", "checkerboard-esd"], ["gauss-lsd", "gauss-lsd-2"]]
    assert [_labels(g) for g in groups] == [["lsd", "esd"], ["lsd (gauss-lsd)", "lsd (gauss-lsd-2)"]]
    # a long "method (run)" label beside a row of six small panels: on two lines, inside its row and the figure
    rng = np.random.default_rng(3)
    methods = ("lsd (a-rather-long-run-directory-name-1)", "lsd (a-rather-long-run-directory-name-2)")
    grid = SampleGrid(methods=methods, steps=(1, 2, 4, 8, 16, 32), data=rng.normal(0, 1, (50, 2)),
                      samples={m: rng.normal(0, 1, (6, 50, 2)) for m in methods})
    fig = samples_vs_steps(grid)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = np.array(fig.axes).reshape(2, 6)
    fig_box = fig.get_window_extent(renderer)
    for ax in axes[:, 0]:
        label = ax.yaxis.label
        assert label.get_text().replace("\n", "") == methods[list(axes[:, 0]).index(ax)].replace(" (", "(")
        box, panel = label.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert box.height <= panel.height and box.x0 >= fig_box.x0


# -- damaged inputs and bad options: notes and usage errors, never tracebacks ------------------------------------
def test_make_figures_bad_ema_and_out_are_usage_errors(tmp_path, capsys):
    rd = tmp_path / "fm-run"
    _hand_run(rd)
    for ema in ("2", "0", "abc"):
        with pytest.raises(SystemExit) as exit_info:
            main([str(rd), "--out", str(tmp_path / "o"), "--ema", ema])
        assert exit_info.value.code == 2
        assert "argument --ema: must be an EMA rate in (0, 1)" in capsys.readouterr().err
    a_file = tmp_path / "a-file"
    a_file.write_text("figures go elsewhere")
    for out, message in ((a_file, "--out must be a directory, but"), (a_file / "sub", "cannot be created"),
                         ("", "--out must name a directory")):
        assert main([str(rd), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert a_file.read_text() == "figures go elsewhere"
    with pytest.raises(ValueError, match="out must be a directory"):
        make_figures([rd], a_file)


@pytest.mark.parametrize("content", [b"\x00\x01\xff\xfe binary", b'{"model": {"hidden": 8'])
def test_make_figures_names_a_damaged_config(tmp_path, capsys, content):
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "config.json").write_bytes(content)
    assert main([str(rd), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(rd / "config.json") in err and "Traceback" not in err


def test_damaged_metrics_rows_are_left_out_and_noted(tmp_path):
    """Binary garbage, a row without an integer step and values of the wrong type: the good rows are
    drawn as if the bad ones were not there, and the notes count what was left out."""
    clean, damaged = tmp_path / "clean", tmp_path / "damaged"
    _hand_run(clean)
    _hand_run(damaged)
    good = (clean / "metrics.jsonl").read_bytes()
    good = good[: good.rindex(b"\n") + 1]  # without the torn last line
    bad = (b"\x00\x9c\xff\xfe\x80 binary\n" + b'{"step": "abc", "loss": 1.0}\n' + b'{"loss": 2.0}\n'
           + b'{"step": 25, "loss": "0.1", "grad_norm": [1, 2], "terms/diag_fm": {"x": 1}, "lr": "text is fine"}\n')
    (damaged / "metrics.jsonl").write_bytes(bad + good)
    run = loaders.load_training_run(damaged)
    assert [r["step"] for r in run.metrics] == [25, 5, 10, 20, 30]
    assert run.metrics[0] == {"step": 25, "lr": "text is fine"}
    notes = "\n".join(run.notes)
    assert "skipped 1 line(s) that are not JSON objects" in notes
    assert "skipped 2 row(s) without an integer step" in notes
    assert "left out 3 value(s) of the wrong type (not a number) of ['grad_norm', 'loss', 'terms/diag_fm']" in notes
    want, got = loaders.training_curves_of(loaders.load_training_run(clean)), loaders.training_curves_of(run)
    np.testing.assert_array_equal(got.loss[0], want.loss[0])  # step 25 has no loss left: not a point
    np.testing.assert_array_equal(got.loss[1], want.loss[1])
    opts = Options()
    paths = make_figures([damaged], tmp_path / "figs", options=opts)
    assert tmp_path / "figs" / "damaged_training.png" in paths
    assert any("without an integer step" in n for n in opts.notes)


def test_damaged_diagnostics_files_are_noted_and_the_rest_is_drawn(tmp_path):
    rd = tmp_path / "fm-run"
    _hand_run(rd)
    _write_diagnostics(rd)
    (rd / "diagnosis.json").write_bytes(b'{"first_fired": {"identity": 2')  # truncated
    (rd / "diagnostics" / "map_error.npz").write_bytes(b"PK\x03\x04 not really a zip")
    run = loaders.load_training_run(rd)
    assert any(str(rd / "diagnosis.json") in n and "not valid JSON" in n for n in run.notes)
    assert loaders.detector_events(run) == (Event(10, "collapse"),)  # from the metrics alone
    with pytest.raises(ValueError, match="map_error.npz cannot be read"):
        loaders.load_map_errors(rd)
    opts = Options()
    paths = make_figures([rd], tmp_path / "figs", options=opts)
    assert tmp_path / "figs" / "fm-run_st_maps.png" in paths  # the gradient bins are still drawn
    assert any("map_error.npz cannot be read" in n and "not drawn" in n for n in opts.notes)


def test_save_figure_writes_atomically_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    from analysis.style import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    pdf, png = save_figure(fig, tmp_path / "out", "line")
    before = png.read_bytes()
    assert before[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:4] == b"%PDF"
    fig2, _ = plt.subplots()

    def crash(*args, **kwargs):
        raise RuntimeError("renderer died half-way")

    monkeypatch.setattr(fig2, "savefig", crash)
    with pytest.raises(RuntimeError, match="half-way"):
        save_figure(fig2, tmp_path / "out", "line")
    assert png.read_bytes() == before and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["line.pdf", "line.png"]


def test_gallery_run_refuses_unknown_flows_and_a_file(tmp_path):
    from workbench.experiments.gallery_run import write_gallery_run

    with pytest.raises(ValueError, match="names must be a non-empty tuple of flow names"):
        write_gallery_run(tmp_path / "g", names=("gmm_9",), progress=False)
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="run_dir must be a directory"):
        write_gallery_run(tmp_path / "f", names=("gaussian_2d",), progress=False)


def test_gallery_trajectories_come_from_the_one_trajectory_sampler(monkeypatch):
    """gallery_arrays steps along its time grid with workbench.sampling.flow_map_trajectory (no
    re-implementation), and each state is the flow's one-jump map X_(0, t_k)(x_0) of the same start
    (the semigroup property of the exact Gaussian flow map), up to rounding."""
    from workbench.experiments import gallery_run
    from workbench.flows.registry import make_flow
    from workbench.sampling import flow_map_trajectory

    calls = []

    def spy(model, x0, n_steps=None, grid=None):
        calls.append(grid)
        return flow_map_trajectory(model, x0, n_steps, grid)

    monkeypatch.setattr(gallery_run, "flow_map_trajectory", spy)
    out = gallery_run.gallery_arrays("gaussian_2d", n_traj=8, n_times=9, seed=1)
    assert len(calls) == 1 and np.array_equal(np.asarray(calls[0]), out["times"])
    flow = make_flow("gaussian_2d")
    x0 = torch.from_numpy(out["trajectories"][0])
    direct = np.stack([flow.flow_map(0.0, float(t), x0).numpy() for t in out["times"]])
    scale = float(np.abs(direct).max())
    assert np.abs(out["trajectories"] - direct).max() <= 64 * len(out["times"]) * eps(torch.float64) * scale
