"""Named training presets, all small enough for a CPU.

* ``gauss2d-lsd`` (and ``gauss2d-fm``): 2-D Gaussian data, whose flow map is known in closed form
  (``workbench.flows.GaussianFlow.flow_map``); the command line attaches an oracle-error callback
  (``eval_every``), so metrics.jsonl carries the error of X_hat_{s,t} against the exact map.
* ``checker-<objective>`` for every objective of ``workbench.losses.OBJECTIVES`` that needs no
  teacher: B25's checkerboard experiment (its released configuration: the [-4, 4]^2 variant;
  data_std = its std 4/sqrt(3) as B25's ``rescale``; MLP on raw (s, t - s); RAdam, lr 1e-3,
  clip 10, EMA 0.999 / 0.9999), shrunk to CPU size (width 256, batch 2048, 4000 steps; the sqrt
  schedule's constant phase is shortened in proportion: decay after 2000 steps instead of 35,000).
* ``gmm8-<objective>`` for the distillation objectives that need a teacher (``needs_teacher``):
  eight Gaussians with the exact ``GaussianMixtureFlow`` of the same law as
  the teacher (the checkerboard has no closed-form flow to distil from).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..training.config import DataConfig, ModelConfig, ObjectiveConfig, OptimConfig, TrainConfig

GAUSS2D = DataConfig("gaussian", {"mean": [1.0, -0.5], "cov": [[0.5, 0.2], [0.2, 0.3]]})


@dataclass(frozen=True)
class Preset:
    """A named config with a one-line description."""

    name: str
    description: str
    config: TrainConfig


def _gauss2d(objective: str) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(hidden=64, depth=3, time_embedding="raw"),
        objective=ObjectiveConfig(objective),
        data=GAUSS2D,
        optim=OptimConfig(name="adam", lr=3e-3, schedule="sqrt", decay_start=300, grad_clip=10.0),
        batch_size=512,
        steps=1500,
        ema_rates=(0.99, 0.999),
        log_every=50,
        checkpoint_every=500,
        eval_every=100,
    )


def _checker(objective: str) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(hidden=256, depth=4, time_embedding="raw", data_std=4.0 / math.sqrt(3.0)),
        objective=ObjectiveConfig(objective),
        data=DataConfig("checkerboard", {"variant": "realnvp"}),
        optim=OptimConfig(name="radam", lr=1e-3, schedule="sqrt", decay_start=2000, grad_clip=10.0),
        batch_size=2048,
        steps=4000,
        log_every=50,
        checkpoint_every=1000,
    )


def _gmm8(objective: str) -> TrainConfig:
    return dataclasses.replace(
        _checker(objective),
        model=ModelConfig(hidden=256, depth=4, time_embedding="raw", data_std=2.0),
        objective=ObjectiveConfig(objective, {"teacher": "data"}),
        data=DataConfig("eight_gaussians", {"radius": 2.0, "std": 0.1}),
    )


def needs_teacher(objective: object) -> bool:
    """True when the objective cannot run as configured because its ``teacher`` is missing: it
    declares ``requires_teacher`` (a class attribute of every objective) and its ``teacher`` is None.

    ``objective``: an objective instance or a name in ``workbench.losses.OBJECTIVES``. Reads the
    declaration only; nothing is evaluated.
    """
    if isinstance(objective, str):
        from ..losses import OBJECTIVES

        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be an objective or one of {sorted(OBJECTIVES)}, got {objective!r}")
        objective = OBJECTIVES[objective]
    return bool(getattr(objective, "requires_teacher", False)) and getattr(objective, "teacher", None) is None


def get_presets() -> dict[str, Preset]:
    """All presets by name (the per-objective ones generated from ``OBJECTIVES``)."""
    out = {
        "gauss2d-lsd": Preset("gauss2d-lsd", "quick LSD on a 2-D Gaussian, flow-map error vs the closed form logged", _gauss2d("lsd")),
        "gauss2d-fm": Preset("gauss2d-fm", "flow matching on a 2-D Gaussian (diagonal only), oracle error logged", _gauss2d("fm")),
    }
    from ..losses import OBJECTIVES

    generated = {}
    for name, objective in OBJECTIVES.items():
        if needs_teacher(objective):
            generated[f"gmm8-{name}"] = Preset(f"gmm8-{name}", f"{name} on eight Gaussians, exact GMM flow as teacher", _gmm8(name))
        else:
            generated[f"checker-{name}"] = Preset(f"checker-{name}", f"{name} on B25's checkerboard (CPU-sized)", _checker(name))
    return out | dict(sorted(generated.items()))
