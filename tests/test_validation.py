"""Bad input raises ValueError/TypeError naming the argument and the expectation; never a silent NaN."""

import math

import pytest
import torch

from workbench.flows import GaussianFlow, PointMassFlow
from workbench.flows.registry import FLOW_NAMES, make_flow

F64 = torch.float64


@pytest.fixture
def flow():
    return GaussianFlow([1.0, -1.0], [[1.0, 0.6], [0.6, 0.5]])


def test_non_finite_state_and_times(flow):
    x = torch.zeros(3, 2, dtype=F64)
    bad = x.clone()
    bad[1, 0] = math.nan
    with pytest.raises(ValueError, match="x contains 1 non-finite"):
        flow.flow_map(0.1, 0.5, bad)
    bad[1, 0] = math.inf
    with pytest.raises(ValueError, match="x contains 1 non-finite"):
        flow.velocity(0.1, bad)
    with pytest.raises(ValueError, match="t contains"):
        flow.flow_map(0.1, torch.tensor([0.1, math.nan, 0.2], dtype=F64), x)
    with pytest.raises(ValueError, match="s must lie in"):
        flow.flow_map(-0.1, 0.5, x)
    with pytest.raises(ValueError, match="t must lie in"):
        flow.velocity(1.5, x)


def test_shapes_and_dtypes(flow):
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\)"):
        flow.flow_map(0.1, 0.5, torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\)"):
        flow.flow_map(0.1, 0.5, torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match=r"t must be a float, a 0-d tensor or a \(3,\) tensor"):
        flow.flow_map(0.1, torch.zeros(4, dtype=F64), torch.zeros(3, 2, dtype=F64))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        flow.flow_map(0.1, 0.5, torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        flow.flow_map(0.1, 0.5, [[0.0, 0.0]])
    with pytest.raises(TypeError, match="t must be a float or a torch.Tensor"):
        flow.flow_map(0.1, "0.5", torch.zeros(3, 2, dtype=F64))


def test_invalid_parameters():
    with pytest.raises(ValueError, match="cov must be positive semi-definite"):
        GaussianFlow([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="cov must be symmetric"):
        GaussianFlow([0.0, 0.0], [[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"cov must have shape \(2, 2\)"):
        GaussianFlow([0.0, 0.0], [[1.0]])
    with pytest.raises(ValueError, match="mean must have 1 dimension"):
        GaussianFlow([[0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="a must be finite"):
        PointMassFlow([0.0, math.nan])
    with pytest.raises(TypeError, match="a must be array-like"):
        PointMassFlow("origin")
    with pytest.raises(ValueError, match="unknown flow"):
        make_flow("swiss_roll")
    with pytest.raises(ValueError, match="n must be a positive int"):
        GaussianFlow([0.0], [[1.0]]).sample_marginal(0.5, 0)


def test_singular_corner_is_refused_not_nan():
    pm = PointMassFlow([1.0, 2.0])
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="t = 1 is singular"):
        pm.velocity(1.0, x)
    with pytest.raises(ValueError, match="s = 1 is singular"):
        pm.flow_map(1.0, 0.5, x)
    # the forward map to t = 1 is fine: it lands on the atom
    torch.testing.assert_close(pm.flow_map(0.3, 1.0, x), torch.tensor([[1.0, 2.0]] * 2, dtype=F64))


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_every_registry_flow_validates_its_inputs(name):
    flow = make_flow(name)
    x = flow.sample_marginal(0.3, 4, torch.Generator().manual_seed(0))
    bad = x.clone()
    bad[0, 0] = math.nan
    for call in (lambda: flow.flow_map(0.1, 0.6, bad), lambda: flow.velocity(0.4, bad), lambda: flow.log_prob(0.4, bad)):
        with pytest.raises(ValueError, match="non-finite"):
            call()
    with pytest.raises(ValueError, match="must lie in"):
        flow.flow_map(0.1, 1.2, x)
