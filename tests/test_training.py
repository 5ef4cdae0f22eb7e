"""Training: configs, lr schedule, EMA, gradient statistics, skipping of non-finite steps, divergence,
atomic and safe checkpoints, the callback API, and the samplers (workbench.sampling)."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle

import numpy as np
import pytest
import torch

from workbench.core import rel_err, ulps
from workbench.flows import GaussianFlow
from workbench.losses import OBJECTIVES, ObjectiveResult
from workbench.models import ExactFlowMap, make_mlp_flow_map
from workbench.sampling import (
    ODE_METHODS,
    flow_map_trajectory,
    sample,
    sample_flow_map,
    sample_ode,
    sample_ode_adaptive,
    time_grid,
)
from workbench.training import (
    EMA,
    Callback,
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    TrainConfig,
    Trainer,
    apply_overrides,
    clip_gradients,
    grad_stats,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    lr_at,
    read_metrics,
    save_checkpoint,
)
from workbench.training.checkpoint import CheckpointError
from workbench.training.optim import scheduled_value

GAUSS = DataConfig("gaussian", {"mean": [1.0, -0.5], "cov": [[0.5, 0.2], [0.2, 0.3]]})


def _without_cuda(monkeypatch):
    """This machine as one without CUDA, whatever it has: the no-CUDA branch runs on every machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def tiny_config(**kw) -> TrainConfig:
    base = TrainConfig(
        model=ModelConfig(hidden=16, depth=2),
        objective=ObjectiveConfig("fm"),
        data=GAUSS,
        optim=OptimConfig(name="adam", lr=1e-3),
        batch_size=32,
        steps=12,
        log_every=1,
        checkpoint_every=4,
        keep_checkpoints=10,
        progress=False,
        tensorboard=False,
        device="cpu",
        ema_rates=(0.9,),
    )
    return dataclasses.replace(base, **kw)


# -- config ---------------------------------------------------------------------------------------
def test_config_json_round_trip(tmp_path):
    cfg = TrainConfig(
        model=ModelConfig(hidden=32, depth=3, activation="silu", data_std=2.3, learned_weight=True),
        objective=ObjectiveConfig("lsd", {"diag_fraction": 0.5, "interpolant": "trig"},
                                  {"diag_fraction": {"kind": "linear", "start": 1.0, "end": 0.5, "steps": 9}}),
        data=DataConfig("rings", {"radii": [1.0, 2.0], "noise": 0.1}),
        optim=OptimConfig(name="adam", lr=3e-4, betas=(0.8, 0.99), schedule="constant", grad_clip=0.0),
        ema_rates=(0.99, 0.999, 0.9999), dtype="float64", seed=7, bf16=True,
    )
    text = json.dumps(cfg.to_dict())
    assert TrainConfig.from_dict(json.loads(text)) == cfg
    cfg.save(tmp_path)
    assert TrainConfig.load(tmp_path) == cfg
    assert TrainConfig.from_dict({}) == TrainConfig()
    with pytest.raises(ValueError, match="optim.nope"):
        TrainConfig.from_dict({"optim": {"nope": 1}})


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: TrainConfig(batch_size=0), "batch_size"),
        (lambda: TrainConfig(dtype="float16"), "dtype"),
        (lambda: TrainConfig(ema_rates=(0.9, 1.0)), "ema_rates"),
        (lambda: TrainConfig(device="tpu"), "device"),
        (lambda: OptimConfig(lr=-1.0), "optim.lr"),
        (lambda: OptimConfig(name="sgd"), "optim.name"),
        (lambda: ModelConfig(hidden=0), "model.hidden"),
    ],
)
def test_config_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_apply_overrides_parses_by_type():
    cfg = apply_overrides(
        TrainConfig(),
        {"lr": "3e-4", "optim.name": "adam", "steps": "2e3", "ema_rates": "0.9,0.99", "bf16": "true",
         "objective.diag_fraction": "0.5", "objective.interpolant": "trig", "data.variant": "unit"},
    )
    assert cfg.optim.lr == 3e-4 and cfg.optim.name == "adam" and cfg.steps == 2000
    assert cfg.ema_rates == (0.9, 0.99) and cfg.bf16 is True
    assert cfg.objective.overrides == {"diag_fraction": 0.5, "interpolant": "trig"}
    assert cfg.data.kwargs == {"variant": "unit"}
    for bad, match in [({"bogus": "1"}, "unknown option"), ({"name": "x"}, "ambiguous"),
                       ({"steps": "1.5"}, "steps"), ({"lr": "-1"}, "optim.lr"), ({"bf16": "maybe"}, "bf16")]:
        with pytest.raises(ValueError, match=match):
            apply_overrides(TrainConfig(), bad)


