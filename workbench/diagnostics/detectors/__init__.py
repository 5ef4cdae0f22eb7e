"""Degenerate-solution detectors: is a flow-map model one of the degenerate solutions D1-D9?

Every detector returns a :class:`DetectorReport` (name, fired, statistic, threshold, evidence, code).
The catalogue (the codes D1-D9, what each means and the detectors for it, each detector's statistic
and threshold) is ``docs/detectors.md``, generated from the registry.

Modules:

* :mod:`.base`: the report type, the shared evaluation :class:`Probe` (cached oracle solves), the
  contract checks and the helpers every detector uses;
* :mod:`.maps`: the map-level detectors (they evaluate the flow map);
* :mod:`.history`: the history-level detectors (they read the training metrics);
* :mod:`.registry`: ONE :class:`DetectorSpec` per detector in :data:`DETECTOR_SPECS`, from which
  :data:`DETECTORS`, :data:`MAP_DETECTORS`, the ``detect_*`` exports of this package and of
  ``workbench.diagnostics``, the dispatch of :func:`workbench.diagnostics.diagnose` and the
  catalogue are derived.

Adding a detector is one function plus one registry line:

1. write ``detect_<name>(model, *, ..., probe=None) -> DetectorReport`` in :mod:`.maps` (``diagnose``
   calls it as ``detect_<name>(model, probe=probe)``) or ``detect_<name>(history, ...)`` in
   :mod:`.history` (called as ``detect_<name>(history)``);
2. add ``_spec("<name>", detect_<name>, "<code>", <needs>, "<level>", "<what it detects>")`` to
   ``DETECTOR_SPECS`` in :mod:`.registry`;
3. regenerate the catalogue, ``python -m workbench.diagnostics.detectors > docs/detectors.md`` (a
   test fails until the file matches the registry).
"""

from __future__ import annotations

from .base import DetectorReport, NonFiniteOutput, Probe
from .maps import map_error
from .registry import (
    CODES,
    DETECTOR_FUNCTIONS,
    DETECTOR_SPECS,
    DETECTORS,
    MAP_DETECTORS,
    SPECS_BY_NAME,
    DetectorSpec,
    catalogue_markdown,
    detector_table,
)

# the detect_* functions, one per registry entry
globals().update(DETECTOR_FUNCTIONS)

__all__ = [  # the static names, then the registry's detect_* functions
    "CODES",
    "DETECTORS",
    "DETECTOR_FUNCTIONS",
    "DETECTOR_SPECS",
    "MAP_DETECTORS",
    "SPECS_BY_NAME",
    "DetectorReport",
    "DetectorSpec",
    "NonFiniteOutput",
    "Probe",
    "catalogue_markdown",
    "detector_table",
    "map_error",
    *DETECTOR_FUNCTIONS,
]
