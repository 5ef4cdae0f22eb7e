"""Run directory -> figure data, reading files only (no model is evaluated here; see
:mod:`analysis.derived` for what is computed from checkpoints).

Every path comes from ``workbench.rundir.RunDir`` and every JSON file is read with its readers
(``read_json``: a ValueError naming the file; ``read_jsonl``: torn or garbage lines skipped). A run
directory holds ``config.json``. Two kinds exist:

* ``"gallery"``: ``config.json`` with ``"kind": "gallery"`` and ``gallery.npz``
  (workbench.experiments.gallery_run, drawn by :mod:`analysis.figures_gallery`);
* ``"training"``: ``config.json`` is a ``workbench.training.TrainConfig`` (sections model,
  objective, data, optim), with the append-only ``metrics.jsonl`` (one JSON object per logged step,
  non-finite numbers as null), ``checkpoints/step-*.pt``, and, when the diagnostics callbacks ran
  (workbench.diagnostics.callbacks), ``diagnostics/map_error[_<model>].npz`` (``steps`` (k,),
  ``rmse`` (k, G, G) with NaN below the diagonal, ``edges`` (G + 1,)), ``diagnostics/grad_bins.npz``
  (``steps``, ``st_sum`` / ``st_count`` (k, B, B), ``gap_sum`` / ``gap_count`` (k, B), ``s_edges``,
  ``t_edges``, ``gap_edges``), ``diagnosis.json`` (``first_fired``: detector -> step) and
  ``diagnostics/first_fired.json``; after evaluation (workbench.experiments.evaluate)
  ``evaluation.json`` (``steps``, ``quality``: metric -> values per N, ``floor``: metric -> value
  between two data samples, ``oracle.steps_rmse``: |x^(N)(x0) - X_{0,1}(x0)| per N).

A damaged metrics.jsonl does not stop the figures: lines that are not JSON objects (binary
garbage), rows without an integer ``step`` and values of the wrong type (a string or list where a
number is plotted) are left out, and ``TrainingRun.notes`` says how many.
"""

from __future__ import annotations

import math
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.rundir import RunDir, read_json, read_jsonl

from .figures_gallery import GalleryPanel
from .figures_maps import GapCurve, TimeGridMap
from .figures_training import Event, TrainingCurves

TRAINING_SECTIONS = ("model", "objective", "data", "optim")
MAP_ERROR_LABEL = r"RMS $|\hat X_{s,t}(x) - X_{s,t}(x)|$"
GRAD_LABEL = r"mean $\|\nabla_\theta \ell_i\|$"
#: metrics whose values are plotted as numbers: a key equal to one of these or starting with one
NUMERIC_METRICS = ("loss", "grad_norm", "terms/", "grads/", "oracle/", "periodic/", "quality/", "signals/",
                   "diagnosis/")


def read_config(run_dir: str | Path) -> dict:
    """The run's config.json as a dict; ValueError (with what was expected) when ``run_dir`` is not
    a run directory or its config cannot be read (binary, truncated, not an object)."""
    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise ValueError(f"{rd.path} is not a directory; expected a run directory holding {rd.config.name}")
    if not rd.config.is_file():
        raise ValueError(f"{rd.path} is not a run directory: it has no {rd.config.name}")
    return read_json(rd.config, what="config")


def run_kind(config: dict) -> str:
    """``config["kind"]`` when given (the gallery writes one), "training" for a TrainConfig."""
    kind = config.get("kind")
    if isinstance(kind, str):
        return kind
    if all(k in config for k in TRAINING_SECTIONS):
        return "training"
    raise ValueError(f"config.json has no 'kind' and is not a training config (sections {TRAINING_SECTIONS}); "
                     f"its keys are {sorted(config)}")


@dataclass(frozen=True)
class TrainingRun:
    """A training run directory: ``name`` (directory name), ``method`` (objective name), the
    ``TrainConfig``, the usable rows of metrics.jsonl and ``notes`` on what of the run's files
    could not be used."""

    run_dir: Path
    name: str
    method: str
    config: object
    metrics: tuple
    notes: tuple[str, ...] = ()


def _is_number(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float))


def _numeric_key(key: str) -> bool:
    return any(key == m or (m.endswith("/") and key.startswith(m)) for m in NUMERIC_METRICS)


