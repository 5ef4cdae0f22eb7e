"""diagnose(): runs exactly the detectors its inputs allow, returns the right set of fired detectors on the
constructed degenerate maps of workbench.flows.degenerate and none on the exact map, in 1-D, 2-D and 5-D;
format_diagnosis names what fired."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from workbench.diagnostics import MAP_DETECTORS, Probe, diagnose, diagnosis_dict, format_diagnosis
from workbench.flows import degenerate_maps, make_flow
from workbench.models import ExactFlowMap

F64 = torch.float64
N = 256
ALL_MAP = set(MAP_DETECTORS)
SAMPLE_ONLY = {"identity", "boundary", "collapse", "denoiser_collapse", "mode_averaging", "step_inconsistency",
               "time_oscillation"}
MODEL_ONLY = {"boundary", "step_inconsistency", "time_oscillation"}

# what the physics of each constructed degenerate map says must fire (and nothing else), on gaussian_2d / gaussian_5d
EXPECTED = {
    "identity": {"identity", "wrong_field", "mode_averaging"},  # the flow of b = 0, samples stay noise
    "trajectory_collapse": {"boundary", "collapse", "denoiser_collapse"},
    "constant_collapse": {"boundary", "collapse", "denoiser_collapse"},
    "cholesky_transport": {"wrong_coupling", "wrong_field"},  # right marginals: no sample detector
    "wrong_schedule": {"wrong_field"},
    "other_data_flow": {"wrong_field"},  # (+ mode_averaging where the law visibly differs)
    "mean_shift": {"wrong_field", "mode_averaging"},
    "euler_step": {"collapse", "denoiser_collapse", "step_inconsistency"},  # X_{0,1} = mu
    "denoiser_step": {"collapse", "denoiser_collapse", "step_inconsistency"},
    "time_oscillation": {"time_oscillation", "wrong_field"},
    "time_warped_flow": {"wrong_field"},
}
MAY_ALSO = {"other_data_flow": {"mode_averaging"}}


class NaNMap(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.w = torch.nn.Parameter(torch.tensor(float("nan"), dtype=F64))

    def flow_map(self, s, t, x):
        return x * self.w

    def velocity(self, t, x):
        return x * self.w


def fired(reports) -> set[str]:
    return {r.name for r in reports if r.fired}


def test_signature_contract():
    sig = inspect.signature(diagnose)
    for name in ("reference", "data", "history", "generator", "n"):
        assert sig.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert sig.parameters[name].default is not inspect.Parameter.empty


@pytest.mark.parametrize("name", ["mixture1d", "gmm_3", "gaussian_5d"])
def test_exact_map_is_clean(name):
    flow = make_flow(name)
    reports = diagnose(ExactFlowMap(flow), reference=flow, n=N)
    assert {r.name for r in reports} == ALL_MAP | {"non_finite"}
    assert fired(reports) == set(), format_diagnosis(reports)
    text = format_diagnosis(reports)
    assert "no degeneracy detected" in text


@pytest.mark.parametrize("dim_name", ["gaussian_2d", "gaussian_5d"])
def test_degenerate_maps_get_their_diagnosis(dim_name):
    flow = make_flow(dim_name)
    probe = Probe(flow.dim, reference=flow, n=N, generator=torch.Generator().manual_seed(2))
    for name, model in degenerate_maps(flow).items():
        got = fired(diagnose(model, probe=probe))
        assert EXPECTED[name] <= got <= EXPECTED[name] | MAY_ALSO.get(name, set()), (name, got)


def test_one_dimensional_degenerate_maps():
    flow = make_flow("mixture1d")
    maps = degenerate_maps(flow)
    probe = Probe(1, reference=flow, n=N, generator=torch.Generator().manual_seed(2))
    assert {"identity", "wrong_field"} <= fired(diagnose(maps["identity"], probe=probe))
    assert {"collapse", "denoiser_collapse", "step_inconsistency"} <= fired(diagnose(maps["denoiser_step"], probe=probe))
    assert {"time_oscillation"} <= fired(diagnose(maps["time_oscillation"], probe=probe))
    assert fired(diagnose(maps["time_warped_flow"], probe=probe)) == {"wrong_field"}


def test_runs_what_the_inputs_allow():
    flow = make_flow("gaussian_2d")
    ident = degenerate_maps(flow)["identity"]
    # nothing but the model: detectors that need no samples
    only = diagnose(ident, n=N)
    assert {r.name for r in only} == MODEL_ONLY | {"non_finite"}
    # data only: the sample-based ones, not the oracle-based ones
    data = flow.sample_data(2 * N, torch.Generator().manual_seed(4))
    reports = diagnose(ident, data=data, n=N)
    assert {r.name for r in reports} == SAMPLE_ONLY | {"non_finite"}
    assert "identity" in fired(reports)
    # history adds grad_explosion, and with a reference the noise-floor detector
    history = [{"step": k, "loss": 1.0, "grad_norm": 1.0 + 0.01 * (k % 3)} for k in range(1, 40)]
    history[30]["grad_norm"] = 500.0
    reports = diagnose(ident, reference=flow, history=history, n=N)
    assert {r.name for r in reports} == ALL_MAP | {"non_finite", "grad_explosion", "noise_floor_stall"}
    assert "grad_explosion" in fired(reports)
    assert reports[0].name == "non_finite"


def test_non_finite_model_skips_map_detectors():
    history = [{"step": 1, "loss": None, "skipped": True}]
    reports = diagnose(NaNMap(2), reference=make_flow("gaussian_2d"), history=history, n=64)
    names = [r.name for r in reports]
    assert names[0] == "non_finite" and reports[0].fired
    assert not (set(names) & ALL_MAP)
    assert "skipped" in reports[0].evidence
    assert "non_finite" in format_diagnosis(reports)


def test_format_and_dict_name_the_fired_detectors():
    flow = make_flow("gaussian_2d")
    reports = diagnose(degenerate_maps(flow)["cholesky_transport"], reference=flow, n=N)
    text = format_diagnosis(reports)
    first = text.splitlines()[0]
    assert "2 of" in first and "wrong_coupling" in first and "wrong_field [D3]" in first
    assert text.count("FIRED") == 2
    d = diagnosis_dict(reports)
    assert sorted(d["fired"]) == ["wrong_coupling", "wrong_field"]
    assert all(isinstance(r["statistic"], (float, str)) for r in d["reports"])
    with pytest.raises(TypeError):
        format_diagnosis(["not a report"])


def test_reproducible_with_default_generator():
    flow = make_flow("gaussian_2d")
    model = degenerate_maps(flow)["time_warped_flow"]
    a = [r.statistic for r in diagnose(model, reference=flow, n=128)]
    b = [r.statistic for r in diagnose(model, reference=flow, n=128)]
    assert a == b and all(math.isfinite(v) for v in a)
