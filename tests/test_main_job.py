"""The main job end to end on the smoke budget (run dirs, evaluations, figures, report), the report
against the evaluation files, resume / skip / stop / time cap of a run, and the evaluation itself
against the exact flow map (oracle error ~ the ODE tolerance, sample quality ~ the data floor)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
from pathlib import Path

import pytest
import torch

from workbench.experiments import jobs, main_job, stopping
from workbench.experiments.evaluate import EvalSpec, evaluate_model, read_evaluation
from workbench.experiments.main_job import (
    BUDGETS,
    DATASETS,
    METHODS,
    dataset_config,
    main,
    make_job,
    run_plan,
    run_state,
)
from workbench.experiments.report import METRIC_TITLES, format_number
from workbench.experiments.specs import Job
from workbench.flows.registry import make_flow
from workbench.losses import OBJECTIVES
from workbench.models import ExactFlowMap
from workbench.rundir import EVALUATION as EVALUATION_FILE
from workbench.rundir import REPORT

SMOKE = BUDGETS["smoke"]
TITLE_TO_METRIC = {title: m for m, (title, _) in METRIC_TITLES.items()}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One run of ``python -m workbench.experiments main --budget smoke`` in a temporary directory."""
    base = tmp_path_factory.mktemp("main")
    rc = main(["--budget", "smoke", "--runs", str(base / "runs"), "--figures", str(base / "figures"), "--no-progress"])
    return base, rc


def parse_report(md: str) -> dict:
    """{(data, metric): {row label: [cells]}} for the quality tables, (data, "oracle") for the oracle
    table and ("runs", "runs") for the runs table."""
    out: dict = {}
    data = key = None
    for line in md.splitlines():
        if m := re.fullmatch(r"## (\w+)", line):
            data, key = m[1], None
        elif m := re.fullmatch(r"### (\w+): (.+) against the number of steps N", line):
            key = (m[1], TITLE_TO_METRIC[m[2]])
        elif re.fullmatch(r"### \w+: flow-map error against the oracle", line):
            key = (data, "oracle")
        elif (m := re.fullmatch(r"(.+?) \(.*\):", line)) and m[1] in TITLE_TO_METRIC:
            key = (data, TITLE_TO_METRIC[m[1]])
        elif line.startswith("## Runs"):
            key = ("runs", "runs")
        elif line.startswith("| ") and key and not line.startswith(("| method", "| run |", "| ---")):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            out.setdefault(key, {})[cells[0]] = cells[1:]
    return out


def test_budgets_cover_the_contract():
    cpu = BUDGETS["cpu"]
    assert set(cpu.methods) == {"lsd", "esd", "psd_midpoint", "psd_uniform", "meanflow", "ct", "isd"} == set(METHODS)
    assert cpu.datasets == DATASETS and cpu.eval_steps == (1, 2, 4, 8, 16) and cpu.workers == 2 and cpu.threads == 1
    assert BUDGETS["gpu"].device == "auto" and BUDGETS["gpu"].steps > cpu.steps
    assert all(m in OBJECTIVES for plan in BUDGETS.values() for m in plan.methods)
    with pytest.raises(ValueError, match="plan.steps"):
        dataclasses.replace(cpu, steps=0)
    with pytest.raises(ValueError, match="plan.datasets"):
        dataclasses.replace(cpu, datasets=("mnist",))
    # the GMM data set is the registry's gmm_8, with the data std of that mixture
    data, std, box = dataset_config("gmm")
    x = make_flow("gmm_8").sample_data(200_000, torch.Generator().manual_seed(0))
    assert box is None and abs(std - float(x.std(dim=0).mean())) < 0.01


