"""Checkpoints are checked, never trusted: a checksum of the content, verified on load; every
floating tensor (weights, optimiser state, every EMA) finite on save, on load and after every
update; unusable checkpoints reported and set aside on resume, and a clear error (not a silent
restart from step 0) when none is usable. Also the trainer's handling of a non-finite data batch
(a skipped step) and of an exception escaping a step (a checkpoint of the last good state)."""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import io
import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from workbench.data import get_data
from workbench.losses import OBJECTIVES
from workbench.rundir import RunDir, read_jsonl
from workbench.training import (
    Callback,
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    TrainConfig,
    Trainer,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    read_metrics,
    save_checkpoint,
)
from workbench.training.checkpoint import (
    CHECKSUM_KEY,
    CheckpointError,
    find_latest,
    nonfinite_tensors,
    state_digest,
)

F32_MAX = float(torch.finfo(torch.float32).max)
GAUSS = DataConfig("gaussian", {"mean": [1.0, -0.5], "cov": [[0.5, 0.2], [0.2, 0.3]]})


def tiny_config(**kw) -> TrainConfig:
    base = TrainConfig(
        model=ModelConfig(hidden=16, depth=2), objective=ObjectiveConfig("fm"), data=GAUSS,
        optim=OptimConfig(name="adam", lr=1e-3), batch_size=32, steps=12, log_every=1, checkpoint_every=4,
        keep_checkpoints=10, progress=False, tensorboard=False, device="cpu", ema_rates=(0.9, 0.99),
    )
    return dataclasses.replace(base, **kw)


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def same(a, b) -> bool:
    """Exact equality of nested checkpoint states (tensors bit for bit, NaN == NaN)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(
            a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 12-step run with checkpoints at steps 4, 8 and 12 (two EMAs, Adam)."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    assert Trainer(tiny_config(), run_dir).fit().status == "completed"
    return run_dir


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def write_with_valid_checksum(state: dict, path: Path) -> None:
    """What save_checkpoint refuses to do: write a state as it is, with a checksum that matches."""
    state = {k: v for k, v in state.items() if k != CHECKSUM_KEY}
    torch.save({**state, CHECKSUM_KEY: {"algorithm": "sha256", "digest": state_digest(state)}}, path)


# -- the format -----------------------------------------------------------------------------------
def test_a_checkpoint_is_a_plain_dict_with_a_checksum_of_its_content(finished):
    (_, path) = list_checkpoints(finished)[-1]
    raw = torch.load(path, weights_only=True)  # still loadable without this project
    assert raw[CHECKSUM_KEY]["algorithm"] == "sha256" and len(raw[CHECKSUM_KEY]["digest"]) == 64
    state = load_checkpoint(path)
    assert CHECKSUM_KEY not in state and same(state, {k: v for k, v in raw.items() if k != CHECKSUM_KEY})
    assert state["format"] == 2 and state["step"] == 12
    # the digest covers every value: the last bit of one weight, a counter, a key name
    digest = state_digest(state)
    w = state["model"][next(iter(state["model"]))]
    w.view(-1).view(torch.int32)[0] ^= 1
    assert state_digest(state) != digest
    w.view(-1).view(torch.int32)[0] ^= 1
    assert state_digest(state) == digest
    assert state_digest({**state, "counters": {**state["counters"], "skipped_total": 1}}) != digest
    assert state_digest({**state, "Step": state.pop("step")}) != digest


def test_the_digest_is_sha256_of_the_documented_encoding():
    """An independent re-implementation of the canonical encoding of the module docstring."""
    t = torch.tensor([[1.5, -2.0]], dtype=torch.float64)
    state = {"b": [1, 2.5, None], "a": {"x": t, "s": "text"}, "flag": True}
    h = hashlib.sha256()
    h.update(b"D3:")
    h.update(b"Kstr:'a':D2:Kstr:'s':Pstr:'text';Kstr:'x':Ttorch.float64(1, 2):" + t.numpy().tobytes())
    h.update(b"Kstr:'b':L3:Pint:1;Pfloat:2.5;PNoneType:None;")
    h.update(b"Kstr:'flag':Pbool:True;")
    assert state_digest(state) == h.hexdigest()


@pytest.mark.parametrize("group", ["model", "optimizer", "ema"])
def test_save_refuses_a_nonfinite_tensor_in_every_group(tmp_path, finished, group):
    state = load_checkpoint(list_checkpoints(finished)[-1][1])
    name = _poison(state, group)
    with pytest.raises(FloatingPointError, match=f"step 5: non-finite values in {name}") as info:
        save_checkpoint(state, tmp_path, 5)
    assert "refusing" in str(info.value) and not list_checkpoints(tmp_path)
    assert not list(tmp_path.rglob(".tmp-*"))
    with pytest.raises(ValueError, match="must not have a 'checksum'"):
        save_checkpoint({"step": 1, CHECKSUM_KEY: {}}, tmp_path, 1)


def _poison(state: dict, group: str) -> str:
    """Write one NaN (model, EMA) or inf (optimiser second moment) into ``state``; return its name."""
    if group == "model":
        key = next(iter(state["model"]))
        state["model"][key].view(-1)[1] = math.nan
        return f"model.{key}"
    if group == "optimizer":
        state["optimizer"]["state"][2]["exp_avg_sq"].view(-1)[0] = math.inf
        return "optimizer.state.2.exp_avg_sq"
    rate = sorted(state["ema"])[-1]
    key = sorted(state["ema"][rate])[-1]
    state["ema"][rate][key].view(-1)[0] = math.nan
    return f"ema.{rate}.{key}"


# -- corruption on disk ---------------------------------------------------------------------------
def test_every_flipped_bit_is_refused_or_changes_nothing(tmp_path, finished):
    """Flip one bit at a time: in the bytes of a weight (always caught by the checksum) and at 400
    positions spread over the whole file (caught by the checksum or by torch.load, or in bytes
    nothing reads, in which case the loaded state is exactly the original)."""
    path = list_checkpoints(finished)[-1][1]
    blob = path.read_bytes()
    original = load_checkpoint(path)
    weight = original["ema"][sorted(original["ema"])[0]][next(iter(original["model"]))]
    at = blob.find(weight.numpy().tobytes())
    assert at > 0, "the weight's bytes are stored verbatim in the file"
    in_data = list(range(at, at + weight.numel() * weight.element_size(), 7))
    spread = [round(i * (len(blob) - 1) / 399) for i in range(400)]
    flipped = tmp_path / "step-000000012.pt"
    caught, unchanged = 0, 0
    for pos in in_data + spread:
        damaged = bytearray(blob)
        damaged[pos] ^= 0x10
        flipped.write_bytes(bytes(damaged))
        try:
            state = load_checkpoint(flipped)
        except CheckpointError as err:
            caught += 1
            assert str(flipped) in str(err)
            if pos in in_data:
                assert "does not match its SHA-256 checksum" in str(err)
            continue
        assert pos not in in_data, f"a flipped bit at byte {pos} of a weight loaded without a word"
        assert same(state, original), f"a flipped bit at byte {pos} changed the loaded state without a word"
        unchanged += 1
    assert caught >= len(in_data) and caught + unchanged == len(in_data) + len(spread)


@pytest.mark.parametrize("group", ["model", "optimizer", "ema"])
def test_nan_written_into_a_checkpoint_with_a_valid_checksum_is_refused(tmp_path, finished, group):
    path = list_checkpoints(finished)[-1][1]
    state = load_checkpoint(path)
    name = _poison(state, group)
    crafted = tmp_path / path.name
    write_with_valid_checksum(state, crafted)
    with pytest.raises(CheckpointError, match=f"holds non-finite values in {name}") as info:
        load_checkpoint(crafted)
    assert str(crafted) in str(info.value)
    assert nonfinite_tensors(load_checkpoint(crafted, verify=False)) == [name]  # an inspection read


def test_a_checkpoint_without_checksum_is_refused_unless_read_unverified(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "step": 3, "w": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="has no checksum"):
        load_checkpoint(path)
    assert load_checkpoint(path, verify=False)["step"] == 3
    path.write_bytes(b"PK\x03\x04 a torn zip")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)


# -- resume: report, set aside, refuse to restart silently ------------------------------------------
def test_resume_skips_a_corrupt_newest_checkpoint_reports_it_and_continues_exactly(tmp_path, finished):
    run_dir = copy_run(finished, tmp_path / "run")
    reference = comparable(read_metrics(finished))
    newest = list_checkpoints(run_dir)[-1][1]
    state = load_checkpoint(newest)
    _poison(state, "optimizer")
    write_with_valid_checksum(state, newest)  # step 12 holds an inf; step 8 is good
    with pytest.warns(UserWarning, match="skipping checkpoint of step 12: .*non-finite values in optimizer"):
        assert load_latest(run_dir)["step"] == 8  # a reader reports, and changes nothing
    assert [s for s, _ in list_checkpoints(run_dir)] == [4, 8, 12]
    with pytest.warns(UserWarning) as w:
        trainer = Trainer.resume(run_dir)
    text = " | ".join(str(x.message) for x in w)
    assert "skipping checkpoint of step 12" in text and "set aside" in text and "resuming from step 8" in text
    assert trainer.step == 8 and [s for s, _ in list_checkpoints(run_dir)] == [4, 8]
    assert RunDir(run_dir).unusable_checkpoint(12).exists()
    assert trainer.fit().status == "completed"
    assert comparable(read_metrics(run_dir)) == reference
    session = read_jsonl(RunDir(run_dir).sessions)[-1]
    assert session["start_step"] == 8 and session["end_step"] == 12 and session["status"] == "completed"
    assert session["skipped_checkpoints"][0]["step"] == 12


def test_all_checkpoints_corrupt_is_an_error_not_a_silent_restart(tmp_path, finished):
    run_dir = copy_run(finished, tmp_path / "run")
    (_, p4), (_, p8), (_, p12) = list_checkpoints(run_dir)
    p4.write_bytes(p4.read_bytes()[: p4.stat().st_size // 2])  # a torn copy
    blob, state = bytearray(p8.read_bytes()), load_checkpoint(p8)  # a flipped bit in a weight
    blob[blob.find(state["model"][next(iter(state["model"]))].numpy().tobytes()) + 5] ^= 0x01
    p8.write_bytes(bytes(blob))
    state = load_checkpoint(p12)  # a NaN with a valid checksum
    _poison(state, "ema")
    write_with_valid_checksum(state, p12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match=r"none of the 3 checkpoint\(s\) .* is usable") as info:
            Trainer.resume(run_dir)
        msg = str(info.value)
        assert all(f"step {s}:" in msg for s in (4, 8, 12)) and "allow_fresh_start=True" in msg
        assert "cannot be read" in msg and "checksum" in msg and "non-finite values in ema" in msg
        assert [s for s, _ in list_checkpoints(run_dir)] == [4, 8, 12]  # left as they were
        with pytest.raises(CheckpointError, match="none of the 3"):
            load_latest(run_dir)
        assert load_latest(run_dir, allow_fresh_start=True) is None
        trainer = Trainer.resume(run_dir, allow_fresh_start=True)  # the explicit way to start afresh
    assert trainer.step == 0 and not list_checkpoints(run_dir)
    assert sorted(p.name for p in RunDir(run_dir).checkpoint_dir.iterdir()) == [
        f"step-{s:09d}.pt.unusable" for s in (4, 8, 12)]
    assert read_metrics(run_dir) == []
    assert trainer.fit().status == "completed"
    assert comparable(read_metrics(run_dir)) == comparable(read_metrics(finished))


def test_a_run_without_checkpoints_resumes_from_step_0(tmp_path):
    Trainer(tiny_config(steps=3, checkpoint_every=0), tmp_path / "run")  # config written, never trained
    assert load_latest(tmp_path / "run") is None and Trainer.resume(tmp_path / "run").step == 0


# -- the per-step check of the whole state -----------------------------------------------------------
@dataclasses.dataclass
class Scaled:
    """Flow matching with the loss multiplied by ``factor``: with factor 1e24 and no clipping the
    gradients (~1e24) stay finite in float32 but their squares (~1e48) overflow Adam's second moment."""

    factor: float
    name: str = "fm_scaled"

    def __call__(self, model, x1, generator=None):
        res = OBJECTIVES["fm"](model, x1, generator=generator)
        return dataclasses.replace(res, loss=res.loss * self.factor)


