"""Training: configs, the loop with checkpoints and exact resume, EMA, optimiser, callbacks."""

from .build import build_model, build_objective, resolve_device
from .callbacks import Callback, StepRecord, TrainContext
from .checkpoint import list_checkpoints, load_checkpoint, load_latest, save_checkpoint
from .config import (
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    check_schedule,
    config_keys,
)
from .ema import EMA
from .metrics import MetricsLog, read_metrics, truncate_metrics
from .optim import clip_gradients, grad_stats, lr_at, make_optimizer, scheduled_value
from .trainer import Trainer, TrainResult, latest_step

__all__ = [
    "EMA",
    "Callback",
    "DataConfig",
    "MetricsLog",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "StepRecord",
    "TrainConfig",
    "TrainContext",
    "TrainResult",
    "Trainer",
    "apply_overrides",
    "build_model",
    "build_objective",
    "check_schedule",
    "clip_gradients",
    "config_keys",
    "grad_stats",
    "latest_step",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest",
    "lr_at",
    "make_optimizer",
    "read_metrics",
    "resolve_device",
    "save_checkpoint",
    "scheduled_value",
    "truncate_metrics",
]
