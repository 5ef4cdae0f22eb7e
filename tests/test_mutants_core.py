"""Tests that kill the mutants of workbench/core that survived the first mutation run
(docs/mutation_testing.md): each pins a value against an independent computation, or a contract the
rest of the suite used only indirectly (device and generator checks, seeding, the wording of errors
that must name the argument)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from workbench.core import (
    broadcast_time,
    check_device,
    check_dtype_matches,
    check_floating_dtype,
    check_generator,
    check_positive_int,
    check_probability_vector,
    check_state,
    check_tensor,
    choose_device,
    directional_derivative,
    fd_step,
    fd_tol,
    make_generator,
    rel_err,
    seed_everything,
    ulps,
    value_checks_disabled,
)
from workbench.core.seeding import generator_device

F64_EPS = 2.0**-52  # IEEE binary64 unit round-off, written out independently of torch.finfo
F32_EPS = 2.0**-23



# -- tolerances ----------------------------------------------------------------------------------------
def test_tolerances_are_the_stated_powers_of_eps():
    assert ulps(torch.float64, 4.0) == 4.0 * F64_EPS
    assert ulps(torch.float32, 3.0) == 3.0 * F32_EPS
    assert fd_tol(torch.float64) == pytest.approx(100.0 * F64_EPS ** (2.0 / 3.0), rel=1e-12)
    assert fd_tol(torch.float32, 2.0) == pytest.approx(2.0 * F32_EPS ** (2.0 / 3.0), rel=1e-12)
    assert fd_step(torch.float64) == pytest.approx(F64_EPS ** (1.0 / 3.0), rel=1e-12)
    assert fd_step(torch.float64, order=4) == pytest.approx(F64_EPS ** (1.0 / 5.0), rel=1e-12)


def test_rel_err_is_per_point_with_a_unit_offset():
    # point 0: |a - b| = 5 (3-4-5), |b| = 0  -> 5 / 1; point 1: |a - b| = 1, |b| = 3 -> 1 / 4
    a = torch.tensor([[3.0, 4.0], [4.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    got = rel_err(a, b)
    assert got.shape == (2,)
    assert got.tolist() == [5.0, 0.25]
    # events of any shape are flattened per point: (2, 2, 2) with a single 2 in one entry
    a3 = torch.zeros(2, 2, 2, dtype=torch.float64)
    a3[1, 0, 1] = 2.0
    assert rel_err(a3, torch.zeros_like(a3)).tolist() == [0.0, 2.0]


# -- broadcast_time --------------------------------------------------------------------------------------
def test_broadcast_time_casts_zero_d_and_batched_tensors_to_the_state_dtype():
    x = torch.zeros(3, 2, dtype=torch.float64)
    t0 = torch.tensor(0.25, dtype=torch.float32)
    out = broadcast_time(t0, x)
    assert out.dtype == torch.float64 and out.shape == (3,)
    assert out.tolist() == [0.25, 0.25, 0.25]
    tb = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float32)
    out = broadcast_time(tb, x)
    assert out.dtype == torch.float64 and out.tolist() == [0.0, 0.5, 1.0]


def test_broadcast_time_accepts_integer_tensors_and_refuses_bool_tensors():
    x = torch.zeros(2, 1)
    assert broadcast_time(torch.tensor([0, 1], dtype=torch.int64), x).tolist() == [0.0, 1.0]
    assert broadcast_time(torch.tensor(1, dtype=torch.int32), x).tolist() == [1.0, 1.0]
    with pytest.raises(TypeError, match=r"s must be a floating tensor, got dtype torch\.bool"):
        broadcast_time(torch.tensor([True, False]), x, "s")


def test_broadcast_time_follows_the_state_device():
    # the meta device stands in for an accelerator: the result must live where x lives
    x = torch.empty(4, 2, device="meta")
    with value_checks_disabled():
        assert broadcast_time(0.5, x).device.type == "meta"
        assert broadcast_time(torch.tensor(0.5), x).device.type == "meta"
        assert broadcast_time(torch.full((4,), 0.5), x).device.type == "meta"


def test_broadcast_time_errors_name_the_argument_and_what_was_given():
    x = torch.zeros(2, 1)
    with pytest.raises(TypeError, match=r"^t must be a float or a tensor, got bool$"):
        broadcast_time(True, x)
    with pytest.raises(TypeError, match=r"^t must be a float or a torch\.Tensor, got str$"):
        broadcast_time("0.5", x)


# -- validation --------------------------------------------------------------------------------------------
def test_check_tensor_names_the_type_given():
    with pytest.raises(TypeError, match=r"^x1 must be a torch\.Tensor, got list; wrap it with torch\.as_tensor"):
        check_tensor([1.0], "x1")


def test_check_state_without_dim_names_the_shape():
    with pytest.raises(ValueError, match=r"^x0 must have shape \(batch, \*event\), got \(3,\)$"):
        check_state(torch.zeros(3), None, "x0")


def test_check_positive_int_boundaries():
    assert check_positive_int(1, "n") == 1
    assert check_positive_int(2, "n") == 2
    for bad in (0, -1, True, 1.5, 2.0):
        with pytest.raises(ValueError, match=r"^n must be a positive int"):
            check_positive_int(bad, "n")


def test_check_probability_vector_accepts_and_refuses_the_right_vectors():
    one = torch.tensor([1.0], dtype=torch.float64)
    assert check_probability_vector(one) is one  # a single component is a valid distribution
    with_zero = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert check_probability_vector(with_zero) is with_zero  # zero weights are allowed
    # a sum off by much less than the 1e-6 bound passes, by more than it fails
    near = torch.tensor([0.5, 0.5 + 1e-9], dtype=torch.float64)
    assert check_probability_vector(near) is near
    with pytest.raises(ValueError, match=r"^w must sum to 1, got sum 1\.5; normalise with w / w\.sum\(\)$"):
        check_probability_vector(torch.tensor([0.5, 1.0], dtype=torch.float64), "w")
    with pytest.raises(ValueError, match=r"^weights must sum to 1"):
        check_probability_vector(torch.tensor([0.5, 0.5 + 1e-5], dtype=torch.float64))


def test_check_probability_vector_messages_name_the_argument():
    with pytest.raises(ValueError, match=r"^w must be a non-empty 1-D vector, got shape \(2, 1\)$"):
        check_probability_vector(torch.full((2, 1), 0.5), "w")
    with pytest.raises(ValueError, match=r"^weights must be a non-empty 1-D vector, got shape \(0,\)$"):
        check_probability_vector(torch.zeros(0))
    with pytest.raises(ValueError, match=r"^w must be non-negative, got \[-0\.5, 1\.5\]$"):
        check_probability_vector(torch.tensor([-0.5, 1.5]), "w")
    with pytest.raises(ValueError, match=r"^w contains 1 non-finite"):
        check_probability_vector(torch.tensor([float("nan"), 1.0]), "w")


def test_check_dtype_matches():
    x = torch.zeros(2, dtype=torch.float32)
    assert check_dtype_matches(x, "x", torch.float32) is x
    msg = (r"^x has dtype torch\.float32 but the model's parameters are torch\.float64; cast one of them: "
           r"x\.to\(torch\.float64\) or model\.to\(torch\.float32\)$")
    with pytest.raises(TypeError, match=msg):
        check_dtype_matches(x, "x", torch.float64)
    with pytest.raises(TypeError, match=r"but the teacher are torch\.float64"):
        check_dtype_matches(x, "x", torch.float64, "the teacher")


def test_check_floating_dtype():
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert check_floating_dtype(dt) is dt
    with pytest.raises(TypeError, match=r"^dtype must be a torch\.dtype such as torch\.float32, got str 'float32'$"):
        check_floating_dtype("float32")
    with pytest.raises(TypeError, match=r"^precision must be a floating dtype \(float32 or float64\), got torch\.int64$"):
        check_floating_dtype(torch.int64, "precision")


def test_check_generator():
    assert check_generator(None) is None
    g = torch.Generator()
    assert check_generator(g) is g
    with pytest.raises(TypeError, match=r"^generator must be a torch\.Generator or None, got int; "
                                        r"for a seed use torch\.Generator\(\)\.manual_seed\(3\)$"):
        check_generator(3)
    with pytest.raises(TypeError, match=r"^rng must be a torch\.Generator or None, got str$"):
        check_generator("3", "rng")


def test_check_device_accepts_known_devices():
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu")) == torch.device("cpu")
    assert check_device("meta") == torch.device("meta")


def test_check_device_refuses_with_messages_naming_the_argument():
    with pytest.raises(TypeError, match=r"^device must be a str or torch\.device such as 'cpu' or 'cuda', got int$"):
        check_device(0)
    try:
        torch.device("gpu0")
    except RuntimeError as err:
        torch_says = str(err).splitlines()[0]
    with pytest.raises(ValueError, match=r"^dev 'gpu0' is not a device torch knows \(expected 'cpu', 'cuda', "
                                         r"'cuda:N', 'mps'\): ") as info:
        check_device("gpu0", "dev")
    assert str(info.value).endswith(torch_says)


def test_check_device_refuses_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same check on every machine
    with pytest.raises(ValueError, match=r"^device 'cuda:0' needs CUDA, which this machine does not have; use 'cpu'$"):
        check_device("cuda:0")


@pytest.mark.gpu
def test_check_device_refuses_a_cuda_index_past_the_last_device():
    n = torch.cuda.device_count()
    assert check_device(f"cuda:{n - 1}") == torch.device("cuda", n - 1)
    with pytest.raises(ValueError, match=rf"^device 'cuda:{n}': this machine has {n} CUDA device\(s\)$"):
        check_device(f"cuda:{n}")


@pytest.mark.skipif(bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
                    reason="checks the refusal on a machine without MPS")
def test_check_device_refuses_mps_without_mps():
    with pytest.raises(ValueError, match=r"^device 'mps' needs Apple MPS, which this machine does not have; use 'cpu'$"):
        check_device("mps")


# -- seeding -------------------------------------------------------------------------------------------------
def test_seed_everything_seeds_python_numpy_and_torch_and_returns_a_seeded_generator():
    g = seed_everything(7)
    py, npy, th = random.random(), float(np.random.rand()), torch.rand(3)
    assert py == random.Random(7).random()
    assert npy == float(np.random.RandomState(7).rand())
    assert torch.equal(th, torch.rand(3, generator=torch.Generator().manual_seed(7)))
    assert isinstance(g, torch.Generator) and g.device == torch.device("cpu")
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(7)))


def test_seed_everything_reduces_the_numpy_seed_modulo_two_to_the_32():
    seed_everything(2**32 + 100)
    assert float(np.random.rand()) == float(np.random.RandomState(100).rand())
    seed_everything(0)  # zero is a valid seed
    assert float(np.random.rand()) == float(np.random.RandomState(0).rand())


@pytest.mark.parametrize("bad", [-1, True, 1.0, "7"])
def test_seed_everything_refuses_bad_seeds(bad):
    with pytest.raises(ValueError, match=rf"^seed must be a non-negative int, got {bad!r}$".replace("(", r"\(")):
        seed_everything(bad)


def test_make_generator_and_generator_device():
    g = make_generator(11)
    assert g.device == torch.device("cpu")
    assert torch.equal(torch.rand(2, generator=g), torch.rand(2, generator=torch.Generator().manual_seed(11)))
    assert make_generator(11, torch.device("cpu")).initial_seed() == 11
    default = torch.device("meta")
    assert generator_device(None, default) == default
    assert generator_device(torch.Generator(), default) == torch.device("cpu")


@pytest.mark.gpu
def test_make_generator_on_cuda():
    assert make_generator(3, "cuda").device.type == "cuda"


def test_choose_device():
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert choose_device() == expected
    assert choose_device("auto") == expected
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("meta") == torch.device("meta")


def test_choose_device_refuses_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same check on every machine
    with pytest.raises(ValueError, match=r"^device 'cuda' needs CUDA, which this machine does not have; use 'cpu'$"):
        choose_device("cuda")


# -- directional_derivative --------------------------------------------------------------------------------
def test_directional_derivative_defaults_to_forward_mode_and_casts_tangents_to_the_primal_dtype():
    # f(x) = sin(x): derivative along v is cos(x) v, exactly to round-off with jvp
    x = torch.tensor([0.3, 1.1], dtype=torch.float64)
    v = torch.tensor([1.0, -2.0], dtype=torch.float32)
    value, deriv = directional_derivative(torch.sin, (x,), (v,))
    assert deriv.dtype == torch.float64
    expected = [math.cos(0.3) * 1.0, math.cos(1.1) * -2.0]
    for got, want in zip(deriv.tolist(), expected):
        assert abs(got - want) <= ulps(torch.float64, 8) * (1 + abs(want))
    assert value.tolist() == [math.sin(0.3), math.sin(1.1)]
    # a float64 tangent at a float32 point is cast down: the derivative stays float32
    _, deriv32 = directional_derivative(torch.sin, (x.float(),), (v.double(),))
    assert deriv32.dtype == torch.float32


def test_directional_derivative_errors_name_the_offending_argument():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match=r"^primals and tangents must have the same length, got 1 and 0$"):
        directional_derivative(torch.sin, (x,), ())
    with pytest.raises(ValueError, match=r"^primals must be non-empty$"):
        directional_derivative(torch.sin, (), ())
    with pytest.raises(TypeError, match=r"^primals\[1\] must be a torch\.Tensor"):
        directional_derivative(torch.add, (x, [0.0, 0.0]), (x, x))
    with pytest.raises(TypeError, match=r"^tangents\[0\] must be a torch\.Tensor"):
        directional_derivative(torch.sin, (x,), ([0.0, 0.0],))
