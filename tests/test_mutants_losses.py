"""Tests that kill the mutants of workbench/losses (split.py, weighting.py) that survived the first
mutation run (docs/mutation_testing.md): argument checks at their boundaries with the messages that
name the argument, and the noise draw's dtype, device and random stream against torch drawn directly."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.flows import GaussianFlow
from workbench.losses.split import check_positive, check_teacher, draw_noise
from workbench.losses.weighting import Weighting, apply_weighting


# -- check_positive ----------------------------------------------------------------------------------------
def test_check_positive_accepts_positive_finite_numbers():
    for ok in (1, 0.5, 1e-300):
        assert check_positive(ok, "lr") is None
    assert check_positive(None, "lr", allow_none=True) is None


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, math.inf, math.nan, True, "1"])
def test_check_positive_refuses_with_the_name(bad):
    with pytest.raises(ValueError, match=rf"^lr must be a finite number > 0, got {re_escape(repr(bad))}$"):
        check_positive(bad, "lr")


def test_check_positive_none_needs_allow_none_and_the_message_says_so():
    with pytest.raises(ValueError, match=r"^fd_eps must be a finite number > 0, got None$"):
        check_positive(None, "fd_eps")
    with pytest.raises(ValueError, match=r"^fd_eps must be a finite number > 0 or None, got -1$"):
        check_positive(-1, "fd_eps", allow_none=True)


def re_escape(s: str) -> str:
    import re

    return re.escape(s)


# -- check_teacher -------------------------------------------------------------------------------------------
class VelocityOnly:
    def velocity(self, t, x):
        return x


def test_check_teacher_message_lists_every_needed_call():
    """The teacher is checked against the Flow contract (plus any extra need) by check_implements."""
    msg = (r"^teacher must implement Flow \(dim, flow_map, velocity\); VelocityOnly lacks dim, flow_map$")
    with pytest.raises(TypeError, match=msg):
        check_teacher(VelocityOnly(), ("velocity", "flow_map"))
    # a need beyond the flow contract is listed after it
    with pytest.raises(TypeError, match=r"^teacher must implement Flow \(dim, flow_map, velocity, log_prob\); "
                                       r"VelocityOnly lacks dim, flow_map, log_prob$"):
        check_teacher(VelocityOnly(), ("velocity", "log_prob"))
    flow = GaussianFlow([0.0], [[1.0]])
    assert check_teacher(flow) is flow
    assert check_teacher(None) is None


# -- draw_noise -----------------------------------------------------------------------------------------------
def test_draw_noise_has_the_data_dtype_and_the_generator_stream():
    x1 = torch.zeros(4, 3, dtype=torch.float64)
    got = draw_noise(x1, torch.Generator().manual_seed(5))
    want = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert got.dtype == torch.float64 and torch.equal(got, want)


def test_draw_noise_without_generator_draws_on_the_data_device_from_the_global_stream():
    # a different default device (meta) must not move the draw off x1's device
    x1 = torch.zeros(2, 3, dtype=torch.float64)
    torch.manual_seed(9)
    with torch.device("meta"):
        got = draw_noise(x1, None)
    want = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    assert got.device == x1.device and torch.equal(got, want)


def test_draw_noise_uses_the_generator_device_and_returns_on_the_data_device():
    # data on the meta device, generator on the CPU: drawn on the CPU, moved to meta
    x1 = torch.empty(2, 3, device="meta")
    got = draw_noise(x1, torch.Generator().manual_seed(1))
    assert got.device.type == "meta" and got.shape == (2, 3) and got.dtype == x1.dtype


# -- Weighting -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [0.0, -1.0, math.inf, math.nan])
def test_weighting_c_must_be_finite_and_positive(c):
    with pytest.raises(ValueError, match=rf"^weighting c must be a finite number > 0 \(or None for the default\), "
                                         rf"got {re_escape(repr(c))}$"):
        Weighting("adaptive", c=c)


def test_weighting_c_of_the_wrong_type_is_a_value_error():
    with pytest.raises(ValueError, match=r"^weighting c must be a finite number > 0"):
        Weighting("adaptive", c="0.1")


@pytest.mark.parametrize("p", [-0.5, math.inf, math.nan])
def test_weighting_p_must_be_finite_and_non_negative(p):
    with pytest.raises(ValueError, match=rf"^weighting p must be a finite number >= 0, got {re_escape(repr(p))}$"):
        Weighting("adaptive", p=p)


def test_weighting_p_of_the_wrong_type_is_a_value_error():
    with pytest.raises(ValueError, match=r"^weighting p must be a finite number >= 0"):
        Weighting("adaptive", p="1")


def test_weighting_boundaries_that_are_allowed():
    # p = 0 (no reweighting) and p in (0, 1) are valid; a small c is valid
    raw = torch.tensor([1.0, 3.0], dtype=torch.float64)
    assert torch.equal(Weighting("adaptive", c=1.0, p=0.0)(raw), raw)
    half = Weighting("adaptive", c=1.0, p=0.5)(raw)
    assert half.tolist() == [1.0 / math.sqrt(2.0), 3.0 / 2.0]
    assert Weighting("adaptive", c=1e-300).c == 1e-300


# -- apply_weighting's keyword overrides -------------------------------------------------------------------------
def test_apply_weighting_default_kind_is_the_identity():
    raw = torch.tensor([0.5, 2.0], dtype=torch.float64)
    assert torch.equal(apply_weighting(raw), raw)


def test_apply_weighting_keyword_overrides_replace_only_the_given_fields():
    raw = torch.tensor([1.0, 3.0], dtype=torch.float64)
    # both given: raw / (raw + 1)^(1/2)
    assert apply_weighting(raw, "adaptive", c=1.0, p=0.5).tolist() == [1.0 / math.sqrt(2.0), 3.0 / 2.0]
    # c only: p = 0.5 kept from the instance
    base = Weighting("adaptive", c=5.0, p=0.5)
    assert apply_weighting(raw, base, c=1.0).tolist() == [1.0 / math.sqrt(2.0), 3.0 / 2.0]
    # p only: c = 1 kept from the instance, p = 1: raw / (raw + 1)
    assert apply_weighting(raw, Weighting("adaptive", c=1.0, p=3.0), p=1.0).tolist() == [0.5, 0.75]
    # the kind is kept: pseudo-Huber with c = 1 is sqrt(raw + 1) - 1
    assert apply_weighting(raw, "pseudo_huber", c=1.0).tolist() == [math.sqrt(2.0) - 1.0, 1.0]


def test_apply_weighting_refuses_unknown_keywords_by_name():
    raw = torch.ones(2)
    with pytest.raises(TypeError, match=r"^apply_weighting got unknown parameter\(s\) \['q'\]; expected c and/or p$"):
        apply_weighting(raw, "adaptive", c=1.0, q=2.0)