@pytest.mark.parametrize("optim", ["adam", "radam"])
def test_adam_second_moment_overflow_stops_the_run_naming_the_tensor(tmp_path, optim):
    cfg = tiny_config(optim=OptimConfig(name=optim, lr=1e-3, grad_clip=0.0), checkpoint_every=1)
    trainer = Trainer(cfg, tmp_path / "run", objective=Scaled(1e24))
    result = trainer.fit()
    # independently: the gradients were finite, the second moments are not
    assert result.skipped_total == 0 and math.isfinite(read_metrics(tmp_path / "run")[0]["grad_norm"])
    infinite = [n for n, p in trainer.model.named_parameters()
                if not torch.isfinite(trainer.optimizer.state[p]["exp_avg_sq"]).all()]
    assert infinite, "the recipe no longer overflows the second moment"
    assert result.status == "diverged" and result.step == 1
    assert f"optimizer exp_avg_sq of {infinite[0]}" in result.message and "grad_clip" in result.message
    assert "no checkpoint was written" in result.message
    assert not list_checkpoints(tmp_path / "run")  # a non-finite state is never written
    last = read_metrics(tmp_path / "run")[-1]
    assert last["stopped"] == "diverged" and last["step"] == 1
    session = read_jsonl(RunDir(tmp_path / "run").sessions)[-1]
    assert session["status"] == "diverged" and session["end_step"] == 1


