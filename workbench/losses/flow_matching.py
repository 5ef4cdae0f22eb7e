"""Diagonal flow matching and the batch machinery every split objective shares.

Flow matching on the diagonal (B25 sec. 2.1, the tangent condition v_{t,t} = b_t of sec. 1.3):

    L_b = E_t E_{x0, x1} | v_{t,t}(I_t) - dI_t/dt |^2,   I_t = alpha_t x0 + beta_t x1,  x0 ~ N(0, I).

Its minimum over v is not zero but the irreducible variance E|dI_t/dt - b_t(I_t)|^2, reached at
v_{t,t} = b_t = E[dI_t/dt | I_t].

Split objectives (B25 sec. 2.2): the first ``n_diagonal(batch, diag_fraction)`` samples carry only
the diagonal term (s = t), the rest only an off-diagonal term; the per-sample squared error is the
SUM over dimensions; a weighting (``none`` / ``learned`` / ``adaptive`` / ``pseudo_huber``) maps the
raw per-sample loss to the loss actually minimised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.validation import check_finite, check_tensor, value_checks_disabled
from ..flows.interpolants import LinearInterpolant, get_interpolant
from .base import ObjectiveResult, TimeBatch
from .derivatives import check_method
from .samplers import UniformTriangle, check_fraction, n_diagonal, sample_times
from .weighting import Weighting, get_weighting

__all__ = [
    "FlowMatching",
    "OffDiagonal",
    "SplitConfig",
    "check_choice",
    "check_data",
    "check_model",
    "diagonal_fm",
    "draw_noise",
    "evaluate_split",
    "interpolate",
    "norm",
    "squared_error",
]


# -- small helpers ------------------------------------------------------------------------------------
def squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b|^2 summed over all but the batch dimension, shape (batch,)."""
    return (a - b).pow(2).flatten(1).sum(1)


def norm(a: torch.Tensor) -> torch.Tensor:
    """Detached per-sample Euclidean norm, shape (batch,) (for ``aux`` diagnostics)."""
    return a.detach().flatten(1).norm(dim=1)


def check_model(model: object) -> object:
    """model must have average_velocity(s, t, x), flow_map(s, t, x) and velocity(t, x) (TypeError otherwise)."""
    for attr in ("average_velocity", "flow_map", "velocity"):
        if not callable(getattr(model, attr, None)):
            raise TypeError(
                f"model must be a flow-map model with average_velocity(s, t, x), flow_map(s, t, x) and "
                f"velocity(t, x); {type(model).__name__} lacks {attr!r}"
            )
    return model


def check_data(model: object, x1: object) -> torch.Tensor:
    """x1 must be a finite floating (batch, *event) tensor; (batch, model.dim) for vector models."""
    x1 = check_tensor(x1, "x1")
    if x1.ndim < 2 or x1.shape[0] < 1:
        raise ValueError(f"x1 must have shape (batch, *event) with batch >= 1, got {tuple(x1.shape)}")
    dim = getattr(model, "dim", None)
    if x1.ndim == 2 and isinstance(dim, int) and x1.shape[1] != dim:
        raise ValueError(f"x1 must have shape (batch, {dim}) to match model.dim, got {tuple(x1.shape)}")
    return check_finite(x1, "x1")


