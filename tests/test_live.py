"""Live training plots (workbench.diagnostics.live): the callback draws exactly what the run logged,
at the documented moments, leaves training unchanged, and does nothing outside an IPython kernel."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from workbench.diagnostics.live import (
    DEFAULT_PANELS,
    IPythonSink,
    LivePlot,
    LivePlotCallback,
    MetricsTail,
    draw_metrics,
    in_ipython_kernel,
)
from workbench.rundir import RunDir
from workbench.training import DataConfig, ModelConfig, ObjectiveConfig, OptimConfig, TrainConfig, Trainer, read_metrics

GAUSS = DataConfig("gaussian", {"mean": [1.0, -0.5], "cov": [[0.5, 0.2], [0.2, 0.3]]})


def tiny_config(steps: int = 12) -> TrainConfig:
    return TrainConfig(model=ModelConfig(hidden=8, depth=1), objective=ObjectiveConfig("lsd"), data=GAUSS,
                       optim=OptimConfig(name="adam", lr=1e-3), batch_size=16, steps=steps, log_every=1,
                       checkpoint_every=0, ema_rates=(), tensorboard=False, device="cpu", seed=3)


def lines_of(fig) -> dict[str, list[tuple[np.ndarray, np.ndarray, str]]]:
    """panel title -> [(x, y, colour)] of every data line drawn in it."""
    out = {}
    for ax in fig.axes:
        out[ax.get_title(loc="left")] = [(np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float),
                                          ln.get_color()) for ln in ax.get_lines()]
    return out


class Recorder:
    """A sink that keeps the drawn lines of every figure it is shown."""

    def __init__(self) -> None:
        self.shown: list[dict] = []

    def show(self, fig) -> None:
        self.shown.append(lines_of(fig))


def logged(run_dir, key):
    rows = [r for r in read_metrics(run_dir) if key in r]
    return np.array([r["step"] for r in rows], float), np.array([np.nan if r[key] is None else r[key] for r in rows])


def test_no_op_outside_a_kernel_and_training_unchanged(tmp_path):
    assert not in_ipython_kernel()  # pytest is not an IPython kernel
    plot = LivePlot()
    assert not plot.active
    Trainer(tiny_config(), tmp_path / "plain").fit()
    cb = plot.callback("run", every=2)
    assert cb.on_step_end(None, None) is None  # nothing to do before training, and outside a kernel
    Trainer(tiny_config(), tmp_path / "live", callbacks=[cb]).fit()
    assert plot.n_draws == 0
    a, b = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "live")
    drop = {"time/step_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b]
    # the end of training still collects the whole run, for plot.figure()
    steps, loss = plot.series["run"]["loss"]
    ref_steps, ref_loss = logged(tmp_path / "plain", "loss")
    np.testing.assert_array_equal(steps, ref_steps)
    np.testing.assert_array_equal(loss, ref_loss)


def test_redraws_show_exactly_the_logged_lines_so_far(tmp_path):
    rec = Recorder()
    plot = LivePlot(sink=rec, min_interval_s=0)
    every, steps = 4, 12
    Trainer(tiny_config(steps), tmp_path / "r", callbacks=[plot.callback("lsd", every=every)]).fit()
    # on_train_start, steps 4, 8, 12, on_train_end
    assert len(rec.shown) == 1 + steps // every + 1 == plot.n_draws
    ref_steps, ref_loss = logged(tmp_path / "r", "loss")
    ref_term_steps, ref_term = logged(tmp_path / "r", "terms/lsd")
    # at the redraw of step j the trainer has written the lines of steps < j (module docstring)
    expected_last = [0, 3, 7, 11, 12]
    for last, shown in zip(expected_last, rec.shown):
        panel = shown["loss per term"]
        if last == 0:
            assert panel == []
            continue
        x, y, _ = panel[0]  # metrics in pattern order: "loss" first
        np.testing.assert_array_equal(x, ref_steps[ref_steps <= last])
        np.testing.assert_array_equal(y, ref_loss[ref_steps <= last])
    final = rec.shown[-1]
    assert len(final["loss per term"]) == 3  # loss, terms/diag_fm, terms/lsd
    x, y, _ = final["loss per term"][2]
    np.testing.assert_array_equal(x, ref_term_steps)
    np.testing.assert_array_equal(y, ref_term)
    x, y, _ = final["gradient norm"][0]
    ref_x, ref_y = logged(tmp_path / "r", "grad_norm")
    np.testing.assert_array_equal(x, ref_x)
    np.testing.assert_array_equal(y, ref_y)


def test_two_runs_share_a_figure_colour_per_run_and_scales():
    plot = LivePlot({"a": ("loss",), "b": ("terms/*",)}, sink=None)
    plot.add("one", [{"step": 1, "loss": 2.0, "terms/x": 1.0}, {"step": 2, "loss": 1.0, "terms/x": -0.5}])
    plot.add("two", [{"step": 1, "loss": 3.0, "terms/x": None, "skipped": True, "other": 7.0}])
    s = plot.series
    assert set(s) == {"one", "two"} and set(s["two"]) == {"loss", "terms/x"}  # unrequested keys dropped
    assert math.isnan(s["two"]["terms/x"][1][0])  # JSON null (non-finite) -> NaN
    fig = plot.figure()
    drawn = lines_of(fig)
    assert len(drawn["a"]) == 2 and drawn["a"][0][2] != drawn["a"][1][2]
    scales = {ax.get_title(loc="left"): ax.get_yscale() for ax in fig.axes}
    assert scales == {"a": "log", "b": "linear"}  # all positive -> log; a negative value -> linear
    plot.clear("one")
    assert set(plot.series) == {"two"}


def test_empty_plot_draws_and_default_panels():
    fig = draw_metrics({}, DEFAULT_PANELS)
    assert [ax.get_title(loc="left") for ax in fig.axes] == list(DEFAULT_PANELS)


def test_metrics_tail_keeps_a_torn_line_for_later(tmp_path):
    path = RunDir(tmp_path).metrics
    lines = [json.dumps({"step": 1, "loss": 1.0}), json.dumps({"step": 2, "loss": 0.5}), '{"step": 3, "lo']
    path.write_text("\n".join(lines))
    tail = MetricsTail(tmp_path)
    assert [r["step"] for r in tail.read_new()] == [1, 2]
    assert tail.read_new() == []
    with open(path, "a") as f:
        f.write('ss": 0.25}\n')
    assert tail.read_new() == [{"step": 3, "loss": 0.25}]
    tail.reset()
    assert len(tail.read_new()) == 3
    assert MetricsTail(tmp_path / "missing").read_new() == []


def test_metrics_tail_skips_a_damaged_line_with_a_warning(tmp_path):
    """A line that is not a JSON object (binary garbage, a hand edit) in the middle of the log is
    skipped with a warning naming the file, as workbench.rundir.read_jsonl does; the plot goes on."""
    path = RunDir(tmp_path).metrics
    path.write_bytes(json.dumps({"step": 1, "loss": 1.0}).encode() + b"\n\x00\xff garbage\n"
                     + json.dumps({"step": 3, "loss": 0.5}).encode() + b"\n")
    tail = MetricsTail(tmp_path)
    with pytest.warns(UserWarning, match=path.name):
        rows = tail.read_new()
    assert [r["step"] for r in rows] == [1, 3]
    with open(path, "a") as f:
        f.write(json.dumps({"step": 4, "loss": 0.25}) + "\n")
    with pytest.warns(UserWarning):
        assert tail.read_new() == [{"step": 4, "loss": 0.25}]
    assert tail.read_new() == []  # unchanged file: nothing new, nothing parsed


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="panels"):
        LivePlot({})
    with pytest.raises(TypeError, match="panels"):
        LivePlot({"a": ()})
    with pytest.raises(ValueError, match="sink"):
        LivePlot(sink="screen")
    with pytest.raises(TypeError, match="sink"):
        LivePlot(sink=object())
    with pytest.raises(ValueError, match="min_interval_s"):
        LivePlot(min_interval_s=-1)
    with pytest.raises(TypeError, match="draw"):
        LivePlot(draw=3)
    plot = LivePlot(sink=None)
    with pytest.raises(ValueError, match="every"):
        plot.callback("a", every=0)
    with pytest.raises(TypeError, match="label"):
        plot.callback("")
    with pytest.raises(TypeError, match="plot"):
        LivePlotCallback(object(), "a")
    with pytest.raises(ValueError, match="step"):
        plot.add("a", [{"loss": 1.0}])


def test_kernel_detection(monkeypatch):
    import IPython

    class Shell:
        pass

    kernel_shell = Shell()
    kernel_shell.kernel = object()
    monkeypatch.setattr(IPython, "get_ipython", lambda: kernel_shell)
    assert in_ipython_kernel()
    assert isinstance(LivePlot().sink, IPythonSink)
    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())  # a terminal shell: no front end
    assert not in_ipython_kernel()
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    assert not in_ipython_kernel()


def test_ipython_sink_shows_a_png_then_updates_in_place(monkeypatch):
    import IPython.display as disp

    calls = []

    class Handle:
        def update(self, obj):
            calls.append(("update", obj))

    def display(obj, display_id=False):
        calls.append(("display", obj, display_id))
        return Handle()

    monkeypatch.setattr(disp, "display", display)
    sink = IPythonSink()
    fig = draw_metrics({"r": {"loss": (np.array([1, 2]), np.array([1.0, 0.5]))}}, {"loss": ("loss",)})
    sink.show(fig)
    sink.show(fig)
    assert [c[0] for c in calls] == ["display", "update"]
    assert calls[0][2] is True
    assert calls[0][1].data[:8] == b"\x89PNG\r\n\x1a\n" and calls[1][1].data[:8] == b"\x89PNG\r\n\x1a\n"
    sink.new_output()
    sink.show(fig)
    assert calls[-1][0] == "display"


# -- the notebooks' plotting helpers (analysis.notebook_plots) -------------------------------------
def test_fit_slope_recovers_a_power_law_and_skips_bad_points():
    import torch

    from analysis.notebook_plots import fit_slope
    from workbench.core import ulps

    tol = ulps(torch.float64, 256)  # a least-squares fit of logs of exact powers: round-off only
    x = np.geomspace(1e-3, 1.0, 7)
    assert abs(fit_slope(x, 3.0 * x**-1.5) - (-1.5)) < tol
    y = 0.5 * x**2
    y[[1, 4]] = [np.nan, 0.0]  # non-finite and non-positive values are left out of the fit
    assert abs(fit_slope(x, y) - 2.0) < tol
    assert math.isnan(fit_slope(x[:1], y[:1]))


def test_detector_table_orients_scores_and_marks_fired():
    from analysis.notebook_plots import detector_table
    from workbench.diagnostics import DetectorReport

    reports = {
        "a": [DetectorReport("up", True, 0.3, 0.1, ""), DetectorReport("down", False, 0.5, 0.1, "", fires_above=False)],
        "b": [DetectorReport("up", False, 0.0, 0.0, ""), DetectorReport("count", True, 2.0, 0.0, "")],
        "c": [DetectorReport("up", False, math.nan, 0.1, "not applicable")],
    }
    score, fired = detector_table(reports, ["up", "down", "count"])
    expected = np.array([[3.0, 0.2, np.nan], [0.0, np.nan, np.inf], [np.nan, np.nan, np.nan]])
    np.testing.assert_allclose(score, expected, rtol=1e-15)
    np.testing.assert_array_equal(fired, [[True, False, False], [False, False, True], [False, False, False]])


def test_notebook_figures_draw_and_refuse_bad_shapes():
    from analysis.notebook_plots import detector_matrix, live_curves, sample_panels

    fig = LivePlot(draw=live_curves, sink=None).figure()
    assert [ax.get_title(loc="left") for ax in fig.axes] == list(DEFAULT_PANELS)
    with pytest.raises(ValueError, match="panels"):
        sample_panels({"a": np.zeros((5, 3))})
    with pytest.raises(ValueError, match="shape"):
        detector_matrix(["r"], ["c1", "c2"], np.zeros((1, 1)), np.zeros((1, 1), bool))