def test_a_nonfinite_ema_after_an_update_stops_the_run_and_the_claim_about_the_checkpoint_is_true(tmp_path):
    class BreakEma(Callback):
        def on_step_end(self, ctx, record):
            if record.step == 5:  # the EMA of rate 0.99 turns NaN after update 5 (e.g. a bad in-place edit)
                next(ctx.ema[0.99].parameters()).data.view(-1)[0] = math.nan

    trainer = Trainer(tiny_config(), tmp_path / "run", callbacks=[BreakEma()])
    result = trainer.fit()
    # the check runs inside the next update: step 6 reports the EMA tensor by name
    assert result.status == "diverged" and result.step == 6
    assert "ema 0.99 " in result.message and "last checkpoint (step 4) holds the last finite state" in result.message
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [4]
    load_checkpoint(list_checkpoints(tmp_path / "run")[0][1])  # the claim holds: it passes every check


def test_the_fast_state_check_has_no_false_alarm_when_a_finite_sum_overflows(tmp_path):
    trainer = Trainer(tiny_config(steps=2), tmp_path / "run")
    trainer.fit()
    assert trainer.nonfinite_state() == []
    ema_weight = next(trainer.ema.models[0.9].parameters())
    with torch.no_grad():
        ema_weight.fill_(F32_MAX)  # finite entries whose float32 sum overflows to inf
    assert not torch.isfinite(ema_weight.sum()) and torch.isfinite(ema_weight).all()
    assert trainer.nonfinite_state() == []
    with torch.no_grad():
        ema_weight.view(-1)[3] = -math.inf
    names = dict(trainer.ema.models[0.9].named_parameters())
    name = next(n for n, p in names.items() if p is ema_weight)
    assert trainer.nonfinite_state() == [f"ema 0.9 {name}"]


