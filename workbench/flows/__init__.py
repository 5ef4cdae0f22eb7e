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
from .mixture1d import Mixture1DFlow
from .ode import ODESolution, ODESolverError, ODEStats, default_tolerances, odeint_flow, solve_flow, velocity_jacobian
from .point_mass import PointMassFlow
from .product import GaussianMixtureParameters, ProductFlow
from .registry import FLOW_INFO, FLOW_NAMES, make_flow
from .rings import RingsFlow

__all__ = [
    "FLOW_INFO",
    "FLOW_NAMES",
    "AnalyticFlow",
    "DegenerateMap",
    "GaussianFlow",
    "GaussianMixtureFlow",
    "GaussianMixtureParameters",
    "Mixture1DFlow",
    "ProductFlow",
    "RingsFlow",
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