def test_smoke_main_job_end_to_end(smoke):
    base, rc = smoke
    assert rc == 0
    root = base / "runs" / "main-smoke"
    names = SMOKE.run_names()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(names)
    for name in names:
        rd = root / name
        for f in ("config.json", "metrics.jsonl", "diagnosis.json", "diagnosis.md", "training.json", EVALUATION_FILE):
            assert (rd / f).is_file(), (name, f)
        assert list((rd / "checkpoints").glob("*.pt"))
        ev = read_evaluation(rd)
        assert ev["training"]["status"] == "completed" and ev["step"] == SMOKE.steps
        assert ev["steps"] == list(SMOKE.eval_steps) and set(ev["quality"]) >= {"w2", "sliced_w2", "mmd2", "energy"}
        assert ("kl" in ev["quality"]) == name.startswith("checkerboard")
        assert (ev["oracle"] is not None) == name.startswith("gmm")
    assert (base / "runs" / "gallery" / "gallery.npz").is_file()
    figs = base / "figures"
    for stem in ("gallery", "samples_vs_steps_checkerboard", "quality_vs_steps_gmm"):
        assert (figs / f"{stem}.png").is_file() and (figs / f"{stem}.pdf").is_file(), stem
    report = (root / "report.md").read_text()
    assert (figs / "report.md").read_text() == report
    assert f"{figs}/gallery.png" in report


def test_report_numbers_are_the_evaluation_files(smoke):
    base, _ = smoke
    root = base / "runs" / "main-smoke"
    tables = parse_report((root / "report.md").read_text())
    checked = 0
    for name in SMOKE.run_names():
        ev = read_evaluation(root / name)
        data, method = ev["data"], ev["method"]
        for metric, values in ev["quality"].items():
            assert tables[(data, metric)][method] == [format_number(v) for v in values], (name, metric)
            checked += len(values)
            if metric != "drift":
                assert tables[(data, metric)]["*data vs data*"][0] == format_number(ev["floor"][metric])
        if ev["oracle"] is not None:
            o = ev["oracle"]
            assert tables[(data, "oracle")][method] == [format_number(v) for v in [*o["steps_rmse"], o["map_rmse"]]]
            checked += len(o["steps_rmse"]) + 1
        row = tables[("runs", "runs")][name]
        assert row[0] == ev["training"]["status"] and row[1] == f"{SMOKE.steps}/{SMOKE.steps}"
        assert row[4] == (", ".join(ev["detectors"]["fired"]) or "none")
        assert ev["detectors"]["fired"] == json.loads((root / name / "diagnosis.json").read_text())["models"][
            ev["model"]]["fired"]
    assert checked >= len(SMOKE.run_names()) * 5 * len(SMOKE.eval_steps)


def test_rerun_skips_finished_runs_and_refuses_another_plan(smoke):
    base, _ = smoke
    root = base / "runs" / "main-smoke"
    before = {n: (root / n / EVALUATION_FILE).stat().st_mtime_ns for n in SMOKE.run_names()}
    results, interrupted = run_plan(SMOKE, root, progress=False, log=lambda s: None)
    assert results == [] and not interrupted
    assert before == {n: (root / n / EVALUATION_FILE).stat().st_mtime_ns for n in SMOKE.run_names()}
    other = dataclasses.replace(SMOKE, steps=SMOKE.steps + 1)
    with pytest.raises(ValueError, match="--fresh"):
        run_state(make_job(other, root, "gmm", SMOKE.methods[0]))


def _tiny_job(tmp_path: Path, **kw) -> Job:
    plan = dataclasses.replace(SMOKE, steps=6, log_every=2, **kw)
    job = make_job(plan, tmp_path, "gmm", "lsd")
    return dataclasses.replace(job, diagnostics=dataclasses.replace(job.diagnostics, periodic=0))


