"""Degenerate-solution detectors: each FIRES on its constructed degenerate map and stays QUIET on the
exact map, in 1-D (mixture1d), 2-D (gaussian_2d; gmm_8 for modes) and 5-D (gaussian_5d; a 5-D
mixture for modes). Degenerate maps come from workbench.flows.degenerate (closed forms) plus three
constructions of this file: a mode-averaging blend of the flow with the denoiser step, a 1-D
"quantile rotation" (right marginals, wrong coupling) and a NaN map. Where a statistic has a closed
form it is checked against an independent computation (numpy / exact algebra / Monte Carlo).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from workbench.diagnostics import (
    DETECTOR_SPECS,
    DETECTORS,
    MAP_DETECTORS,
    DetectorReport,
    DetectorSpec,
    Probe,
    detect_boundary,
    detect_collapse,
    detect_denoiser_collapse,
    detect_grad_explosion,
    detect_identity,
    detect_mode_averaging,
    detect_noise_floor_stall,
    detect_non_finite,
    detect_step_inconsistency,
    detect_time_oscillation,
    detect_wrong_coupling,
    detect_wrong_field,
    diagnose,
    energy_distance,
)
from workbench.diagnostics.detectors import CODES, SPECS_BY_NAME, catalogue_markdown, detector_table
from workbench.flows import GaussianMixtureFlow, make_flow
from workbench.flows import degenerate as dg
from workbench.flows.base import DATA_END_MARGIN, data_end_time
from workbench.models import ExactFlowMap

F64 = torch.float64
N = 256


# -- constructions ----------------------------------------------------------------------------------
class Blend(torch.nn.Module):
    """(1 - lam) X*_{s,t} + lam X^den_{s,t}: the flow pulled towards the denoiser step (mode averaging).

    X^den_{0,1} = E[x1], so one-step samples are the true ones shrunk by (1 - lam) towards the mean.
    Both pieces have the exact tangent b_s, so the blend's diagonal is b_s too.
    """

    def __init__(self, flow, lam: float = 0.6) -> None:
        super().__init__()
        self.flow, self.lam, self.dim = flow, lam, flow.dim
        self.den = dg.denoiser_step(flow)

    def flow_map(self, s, t, x):
        return (1 - self.lam) * self.flow.flow_map(s, t, x) + self.lam * self.den.flow_map(s, t, x)

    def velocity(self, t, x):
        return self.flow.velocity(t, x)


class QuantileRotation(torch.nn.Module):
    """1-D X_{s,t}(x) = F_t^{-1}((F_s(x) + c (t - s)) mod 1): X_tt = id, semigroup and every marginal
    p_t exact (a shifted uniform mod 1 is uniform), but the coupling is not the monotone flow."""

    def __init__(self, flow, c: float = 0.3) -> None:
        super().__init__()
        self.flow, self.c, self.dim = flow, c, 1

    def _t(self, t, x):
        t = torch.as_tensor(t, dtype=x.dtype)
        return t.expand(x.shape[0]) if t.ndim == 0 else t

    def cdf(self, t, x):
        return torch.exp(self.flow.log_cdf(t, x)[0])

    def flow_map(self, s, t, x):
        s, t = self._t(s, x), self._t(t, x)
        u = torch.remainder(self.cdf(s, x) + self.c * (t - s), 1.0)
        lo, hi = torch.full_like(u, -30.0), torch.full_like(u, 30.0)
        for _ in range(80):  # bisection for F_t(y) = u
            mid = 0.5 * (lo + hi)
            below = self.cdf(t, mid[:, None]) < u
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (0.5 * (lo + hi))[:, None]

    def velocity(self, t, x):
        t = self._t(t, x)
        return self.flow.velocity(t, x) + self.c / torch.exp(self.flow.log_prob(t, x))[:, None]


class NaNMap(torch.nn.Module):
    """A diverged model: one NaN weight poisons every output."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.w = torch.nn.Parameter(torch.tensor(float("nan"), dtype=F64))

    def flow_map(self, s, t, x):
        return x + self.w * x

    def velocity(self, t, x):
        return self.w * x


def gmm5() -> GaussianMixtureFlow:
    means = [[-1.5, 0.5, 0.0, 0.0, 0.0], [1.5, -0.5, 0.0, 0.0, 0.0]]
    return GaussianMixtureFlow([0.4, 0.6], means, [(0.1 * torch.eye(5)).tolist()] * 2)


