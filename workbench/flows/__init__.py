"""Interpolants and analytic flows, each shipping its own oracle."""

from .base import AnalyticFlow
from . import degenerate
from .degenerate import DegenerateMap, degenerate_maps
from .gaussian import GaussianFlow
from .gmm import GaussianMixtureFlow
from .interpolants import (
    INTERPOLANTS,
    InterpolantSample,
    LinearInterpolant,
    TrigInterpolant,
    get_interpolant,
)
from .ode import ODESolution, ODESolverError, ODEStats, default_tolerances, odeint_flow, solve_flow, velocity_jacobian
from .point_mass import PointMassFlow
from .registry import FLOW_INFO, FLOW_NAMES, make_flow

__all__ = [
    "FLOW_INFO",
    "FLOW_NAMES",
    "AnalyticFlow",
    "DegenerateMap",
    "GaussianFlow",
    "GaussianMixtureFlow",
    "ODESolution",
    "ODESolverError",
    "ODEStats",
    "default_tolerances",
    "degenerate",
    "degenerate_maps",
    "make_flow",
    "odeint_flow",
    "solve_flow",
    "velocity_jacobian",
    "INTERPOLANTS",
    "InterpolantSample",
    "LinearInterpolant",
    "PointMassFlow",
    "TrigInterpolant",
    "get_interpolant",
]
