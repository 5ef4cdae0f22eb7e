"""The experiments layer's wiring: its import graph has no cycle, stop and signal handling lives in
one module and behaves, and the typed process boundary (specs) validates what crosses it."""

from __future__ import annotations

import ast
import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from workbench.experiments import specs, stopping
from workbench.experiments.main_job import BUDGETS, make_job
from workbench.experiments.parallel import status_line
from workbench.experiments.specs import (
    DiagnosticsSpec,
    EvalSpec,
    Job,
    JobResult,
    ProgressMessage,
    TrainingSummary,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workbench" / "experiments"
SMOKE = BUDGETS["smoke"]


# -- the import graph --------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _experiments_imports(path: Path) -> set[str]:
    """Every workbench.experiments module ``path`` imports, at module level or inside a function."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        out |= {t for t in targets if t.startswith("workbench.experiments.") and (ROOT / (t.replace(".", "/") + ".py")).is_file()}
    return out - {name}


def test_the_experiments_modules_import_each_other_without_a_cycle():
    """Imports anywhere in a module (lazy ones inside functions too) form a DAG: no module reaches
    itself. The circle cli -> main_job -> parallel -> jobs -> cli is gone."""
    graph = {_module_name(p): _experiments_imports(p) for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert {"workbench.experiments.cli", "workbench.experiments.jobs", "workbench.experiments.stopping"} <= set(graph)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert graph["workbench.experiments.stopping"] == set()  # the one home of stop handling depends on nothing here
    importers = {name for name, deps in graph.items() if "workbench.experiments.cli" in deps}
    assert importers == {"workbench.experiments.__main__"}  # only ``python -m`` runs the command line
    assert "workbench.experiments.main" not in graph


def test_a_worker_imports_jobs_first_in_a_fresh_interpreter():
    """What a spawned worker does: import jobs (and parallel) first; neither pulls in the command line."""
    code = ("import sys; import workbench.experiments.jobs, workbench.experiments.parallel; "
            "print(sorted(m for m in sys.modules if m in ('workbench.experiments.cli', 'workbench.experiments.main_job')))")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    assert out.stdout.strip() == "[]"


# -- stopping -------------------------------------------------------------------------------------------------
class _Trainer:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def request_stop(self, reason: str = "stop requested") -> None:
        self.reasons.append(reason)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_on_signals_asks_the_trainer_to_stop_once_then_restores_the_handlers(signum):
    before = {s: signal.getsignal(s) for s in stopping.STOP_SIGNALS}
    trainer = _Trainer()
    with stopping.stop_on_signals(trainer) as received:
        os.kill(os.getpid(), signum)
        assert received == [signum] and trainer.reasons == [f"received {signal.Signals(signum).name}"]
        # the first signal put the previous handlers back: a second one is no longer caught here
        assert {s: signal.getsignal(s) for s in stopping.STOP_SIGNALS} == before
    assert {s: signal.getsignal(s) for s in stopping.STOP_SIGNALS} == before
    assert stopping.signal_exit_code(signum) == 128 + int(signum)
    with pytest.raises(TypeError, match="request_stop"), stopping.stop_on_signals(object()):
        pass


def test_sigterm_as_interrupt_raises_keyboard_interrupt_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), stopping.sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0.1) if hasattr(signal, "sigtimedwait") else None  # let the handler run
    assert signal.getsignal(signal.SIGTERM) is before


def test_worker_stop_requested_by_the_event_or_a_vanished_parent(monkeypatch):
    monkeypatch.setattr(stopping, "_STOP", None)
    monkeypatch.setattr(stopping, "_PARENT", None)
    previous = signal.getsignal(signal.SIGINT)
    try:
        event = threading.Event()
        stopping.init_worker_stop(event)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # Ctrl-C is the parent's to handle
        assert stopping.stop_requested() is None
        event.set()
        assert stopping.stop_requested() == "stop requested by the main job"
        event.clear()
        monkeypatch.setattr(stopping, "_PARENT", os.getppid() + 1)  # as if the parent had died
        assert stopping.stop_requested() == "the main job's process is gone"
        with pytest.raises(TypeError, match="stop must be an event"):
            stopping.init_worker_stop("yes")
    finally:
        signal.signal(signal.SIGINT, previous)


# -- the typed process boundary ---------------------------------------------------------------------------
def test_a_job_of_the_plan_is_typed_picklable_and_names_its_run(tmp_path):
    job = make_job(SMOKE, tmp_path, "gmm", "lsd")
    assert isinstance(job, Job) and job.name == "gmm-lsd" and job.run_dir == tmp_path / "gmm-lsd"
    assert job.rundir.evaluation == tmp_path / "gmm-lsd" / "evaluation.json"
    assert pickle.loads(pickle.dumps(job)) == job  # what crosses the spawn boundary
    assert job.evaluation.steps == SMOKE.eval_steps and job.diagnostics.periodic == SMOKE.periodic
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.cost = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("change,error,match", [
    ({"run_dir": ""}, ValueError, "Job.run_dir must name a directory"),
    ({"run_dir": 3}, TypeError, "Job.run_dir must be a path"),
    ({"config": {}}, TypeError, "Job.config must be a TrainConfig"),
    ({"evaluation": {"n": 3}}, TypeError, "Job.evaluation must be a EvalSpec"),
    ({"diagnostics": None}, TypeError, "Job.diagnostics must be a DiagnosticsSpec"),
    ({"max_seconds": -1.0}, ValueError, "Job.max_seconds"),
    ({"max_seconds": float("nan")}, ValueError, "Job.max_seconds"),
    ({"progress_every": 0}, ValueError, "Job.progress_every"),
    ({"cost": "high"}, TypeError, "Job.cost"),
])
def test_job_refuses_bad_fields(tmp_path, change, error, match):
    job = make_job(SMOKE, tmp_path, "gmm", "lsd")
    with pytest.raises(error, match=match):
        dataclasses.replace(job, **change)


@pytest.mark.parametrize("kw,error,match", [
    ({"steps": ()}, TypeError, "EvalSpec.steps"),
    ({"steps": (1, 0)}, ValueError, "EvalSpec.steps"),
    ({"steps": (1, 2.0)}, TypeError, "EvalSpec.steps"),
    ({"n": 0}, ValueError, "EvalSpec.n "),
    ({"n_kl": True}, TypeError, "EvalSpec.n_kl"),
    ({"seed": -1}, ValueError, "EvalSpec.seed"),
    ({"ema": 1.0}, ValueError, "EvalSpec.ema"),
    ({"kl_box": ((1.0, -1.0),)}, ValueError, "EvalSpec.kl_box"),
    ({"kl_box": ((0.0, float("inf")),)}, ValueError, "EvalSpec.kl_box"),
    ({"kl_box": "box"}, TypeError, "EvalSpec.kl_box"),
])
def test_eval_spec_refuses_bad_fields(kw, error, match):
    with pytest.raises(error, match=match):
        EvalSpec(**kw)


def test_eval_spec_json_round_trip_normalises_lists():
    spec = EvalSpec(steps=[1, 2], kl_box=[[-4, 4], [-4, 4]], ema=0.995, n=10)
    assert spec.steps == (1, 2) and spec.kl_box == ((-4.0, 4.0), (-4.0, 4.0))
    assert EvalSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown key"):
        EvalSpec.from_dict({**spec.to_dict(), "bins": 3})
    with pytest.raises(ValueError, match="JSON object"):
        EvalSpec.from_dict([1, 2])


@pytest.mark.parametrize("kw,error,match", [
    ({"periodic": -1}, ValueError, "DiagnosticsSpec.periodic"),
    ({"grid": 0}, ValueError, "DiagnosticsSpec.grid"),
    ({"n_cell": 1.5}, TypeError, "DiagnosticsSpec.n_cell"),
    ({"ema": 1}, TypeError, "DiagnosticsSpec.ema"),
])
def test_diagnostics_spec_refuses_bad_fields(kw, error, match):
    assert DiagnosticsSpec(periodic=0).periodic == 0  # no periodic diagnostics is allowed
    with pytest.raises(error, match=match):
        DiagnosticsSpec(**kw)


def test_progress_messages_carry_what_their_kind_needs_and_render():
    index, n = {"gmm-lsd": 2}, 3
    msgs = [ProgressMessage("gmm-lsd", "start", step=0, total=12),
            ProgressMessage("gmm-lsd", "step", step=3, total=12, loss=float("nan"), seconds=1.4),
            ProgressMessage("gmm-lsd", "evaluating", step=12, seconds=5.0),
            ProgressMessage("gmm-lsd", "done", status="time_cap", seconds=5.0, eval_seconds=2.0),
            ProgressMessage("gmm-lsd", "interrupted", step=7)]
    lines = [status_line(m, index, n) for m in msgs]
    assert lines == ["[ 2/3] gmm-lsd: training from step 0 of 12",
                     "[ 2/3] gmm-lsd: step 3/12  loss nan  (1 s)",
                     "[ 2/3] gmm-lsd: trained 12 steps in 5 s; evaluating",
                     "[ 2/3] gmm-lsd: done (time_cap; train 5 s, eval 2 s)",
                     "[ 2/3] gmm-lsd: interrupted at step 7 (checkpoint written; run again to resume)"]
    assert all(repr(pickle.loads(pickle.dumps(m))) == repr(m) for m in msgs)  # repr: NaN != NaN
    with pytest.raises(ValueError, match="needs \\['loss', 'seconds'\\]"):
        ProgressMessage("gmm-lsd", "step", step=3, total=12)
    with pytest.raises(ValueError, match="ProgressMessage.kind"):
        ProgressMessage("gmm-lsd", "finished", step=3)
    with pytest.raises(ValueError, match="ProgressMessage.status"):
        ProgressMessage("gmm-lsd", "done", status="ok", seconds=1.0, eval_seconds=1.0)
    with pytest.raises(ValueError, match="ProgressMessage.step"):
        ProgressMessage("gmm-lsd", "interrupted", step=-1)


def test_training_summary_and_job_result():
    summary = TrainingSummary(status="completed", steps_done=12, steps_planned=12, seconds=3.5, skipped_total=0,
                              message="finished 12 steps", sessions=1, device="cpu")
    assert TrainingSummary.from_dict(summary.to_dict()) == summary
    for bad, error in (({"status": "done"}, ValueError), ({"steps_done": -1}, ValueError),
                       ({"seconds": float("inf")}, ValueError), ({"sessions": "1"}, TypeError)):
        with pytest.raises(error, match="TrainingSummary." + next(iter(bad))):
            dataclasses.replace(summary, **bad)
    with pytest.raises(ValueError, match="unknown key"):
        TrainingSummary.from_dict({**summary.to_dict(), "extra": 1})
    assert JobResult("gmm-lsd", "completed", training=summary, evaluation={}).training is summary
    assert JobResult("gmm-lsd", "failed", error="RuntimeError: boom").error == "RuntimeError: boom"
    with pytest.raises(ValueError, match="exactly when status is 'failed'"):
        JobResult("gmm-lsd", "failed")
    with pytest.raises(ValueError, match="exactly when status is 'failed'"):
        JobResult("gmm-lsd", "completed", error="?")
    with pytest.raises(TypeError, match="JobResult.training"):
        JobResult("gmm-lsd", "completed", training=summary.to_dict())
    assert (*specs.RUN_STATUSES, "failed") == specs.RESULT_STATUSES
