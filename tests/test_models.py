"""Neural flow maps against independent computations: the MLP forward pass and the time embedding
re-derived in numpy from the weights, the preconditioned parametrisation X_{s,t}(x) = x + (t - s)
v_{s,t}(x) with X_{s,s} = id exactly, the exact map of a flow (secant off the diagonal, velocity on it),
dtype following, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import erf

from workbench.core import eps as machine_eps
from workbench.flows import GaussianFlow
from workbench.models import ExactFlowMap, MLPBackbone, NeuralFlowMap, TimeEmbedding, make_mlp_flow_map
from workbench.models.perturbed import PerturbedFlowMap

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = 16, dim: int = 3, seed: int = 0):
    g = gen(seed)
    st = torch.rand(n, 2, generator=g, dtype=F64).sort(dim=1).values
    return st[:, 0].contiguous(), st[:, 1].contiguous(), 2.0 * torch.randn(n, dim, generator=g, dtype=F64)


def numpy_embedding(s: np.ndarray, dt: np.ndarray, n_freq: int, max_freq: float) -> np.ndarray:
    w = 2 * np.pi * max_freq ** (np.arange(n_freq) / max(n_freq - 1, 1))
    parts = [s[:, None], dt[:, None]]
    for tau in (s, dt):
        parts += [np.cos(tau[:, None] * w), np.sin(tau[:, None] * w)]
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize("n_freq,max_freq", [(8, 16.0), (3, 4.0), (1, 16.0)])
def test_sinusoidal_embedding_vs_numpy(n_freq, max_freq):
    s, t, _ = batch()
    emb = TimeEmbedding("sinusoidal", n_freq=n_freq, max_freq=max_freq).double()
    got = emb(s, t - s).numpy()
    ref = numpy_embedding(s.numpy(), (t - s).numpy(), n_freq, max_freq)
    assert got.shape == (16, emb.out_dim) == (16, 2 + 4 * n_freq)
    # the angles w_k tau reach 2 pi max_freq: a few ulps of w_k move cos / sin by eps times that
    np.testing.assert_allclose(got, ref, rtol=0, atol=8 * machine_eps(F64) * (1 + 2 * np.pi * max_freq))
    raw = TimeEmbedding("raw")
    assert raw.out_dim == 2 and torch.equal(raw(s, t - s), torch.stack([s, t - s], dim=1))


def gelu(z: np.ndarray) -> np.ndarray:
    return 0.5 * z * (1 + erf(z / np.sqrt(2)))


def test_mlp_forward_vs_numpy_and_preconditioning():
    """v_{s,t}(x) = c backbone(x / c, s, t - s) with the backbone written out in numpy from its weights."""
    torch.manual_seed(0)
    c = 2.5
    model = make_mlp_flow_map(3, hidden=12, depth=2, time_embedding="sinusoidal", data_std=c).double()
    s, t, x = batch()
    layers = [m for m in model.backbone.body if isinstance(m, torch.nn.Linear)] + [model.backbone.head]
    h = np.concatenate([x.numpy() / c, numpy_embedding(s.numpy(), (t - s).numpy(), 8, 16.0)], axis=1)
    for k, lin in enumerate(layers):
        h = h @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()
        if k < len(layers) - 1:
            h = gelu(h)
    v_ref = c * h
    with torch.no_grad():
        v = model.average_velocity(s, t, x).numpy()
        X = model.flow_map(s, t, x).numpy()
        b = model.velocity(t, x)
    tol = 1e3 * machine_eps(F64) * (1 + np.abs(v_ref).max())
    np.testing.assert_allclose(v, v_ref, rtol=0, atol=tol)
    np.testing.assert_allclose(X, x.numpy() + (t - s).numpy()[:, None] * v_ref, rtol=0, atol=tol)
    with torch.no_grad():
        assert torch.equal(b, model.average_velocity(t, t, x))  # the tangent condition v_{t,t} = b_t


def test_zero_length_map_is_the_identity_exactly():
    torch.manual_seed(1)
    model = make_mlp_flow_map(3, hidden=16, depth=3, data_std=0.7)
    _, t, x = batch(dim=3)
    for dtype in (torch.float32, F64):
        m, xx, tt = model.to(dtype), x.to(dtype), t.to(dtype)
        out = m.flow_map(tt, tt, xx)
        assert out.dtype == dtype and torch.equal(out, xx)
        assert torch.equal(m.flow_map(0.3, 0.3, xx), xx)


def test_zero_init_and_learned_weight_head():
    torch.manual_seed(2)
    model = make_mlp_flow_map(2, hidden=8, depth=1, zero_init=True, learned_weight=True).double()
    s, t, x = batch(dim=2)
    assert torch.equal(model.flow_map(s, t, x), x)  # zero head: v = 0, the identity map (K26 D1)
    w = model.loss_weight(s, t, x)
    assert w.shape == (16,) and torch.equal(w, torch.zeros(16, dtype=F64))
    plain = make_mlp_flow_map(2, hidden=8, depth=1).double()
    assert torch.equal(plain.loss_weight(s, t, x), torch.zeros(16, dtype=F64))


def test_exact_flow_map_secant_and_diagonal():
    """ExactFlowMap: v_{s,t} = (X_{s,t}(x) - x) / (t - s) off the diagonal and b_t on it, in one batch."""
    flow = GaussianFlow([0.5, -1.0], [[2.0, 0.6], [0.6, 0.5]])
    model = ExactFlowMap(flow)
    s, t, x = batch(dim=2, seed=3)
    t = torch.where(torch.arange(16) < 5, s, t)  # five zero-length maps
    v = model.average_velocity(s, t, x)
    off = t > s
    secant = (flow.flow_map(s[off], t[off], x[off]) - x[off]) / (t - s)[off, None]
    assert torch.equal(v[off], secant)
    assert torch.equal(v[~off], flow.velocity(s[~off], x[~off]))
    assert torch.equal(model.flow_map(s, t, x), flow.flow_map(s, t, x))


def test_bad_input():
    with pytest.raises(ValueError, match="kind"):
        TimeEmbedding("fourier")
    with pytest.raises(ValueError, match="n_freq"):
        TimeEmbedding(n_freq=0)
    with pytest.raises(ValueError, match="max_freq"):
        TimeEmbedding(max_freq=0.5)
    with pytest.raises(ValueError, match="hidden"):
        MLPBackbone(2, hidden=0)
    with pytest.raises(ValueError, match="activation"):
        MLPBackbone(2, activation="swish")
    with pytest.raises(ValueError, match="data_std"):
        make_mlp_flow_map(2, data_std=math.nan)
    with pytest.raises(ValueError, match="dim"):
        NeuralFlowMap(MLPBackbone(2), 0)
    with pytest.raises(TypeError, match="backbone"):
        NeuralFlowMap(lambda x, s, dt: x, 2)
    model = make_mlp_flow_map(2, hidden=4, depth=1).double()
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        model.flow_map(0.0, 1.0, torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="t must lie in"):
        model.flow_map(0.0, 1.5, torch.zeros(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="x contains"):
        model.average_velocity(0.0, 1.0, torch.full((3, 2), math.nan, dtype=F64))
    with pytest.raises(TypeError, match="flow must implement"):
        ExactFlowMap(object())


# -- mixed dtypes: the model computes in its parameters' dtype and refuses another (never casts) -----------
@pytest.mark.parametrize("model_dtype", [torch.float32, F64])
def test_mixed_dtype_is_refused_naming_x(model_dtype):
    model = make_mlp_flow_map(2, hidden=8, depth=1, learned_weight=True).to(model_dtype)
    assert model.dtype == model_dtype
    other = F64 if model_dtype == torch.float32 else torch.float32
    x = torch.zeros(3, 2, dtype=other)
    calls = {
        "flow_map": lambda: model.flow_map(0.1, 0.5, x),
        "average_velocity": lambda: model.average_velocity(0.1, 0.5, x),
        "velocity": lambda: model.velocity(0.1, x),
        "loss_weight": lambda: model.loss_weight(0.1, 0.5, x),
    }
    for call in calls.values():
        with pytest.raises(TypeError, match=rf"x has dtype {other} but NeuralFlowMap's parameters are {model_dtype}"):
            call()
    # the matching dtype works and keeps it; float64 times with float32 x are cast (times are not states)
    y = model.flow_map(torch.tensor(0.1, dtype=F64), 0.5, x.to(model_dtype))
    assert y.dtype == model_dtype


def test_perturbed_model_reports_and_enforces_the_base_dtype():
    base = make_mlp_flow_map(2, hidden=8, depth=1)
    model = PerturbedFlowMap(base, eps=0.1)
    assert model.dtype == torch.float32  # eps is a float64 parameter but the model computes in the base's dtype
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        model.flow_map(0.1, 0.5, torch.zeros(2, 2, dtype=F64))
    with pytest.raises(TypeError, match="base must implement FlowMapModel"):
        PerturbedFlowMap(GaussianFlow([0.0], [[1.0]]))