def test_stop_then_resume_then_skip(tmp_path, monkeypatch):
    job = _tiny_job(tmp_path)

    class StopOnceStarted:  # the main job's stop event, set while the first step runs
        checks = 0

        def is_set(self):
            self.checks += 1
            return self.checks > 1

    monkeypatch.setattr(stopping, "_STOP", StopOnceStarted())
    res = jobs.run_job(job)
    rd = job.run_dir
    assert res.status == "interrupted" and res.training.steps_done == 1
    assert not (rd / EVALUATION_FILE).exists() and run_state(job) == "resume"
    monkeypatch.setattr(stopping, "_STOP", threading.Event())
    res = jobs.run_job(job)  # resumes from the checkpoint of step 1
    assert res.status == "completed" and res.training.steps_done == 6 and res.training.sessions == 2
    assert run_state(job) == "done" and read_evaluation(rd)["step"] == 6
    sessions = [json.loads(line) for line in (rd / "sessions.jsonl").read_text().splitlines()]
    assert [s["start_step"] for s in sessions] == [0, 1]


def test_time_cap_stops_and_evaluates(tmp_path):
    job = _tiny_job(tmp_path, max_run_seconds=1e-9)
    res = jobs.run_job(job)
    assert res.status == "time_cap" and res.training.steps_done == 1
    ev = read_evaluation(job.run_dir)
    assert ev["step"] == 1 and ev["training"]["status"] == "time_cap"


def test_evaluation_of_the_exact_map_against_the_oracle():
    """ExactFlowMap of the data's own flow: the oracle errors are at the ODE tolerance, sample quality
    at the data-vs-data floor; a map that never moves (X = id) is far on every count."""
    data_cfg, _, _ = dataset_config("gmm")
    from workbench.data import get_data

    data = get_data(data_cfg.name, **data_cfg.kwargs)
    spec = EvalSpec(steps=(1, 2), n=1000, n_map=64, seed=3)
    exact = evaluate_model(ExactFlowMap(data.as_flow()), data, spec)
    assert exact["errors"] == {}
    spread = exact["oracle"]["map_spread"]
    assert max(exact["oracle"]["steps_rmse"]) < 1e-6 * spread and exact["oracle"]["map_rmse"] < 1e-6 * spread
    floor = exact["floor"]
    # the same law: the distance is a sampling fluctuation of the floor's size (W2 of n = 1000 points)
    assert all(v < 1.6 * floor["w2"] for v in exact["quality"]["w2"])

    class Identity(torch.nn.Module):
        dim = 2

        def flow_map(self, s, t, x):
            return x

    still = evaluate_model(Identity(), data, spec)
    assert min(still["oracle"]["steps_rmse"]) > 0.5 * spread
    assert min(still["quality"]["w2"]) > 2 * max(floor["w2"], *exact["quality"]["w2"])
    assert still["quality"]["drift"] == [0.0, 0.0] and not math.isnan(still["oracle"]["map_rmse"])


def test_figures_leave_out_runs_with_non_finite_samples(tmp_path, monkeypatch):
    good, bad, gallery = tmp_path / "gmm-lsd", tmp_path / "checkerboard-isd", tmp_path / "gallery"
    for rd, errors in ((good, {}), (bad, {"quality": "ValueError: x contains 3 non-finite value(s)"})):
        rd.mkdir()
        (rd / EVALUATION_FILE).write_text(json.dumps({"errors": errors}))
    calls = []

    def fake(plan, dirs, out):
        calls.append(list(dirs))
        if len(calls) == 1 and fail:
            raise RuntimeError("figure code broke")
        return [out / "x.png"], []

    monkeypatch.setattr(main_job, "make_all_figures", fake)
    fail = False
    paths, notes, failed = main_job.figures_stage(SMOKE, gallery, [good, bad], tmp_path / "fig")
    assert not failed
    assert calls == [[gallery, good]] and len(notes) == 1 and "checkerboard-isd" in notes[0] and "non-finite" in notes[0]
    calls.clear()
    fail = True  # the figure code fails: the gallery alone is drawn and the failure is noted
    paths, notes, failed = main_job.figures_stage(SMOKE, gallery, [good, bad], tmp_path / "fig")
    assert failed
    assert calls == [[gallery, good], [gallery]] and any("figure code broke" in n for n in notes)