def read_metric_rows(path: str | Path) -> tuple[list[dict], list[str]]:
    """The usable rows of a metrics.jsonl and notes on what was left out: lines that are not JSON
    objects, rows whose ``step`` is not an int >= 0, and values of numeric metrics that are neither
    a number nor null (dropped from their row). A torn last line ends the log silently."""
    path = Path(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = read_jsonl(path)
    notes = [str(w.message) for w in caught]
    rows, no_step, bad_keys, n_bad = [], 0, set(), 0
    for r in raw:
        step = r.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            no_step += 1
            continue
        bad = [k for k, v in r.items() if _numeric_key(k) and v is not None and not _is_number(v)]
        if bad:
            n_bad += len(bad)
            bad_keys.update(bad)
            r = {k: v for k, v in r.items() if k not in bad}
        rows.append(r)
    if no_step:
        notes.append(f"{path}: skipped {no_step} row(s) without an integer step >= 0")
    if n_bad:
        notes.append(f"{path}: left out {n_bad} value(s) of the wrong type (not a number) of {sorted(bad_keys)}")
    return rows, notes


def _readable_json(path: Path, what: str) -> tuple[dict | None, str | None]:
    """(document, None) for a readable JSON object, (None, why) for a damaged one, (None, None) when absent."""
    if not path.is_file():
        return None, None
    try:
        return read_json(path, what=what), None
    except ValueError as err:
        return None, f"{err}; its detector events are not drawn"


def load_training_run(run_dir: str | Path) -> TrainingRun:
    """Read config.json (as a ``TrainConfig``) and metrics.jsonl of a training run (damaged rows
    are left out and noted, see :func:`read_metric_rows`)."""
    from workbench.training import TrainConfig

    rd = RunDir(run_dir)
    raw = read_config(rd.path)
    if run_kind(raw) != "training":
        raise ValueError(f"{rd.path} is a {run_kind(raw)!r} run, not a training run")
    try:
        cfg = TrainConfig.from_dict(raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{rd.config} is not a valid training config: {err}") from err
    rows, notes = read_metric_rows(rd.metrics)
    for path, what in ((rd.diagnosis_json, "diagnosis"), (rd.first_fired, "first-fired record")):
        why = _readable_json(path, what)[1]
        if why:
            notes.append(why)
    return TrainingRun(run_dir=rd.path, name=rd.path.resolve().name, method=cfg.objective.name, config=cfg,
                       metrics=tuple(rows), notes=tuple(notes))


def _num(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    return float(v)


def series(rows, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of every row holding ``key`` (null, i.e. a non-finite value, becomes NaN)."""
    pts = [(int(r["step"]), _num(r[key])) for r in rows if key in r and "step" in r]
    if not pts:
        return np.zeros(0, dtype=int), np.zeros(0)
    steps, values = zip(*pts)
    return np.asarray(steps), np.asarray(values, dtype=float)


def _keys(rows, prefix: str) -> list[str]:
    out: list[str] = []
    for r in rows:
        out += [k for k in r if k.startswith(prefix) and k not in out]
    return out


def detector_events(run: TrainingRun) -> tuple[Event, ...]:
    """First step each detector fired: from ``diagnosis/<name>_fired`` metrics (value > 0.5), from
    ``diagnosis.json``'s ``first_fired`` and from ``diagnostics/first_fired.json`` (written as
    detectors fire, so it survives an interrupted run); the earliest when several say."""
    first: dict[str, int] = {}
    for r in run.metrics:
        for k, v in r.items():
            m = re.fullmatch(r"diagnosis/(.+)_fired", k)
            if m and _num(v) > 0.5:
                first[m.group(1)] = min(first.get(m.group(1), int(r["step"])), int(r["step"]))
    rd = RunDir(run.run_dir)
    for path, what in ((rd.diagnosis_json, "diagnosis"), (rd.first_fired, "first-fired record")):
        doc = _readable_json(path, what)[0]  # a damaged file is noted by load_training_run
        fired = (doc or {}).get("first_fired") if path == rd.diagnosis_json else doc
        for name, step in (fired if isinstance(fired, dict) else {}).items():
            if _is_number(step) and float(step).is_integer() and step >= 0:
                first[name] = min(first.get(name, int(step)), int(step))
    return tuple(Event(step=s, name=n) for n, s in sorted(first.items(), key=lambda kv: (kv[1], kv[0])))


def training_curves_of(run: TrainingRun) -> TrainingCurves:
    """The curves of :func:`analysis.figures_training.training_curves` from metrics.jsonl: ``loss``,
    ``terms/<name>``, ``grad_norm``, ``signals/grad_norm_max`` (window maximum), ``grads/term/<name>``
    (periodic diagnostics), the oracle error
    ``oracle/map_rmse`` (online), ``oracle/ema<r>/map_rmse`` (EMAs), ``oracle/map01_rmse`` (one-step
    map) and ``periodic/map_rmse`` (grid), skipped steps and a diverged stop."""
    rows = run.metrics
    terms = {k.split("/", 1)[1]: series(rows, k) for k in _keys(rows, "terms/")}
    grads = {k.split("/", 2)[2]: series(rows, k) for k in _keys(rows, "grads/term/")}
    oracle = {}
    for key in _keys(rows, "oracle/") + _keys(rows, "periodic/"):
        m = re.fullmatch(r"(oracle|periodic)/(?:ema([0-9.e-]+)/)?(map01_rmse|map_rmse)", key)
        if not m or (m.group(2) and m.group(3) == "map01_rmse"):
            continue
        who = "online" if m.group(2) is None else f"EMA {m.group(2)}"
        what = {"map_rmse": "$X_{s,t}$", "map01_rmse": "$X_{0,1}$"}[m.group(3)]
        where = ", (s,t) grid" if m.group(1) == "periodic" else ""
        oracle[f"{who}: {what}{where}"] = series(rows, key)
    skipped = np.asarray([int(r["step"]) for r in rows if r.get("skipped") is True], dtype=int)
    diverged = [int(r["step"]) for r in rows if r.get("stopped") == "diverged"]
    def optional(key: str):
        return series(rows, key) if any(key in r for r in rows) else None

    return TrainingCurves(
        name=f"{run.method} ({run.name})", loss=series(rows, "loss"), terms=terms, grad_norm=optional("grad_norm"),
        term_grad_norms=grads, grad_norm_max=optional("signals/grad_norm_max"), oracle=oracle,
        events=detector_events(run), skipped=skipped, diverged_at=diverged[0] if diverged else None,
    )


def gap_curve_from_grid(values: np.ndarray, edges: np.ndarray, label: str) -> GapCurve:
    """By-gap curve of an RMS quantity on a uniform G x G (s, t) grid with equal samples per cell:
    for d = j - i = 0..G-1 the pooled RMS sqrt(mean over finite cells (i, i + d) of values^2),
    plotted at the cell-centre gap d (edges[1] - edges[0]); count = finite cells on that diagonal."""
    v = np.asarray(values, dtype=float)
    g = v.shape[0]
    if v.shape != (g, g) or len(edges) != g + 1:
        raise ValueError(f"values must be (G, G) with G + 1 edges, got {v.shape} and {len(edges)} edges")
    width = float(edges[1] - edges[0])
    out, count = np.full(g, np.nan), np.zeros(g, dtype=int)
    for d in range(g):
        diag = np.diagonal(v, offset=d)
        ok = np.isfinite(diag)
        count[d] = int(ok.sum())
        if count[d]:
            out[d] = math.sqrt(float(np.mean(diag[ok] ** 2)))
    return GapCurve(label=label, gap=width * np.arange(g), values=out, count=count)


def load_map_errors(run_dir: str | Path) -> dict[str, tuple[TimeGridMap, list[GapCurve]]]:
    """From the run's map-error files (``RunDir.map_errors()``): per model tag ("model",
    "ema0.999", ...) the map of the last evaluation and by-gap curves of up to four evaluations
    (first, ..., last). ValueError naming the file when one cannot be read."""
    out = {}
    for tag, path in RunDir(run_dir).map_errors().items():
        with _NpzReader(path) as z:
            steps, rmse, edges = np.asarray(z["steps"]), np.asarray(z["rmse"], dtype=float), np.asarray(z["edges"])
        if rmse.ndim != 3 or rmse.shape[0] == 0:
            raise ValueError(f"{path}: rmse must be (evaluations, G, G), got {rmse.shape}")
        pick = sorted(set(np.linspace(0, len(steps) - 1, min(4, len(steps))).round().astype(int).tolist()))
        curves = [gap_curve_from_grid(rmse[k], edges, f"step {int(steps[k])}") for k in pick]
        m = TimeGridMap(title=f"flow-map error ({tag}, step {int(steps[-1])})", label=MAP_ERROR_LABEL,
                        s_edges=edges, t_edges=edges, values=rmse[-1])
        out[tag] = (m, curves)
    return out


def load_grad_bins(run_dir: str | Path) -> tuple[TimeGridMap, GapCurve] | None:
    """From ``diagnostics/grad_bins.npz``: the per-sample gradient norm averaged per (s, t) bin and per
    gap bin, pooled over every evaluation (mean = sum of sums / sum of counts); None when absent."""
    path = RunDir(run_dir).grad_bins
    if not path.is_file():
        return None
    with _NpzReader(path) as z:
        st_sum, st_count = np.asarray(z["st_sum"], float).sum(0), np.asarray(z["st_count"], float).sum(0)
        gap_sum, gap_count = np.asarray(z["gap_sum"], float).sum(0), np.asarray(z["gap_count"], float).sum(0)
        s_edges, t_edges, gap_edges, steps = z["s_edges"], z["t_edges"], z["gap_edges"], z["steps"]
    with np.errstate(invalid="ignore", divide="ignore"):
        st_mean = np.where(st_count > 0, st_sum / np.maximum(st_count, 1), np.nan)
        gap_mean = np.where(gap_count > 0, gap_sum / np.maximum(gap_count, 1), np.nan)
    span = f"steps {int(steps[0])}-{int(steps[-1])}" if len(steps) > 1 else f"step {int(steps[0])}"
    m = TimeGridMap(title=f"per-sample gradient norm ({span})", label=GRAD_LABEL, s_edges=np.asarray(s_edges),
                    t_edges=np.asarray(t_edges), values=st_mean, count=st_count)
    centres = 0.5 * (np.asarray(gap_edges)[1:] + np.asarray(gap_edges)[:-1])
    return m, GapCurve(label="pooled", gap=centres, values=gap_mean, count=gap_count)


def quality_from_metrics(rows) -> object | None:
    """``StepsQuality`` from the last row with ``quality/<metric>/<N>`` keys (the online model's,
    written by the periodic diagnostics; ``quality/drift/<N>`` is the drift); None when none."""
    from workbench.diagnostics.metrics import StepsQuality

    for r in reversed(rows):
        found: dict[str, dict[int, float]] = {}
        for k, v in r.items():
            m = re.fullmatch(r"quality/([^/]+)/(\d+)", k)
            if m:
                found.setdefault(m.group(1), {})[int(m.group(2))] = _num(v)
        if found:
            drift = found.pop("drift", {})
            steps = sorted(set().union(*(d.keys() for d in found.values())) if found else drift.keys())
            return StepsQuality(steps=tuple(steps),
                                metrics={n: tuple(d.get(k, math.nan) for k in steps) for n, d in found.items()},
                                drift=tuple(drift.get(k, math.nan) for k in steps))
    return None


def quality_from_evaluation(run_dir: str | Path) -> tuple[object, dict] | None:
    """(``StepsQuality``, floors) from ``evaluation.json``: every metric of ``quality`` (null -> NaN),
    ``oracle.steps_rmse`` as the metric "oracle" when present, the drift, and ``floor`` (metric ->
    the value between two data samples); None when the run has no evaluation.json."""
    from workbench.diagnostics.metrics import StepsQuality

    path = RunDir(run_dir).evaluation
    if not path.is_file():
        return None
    try:
        doc = read_json(path, what="evaluation")
        steps = tuple(int(k) for k in doc["steps"])
        quality = dict(doc["quality"])
        metrics = {name: tuple(_num(v) for v in vals) for name, vals in quality.items() if name != "drift"}
        oracle = doc.get("oracle") or {}
        if any(v is not None for v in oracle.get("steps_rmse") or []):
            metrics["oracle"] = tuple(_num(v) for v in oracle["steps_rmse"])
        drift = tuple(_num(v) for v in quality.get("drift", [None] * len(steps)))
        floors = {k: _num(v) for k, v in (doc.get("floor") or {}).items()}
        if any(len(v) != len(steps) for v in (*metrics.values(), drift)):
            raise ValueError("a metric has not one value per number of steps")
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not an evaluation document ({type(err).__name__}: {err})") from err
    return StepsQuality(steps=steps, metrics=metrics, drift=drift), floors


class _NpzReader:
    """``np.load`` of an .npz as a context manager whose failures (a damaged file, a missing array)
    are ValueErrors naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.z = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path} cannot be read as .npz arrays ({type(err).__name__}: {err})") from None

    def __enter__(self) -> _NpzReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.z.close()

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self.z[key]
        except (KeyError, OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{self.path} has no readable array {key!r} ({type(err).__name__}: {err})") from None


def load_gallery(run_dir: str | Path) -> list[GalleryPanel]:
    """The panels of a gallery run (``RunDir.config`` of kind "gallery" and ``RunDir.gallery``)."""
    rd = RunDir(run_dir)
    cfg = read_config(rd.path)
    try:
        flows, fields, descriptions = cfg["flows"], cfg["fields"], cfg["descriptions"]
        panels = []
        with _NpzReader(rd.gallery) as arrays:
            for name in flows:
                shown = {f"X_{{{s},{t}}}": (arrays[f"{name}/field_{s}_{t}_grid"], arrays[f"{name}/field_{s}_{t}_disp"])
                         for s, t in fields}
                panels.append(GalleryPanel(name=name, description=descriptions[name], times=arrays[f"{name}/times"],
                                           trajectories=arrays[f"{name}/trajectories"], fields=shown,
                                           data=arrays[f"{name}/data"]))
    except (KeyError, TypeError) as err:
        raise ValueError(f"{rd.config} is not a gallery config ({type(err).__name__}: {err})") from None
    return panels