@pytest.mark.parametrize("fused", [False, True])  # the CPU path and the fused one used on a GPU
def test_the_fast_reduction_sees_every_nonfinite_entry(fused):
    from workbench.training.trainer import _sums_finite

    for dtype in (torch.float32, torch.float64):
        finfo = torch.finfo(dtype)
        ts = [torch.randn(7, 5, dtype=dtype), torch.tensor(2.0, dtype=dtype), torch.randn(300, dtype=dtype)]
        assert _sums_finite(ts, fused=fused)
        for bad in (math.nan, math.inf, -math.inf):
            for i in range(len(ts)):
                poisoned = [t.clone() for t in ts]
                poisoned[i].view(-1)[-1] = bad
                assert not _sums_finite(poisoned, fused=fused), (bad, i)
        both = [torch.tensor([math.inf, -math.inf], dtype=dtype)]  # +inf - inf is NaN: still caught
        assert not _sums_finite(both, fused=fused)
        huge = [torch.full((4,), finfo.max, dtype=dtype)]  # a finite overflow: a (handled) false alarm
        assert not _sums_finite(huge, fused=fused)


# -- non-finite data and exceptions inside a step ------------------------------------------------------
class Faulty:
    """The Gaussian data source, with NaN in the batch (``mode="nan"``) or an exception raised after
    drawing (``mode="raise"``) at the chosen calls of ``sample``."""

    def __init__(self, bad_calls, mode="nan", exc=RuntimeError):
        self.inner = get_data(GAUSS.name, **GAUSS.kwargs)
        self.name, self.dim = self.inner.name, self.inner.dim
        self.bad_calls, self.mode, self.exc, self.calls = set(bad_calls), mode, exc, 0

    def sample(self, n, generator=None, *, dtype=torch.float32, device=None):
        self.calls += 1
        x = self.inner.sample(n, generator, dtype=dtype, device=device)
        if self.calls in self.bad_calls:
            if self.mode == "raise":
                raise self.exc("the data loader failed")
            x[3, 1] = math.nan
            x[5, 0] = math.inf
        return x

    def as_flow(self):
        return self.inner.as_flow()


