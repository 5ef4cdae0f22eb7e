"""Diagnostic callbacks: the per-step signals against numpy on a hand-made StepRecord, the periodic
gradient anatomy against an independent per-sample gradient computation (torch.func vmap, numpy
binning), the (s, t) map-error grid on exact and identity maps, and a tiny training run that
produces every file (metrics.jsonl signals, diagnostics/*.npz, diagnosis.md / diagnosis.json)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data import FlowData
from workbench.diagnostics import (
    DiagnosisCallback,
    FlowMapErrorCallback,
    PeriodicDiagnosticsCallback,
    TrainingSignalsCallback,
    per_sample_grad_norms,
)
from workbench.flows import degenerate as dg
from workbench.flows import make_flow
from workbench.flows.base import DATA_END_MARGIN, data_end_time
from workbench.losses.base import ObjectiveResult, TimeBatch
from workbench.models import ExactFlowMap, make_mlp_flow_map
from workbench.rundir import RunDir
from workbench.training import (
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    StepRecord,
    TrainConfig,
    TrainContext,
    Trainer,
    read_metrics,
)

F64 = torch.float64


class ToyObjective:
    """loss_i = |X_{s_i,t_i}(I_{s_i}) - I_{t_i}|^2 on the straight path I_u = (1 - u) x0 + u x1; terms "a" and
    "b" on the two halves of the batch. ``loss_fn`` takes the randomness as inputs (for torch.func)."""

    name = "toy"

    @staticmethod
    def draw(x1, generator):
        x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype)
        st = torch.rand(x1.shape[0], 2, generator=generator, dtype=x1.dtype).sort(dim=1).values
        return x0, st[:, 0].contiguous(), st[:, 1].contiguous()

    @staticmethod
    def loss_fn(model, x1, x0, s, t):
        xs = (1 - s)[:, None] * x0 + s[:, None] * x1
        xt = (1 - t)[:, None] * x0 + t[:, None] * x1
        return (model.flow_map(s, t, xs) - xt).pow(2).sum(dim=1)

    def __call__(self, model, x1, generator=None):
        x0, s, t = self.draw(x1, generator)
        loss = self.loss_fn(model, x1, x0, s, t)
        h = loss.shape[0] // 2
        return ObjectiveResult(loss=loss, terms={"a": loss[:h], "b": loss[h:]},
                               times=TimeBatch(s=s, t=t, diagonal=torch.zeros_like(s, dtype=torch.bool)))


def make_ctx(tmp_path: Path, model, flow, *, step: int = 5, seed: int = 3) -> TrainContext:
    cfg = TrainConfig(steps=10, device="cpu", dtype="float64", progress=False, tensorboard=False)
    return TrainContext(model=model, ema={}, objective=ToyObjective(), optimizer=None, config=cfg, run_dir=tmp_path,
                        device=torch.device("cpu"), dtype=F64, data=FlowData(flow), logger=lambda m, s: None,
                        generator=torch.Generator().manual_seed(seed), step=step)


# -- cheap signals ----------------------------------------------------------------------------------
def test_signals_against_numpy():
    loss = torch.tensor([0.5, 2.0, float("nan"), 1.0, 4.0, 3.0], dtype=F64)
    tangent = torch.tensor([1.0, float("inf"), 3.0], dtype=F64)
    result = ObjectiveResult(loss=loss, terms={"a": loss[:3]}, aux={"tangent_norm": tangent},
                             times=TimeBatch(s=torch.zeros(6), t=torch.ones(6), diagonal=torch.zeros(6, dtype=torch.bool)))
    cb = TrainingSignalsCallback()
    cb.on_train_start(None)
    outs = []
    for k, clipped in enumerate([True, False, True, False], start=1):
        rec = StepRecord(step=k, loss=float("nan"), terms={"a": 1.5}, grad_norm=2.0 * k, clipped=clipped,
                         n_nonfinite_grad=3 if k == 2 else 0, skipped=k == 2, lr=1e-3, seconds=0.01, result=result,
                         x1=torch.zeros(6, 1))
        outs.append(cb.on_step_end(None, rec))
    out = outs[-1]
    finite = loss.numpy()[np.isfinite(loss.numpy())]
    assert out["signals/loss_p50"] == pytest.approx(np.quantile(finite, 0.5), rel=1e-12)
    assert out["signals/loss_p90"] == pytest.approx(np.quantile(finite, 0.9), rel=1e-12)
    assert out["signals/loss_max"] == pytest.approx(finite.max())
    assert out["signals/aux/tangent_norm_mean"] == pytest.approx(2.0)
    assert out["signals/aux/tangent_norm_max"] == pytest.approx(3.0)
    assert out["signals/aux/tangent_norm_nonfinite"] == 1
    assert out["signals/clipped_frac"] == pytest.approx(0.5)
    assert out["signals/nonfinite_grad_total"] == 3 and out["signals/skipped_total"] == 1
    assert out["signals/grad_norm"] == 8.0 and out["signals/terms/a"] == 1.5


def test_signals_summarise_a_window():
    """Between log steps nothing is returned; the summary covers every step of the window."""
    cb = TrainingSignalsCallback(log_every=3)
    cb.on_train_start(None)
    g = torch.Generator().manual_seed(0)
    losses, outs = [], []
    for k, grad in enumerate([1.0, 50.0, 2.0], start=1):
        loss = torch.rand(5, generator=g, dtype=F64)
        losses.append(loss.numpy())
        result = ObjectiveResult(loss=loss, terms={"a": loss}, aux={},
                                 times=TimeBatch(s=torch.zeros(5), t=torch.ones(5), diagonal=torch.zeros(5, dtype=torch.bool)))
        rec = StepRecord(step=k, loss=float(loss.mean()), terms={"a": float(k)}, grad_norm=grad, clipped=False,
                         n_nonfinite_grad=0, skipped=False, lr=1e-3, seconds=0.01, result=result, x1=torch.zeros(5, 1))
        outs.append(cb.on_step_end(None, rec))
    assert outs[0] is None and outs[1] is None
    out, pooled = outs[2], np.concatenate(losses)
    assert out["signals/window"] == 3 and out["signals/grad_norm"] == 2.0
    assert out["signals/grad_norm_max"] == 50.0 and out["signals/grad_norm_mean"] == pytest.approx(53.0 / 3)
    assert out["signals/terms/a"] == pytest.approx(2.0)
    assert out["signals/loss_p90"] == pytest.approx(np.quantile(pooled, 0.9), rel=1e-12)
    assert out["signals/loss_max"] == pytest.approx(pooled.max())


def test_signals_do_not_keep_the_data_batch():
    """Between summaries the callback keeps per-sample losses and aux, not the StepRecord's x1
    (an image batch per step would pile up for log_every steps)."""
    import gc
    import weakref

    cb = TrainingSignalsCallback(log_every=10)
    cb.on_train_start(None)
    x1 = torch.zeros(4, 3)
    alive = weakref.ref(x1)
    loss = torch.ones(4, dtype=F64)
    result = ObjectiveResult(loss=loss, terms={"a": loss}, aux={},
                             times=TimeBatch(s=torch.zeros(4), t=torch.ones(4), diagonal=torch.zeros(4, dtype=torch.bool)))
    rec = StepRecord(step=1, loss=1.0, terms={"a": 1.0}, grad_norm=1.0, clipped=False, n_nonfinite_grad=0,
                     skipped=False, lr=1e-3, seconds=0.01, result=result, x1=x1)
    assert cb.on_step_end(None, rec) is None
    del rec, x1
    gc.collect()
    assert alive() is None


# -- periodic: gradients ----------------------------------------------------------------------------
def test_periodic_gradients_match_vmap_per_sample(tmp_path):
    flow = make_flow("gaussian_2d")
    torch.manual_seed(0)
    model = make_mlp_flow_map(2, hidden=16, depth=2).to(F64)
    ctx = make_ctx(tmp_path, model, flow)
    replay = torch.Generator().manual_seed(3)  # the callback's stream, replayed
    cb = PeriodicDiagnosticsCallback(every=1, reference=None, n_grad=24, bins=4, steps=())
    cb.on_train_start(ctx)
    out = cb.on_step_end(ctx, None)
    x1 = flow.sample_data(24, replay, dtype=F64)
    x0, s, t = ToyObjective.draw(x1, replay)
    norms = per_sample_grad_norms(model, ToyObjective.loss_fn, x1, x0, s, t).detach().numpy()
    with np.load(RunDir(tmp_path).grad_bins) as z:
        st_sum, st_count, gap_sum = z["st_sum"][-1], z["st_count"][-1], z["gap_sum"][-1]
        assert list(z["steps"]) == [5] and z["s_edges"].shape == (5,)
    ref_sum, _, _ = np.histogram2d(s.numpy(), t.numpy(), bins=4, range=[[0, 1], [0, 1]], weights=norms)
    ref_count, _, _ = np.histogram2d(s.numpy(), t.numpy(), bins=4, range=[[0, 1], [0, 1]])
    np.testing.assert_allclose(st_sum, ref_sum, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(st_count, ref_count)
    ref_gap, _ = np.histogram((t - s).numpy(), bins=4, range=(0, 1), weights=norms)
    np.testing.assert_allclose(gap_sum, ref_gap, rtol=1e-10, atol=1e-12)
    # per-term norm: |grad of the mean of term "a"| recomputed directly
    loss = ToyObjective.loss_fn(model, x1, x0, s, t)
    g = torch.autograd.grad(loss[:12].mean(), list(model.parameters()))
    assert out["grads/term/a"] == pytest.approx(float(torch.sqrt(sum((v**2).sum() for v in g))), rel=1e-10)
    assert -1.0 <= out["grads/cos/a|b"] <= 1.0
    assert any(k.startswith("grads/module/") for k in out)
    assert all(p.grad is None for p in model.parameters())  # .grad untouched


@dataclass(frozen=True)
class ScaledToy:
    """ToyObjective with its loss multiplied by a field the trainer may schedule."""

    name: str = "scaled"
    scale: float = 1.0

    def __call__(self, model, x1, generator=None):
        r = ToyObjective()(model, x1, generator)
        return ObjectiveResult(loss=self.scale * r.loss, terms={k: self.scale * v for k, v in r.terms.items()},
                               times=r.times)


def test_periodic_gradients_use_the_scheduled_objective(tmp_path):
    """With config.objective.schedules the gradients are those of the objective the trainer used at that
    step: scale linear 0 -> 1 over 10 updates is 4 / 10 at step 5 (4 completed updates)."""
    flow = make_flow("gaussian_2d")
    torch.manual_seed(0)
    model = make_mlp_flow_map(2, hidden=16, depth=2).to(F64)

    def total(objective, schedules):
        ctx = make_ctx(tmp_path, model, flow, step=5)
        cfg = dataclasses.replace(ctx.config, objective=ObjectiveConfig("scaled", schedules=schedules))
        ctx.config, ctx.objective = cfg, objective
        cb = PeriodicDiagnosticsCallback(every=1, reference=None, n_grad=16, bins=2, steps=())
        cb.on_train_start(ctx)
        return cb.on_step_end(ctx, None)["grads/total"]

    ramp = {"scale": {"kind": "linear", "start": 0.0, "end": 1.0, "steps": 10}}
    scheduled, fixed = total(ScaledToy(), ramp), total(ScaledToy(scale=0.4), {})
    assert scheduled == pytest.approx(fixed, rel=1e-12)
    assert scheduled == pytest.approx(0.4 * total(ScaledToy(scale=1.0), {}), rel=1e-12)


# -- periodic: map error grid ------------------------------------------------------------------------
def test_map_error_grid_exact_and_identity(tmp_path):
    flow = make_flow("gaussian_2d")
    for model, tag in ((ExactFlowMap(flow), "exact"), (dg.identity_map(flow), "identity")):
        run = tmp_path / tag
        ctx = make_ctx(run, model, flow)
        cb = PeriodicDiagnosticsCallback(every=1, reference=flow, gradients=False, grid=4, n_cell=8, steps=(1, 2),
                                         n_samples=64)
        cb.on_train_start(ctx)
        out = cb.on_step_end(ctx, None)
        with np.load(RunDir(run).map_error()) as z:
            rmse, spread = z["rmse"][-1], z["spread"]
        upper = np.triu(np.ones((4, 4), dtype=bool))
        assert np.isnan(rmse[~upper]).all() and np.isfinite(rmse[upper]).all() and (spread[upper] > 0).all()
        if tag == "exact":
            assert rmse[upper].max() < 1e-12 and out["periodic/map_rmse"] < 1e-12
            assert out["quality/drift/2"] < 1e-12  # semigroup: 2 steps = 1 step
        else:
            # the identity misses X*_{s,t}(x) - x, which grows with the gap: the far corner is the worst
            assert rmse[0, 3] == rmse[upper].max() and rmse[0, 3] > 1.0
            assert out["periodic/map_rmse"] > 0.5


class NaNBeyond(torch.nn.Module):
    """The exact map of a flow, except NaN for maps that end past t = 0.5 (a model diverged in part)."""

    def __init__(self, flow):
        super().__init__()
        self.exact, self.dim = ExactFlowMap(flow), flow.dim

    def flow_map(self, s, t, x):
        out = self.exact.flow_map(s, t, x)
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        return torch.where((t > 0.5)[:, None], torch.full_like(out, math.nan), out)

    def velocity(self, t, x):
        return self.exact.velocity(t, x)


def test_periodic_reports_nonfinite_outputs_instead_of_stopping(tmp_path):
    """NaN map outputs: the map RMS is NaN with the count of points behind it, the quality part says
    ``quality/nonfinite`` instead of raising out of the training loop."""
    flow = make_flow("gaussian_2d")
    ctx = make_ctx(tmp_path, NaNBeyond(flow), flow)
    cb = PeriodicDiagnosticsCallback(every=1, reference=flow, gradients=False, grid=4, n_cell=8, steps=(1, 2),
                                     n_samples=32)
    cb.on_train_start(ctx)
    out = cb.on_step_end(ctx, None)
    s, t, *_ = cb._eval
    assert math.isnan(out["periodic/map_rmse"]) and out["periodic/map_nonfinite"] == int((t > 0.5).sum()) > 0
    assert out["quality/nonfinite"] == 1 and not any(k.startswith("quality/energy") for k in out)
    with np.load(RunDir(tmp_path).map_error()) as z:
        assert np.isfinite(z["rmse"][-1][0, 0]) and np.isnan(z["rmse"][-1][0, 3])  # cells with t <= 0.25 vs t > 0.75


# -- a tiny training run ------------------------------------------------------------------------------
def test_tiny_training_run_writes_every_file(tmp_path):
    cfg = TrainConfig(model=ModelConfig(hidden=16, depth=2, zero_init=True),
                      data=DataConfig("gaussian", {"mean": [1.0, -1.0], "cov": [[1.0, 0.6], [0.6, 0.5]]}),
                      objective=ObjectiveConfig("lsd"), optim=OptimConfig(lr=1e-4), batch_size=32, steps=8,
                      device="cpu", ema_rates=(0.9,), log_every=4, checkpoint_every=4, progress=False,
                      tensorboard=False)

    def callbacks():
        return [TrainingSignalsCallback(),
                PeriodicDiagnosticsCallback(every=4, n_grad=8, bins=4, grid=3, n_cell=4, steps=(1, 2), n_samples=64,
                                            include_ema=True),
                DiagnosisCallback(every=4, n=64)]

    res = Trainer(cfg, tmp_path / "run", callbacks=callbacks()).fit()
    run = res.run_dir
    assert res.status == "completed"
    rows = read_metrics(run)
    signal_rows = [r for r in rows if "signals/grad_norm" in r]
    assert [r["step"] for r in signal_rows] == [4, 8] and all(r["signals/window"] == 4 for r in signal_rows)
    assert all("signals/aux/tangent_norm_mean" in r and r["signals/grad_norm_max"] >= r["signals/grad_norm"]
               for r in signal_rows)
    periodic = [r for r in rows if "grads/total" in r]
    assert [r["step"] for r in periodic] == [4, 8]
    assert all("periodic/map_rmse" in r and "periodic/ema0.9/map_rmse" in r and "quality/energy/2" in r
               for r in periodic)
    rd = RunDir(run)
    for path in (rd.grad_bins, rd.map_error(), rd.map_error("ema0.9"), rd.first_fired):
        assert path.is_file(), path
    with np.load(rd.grad_bins) as z:
        assert z["st_sum"].shape == (2, 4, 4) and list(z["steps"]) == [4, 8]
        assert z["st_count"].sum(axis=(1, 2)).tolist() == [8, 8]
    doc = json.loads(rd.diagnosis_json.read_text())
    assert set(doc["models"]) == {"model", "ema0.9"}
    # zero-initialised network = the identity map (D1), still there after 8 small steps
    assert "identity" in doc["models"]["model"]["fired"]
    assert doc["first_fired"]["identity"] == 4
    assert any(r["step"] == 4 and r.get("diagnosis/identity_fired") == 1.0 for r in rows)
    md = rd.diagnosis_md.read_text()
    assert "FIRED identity [D1]" in md and "first fired at step" in md
    assert not math.isnan(doc["models"]["model"]["reports"][1]["statistic"])

    # resume from the step-4 checkpoint: the npz slices and first-fired steps continue, not duplicate
    rd.checkpoint(8).unlink()
    assert Trainer.resume(run, callbacks=callbacks()).fit().status == "completed"
    with np.load(rd.grad_bins) as z:
        assert list(z["steps"]) == [4, 8]
    with np.load(rd.map_error()) as z:
        assert list(z["steps"]) == [4, 8] and z["rmse"].shape == (2, 3, 3)
    assert json.loads(rd.diagnosis_json.read_text())["first_fired"]["identity"] == 4


def test_every_file_goes_through_the_run_dirs_atomic_writer(tmp_path, monkeypatch):
    """Each file the diagnostic callbacks write is written by workbench.rundir.atomic_write (temporary
    file, fsync, rename) at the path RunDir names, never by a writer of their own."""
    import workbench.rundir as rundir

    written = []
    real = rundir.atomic_write

    def recording(path, write):
        written.append(Path(path))
        return real(path, write)

    monkeypatch.setattr(rundir, "atomic_write", recording)
    flow = make_flow("gaussian_2d")
    torch.manual_seed(0)
    model = make_mlp_flow_map(2, hidden=8, depth=1).to(F64)
    ctx = make_ctx(tmp_path, model, flow)
    ctx.ema = {0.9: dg.identity_map(flow)}
    periodic = PeriodicDiagnosticsCallback(every=1, reference=flow, n_grad=8, bins=2, grid=2, n_cell=4, steps=(),
                                           include_ema=True)
    diagnosis = DiagnosisCallback(every=1, reference=flow, n=32)
    for cb in (periodic, diagnosis):
        cb.on_train_start(ctx)
        cb.on_step_end(ctx, None)
    diagnosis.on_train_end(ctx)
    rd = RunDir(tmp_path)
    on_disk = {p for p in tmp_path.rglob("*") if p.is_file()}
    expected = {rd.grad_bins, rd.map_error(), rd.map_error("ema0.9"), rd.diagnosis_json, rd.diagnosis_md}
    assert expected <= on_disk and rd.first_fired in on_disk  # the zero-ish MLP fires some detector
    assert on_disk <= set(written), on_disk - set(written)


def test_an_unreadable_first_fired_record_is_reported_and_ignored(tmp_path):
    flow = make_flow("gaussian_2d")
    ctx = make_ctx(tmp_path, ExactFlowMap(flow), flow, step=5)
    path = RunDir(tmp_path).first_fired
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00\xff{torn")
    cb = DiagnosisCallback(reference=flow, n=16)
    with pytest.warns(UserWarning, match=path.name):
        cb.on_train_start(ctx)
    assert cb.first_fired == {}
    path.write_text('{"identity": "four"}')
    with pytest.warns(UserWarning, match="int steps"):
        cb.on_train_start(ctx)
    # a readable record keeps what an earlier session saw up to the resumed step, no warning
    path.write_text('{"identity": 4, "collapse": 7}')
    cb.on_train_start(ctx)
    assert cb.first_fired == {"identity": 4}


# -- the oracle error (FlowMapErrorCallback) ------------------------------------------------------------
class Shifted(torch.nn.Module):
    """The exact map plus a constant shift c: its RMS error against the oracle is |c| exactly."""

    def __init__(self, flow, c):
        super().__init__()
        self.exact, self.dim = ExactFlowMap(flow), flow.dim
        self.c = torch.nn.Parameter(torch.as_tensor(c, dtype=F64))

    def flow_map(self, s, t, x):
        return self.exact.flow_map(s, t, x) + self.c

    def velocity(self, t, x):
        return self.exact.velocity(t, x)


def test_flow_map_error_callback_measures_the_oracle_distance(tmp_path):
    flow = make_flow("gaussian_2d")
    shift = torch.tensor([0.3, -0.4], dtype=F64)  # |c| = 0.5
    model = Shifted(flow, shift)
    model.train()
    logged = []
    ctx = make_ctx(tmp_path, model, flow, step=0)
    ctx.ema = {0.9: ExactFlowMap(flow)}
    ctx._logger = lambda metrics, step: logged.append((step, metrics))
    cb = FlowMapErrorCallback(flow, every=1, n=64, seed=2)
    cb.on_train_start(ctx)  # at step 0 the error at initialisation is logged
    ((step, first),) = logged
    tol = 1e-12
    assert step == 0 and set(first) == {"oracle/map_rmse", "oracle/map01_rmse", "oracle/ema0.9/map_rmse",
                                        "oracle/ema0.9/map01_rmse"}
    assert abs(first["oracle/map_rmse"] - 0.5) < tol and abs(first["oracle/map01_rmse"] - 0.5) < tol
    assert first["oracle/ema0.9/map_rmse"] < tol and first["oracle/ema0.9/map01_rmse"] < tol
    assert model.training  # the mode is restored after evaluating
    assert cb.on_step_end(ctx, None) == first  # the evaluation set is fixed
    # the one-step map ends at the data end time of the flow
    assert cb.t_max == 1.0 and FlowMapErrorCallback(flow, t_max=0.5).t_max == 0.5
    rings = make_flow("rings")
    assert FlowMapErrorCallback(rings).t_max == data_end_time(rings) == 1.0 - DATA_END_MARGIN


def test_flow_map_error_callback_refuses_a_flow_without_the_contract():
    with pytest.raises(TypeError, match=r"flow must implement Flow .*lacks sample_marginal"):
        FlowMapErrorCallback(ExactFlowMap(make_flow("gaussian_2d")))
    with pytest.raises(TypeError, match="flow must implement"):
        FlowMapErrorCallback(object())


def test_training_does_not_import_diagnostics():
    """Layering: diagnostics reaches into training through callbacks, never the other way round, so
    the oracle-error callback lives in workbench.diagnostics and training does not re-export it."""
    code = ("import sys, workbench.training as t; "
            "bad = sorted(m for m in sys.modules if m.startswith('workbench.diagnostics')); "
            "assert not bad, bad; assert not hasattr(t, 'FlowMapErrorCallback')")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 a torn zip", b"not an npz at all"])
def test_an_unreadable_earlier_history_is_reported_by_name(tmp_path, content):
    """On resume, a history file that cannot be read is dropped with a warning naming it (not silently);
    a missing one is a first session (no warning); a good one is sliced to the resumed step."""
    from workbench.diagnostics.callbacks import _load_slices

    path = tmp_path / "grad_bins.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _load_slices(path, ("steps", "v"), 10) == {}
    np.savez(path, steps=np.array([5, 10, 15]), v=np.array([1.0, 2.0, 3.0]))
    got = _load_slices(path, ("steps", "v"), 10)
    assert [int(s) for s in got["steps"]] == [5, 10] and [float(v) for v in got["v"]] == [1.0, 2.0]
    path.write_bytes(content)
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        assert _load_slices(path, ("steps", "v"), 10) == {}
