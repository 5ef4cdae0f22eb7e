"""The main job (the README's first command): ``python -m workbench.experiments main [--budget cpu]``.

1. the analytic-flow gallery run (``runs/gallery``);
2. one training run per (data set, method) of the budget's plan, under
   ``runs/main/<dataset>-<method>`` (``runs/main-<budget>/...`` for budgets other than "cpu"):
   the checkerboard of B25 and the 8-Gaussian mixture ``gmm_8`` (whose exact flow is the oracle),
   with LSD, ESD, PSD (midpoint, uniform), MeanFlow, consistency training and iSD, all under the
   same budget, in parallel worker processes with one torch thread each, the diagnostics
   callbacks attached; then each run is evaluated (``evaluation.json``, see
   :mod:`workbench.experiments.evaluate`). Each run crosses the process boundary as a typed
   :class:`~workbench.experiments.specs.Job` (:func:`make_job`);
3. every figure, rebuilt from the run directories (``analysis.make_figures``) into ``figures/``;
4. the report ``runs/main/report.md`` (copied to ``figures/report.md``), whose numbers are read
   from the evaluation files just written (:mod:`workbench.experiments.report`).

Progress: a bar over runs and a status line per run (start, every quarter, evaluation, done).
Ctrl-C or SIGTERM (:mod:`workbench.experiments.stopping`) stops the workers after their current
step with a checkpoint; finished runs are never
touched again: running the job again skips runs whose evaluation.json matches the plan and resumes
the others from their checkpoints; ``--fresh`` deletes this plan's run directories first.
Budgets: "smoke" (seconds, the test), "cpu" (default; <= 15 min on 2 cores, per-run time cap as a
safety net on a loaded machine), "gpu" (device auto: CUDA when available, larger model and runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..rundir import REPORT, RunDir, atomic_write_text, check_run_dir, read_json
from ..training.config import DataConfig, ModelConfig, ObjectiveConfig, OptimConfig, TrainConfig
from .evaluate import read_evaluation
from .gallery_run import write_gallery_run
from .parallel import run_jobs
from .specs import DiagnosticsSpec, EvalSpec, Job, JobResult
from .stopping import signal_exit_code, sigterm_as_interrupt

METHODS = ("lsd", "esd", "psd_midpoint", "psd_uniform", "meanflow", "ct", "isd")
DATASETS = ("checkerboard", "gmm")
#: relative cost of a training step (workbench.experiments bench, MLP 256x3, batch 512): longest first
COST = {"isd": 2.5, "esd": 1.9, "lsd": 1.5, "meanflow": 1.2, "ct": 1.1, "psd_midpoint": 1.0, "psd_uniform": 1.0}


@dataclass(frozen=True)
class MainPlan:
    """Everything the main job does, under one budget shared by every method.

    Training (each run): ``steps`` RAdam updates of batch ``batch_size``, MLP ``hidden`` x ``depth``
    on raw (s, t - s), lr ``lr`` constant for ``steps // 2`` updates then 1/sqrt decay, gradient
    clip 10, one EMA of rate ``ema_rate`` (the evaluated weights when ``eval_ema``); a session
    stops at ``max_run_seconds`` (0: never) and is evaluated as it stands. Diagnostics:
    ``periodic`` expensive evaluations per run (gradient anatomy, (s, t) map error, quality),
    ``n_diagnose`` points per detector set. Evaluation: ``n_eval`` samples (W2, MMD, ...),
    ``n_kl`` for the histogram KL, ``n_map`` for the oracle errors, N in ``eval_steps``.
    Figures: ``figure_samples`` per panel, ``figure_times`` realised (s, t) pairs.
    ``workers`` processes with ``threads`` torch threads each on ``device``.
    """

    name: str
    steps: int
    batch_size: int
    hidden: int
    depth: int
    n_eval: int
    n_kl: int
    n_map: int
    workers: int
    methods: tuple[str, ...] = METHODS
    datasets: tuple[str, ...] = DATASETS
    lr: float = 3e-3
    ema_rate: float = 0.995
    eval_ema: bool = True
    eval_steps: tuple[int, ...] = (1, 2, 4, 8, 16)
    threads: int = 1
    device: str = "cpu"
    max_run_seconds: float = 0.0
    periodic: int = 4
    n_diagnose: int = 256
    figure_samples: int = 2000
    figure_times: int = 20000
    log_every: int = 25
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "hidden", "depth", "n_eval", "n_kl", "n_map", "workers", "threads",
                     "n_diagnose", "figure_samples", "figure_times", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"plan.{name} must be a positive int, got {v!r}")
        unknown = set(self.datasets) - set(DATASETS)
        if unknown or not self.datasets:
            raise ValueError(f"plan.datasets must be a non-empty subset of {DATASETS}, got {self.datasets}")
        if not self.methods:
            raise ValueError("plan.methods must name at least one objective")

    def run_names(self) -> list[str]:
        return [f"{d}-{m}" for d in self.datasets for m in self.methods]


BUDGETS: dict[str, MainPlan] = {
    # seconds: every stage end to end on toy sizes (tests/test_main_job.py)
    "smoke": MainPlan(name="smoke", steps=12, batch_size=64, hidden=16, depth=2, n_eval=128, n_kl=1000, n_map=64,
                      workers=2, methods=("lsd",), periodic=1, n_diagnose=64,
                      figure_samples=200, figure_times=500, log_every=4, eval_steps=(1, 2, 4)),
    # the default: <= 15 min wall on 2 CPU cores including evaluation and figures
    "cpu": MainPlan(name="cpu", steps=4000, batch_size=256, hidden=256, depth=3, n_eval=1000, n_kl=10000,
                    n_map=1000, workers=2, max_run_seconds=60.0),
    # CUDA when available: B25's checkerboard MLP (4 x 512) and longer runs
    "gpu": MainPlan(name="gpu", steps=20000, batch_size=4096, hidden=512, depth=4, n_eval=5000, n_kl=100000,
                    n_map=4000, workers=2, device="auto", ema_rate=0.999, lr=1e-3, threads=4, n_diagnose=512,
                    periodic=8, log_every=100, figure_samples=5000),
}


def dataset_config(name: str) -> tuple[DataConfig, float, tuple | None]:
    """(data config, data std for the model's input scaling, KL box or None) of a data set.

    checkerboard: B25's [-4, 4]^2 variant (per-coordinate std 4 / sqrt(3)); gmm: the registry's
    ``gmm_8`` (8 Gaussians of sd 0.15 on the circle of radius 2) as a data source whose
    ``as_flow()`` is the exact ``GaussianMixtureFlow`` (the oracle).
    """
    if name == "checkerboard":
        return DataConfig("checkerboard", {"variant": "realnvp"}), 4.0 / math.sqrt(3.0), ((-4.0, 4.0), (-4.0, 4.0))
    if name == "gmm":
        from ..flows.registry import make_flow

        f = make_flow("gmm_8")
        var = float((f.weights[:, None] * (f.means**2 + f.covs.diagonal(dim1=1, dim2=2))).sum(0).mean()
                    - ((f.weights[:, None] * f.means).sum(0) ** 2).mean())
        kw = {"weights": f.weights.tolist(), "means": f.means.tolist(), "covs": f.covs.tolist()}
        return DataConfig("gmm", kw), math.sqrt(var), None
    raise ValueError(f"data set must be one of {DATASETS}, got {name!r}")


def train_config(plan: MainPlan, dataset: str, method: str) -> TrainConfig:
    """The TrainConfig of one run of the plan (same budget for every method)."""
    data, std, _ = dataset_config(dataset)
    return TrainConfig(
        model=ModelConfig(hidden=plan.hidden, depth=plan.depth, time_embedding="raw", data_std=round(std, 6)),
        objective=ObjectiveConfig(method), data=data,
        optim=OptimConfig(name="radam", lr=plan.lr, schedule="sqrt", decay_start=max(1, plan.steps // 2), grad_clip=10.0),
        batch_size=plan.batch_size, steps=plan.steps, seed=plan.seed, device=plan.device, ema_rates=(plan.ema_rate,),
        log_every=plan.log_every, checkpoint_every=max(1, plan.steps // 5), keep_checkpoints=1, progress=False,
        tensorboard=False,
    )


def eval_spec(plan: MainPlan, dataset: str) -> EvalSpec:
    return EvalSpec(steps=plan.eval_steps, n=plan.n_eval, n_kl=plan.n_kl, kl_box=dataset_config(dataset)[2],
                    n_map=plan.n_map, ema=plan.ema_rate if plan.eval_ema else None, n_diagnose=plan.n_diagnose,
                    seed=plan.seed)


def diagnostics_spec(plan: MainPlan) -> DiagnosticsSpec:
    return DiagnosticsSpec(periodic=plan.periodic, n_grad=32, grid=6, n_cell=16, n_samples=256,
                           n_diagnose=plan.n_diagnose, ema=True)


def make_job(plan: MainPlan, root: Path, dataset: str, method: str) -> Job:
    """The :class:`Job` of one run of the plan, in ``root / "<dataset>-<method>"``."""
    return Job(run_dir=Path(root) / f"{dataset}-{method}", config=train_config(plan, dataset, method),
               evaluation=eval_spec(plan, dataset), diagnostics=diagnostics_spec(plan),
               max_seconds=plan.max_run_seconds, progress_every=max(1, plan.steps // 4),
               cost=COST.get(method, 1.0) * (1.2 if dataset == "gmm" else 1.0))


def run_state(job: Job) -> str:
    """"done" (evaluated with this plan), "resume" (started with this plan), "new", or raises
    ValueError when the directory holds a run of another plan (or an unreadable config)."""
    rd = job.rundir
    if not rd.config.is_file():
        return "new"
    if read_json(rd.config, what="config") != job.config.to_dict():
        raise ValueError(f"{rd.path} holds a run with another configuration; pass --fresh to redo it "
                         "(or --runs DIR for a separate set of run directories)")
    ev = read_evaluation(rd.path)
    return "done" if ev is not None and ev.get("spec") == job.evaluation.to_dict() else "resume"


def run_plan(plan: MainPlan, root: Path, *, progress: bool = True, log=None) -> tuple[list[JobResult], bool]:
    """Train and evaluate every run of the plan not done yet, ``plan.workers`` at a time
    (:func:`workbench.experiments.parallel.run_jobs`, longest first). Returns (results of the runs
    executed now, interrupted?); raises ValueError when a run directory holds another plan's run."""
    log = log or (lambda s: tqdm.write(s, file=sys.stderr))
    jobs = [make_job(plan, root, d, m) for d in plan.datasets for m in plan.methods]
    names = [j.name for j in jobs]
    todo = []
    for k, job in enumerate(jobs):
        if run_state(job) == "done":
            log(f"[{k + 1:>2}/{len(jobs)}] {names[k]}: already evaluated, skipped")
        else:
            todo.append(job)
    if not todo:
        return [], False
    todo.sort(key=lambda j: -j.cost)  # longest first balances the workers
    return run_jobs(todo, names, workers=plan.workers, threads=plan.threads, progress=progress, log=log)


def make_all_figures(plan: MainPlan, run_dirs: list[Path], out: Path) -> tuple[list[Path], list[str]]:
    """``analysis.make_figures`` over the gallery and training runs (the entry point wires layers:
    the library never imports analysis). Returns (paths, notes)."""
    from analysis import make_figures as mf

    options = mf.Options(ema=plan.ema_rate if plan.eval_ema else None, n_samples=plan.figure_samples,
                         steps=plan.eval_steps, seed=plan.seed, n_times=plan.figure_times)
    paths = mf.make_figures(run_dirs, out, options=options)
    return [Path(p) for p in paths], list(options.notes)


def method_notes(plan: MainPlan) -> list[str]:
    """Facts about the objectives that the tables need to be read right (from their configuration)."""
    from ..losses import OBJECTIVES

    out = []
    for m in plan.methods:
        if getattr(OBJECTIVES.get(m), "t_end", None) == 1.0:
            out.append(f"{m} trains only the maps X_(s,1) to the data end (consistency functions, t_end = 1); "
                       "N-step flow-map sampling also uses the maps X_(t_k, t_(k+1)) with t_(k+1) < 1, which it "
                       "never fits, so its quality need not improve with N.")
    return out


def figures_stage(plan: MainPlan, gallery: Path, run_dirs: list[Path], out: Path) -> tuple[list[Path], list[str], bool]:
    """Figures of the gallery and of every run whose evaluation found finite samples (a run whose
    samples overflow is left out and named in the notes); if the figure code still fails, the
    gallery alone, and the failure goes into the notes. Returns (paths, notes, failed): ``failed``
    says the figures of the training runs could not be made, so that the job ends with a non-zero
    exit code (after writing the report, which the failure does not stop)."""
    notes = []
    drawn = []
    for rd in run_dirs:
        errors = (read_evaluation(rd) or {}).get("errors", {})
        if errors:
            key, why = next(iter(errors.items()))
            notes.append(f"{rd.name} is left out of the figures: its evaluation found non-finite values ({key}: {why})")
        else:
            drawn.append(rd)
    try:
        paths, more = make_all_figures(plan, [gallery, *drawn], out)
        return paths, notes + more, False
    except Exception as err:  # any failure, a programming error included: noted, and the exit code says so
        print(f"error while making the figures of the training runs: {type(err).__name__}: {err}", file=sys.stderr)
        notes.append(f"the figures of the training runs could not be made ({type(err).__name__}: {err})")
    paths, more = make_all_figures(plan, [gallery], out)
    return paths, notes + more, True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbench.experiments main",
                                description="Run the workbench's main job: train, evaluate, regenerate every figure, "
                                            "write the report.")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="named budget (default: cpu)")
    p.add_argument("--runs", default="runs", help="directory for run directories (default: runs)")
    p.add_argument("--figures", default="figures", help="directory for figures and the report copy (default: figures)")
    p.add_argument("--workers", type=int, default=None, help="parallel training processes (default: the budget's)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the budget's)")
    p.add_argument("--methods", default=None, help="comma-separated objectives (default: the budget's)")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default: the budget's)")
    p.add_argument("--fresh", action="store_true", help="delete this plan's run directories and redo every run")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (status lines stay)")
    return p


