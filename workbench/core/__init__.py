"""The flow contract, time broadcasting, finfo tolerances, validation and seeding."""

from .contract import (
    AnalyticFlowLike,
    DataSampler,
    Density,
    Flow,
    FlowMapModel,
    InterpolantFlow,
    TimeLike,
    check_implements,
)
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
    check_sampling_args,
    check_state,
    check_tensor,
    value_checks_disabled,
    value_checks_enabled,
)

__all__ = [
    "AnalyticFlowLike",
    "DataSampler",
    "Density",
    "Flow",
    "FlowMapModel",
    "InterpolantFlow",
    "TimeLike",
    "broadcast_time",
    "check_device",
    "check_dtype_matches",
    "check_finite",
    "check_floating_dtype",
    "check_generator",
    "check_implements",
    "check_positive_int",
    "check_probability_vector",
    "check_sampling_args",
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
