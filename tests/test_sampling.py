"""N-step flow-map sampling (workbench.sampling.sample_flow_map) against hand-computed trajectories."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.sampling import sample_flow_map


def _without_cuda(monkeypatch):
    """This machine as one without CUDA, whatever it has: the no-CUDA branch runs on every machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


class _BlowsUp:
    """X_{s,t}(x) = x + (t - s) for x[:, 0] <= 1, inf beyond: a map that overflows for some samples."""

    dim = 2

    def flow_map(self, s, t, x):
        y = x + (t - s)
        return torch.where(x[:, :1] > 1.0, torch.full_like(y, math.inf), y)


def test_on_nonfinite_nan_stops_only_the_samples_that_overflow():
    x0 = torch.tensor([[0.0, 0.0], [0.6, 0.0], [1.5, 0.0]], dtype=torch.float64)
    out = sample_flow_map(_BlowsUp(), x0, n_steps=4, on_nonfinite="nan")
    # sample 0 never passes 1 (its first coordinate goes 0 -> 1 in steps of 1/4): exactly x0 + 1
    assert torch.equal(out[0], x0[0] + 1.0)
    # sample 1 passes 1 after two steps (0.6 -> 1.1) and overflows at the third; sample 2 at the first
    assert bool(torch.isnan(out[1:]).all())
    # the default lets the overflow through to the caller (the model's own checks refuse it)
    assert bool(torch.isinf(sample_flow_map(_BlowsUp(), x0, n_steps=4)[1:]).any())


def test_on_nonfinite_is_validated():
    with pytest.raises(ValueError, match="on_nonfinite"):
        sample_flow_map(_BlowsUp(), torch.zeros(1, 2), n_steps=1, on_nonfinite="skip")


# -- sample(): dtype follows the model; every argument validated -------------------------------------------
def test_sample_dtype_defaults_to_the_models_and_refuses_a_mismatch():
    from workbench.models import make_mlp_flow_map
    from workbench.sampling import model_dtype, sample

    model = make_mlp_flow_map(2, hidden=8, depth=1)
    g = torch.Generator().manual_seed(0)
    assert model_dtype(model) == torch.float32 and sample(model, 4, generator=g).dtype == torch.float32
    assert sample(model.double(), 4, generator=g).dtype == torch.float64
    with pytest.raises(TypeError, match=r"dtype torch.float32 differs from the dtype torch.float64 the model computes in"):
        sample(model.double(), 4, dtype=torch.float32)
    model = model.float()
    with pytest.raises(TypeError, match=r"dtype torch.float64 differs"):
        sample(model, 8, dtype=torch.float64)
    # a model without parameters (an analytic flow) follows the requested dtype
    from workbench.flows.registry import make_flow

    assert sample(make_flow("gaussian_2d"), 3, dtype=torch.float64).dtype == torch.float64


def test_sample_and_time_grid_validate_their_arguments(monkeypatch):
    from workbench.models import make_mlp_flow_map
    from workbench.sampling import sample, time_grid

    model = make_mlp_flow_map(2, hidden=8, depth=1)
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator or None, got int; for a seed use"):
        sample(model, 4, generator=0)
    with pytest.raises(ValueError, match="device 'gpu0' is not a device torch knows"):
        sample(model, 4, device="gpu0")
    _without_cuda(monkeypatch)
    with pytest.raises(ValueError, match="device 'cuda' needs CUDA"):
        sample(model, 4, device="cuda")
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        sample(model, 4, n_steps=0)
    # time_grid(4, dtype=torch.int64) used to return [0, 0, 0, 0, 1]
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        time_grid(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="device 'gpu0'"):
        time_grid(4, device="gpu0")
    assert time_grid(4, dtype=torch.float32).dtype == torch.float32


@pytest.mark.gpu
def test_sample_on_cuda_where_there_is_cuda():
    from workbench.models import make_mlp_flow_map
    from workbench.sampling import sample

    model = make_mlp_flow_map(2, hidden=8, depth=1).to("cuda")
    assert sample(model, 4, device="cuda").device.type == "cuda"
