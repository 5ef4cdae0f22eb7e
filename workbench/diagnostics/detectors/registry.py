"""The one registry of the degenerate-solution detectors, and everything derived from it.

:data:`DETECTOR_SPECS` lists every detector once, as a :class:`DetectorSpec` (name, function,
D-code, what it needs, level, what it detects), in the order :func:`workbench.diagnostics.diagnose`
runs them. Derived from it, never written by hand: :data:`DETECTORS`, :data:`MAP_DETECTORS`,
:data:`DETECTOR_FUNCTIONS` (and through it the ``detect_*`` exports of ``workbench.diagnostics``),
the dispatch of ``diagnose``, :func:`detector_table` and :func:`catalogue_markdown` (the text of
``docs/detectors.md``).

The level says how ``diagnose`` calls a detector (``probe`` is the shared
:class:`~workbench.diagnostics.detectors.base.Probe`, ``history`` the list of metric rows):

| level         | call                                                      | skipped when                    |
|---------------|-----------------------------------------------------------|---------------------------------|
| ``gate``      | ``function(model, history=, probe=, extra=)``, always, first | never                        |
| ``map``       | ``function(model, probe=)``                               | the model's outputs are non-finite |
| ``history``   | ``function(history)``                                     | no history                      |
| ``map+history`` | ``function(model, history=, probe=, floor=)``           | no history, or non-finite outputs |

``needs`` (a subset of {"samples", "reference", "history"}) says which inputs must be there:
samples of the data law (``data=`` or a reference), the reference flow, the training history.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .base import DetectorReport, Probe
from .history import detect_grad_explosion, detect_noise_floor_stall, detect_non_finite
from .maps import (
    detect_boundary,
    detect_collapse,
    detect_denoiser_collapse,
    detect_identity,
    detect_mode_averaging,
    detect_step_inconsistency,
    detect_time_oscillation,
    detect_wrong_coupling,
    detect_wrong_field,
)

#: the degenerate solutions of flow-map training, by code: (short name, what goes wrong). The codes
#: are this project's names for the failure modes K26 analyses (Kim, Kim, Kim, Park 2026).
CODES: dict[str, tuple[str, str]] = {
    "D1": ("identity / zero-velocity map",
           "X_{s,t} = id (the average velocity is 0): an exact fixed point of every self-distillation and "
           "consistency loss, since the semigroup holds trivially. A zero-initialised model starts there and "
           "only the diagonal flow-matching term pushes it away."),
    "D2": ("mean / denoiser collapse",
           "the one-step map learns the posterior mean D_s(x) = E[x1 | I_s = x], the L2 minimiser of a "
           "large-step target, instead of the flow map: samples shrink towards the mean and fall between modes."),
    "D3": ("consistent flow map of the wrong field",
           "the semigroup and the Eulerian equation hold, but the diagonal (the tangent v_{t,t}) is not the "
           "probability-flow velocity b_t: the off-diagonal faithfully integrates a wrong field."),
    "D4": ("boundary lost / trivial solution",
           "without the boundary condition X_{t,t} = id, a constant or a single trajectory satisfies "
           "self-consistency: the between-sample variance of X_{s,t}(x_s) collapses."),
    "D5": ("mode averaging / blurring",
           "discretisation bias or target noise put mass between the modes; a correct flow map does not "
           "change with the number of sampling steps, a blurred one does."),
    "D6": ("multimodality loss in policies",
           "one-step policies average the modes of the action distribution; D2 / D5 in action space. No "
           "detector yet: it needs conditional (policy) models."),
    "D7": ("time-oscillatory map",
           "high-frequency dependence on t makes d/dt X dominate the tangent and the gradients."),
    "D8": ("stalled at the noise floor",
           "the diagonal loss reaches the irreducible variance of the conditional-velocity target while the "
           "map is still wrong."),
    "D9": ("divergence / NaN",
           "exploding gradients ending in non-finite losses, gradients, weights or outputs."),
}

LEVELS = ("gate", "map", "history", "map+history")
NEEDS = frozenset({"samples", "reference", "history"})
_NEEDS_WORDS = {"samples": "reference or data", "reference": "reference", "history": "history"}


@dataclass(frozen=True)
class DetectorSpec:
    """One registered detector.

    name: the report name (``function`` must be called ``detect_<name>``); function: the detector;
    code: a key of :data:`CODES` ("" for a detector outside the catalogue); needs: a subset of
    {"samples", "reference", "history"} (module docstring); level: "gate", "map", "history" or
    "map+history" (how ``diagnose`` calls it, module docstring); detects: the degeneracy in a few words.
    """

    name: str
    function: Callable[..., DetectorReport]
    code: str
    needs: frozenset[str]
    level: str
    detects: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"name must be a snake_case str, got {self.name!r}")
        if not callable(self.function) or getattr(self.function, "__name__", None) != f"detect_{self.name}":
            raise ValueError(f"function of detector {self.name!r} must be a function named detect_{self.name}, "
                             f"got {self.function!r}")
        if self.code != "" and self.code not in CODES:
            raise ValueError(f"code of detector {self.name!r} must be one of {sorted(CODES)} or '', got {self.code!r}")
        if not isinstance(self.needs, frozenset) or not self.needs <= NEEDS:
            raise ValueError(f"needs of detector {self.name!r} must be a frozenset of {sorted(NEEDS)}, got {self.needs!r}")
        if self.level not in LEVELS:
            raise ValueError(f"level of detector {self.name!r} must be one of {LEVELS}, got {self.level!r}")
        if self.level in ("history", "map+history") and "history" not in self.needs:
            raise ValueError(f"detector {self.name!r} of level {self.level!r} must list 'history' in needs")
        if not isinstance(self.detects, str) or not self.detects:
            raise ValueError(f"detects of detector {self.name!r} must say what it detects")

    @property
    def evaluates_model(self) -> bool:
        """Whether the detector evaluates the model (skipped by ``diagnose`` when its outputs are non-finite)."""
        return self.level in ("map", "map+history")

    def applies(self, *, samples: bool, reference: bool, history: bool) -> bool:
        """Whether every input in ``needs`` is available."""
        have = {"samples": samples, "reference": reference, "history": history}
        return all(have[k] for k in self.needs)

    def run(self, model: object, *, probe: Probe, history: Sequence[Mapping[str, object]] | None = None,
            floor: float | None = None, extra: Sequence[str] = ()) -> DetectorReport:
        """Call the detector by its level's convention (module docstring)."""
        if self.level == "gate":
            return self.function(model, history=history, probe=probe, extra=extra)
        if self.level == "map":
            return self.function(model, probe=probe)
        if self.level == "history":
            return self.function(history)
        return self.function(model, history=history, probe=probe, floor=floor)


