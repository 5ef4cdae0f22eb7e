"""Interpolants and analytic flows, each shipping its own oracle."""

from .base import AnalyticFlow
from .gaussian import GaussianFlow
from .interpolants import (
    INTERPOLANTS,
    InterpolantSample,
    LinearInterpolant,
    TrigInterpolant,
    get_interpolant,
)
from .point_mass import PointMassFlow

__all__ = [
    "AnalyticFlow",
    "GaussianFlow",
    "INTERPOLANTS",
    "InterpolantSample",
    "LinearInterpolant",
    "PointMassFlow",
    "TrigInterpolant",
    "get_interpolant",
]