def test_a_nonfinite_data_batch_is_a_skipped_step(tmp_path):
    seen = {}

    class Watch(Callback):
        def on_step_end(self, ctx, record):
            seen[record.step] = ([p.detach().clone() for p in ctx.model.parameters()], record)

    trainer = Trainer(tiny_config(), tmp_path / "run", data=Faulty({6}), callbacks=[Watch()])
    result = trainer.fit()
    assert result.status == "completed" and result.step == 12 and result.skipped_total == 1
    params5, params6, rec6 = seen[5][0], seen[6][0], seen[6][1]
    assert rec6.skipped and rec6.skip_reason == "non-finite data batch (2 of 64 entries are NaN or inf)"
    assert all(torch.equal(a, b) for a, b in zip(params5, params6)), "a skipped step changed the weights"
    assert math.isnan(rec6.loss) and rec6.result.loss.shape == (32,) and rec6.result.terms == {}
    row = {r["step"]: r for r in read_metrics(tmp_path / "run")}[6]
    assert row["skipped"] is True and row["skip_reason"].startswith("non-finite data batch") and row["loss"] is None
    assert "times/frac_diag" not in row
    assert int(trainer.optimizer.state_dict()["state"][0]["step"]) == 11


def test_nonfinite_data_batches_in_a_row_stop_the_run(tmp_path):
    cfg = tiny_config(max_consecutive_skips=3, steps=40)
    result = Trainer(cfg, tmp_path / "run", data=Faulty(range(6, 100))).fit()
    assert result.status == "diverged" and result.step == 8 and result.skipped_total == 3
    assert "3 consecutive steps were skipped" in result.message and "non-finite data batch" in result.message
    assert "last checkpoint (step 4) holds the last finite state" in result.message


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_an_exception_in_a_step_checkpoints_the_last_good_state_and_resume_is_exact(tmp_path, finished, exc):
    """The data source fails at step 7 (after drawing its batch): a checkpoint of step 6 is written with
    the generators as they were when step 7 began, so resuming reproduces the uninterrupted run."""
    run_dir = tmp_path / "run"
    trainer = Trainer(tiny_config(), run_dir, data=Faulty({7}, mode="raise", exc=exc))
    with pytest.raises(exc, match="the data loader failed") as info:
        trainer.fit()
    note = " ".join(getattr(info.value, "__notes__", []))
    assert "at step 7" in note and "checkpoint of the last good state (step 6) was written" in note
    assert [s for s, _ in list_checkpoints(run_dir)] == [4, 6]
    session = read_jsonl(RunDir(run_dir).sessions)[-1]
    assert session["status"] == "error" and session["end_step"] == 6
    assert Trainer.resume(run_dir).fit().status == "completed"
    assert comparable(read_metrics(run_dir)) == comparable(read_metrics(finished))


