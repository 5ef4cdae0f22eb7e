"""OBJECTIVES: name -> default-configured objective instance.

Customise with ``dataclasses.replace(OBJECTIVES[name], field=value, ...)``; the distillation
entries (``lmd``, ``emd``, ``pd``, ``cd``) carry ``teacher=None`` and raise a ValueError until a teacher is
set (``dataclasses.replace(OBJECTIVES["lmd"], teacher=flow)``).
Defaults follow B25's released configs: linear interpolant, diag_fraction 0.75, (s, t) uniform on
the triangle, no weighting, LSD/PSD stop-gradient "convex", ESD "full".
"""

from __future__ import annotations

from .consistency import ConsistencyDistillation, ConsistencyTraining, ContinuousConsistencyTraining
from .distillation import EulerianMapDistillation, LagrangianMapDistillation, ProgressiveDistillation
from .flow_matching import FlowMatching
from .isd import ImprovedSelfDistillation
from .meanflow import MeanFlow
from .samplers import UniformIntermediate
from .self_distillation import EulerianSelfDistillation, LagrangianSelfDistillation, ProgressiveSelfDistillation
from .shortcut import Shortcut

OBJECTIVES: dict[str, object] = {
    "fm": FlowMatching(),
    "lsd": LagrangianSelfDistillation(),
    "esd": EulerianSelfDistillation(),
    "psd_midpoint": ProgressiveSelfDistillation(name="psd_midpoint"),
    "psd_uniform": ProgressiveSelfDistillation(name="psd_uniform", intermediate=UniformIntermediate()),
    "lmd": LagrangianMapDistillation(),
    "emd": EulerianMapDistillation(),
    "pd": ProgressiveDistillation(),
    # consistency family, MeanFlow, shortcut and iSD (K26); "cd" needs a teacher like lmd/emd/pd
    "ct": ConsistencyTraining(),
    "cd": ConsistencyDistillation(),
    "scm": ContinuousConsistencyTraining(),
    "meanflow": MeanFlow(),
    "shortcut": Shortcut(),
    "isd": ImprovedSelfDistillation(),
    "isd_unstopped": ImprovedSelfDistillation(name="isd_unstopped", stop_tangent_gradient=False),
    # K26's released large-model weighting: pseudo-Huber on the self-distillation term only. The
    # default "isd" (adaptive p = 1 on the sum) runs away on the checkerboard; see isd.py's docstring.
    "isd_huber": ImprovedSelfDistillation(name="isd_huber", weighting="pseudo_huber"),
}

__all__ = ["OBJECTIVES"]
