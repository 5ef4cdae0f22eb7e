"""Frozen-dataclass configs of a training run, saved as ``config.json`` in the run directory.

``TrainConfig.to_dict()`` / ``TrainConfig.from_dict()`` round-trip through JSON exactly;
``apply_overrides(config, {"optim.lr": "3e-4", ...})`` is the thin layer the command line uses
(string values parsed by the field's type; keys may be dotted paths or unique leaf names; keys
below ``objective.`` and ``data.`` other than ``name`` become objective overrides / data keywords).

Every value is validated when the config is constructed, not at its first use, so a bad config
fails before a run starts (and ``--dry-run`` catches it):

* each section checks its own fields; ``ModelConfig`` builds a miniature of its model (width and
  depth 1, torch's random state restored) so the model's own checks run; ``DataConfig`` builds its
  data source (data sources are cheap to construct; data is drawn lazily);
* ``TrainConfig`` checks what depends on several sections: the objective is built with its
  overrides against the data source, every objective-field schedule is evaluated over the whole
  run and the objective rebuilt at those values (:func:`workbench.training.build.check_schedules`);
  an objective name outside ``workbench.losses.OBJECTIVES`` labels a custom objective passed to
  the ``Trainer``, which runs these checks on it when it starts (and refuses the name without it);
  ``optim.lr`` must be representable in ``dtype`` including Adam's first step size
  lr / (1 - beta1), and ``optim.eps`` and every EMA rate must survive rounding to ``dtype``;
  ``batch_size`` is at most :data:`MAX_BATCH_SIZE`.
* ``device`` is checked for its form here ("gpu0" is refused); whether this machine has the device
  is checked when a trainer starts (:func:`workbench.training.build.resolve_device`), so a config
  written on a GPU machine still loads on a laptop for analysis.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rundir import RunDir, atomic_write_text, read_json

# The largest batch one optimiser step may draw. Checked at construction so that a typo such as
# --batch_size 1e12 fails with a message instead of an allocation error deep inside the first step.
# 2**24 = 16,777,216 samples: 168 times B25's largest batch (100,000, the checkerboard); an MLP of width
# 256 already needs 16 GiB per float32 activation layer at this size, beyond what one step should
# allocate; larger effective batches want gradient accumulation, not one giant batch. It is also the
# largest count float32 represents exactly, so per-batch counts and fractions stay exact.
MAX_BATCH_SIZE = 2**24
# torch.Generator.manual_seed takes seeds below 2**64; the callbacks' generator uses seed + 1.
MAX_SEED = 2**64 - 2


def _require(cond: bool, name: str, expected: str, value: object) -> None:
    if not cond:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class ModelConfig:
    """Arguments of ``workbench.models.make_mlp_flow_map`` (the only ``kind`` so far: "mlp")."""

    kind: str = "mlp"
    hidden: int = 256
    depth: int = 4
    activation: str = "gelu"
    time_embedding: str = "sinusoidal"
    data_std: float = 1.0
    learned_weight: bool = False
    zero_init: bool = False

    def __post_init__(self) -> None:
        _require(self.kind == "mlp", "model.kind", "'mlp'", self.kind)
        _require(_is_int(self.hidden) and self.hidden > 0, "model.hidden", "a positive int", self.hidden)
        _require(_is_int(self.depth) and self.depth > 0, "model.depth", "a positive int", self.depth)
        _require(_is_num(self.data_std) and self.data_std > 0, "model.data_std", "a number > 0", self.data_std)
        for name in ("activation", "time_embedding"):
            _require(isinstance(getattr(self, name), str), f"model.{name}", "a str", getattr(self, name))
        for name in ("learned_weight", "zero_init"):
            _require(isinstance(getattr(self, name), bool), f"model.{name}", "a bool", getattr(self, name))
        _check_model_builds(self)


@dataclass(frozen=True)
class ObjectiveConfig:
    """An entry of ``workbench.losses.OBJECTIVES`` and field overrides for ``dataclasses.replace``.

    Override values are JSON values; ``interpolant`` may be a name ("linear", "trig") and
    ``teacher`` may be "data" (the data source's analytic flow, ``data.as_flow()``).
    ``schedules`` maps a numeric objective field to a schedule over training (see
    :func:`check_schedule`), e.g. sCM's tangent warm-up ``{"warmup": {"kind": "linear", "start":
    0, "end": 1, "steps": 10000}}`` or iCT's gap halving ``{"delta": {"kind": "geometric",
    "start": 0.1, "factor": 0.5, "every": 2000, "lo": 0.001}}``.
    """

    name: str = "lsd"
    overrides: dict = field(default_factory=dict)
    schedules: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(isinstance(self.name, str) and bool(self.name), "objective.name", "a non-empty str", self.name)
        _require(isinstance(self.overrides, dict), "objective.overrides", "a dict", self.overrides)
        _require(isinstance(self.schedules, dict), "objective.schedules", "a dict field -> schedule", self.schedules)
        for key, spec in self.schedules.items():
            check_schedule(f"objective.schedules[{key!r}]", spec)


_SCHEDULE_KEYS = {"linear": {"start", "end", "steps"}, "geometric": {"start", "factor", "every"}}


def check_schedule(name: str, spec: object) -> None:
    """A schedule of an objective field over completed updates k (applied by the trainer each step):
    ``{"kind": "linear", "start": a, "end": b, "steps": n}`` or
    ``{"kind": "geometric", "start": a, "factor": f, "every": n[, "lo": l][, "hi": h]}`` with
    f > 0 (both kinds are monotone in k). Whether the values stay in the objective's range over a
    run is checked by ``TrainConfig`` (it knows the run's length)."""
    kinds = " or ".join(f"{{'kind': {k!r}, " + ", ".join(f"{f!r}: ..." for f in sorted(v)) + "}" for k, v in _SCHEDULE_KEYS.items())
    ok = isinstance(spec, dict) and spec.get("kind") in _SCHEDULE_KEYS
    if ok:
        need = _SCHEDULE_KEYS[spec["kind"]]
        allowed = need | {"kind"} | ({"lo", "hi"} if spec["kind"] == "geometric" else set())
        ok = need <= set(spec) <= allowed and all(_is_num(spec[k]) for k in set(spec) - {"kind"})
        count = spec.get("steps", spec.get("every"))
        ok = ok and _is_int(count) and count > 0
        if ok and spec["kind"] == "geometric":  # a positive factor keeps the schedule monotone in k
            ok = spec["factor"] > 0 and spec.get("lo", -math.inf) <= spec.get("hi", math.inf)
    _require(ok, name, kinds + " (counts positive ints, factor > 0, lo <= hi)", spec)


@dataclass(frozen=True)
class DataConfig:
    """``workbench.data.get_data(name, **kwargs)``."""

    name: str = "checkerboard"
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(isinstance(self.name, str) and bool(self.name), "data.name", "a non-empty str", self.name)
        _require(isinstance(self.kwargs, dict), "data.kwargs", "a dict", self.kwargs)
        self.build()

    def build(self) -> Any:
        """The data source ``workbench.data.get_data(name, **kwargs)``; ValueError naming the section
        for an unknown name or bad keywords."""
        from ..data import get_data

        try:
            return get_data(self.name, **self.kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"data {self.name!r} with kwargs {self.kwargs}: {err}") from None


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser, learning-rate schedule and gradient clipping (as in B25's released training code:
    RAdam with betas (0.9, 0.999), eps 1e-8, after clipping the global gradient norm).

    schedule "sqrt": lr(k) = lr / sqrt(max(k / decay_start, 1)) after k completed updates
    (constant for ``decay_start`` updates, then inverse square root); "constant": lr(k) = lr.
    ``grad_clip`` > 0 clips the global gradient norm to that value; 0 disables clipping.
    """

    name: str = "radam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: str = "sqrt"
    decay_start: int = 35_000
    grad_clip: float = 10.0

    def __post_init__(self) -> None:
        _require(self.name in ("adam", "radam"), "optim.name", "'adam' or 'radam'", self.name)
        _require(_is_num(self.lr) and self.lr > 0, "optim.lr", "a number > 0", self.lr)
        _require(
            isinstance(self.betas, tuple) and len(self.betas) == 2 and all(_is_num(b) and 0 <= b < 1 for b in self.betas),
            "optim.betas", "two numbers in [0, 1)", self.betas,
        )
        _require(_is_num(self.eps) and self.eps > 0, "optim.eps", "a number > 0", self.eps)
        _require(_is_num(self.weight_decay) and self.weight_decay >= 0, "optim.weight_decay", "a number >= 0", self.weight_decay)
        _require(self.schedule in ("sqrt", "constant"), "optim.schedule", "'sqrt' or 'constant'", self.schedule)
        _require(_is_int(self.decay_start) and self.decay_start > 0, "optim.decay_start", "a positive int", self.decay_start)
        _require(_is_num(self.grad_clip) and self.grad_clip >= 0, "optim.grad_clip", "a number >= 0 (0 = off)", self.grad_clip)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. ``device`` "auto" means cuda when available, else cpu, or
    "cpu", "cuda", "cuda:N"; ``dtype`` "float32" or "float64"; ``bf16`` enables bfloat16 autocast on
    CUDA only; ``batch_size`` is 1..:data:`MAX_BATCH_SIZE`; cadences are in optimiser steps (0 =
    never); ``eval_every`` is the cadence of the oracle-error callback the command line attaches
    when the data source has an analytic flow; a run stops after ``max_consecutive_skips``
    consecutive skipped steps (non-finite data, loss or gradient). See the module docstring for the
    checks that tie sections together."""

    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 1024
    steps: int = 1000
    seed: int = 42
    device: str = "auto"
    dtype: str = "float32"
    bf16: bool = False
    ema_rates: tuple[float, ...] = (0.999, 0.9999)
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_every: int = 0
    max_consecutive_skips: int = 20
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name, cls in (("model", ModelConfig), ("objective", ObjectiveConfig), ("data", DataConfig), ("optim", OptimConfig)):
            _require(isinstance(getattr(self, name), cls), name, f"a {cls.__name__}", getattr(self, name))
        for name in ("batch_size", "steps", "log_every", "keep_checkpoints", "max_consecutive_skips"):
            v = getattr(self, name)
            _require(_is_int(v) and v > 0, name, "a positive int", v)
        _require(self.batch_size <= MAX_BATCH_SIZE, "batch_size",
                 f"at most {MAX_BATCH_SIZE} (2**24) samples per step (use a smaller batch)", self.batch_size)
        for name in ("checkpoint_every", "eval_every", "seed"):
            v = getattr(self, name)
            _require(_is_int(v) and v >= 0, name, "an int >= 0", v)
        _require(self.seed <= MAX_SEED, "seed", f"an int in [0, {MAX_SEED}] (torch seeds are 64-bit)", self.seed)
        _check_device_form(self.device)
        _require(self.dtype in _DTYPE_NAMES, "dtype", " or ".join(map(repr, _DTYPE_NAMES)), self.dtype)
        _require(
            isinstance(self.ema_rates, tuple) and all(_is_num(r) and 0 < r < 1 for r in self.ema_rates)
            and len(set(self.ema_rates)) == len(self.ema_rates),
            "ema_rates", "a tuple of distinct numbers in (0, 1)", self.ema_rates,
        )
        for name in ("bf16", "progress", "tensorboard"):
            _require(isinstance(getattr(self, name), bool), name, "a bool", getattr(self, name))
        _check_in_dtype(self)
        _check_objective(self)

    # -- JSON round trip ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        return _from_dict(cls, d, "")

    def save(self, run_dir: str | Path) -> Path:
        """Write config.json into ``run_dir`` atomically; return its path."""
        return atomic_write_text(RunDir(run_dir).config, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainConfig:
        """The config of a run directory (or of a config.json file given directly).

        ValueError naming the file when it is missing, binary, truncated, not a JSON object or
        holds an invalid config."""
        path = Path(RunDir(run_dir))
        if path.is_dir() or not path.exists():
            path = RunDir(path).config
            if not path.is_file():
                raise ValueError(f"no {RunDir(run_dir).config.name} in {run_dir}; is it a run directory?")
        doc = read_json(path, expect=dict, what="config")
        try:
            return cls.from_dict(doc)
        except (TypeError, ValueError) as err:
            raise ValueError(f"config {path} holds an invalid config: {err}") from None


_DTYPE_NAMES = ("float32", "float64")


def _check_model_builds(cfg: ModelConfig) -> None:
    """Build a miniature of the model (width and depth 1, its other fields as configured) so that
    the model's own checks (activation, time embedding, ...) run now. Torch's global random state is
    restored afterwards, so constructing a config draws nothing. (Building on torch's meta device
    instead would import torch's compiler stack, about a second per process.)"""
    import torch

    from ..models import make_mlp_flow_map

    kw = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "kind"}
    try:
        with torch.random.fork_rng(devices=[]):
            make_mlp_flow_map(1, **{**kw, "hidden": 1, "depth": 1})
    except (TypeError, ValueError) as err:
        raise ValueError(f"model: {err}") from None


def _check_device_form(device: object) -> None:
    """'auto', or a string torch parses as a cpu or cuda device; availability is checked at start."""
    import torch

    ok = isinstance(device, str)
    if ok and device != "auto":
        try:
            ok = torch.device(device).type in ("cpu", "cuda")
        except RuntimeError:
            ok = False
    _require(ok, "device", "'auto', 'cpu', 'cuda' or 'cuda:N'", device)


def _check_in_dtype(cfg: TrainConfig) -> None:
    """Values that enter arithmetic in the model's dtype must survive rounding to it."""
    import torch

    dtype = getattr(torch, cfg.dtype)
    finfo = torch.finfo(dtype)

    def rounded(v: float) -> float:
        return float(torch.tensor(v, dtype=torch.float64).to(dtype))

    o = cfg.optim
    first_step = o.lr / (1.0 - o.betas[0])  # Adam's and RAdam's first step size, lr / (1 - beta1^1)
    _require(rounded(o.lr) > 0 and first_step <= finfo.max, "optim.lr",
             f"a number > 0 that does not round to 0 in {cfg.dtype} and whose first Adam step lr / (1 - beta1) = "
             f"{first_step:.3g} stays below the largest {cfg.dtype}, {finfo.max:.3g} (so lr <= "
             f"{finfo.max * (1.0 - o.betas[0]):.3g} for beta1 = {o.betas[0]})", o.lr)
    _require(rounded(o.eps) > 0, "optim.eps", f"a number > 0 that does not round to 0 in {cfg.dtype}", o.eps)
    for r in cfg.ema_rates:
        _require(rounded(r) < 1.0, "ema_rates",
                 f"rates that stay below 1 in {cfg.dtype} (rounded to {cfg.dtype}, {r!r} is 1.0: the average would "
                 "never move); use a smaller rate or dtype float64", cfg.ema_rates)


def _check_objective(cfg: TrainConfig) -> None:
    """Build the objective with its overrides against the data source, and check every schedule
    over the whole run (the objective rebuilt at the scheduled values). A name outside
    ``workbench.losses.OBJECTIVES`` labels a custom objective given to the trainer, which runs
    the same checks on it when it starts."""
    from ..losses import OBJECTIVES
    from .build import build_objective, check_schedules

    if cfg.objective.name not in OBJECTIVES:
        return
    objective = build_objective(cfg.objective, cfg.data.build())
    check_schedules(objective, cfg.objective.schedules, steps=cfg.steps)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_dict(cls, d: Mapping[str, Any], prefix: str):
    if not isinstance(d, Mapping):
        raise ValueError(f"{prefix or 'config'} must be a JSON object, got {d!r}")
    hints = _hints(cls)
    unknown = set(d) - set(hints)
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(prefix + k for k in unknown)}; known: {sorted(prefix + k for k in hints)}")
    kw = {}
    for k, v in d.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kw[k] = _from_dict(tp, v, prefix + k + ".")
        elif typing.get_origin(tp) is tuple and isinstance(v, list):
            kw[k] = tuple(v)
        else:
            kw[k] = v
    return cls(**kw)


