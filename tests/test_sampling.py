"""N-step flow-map sampling (workbench.sampling.sample_flow_map) against hand-computed trajectories."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.sampling import sample_flow_map


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
