"""The flow contract, time broadcasting, finfo tolerances, validation and seeding."""

from .contract import AnalyticFlowLike, Flow, FlowMapModel, TimeLike
from .derivatives import directional_derivative
from .seeding import choose_device, make_generator, seed_everything
from .times import broadcast_time, expand_as_state
from .tolerances import eps, fd_step, fd_tol, rel_err, ulps
from .validation import (
    check_device,
    check_dtype_matches,
    check_finite,
    check_floating_dtype,
    check_generator,
    check_positive_int,
    check_probability_vector,
    check_state,
    check_tensor,
    value_checks_disabled,
    value_checks_enabled,
)

__all__ = [
    "AnalyticFlowLike",
    "Flow",
    "FlowMapModel",
    "TimeLike",
    "broadcast_time",
    "check_device",
    "check_dtype_matches",
    "check_finite",
    "check_floating_dtype",
    "check_generator",
    "check_positive_int",
    "check_probability_vector",
    "check_state",
    "check_tensor",
    "choose_device",
    "directional_derivative",
    "eps",
    "expand_as_state",
    "fd_step",
    "fd_tol",
    "make_generator",
    "rel_err",
    "seed_everything",
    "ulps",
    "value_checks_disabled",
    "value_checks_enabled",
]
