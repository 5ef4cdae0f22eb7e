"""Exact resume: a run stopped at any point (stop request, SIGTERM, SIGKILL) and resumed from its last
checkpoint writes the same metrics.jsonl, bit for bit (wall-clock timings aside), as an uninterrupted
run; no step is duplicated or lost."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.experiments.cli import main as cli_main
from workbench.training import (
    Callback,
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    TrainConfig,
    Trainer,
    list_checkpoints,
    read_metrics,
)

ROOT = Path(__file__).resolve().parents[1]
# a tiny LSD run on the 2-D Gaussian with the oracle-error callback (its own generator) attached
CLI_ARGS = ["gauss2d-lsd", "--steps", "240", "--batch_size", "64", "--hidden", "32", "--depth", "2",
            "--checkpoint_every", "20", "--log_every", "5", "--eval_every", "40", "--progress", "false",
            "--device", "cpu"]


def comparable(rows: list[dict]) -> list[dict]:
    """Metrics without wall-clock timings (the only thing allowed to differ)."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _spawn(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "workbench.experiments", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not list_checkpoints(run_dir):
        if proc.poll() is not None:
            raise AssertionError(f"the run exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("no checkpoint appeared")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The uninterrupted run (in this process: same code path as the command line)."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    assert cli_main(CLI_ARGS + ["--run-dir", str(run_dir)]) == 0
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows][:3] == [0, 5, 10] and rows[-1]["step"] == 240
    assert "oracle/map_rmse" in rows[0] and "oracle/map_rmse" in rows[-1]
    return comparable(rows)


def test_sigkill_then_resume_is_bit_identical(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = _spawn(CLI_ARGS + ["--run-dir", str(run_dir)], tmp_path)
    _wait_for_checkpoint(proc, run_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = list_checkpoints(run_dir)[-1][0]
    assert killed_at < 240, "the run finished before it could be killed"
    resumed = _spawn(["--resume", str(run_dir)], tmp_path)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert f"resuming at step {killed_at}" in err
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), "duplicated or reordered steps after resume"
    assert comparable(rows) == reference


def test_sigterm_writes_a_checkpoint_and_resumes(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = _spawn(CLI_ARGS + ["--run-dir", str(run_dir)], tmp_path)
    _wait_for_checkpoint(proc, run_dir)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "received SIGTERM; checkpoint written at step" in err
    stopped_at = int(err.split("checkpoint written at step")[1].split()[0])
    assert list_checkpoints(run_dir)[-1][0] == stopped_at < 240
    assert read_metrics(run_dir)[-1]["step"] <= stopped_at
    assert cli_main(["--resume", str(run_dir)]) == 0
    assert comparable(read_metrics(run_dir)) == reference


class StopAt(Callback):
    def __init__(self, trainer_ref: list, step: int):
        self.trainer_ref, self.step = trainer_ref, step

    def on_step_end(self, ctx, record):
        if record.step == self.step:
            self.trainer_ref[0].request_stop("test stop")


def test_resume_drops_metrics_past_the_checkpoint(tmp_path):
    """Stop at 25, then lose the step-25 checkpoint and leave stray lines: resuming from step 20
    truncates them and continues exactly (LSD: jvp and RNG-dependent times on every step)."""
    cfg = TrainConfig(
        model=ModelConfig(hidden=16, depth=2), objective=ObjectiveConfig("lsd"),
        data=DataConfig("two_moons"), optim=OptimConfig(lr=1e-3), batch_size=32, steps=30, log_every=1,
        checkpoint_every=10, keep_checkpoints=5, progress=False, tensorboard=False, device="cpu",
    )
    Trainer(cfg, tmp_path / "a").fit()
    ref = comparable(read_metrics(tmp_path / "a"))
    holder: list = []
    trainer = Trainer(cfg, tmp_path / "b", callbacks=[StopAt(holder, 25)])
    holder.append(trainer)
    result = trainer.fit()
    assert result.status == "interrupted" and result.step == 25
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [10, 20, 25]
    list_checkpoints(tmp_path / "b")[-1][1].unlink()
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 26, "loss": 0.0}) + "\n" + '{"step": 27, "lo')
    resumed = Trainer.resume(tmp_path / "b")
    assert resumed.step == 20 and [r["step"] for r in read_metrics(tmp_path / "b")][-1] == 20
    assert resumed.fit().status == "completed"
    assert comparable(read_metrics(tmp_path / "b")) == ref
    # resuming a finished run does nothing
    again = Trainer.resume(tmp_path / "b")
    assert again.fit().step == 30 and comparable(read_metrics(tmp_path / "b")) == ref
    assert dataclasses.asdict(TrainConfig.load(tmp_path / "b")) == dataclasses.asdict(cfg)
