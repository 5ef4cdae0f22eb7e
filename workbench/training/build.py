"""From a config to objects: device, dtype, model, objective (used by the trainer and on resume)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..core.seeding import choose_device
from .config import ModelConfig, ObjectiveConfig

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda if available else cpu; an explicit cuda device must exist."""
    return choose_device(device)


def build_model(cfg: ModelConfig, dim: int) -> torch.nn.Module:
    """``workbench.models.make_mlp_flow_map(dim, ...)`` with the config's fields (torch's global RNG
    initialises the weights: seed it first)."""
    from ..models import make_mlp_flow_map

    kw = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "kind"}
    return make_mlp_flow_map(dim, **kw)


def _objectives() -> dict[str, Any]:
    try:
        from ..losses import OBJECTIVES
    except ImportError as err:
        raise ValueError(f"workbench.losses.OBJECTIVES is not available ({err})") from err
    return OBJECTIVES


def _override_value(name: str, current: Any, value: Any, data: Any) -> Any:
    if name == "interpolant" and isinstance(value, str):
        from ..flows import get_interpolant

        return get_interpolant(value)
    if name == "teacher" and value == "data":
        if data is None or not hasattr(data, "as_flow"):
            raise ValueError("objective.teacher = 'data' needs a data source with an analytic flow (as_flow())")
        return data.as_flow()
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
    registry = _objectives()
    if cfg.name not in registry:
        raise ValueError(f"objective.name must be one of {sorted(registry)}, got {cfg.name!r}")
    base = registry[cfg.name]
    if not cfg.overrides:
        return base
    fields = {f.name for f in dataclasses.fields(base)} if dataclasses.is_dataclass(base) else set()
    unknown = set(cfg.overrides) - fields
    if unknown:
        raise ValueError(
            f"unknown field(s) {sorted(unknown)} for objective {cfg.name!r}; its fields are {sorted(fields)}"
        )
    kw = {k: _override_value(k, getattr(base, k), v, data) for k, v in cfg.overrides.items()}
    try:
        return dataclasses.replace(base, **kw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad override for objective {cfg.name!r}: {err}") from err


def check_schedules(objective: Any, schedules: dict) -> None:
    """Every scheduled field must be a field of the objective (a dataclass)."""
    if not schedules:
        return
    fields = {f.name for f in dataclasses.fields(objective)} if dataclasses.is_dataclass(objective) else set()
    unknown = set(schedules) - fields
    if unknown:
        raise ValueError(f"objective.schedules names unknown field(s) {sorted(unknown)}; the objective's fields are {sorted(fields)}")