def _spec(name: str, function: Callable[..., DetectorReport], code: str, needs: Sequence[str], level: str,
          detects: str) -> DetectorSpec:
    return DetectorSpec(name, function, code, frozenset(needs), level, detects)


#: every detector, in the order ``diagnose`` runs them: ADD A DETECTOR HERE (one line)
DETECTOR_SPECS: tuple[DetectorSpec, ...] = (
    _spec("non_finite", detect_non_finite, "D9", (), "gate", "NaN / inf outputs, losses, gradients, skipped steps"),
    _spec("identity", detect_identity, "D1", ("samples",), "map", "identity / zero-velocity map"),
    _spec("boundary", detect_boundary, "D4", (), "map", "X_{t,t} != id (boundary lost)"),
    _spec("collapse", detect_collapse, "D4", ("samples",), "map", "collapse onto a constant / one trajectory"),
    _spec("denoiser_collapse", detect_denoiser_collapse, "D2", ("samples",), "map",
          "one-step map = posterior mean, shrunk samples"),
    _spec("wrong_field", detect_wrong_field, "D3", ("reference",), "map", "self-consistent flow of the wrong velocity"),
    _spec("wrong_coupling", detect_wrong_coupling, "", ("reference",), "map",
          "right marginals, wrong coupling (e.g. a Cholesky transport)"),
    _spec("mode_averaging", detect_mode_averaging, "D5", ("samples",), "map", "mass between modes / off the data support"),
    _spec("step_inconsistency", detect_step_inconsistency, "D5", (), "map",
          "N-step samples differ from one-step samples (semigroup)"),
    _spec("time_oscillation", detect_time_oscillation, "D7", (), "map", "high-frequency dependence on t"),
    _spec("grad_explosion", detect_grad_explosion, "D9", ("history",), "history", "gradient-norm spikes"),
    _spec("noise_floor_stall", detect_noise_floor_stall, "D8", ("reference", "history"), "map+history",
          "loss at the noise floor, map still wrong"),
)


def _check_registry(specs: Sequence[DetectorSpec]) -> None:
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"detector names must be unique, repeated: {dup}")
    gates = [s.name for s in specs if s.level == "gate"]
    if len(gates) != 1:
        raise ValueError(f"exactly one detector must have level 'gate', got {gates}")


_check_registry(DETECTOR_SPECS)

#: name -> DetectorSpec
SPECS_BY_NAME: dict[str, DetectorSpec] = {s.name: s for s in DETECTOR_SPECS}
#: detector name -> (function, code, needs): the registry as name-keyed tuples
DETECTORS: dict[str, tuple[Callable[..., DetectorReport], str, frozenset[str]]] = {
    s.name: (s.function, s.code, s.needs) for s in DETECTOR_SPECS}
