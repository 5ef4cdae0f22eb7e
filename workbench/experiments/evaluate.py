"""Evaluation of a finished training run: ``evaluate_run(run_dir, spec) -> dict``, written to
``run_dir/evaluation.json`` (the numbers the main job's report is built from).

What is measured, all in float64 with one seeded generator (the same draws for every method):

* **quality vs steps**: N-step flow-map samples x_{k+1} = X_{t_k,t_{k+1}}(x_k), t_k = k / N, from
  x_0 ~ N(0, I) (``workbench.sampling.sample_flow_map``), for N in ``spec.steps`` (the
  quality-against-steps protocol of B25's experiments), against ``spec.n`` fresh data samples:
  exact W2, sliced W2, unbiased MMD^2 and the energy distance
  (``workbench.diagnostics.metrics.quality_vs_steps``), plus the 1-step vs N-step drift;
* **histogram KL** (when ``spec.kl_box`` is given; the checkerboard): KL(p_data || p_model) between
  histograms of ``spec.n_kl`` data and ``spec.n_kl`` model samples on ``spec.kl_bins`` x
  ``spec.kl_bins`` equal cells of the box, additive smoothing 1e-6
  (``workbench.diagnostics.metrics.histogram_kl``);
* **floor**: every metric between two independent data samples of the same sizes (what a perfect
  model would score with this many samples);
* **flow-map error against the oracle** (when the data source has an analytic flow, ``as_flow()``):
  the RMS over ``spec.n_map`` noise draws of |x^(N)(x_0) - X_{0,1}(x_0)| per N, and the RMS error
  of the one-jump map sqrt(mean |X_hat_{s,t}(x) - X_{s,t}(x)|^2) with (s, t) uniform on the
  triangle s <= t and x ~ p_s, next to the RMS spread of X_{s,t}(x) (the error of a map that
  returned the mean);
* **detectors**: the verdicts of ``diagnosis.json`` (the diagnostics callback, written at the end
  of training) for the evaluated weights, else ``workbench.diagnostics.diagnose`` run here.

The spec is an :class:`~workbench.experiments.specs.EvalSpec` (re-exported here); the document is
written with ``workbench.rundir.atomic_write_json`` to the run's ``RunDir.evaluation``.

A metric that cannot be computed (non-finite samples of a diverged run) is recorded as null with
the reason under ``errors``; the evaluation itself never raises for that.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..flows.base import data_end_time
from ..rundir import RunDir, atomic_write_json, read_json
from ..sampling import sample_flow_map
from ..training.build import DTYPES, build_model
from ..training.checkpoint import load_latest
from ..training.config import TrainConfig
from ..training.metrics import read_metrics
from .specs import EvalSpec

__all__ = ["EvalSpec", "InDtype", "evaluate_model", "evaluate_run", "load_run_config",
           "load_trained_model", "model_tag", "read_evaluation"]

F64 = torch.float64
QUALITY_METRICS = ("w2", "sliced_w2", "mmd2", "energy")


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The run's TrainConfig; ValueError naming the file when it is missing, unreadable or invalid."""
    path = RunDir(run_dir).config
    doc = read_json(path, what="config")
    try:
        return TrainConfig.from_dict(doc)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a valid training config: {err}") from None


def model_tag(ema: float | None) -> str:
    """The name the diagnostics callbacks give these weights: "model" or "ema<rate:g>"."""
    return "model" if ema is None else f"ema{ema:g}"


def load_trained_model(run_dir: str | Path, ema: float | None, *, device: torch.device | str = "cpu",
                       dtype: torch.dtype = F64) -> tuple[torch.nn.Module, int]:
    """The run's newest checkpoint as a model (online weights, or the EMA of rate ``ema``) in eval
    mode, and the checkpoint's step."""
    cfg = load_run_config(run_dir)
    from ..data import get_data

    dim = get_data(cfg.data.name, **cfg.data.kwargs).dim
    state = load_latest(run_dir, map_location="cpu")
    if state is None:
        raise ValueError(f"run {run_dir} has no checkpoint to evaluate")
    model = build_model(cfg.model, dim)
    if ema is None:
        model.load_state_dict(state["model"])
    else:
        key = repr(float(ema))
        if key not in state["ema"]:
            raise ValueError(f"run {run_dir} keeps EMA rates {sorted(state['ema'])}, not {ema!r}")
        model.load_state_dict(state["ema"][key])
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False), int(state["step"])


