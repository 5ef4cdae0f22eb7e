"""Degenerate-solution detectors (K26 digest section 3, table D1-D9; analytic_flows.md section 5).

Every detector returns a :class:`DetectorReport` (name, fired, statistic, threshold, evidence).
The map-level detectors live in :mod:`.detectors_map`, the training-history ones in
:mod:`.detectors_history`, the shared report type and evaluation :class:`Probe` in
:mod:`.detectors_base`; this module gathers them and lists what each one needs.

| detector                  | K26 | needs                      | degeneracy                                        |
|---------------------------|-----|----------------------------|---------------------------------------------------|
| detect_identity           | D1  | reference or data          | identity / zero-velocity map                      |
| detect_boundary           | D4  | -                          | X_{t,t} != id (boundary lost)                     |
| detect_collapse           | D4  | reference or data          | collapse onto a constant / one trajectory         |
| detect_denoiser_collapse  | D2  | reference or data          | one-step map = posterior mean, shrunk samples     |
| detect_wrong_field        | D3  | reference                  | self-consistent flow of the wrong velocity        |
| detect_wrong_coupling     | -   | reference                  | right marginals, wrong coupling (Cholesky)        |
| detect_mode_averaging     | D5  | reference or data          | mass between modes / off the data support         |
| detect_step_inconsistency | D5  | -                          | N-step samples differ from one-step (semigroup)   |
| detect_time_oscillation   | D7  | -                          | high-frequency dependence on t                    |
| detect_noise_floor_stall  | D8  | reference and history      | loss at the noise floor, map still wrong          |
| detect_non_finite         | D9  | model and/or history       | NaN / inf outputs, losses, gradients, skips       |
| detect_grad_explosion     | D9  | history                    | gradient-norm spikes                              |
"""

from __future__ import annotations

from .detectors_base import DetectorReport, NonFiniteOutput, Probe
from .detectors_history import detect_grad_explosion, detect_noise_floor_stall, detect_non_finite
from .detectors_map import (
    detect_boundary,
    detect_collapse,
    detect_denoiser_collapse,
    detect_identity,
    detect_mode_averaging,
    detect_step_inconsistency,
    detect_time_oscillation,
    detect_wrong_coupling,
    detect_wrong_field,
    map_error,
)

#: detector name -> (function, K26 code, what it needs: a subset of {"samples", "reference", "history"})
DETECTORS = {
    "identity": (detect_identity, "D1", frozenset({"samples"})),
    "boundary": (detect_boundary, "D4", frozenset()),
    "collapse": (detect_collapse, "D4", frozenset({"samples"})),
    "denoiser_collapse": (detect_denoiser_collapse, "D2", frozenset({"samples"})),
    "wrong_field": (detect_wrong_field, "D3", frozenset({"reference"})),
    "wrong_coupling": (detect_wrong_coupling, "", frozenset({"reference"})),
    "mode_averaging": (detect_mode_averaging, "D5", frozenset({"samples"})),
    "step_inconsistency": (detect_step_inconsistency, "D5", frozenset()),
    "time_oscillation": (detect_time_oscillation, "D7", frozenset()),
    "noise_floor_stall": (detect_noise_floor_stall, "D8", frozenset({"reference", "history"})),
    "non_finite": (detect_non_finite, "D9", frozenset()),
    "grad_explosion": (detect_grad_explosion, "D9", frozenset({"history"})),
}

__all__ = [
    "DETECTORS",
    "DetectorReport",
    "NonFiniteOutput",
    "Probe",
    "detect_boundary",
    "detect_collapse",
    "detect_denoiser_collapse",
    "detect_grad_explosion",
    "detect_identity",
    "detect_mode_averaging",
    "detect_noise_floor_stall",
    "detect_non_finite",
    "detect_step_inconsistency",
    "detect_time_oscillation",
    "detect_wrong_coupling",
    "detect_wrong_field",
    "map_error",
]