def test_runs_or_figures_that_cannot_be_directories_are_usage_errors(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for argv, message in ((["--runs", str(a_file)], "--runs must be a directory"),
                          (["--figures", str(a_file / "figs"), "--runs", str(tmp_path / "runs")], "--figures"),
                          (["--runs", ""], "--runs must name a directory")):
        assert main(["--budget", "smoke", "--no-progress", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "gallery").exists()  # refused before any work


def test_run_state_names_a_damaged_config_and_redoes_a_damaged_evaluation(tmp_path):
    job = _tiny_job(tmp_path)
    rd = job.rundir
    rd.path.mkdir(parents=True)
    rd.config.write_bytes(b"\x00\xff binary")
    with pytest.raises(ValueError, match=re.escape(str(rd.config))):
        run_state(job)
    rd.config.write_text(json.dumps(job.config.to_dict()))
    rd.evaluation.write_text('{"spec": {"steps": [1, 2')  # torn: evaluated again
    assert read_evaluation(rd.path) is None and run_state(job) == "resume"
    rd.evaluation.write_text(json.dumps({"spec": job.evaluation.to_dict()}))
    assert run_state(job) == "done"


def test_a_corrupt_final_checkpoint_is_trained_again_not_reported_finished(tmp_path):
    """The newest checkpoint of a finished run is torn: the run is not taken as finished on the
    strength of the file name; the trainer sets it aside, resumes from the older one and ends with a
    good checkpoint of the last step."""
    from workbench.training.checkpoint import find_latest, list_checkpoints

    job = _tiny_job(tmp_path)
    job = dataclasses.replace(job, config=dataclasses.replace(job.config, checkpoint_every=2, keep_checkpoints=3))
    assert jobs.run_job(job).status == "completed"
    (*_, (last, newest)) = list_checkpoints(job.run_dir)
    assert last == 6
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(UserWarning, match="skipping checkpoint"), pytest.warns(UserWarning, match="unusable checkpoint"):
        res = jobs.run_job(job)
    assert res.status == "completed" and res.training.steps_done == 6 and res.training.sessions == 2
    found = find_latest(job.run_dir)
    assert found.step == 6 and found.skipped == ()
    assert job.rundir.unusable_checkpoint(6).is_file()


def test_an_unreadable_training_summary_is_reported_by_name(tmp_path):
    job = _tiny_job(tmp_path)
    assert jobs.run_job(job).status == "completed"
    job.rundir.training.write_text("{ torn")
    with pytest.warns(UserWarning, match=re.escape(str(job.rundir.training))):
        assert jobs._prior_summary(job.rundir) is None


def test_a_failure_of_the_figure_code_is_noted_and_makes_the_exit_code_non_zero(tmp_path, monkeypatch):
    """A programming error in the analysis code does not end as a note of a job that exits 0."""
    gallery = tmp_path / "runs" / "gallery"

    def broken(plan, dirs, out):
        if len(dirs) > 1:
            raise AttributeError("'NoneType' object has no attribute 'shape'")
        return [], []

    monkeypatch.setattr(main_job, "write_gallery_run", lambda *a, **k: gallery)
    monkeypatch.setattr(main_job, "run_plan", lambda *a, **k: ([], False))
    monkeypatch.setattr(main_job, "make_all_figures", broken)
    monkeypatch.setattr(main_job, "read_evaluation", lambda rd: {})
    plan = dataclasses.replace(SMOKE, methods=("lsd",), datasets=("gmm",))
    monkeypatch.setitem(BUDGETS, "smoke", plan)
    root = tmp_path / "runs" / "main-smoke"
    (root / "gmm-lsd").mkdir(parents=True)
    (root / "gmm-lsd" / EVALUATION_FILE).write_text("{}")
    from workbench.experiments import report

    monkeypatch.setattr(report, "write_report", lambda run_dirs, path, **kw: (
        path.write_text("\n".join(kw["notes"])), path)[1])
    rc = main(["--budget", "smoke", "--runs", str(tmp_path / "runs"), "--figures", str(tmp_path / "fig"),
               "--no-progress"])
    assert rc == 1
    assert "AttributeError" in (root / REPORT).read_text()
