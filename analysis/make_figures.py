"""Rebuild every figure from run directories alone.

    python -m analysis.make_figures RUN_DIR [RUN_DIR ...] --out figures/
        [--ema RATE] [--n-samples N] [--steps 1,2,4,8,16] [--n-times M] [--seed S]

Each run directory's config.json says what it is (``analysis.loaders.run_kind``): the analytic-flow
gallery (``"kind": "gallery"``) or a training run (a ``TrainConfig``). Figures, each written as
PDF + PNG into --out (paths printed, one per line):

* gallery run: ``gallery``;
* every training run ``<run>``: ``<run>_training`` (loss / gradient-norm / oracle-error curves with
  detector events and skipped steps), ``<run>_times`` (realised (s, t) against the configured law,
  needs a checkpoint), ``<run>_st_maps`` ((s, t) heat maps and by-gap curves of the flow-map error
  against the oracle and of the per-sample gradient norm, when the diagnostics wrote them or the
  data has an analytic flow);
* across the training runs, per data set: ``samples_vs_steps`` (rows = methods, columns =
  trajectories and N = 1, 2, 4, 8, 16 steps), ``quality_vs_steps`` (one panel per metric, one line
  per method) and, with two runs or more, ``by_gap`` (the map error of the last evaluation, the
  gradient norms pooled over evaluations); with several data sets these names end in
  ``_<data name>``.

Quality against steps comes from the run's ``evaluation.json`` (workbench.experiments.evaluate,
with the data-vs-data floors dotted), else it is computed from the checkpoint with one protocol
(the same seed and min(n_samples, 1000) data samples for every run; W2, sliced W2, MMD^2, energy),
else the logged periodic ``quality/<metric>/<N>``; the title names the source, or each label does
when the runs of one figure differ. Samples use the online weights unless --ema names an EMA rate
(checked against every run first). A directory that is not a run directory, an unreadable
config.json, an option out of range (``--ema 2``) or an ``--out`` that names a file is an error
(exit code 2, one line on stderr). Damaged rows of a metrics.jsonl and diagnostics files that
cannot be read do not stop the run: what could not be drawn is said on stderr. Every figure file
is written atomically (``workbench.rundir.atomic_write``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.rundir import RunDir

from .figures_gallery import flow_gallery
from .figures_maps import GapCurve, TimeGridMap, by_gap, samples_vs_steps, st_maps
from .figures_times import time_distribution
from .figures_training import steps_quality, training_curves
from .loaders import (
    MAP_ERROR_LABEL,
    gap_curve_from_grid,
    load_gallery,
    load_grad_bins,
    load_map_errors,
    load_training_run,
    quality_from_evaluation,
    quality_from_metrics,
    read_config,
    run_kind,
    training_curves_of,
)
from .style import save_figure


@dataclass(frozen=True)
class Options:
    """How sample-based figures are computed: ``ema`` (None: online weights), ``n_samples`` per
    panel, ``steps`` (numbers of sampling steps), ``seed`` of every draw, ``n_times`` realised
    (s, t) pairs for the time-distribution figure; ``notes`` collects what could not be drawn."""

    ema: float | None = None
    n_samples: int = 2000
    steps: tuple = (1, 2, 4, 8, 16)
    seed: int = 0
    n_times: int = 40000
    notes: list = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("n_samples", "n_times"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not self.steps or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.steps):
            raise ValueError(f"steps must be a non-empty tuple of positive ints, got {self.steps!r}")
        if self.ema is not None and not (isinstance(self.ema, (int, float)) and 0 < self.ema < 1):
            raise ValueError(f"ema must be None or a rate in (0, 1), got {self.ema!r}")


def _gallery(run_dirs: list[Path], out: Path, opts: Options) -> list[Path]:
    written = []
    for rd in run_dirs:
        name = "gallery" if len(run_dirs) == 1 else f"gallery_{_slug(rd.resolve().name)}"
        written += save_figure(flow_gallery(load_gallery(rd)), out, name)
    return written


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


# -- training runs ----------------------------------------------------------------------------------------
def _labels(runs) -> list[str]:
    """Method names, made unique with the run directory name where two of ``runs`` share a method
    (called per data set: the figures that hold several runs hold one data set)."""
    methods = [r.method for r in runs]
    return [m if methods.count(m) == 1 else f"{m} ({r.name})" for m, r in zip(methods, runs)]


def _model_tag(ema: float | None) -> str:
    """The name the diagnostics callbacks give these weights: "model" or "ema<rate:g>"."""
    return "model" if ema is None else f"ema{ema:g}"


def _st_maps_of(run, model, data, opts: Options) -> tuple[list[TimeGridMap], list[list[GapCurve]], str]:
    """Maps for one run: the logged map errors of the chosen weights (else the oracle's, computed
    from the checkpoint, else the logged ones of the online model) and the gradient bins."""
    from . import derived

    maps, gaps, source = [], [], ""
    try:
        logged = load_map_errors(run.run_dir)
    except ValueError as err:
        opts.notes.append(f"{err}; the logged map errors are not drawn")
        logged = {}
    tag = _model_tag(opts.ema)
    flow = derived.reference_flow(run, data) if model is not None and tag not in logged else None
    if tag in logged or (flow is None and "model" in logged):
        m, curves = logged[tag if tag in logged else "model"]
        maps.append(m)
        gaps.append(curves)
        source = f"logged, {curves[-1].label}"
    elif flow is not None:
        values, edges = derived.oracle_map_error(model, flow, seed=opts.seed)
        who = "online" if opts.ema is None else f"EMA {opts.ema:g}"
        maps.append(TimeGridMap(title=f"flow-map error ({who}, last checkpoint)", label=MAP_ERROR_LABEL,
                                s_edges=edges, t_edges=edges, values=values))
        gaps.append([gap_curve_from_grid(values, edges, who)])
        source = "last checkpoint"
    try:
        grads = load_grad_bins(run.run_dir)
    except ValueError as err:
        opts.notes.append(f"{err}; the gradient bins are not drawn")
        grads = None
    if grads is not None:
        maps.append(grads[0])
        gaps.append([grads[1]])
    return maps, gaps, source


@dataclass
class _RunState:
    run: object
    label: str
    data: object
    model: object = None
    gaps: dict = field(default_factory=dict)  # quantity label -> GapCurve of the last evaluation
    non_finite: str = ""  # why the run's samples are not drawn / its quality left out ("" when fine)


def _per_run(run, label: str, out: Path, opts: Options) -> tuple[_RunState, list[Path]]:
    """``<run>_training``, ``<run>_times`` and ``<run>_st_maps`` of one training run."""
    from . import derived

    written: list[Path] = []
    slug = _slug(run.name)
    opts.notes.extend(run.notes)
    if any("loss" in r for r in run.metrics):
        written += save_figure(training_curves(training_curves_of(run)), out, f"{slug}_training")
    else:
        opts.notes.append(f"{run.run_dir}: metrics.jsonl has no loss rows; no training curves")
    state = _RunState(run=run, label=label, data=derived.data_source(run))
    try:
        state.model = derived.load_model(run, ema=opts.ema, data=state.data)
    except ValueError as err:
        opts.notes.append(f"{run.run_dir}: {err}; no sample-based figures")
    if state.model is not None:
        try:
            times = derived.realised_times(run, state.model, state.data, n=opts.n_times, seed=opts.seed)
        except (ValueError, RuntimeError) as err:  # e.g. an objective that cannot run without a teacher
            opts.notes.append(f"{run.run_dir}: the objective could not draw its times ({err}); no times figure")
        else:
            written += save_figure(time_distribution(times), out, f"{slug}_times")
    maps, gaps, source = _st_maps_of(run, state.model, state.data, opts)
    if maps:
        written += save_figure(st_maps(maps, gaps, title=label), out, f"{slug}_st_maps")
        for m, curves in zip(maps, gaps):
            if curves:
                last = curves[-1]
                who = f"{label} ({source})" if m.label == MAP_ERROR_LABEL else label
                state.gaps[m.label] = GapCurve(who, last.gap, last.values, last.count)
    return state, written


def _quality_of(st: _RunState, opts: Options) -> tuple[str, object, dict] | None:
    """(source, StepsQuality, floors): evaluation.json, else computed from the checkpoint (the same
    protocol for every run), else the logged periodic values."""
    from . import derived

    if st.non_finite:
        return None
    try:
        found = quality_from_evaluation(st.run.run_dir)
    except ValueError as err:
        opts.notes.append(f"{err}; quality from the checkpoint instead")
        found = None
    if found is not None:
        return RunDir(st.run.run_dir).evaluation.name, found[0], found[1]
    if st.model is not None:
        try:
            q = derived.compute_quality(st.model, st.data, steps=opts.steps, n=min(opts.n_samples, 1000),
                                        seed=opts.seed)
        except (ValueError, RuntimeError) as err:  # e.g. non-finite samples of a broken map
            opts.notes.append(f"{st.run.run_dir}: quality could not be computed ({err})")
        else:
            return "computed from the checkpoint", q, {}
    q = quality_from_metrics(st.run.metrics)
    return None if q is None else ("logged during training", q, {})


def _check_samples(st: _RunState, grid, opts: Options) -> None:
    """Mark a run whose N-step samples hold non-finite values (a diverged model): its samples panels
    say so and it is left out of the quality figure, with a note naming it."""
    x = np.asarray(grid.samples[st.label])
    bad = (~np.isfinite(x).all(axis=-1)).sum(axis=-1)  # per number of steps
    if bad.any():
        per = ", ".join(f"N = {k}: {b}/{x.shape[1]}" for k, b in zip(grid.steps, bad) if b)
        st.non_finite = f"non-finite samples ({per})"
        opts.notes.append(f"{st.run.run_dir}: the model's samples are non-finite ({per}); drawn as such in "
                          f"samples_vs_steps, left out of quality_vs_steps")


def _per_data_set(states: list[_RunState], suffix: str, out: Path, opts: Options) -> list[Path]:
    """``samples_vs_steps``, ``quality_vs_steps`` and ``by_gap`` of the runs on one data set."""
    from . import derived

    written: list[Path] = []
    with_model = [st for st in states if st.model is not None]
    if with_model:
        grid = derived.sample_grid({st.label: st.model for st in with_model}, with_model[0].data, steps=opts.steps,
                                   n=opts.n_samples, seed=opts.seed)
        for st in with_model:
            _check_samples(st, grid, opts)
        written += save_figure(samples_vs_steps(grid), out, f"samples_vs_steps{suffix}")
    found = [(st.label, q) for st in states if (q := _quality_of(st, opts)) is not None]
    if found:
        sources = {source for _, (source, _, _) in found}
        single = len(sources) == 1
        qualities = {label if single else f"{label} ({source})": q for label, (source, q, _) in found}
        floors: dict[str, float] = {}
        for _, (_, _, fl) in found:
            for k, v in fl.items():
                floors.setdefault(k, v)
        title = "sample quality against the number of steps" + (f" ({sources.pop()})" if single else "")
        written += save_figure(steps_quality(qualities, floors=floors, title=title), out, f"quality_vs_steps{suffix}")
    series: dict[str, list[GapCurve]] = {}
    for st in states:
        for quantity, curve in st.gaps.items():
            series.setdefault(quantity, []).append(curve)
    series = {k: v for k, v in series.items() if len(v) > 1}
    if series:
        written += save_figure(by_gap(series, title="by gap, across runs"), out, f"by_gap{suffix}")
    return written


def group_by_data(runs) -> dict[str, list]:
    """The runs by data set (key: the JSON of the data section's name and kwargs), in order."""
    groups: dict[str, list] = {}
    for run in runs:
        groups.setdefault(json.dumps([run.config.data.name, run.config.data.kwargs], sort_keys=True), []).append(run)
    return groups


def _training(run_dirs: list[Path], out: Path, opts: Options) -> list[Path]:
    runs = [load_training_run(rd) for rd in run_dirs]
    for run in runs:  # before any figure is written
        if opts.ema is not None and float(opts.ema) not in run.config.ema_rates:
            raise ValueError(f"--ema {opts.ema:g} is not an EMA rate of {run.run_dir} "
                             f"(its ema_rates: {run.config.ema_rates})")
    written: list[Path] = []
    groups: dict[str, list[_RunState]] = {}
    for key, group in group_by_data(runs).items():
        for run, label in zip(group, _labels(group)):
            state, paths = _per_run(run, label, out, opts)
            written += paths
            groups.setdefault(key, []).append(state)
    used: set[str] = set()
    for key, states in groups.items():
        suffix = "" if len(groups) == 1 else "_" + _slug(json.loads(key)[0])
        suffix = suffix if suffix not in used else f"{suffix}_{len(used)}"
        used.add(suffix)
        written += _per_data_set(states, suffix, out, opts)
    return written


BUILDERS: dict[str, Callable[[list[Path], Path, Options], list[Path]]] = {"gallery": _gallery, "training": _training}


def make_figures(run_dirs: list[Path], out: Path, *, options: Options | None = None) -> list[Path]:
    """Build every figure the given run directories support into ``out``; return the written paths.
    Raises ValueError naming the directory when one is not a run directory or has an unknown kind."""
    opts = Options() if options is None else options
    out = check_out_dir(out, "out")
    by_kind: dict[str, list[Path]] = {}
    for rd in map(Path, run_dirs):
        kind = run_kind(read_config(rd))
        if kind not in BUILDERS:
            raise ValueError(f"run directory {rd} has kind {kind!r}; known kinds: {sorted(BUILDERS)}")
        by_kind.setdefault(kind, []).append(rd)
    written: list[Path] = []
    for kind, dirs in by_kind.items():
        written += BUILDERS[kind](dirs, Path(out), opts)
    return written


def _steps(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive ints, got {text!r}") from None
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive ints, got {text!r}")
    return steps


def _rate(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be an EMA rate in (0, 1) (one of the runs' ema_rates), got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return v


def check_out_dir(out: str | Path, name: str = "--out") -> Path:
    """A directory figures can be written to, without creating it: not '', not a file, and the
    nearest existing ancestor a writable directory. ValueError naming ``name`` otherwise."""
    if str(out) == "":
        raise ValueError(f"{name} must name a directory, got '' (use '.' for the current directory)")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} must be a directory, but {path} is a file")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{name} {path} cannot be created: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {path} cannot be created or written: {probe} is not writable")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.make_figures", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--out", default="figures", help="directory for the figures (default: figures)")
    p.add_argument("--ema", type=_rate, default=None, help="sample from this EMA rate (default: online weights)")
    p.add_argument("--n-samples", type=_positive_int, default=2000, help="samples per panel (default 2000)")
    p.add_argument("--steps", type=_steps, default=(1, 2, 4, 8, 16), help="numbers of sampling steps")
    p.add_argument("--n-times", type=_positive_int, default=40000, help="realised (s, t) pairs per run (default 40000)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        out = check_out_dir(args.out, "--out")
        opts = Options(ema=args.ema, n_samples=args.n_samples, steps=args.steps, seed=args.seed,
                       n_times=args.n_times)
        paths = make_figures(args.run_dirs, out, options=opts)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in opts.notes:
        print(f"note: {note}", file=sys.stderr)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
