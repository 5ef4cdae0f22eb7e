"""The flow contract, time broadcasting, finfo tolerances, validation and seeding."""

from .derivatives import directional_derivative
from .contract import AnalyticFlowLike, Flow, FlowMapModel, TimeLike
from .seeding import choose_device, make_generator, seed_everything
from .times import broadcast_time, expand_as_state
from .tolerances import eps, fd_step, fd_tol, rel_err, ulps
from .validation import (
    check_finite,
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
    "check_finite",
    "directional_derivative",
    "check_positive_int",
    "check_probability_vector",
    "check_state",
    "check_tensor",
    "choose_device",
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
