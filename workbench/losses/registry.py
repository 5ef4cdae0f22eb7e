"""OBJECTIVES: name -> default-configured objective instance; the single source of truth for which
objectives exist (the command line, the presets, the benchmark and ``tests/test_objectives.py`` are
derived from it).

Customise with ``dataclasses.replace(OBJECTIVES[name], field=value, ...)``; the distillation
entries (``lmd``, ``emd``, ``pd``, ``cd``; ``requires_teacher`` is True) carry ``teacher=None`` and
raise a ValueError until a teacher is set (``dataclasses.replace(OBJECTIVES["lmd"], teacher=flow)``).
Defaults follow B25's released configs: linear interpolant, diag_fraction 0.75, (s, t) uniform on
the triangle, no weighting, LSD/PSD stop-gradient "convex", ESD "full".

Adding an objective: one file plus one line here.

1. Write ``workbench/losses/<name>.py`` with one frozen dataclass (see ``split`` for the pattern
   and ``self_distillation.LagrangianSelfDistillation`` for a short example):

   * fields with defaults: ``name`` first, then the split fields it uses (``interpolant``,
     ``diag_fraction``, ``sampler``, ``weighting``, ``method``, ``fd_eps``, ``time_weight``), a
     ``teacher`` if it distils, and its own options;
   * ``requires_teacher: ClassVar[bool]``;
   * ``__post_init__``: ``normalise_fields(self)`` (validates the split fields) and checks of its
     own fields (``check_choice``, ``check_positive``, ``check_teacher``);
   * ``split_config(self) -> SplitConfig``: ``SplitConfig.of(self)`` (with derived values, e.g. a
     sampler built from its fields, as keywords);
   * ``off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal``: its term over the
     off-diagonal samples (s, t (n,), x0, x1 (n, *event), n possibly 0), reported with
     ``.named("<term>")``; extra terms, diagnostics, an intermediate time u or a loss it weighs
     itself go into the returned ``OffDiagonal``;
   * ``__call__(self, model, x1, generator=None, *, x0=None, times=None)``:
     ``return evaluate_split(self, model, x1, generator, x0=x0, times=times)``.

2. Add ``"<name>": YourObjective(),`` to ``OBJECTIVES`` below (and, optionally, export the class
   from ``workbench.losses``). The contract tests in ``tests/test_objectives.py`` then run on it.
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
    # K26 code's large-model weighting: pseudo-Huber on the self-distillation term only. The
    # default "isd" (adaptive p = 1 on the sum) runs away on the checkerboard; see isd.py's docstring.
    "isd_huber": ImprovedSelfDistillation(name="isd_huber", weighting="pseudo_huber"),
}

__all__ = ["OBJECTIVES"]