def test_objective_field_schedules(tmp_path):
    lin = {"kind": "linear", "start": 1.0, "end": 0.5, "steps": 8}
    geo = {"kind": "geometric", "start": 0.1, "factor": 0.5, "every": 3, "lo": 0.02}
    assert [scheduled_value(lin, k) for k in (0, 4, 8, 100)] == [1.0, 0.75, 0.5, 0.5]
    assert [scheduled_value(geo, k) for k in (0, 2, 3, 6, 9, 30)] == [0.1, 0.1, 0.05, 0.025, 0.02, 0.02]
    with pytest.raises(ValueError, match="schedules"):
        ObjectiveConfig("lsd", schedules={"diag_fraction": {"kind": "linear", "start": 1.0}})
    # the trainer applies the schedule: the realised diagonal fraction of LSD follows it
    cfg = tiny_config(objective=ObjectiveConfig("lsd", schedules={"diag_fraction": lin}), steps=10, checkpoint_every=0)
    Trainer(cfg, tmp_path / "run").fit()
    for row in read_metrics(tmp_path / "run"):
        frac = 1.0 - 0.5 * min((row["step"] - 1) / 8, 1.0)
        assert row["objective/diag_fraction"] == frac
        assert row["times/frac_diag"] == math.floor(32 * frac + 1e-9) / 32
    with pytest.raises(ValueError, match="unknown field"):
        Trainer(tiny_config(objective=ObjectiveConfig("fm", schedules={"nope": lin})), tmp_path / "bad")


def test_callbacks_see_the_scheduled_objective_and_need_a_positive_cadence(tmp_path):
    lin = {"kind": "linear", "start": 1.0, "end": 0.5, "steps": 8}
    seen = {}

    class Spy(Callback):
        def on_step_end(self, ctx, record):
            seen[record.step] = ctx.objective.diag_fraction

    cfg = tiny_config(objective=ObjectiveConfig("lsd", schedules={"diag_fraction": lin}), steps=10, checkpoint_every=0)
    Trainer(cfg, tmp_path / "run", callbacks=[Spy()]).fit()
    assert seen == {k: 1.0 - 0.5 * min((k - 1) / 8, 1.0) for k in range(1, 11)}

    class Never(Callback):
        every = 0

    with pytest.raises(ValueError, match="every must be a positive int"):
        Trainer(tiny_config(), tmp_path / "bad2", callbacks=[Never()])


# -- schedule, EMA, gradients -------------------------------------------------------------------
def test_lr_schedule_values():
    cfg = OptimConfig(lr=1e-3, decay_start=100)
    # lr0 / sqrt(max(k / T, 1)): constant up to T, then 1 / sqrt
    for k, expected in [(0, 1e-3), (50, 1e-3), (100, 1e-3), (400, 5e-4), (900, 1e-3 / 3), (10_000, 1e-4)]:
        assert lr_at(k, cfg) == pytest.approx(expected, rel=ulps(torch.float64, 4))
    assert lr_at(10_000, dataclasses.replace(cfg, schedule="constant")) == 1e-3
    with pytest.raises(ValueError, match="k must be"):
        lr_at(-1, cfg)


