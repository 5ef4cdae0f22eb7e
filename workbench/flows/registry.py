"""Named, ready-made analytic flows used by tests, experiments and notebooks.

``make_flow(name, interpolant=None)`` builds a fresh instance; ``FLOW_NAMES`` lists them;
``FLOW_INFO[name]`` is a one-line description. Every flow's base is N(0, I).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .base import AnalyticFlow


def _rotation(theta: float) -> list[list[float]]:
    c, s = math.cos(theta), math.sin(theta)
    return [[c, -s], [s, c]]


def _point_mass_2d(ip):
    from .point_mass import PointMassFlow

    return PointMassFlow([1.0, -0.5], interpolant=ip)


def _gaussian_2d(ip):
    from .gaussian import GaussianFlow

    # the correlated Gaussian of the degenerate-map reference problem (docs/flows_degenerate_maps.md)
    return GaussianFlow([1.0, -1.0], [[1.0, 0.6], [0.6, 0.5]], interpolant=ip)


def _gaussian_5d(ip):
    # a fixed, well-conditioned covariance built from a rotation of diagonal scales
    import torch

    from .gaussian import GaussianFlow

    g = torch.Generator().manual_seed(5)
    Q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=g))
    lam = torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0], dtype=torch.float64)
    cov = (Q * lam) @ Q.T
    return GaussianFlow(torch.linspace(-1, 1, 5, dtype=torch.float64), 0.5 * (cov + cov.T), interpolant=ip)


def _gmm_3(ip):
    from .gmm import GaussianMixtureFlow

    return GaussianMixtureFlow(
        weights=[0.5, 0.3, 0.2],
        means=[[-1.5, 0.0], [1.0, 1.0], [1.0, -1.5]],
        covs=[[[0.3, 0.1], [0.1, 0.2]], [[0.1, 0.0], [0.0, 0.4]], [[0.25, -0.08], [-0.08, 0.15]]],
        interpolant=ip,
    )


def _gmm_8(ip):
    from .gmm import GaussianMixtureFlow

    means = [[2.0 * math.cos(2 * math.pi * k / 8), 2.0 * math.sin(2 * math.pi * k / 8)] for k in range(8)]
    sd = 0.15
    return GaussianMixtureFlow(weights=[1 / 8] * 8, means=means, covs=[[[sd**2, 0.0], [0.0, sd**2]]] * 8,
                               interpolant=ip)


def _mixture1d(ip):
    from .mixture1d import Mixture1DFlow

    return Mixture1DFlow(weights=[0.3, 0.7], means=[-1.5, 1.0], stds=[0.3, 0.5], interpolant=ip)


def _product_4(ip):
    from .mixture1d import Mixture1DFlow
    from .product import ProductFlow

    f1 = Mixture1DFlow(weights=[0.5, 0.5], means=[-1.0, 1.0], stds=[0.25, 0.25], interpolant=ip)
    f2 = Mixture1DFlow(weights=[0.4, 0.6], means=[-0.8, 1.2], stds=[0.3, 0.2], interpolant=ip)
    return ProductFlow([f1, f2], rotation=_rotation(math.pi / 6), shift=[0.3, -0.2], interpolant=ip)


def _rings(ip):
    from .rings import RingsFlow

    return RingsFlow(radii=[1.0, 2.5], weights=[0.4, 0.6], interpolant=ip)


_FACTORIES: dict[str, tuple[Callable, str]] = {
    "point_mass_2d": (_point_mass_2d, "point mass at (1, -0.5): affine closed form, singular at t = 1"),
    "gaussian_2d": (_gaussian_2d, "correlated 2-D Gaussian N((1,-1), [[1,.6],[.6,.5]]): affine closed form"),
    "gaussian_5d": (_gaussian_5d, "5-D Gaussian, condition number 40: affine closed form"),
    "gmm_3": (_gmm_3, "3-component 2-D Gaussian mixture, general covariances: exact velocity, ODE oracle"),
    "gmm_8": (_gmm_8, "8 Gaussians on a circle of radius 2 (sd 0.15): exact velocity, ODE oracle"),
    "mixture1d": (_mixture1d, "1-D bimodal mixture: closed form F_t^-1(F_s(x))"),
    "product_4": (_product_4, "rotated product of two 1-D bimodals, 4 modes: closed form, non-affine"),
    "rings": (_rings, "uniform on circles of radius 1 and 2.5: closed-form radial map"),
}

FLOW_NAMES: tuple[str, ...] = tuple(_FACTORIES)
FLOW_INFO: dict[str, str] = {k: v[1] for k, v in _FACTORIES.items()}


def make_flow(name: str, interpolant: object = None) -> AnalyticFlow:
    """A fresh instance of the named flow with the given interpolant (default linear)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {', '.join(FLOW_NAMES)}; got {type(name).__name__} {name!r}")
    if name not in _FACTORIES:
        raise ValueError(f"unknown flow {name!r}; choose one of {', '.join(FLOW_NAMES)}")
    return _FACTORIES[name][0](interpolant)
