"""One call that runs every detector that applies: ``diagnose(model, reference=..., data=..., history=...)``.

The detectors and how each is called come from the registry
(:data:`workbench.diagnostics.detectors.DETECTOR_SPECS`; the catalogue is ``docs/detectors.md``):

* always: ``non_finite`` (D9, the gate), ``boundary`` (D4), ``step_inconsistency`` (D5),
  ``time_oscillation`` (D7);
* with ``data`` or ``reference`` (samples of the data law): ``identity`` (D1), ``collapse`` (D4),
  ``denoiser_collapse`` (D2), ``mode_averaging`` (D5);
* with ``reference`` (an analytic flow, the oracle): also ``wrong_field`` (D3) and ``wrong_coupling``,
  and the reference-based forms of D1 / D2;
* with ``history`` (metric dicts as in the run's metrics log): ``grad_explosion`` (D9), the history
  part of ``non_finite``, and with a reference too ``noise_floor_stall`` (D8).

If the model returns NaN / inf on the probe noise only ``non_finite`` and the history-only detectors
run (a statistic of a non-finite map means nothing). ``format_diagnosis`` renders the reports for
people, ``diagnosis_dict`` for JSON.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch

from .detectors.base import (
    DetectorReport,
    NonFiniteOutput,
    Probe,
    check_model_dim,
    evaluating,
    model_dtype_device,
    not_applicable,
)
from .detectors.history import nonfinite_outputs
from .detectors.registry import DETECTOR_SPECS


def diagnose(model: object, *, reference: object = None, data: torch.Tensor | None = None,
             history: Sequence[Mapping[str, object]] | None = None, generator: torch.Generator | None = None,
             n: int = 512, interpolant: object = None, floor: float | None = None,
             probe: Probe | None = None) -> list[DetectorReport]:
    """Run every detector that applies to what is given (module docstring) and return their reports.

    model: anything with ``flow_map(s, t, x)``, ``velocity(t, x)``, ``dim`` (a neural flow map, an
    ``ExactFlowMap``, an analytic flow, a constructed degenerate map); reference: the analytic flow
    the model should match; data: (m, dim) samples of the data law (used when there is no
    reference); history: training metrics (list of dicts); generator: source of every random draw
    (default: seeded 0, reproducible); n: points per evaluation set; interpolant: for marginals
    built from data without a reference (default linear); floor: the D8 loss floor (default: from
    the reference); probe: a prepared :class:`Probe` (shares cached oracle solves between calls;
    then reference / data / generator / n / interpolant are taken from it).
    Returns the gate ``non_finite`` first, then the other detectors in registry order (the map-level
    ones, then the history-level ones).
    """
    dim = check_model_dim(model)
    if probe is None:
        _, device = model_dtype_device(model)
        probe = Probe(dim, reference=reference, data=data, generator=generator, n=n, interpolant=interpolant,
                      device=device)
    elif not isinstance(probe, Probe):
        raise TypeError(f"probe must be a Probe, got {type(probe).__name__}")
    elif probe.dim != dim:
        raise ValueError(f"probe.dim {probe.dim} does not match the model's dim {dim}")
    bad, _ = nonfinite_outputs(model, probe)
    have = {"samples": probe.has_samples, "reference": probe.has_reference, "history": history is not None}
    gate = next(spec for spec in DETECTOR_SPECS if spec.level == "gate")
    reports: list[DetectorReport] = []
    extra: list[str] = []
    with evaluating(model):
        for spec in DETECTOR_SPECS:
            if spec is gate or not spec.applies(**have) or (bad and spec.evaluates_model):
                continue
            try:
                reports.append(spec.run(model, probe=probe, history=history, floor=floor))
            except NonFiniteOutput as err:
                extra.append(f"{spec.name}: {err}")
                reports.append(not_applicable(spec.name, spec.code, math.nan,
                                              f"the model returned non-finite values ({err})"))
    first = gate.run(model, probe=probe, history=history, extra=extra)
    if bad:
        first = dataclasses.replace(first, evidence=first.evidence + "; map-level detectors were skipped")
    return [first] + reports


def _num(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else str(v)


def format_diagnosis(reports: Sequence[DetectorReport], *, title: str = "Diagnosis") -> str:
    """A short human-readable diagnosis: which detectors fired with their evidence, then the quiet
    ones with their statistics, then those that did not apply."""
    reports = list(reports)
    for r in reports:
        if not isinstance(r, DetectorReport):
            raise TypeError(f"reports must be DetectorReport instances, got {type(r).__name__}")
    fired = [r for r in reports if r.fired]
    skipped = [r for r in reports if not r.fired and not math.isfinite(r.statistic)]
    quiet = [r for r in reports if not r.fired and math.isfinite(r.statistic)]

    def tag(r: DetectorReport) -> str:
        return f"{r.name} [{r.code}]" if r.code else r.name

    lines = []
    if fired:
        lines.append(f"{title}: {len(fired)} of {len(reports)} detectors fired: {', '.join(tag(r) for r in fired)}.")
        for r in fired:
            side = ">" if r.fires_above else "<"
            lines.append(f"- FIRED {tag(r)}: statistic {_num(r.statistic)} {side} {_num(r.threshold)}. {r.evidence}")
    else:
        lines.append(f"{title}: no degeneracy detected (0 of {len(reports)} detectors fired).")
    if quiet:
        lines.append("Quiet: " + ", ".join(f"{tag(r)} {_num(r.statistic)}" for r in quiet) + ".")
    if skipped:
        lines.append("Not evaluated: " + "; ".join(f"{tag(r)} ({r.evidence})" for r in skipped) + ".")
    return "\n".join(lines)


def diagnosis_dict(reports: Sequence[DetectorReport]) -> dict:
    """JSON-safe summary: {"fired": [names], "reports": [report dicts]}."""
    return {"fired": [r.name for r in reports if r.fired], "reports": [r.to_dict() for r in reports]}
