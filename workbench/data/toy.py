"""Low-dimensional data sources: the law of x1 (t = 1) that training samples from.

Every source implements one small interface, :class:`DataSource`:

    source.name: str, source.dim: int
    source.sample(n, generator=None, *, dtype=torch.float32, device=None) -> (n, dim)

and optionally ``source.as_flow()``, the analytic flow from N(0, I) to the same law (used as an
exact oracle or a distillation teacher); sources without a closed-form flow raise ``ValueError``.
All samplers are procedural torch code (no sklearn at run time), draw every random number from
``generator`` and follow ``dtype``/``device`` (default: the generator's device, else CPU).
"""

from __future__ import annotations

import math
from typing import ClassVar, Protocol, runtime_checkable

import torch

from ..core.contract import DataSampler, check_implements
from ..core.validation import check_device, check_floating_dtype, check_positive_int, check_sampling_args
from ..flows.gmm import GaussianMixtureFlow
from ..flows.rings import RingsFlow


@runtime_checkable
class DataSource(Protocol):
    """A law of x1 in R^dim that can be sampled: ``sample(n, generator) -> (n, dim)``."""

    name: str
    dim: int

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ) -> torch.Tensor: ...


def _positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


class Checkerboard:
    """Uniform law on the 'black' cells of an n x n checkerboard over [-h, h]^2.

    Cell (i, j) (column i along x_1, row j along x_2, 0-based from the lower-left corner) is
    [-h + i w, -h + (i + 1) w] x [-h + j w, -h + (j + 1) w] with w = 2 h / n; the support is the
    cells with i + j even, each with equal mass. B25's released code (two copies of its checkerboard sampler) has two:

    * ``variant="unit"`` (h = 1, n = 4): "uniform on [-1, 1]^2 with a 4x4 grid, (i + j) even";
    * ``variant="realnvp"`` (h = 4, n = 4): x_1 ~ U[-2, 2], x_2 ~ U[0, 1] - 2 Bernoulli(1/2) +
      (floor(x_1) mod 2), scaled by 2. Working through the cells shows this is *the same law*
      scaled by 4 (support [-4, 4]^2, cells of side 2, (i + j) even), so both are this class with
      a different ``half_width``; which one the paper used is unverified.

    For even n the x_1 and x_2 marginals are U[-h, h], so the per-coordinate std is h / sqrt(3)
    (B25's ``rescale`` = the empirical data std), exposed as ``std``.
    """

    VARIANTS: ClassVar[dict[str, float]] = {"unit": 1.0, "realnvp": 4.0}

    def __init__(self, variant: str = "realnvp", *, n_squares: int = 4, half_width: float | None = None) -> None:
        if variant not in self.VARIANTS:
            raise ValueError(f"variant must be one of {sorted(self.VARIANTS)}, got {variant!r}")
        check_positive_int(n_squares, "n_squares")
        self.variant = variant
        self.n_squares = n_squares
        self.half_width = _positive(self.VARIANTS[variant] if half_width is None else half_width, "half_width")
        self.name = "checkerboard"
        self.dim = 2
        ij = [(i, j) for i in range(n_squares) for j in range(n_squares) if (i + j) % 2 == 0]
        self._cells = torch.tensor(ij, dtype=torch.float64)  # (n_cells, 2) lower-left indices
        # for odd n the marginals are not uniform; std is reported for the even case only
        self.std = self.half_width / math.sqrt(3.0) if n_squares % 2 == 0 else float("nan")

    def sample(self, n, generator=None, *, dtype=torch.float32, device=None):
        """x = -h + w (cell + U[0, 1]^2), cell uniform over the black cells; (n, 2)."""
        n, dtype, dev = check_sampling_args(n, generator, dtype, device)
        k = torch.randint(len(self._cells), (n,), generator=generator, device=dev)
        u = torch.rand(n, 2, generator=generator, dtype=dtype, device=dev)
        w = 2.0 * self.half_width / self.n_squares
        return -self.half_width + w * (self._cells.to(dtype=dtype, device=dev)[k] + u)

    def as_flow(self):
        raise ValueError("the checkerboard has no closed-form flow; use a GaussianMixture or Gaussian source as a teacher")

    def __repr__(self) -> str:
        return f"Checkerboard(variant={self.variant!r}, n_squares={self.n_squares}, half_width={self.half_width})"