def test_ema_matches_hand_computation():
    lin = torch.nn.Linear(1, 1, bias=False).double()
    values = [2.0, -1.0, 0.5, 4.0]
    with torch.no_grad():
        lin.weight.fill_(values[0])
    ema = EMA(lin, (0.5, 0.9))
    for v in values[1:]:
        with torch.no_grad():
            lin.weight.fill_(v)
        ema.update(lin)
    for r in (0.5, 0.9):
        # theta_k = r theta_{k-1} + (1 - r) theta, unrolled by hand from theta_0 = values[0]
        expected = r**3 * 2.0 + r**2 * (1 - r) * -1.0 + r * (1 - r) * 0.5 + (1 - r) * 4.0
        got = float(ema.models[r].weight)
        assert abs(got - expected) <= ulps(torch.float64, 8) * (1 + abs(expected))
        assert not ema.models[r].weight.requires_grad
    fresh = EMA(lin, (0.5, 0.9))
    fresh.load_state_dict(ema.state_dict())
    assert float(fresh.models[0.9].weight) == float(ema.models[0.9].weight)
    with pytest.raises(ValueError, match="rates"):
        fresh.load_state_dict({"0.5": {}})


def test_grad_stats_and_clipping_match_torch():
    torch.manual_seed(0)
    net = make_mlp_flow_map(2, hidden=8, depth=2).double()
    x = torch.randn(16, 2, dtype=torch.float64)
    net.flow_map(0.2, 0.7, x).pow(2).sum().backward()
    norm, n_bad = grad_stats(net.parameters())
    flat = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert float(norm) == pytest.approx(float(flat.norm()), rel=ulps(torch.float64, 64)) and int(n_bad) == 0
    ref = [p.grad.clone() for p in net.parameters()]
    max_norm = 0.25 * float(norm)
    assert clip_gradients(list(net.parameters()), float(norm), max_norm)
    ref_params = [torch.nn.Parameter(torch.zeros_like(g)) for g in ref]
    for p, g in zip(ref_params, ref):
        p.grad = g
    torch.nn.utils.clip_grad_norm_(ref_params, max_norm)
    for p, q in zip(net.parameters(), ref_params):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)  # torch adds 1e-6 to the norm
    assert not clip_gradients(list(net.parameters()), max_norm, max_norm)
    next(net.parameters()).grad.view(-1)[0] = float("nan")
    assert int(grad_stats(net.parameters())[1]) == 1


# -- non-finite steps ----------------------------------------------------------------------------
@dataclasses.dataclass
class Poisoned:
    """Flow matching whose loss (mode "loss") or gradient only (mode "grad") is NaN at chosen calls."""

    bad_calls: frozenset
    mode: str = "loss"
    calls: int = 0

    def __call__(self, model, x1, generator=None) -> ObjectiveResult:
        self.calls += 1
        res = OBJECTIVES["fm"](model, x1, generator=generator)
        if self.calls not in self.bad_calls:
            return res
        if self.mode == "loss":
            loss = res.loss * float("nan")
        else:  # value unchanged, d sqrt(u)/du = inf at u = 0 makes every gradient NaN
            loss = res.loss + torch.sqrt(res.loss * 0.0)
        return dataclasses.replace(res, loss=loss)


class Snapshots(Callback):
    def __init__(self):
        self.params, self.records = {}, {}

    def on_step_end(self, ctx, record):
        self.params[record.step] = [p.detach().clone() for p in ctx.model.parameters()]
        self.records[record.step] = record


@pytest.mark.parametrize("mode", ["loss", "grad"])
def test_nonfinite_step_is_skipped_and_never_checkpointed(tmp_path, mode):
    snap = Snapshots()
    trainer = Trainer(tiny_config(), tmp_path / "run", objective=Poisoned(frozenset({6}), mode), callbacks=[snap])
    result = trainer.fit()
    assert result.status == "completed" and result.skipped_total == 1
    rec = snap.records[6]
    assert rec.skipped and not snap.records[5].skipped and not snap.records[7].skipped
    if mode == "grad":
        assert math.isfinite(rec.loss) and rec.n_nonfinite_grad > 0
    else:
        assert math.isnan(rec.loss)
    for a, b in zip(snap.params[5], snap.params[6]):
        assert torch.equal(a, b), "a skipped step changed the weights"
    assert any(not torch.equal(a, b) for a, b in zip(snap.params[6], snap.params[7]))
    assert int(trainer.optimizer.state_dict()["state"][0]["step"]) == 11  # 12 steps, one not applied
    rows = {r["step"]: r for r in read_metrics(tmp_path / "run")}
    assert rows[6]["skipped"] is True and rows[6]["skipped_total"] == 1 and rows[7]["skipped_total"] == 1
    ckpts = list_checkpoints(tmp_path / "run")
    assert [s for s, _ in ckpts] == [4, 8, 12]
    for _, path in ckpts:
        state = load_checkpoint(path)
        for group in ("model",):
            assert all(torch.isfinite(v).all() for v in state[group].values())
        assert all(torch.isfinite(v).all() for sd in state["ema"].values() for v in sd.values())
        assert state["counters"]["skipped_total"] == (0 if state["step"] < 6 else 1)


