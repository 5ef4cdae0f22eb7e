"""Data sources x1 ~ data (t = 1) for training: toy 2-D laws and any analytic flow's data law.

``get_data(name, **kwargs)`` builds a source from a JSON-friendly spec (the form a run's
config.json stores); ``DATA`` lists the names.
"""

from __future__ import annotations

from collections.abc import Callable

from ..flows import GaussianFlow, GaussianMixtureFlow, PointMassFlow
from .toy import Checkerboard, DataSource, EightGaussians, FlowData, Rings, TwoMoons


def _gaussian(mean=(0.0, 0.0), cov=((1.0, 0.0), (0.0, 1.0)), interpolant=None) -> FlowData:
    return FlowData(GaussianFlow(mean, cov, interpolant=interpolant), name="gaussian")


def _point_mass(a=(1.0, 0.0), interpolant=None) -> FlowData:
    return FlowData(PointMassFlow(a, interpolant=interpolant), name="point_mass")


def _gmm(weights, means, covs, interpolant=None) -> FlowData:
    return FlowData(GaussianMixtureFlow(weights, means, covs, interpolant=interpolant), name="gmm")


DATA: dict[str, Callable[..., DataSource]] = {
    "checkerboard": Checkerboard,
    "eight_gaussians": EightGaussians,
    "two_moons": TwoMoons,
    "rings": Rings,
    "gaussian": _gaussian,
    "point_mass": _point_mass,
    "gmm": _gmm,
}


def get_data(name: str, **kwargs) -> DataSource:
    """A data source by name (one of ``DATA``) with its keyword parameters.

    Raises ValueError for an unknown name and TypeError (from the constructor) for unknown keywords.
    """
    if name not in DATA:
        raise ValueError(f"data name must be one of {sorted(DATA)}, got {name!r}")
    try:
        return DATA[name](**kwargs)
    except TypeError as err:
        raise TypeError(f"bad parameters {sorted(kwargs)} for data {name!r}: {err}") from err


__all__ = ["DATA", "Checkerboard", "DataSource", "EightGaussians", "FlowData", "Rings", "TwoMoons", "get_data"]
