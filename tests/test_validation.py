"""Bad input raises ValueError/TypeError naming the argument and the expectation; never a silent NaN."""

import math

import pytest
import torch

from workbench.flows import GaussianFlow, PointMassFlow
from workbench.flows.registry import FLOW_NAMES, make_flow

F64 = torch.float64


def _without_cuda(monkeypatch):
    """This machine as one without CUDA, whatever it has: the no-CUDA branch runs on every machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


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


# -- arguments that were never validated -------------------------------------------------------------------
@pytest.mark.parametrize("name", FLOW_NAMES)
def test_samplers_validate_generator_dtype_and_device(name, monkeypatch):
    flow = make_flow(name)
    _without_cuda(monkeypatch)
    for call in (lambda **kw: flow.sample_marginal(0.5, 4, **kw), lambda **kw: flow.sample_data(4, **kw)):
        with pytest.raises(TypeError, match=r"generator must be a torch.Generator or None, got int; for a seed use torch.Generator\(\).manual_seed\(3\)"):
            call(generator=3)
        with pytest.raises(TypeError, match="dtype must be a floating dtype"):
            call(dtype=torch.int64)
        with pytest.raises(ValueError, match="device 'gpu0' is not a device torch knows"):
            call(device="gpu0")
        with pytest.raises(ValueError, match="device 'cuda' needs CUDA"):
            call(device="cuda")
        assert call(dtype=torch.float32, generator=torch.Generator().manual_seed(0)).dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.parametrize("name", FLOW_NAMES)
def test_samplers_sample_on_cuda_where_there_is_cuda(name):
    flow = make_flow(name)
    for call in (lambda **kw: flow.sample_marginal(0.5, 4, **kw), lambda **kw: flow.sample_data(4, **kw)):
        assert call(device="cuda").device.type == "cuda"


def test_pushforward_test_validates_its_generator():
    from workbench.flows import identities as idn

    flow = make_flow("gaussian_2d")
    x = flow.sample_marginal(0.1, 8, torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        idn.pushforward_test(flow, 0.1, 0.9, x, x, n_permutations=2, generator=1)
    with pytest.raises(TypeError, match=r"flow must implement Flow \(dim, flow_map, velocity\)"):
        idn.boundary_residual(object(), 0.5, x)


def test_make_flow_refuses_a_non_string_name():
    with pytest.raises(TypeError, match=r"name must be a str, one of point_mass_2d, .*; got list \['gmm_8'\]"):
        make_flow(["gmm_8"])


def test_time_range_is_checked_before_the_cast():
    """A time of 1e300 with float32 x used to overflow to inf in the cast and be reported as non-finite."""
    flow = make_flow("gaussian_2d")
    x = torch.zeros(2, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\], got max 1e\+300"):
        flow.flow_map(0.1, 1e300, x)
    with pytest.raises(ValueError, match=r"s must lie in \[0.0, 1.0\], got max 1e\+300"):
        flow.flow_map(torch.tensor(1e300, dtype=F64), 0.5, x)
    with pytest.raises(ValueError, match="t must lie in"):
        flow.velocity(torch.full((2,), -1e300, dtype=F64), x)


@pytest.mark.parametrize("name", ["mixture1d", "product_4"])
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_log_prob_is_computed_wide_and_returned_in_the_input_dtype(name, half):
    """torch has no log_ndtr below float32: log_prob (and log_cdf) run in float64 and cast back."""
    flow = make_flow(name)
    x = flow.sample_marginal(0.5, 16, torch.Generator().manual_seed(0)).to(half)
    out = flow.log_prob(0.5, x)
    ref = flow.log_prob(0.5, x.to(F64))
    assert out.dtype == half
    # the product's frame Q^T (x - beta c) is formed in the input's precision, hence a few of its eps
    tol = 16 * torch.finfo(half).eps
    assert float(((out.to(F64) - ref).abs() / (1 + ref.abs())).max()) <= tol
    if name == "mixture1d":
        log_F, log_S = flow.log_cdf(0.5, x)
        assert log_F.dtype == log_S.dtype == half


def test_device_arguments_of_the_entry_helpers():
    from workbench.core import choose_device, make_generator
    from workbench.data import EightGaussians

    for bad in ("gpu0", "cuda:99"):
        with pytest.raises(ValueError, match="device"):
            choose_device(bad)
        with pytest.raises(ValueError, match="device"):
            make_generator(0, bad)
    assert choose_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        make_generator(-1)
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        EightGaussians().means(torch.int64)
    with pytest.raises(ValueError, match="device 'gpu0'"):
        EightGaussians().means(device="gpu0")


def test_model_dtype_is_the_one_answer():
    """A model's own ``dtype`` wins (None included), else its first floating parameter's, else None."""
    from workbench.core.validation import model_dtype
    from workbench.models import ExactFlowMap, make_mlp_flow_map
    from workbench.models.perturbed import PerturbedFlowMap

    flow = GaussianFlow([0.0], [[1.0]])
    assert model_dtype(flow) is None and model_dtype(ExactFlowMap(flow)) is None
    mlp32 = make_mlp_flow_map(1, hidden=4, depth=1).to(torch.float32)
    assert model_dtype(mlp32) == torch.float32 and model_dtype(mlp32.double()) == torch.float64
    # a float64 eps around a parameter-free base: the wrapper's own dtype (None) wins over eps's
    assert model_dtype(PerturbedFlowMap(ExactFlowMap(flow))) is None
    assert model_dtype(PerturbedFlowMap(make_mlp_flow_map(1, hidden=4, depth=1).float())) == torch.float32

    class Plain(torch.nn.Module):  # no dtype attribute: the first floating parameter
        def __init__(self):
            super().__init__()
            self.register_buffer("count", torch.zeros((), dtype=torch.int64))
            self.step = torch.nn.Parameter(torch.zeros((), dtype=torch.int32), requires_grad=False)
            self.w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))

    assert model_dtype(Plain()) == torch.float16
    assert model_dtype(object()) is None
