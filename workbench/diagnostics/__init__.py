"""Diagnostics: degenerate-solution detectors, ``diagnose``, sample metrics, theory references,
gradient statistics and trainer callbacks. Reaches into training only through callbacks (training
never imports diagnostics).

Entry point: ``diagnose(model, reference=flow, data=samples, history=rows) -> list[DetectorReport]``
and ``format_diagnosis(reports)``. The detectors live in the subpackage :mod:`.detectors`, listed
once in its registry (``DETECTOR_SPECS``); their catalogue with the codes D1-D9 is
``docs/detectors.md``. The cost of the per-step diagnostics is measured by
``python -m workbench.diagnostics.overhead``.
"""

from . import detectors as _detectors
from .callbacks import (
    DiagnosisCallback,
    FlowMapErrorCallback,
    PeriodicDiagnosticsCallback,
    TrainingSignalsCallback,
    resolve_reference,
)
from .detectors import (
    DETECTOR_SPECS,
    DETECTORS,
    MAP_DETECTORS,
    DetectorReport,
    DetectorSpec,
    NonFiniteOutput,
    Probe,
    map_error,
)
from .diagnose import diagnose, diagnosis_dict, format_diagnosis
from .gradients import (
    Bins,
    GradientReport,
    TermGradientStats,
    bin_by_gap,
    bin_by_times,
    count_nonfinite,
    global_norm,
    gradient_report,
    layer_norms,
    module_norms,
    nonfinite_by_parameter,
    parameter_gradients,
    per_sample_grad_norms,
    stored_gradients,
    term_gradient_stats,
)
from .live import LivePlot, LivePlotCallback, draw_metrics
from .metrics import (
    SAMPLE_METRICS,
    DiagonalAgreement,
    StepsQuality,
    energy_distance,
    histogram_kl,
    map_vs_own_ode,
    median_distance,
    mmd2,
    quality_vs_steps,
    rk4_flow,
    sliced_wasserstein2,
    wasserstein2,
)
from .theory import (
    MonteCarloEstimate,
    denoiser,
    denoiser_from_velocity,
    flow_matching_floor,
    flow_matching_floor_mc,
    mean_flow_matching_floor,
)

# the detect_* functions, one per registry entry (workbench.diagnostics.detectors.DETECTOR_FUNCTIONS)
globals().update(_detectors.DETECTOR_FUNCTIONS)

__all__ = [  # the static names, then the registry's detect_* functions
    "DETECTORS",
    "DETECTOR_SPECS",
    "MAP_DETECTORS",
    "SAMPLE_METRICS",
    "Bins",
    "DetectorReport",
    "DetectorSpec",
    "DiagnosisCallback",
    "DiagonalAgreement",
    "FlowMapErrorCallback",
    "GradientReport",
    "LivePlot",
    "LivePlotCallback",
    "MonteCarloEstimate",
    "NonFiniteOutput",
    "PeriodicDiagnosticsCallback",
    "Probe",
    "StepsQuality",
    "TermGradientStats",
    "TrainingSignalsCallback",
    "bin_by_gap",
    "bin_by_times",
    "count_nonfinite",
    "denoiser",
    "denoiser_from_velocity",
    "diagnose",
    "diagnosis_dict",
    "draw_metrics",
    "energy_distance",
    "flow_matching_floor",
    "flow_matching_floor_mc",
    "format_diagnosis",
    "global_norm",
    "gradient_report",
    "histogram_kl",
    "layer_norms",
    "map_error",
    "map_vs_own_ode",
    "mean_flow_matching_floor",
    "median_distance",
    "mmd2",
    "module_norms",
    "nonfinite_by_parameter",
    "parameter_gradients",
    "per_sample_grad_norms",
    "quality_vs_steps",
    "resolve_reference",
    "rk4_flow",
    "sliced_wasserstein2",
    "stored_gradients",
    "term_gradient_stats",
    "wasserstein2",
    *_detectors.DETECTOR_FUNCTIONS,
]
