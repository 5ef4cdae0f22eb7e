"""From a config to objects: device, dtype, model, objective (used by the trainer and on resume),
and the check of objective-field schedules over a whole run."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ..core.contract import Flow, check_implements
from ..core.seeding import choose_device
from ..core.validation import check_device
from .config import ModelConfig, ObjectiveConfig
from .optim import scheduled_value

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# At most this many distinct steps are evaluated per schedule check (endpoints always included).
_MAX_SCHEDULE_KNOTS = 64


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda if available else cpu; any other device must exist on this machine
    (``workbench.core.validation.check_device``: ValueError for 'cuda' without CUDA, 'gpu0', ...)."""
    if device == "auto":
        return choose_device(device)
    return check_device(device, "device")


def build_model(cfg: ModelConfig, dim: int) -> torch.nn.Module:
    """``workbench.models.make_mlp_flow_map(dim, ...)`` with the config's fields (torch's global RNG
    initialises the weights: seed it first)."""
    from ..models import make_mlp_flow_map

    kw = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "kind"}
    return make_mlp_flow_map(dim, **kw)


def _override_value(name: str, current: Any, value: Any, data: Any) -> Any:
    if name == "interpolant" and isinstance(value, str):
        from ..flows import get_interpolant

        return get_interpolant(value)
    if name == "teacher" and value == "data":
        if data is None:
            raise ValueError("objective.teacher = 'data' needs a data source with an analytic flow (as_flow())")
        try:
            flow = data.as_flow()
        except (AttributeError, ValueError) as err:
            raise ValueError(f"objective.teacher = 'data' needs a data source with an analytic flow: {err}") from None
        return check_implements(flow, Flow, "data.as_flow()")
    if dataclasses.is_dataclass(current) and not isinstance(current, type) and isinstance(value, dict):
        return dataclasses.replace(current, **value)
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def build_objective(cfg: ObjectiveConfig, data: Any = None) -> Any:
    """``dataclasses.replace(OBJECTIVES[cfg.name], **overrides)``.

    Override values are JSON values: ``interpolant`` may be "linear" or "trig"; ``teacher``
    "data" means the data source's analytic flow; a dict for a dataclass-valued field (e.g. a time
    sampler) replaces fields of the default; a list for a tuple field becomes a tuple.
    """
    from ..losses import OBJECTIVES

    if cfg.name not in OBJECTIVES:
        raise ValueError(f"objective.name must be one of {sorted(OBJECTIVES)}, got {cfg.name!r}")
    base = OBJECTIVES[cfg.name]
    if not cfg.overrides:
        return base
    fields = {f.name for f in dataclasses.fields(base)} if dataclasses.is_dataclass(base) else set()
    unknown = set(cfg.overrides) - fields
    if unknown:
        raise ValueError(
            f"unknown field(s) {sorted(unknown)} for objective {cfg.name!r}; its fields are {sorted(fields)}"
        )
    try:
        kw = {k: _override_value(k, getattr(base, k), v, data) for k, v in cfg.overrides.items()}
        return dataclasses.replace(base, **kw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad override for objective {cfg.name!r}: {err}") from err


def _knots(spec: dict, last: int) -> set[int]:
    """Completed-update counts k in [0, last] at which a schedule takes each of its distinct values
    (every value for a geometric schedule, thinned to ``_MAX_SCHEDULE_KNOTS``; both ends of a linear
    one, which is monotone in k)."""
    if spec["kind"] == "linear":
        return {0, min(spec["steps"], last), last}
    every = spec["every"]
    n = last // every
    js = range(n + 1) if n < _MAX_SCHEDULE_KNOTS else {round(i * n / (_MAX_SCHEDULE_KNOTS - 1)) for i in range(_MAX_SCHEDULE_KNOTS)}
    return {j * every for j in js} | {last}


def check_schedules(objective: Any, schedules: dict, steps: int | None = None) -> None:
    """Every scheduled field must be a field of the objective (a dataclass); with ``steps`` (the
    run's length) every schedule is evaluated over the whole run, at each of its knots (the steps
    where it changes and the first and last step), and the objective is rebuilt with
    ``dataclasses.replace`` at those values so that its own validation runs: a schedule that
    leaves a field's range fails here, before the run, instead of at the step it does so.

    A monotone schedule (linear, geometric) checked at its ends stays inside any interval-shaped
    range in between; the geometric kind is also checked at every distinct value it takes (up to
    64 of them)."""
    if not schedules:
        return
    fields = {f.name for f in dataclasses.fields(objective)} if dataclasses.is_dataclass(objective) else set()
    unknown = set(schedules) - fields
    if unknown:
        raise ValueError(f"objective.schedules names unknown field(s) {sorted(unknown)}; the objective's fields are {sorted(fields)}")
    if steps is None:
        return
    last = steps - 1  # the last step of the run follows steps - 1 completed updates
    ks = sorted(set().union(*(_knots(spec, last) for spec in schedules.values())))
    name = getattr(objective, "name", type(objective).__name__)
    for k in ks:
        values = {f: scheduled_value(spec, k) for f, spec in schedules.items()}
        bad = [f for f, v in values.items() if not math.isfinite(v)]
        try:
            if bad:
                raise ValueError(f"{bad[0]} = {values[bad[0]]} is not finite")
            dataclasses.replace(objective, **values)
        except (TypeError, ValueError) as err:
            shown = ", ".join(f"{f} = {v:.6g}" for f, v in values.items())
            raise ValueError(
                f"objective.schedules leave the valid range of objective {name!r} at step {k + 1} of {steps} "
                f"({shown}): {err}; change the schedule or the run's length"
            ) from None