def test_an_exception_in_a_callback_checkpoints_the_state_after_the_step(tmp_path):
    class Crash(Callback):
        def on_step_end(self, ctx, record):
            if record.step == 6:
                raise ValueError("a diagnostic failed")

    with pytest.raises(ValueError, match="a diagnostic failed") as info:
        Trainer(tiny_config(), tmp_path / "run", callbacks=[Crash()]).fit()
    assert "(step 6) was written" in " ".join(info.value.__notes__)
    assert load_latest(tmp_path / "run")["step"] == 6


def test_an_exception_inside_the_update_writes_nothing_and_says_so(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(), tmp_path / "run")
    calls = {"n": 0}
    step = trainer.optimizer.step

    def failing_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("CUDA error: an illegal memory access")
        return step(*a, **k)

    monkeypatch.setattr(trainer.optimizer, "step", failing_step)
    with pytest.raises(RuntimeError, match="illegal memory access") as info:
        trainer.fit()
    note = " ".join(info.value.__notes__)
    assert "at step 6" in note and "inconsistent" in note and "last checkpoint (step 4)" in note
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [4]


def test_sessions_log_one_line_per_session_with_its_end(tmp_path):
    holder = []

    class StopAt(Callback):
        def on_step_end(self, ctx, record):
            if record.step == 5:
                holder[0].request_stop("test stop")

    trainer = Trainer(tiny_config(), tmp_path / "run", callbacks=[StopAt()])
    holder.append(trainer)
    assert trainer.fit().status == "interrupted"
    Trainer.resume(tmp_path / "run").fit()
    rows = read_jsonl(RunDir(tmp_path / "run").sessions)
    assert [(r["start_step"], r["end_step"], r["status"]) for r in rows] == [(0, 5, "interrupted"), (5, 12, "completed")]
    assert json.loads(RunDir(tmp_path / "run").sessions.read_text().splitlines()[0])["message"].startswith("test stop")


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), OSError(5, "Input/output error"),
                                   MemoryError()], ids=["EACCES", "EIO", "MemoryError"])
def test_a_transient_read_error_propagates_and_sets_no_checkpoint_aside(tmp_path, finished, monkeypatch, error):
    """An I/O or memory failure says nothing about the file: it is not a CheckpointError, find_latest
    does not skip to an older checkpoint, and resuming keeps the newest file where it is."""
    run_dir = copy_run(finished, tmp_path / "run")
    before = list_checkpoints(run_dir)
    newest = before[-1][1]
    real_open = builtins.open

    def failing_open(file, *args, **kwargs):  # the read of the newest checkpoint fails, whoever opens it
        if isinstance(file, (str, Path)) and Path(file) == newest:
            raise error
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)
    monkeypatch.setattr(io, "open", failing_open)
    with pytest.raises(type(error)):
        load_checkpoint(newest)
    with pytest.raises(type(error)):
        find_latest(run_dir)
    with pytest.raises(type(error)):
        Trainer.resume(run_dir)
    assert list_checkpoints(run_dir) == before and not list(RunDir(run_dir).checkpoint_dir.glob("*.unusable"))
    monkeypatch.undo()
    assert Trainer.resume(run_dir).step == 12  # the failure has passed: nothing was lost


def test_latest_step_is_the_newest_usable_checkpoint_not_the_newest_file_name(tmp_path, finished):
    from workbench.training import latest_step

    run_dir = copy_run(finished, tmp_path / "run")
    assert latest_step(run_dir) == 12
    (_, p12) = list_checkpoints(run_dir)[-1]
    p12.write_bytes(p12.read_bytes()[: p12.stat().st_size // 2])  # a torn final checkpoint
    with pytest.warns(UserWarning, match="skipping checkpoint of step 12"):
        assert latest_step(run_dir) == 8
    assert latest_step(tmp_path / "empty") == 0