FLOWS = {"1d": make_flow("mixture1d"), "2d": make_flow("gaussian_2d"), "5d": make_flow("gaussian_5d")}
MODES = {"1d": FLOWS["1d"], "2d": make_flow("gmm_8"), "5d": gmm5()}
MIX1D_MEAN = [0.3 * -1.5 + 0.7 * 1.0]  # data mean of the registry's mixture1d
_PROBES: dict[tuple[str, str], Probe] = {}


def probe(dim: str, kind: str = "flow") -> Probe:
    """One probe per reference, shared by all tests (the oracle is solved once per (s, t))."""
    if (dim, kind) not in _PROBES:
        flow = (FLOWS if kind == "flow" else MODES)[dim]
        _PROBES[(dim, kind)] = Probe(flow.dim, reference=flow, n=N, generator=torch.Generator().manual_seed(7))
    return _PROBES[(dim, kind)]


# detector -> (function, which reference, degenerate map per dimension)
CASES = {
    "identity": (detect_identity, "flow", lambda f, d: dg.identity_map(f)),
    "boundary": (detect_boundary, "flow", lambda f, d: dg.trajectory_collapse(f)),
    "collapse": (detect_collapse, "flow",
                 lambda f, d: dg.constant_collapse(f, MIX1D_MEAN if d == "1d" else None)),
    "denoiser_collapse": (detect_denoiser_collapse, "flow", lambda f, d: dg.denoiser_step(f)),
    "wrong_field": (detect_wrong_field, "flow",
                    lambda f, d: dg.time_warped_flow(f) if d == "1d" else dg.other_data_flow(f)),
    "wrong_coupling": (detect_wrong_coupling, "flow",
                       lambda f, d: QuantileRotation(f) if d == "1d" else dg.cholesky_transport(f)),
    # in 5-D a point 2.4 sd from its mode centre is typical (chi_5), so a 60% pull towards the mean leaves
    # the heavier mode's samples inside its support; an 80% pull moves both modes' samples off it
    "mode_averaging": (detect_mode_averaging, "modes", lambda f, d: Blend(f, 0.8 if d == "5d" else 0.6)),
    "step_inconsistency": (detect_step_inconsistency, "flow", lambda f, d: dg.euler_step(f)),
    "time_oscillation": (detect_time_oscillation, "flow", lambda f, d: dg.time_oscillation(f)),
}
GRID = [(name, d) for name in CASES for d in ("1d", "2d", "5d")]


def _flow(kind: str, d: str):
    return (FLOWS if kind == "flow" else MODES)[d]


@pytest.mark.parametrize("name,d", GRID)
def test_fires_on_its_degenerate_map(name, d):
    fn, kind, make = CASES[name]
    flow = _flow(kind, d)
    r = fn(make(flow, d), probe=probe(d, kind))
    assert isinstance(r, DetectorReport) and r.name == name
    assert r.fired, r.evidence
    assert math.isfinite(r.statistic)
    assert (r.statistic > r.threshold) if r.fires_above else (r.statistic < r.threshold)


@pytest.mark.parametrize("name,d", GRID)
def test_quiet_on_the_exact_map(name, d):
    fn, kind, _ = CASES[name]
    r = fn(ExactFlowMap(_flow(kind, d)), probe=probe(d, kind))
    assert not r.fired, r.evidence


@pytest.mark.parametrize("d", ["2d", "5d"])
def test_cholesky_is_invisible_to_sample_detectors(d):
    """Right marginals and boundary and semigroup intact: only the coupling detector sees the Cholesky map."""
    p, chol = probe(d), dg.cholesky_transport(FLOWS[d])
    assert detect_wrong_coupling(chol, probe=p).fired
    for fn in (detect_identity, detect_collapse, detect_denoiser_collapse, detect_mode_averaging,
               detect_step_inconsistency, detect_boundary):
        r = fn(chol, probe=p)
        assert not r.fired, (r.name, r.evidence)
    # and a sample metric agrees: its one-step samples match fresh data as well as the flow's do
    z = p.z
    data = FLOWS[d].sample_data(N, torch.Generator().manual_seed(3))
    e_chol = energy_distance(chol.flow_map(0.0, 1.0, z), data)
    e_true = energy_distance(FLOWS[d].flow_map(0.0, 1.0, z), data)
    assert e_chol < 2 * e_true + 0.01