def test_divergence_stops_the_run(tmp_path):
    cfg = tiny_config(max_consecutive_skips=4, steps=50)
    trainer = Trainer(cfg, tmp_path / "run", objective=Poisoned(frozenset(range(4, 100))))
    result = trainer.fit()
    assert result.status == "diverged" and result.step == 7 and result.skipped_total == 4
    assert "4 consecutive steps" in result.message
    last = read_metrics(tmp_path / "run")[-1]
    assert last["step"] == 7 and last["stopped"] == "diverged" and last["loss"] is None
    assert max(s for s, _ in list_checkpoints(tmp_path / "run")) == 4  # no checkpoint after the skips


# -- checkpoints -----------------------------------------------------------------------------------
def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    good = {"step": 1, "w": torch.arange(3.0)}
    save_checkpoint(good, tmp_path, 1)

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, tmp_path, 2)
    monkeypatch.undo()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert torch.equal(load_checkpoint(list_checkpoints(tmp_path)[0][1])["w"], good["w"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000000001.pt"]
    for step in (2, 3, 4):
        save_checkpoint({"step": step}, tmp_path, step, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    (tmp_path / "checkpoints" / ".tmp-killed.pt").write_bytes(b"torn")  # a writer killed mid-write
    assert load_latest(tmp_path)["step"] == 4
    # a reader never deletes: the temporary file may belong to a write in progress (the trainer removes
    # stale ones when it resumes, through RunDir.remove_stale_temporaries)
    assert [p.name for p in (tmp_path / "checkpoints").glob(".tmp-*")] == [".tmp-killed.pt"]


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoints_load_weights_only(tmp_path):
    trainer = Trainer(tiny_config(steps=4), tmp_path / "run")
    trainer.fit()
    (_, path), = list_checkpoints(tmp_path / "run")
    state = torch.load(path, weights_only=True)  # tensors and primitive containers only
    assert set(state) >= {"model", "optimizer", "ema", "scheduler", "rng", "step", "counters"}
    assert state["rng"]["train"].dtype == torch.uint8
    bad = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, bad)
    with pytest.raises(CheckpointError, match="weights_only") as info:
        load_checkpoint(bad)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError) and str(bad) in str(info.value)


# -- callbacks ---------------------------------------------------------------------------------------
class Probe(Callback):
    every = 3

    def __init__(self):
        self.calls, self.events = [], []

    def on_train_start(self, ctx):
        self.events.append("start")
        assert set(ctx.ema) == {0.9} and ctx.run_dir.is_dir() and ctx.device.type == "cpu"
        ctx.log({"probe/start": 1.0})

    def on_step_end(self, ctx, record):
        self.calls.append(record.step)
        assert ctx.step == record.step and record.x1.shape == (32, 2) and not record.result.loss.requires_grad
        assert record.lr == lr_at(record.step - 1, ctx.config.optim)
        ctx.log({"probe/extra": 2.0})
        x = ctx.sample_batch(64)  # draws from the callbacks' generator
        return {"probe/mean": float(x.mean())}

    def on_train_end(self, ctx):
        self.events.append("end")


def test_callback_api(tmp_path):
    probe = Probe()
    Trainer(tiny_config(log_every=4), tmp_path / "a", callbacks=[probe]).fit()
    assert probe.calls == [3, 6, 9, 12] and probe.events == ["start", "end"]
    rows = read_metrics(tmp_path / "a")
    assert [r["step"] for r in rows] == [0, 3, 4, 6, 8, 9, 12]  # one line per logged step
    by_step = {r["step"]: r for r in rows}
    assert by_step[0] == {"step": 0, "probe/start": 1.0}
    assert "probe/mean" in by_step[3] and by_step[3]["probe/extra"] == 2.0 and "loss" not in by_step[3]
    assert "probe/mean" in by_step[12] and "loss" in by_step[12]
    # callbacks draw from their own generator: the training trajectory is unchanged without them
    Trainer(tiny_config(log_every=4), tmp_path / "b").fit()
    plain = {r["step"]: r for r in read_metrics(tmp_path / "b")}
    for step, row in plain.items():
        assert row["loss"] == by_step[step]["loss"] and row["grad_norm"] == by_step[step]["grad_norm"]


def test_trainer_refuses_an_existing_run(tmp_path):
    Trainer(tiny_config(steps=1), tmp_path / "run").fit()
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(tiny_config(steps=1), tmp_path / "run")


# -- samplers --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gaussian():
    # a well-conditioned covariance: the asymptotic rates show from N ~ 32 on (a narrow one, whose
    # c(t) = (1 - t)^2 + t^2 lambda dips low, delays them to N ~ 200 for RK4)
    flow = GaussianFlow([1.0, -0.5], [[2.0, 0.3], [0.3, 1.0]])
    x0 = torch.randn(128, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return flow, x0, flow.flow_map(0.0, 1.0, x0)


@pytest.mark.parametrize("grid", [1, 2, 3, 8, 50, (0.0, 0.1, 0.15, 0.7, 1.0)])
def test_flow_map_sampling_of_the_exact_map_is_exact_for_every_grid(gaussian, grid):
    flow, x0, exact = gaussian
    model = ExactFlowMap(flow)
    kw = {"n_steps": grid} if isinstance(grid, int) else {"grid": grid}
    n = grid if isinstance(grid, int) else len(grid) - 1
    err = rel_err(sample_flow_map(model, x0, **kw), exact).max()
    assert float(err) <= ulps(torch.float64, 4 * (n + 1))  # semigroup: only round-off per step
    traj = flow_map_trajectory(model, x0, **kw)
    assert traj.shape == (n + 1, 128, 2) and torch.equal(traj[0], x0)


def _rate(errs, ns):
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0]


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_ode_sampling_converges_at_its_order(gaussian, method, order):
    flow, x0, exact = gaussian
    ns = [64, 128, 256] if order < 4 else [32, 64, 128]
    errs = [float(rel_err(sample_ode(flow, x0, method=method, n_steps=n), exact).mean()) for n in ns]
    assert abs(_rate(errs, ns) - order) < 0.15, errs
    # the model's own diagonal velocity gives the same solution as the flow's
    torch.testing.assert_close(sample_ode(ExactFlowMap(flow), x0, method=method, n_steps=4),
                               sample_ode(flow, x0, method=method, n_steps=4), rtol=0, atol=0)


def test_adaptive_ode_sampling_meets_its_tolerance(gaussian):
    flow, x0, exact = gaussian
    errs = []
    for rtol in (1e-6, 1e-9):
        calls = []

        class Counting:  # counts the velocity evaluations the solver reports
            def velocity(self, t, x):
                calls.append(1)
                return flow.velocity(t, x)

        res = sample_ode_adaptive(Counting(), x0, rtol=rtol, atol=rtol * 1e-2)
        errs.append(float(rel_err(res.x, exact).max()))
        assert errs[-1] < 10 * rtol and res.n_steps > 0 and res.nfev == len(calls)
        assert res.nfev >= 1 + 6 * (res.n_steps + res.n_rejected)  # at least one FSAL step's stages
    assert errs[1] < errs[0]
    # float32 states: the default rtol rises to the solver's floor of 10 eps(float32)
    res32 = sample_ode_adaptive(flow, x0.float())
    assert res32.x.dtype == torch.float32 and float(rel_err(res32.x.double(), exact).max()) < 1e-4
    back = sample_ode_adaptive(flow, exact, s=1.0, t=0.0, rtol=1e-10, atol=1e-12)
    assert float(rel_err(back.x, x0).max()) < 1e-8
    with pytest.raises(RuntimeError, match="max_steps"):
        sample_ode_adaptive(flow, x0, rtol=1e-12, atol=1e-14, max_steps=3)


def test_sampler_inputs_and_convenience():
    with pytest.raises(ValueError, match="exactly one"):
        time_grid()
    with pytest.raises(ValueError, match="strictly"):
        time_grid(grid=[0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        time_grid(grid=[0.0, 1.5])
    with pytest.raises(ValueError, match="method"):
        sample_ode(GaussianFlow([0.0], [[1.0]]), torch.zeros(2, 1), method="rk9", n_steps=2)
    torch.testing.assert_close(time_grid(4), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    assert sorted(ODE_METHODS) == ["euler", "heun", "midpoint", "rk4"]
    torch.manual_seed(0)
    model = make_mlp_flow_map(2, hidden=8, depth=1)
    x = sample(model, 10, n_steps=3, generator=torch.Generator().manual_seed(1))
    assert x.shape == (10, 2) and not x.requires_grad and x.dtype == torch.float32


# -- the EMA follows the optimiser step ------------------------------------------------------------------
def test_the_trainer_updates_the_ema_after_the_optimizer_step(tmp_path):
    """One step with EMA rate 0.5: the average is 0.5 theta_0 + 0.5 theta_1 with theta_1 the weights
    after the step (updating the EMA before the step would give theta_0). Both halvings are exact in
    binary floating point, so the sum is one rounding of the same two numbers: bit for bit."""
    start = {}

    class Initial(Callback):
        def on_train_start(self, ctx):
            start.update({n: p.detach().clone() for n, p in ctx.model.named_parameters()})

    cfg = tiny_config(steps=1, ema_rates=(0.5,), dtype="float64", checkpoint_every=0)
    trainer = Trainer(cfg, tmp_path / "run", callbacks=[Initial()])
    assert trainer.fit().status == "completed"
    ema = dict(trainer.ema.models[0.5].named_parameters())
    moved = 0
    for name, theta1 in trainer.model.named_parameters():
        expected = 0.5 * start[name] + 0.5 * theta1.detach()
        assert torch.equal(ema[name], expected), name
        moved += int(not torch.equal(theta1, start[name]))
    assert moved > 0, "the step changed no weight: the test would not see the order"


# -- validation at construction ----------------------------------------------------------------------------
F32_MAX = float(torch.finfo(torch.float32).max)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: TrainConfig(device="gpu0"), "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu0'"),
        (lambda: TrainConfig(device="cuda:-1"), "device"),
        (lambda: TrainConfig(device=0), "device"),
        (lambda: TrainConfig(dtype="int64"), "dtype must be 'float32' or 'float64'"),
        (lambda: TrainConfig(dtype=torch.float32), "dtype"),
        (lambda: TrainConfig(optim=OptimConfig(lr=1e39)), "optim.lr .* float32"),
        (lambda: TrainConfig(optim=OptimConfig(name="adam", lr=1e38)), r"lr / \(1 - beta1\) = 1e\+39"),
        (lambda: TrainConfig(optim=OptimConfig(lr=1e-46)), "does not round to 0 in float32"),
        (lambda: TrainConfig(optim=OptimConfig(lr=math.inf)), "optim.lr"),
        (lambda: TrainConfig(optim=OptimConfig(eps=1e-50)), "optim.eps"),
        (lambda: TrainConfig(ema_rates=(0.999999999,)), "rates that stay below 1 in float32"),
        (lambda: TrainConfig(batch_size=10**12), r"batch_size must be at most 16777216"),
        (lambda: TrainConfig(batch_size=2**24 + 1), "batch_size"),
        (lambda: TrainConfig(batch_size=1.0), "batch_size must be a positive int"),
        (lambda: TrainConfig(seed=2**64), "seed"),
        (lambda: ModelConfig(activation="swish"), "activation must be one of"),
        (lambda: ModelConfig(time_embedding="fourier"), "model"),
        (lambda: ModelConfig(zero_init="yes"), "model.zero_init must be a bool"),
        (lambda: DataConfig("nope"), "data name must be one of"),
        (lambda: DataConfig("rings", {"radii": [1.0], "bogus": 1}), "data 'rings'"),
        (lambda: TrainConfig(objective=ObjectiveConfig("lsd", {"diag_fraction": 2.0})), "diag_fraction"),
        (lambda: TrainConfig(objective=ObjectiveConfig("lmd", {"teacher": "data"})), "analytic flow"),
        (lambda: ObjectiveConfig("lsd", schedules={"diag_fraction": {"kind": "geometric", "start": 0.5,
                                                                     "factor": -0.5, "every": 10}}), "factor > 0"),
    ],
)
def test_every_config_value_is_validated_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_validating_a_config_draws_no_random_numbers():
    state = torch.get_rng_state()
    TrainConfig(model=ModelConfig(hidden=512, depth=6, activation="silu", zero_init=True))
    assert torch.equal(state, torch.get_rng_state())


def test_the_lr_bound_is_where_adam_stops_crashing(tmp_path):
    """Just inside the bound Adam's first step runs (the weights may blow up: the run then stops as
    diverged, with a message); lr = 1e39 used to pass validation and crash inside Adam."""
    beta1 = 0.9
    lr = 0.99 * F32_MAX * (1 - beta1)
    cfg = tiny_config(optim=OptimConfig(name="adam", lr=lr, betas=(beta1, 0.999)), steps=2, checkpoint_every=0)
    result = Trainer(cfg, tmp_path / "run").fit()
    assert result.status in ("completed", "diverged")
    with pytest.raises(ValueError, match="optim.lr"):
        dataclasses.replace(cfg, optim=OptimConfig(name="adam", lr=1.02 * F32_MAX * (1 - beta1)))
    assert dataclasses.replace(cfg, dtype="float64", optim=OptimConfig(lr=1e39)).optim.lr == 1e39
    assert TrainConfig(ema_rates=(0.999999999,), dtype="float64").ema_rates == (0.999999999,)
    assert TrainConfig(batch_size=2**24).batch_size == 2**24  # the bound itself is allowed


def test_a_custom_objective_name_is_checked_when_the_trainer_starts(tmp_path):
    """A name outside OBJECTIVES labels a custom objective passed to the Trainer; its schedules are then
    checked against that objective over the whole run."""
    ramp = {"scale": {"kind": "linear", "start": 1.0, "end": -1.0, "steps": 10}}
    cfg = tiny_config(objective=ObjectiveConfig("scaled", schedules=ramp), steps=20)
    with pytest.raises(ValueError, match="objective.name must be one of"):
        Trainer(cfg, tmp_path / "a")  # no objective given: the name must be a registered one

    @dataclasses.dataclass(frozen=True)
    class ScaledFM:
        name: str = "scaled"
        scale: float = 1.0

        def __post_init__(self):
            if not self.scale >= 0:
                raise ValueError(f"scale must be >= 0, got {self.scale}")

        def __call__(self, model, x1, generator=None):
            res = OBJECTIVES["fm"](model, x1, generator=generator)
            return dataclasses.replace(res, loss=self.scale * res.loss)

    with pytest.raises(ValueError, match=r"at step 11 of 20 \(scale = -1\).*scale must be >= 0"):
        Trainer(cfg, tmp_path / "b", objective=ScaledFM())
    ok = dataclasses.replace(cfg, steps=6)  # ends at scale = 0
    assert Trainer(ok, tmp_path / "c", objective=ScaledFM()).fit().status == "completed"


def test_command_line_values_are_validated_when_parsed():
    for key, value, match in [("batch_size", "1e12", "batch_size"), ("lr", "1e39", "optim.lr"),
                              ("device", "gpu0", "device"), ("activation", "swish", "activation")]:
        with pytest.raises(ValueError, match=match):
            apply_overrides(TrainConfig(), {key: value})


def test_cuda_without_cuda_is_a_value_error_when_the_trainer_starts(tmp_path, monkeypatch):
    _without_cuda(monkeypatch)
    cfg = tiny_config(device="cuda")  # a config written on a GPU machine still loads here
    with pytest.raises(ValueError, match="device 'cuda' needs CUDA"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
def test_cuda_config_starts_a_trainer_where_there_is_cuda(tmp_path):
    Trainer(tiny_config(device="cuda"), tmp_path / "run")
    assert (tmp_path / "run").exists()


# -- schedules over the whole run ----------------------------------------------------------------------
LEAVES = {"diag_fraction": {"kind": "linear", "start": 1.0, "end": -0.5, "steps": 100}}


def test_a_schedule_that_leaves_the_range_during_the_run_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"at step 101 of 200 \(diag_fraction = -0\.5\).*\[0, 1\]"):
        tiny_config(objective=ObjectiveConfig("lsd", schedules=LEAVES), steps=200)
    # the same schedule over a run that ends while it is still in range is fine:
    # at step 50, 1 - 1.5 * 49 / 100 = 0.265
    assert tiny_config(objective=ObjectiveConfig("lsd", schedules=LEAVES), steps=50).steps == 50
    geo = {"diag_fraction": {"kind": "geometric", "start": 0.1, "factor": 2.0, "every": 10}}
    with pytest.raises(ValueError, match=r"at step 41 of 100 \(diag_fraction = 1\.6\)"):
        tiny_config(objective=ObjectiveConfig("lsd", schedules=geo), steps=100)  # 0.1 * 2^4 at k = 40
    capped = {"diag_fraction": {**geo["diag_fraction"], "hi": 1.0}}
    assert tiny_config(objective=ObjectiveConfig("lsd", schedules=capped), steps=100).steps == 100
    with pytest.raises(ValueError, match="diag_fraction = nan is not finite"):  # end - start overflows
        tiny_config(objective=ObjectiveConfig("lsd", schedules={"diag_fraction": {
            "kind": "linear", "start": -1.7e308, "end": 1.7e308, "steps": 10}}), steps=5)


def test_dry_run_refuses_such_a_schedule_without_a_traceback(capsys):
    from workbench.experiments.cli import main

    code = main(["gauss2d-lsd", "--objective.schedules", json.dumps(LEAVES), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert "diag_fraction = -0.5" in err and "step 101" in err


# -- config files and run directories ------------------------------------------------------------------
@pytest.mark.parametrize("content,match", [(b"\x89PNG\r\n\x1a\n\x00\xff", "not UTF-8"),
                                           (b'{"steps": 10, "optim": {"lr"', "not valid JSON"),
                                           (b"[]", "must hold a JSON dict"),
                                           (b'{"steps": "ten"}', "invalid config: steps must be")])
def test_a_bad_config_json_is_a_value_error_naming_the_file(tmp_path, content, match):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        TrainConfig.load(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)
    with pytest.raises(ValueError, match="no config.json in"):
        TrainConfig.load(tmp_path / "missing")


def test_run_dir_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="run_dir must name a directory, got ''"):
        Trainer(tiny_config(), "")
    Trainer(tiny_config(steps=2), tmp_path / "run").fit()
    with pytest.raises(ValueError, match=r"is a file; pass the run directory .*run, not its config file"):
        Trainer.resume(tmp_path / "run" / "config.json")
    with pytest.raises(ValueError, match="cannot be created"):
        Trainer(tiny_config(), tmp_path / "run" / "config.json" / "sub")


def test_metrics_log_writes_strict_json_lines_and_closes_a_torn_line_first(tmp_path):
    """MetricsLog appends through workbench.rundir.append_jsonl: the line is exactly the strict JSON of
    the cleaned row (NaN, inf as null; tensors and numpy scalars as numbers), and after a session
    killed mid-write (a torn last line) the next row is a line of its own, not glued to the torn one."""
    import json as _json

    import numpy as np

    from workbench.training import MetricsLog, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # killed mid-append
    log = MetricsLog(tmp_path, tensorboard=False)
    log.write(3, {"loss": torch.tensor(0.25), "grad": np.float32(2.0), "bad": math.nan, "hist": [1.0, math.inf]})
    log.close()
    lines = path.read_text().split("\n")
    expected = _json.dumps({"step": 3, "loss": 0.25, "grad": 2.0, "bad": None, "hist": [1.0, None]}, allow_nan=False)
    assert lines[-2] == expected and lines[-1] == ""
    with pytest.warns(UserWarning, match="skipped 1 line"):  # the torn line, closed, is not a JSON object
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 3]