class InDtype(torch.nn.Module):
    """Evaluates ``model`` in ``dtype`` (its training dtype, as it is sampled in use) and returns
    float64: flow_map(s, t, x) = model.flow_map(s, t, x in dtype) in float64."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype, self.dim = model, dtype, model.dim

    def _cast(self, v: object) -> object:
        return v.to(self.dtype) if isinstance(v, torch.Tensor) else v

    def flow_map(self, s: object, t: object, x: torch.Tensor) -> torch.Tensor:
        return self.model.flow_map(self._cast(s), self._cast(t), x.to(self.dtype)).to(x.dtype)

    def velocity(self, t: object, x: torch.Tensor) -> torch.Tensor:
        return self.model.velocity(self._cast(t), x.to(self.dtype)).to(x.dtype)


def _guard(errors: dict[str, str], key: str, fn: Callable[[], Any]) -> Any:
    """fn(), or None with the reason recorded under errors[key] (non-finite samples, say)."""
    try:
        value = fn()
    except (ValueError, RuntimeError, FloatingPointError) as err:
        errors[key] = f"{type(err).__name__}: {err}"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        errors[key] = f"non-finite value {value}"
        return None
    return value


def _samples(model, x0: torch.Tensor, n_steps: int) -> torch.Tensor:
    """N-step flow-map samples from ``x0`` without building a graph (a non-finite state raises)."""
    with torch.no_grad():
        return sample_flow_map(model, x0, n_steps=n_steps)


def _quality(model, data, spec: EvalSpec, g: torch.Generator, device, errors: dict) -> tuple[dict, dict]:
    from ..diagnostics.metrics import SAMPLE_METRICS, quality_vs_steps

    ref = data.sample(spec.n, g, dtype=F64, device=device)
    ref2 = data.sample(spec.n, g, dtype=F64, device=device)
    floor = {name: _guard(errors, f"floor/{name}", lambda f=SAMPLE_METRICS[name]: float(f(ref, ref2)))
             for name in QUALITY_METRICS}
    q = _guard(errors, "quality", lambda: quality_vs_steps(model, ref, spec.steps, generator=g, metrics=QUALITY_METRICS))
    if q is None:
        return {name: [None] * len(spec.steps) for name in (*QUALITY_METRICS, "drift")}, floor
    out = {name: [v if math.isfinite(v) else None for v in vals] for name, vals in q.metrics.items()}
    out["drift"] = [v if math.isfinite(v) else None for v in q.drift]
    return out, floor


def _kl(model, data, spec: EvalSpec, g: torch.Generator, device, errors: dict) -> tuple[list, float | None]:
    from ..diagnostics.metrics import histogram_kl

    box = [tuple(map(float, b)) for b in spec.kl_box]
    ref = data.sample(spec.n_kl, g, dtype=F64, device=device)
    ref2 = data.sample(spec.n_kl, g, dtype=F64, device=device)
    x0 = torch.randn(spec.n_kl, ref.shape[1], generator=g, dtype=F64, device=device)
    floor = _guard(errors, "floor/kl", lambda: histogram_kl(ref, ref2, bins=spec.kl_bins, box=box))
    vals = [_guard(errors, f"kl/{k}", lambda k=k: histogram_kl(ref, _samples(model, x0, k), bins=spec.kl_bins,
                                                              box=box)) for k in spec.steps]
    return vals, floor


def _oracle(model, flow, spec: EvalSpec, g: torch.Generator, device, errors: dict) -> dict:
    """RMS |x^(N)(x0) - X_{0,T}(x0)| per N, and the RMS one-jump map error on the triangle."""
    t_max = data_end_time(flow)
    x0 = torch.randn(spec.n_map, flow.dim, generator=g, dtype=F64)
    exact = flow.flow_map(0.0, t_max, x0).to(device)
    x0 = x0.to(device)

    def rms(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).pow(2).sum(dim=1).mean().sqrt())

    grid_end = spec.steps if t_max == 1.0 else ()
    per_n = [_guard(errors, f"oracle/steps/{k}", lambda k=k: rms(_samples(model, x0, k), exact))
             for k in grid_end] or [None] * len(spec.steps)
    st = torch.rand(spec.n_map, 2, generator=g, dtype=F64).sort(dim=1).values * t_max
    s, t = st[:, 0], st[:, 1]
    x = flow.sample_marginal(s, spec.n_map, g, dtype=F64)
    ref = flow.flow_map(s, t, x)
    with torch.no_grad():
        jump = _guard(errors, "oracle/map_rmse", lambda: rms(model.flow_map(s.to(device), t.to(device), x.to(device)),
                                                             ref.to(device)))
    spread = float((ref - ref.mean(0)).pow(2).sum(dim=1).mean().sqrt())
    return {"steps_rmse": per_n, "map_rmse": jump, "map_spread": spread, "t_max": t_max}


def _detectors(run_dir: Path, model, spec: EvalSpec, data, flow, device) -> dict:
    """Fired detectors of the evaluated weights: diagnosis.json when the callback wrote it (and it
    can be read), else ``diagnose`` run here (the source says why)."""
    tag = model_tag(spec.ema)
    path = RunDir(run_dir).diagnosis_json
    source = "diagnose"
    if path.is_file():
        try:
            doc = read_json(path, what="diagnosis")
            entry = doc.get("models", {}).get(tag)
            if entry is not None:
                reports = entry.get("reports", [])
                return {"source": path.name, "model": tag, "fired": list(entry.get("fired", [])),
                        "evaluated": [r["name"] for r in reports], "first_fired": doc.get("first_fired", {}),
                        "evidence": {r["name"]: r["evidence"] for r in reports if r.get("fired")}}
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            source = f"diagnose ({path.name} could not be read: {err})"
    from ..diagnostics import diagnose

    g = torch.Generator(device=device).manual_seed(spec.seed)
    samples = data.sample(2 * spec.n_diagnose, g, dtype=F64, device=device)
    reports = diagnose(model, reference=flow, data=samples, history=read_metrics(run_dir), n=spec.n_diagnose,
                       generator=g)
    return {"source": source, "model": tag, "fired": [r.name for r in reports if r.fired],
            "evaluated": [r.name for r in reports], "first_fired": {},
            "evidence": {r.name: r.evidence for r in reports if r.fired}}


def evaluate_model(model: torch.nn.Module, data: Any, spec: EvalSpec, *, device: str | torch.device = "cpu") -> dict:
    """The measurements of the module docstring for any model with ``flow_map(s, t, x)`` in float64
    on ``device`` (a trained network, ``workbench.models.ExactFlowMap(flow)``, a degenerate map):
    {"quality": {metric: [value per N]}, "floor": {metric: value}, "oracle": dict or None,
    "errors": {key: reason}}. The oracle is the data source's ``as_flow()`` when it has one."""
    if not isinstance(spec, EvalSpec):
        raise TypeError(f"spec must be an EvalSpec, got {type(spec).__name__}")
    device = torch.device(device)
    try:
        flow = data.as_flow()
    except (AttributeError, ValueError, NotImplementedError):
        flow = None
    g = torch.Generator(device=device).manual_seed(spec.seed)
    errors: dict[str, str] = {}
    quality, floor = _quality(model, data, spec, g, device, errors)
    if spec.kl_box is not None:
        quality["kl"], floor["kl"] = _kl(model, data, spec, g, device, errors)
    oracle = None
    if flow is not None:
        g_cpu = torch.Generator().manual_seed(spec.seed + 1)  # the oracle runs on the CPU in float64
        oracle = _oracle(model, flow, spec, g_cpu, device, errors)
    return {"quality": quality, "floor": floor, "oracle": oracle, "errors": errors}