def test_exact_statistics_of_the_trivial_cases():
    p = probe("2d")
    flow = FLOWS["2d"]
    assert detect_identity(dg.identity_map(flow), probe=p).statistic == 0.0
    assert detect_identity(ExactFlowMap(flow), probe=p).statistic == pytest.approx(1.0, abs=1e-12)
    assert detect_collapse(dg.constant_collapse(flow), probe=p).statistic == 0.0
    assert detect_boundary(ExactFlowMap(flow), probe=p).statistic < 1e-20


@pytest.mark.parametrize("lam", [0.3, 0.6])
def test_denoiser_share_of_a_blend_is_exact(lam):
    """X^ - D = (1 - lam)(X* - D) and X^ - X* = lam (D - X*) pointwise, so q = (1-lam)^2 / ((1-lam)^2 + lam^2)."""
    r = detect_denoiser_collapse(Blend(FLOWS["2d"], lam), probe=probe("2d"))
    assert r.statistic == pytest.approx((1 - lam) ** 2 / ((1 - lam) ** 2 + lam**2), rel=1e-9)
    assert r.fired == (lam > 0.5)


def test_wrong_field_statistic_matches_closed_form():
    """Gaussian: b_t(x) = m'_t + A_t (x - m_t), A_t = C'_t C_t^{-1} / 2 (symmetric root). With x_t ~ N(m_t, C_t)
    and the other flow's A'_t (diag Sigma, same mean): E|b' - b|^2 = tr((A' - A) C (A' - A)^T)."""
    mu = np.array([1.0, -1.0])
    S = np.array([[1.0, 0.6], [0.6, 0.5]])
    S2 = np.diag(np.diag(S))
    num = den = 0.0
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        a, da, b, db = 1 - t, -1.0, t, 1.0
        C = a * a * np.eye(2) + b * b * S
        A = 0.5 * (2 * a * da * np.eye(2) + 2 * b * db * S) @ np.linalg.inv(C)
        C2 = a * a * np.eye(2) + b * b * S2
        A2 = 0.5 * (2 * a * da * np.eye(2) + 2 * b * db * S2) @ np.linalg.inv(C2)
        num += np.trace((A2 - A) @ C @ (A2 - A).T)
        den += np.trace(A @ C @ A.T) + db**2 * mu @ mu
    r = detect_wrong_field(dg.other_data_flow(FLOWS["2d"]), probe=probe("2d"))
    assert r.statistic == pytest.approx(num / den, rel=0.25)  # n = 256 samples per time


def test_collapse_statistic_of_identity_matches_closed_form():
    """Identity: tr Cov(X_{s,t}(x_s)) / tr C_t = tr C_s / tr C_t, tr C_t = d (1-t)^2 + t^2 tr Sigma."""
    def tr_c(t):
        return 2 * (1 - t) ** 2 + t**2 * 1.5
    expected = min(tr_c(s) / tr_c(t) for s, t in ((0.0, 1.0), (0.0, 0.5), (0.3, 0.8), (0.5, 1.0)))
    r = detect_collapse(dg.identity_map(FLOWS["2d"]), probe=probe("2d"))
    assert r.statistic == pytest.approx(expected, rel=0.25)


# -- without a reference: data only -----------------------------------------------------------------
def test_data_only_detectors():
    g = torch.Generator().manual_seed(11)
    flow, modes = FLOWS["2d"], MODES["2d"]
    data = flow.sample_data(2 * N, g)
    exact = ExactFlowMap(flow)
    for fn in (detect_identity, detect_collapse, detect_denoiser_collapse, detect_mode_averaging, detect_boundary):
        r = fn(exact, data=data, n=N)
        assert not r.fired, (r.name, r.evidence)
    assert detect_identity(dg.identity_map(flow), data=data, n=N).fired
    const = dg.constant_collapse(flow)
    assert detect_collapse(const, data=data, n=N).fired
    assert detect_denoiser_collapse(const, data=data, n=N).fired
    mode_data = modes.sample_data(2 * N, g)
    assert detect_mode_averaging(Blend(modes), data=mode_data, n=N).fired
    assert not detect_mode_averaging(ExactFlowMap(modes), data=mode_data, n=N).fired


# -- history detectors ------------------------------------------------------------------------------
def _diag_fm_loss(model, flow, n=20_000, seed=5) -> float:
    """Monte Carlo E|v_t(I_t) - dI_t/dt|^2, t ~ U[0, 1], with the MODEL's diagonal (the loss it would log)."""
    g = torch.Generator().manual_seed(seed)
    x1 = flow.sample_data(n, g)
    x0 = torch.randn(x1.shape, generator=g, dtype=F64)
    t = torch.rand(n, generator=g, dtype=F64)[:, None]
    xt, dx = (1 - t) * x0 + t * x1, x1 - x0
    return float((model.velocity(t[:, 0], xt) - dx).pow(2).sum(1).mean())


