"""The command line, the presets and the benchmark; a short LSD run learns the Gaussian flow map."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types

import pytest

from workbench.experiments import get_presets
from workbench.experiments.cli import main as cli_main
from workbench.experiments.step_benchmark import format_table, run_benchmark
from workbench.losses import OBJECTIVES
from workbench.training import TrainConfig, read_metrics


def test_help_lists_every_preset(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    presets = get_presets()
    for name, preset in presets.items():
        assert f"  {name} " in out and preset.description in out
    assert cli_main([]) == 2  # no arguments: the same listing, as a usage error


def test_every_objective_has_a_preset():
    presets = get_presets()
    assert {"gauss2d-lsd", "gauss2d-fm"} <= set(presets)
    for name in OBJECTIVES:
        matches = [p for p in presets.values() if p.config.objective.name == name and not p.name.startswith("gauss2d")]
        assert len(matches) == 1, name
        assert matches[0].name.startswith("gmm8-" if name in ("lmd", "emd", "pd", "cd") else "checker-")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["gauss2d-lsd", "--bogus", "1"], "unknown option --bogus"),
        (["gauss2d-lsd", "--steps", "ten"], "--steps: cannot parse"),
        (["gauss2d-lsd", "--lr", "-1"], "optim.lr must be"),
        (["gauss2d-lsd", "--objective.nope", "1", "--dry-run"], "unknown field(s) ['nope']"),
        (["gauss2d-lsd", "--data.bogus", "1", "--dry-run"], "bad parameters"),
        (["gauss2d-lsd", "--steps"], "--steps needs a value"),
        (["no-such-preset"], "unknown preset"),
        (["--resume", "/nonexistent/run"], "no config.json"),
        (["gauss2d-lsd", "--resume", "x"], "takes no preset"),
        (["checker-fm", "--eval_every", "10", "--dry-run"], "eval_every > 0 needs"),
    ],
)
def test_bad_command_lines_exit_2(argv, message, capsys):
    assert cli_main(argv) == 2
    assert message in capsys.readouterr().err


def test_dry_run_prints_the_resolved_config(capsys):
    assert cli_main(["checker-lsd", "--lr", "3e-4", "--objective.diag_fraction", "0.5", "--dry-run"]) == 0
    cfg = TrainConfig.from_dict(json.loads(capsys.readouterr().out))
    base = get_presets()["checker-lsd"].config
    assert cfg == dataclasses.replace(
        base, optim=dataclasses.replace(base.optim, lr=3e-4),
        objective=dataclasses.replace(base.objective, overrides={"diag_fraction": 0.5}),
    )


def test_main_subcommand_dispatches_lazily(monkeypatch, capsys):
    seen = []
    fake = types.ModuleType("workbench.experiments.main_job")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "workbench.experiments.main_job", fake)
    monkeypatch.setattr(sys.modules["workbench.experiments"], "main_job", fake, raising=False)
    assert cli_main(["main", "--runs", "x"]) == 0 and seen == [["--runs", "x"]]
    # a real import error of the project's own module is not turned into a misleading usage message
    monkeypatch.setitem(sys.modules, "workbench.experiments.main_job", None)  # makes the import fail
    monkeypatch.delattr(sys.modules["workbench.experiments"], "main_job")
    with pytest.raises(ImportError):
        cli_main(["main"])


def test_bench_runs_on_a_tiny_config(capsys):
    rows = run_benchmark(batch=16, hidden=8, depth=1, reps=2, inner=1, warmup=1)
    assert [r.objective for r in rows][0] == "fm" and {r.objective for r in rows} == set(OBJECTIVES)
    assert all(r.error is None and math.isfinite(r.ratio_to_fm) and r.median_ms > 0 for r in rows), format_table(rows)
    assert rows[0].ratio_to_fm == 1.0
    assert cli_main(["bench", "--batch", "8", "--hidden", "8", "--depth", "1", "--reps", "1", "--inner", "1",
                     "--objectives", "fm,lsd"]) == 0
    out = capsys.readouterr().out
    assert "| fm |" in out and "| lsd |" in out and "x fm" in out


@pytest.mark.parametrize("preset", sorted(n for n in get_presets() if not n.startswith("gauss2d")))
def test_each_objective_preset_runs_without_divergence(preset, tmp_path):
    run_dir = tmp_path / "run"
    argv = [preset, "--run-dir", str(run_dir), "--steps", "6", "--batch_size", "64", "--hidden", "32",
            "--depth", "2", "--log_every", "2", "--checkpoint_every", "0", "--progress", "false",
            "--tensorboard", "false", "--device", "cpu"]
    assert cli_main(argv) == 0
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert rows[-1]["skipped_total"] == 0 and all(math.isfinite(r["loss"]) for r in rows)


def test_lsd_on_a_gaussian_learns_the_flow_map(tmp_path, capsys):
    """A short LSD run lowers the flow-map error against GaussianFlow.flow_map at least 10x
    (oracle RMSE over (s, t) uniform on the triangle, x ~ p_s; EMA 0.99, the evaluation model)."""
    run_dir = tmp_path / "run"
    argv = ["gauss2d-lsd", "--run-dir", str(run_dir), "--steps", "800", "--progress", "false",
            "--tensorboard", "false", "--device", "cpu"]
    assert cli_main(argv) == 0
    rows = [r for r in read_metrics(run_dir) if "oracle/map_rmse" in r]
    curve = [(r["step"], r["oracle/map_rmse"], r["oracle/ema0.99/map_rmse"], r["oracle/map01_rmse"]) for r in rows]
    print("step, online RMSE, EMA 0.99 RMSE, one-step X_01 RMSE:", *curve, sep="\n")
    assert curve[0][0] == 0 and curve[-1][0] == 800
    init, final = curve[0][1], curve[-1]
    assert final[2] * 10 <= init, curve
    assert final[1] * 5 <= init, curve  # the online weights too, with a noisier margin
    assert rows[-1]["skipped_total"] == 0


# -- command-line errors are usage messages (exit code 2), never tracebacks ------------------------------------
_QUICK = ["--steps", "2", "--progress", "false", "--tensorboard", "false", "--device", "cpu", "--eval_every", "0"]


def test_run_dir_that_is_a_file_or_under_one_or_empty_is_refused(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    monkeypatch.chdir(tmp_path)
    for run_dir, message in ((str(a_file), "is a file"), (str(a_file / "run"), "cannot be created"),
                             ("", "must name a directory, got ''")):
        assert cli_main(["gauss2d-lsd", "--run-dir", run_dir, *_QUICK]) == 2, run_dir
        err = capsys.readouterr().err
        assert message in err and "--run-dir" in err and "Traceback" not in err
    # '' used to train in the current directory: nothing may have been written there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_resume_accepts_the_config_file_of_a_run_and_refuses_other_files(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli_main(["gauss2d-lsd", "--run-dir", str(run_dir), *_QUICK]) == 0
    assert read_metrics(run_dir)[-1]["step"] == 2
    capsys.readouterr()
    assert cli_main(["--resume", str(run_dir / "config.json")]) == 0  # the run directory it is in
    assert f"run directory: {run_dir} (resuming at step 2)" in capsys.readouterr().err
    assert cli_main(["--resume", str(run_dir / "metrics.jsonl")]) == 2
    assert "pass the directory that holds the run's config.json" in capsys.readouterr().err
    assert cli_main(["--resume", ""]) == 2
    assert "--resume must name a directory" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00binary", b'{"model": {"hidden": 8', b"[1, 2]",
                                     b'{"model": {"hidden": "eight"}}'])
def test_resume_with_a_damaged_config_names_the_file(tmp_path, capsys, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_bytes(content)
    assert cli_main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert str(run_dir / "config.json") in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["1e12", "1e39"])
def test_a_batch_too_large_for_the_machine_is_a_usage_error(tmp_path, capsys, value):
    for extra in (["--dry-run"], ["--run-dir", str(tmp_path / "run")]):
        assert cli_main(["gauss2d-lsd", "--batch_size", value, *_QUICK, *extra]) == 2
        err = capsys.readouterr().err
        # the config refuses it (workbench.training.config.MAX_BATCH_SIZE) before any batch is drawn
        assert "batch_size must be at most 16777216" in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_a_model_too_large_for_the_machine_is_a_usage_error(tmp_path, capsys):
    assert cli_main(["gauss2d-lsd", "--hidden", "1e12", *_QUICK, "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "out of memory while building the model" in err and "--model.hidden 1000000000000" in err, err
    assert not (tmp_path / "run").exists()  # the empty directory made for it is removed again


def test_out_of_memory_during_training_is_reported_not_raised(tmp_path, monkeypatch, capsys):
    from workbench.training.trainer import Trainer

    def fit(self):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(Trainer, "fit", fit)
    assert cli_main(["gauss2d-lsd", "--run-dir", str(tmp_path / "a"), *_QUICK]) == 2
    err = capsys.readouterr().err
    assert "out of memory at step 1" in err and "--batch_size 512" in err

    def broken(self):
        raise RuntimeError("a real defect")

    monkeypatch.setattr(Trainer, "fit", broken)  # any other error is a bug: it is not disguised
    with pytest.raises(RuntimeError, match="a real defect"):
        cli_main(["gauss2d-lsd", "--run-dir", str(tmp_path / "b"), *_QUICK])


@pytest.mark.parametrize("error", [ValueError, TypeError])
def test_any_config_validation_error_is_a_usage_message(monkeypatch, capsys, error):
    from workbench.experiments import cli

    def refuse(config, overrides):
        raise error("optim.lr must be a finite number in (0, 1e3], got 1e+39")

    monkeypatch.setattr(cli, "apply_overrides", refuse)
    assert cli_main(["gauss2d-lsd", "--lr", "1e39", "--dry-run"]) == 2
    assert "error: optim.lr must be" in capsys.readouterr().err


def test_an_absurd_learning_rate_is_refused_by_the_config(capsys):
    """lr = 1e39 overflows float32 (Adam's first step lr / (1 - beta1) must fit the model dtype): the
    TrainConfig refuses it at construction, so the dry run already fails, naming the key."""
    from workbench.experiments import get_presets
    from workbench.training.config import apply_overrides

    with pytest.raises(ValueError, match="lr"):
        apply_overrides(get_presets()["gauss2d-lsd"].config, {"optim.lr": "1e39"})
    assert cli_main(["gauss2d-lsd", "--lr", "1e39", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "lr" in err and "Traceback" not in err, err


@pytest.mark.parametrize("value", ["abc", "[1, 2]", "1e39"])
def test_every_config_key_with_a_value_of_the_wrong_type_or_size(value, capsys):
    """No value of any key ends in a traceback under --dry-run; a refused one is named in the
    message. (A dry run builds no model, so --depth 1e39 is not built here.)"""
    from workbench.training.config import config_keys

    for key in config_keys():
        rc = cli_main(["gauss2d-lsd", f"--{key}", value, "--dry-run"])
        err = capsys.readouterr().err
        assert rc in (0, 2), (key, value)
        if rc == 2:
            leaf = key.split(".")[-1]
            assert leaf in err or key.split(".")[0] in err, (key, value, err)


def test_resume_with_no_usable_checkpoint_names_fresh_start_which_the_command_line_accepts(tmp_path, capsys):
    """The refusal to restart from step 0 tells the user how to do it from the command line, and
    ``--resume RUN_DIR --fresh-start`` does it (the unusable checkpoints are set aside)."""
    from workbench.rundir import RunDir

    run_dir = tmp_path / "run"
    assert cli_main(["gauss2d-lsd", "--run-dir", str(run_dir), *_QUICK]) == 0
    checkpoints = RunDir(run_dir).checkpoints()
    assert checkpoints
    for _, path in checkpoints:
        path.write_bytes(path.read_bytes()[:100])  # torn
    capsys.readouterr()
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        assert cli_main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "is usable" in err and "--resume RUN_DIR --fresh-start" in err and "Traceback" not in err
    with pytest.warns(UserWarning, match="skipping checkpoint"), pytest.warns(UserWarning, match="set aside"):
        assert cli_main(["--resume", str(run_dir), "--fresh-start"]) == 0
    assert "resuming at step 0" in capsys.readouterr().err
    assert [s for s, _ in RunDir(run_dir).checkpoints()] == [s for s, _ in checkpoints]  # trained again
    assert all(RunDir(run_dir).unusable_checkpoint(s).is_file() for s, _ in checkpoints)
    assert cli_main(["gauss2d-lsd", "--fresh-start", *_QUICK]) == 2
    assert "--fresh-start goes with --resume" in capsys.readouterr().err