def draw_noise(x1: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """x0 ~ N(0, I) of x1's shape, dtype and device, drawn with ``generator`` (on its device)."""
    dev = x1.device if generator is None else torch.device(generator.device)
    return torch.randn(x1.shape, dtype=x1.dtype, device=dev, generator=generator).to(x1.device)


def interpolate(interpolant, t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor):
    """(I_t, dI_t/dt) = (alpha_t x0 + beta_t x1, alpha'_t x0 + beta'_t x1) for (batch,) times t; x0, x1
    (batch, *event)."""
    te = t.reshape(t.shape[0], *([1] * (x1.ndim - 1)))
    return (interpolant.alpha(te) * x0 + interpolant.beta(te) * x1,
            interpolant.dalpha(te) * x0 + interpolant.dbeta(te) * x1)


def diagonal_fm(model, interpolant, t: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """|v_{t,t}(I_t) - dI_t/dt|^2 per sample, shape (batch,)."""
    x_t, dx_t = interpolate(interpolant, t, x0, x1)
    return squared_error(model.velocity(t, x_t), dx_t)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """value must be one of choices (ValueError naming ``name`` otherwise)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


# -- shared configuration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitConfig:
    """Fields every split objective has (validated and normalised on construction and on
    ``dataclasses.replace``): ``interpolant`` (instance or 'linear' / 'trig'), ``diag_fraction`` in
    [0, 1], time ``sampler`` (``sample`` / ``sample_diagonal``), ``weighting`` (a Weighting or a
    kind name) and derivative ``method`` ('jvp' or 'fd', with ``fd_eps`` the step, None = eps^(1/3))."""

    interpolant: object = LinearInterpolant()
    diag_fraction: float = 0.75
    sampler: object = UniformTriangle()
    weighting: object = Weighting()
    method: str = "jvp"
    fd_eps: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "interpolant", get_interpolant(self.interpolant))
        check_fraction(self.diag_fraction, "diag_fraction")
        if not (hasattr(self.sampler, "sample") and hasattr(self.sampler, "sample_diagonal")):
            raise TypeError(f"sampler must provide sample and sample_diagonal, got {type(self.sampler).__name__}")
        object.__setattr__(self, "weighting", get_weighting(self.weighting))
        check_method(self.method)
        if self.fd_eps is not None and not (isinstance(self.fd_eps, (int, float)) and self.fd_eps > 0):
            raise ValueError(f"fd_eps must be None or a float > 0, got {self.fd_eps!r}")


@dataclass(frozen=True)
class OffDiagonal:
    """What an off-diagonal term returns: raw per-sample loss (n_off,), detached per-sample
    diagnostics (n_off,) and, when it draws one, the intermediate time u (n_off,)."""

    raw: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    u: torch.Tensor | None = None


OffDiagonalFn = Callable[..., OffDiagonal]


def _resolve_times(config: SplitConfig, x1: torch.Tensor, generator, times) -> tuple[TimeBatch, int]:
    n = x1.shape[0]
    if times is None:
        tb = sample_times(n, sampler=config.sampler, diag_fraction=config.diag_fraction,
                          generator=generator, dtype=x1.dtype, device=x1.device)
        return tb, n_diagonal(n, config.diag_fraction)
    if not isinstance(times, TimeBatch):
        raise TypeError(f"times must be a TimeBatch or None, got {type(times).__name__}")
    for name in ("s", "t", "diagonal"):
        v = getattr(times, name)
        if not isinstance(v, torch.Tensor) or v.shape != (n,):
            raise ValueError(f"times.{name} must be a ({n},) tensor matching the batch of x1")
    n_d = int(times.diagonal.sum())
    if not bool(times.diagonal[:n_d].all()):
        raise ValueError("times.diagonal must mark a prefix of the batch (diagonal samples first, as sample_times does)")
    s, t = times.s.to(x1), times.t.to(x1)
    if not bool((s[n_d:] <= t[n_d:]).all()) or not bool(torch.equal(s[:n_d], t[:n_d])):
        raise ValueError("times must have s <= t off the diagonal and s == t on it")
    if bool((s < 0).any()) or bool((t > 1).any()):
        raise ValueError("times must lie in [0, 1]")
    return TimeBatch(s=s, t=t, diagonal=times.diagonal.to(x1.device), u=times.u), n_d


def evaluate_split(
    config: SplitConfig,
    model: object,
    x1: torch.Tensor,
    generator: torch.Generator | None,
    off_name: str | None,
    off_diagonal: OffDiagonalFn,
    *,
    x0: torch.Tensor | None = None,
    times: TimeBatch | None = None,
) -> ObjectiveResult:
    """Run a split objective: draw times (unless given), x0 ~ N(0, I) (unless given), the diagonal
    flow-matching term on the first n_diag samples, ``off_diagonal(model, s, t, x0, x1, generator)``
    on the rest, then the weighting. ``terms`` holds the raw (unweighted) per-sample terms ``diag_fm``
    and ``off_name`` (omitted when None); ``aux`` holds ``raw_loss`` (batch,) and the off-diagonal
    term's diagnostics (over the off-diagonal samples). Model calls run under ``value_checks_disabled`` (inputs are
    validated here once; finite-difference times may step outside [0, 1] by the fd step)."""
    check_model(model)
    x1 = check_data(model, x1)
    tb, n_d = _resolve_times(config, x1, generator, times)
    if x0 is None:
        x0 = draw_noise(x1, generator)
    else:
        x0 = check_tensor(x0, "x0")
        if x0.shape != x1.shape:
            raise ValueError(f"x0 must have the shape of x1 {tuple(x1.shape)}, got {tuple(x0.shape)}")
        x0 = x0.to(x1)
    ip = config.interpolant
    empty = x1.new_zeros(0)
    with value_checks_disabled():
        diag = diagonal_fm(model, ip, tb.t[:n_d], x0[:n_d], x1[:n_d]) if n_d > 0 else empty
        if n_d < x1.shape[0]:
            off = off_diagonal(model, tb.s[n_d:], tb.t[n_d:], x0[n_d:], x1[n_d:], generator)
        else:
            off = OffDiagonal(raw=empty)
        raw = torch.cat([diag, off.raw])
        loss = config.weighting(raw, model, tb, x1)
    if off.u is not None:
        tb = dataclasses.replace(tb, u=torch.cat([tb.t[:n_d], off.u]))
    aux = {"raw_loss": raw.detach(), **{k: v.detach() for k, v in off.aux.items()}}
    terms = {"diag_fm": diag} if off_name is None else {"diag_fm": diag, off_name: off.raw}
    return ObjectiveResult(loss=loss, terms=terms, times=tb, aux=aux)


# -- pure flow matching -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlowMatching:
    """"fm": diagonal flow matching on every sample (B25 sec. 2.1, L_b):

        loss_i = w( | v_{t,t}(I_t) - dI_t/dt |^2 ),   t ~ sampler.sample_diagonal, s = t.

    Trains only the tangent v_{t,t} = b_t; terms: ``diag_fm``. Fields: ``interpolant``, ``sampler``
    (its diagonal law; default U[0, 1]), ``weighting``.
    """

    name: str = "fm"
    interpolant: object = LinearInterpolant()
    sampler: object = UniformTriangle()
    weighting: object = Weighting()

    def __post_init__(self) -> None:
        object.__setattr__(self, "interpolant", get_interpolant(self.interpolant))
        if not hasattr(self.sampler, "sample_diagonal"):
            raise TypeError(f"sampler must provide sample_diagonal, got {type(self.sampler).__name__}")
        object.__setattr__(self, "weighting", get_weighting(self.weighting))

    def __call__(self, model, x1, generator=None, *, x0=None, times=None) -> ObjectiveResult:
        """Per-sample loss (batch,) for data x1 (batch, *event); ``x0`` / ``times`` fix the noise and
        the times (all diagonal) instead of drawing them."""
        if times is not None and not isinstance(times, TimeBatch):
            raise TypeError(f"times must be a TimeBatch or None, got {type(times).__name__}")
        if times is not None and not bool(torch.as_tensor(times.diagonal).all()):
            raise ValueError("FlowMatching takes only diagonal times (times.diagonal all True)")
        cfg = SplitConfig(interpolant=self.interpolant, diag_fraction=1.0, sampler=_DiagonalOnly(self.sampler),
                          weighting=self.weighting)
        return evaluate_split(cfg, model, x1, generator, None, _no_off_diagonal, x0=x0, times=times)


@dataclass(frozen=True)
class _DiagonalOnly:
    """Adapter: a sampler used for its diagonal law only."""

    base: object

    def sample(self, n, generator=None, dtype=torch.float64, device=None):  # pragma: no cover - unused
        t = self.base.sample_diagonal(n, generator, dtype, device)
        return t, t

    def sample_diagonal(self, n, generator=None, dtype=torch.float64, device=None):
        return self.base.sample_diagonal(n, generator, dtype, device)


def _no_off_diagonal(*args) -> OffDiagonal:  # pragma: no cover - diag_fraction = 1 never calls it
    raise RuntimeError("flow matching has no off-diagonal term")