def _history(level: float, decay: float, steps: int = 400, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"step": k, "terms/diag_fm": level * (1 + 2 * math.exp(-k / decay)) * (1 + 0.01 * rng.standard_normal())}
            for k in range(1, steps + 1)]


@pytest.mark.parametrize("d", ["1d", "2d", "5d"])
def test_noise_floor_stall(d):
    flow, p = FLOWS[d], probe(d)
    stuck = dg.denoiser_step(flow)  # exact diagonal (its loss IS the floor), wrong off-diagonal map
    level = _diag_fm_loss(stuck, flow)
    plateau = _history(level, decay=40.0)
    r = detect_noise_floor_stall(stuck, history=plateau, probe=p)
    assert r.fired, r.evidence
    assert r.statistic == pytest.approx(1.0, abs=0.1)  # the MC loss of the model vs theory's floor
    assert not detect_noise_floor_stall(ExactFlowMap(flow), history=plateau, probe=p).fired
    assert not detect_noise_floor_stall(stuck, history=_history(3 * level, decay=40.0), probe=p).fired
    assert not detect_noise_floor_stall(stuck, history=_history(level, decay=2000.0), probe=p).fired


def test_grad_explosion():
    rng = np.random.default_rng(1)
    g = [1.0 / math.sqrt(k) * (1 + 0.2 * rng.random()) for k in range(1, 301)]
    rows = [{"step": k + 1, "grad_norm": v} for k, v in enumerate(g)]
    assert not detect_grad_explosion(rows).fired
    g[200] *= 150.0
    rows[200]["grad_norm"] = g[200]
    r = detect_grad_explosion(rows)
    assert r.fired and "step 201" in r.evidence
    assert r.statistic == pytest.approx(g[200] / np.median(g[150:200]), rel=1e-12)
    short = detect_grad_explosion(rows[:5])
    assert not short.fired and math.isnan(short.statistic)


def test_non_finite():
    clean = [{"step": k, "loss": 1.0 / k, "grad_norm": 1.0, "n_nonfinite_grad": 0, "skipped": False} for k in range(1, 50)]
    assert not detect_non_finite(ExactFlowMap(FLOWS["2d"]), history=clean).fired
    bad = [dict(r) for r in clean]
    bad[7].update(loss=None, grad_norm=None, skipped=True)
    bad[9].update(n_nonfinite_grad=12, skipped=True)
    r = detect_non_finite(history=bad)
    assert r.fired and r.statistic == 4  # 1 non-finite loss, 1 step with bad gradients, 2 skipped updates
    assert "step 8" in r.evidence and "step 10" in r.evidence
    for d in ("1d", "2d", "5d"):
        r = detect_non_finite(NaNMap(FLOWS[d].dim), n=32)
        assert r.fired and r.statistic > 0, r.evidence


# -- interface --------------------------------------------------------------------------------------
def test_report_to_dict_is_json_safe():
    r = DetectorReport("x", False, math.nan, math.inf, "why", code="D1", fires_above=False)
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["statistic"] == "nan" and d["threshold"] == "inf" and d["code"] == "D1"


def test_bad_inputs():
    exact = ExactFlowMap(FLOWS["2d"])
    with pytest.raises(ValueError, match="reference= or data="):
        detect_identity(exact)
    with pytest.raises(ValueError, match="reference="):
        detect_wrong_field(exact)
    with pytest.raises(ValueError, match=r"data must have shape"):
        detect_collapse(exact, data=torch.zeros(10, 3, dtype=F64))
    with pytest.raises(ValueError, match="reference.dim"):
        detect_identity(exact, reference=FLOWS["1d"])
    with pytest.raises(TypeError, match="flow_map"):
        detect_boundary(object())
    with pytest.raises(TypeError, match="history"):
        detect_grad_explosion("metrics.jsonl")
    with pytest.raises(ValueError, match="history="):
        detect_noise_floor_stall(exact, reference=FLOWS["2d"])
    with pytest.raises(TypeError, match=r"reference must implement Flow .*lacks sample_data"):
        Probe(2, reference=ExactFlowMap(FLOWS["2d"]))
    with pytest.raises(TypeError, match="probe must be a Probe"):
        diagnose(exact, probe="probe")