# -- overrides from the command line ----------------------------------------------------------------
_SECTIONS = {"model": ModelConfig, "objective": ObjectiveConfig, "data": DataConfig, "optim": OptimConfig}
_OPEN = {"objective": "overrides", "data": "kwargs"}  # sections whose other keys go into a dict


def _json_or_str(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_value(text: str, tp: Any, key: str) -> Any:
    """Parse a command-line string as a value of type ``tp`` (int, float, bool, str, tuple, dict)."""
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            f = float(text)
            if not f.is_integer():
                raise ValueError
            return int(f)
        if tp is float:
            return float(text)
        if tp is str:
            return text
        if origin is tuple:
            items = json.loads(text) if text.strip().startswith("[") else [p for p in text.split(",") if p.strip()]
            return tuple(float(p) for p in items)
        if tp is dict or origin is dict:
            v = json.loads(text)
            if not isinstance(v, dict):
                raise ValueError
            return v
    except (ValueError, json.JSONDecodeError):
        pass
    raise ValueError(f"--{key}: cannot parse {text!r} as {getattr(tp, '__name__', tp)}")


def config_keys() -> list[str]:
    """All settable dotted keys (the open sections accept further ``objective.*`` / ``data.*`` keys)."""
    keys = []
    for k, tp in _hints(TrainConfig).items():
        if dataclasses.is_dataclass(tp):
            keys += [f"{k}.{sub}" for sub in _hints(tp)]
        else:
            keys.append(k)
    return keys


def _resolve_key(key: str) -> str:
    known = config_keys()
    if key in known or (key.split(".")[0] in _OPEN and "." in key):
        return key
    matches = [k for k in known if k.split(".")[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ValueError(f"--{key} is ambiguous; use one of {['--' + m for m in matches]}")
    raise ValueError(f"unknown option --{key}; known keys: {', '.join(known)} (plus objective.<field>, data.<kwarg>)")


def apply_overrides(config: TrainConfig, overrides: Mapping[str, str]) -> TrainConfig:
    """Return ``config`` with string overrides applied, e.g. ``{"lr": "3e-4", "objective.diag_fraction": "0.5"}``.

    Raises ValueError naming the key for unknown keys and unparsable or invalid values.
    """
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for raw_key, text in overrides.items():
        key = _resolve_key(raw_key)
        if "." not in key:
            top[key] = parse_value(text, _hints(TrainConfig)[key], key)
            continue
        sec, sub = key.split(".", 1)
        hints = _hints(_SECTIONS[sec])
        if sub in hints:
            sections.setdefault(sec, {})[sub] = parse_value(text, hints[sub], key)
        else:  # an objective override or a data keyword
            open_field = _OPEN[sec]
            current = dict(sections.get(sec, {}).get(open_field, getattr(getattr(config, sec), open_field)))
            current[sub] = _json_or_str(text)
            sections.setdefault(sec, {})[open_field] = current
    try:
        for sec, kw in sections.items():
            top[sec] = dataclasses.replace(getattr(config, sec), **kw)
        return dataclasses.replace(config, **top)
    except ValueError as err:
        raise ValueError(f"bad value: {err}") from err