class EightGaussians:
    """Equal mixture of 8 isotropic Gaussians N(r (cos 2 pi k / 8, sin 2 pi k / 8), std^2 I), k = 0..7."""

    def __init__(self, radius: float = 2.0, std: float = 0.1, n_modes: int = 8) -> None:
        self.radius = _positive(radius, "radius")
        self.std_mode = _positive(std, "std", allow_zero=True)
        self.n_modes = check_positive_int(n_modes, "n_modes")
        self.name = "eight_gaussians"
        self.dim = 2

    def means(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """(n_modes, 2) mode centres r (cos 2 pi k / K, sin 2 pi k / K)."""
        check_floating_dtype(dtype)
        device = None if device is None else check_device(device)
        ang = 2.0 * math.pi * torch.arange(self.n_modes, dtype=torch.float64) / self.n_modes
        return (self.radius * torch.stack([ang.cos(), ang.sin()], dim=-1)).to(dtype=dtype, device=device)

    def sample(self, n, generator=None, *, dtype=torch.float32, device=None):
        """x = mu_k + std z, k uniform, z ~ N(0, I); (n, 2)."""
        n, dtype, dev = check_sampling_args(n, generator, dtype, device)
        k = torch.randint(self.n_modes, (n,), generator=generator, device=dev)
        z = torch.randn(n, 2, generator=generator, dtype=dtype, device=dev)
        return self.means(dtype, dev)[k] + self.std_mode * z

    def as_flow(self):
        """The same law as a ``workbench.flows.GaussianMixtureFlow`` (exact velocity, ODE map)."""
        k = self.n_modes
        covs = torch.eye(2, dtype=torch.float64).expand(k, 2, 2) * self.std_mode**2
        return GaussianMixtureFlow(torch.full((k,), 1.0 / k, dtype=torch.float64), self.means(), covs)

    def __repr__(self) -> str:
        return f"EightGaussians(radius={self.radius}, std={self.std_mode}, n_modes={self.n_modes})"


class TwoMoons:
    """Two interleaved half circles (procedural, as sklearn's make_moons but with random angles).

    theta ~ U[0, pi]; upper moon (cos theta, sin theta), lower moon (1 - cos theta, 1/2 - sin theta),
    each with probability 1/2, plus N(0, noise^2 I); then centred by the exact mean (1/2, 1/4) and
    multiplied by ``scale``.
    """

    CENTRE = (0.5, 0.25)

    def __init__(self, noise: float = 0.05, scale: float = 1.0) -> None:
        self.noise = _positive(noise, "noise", allow_zero=True)
        self.scale = _positive(scale, "scale")
        self.name = "two_moons"
        self.dim = 2

    def sample(self, n, generator=None, *, dtype=torch.float32, device=None):
        n, dtype, dev = check_sampling_args(n, generator, dtype, device)
        theta = math.pi * torch.rand(n, generator=generator, dtype=dtype, device=dev)
        lower = torch.rand(n, generator=generator, device=dev) < 0.5
        c, s = theta.cos(), theta.sin()
        x = torch.where(lower, 1.0 - c, c)
        y = torch.where(lower, 0.5 - s, s)
        pts = torch.stack([x - self.CENTRE[0], y - self.CENTRE[1]], dim=-1)
        pts = pts + self.noise * torch.randn(n, 2, generator=generator, dtype=dtype, device=dev)
        return self.scale * pts

    def as_flow(self):
        raise ValueError("two moons have no closed-form flow")

    def __repr__(self) -> str:
        return f"TwoMoons(noise={self.noise}, scale={self.scale})"


class Rings:
    """Concentric circles of radii R_j with weights pi_j: x = R_J (cos phi, sin phi) + noise z.

    J ~ Categorical(weights) (default: proportional to the radii, i.e. uniform arc length),
    phi ~ U[0, 2 pi), z ~ N(0, I). With noise = 0 this is the law of ``workbench.flows.RingsFlow``.
    """

    def __init__(self, radii=(1.0, 2.5), weights=None, noise: float = 0.0) -> None:
        radii = [_positive(r, "radii") for r in radii]
        if not radii:
            raise ValueError("radii must hold at least one radius")
        if weights is None:
            weights = [r / sum(radii) for r in radii]
        weights = [float(w) for w in weights]
        if len(weights) != len(radii) or any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-9:
            raise ValueError(f"weights must be {len(radii)} non-negative numbers summing to 1, got {weights}")
        self.radii, self.weights = tuple(radii), tuple(weights)
        self.noise = _positive(noise, "noise", allow_zero=True)
        self.name = "rings"
        self.dim = 2

    def sample(self, n, generator=None, *, dtype=torch.float32, device=None):
        n, dtype, dev = check_sampling_args(n, generator, dtype, device)
        w = torch.tensor(self.weights, dtype=torch.float64, device=dev)
        j = torch.multinomial(w, n, replacement=True, generator=generator)
        phi = 2.0 * math.pi * torch.rand(n, generator=generator, dtype=dtype, device=dev)
        r = torch.tensor(self.radii, dtype=dtype, device=dev)[j]
        pts = r[:, None] * torch.stack([phi.cos(), phi.sin()], dim=-1)
        if self.noise > 0:
            pts = pts + self.noise * torch.randn(n, 2, generator=generator, dtype=dtype, device=dev)
        return pts

    def as_flow(self):
        """``workbench.flows.RingsFlow`` of the same law (noise must be 0)."""
        if self.noise > 0:
            raise ValueError("Rings with noise > 0 have no closed-form flow; use noise=0")
        return RingsFlow(list(self.radii), list(self.weights))

    def __repr__(self) -> str:
        return f"Rings(radii={self.radii}, weights={self.weights}, noise={self.noise})"


class FlowData:
    """Any analytic flow as a data source: samples its data law (the t = 1 marginal)."""

    def __init__(self, flow: object, name: str | None = None) -> None:
        check_implements(flow, DataSampler, "flow")
        self.flow = flow
        self.dim = int(flow.dim)
        self.name = name or type(flow).__name__

    def sample(self, n, generator=None, *, dtype=torch.float32, device=None):
        n, dtype, dev = check_sampling_args(n, generator, dtype, device)
        return self.flow.sample_data(n, generator, dtype=dtype, device=dev)

    def as_flow(self):
        return self.flow

    def __repr__(self) -> str:
        return f"FlowData({self.flow!r})"