def test_one_step_end_time_is_the_flows_data_end_time():
    """The probe's T is flows.base.data_end_time of the reference: 1 - DATA_END_MARGIN for data with
    atoms (singular at t = 1), 1 otherwise and without a reference."""
    for name in ("point_mass_2d", "rings", "gaussian_2d"):
        flow = make_flow(name)
        expected = 1.0 - DATA_END_MARGIN if flow.singular_at_data else 1.0
        assert Probe(flow.dim, reference=flow, n=8).T == data_end_time(flow) == expected
    assert Probe(2, data=torch.randn(8, 2, dtype=F64), n=4).T == 1.0


# -- the registry -----------------------------------------------------------------------------------
def test_every_registered_detector_is_listed_exported_and_reached_by_diagnose():
    import workbench.diagnostics as diagnostics
    import workbench.diagnostics.detectors as detectors

    names = [s.name for s in DETECTOR_SPECS]
    assert len(set(names)) == len(names) and list(DETECTORS) == names
    assert tuple(s.name for s in DETECTOR_SPECS if s.level == "map") == MAP_DETECTORS
    for spec in DETECTOR_SPECS:
        assert DETECTORS[spec.name] == (spec.function, spec.code, spec.needs)
        fn = spec.function.__name__
        assert fn == f"detect_{spec.name}"
        for package in (diagnostics, detectors):
            assert getattr(package, fn) is spec.function and fn in package.__all__, (package.__name__, fn)
        assert spec.code == "" or spec.code in CODES
    # with every input given, diagnose runs every registered detector, the gate first
    flow = FLOWS["2d"]
    history = [{"step": k, "loss": 1.0, "grad_norm": 1.0} for k in range(1, 40)]
    reports = diagnose(ExactFlowMap(flow), reference=flow, history=history, n=64)
    assert sorted(r.name for r in reports) == sorted(names)
    assert reports[0].name == next(s.name for s in DETECTOR_SPECS if s.level == "gate")
    assert [r.code for r in reports] == [SPECS_BY_NAME[r.name].code for r in reports]


def test_a_new_registry_line_is_all_diagnose_needs(monkeypatch):
    """Adding a detector is one function plus one registry line: diagnose dispatches from the registry."""
    import sys

    from workbench.diagnostics.detectors.base import report

    calls = []

    def detect_always(model, *, probe=None):
        calls.append(probe)
        return report("always", "D7", 1.0, 0.5, True, "registered for the test")

    spec = DetectorSpec("always", detect_always, "D7", frozenset(), "map", "a test detector")
    module = sys.modules["workbench.diagnostics.diagnose"]
    monkeypatch.setattr(module, "DETECTOR_SPECS", (*module.DETECTOR_SPECS, spec))
    reports = diagnose(ExactFlowMap(FLOWS["2d"]), n=32)
    assert reports[-1].name == "always" and reports[-1].fired and len(calls) == 1
    assert isinstance(calls[0], Probe)


@pytest.mark.parametrize("change, message", [
    ({"function": detect_boundary}, "named detect_x"),
    ({"code": "D10"}, "code"),
    ({"needs": frozenset({"teacher"})}, "needs"),
    ({"level": "step"}, "level"),
    ({"level": "history"}, "'history' in needs"),
    ({"detects": ""}, "detects"),
    ({"name": "Bad Name"}, "snake_case"),
])
def test_detector_spec_refuses_malformed_entries(change, message):
    def detect_x(model, *, probe=None):
        return None

    fields = {"name": "x", "function": detect_x, "code": "D1", "needs": frozenset(), "level": "map", "detects": "x"}
    with pytest.raises(ValueError, match=message):
        DetectorSpec(**{**fields, **change})


def test_catalogue_in_docs_matches_the_registry():
    """docs/detectors.md is generated from the registry (python -m workbench.diagnostics.detectors) and
    cannot drift from it: every code D1-D9, every detector with its code and its docstring."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "detectors.md"
    text = catalogue_markdown()
    assert path.read_text(encoding="utf-8") == text, (
        "docs/detectors.md is out of date: run `python -m workbench.diagnostics.detectors > docs/detectors.md`")
    assert list(CODES) == [f"D{k}" for k in range(1, 10)]
    for code in CODES:
        assert f"\n| {code} | " in text
    for spec in DETECTOR_SPECS:
        assert f"| `{spec.name}` | {spec.code or '-'} | {spec.level} |" in detector_table()
        assert spec.function.__doc__.strip().splitlines()[0].replace("``", "`") in text
