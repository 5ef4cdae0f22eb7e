"""Flow-map objectives: per-sample losses with named terms, the (s, t[, u]) samplers, forward-mode
derivatives with a finite-difference twin, and loss weightings.

``OBJECTIVES`` (``registry``) lists every objective; ``split`` holds the batch split they share
(``SplitConfig``, ``OffDiagonal``, ``evaluate_split``); the ``registry`` docstring says how to add
one."""

from .base import Objective, ObjectiveResult, TimeBatch
from .consistency import ConsistencyDistillation, ConsistencyTraining, ContinuousConsistencyTraining
from .derivatives import directional_derivative, flow_map_ds, flow_map_dt, flow_map_dx, total_derivative
from .distillation import EulerianMapDistillation, LagrangianMapDistillation, ProgressiveDistillation
from .flow_matching import FlowMatching
from .isd import ImprovedSelfDistillation
from .meanflow import MeanFlow
from .registry import OBJECTIVES
from .samplers import (
    BetaPair,
    DiscreteGapSampler,
    LogitNormalPair,
    Midpoint,
    UniformIntermediate,
    UniformTriangle,
    n_diagonal,
    sample_times,
)
from .self_distillation import EulerianSelfDistillation, LagrangianSelfDistillation, ProgressiveSelfDistillation
from .shortcut import Shortcut
from .split import OffDiagonal, SplitConfig, evaluate_split
from .weighting import Weighting, apply_weighting, gradient_weight

__all__ = [
    "OBJECTIVES",
    "BetaPair",
    "ConsistencyDistillation",
    "ConsistencyTraining",
    "ContinuousConsistencyTraining",
    "DiscreteGapSampler",
    "EulerianMapDistillation",
    "EulerianSelfDistillation",
    "FlowMatching",
    "ImprovedSelfDistillation",
    "LagrangianMapDistillation",
    "LagrangianSelfDistillation",
    "LogitNormalPair",
    "MeanFlow",
    "Midpoint",
    "Objective",
    "ObjectiveResult",
    "OffDiagonal",
    "ProgressiveDistillation",
    "ProgressiveSelfDistillation",
    "Shortcut",
    "SplitConfig",
    "TimeBatch",
    "UniformIntermediate",
    "UniformTriangle",
    "Weighting",
    "apply_weighting",
    "directional_derivative",
    "evaluate_split",
    "flow_map_ds",
    "flow_map_dt",
    "flow_map_dx",
    "gradient_weight",
    "n_diagonal",
    "sample_times",
    "total_derivative",
]
