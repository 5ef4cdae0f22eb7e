"""Interpolants and analytic flows, each shipping its own oracle."""

from . import degenerate
from .base import AnalyticFlow
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
    "INTERPOLANTS",
    "AnalyticFlow",
    "DegenerateMap",
    "GaussianFlow",
    "GaussianMixtureFlow",
    "GaussianMixtureParameters",
    "InterpolantSample",
    "LinearInterpolant",
    "Mixture1DFlow",
    "ODESolution",
    "ODESolverError",
    "ODEStats",
    "PointMassFlow",
    "ProductFlow",
    "RingsFlow",
    "TrigInterpolant",
    "default_tolerances",
    "degenerate",
    "degenerate_maps",
    "get_interpolant",
    "make_flow",
    "odeint_flow",
    "solve_flow",
    "velocity_jacobian",
]