def evaluate_run(run_dir: str | Path, spec: EvalSpec, *, training: dict | None = None,
                 device: str | torch.device = "cpu") -> dict:
    """Evaluate the run's newest checkpoint (:func:`evaluate_model` plus the detectors), write
    ``evaluation.json`` atomically and return its content. ``training`` (status, steps, seconds,
    ...) is stored as given."""
    if not isinstance(spec, EvalSpec):
        raise TypeError(f"spec must be an EvalSpec, got {type(spec).__name__}")
    from ..data import get_data

    t0 = time.perf_counter()
    rd = RunDir(run_dir)
    run = rd.path
    cfg = load_run_config(run)
    device = torch.device(device)
    data = get_data(cfg.data.name, **cfg.data.kwargs)
    model, step = load_trained_model(run, spec.ema, device=device, dtype=DTYPES[cfg.dtype])
    measured = evaluate_model(InDtype(model, DTYPES[cfg.dtype]), data, spec, device=device)
    try:
        flow = data.as_flow()
    except (AttributeError, ValueError, NotImplementedError):
        flow = None
    detectors = _detectors(run, model, spec, data, flow, device)
    doc = {
        "run": run.name, "method": cfg.objective.name, "data": cfg.data.name, "step": step,
        "model": model_tag(spec.ema), "spec": spec.to_dict(), "config": cfg.to_dict(), "steps": list(spec.steps),
        **measured, "detectors": detectors, "training": training or {}, "seconds": time.perf_counter() - t0,
    }
    atomic_write_json(rd.evaluation, doc, indent=1)
    return doc


def read_evaluation(run_dir: str | Path) -> dict | None:
    """The run's evaluation.json, or None when it has none or an unreadable one (torn, binary:
    the run is then evaluated again)."""
    path = RunDir(run_dir).evaluation
    if not path.is_file():
        return None
    try:
        return read_json(path, what="evaluation")
    except ValueError:
        return None