#: the map-level detectors, in the order ``diagnose`` runs them
MAP_DETECTORS: tuple[str, ...] = tuple(s.name for s in DETECTOR_SPECS if s.level == "map")
#: function name (``detect_<name>``) -> function, for the package exports
DETECTOR_FUNCTIONS: dict[str, Callable[..., DetectorReport]] = {s.function.__name__: s.function for s in DETECTOR_SPECS}


# -- the catalogue -------------------------------------------------------------------------------------
def _table(rows: Sequence[Sequence[str]]) -> str:
    """A markdown table; a ``|`` inside a cell (e.g. E[x1 | I_s = x]) is escaped."""
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows)


def _needs_words(spec: DetectorSpec) -> str:
    if spec.level == "gate":
        return "model and/or history"
    return " and ".join(_NEEDS_WORDS[k] for k in ("samples", "reference", "history") if k in spec.needs) or "-"


def detector_table(specs: Sequence[DetectorSpec] = DETECTOR_SPECS) -> str:
    """Markdown table of the detectors: name, code, level, needs, what it detects."""
    rows = [("detector", "code", "level", "needs", "detects"), ("---",) * 5]
    rows += [(f"`{s.name}`", s.code or "-", s.level, _needs_words(s), s.detects) for s in specs]
    return _table(rows)


def code_table(specs: Sequence[DetectorSpec] = DETECTOR_SPECS) -> str:
    """Markdown table of the codes D1-D9: the failure mode, what goes wrong, the detectors for it."""
    rows = [("code", "failure mode", "what goes wrong", "detectors"), ("---",) * 4]
    for code, (title, text) in CODES.items():
        names = ", ".join(f"`{s.name}`" for s in specs if s.code == code) or "none yet"
        rows.append((code, title, text, names))
    return _table(rows)


def _markdown_docstring(fn: Callable) -> str:
    """A function's docstring as markdown: Sphinx roles and double backticks become code spans."""
    text = inspect.cleandoc(fn.__doc__ or "")
    text = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([\w]+)`", r"`\1`", text)
    return text.replace("``", "`")


def catalogue_markdown(specs: Sequence[DetectorSpec] = DETECTOR_SPECS) -> str:
    """The text of ``docs/detectors.md``: the codes, the detector table and each detector's docstring."""
    out = [
        "# Degenerate-solution detectors",
        "",
        "<!-- Generated from the registry in workbench/diagnostics/detectors/registry.py by",
        "     `python -m workbench.diagnostics.detectors > docs/detectors.md`; do not edit by hand",
        "     (tests/test_detectors.py fails when this file and the registry disagree). -->",
        "",
        "Flow-map objectives have fixed points that are not the flow. K26 (Kim, Kim, Kim, Park 2026)",
        "analyses how training stability and convergence give rise to such degenerate solutions; the",
        "codes D1-D9 below are this project's names for them. Each detector answers one question about",
        "a flow-map model with a `DetectorReport`: a scale-free statistic, the threshold it is compared",
        "with, whether it fired and the evidence in words. `workbench.diagnostics.diagnose(model,",
        "reference=..., data=..., history=...)` runs every detector that its inputs allow.",
        "",
        "## The failure modes",
        "",
        code_table(specs),
        "",
        "## The detectors",
        "",
        "In the order `diagnose` runs them. Levels: `gate` runs first and always (when the model returns",
        "non-finite values, the detectors that evaluate it are skipped); `map` evaluates the flow map on a",
        "shared `Probe`; `history` reads the training metrics (as logged in the run's metrics file);",
        "`map+history` does both. Needs: `reference or data` = samples of the data law, `reference` = the",
        "analytic flow the model should match.",
        "",
        detector_table(specs),
        "",
    ]
    for s in specs:
        title = f"### `{s.name}`" + (f" ({s.code})" if s.code else "")
        out += [title, "", f"`workbench.diagnostics.{s.function.__name__}`, level `{s.level}`.", "",
                _markdown_docstring(s.function), ""]
    out += [
        "## Adding a detector",
        "",
        "1. Write `detect_<name>(...) -> DetectorReport` in `workbench/diagnostics/detectors/maps.py`",
        "   (evaluates the map; called as `detect_<name>(model, probe=probe)`) or `history.py` (reads the",
        "   history; called as `detect_<name>(history)`).",
        "2. Add one `_spec(...)` line to `DETECTOR_SPECS` in `workbench/diagnostics/detectors/registry.py`.",
        "3. Regenerate this file: `python -m workbench.diagnostics.detectors > docs/detectors.md`.",
        "",
    ]
    return "\n".join(out)