def plan_from_args(args: argparse.Namespace) -> MainPlan:
    plan = BUDGETS[args.budget]
    changes = {}
    if args.workers is not None:
        changes["workers"] = args.workers
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.methods is not None:
        changes["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.device is not None:
        changes["device"] = args.device
    if args.seed is not None:
        changes["seed"] = args.seed
    return dataclasses.replace(plan, **changes)


def main(argv: list[str] | None = None) -> int:
    from ..training.build import build_objective
    from .report import write_report

    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        plan = plan_from_args(args)
        for m in plan.methods:
            build_objective(ObjectiveConfig(m))
        runs = check_run_dir(args.runs, "--runs").path
        figures_dir = check_run_dir(args.figures, "--figures").path
    except (TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    root = runs / ("main" if plan.name == "cpu" else f"main-{plan.name}")
    if args.fresh:
        for name in plan.run_names():
            shutil.rmtree(root / name, ignore_errors=True)
    progress = not args.no_progress
    print(f"main job, budget {plan.name!r}: {len(plan.run_names())} runs x {plan.steps} steps, {plan.workers} workers, "
          f"run directories under {root}", file=sys.stderr)
    stage: dict[str, float] = {}
    gallery = write_gallery_run(runs / "gallery", seed=0, progress=progress)
    stage["gallery"] = time.perf_counter() - t0
    try:
        with sigterm_as_interrupt():  # SIGTERM stops the job like Ctrl-C
            results, interrupted = run_plan(plan, root, progress=progress)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stage["training and evaluation"] = time.perf_counter() - t0 - sum(stage.values())
    if interrupted:
        print("main job interrupted; finished runs are complete, the others resume when you run it again",
              file=sys.stderr)
        return signal_exit_code(signal.SIGINT)
    run_dirs = [root / n for n in plan.run_names() if RunDir(root / n).evaluation.is_file()]
    print("regenerating figures ...", file=sys.stderr)
    paths, notes, figures_failed = figures_stage(plan, gallery, run_dirs, figures_dir)
    stage["figures"] = time.perf_counter() - t0 - sum(stage.values())
    wall = time.perf_counter() - t0
    fresh_runs = {r.run for r in results}
    header = [
        f"Budget **{plan.name}**: {len(plan.methods)} methods x {len(plan.datasets)} data sets, {plan.steps} steps of "
        f"batch {plan.batch_size} per run, MLP {plan.hidden} x {plan.depth}, RAdam lr {plan.lr:g} (1/sqrt decay after "
        f"{max(1, plan.steps // 2)} steps), EMA {plan.ema_rate:g}, {plan.workers} worker processes x {plan.threads} "
        f"torch thread(s), device {plan.device}" + (f", time cap {plan.max_run_seconds:g} s per run" if plan.max_run_seconds else "") + ".",
        "",
        f"Wall time of this invocation: **{wall:.0f} s** ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in stage.items()) + "); "
        f"{len(fresh_runs)} of {len(run_dirs)} runs trained and evaluated now, the others read from earlier invocations.",
    ]
    notes = [f"run {r.run} failed: {r.error}" for r in results if r.status == "failed"] + notes
    notes += method_notes(plan)
    rel = [str(p.resolve().relative_to(figures_dir.resolve())) if p.resolve().is_relative_to(figures_dir.resolve())
           else str(p) for p in paths if p.suffix == ".png"]
    report = write_report(run_dirs, root / REPORT, header=header, figures=[f"{figures_dir}/{p}" for p in rel],
                          notes=notes)
    copy = atomic_write_text(figures_dir / REPORT, report.read_text(encoding="utf-8"))
    print(f"main job finished in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(f"  report: {report} (copy: {copy})", file=sys.stderr)
    print(f"  figures: {len(paths)} files in {figures_dir}", file=sys.stderr)
    if figures_failed:
        print("error: the figures of the training runs could not be made (see the report's notes); exit code 1",
              file=sys.stderr)
        return 1
    return 0
