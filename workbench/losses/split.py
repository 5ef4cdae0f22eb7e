"""The batch split every objective shares, and the helpers objectives are written with.

Split objectives (B25, the batch split of its released code): the first
``n_diagonal(batch, diag_fraction)`` samples carry only the diagonal flow-matching term (s = t,
B25's L_b; the tangent condition v_{t,t} = b_t), the rest only the objective's off-diagonal term:

    loss_i = w( |v_{t,t}(I_t) - dI_t/dt|^2 )        i < n_diag,   I_t = alpha_t x0 + beta_t x1,
    loss_i = w( raw off-diagonal loss at (s, t) )  i >= n_diag,  x0 ~ N(0, I),

with the per-sample squared error SUMMED over dimensions and a weighting w (``none`` /
``learned`` / ``adaptive`` / ``pseudo_huber``, see ``weighting``) mapping the raw per-sample loss
to the loss actually minimised.

One pattern for every objective (the recipe is in the ``registry`` module docstring): a frozen
dataclass with

* ``requires_teacher`` (a class attribute): True when it cannot run without a ``teacher`` field set;
* ``split_config() -> SplitConfig``: its interpolant, diagonal fraction, time sampler, weighting and
  derivative method (``SplitConfig.of(self, ...)``);
* ``off_diagonal(model, s, t, x0, x1, generator) -> OffDiagonal``: its term over the off-diagonal
  samples (possibly none); EVERYTHING it reports (the raw loss, named terms, diagnostics, an
  intermediate time, a loss it weighs itself) travels in the returned :class:`OffDiagonal`;
* ``__call__(model, x1, generator=None, *, x0=None, times=None)`` returning
  ``evaluate_split(self, model, x1, generator, x0=x0, times=times)``.

:func:`evaluate_split` owns everything else: input validation (model, data, dtypes, generator,
teacher), the times, the noise, the diagonal term, the weighting and the assembled
:class:`ObjectiveResult`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from ..core.contract import Flow, FlowMapModel, TimeSampler, check_implements, protocol_members
from ..core.validation import (
    check_dtype_matches,
    check_finite,
    check_generator,
    check_tensor,
    model_dtype,
    value_checks_disabled,
)
from ..flows.interpolants import LinearInterpolant, get_interpolant
from .base import ObjectiveResult, TimeBatch
from .derivatives import check_method
from .samplers import UniformTriangle, check_fraction, n_diagonal, sample_times
from .weighting import Weighting, get_weighting, gradient_weight

__all__ = [
    "DIAGONAL_TERM",
    "OffDiagonal",
    "SplitConfig",
    "check_choice",
    "check_data",
    "check_model",
    "check_positive",
    "check_teacher",
    "diagonal_fm",
    "draw_noise",
    "evaluate_split",
    "interpolate",
    "model_dtype",
    "norm",
    "normalise_fields",
    "resolve_times",
    "squared_error",
]

#: name of the diagonal flow-matching term in ``ObjectiveResult.terms``
DIAGONAL_TERM = "diag_fm"

TIME_WEIGHTS = ("none", "sin")


# -- small helpers ------------------------------------------------------------------------------------
def squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b|^2 summed over all but the batch dimension, shape (batch,)."""
    return (a - b).pow(2).flatten(1).sum(1)


def norm(a: torch.Tensor) -> torch.Tensor:
    """Detached per-sample Euclidean norm, shape (batch,) (for ``aux`` diagnostics)."""
    return a.detach().flatten(1).norm(dim=1)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """value must be one of choices (ValueError naming ``name`` otherwise)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_positive(value: object, name: str, *, allow_none: bool = False) -> None:
    """value must be a finite real number > 0 (or None with ``allow_none``); ValueError naming ``name``."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0{' or None' if allow_none else ''}, got {value!r}")


def check_model(model: object) -> object:
    """model must be a flow-map model (``FlowMapModel``: average_velocity(s, t, x), flow_map(s, t, x),
    velocity(t, x) and dim, the methods callable); TypeError naming what it lacks otherwise."""
    check_implements(model, FlowMapModel, "model")
    for attr in ("average_velocity", "flow_map", "velocity"):
        if not callable(getattr(model, attr)):
            raise TypeError(f"model must be a flow-map model; its {attr!r} is not callable")
    return model


def check_data(model: object, x1: object) -> torch.Tensor:
    """x1 must be a finite floating (batch, *event) tensor, (batch, model.dim) for vector models, in
    the dtype the model computes in (see :func:`model_dtype`)."""
    x1 = check_tensor(x1, "x1")
    if x1.ndim < 2 or x1.shape[0] < 1:
        raise ValueError(f"x1 must have shape (batch, *event) with batch >= 1, got {tuple(x1.shape)}")
    dim = getattr(model, "dim", None)
    if x1.ndim == 2 and isinstance(dim, int) and x1.shape[1] != dim:
        raise ValueError(f"x1 must have shape (batch, {dim}) to match model.dim, got {tuple(x1.shape)}")
    dtype = model_dtype(model)
    if dtype is not None:
        check_dtype_matches(x1, "x1", dtype)
    return check_finite(x1, "x1")


def check_teacher(teacher: object, needs: tuple[str, ...] = ("velocity",)) -> object:
    """A ``teacher`` field at construction: None or a :class:`~workbench.core.contract.Flow` (an analytic
    flow or a flow-map model) that also has the members ``needs`` beyond the flow contract (e.g.
    ``log_prob``); TypeError naming the teacher otherwise (:func:`~workbench.core.contract.check_implements`)."""
    if teacher is None:
        return None
    flow_members = protocol_members(Flow)
    return check_implements(teacher, Flow, "teacher", also=tuple(n for n in needs if n not in flow_members))


def _check_teacher_matches(objective: object, x1: torch.Tensor) -> None:
    """The teacher (if any) must exist when required, be of x1's dimension and compute in x1's dtype."""
    teacher = getattr(objective, "teacher", None)
    name = getattr(objective, "name", type(objective).__name__)
    if teacher is None:
        if getattr(objective, "requires_teacher", False):
            raise ValueError(f"objective {name!r} needs a teacher (an analytic flow or a frozen model); set one with "
                             f"dataclasses.replace(OBJECTIVES[{name!r}], teacher=flow)")
        return
    dim = getattr(teacher, "dim", None)
    if x1.ndim == 2 and isinstance(dim, int) and dim != x1.shape[1]:
        raise ValueError(f"teacher has dim {dim} but x1 has shape {tuple(x1.shape)}: the teacher of {name!r} must be a "
                         f"flow of the data's dimension {x1.shape[1]}")
    dtype = model_dtype(teacher)
    if dtype is not None and dtype != x1.dtype:
        raise TypeError(f"teacher computes in {dtype} but x1 is {x1.dtype}; cast one of them: teacher.to({x1.dtype}) "
                        f"or x1.to({dtype}) (with the model)")


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


# -- the split configuration ------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitConfig:
    """How an objective splits and weighs a batch (validated and normalised on construction):
    ``interpolant`` (instance or 'linear' / 'trig'), ``diag_fraction`` in [0, 1], time ``sampler``
    (``sample`` / ``sample_diagonal``), ``weighting`` (a Weighting or a kind name), derivative
    ``method`` ('jvp' or 'fd', with ``fd_eps`` the step, None = eps^(1/3)) and ``time_weight``
    ('none', or 'sin': every sample's loss times sin(pi s / 2), K26 code's "augmented" variant)."""

    interpolant: object = LinearInterpolant()
    diag_fraction: float = 0.75
    sampler: object = UniformTriangle()
    weighting: object = Weighting()
    method: str = "jvp"
    fd_eps: float | None = None
    time_weight: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "interpolant", get_interpolant(self.interpolant))
        check_fraction(self.diag_fraction, "diag_fraction")
        check_implements(self.sampler, TimeSampler, "sampler")
        object.__setattr__(self, "weighting", get_weighting(self.weighting))
        check_method(self.method)
        if self.fd_eps is not None and not (isinstance(self.fd_eps, (int, float)) and self.fd_eps > 0):
            raise ValueError(f"fd_eps must be None or a float > 0, got {self.fd_eps!r}")
        check_choice(self.time_weight, "time_weight", TIME_WEIGHTS)

    @classmethod
    def of(cls, objective: object, **derived: object) -> SplitConfig:
        """The split configuration of ``objective``: its fields named like SplitConfig's fields, with
        ``derived`` values for those it computes from other fields (e.g. a sampler built from a gap)."""
        own = {f.name: getattr(objective, f.name) for f in dataclasses.fields(cls) if hasattr(objective, f.name)}
        return cls(**(own | derived))


def normalise_fields(objective: object) -> SplitConfig:
    """For an objective's ``__post_init__``: store its ``interpolant`` and ``weighting`` fields in
    normal form (instances, not names) and validate its split configuration (raising on a bad field)."""
    if hasattr(objective, "interpolant"):
        object.__setattr__(objective, "interpolant", get_interpolant(objective.interpolant))
    if hasattr(objective, "weighting"):
        object.__setattr__(objective, "weighting", get_weighting(objective.weighting))
    return objective.split_config()


# -- what an off-diagonal part returns ---------------------------------------------------------------
@dataclass(frozen=True)
class OffDiagonal:
    """An objective's off-diagonal part over the n_off off-diagonal samples (n_off may be 0):

    * ``raw`` (n_off,): the raw per-sample loss (reported in ``aux["raw_loss"]``);
    * ``aux``: per-sample diagnostics (n_off,), detached by ``evaluate_split``;
    * ``u`` (n_off,): the intermediate time, when the objective draws one;
    * ``terms``: named per-sample terms (n_off,) for ``ObjectiveResult.terms``; a term named
      ``DIAGONAL_TERM`` ("diag_fm") extends the diagonal term over these samples (an anchor carried
      by every sample: the result's diag_fm then spans the batch, diagonal samples first);
    * ``loss`` (n_off,): the per-sample loss the split weighting acts on, when the objective weighs
      a term itself (default: ``raw``), with ``weight`` (n_off,) its derivative with respect to the
      term it weighs (default: 1); ``aux["weight"]`` reports the product with the split weighting's.
    """

    raw: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    u: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    loss: torch.Tensor | None = None
    weight: torch.Tensor | None = None

    def named(self, term: str) -> OffDiagonal:
        """This result with its raw loss reported as the term ``term`` (before any other terms)."""
        return dataclasses.replace(self, terms={term: self.raw, **self.terms})


def _check_off_diagonal(objective: object, off: object, n_off: int) -> OffDiagonal:
    """An objective's off_diagonal must return an OffDiagonal of (n_off,) tensors (a programming error otherwise)."""
    name = getattr(objective, "name", type(objective).__name__)
    if not isinstance(off, OffDiagonal):
        raise TypeError(f"{name}.off_diagonal must return an OffDiagonal, got {type(off).__name__}")
    tensors = {"raw": off.raw, "loss": off.loss, "weight": off.weight, "u": off.u}
    tensors |= {f"terms[{k!r}]": v for k, v in off.terms.items()} | {f"aux[{k!r}]": v for k, v in off.aux.items()}
    for key, v in tensors.items():
        if v is not None and (not isinstance(v, torch.Tensor) or v.shape != (n_off,)):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"{name}.off_diagonal returned {key} of shape {got}; expected ({n_off},), one value "
                             f"per off-diagonal sample")
    return off


# -- times ----------------------------------------------------------------------------------------------
def resolve_times(config: SplitConfig, x1: torch.Tensor, generator, times) -> tuple[TimeBatch, int]:
    """The batch's times and its number of diagonal samples: drawn with ``config.sampler`` (the first
    ``n_diagonal(batch, config.diag_fraction)`` diagonal) when ``times`` is None, else ``times``
    checked (a TimeBatch of (batch,) tensors in [0, 1], diagonal samples first with s = t, s <= t on
    the rest) and moved to x1's dtype and device."""
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


def _resolve_noise(x0: object, x1: torch.Tensor, generator, dtype: torch.dtype | None) -> torch.Tensor:
    """x0 ~ N(0, I) drawn, or the given x0 checked: x1's shape, the model's dtype (``dtype``; x1's
    when the model follows its input), moved to x1's device."""
    if x0 is None:
        return draw_noise(x1, generator)
    x0 = check_tensor(x0, "x0")
    if x0.shape != x1.shape:
        raise ValueError(f"x0 must have the shape of x1 {tuple(x1.shape)}, got {tuple(x0.shape)}")
    if dtype is not None:
        check_dtype_matches(x0, "x0", dtype)
    elif x0.dtype != x1.dtype:
        raise TypeError(f"x0 has dtype {x0.dtype} but x1 has {x1.dtype}; pass x0.to({x1.dtype})")
    return x0.to(device=x1.device)


# -- the one evaluation ------------------------------------------------------------------------------------
def evaluate_split(
    objective: object,
    model: object,
    x1: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    x0: torch.Tensor | None = None,
    times: TimeBatch | None = None,
) -> ObjectiveResult:
    """Run an objective written in the split pattern (module docstring) on data x1 (batch, *event).

    Validates model, x1 (dtype: the model's, see :func:`model_dtype`), ``generator``, the teacher
    (present when ``requires_teacher``; of x1's dimension and dtype) and x0 (x1's shape and dtype);
    draws times (unless given) and x0 ~ N(0, I) (unless given); evaluates the diagonal flow-matching
    term on the first n_diag samples and ``objective.off_diagonal(model, s, t, x0, x1, generator)``
    on the rest, then the weighting of ``objective.split_config()``:

        raw_loss = [diag_fm, off.raw],   loss = w([diag_fm, off.loss or off.raw]) (x sin(pi s / 2)),

    ``terms`` = {"diag_fm": diagonal term (extended by off.terms["diag_fm"] if given), **off.terms};
    ``aux`` = {"raw_loss", off.aux..., "weight"} with weight = d loss_i / d raw_i (batch,) detached.
    Model calls run under ``value_checks_disabled`` (inputs are validated here once;
    finite-difference times may step outside [0, 1] by the fd step).
    """
    check_model(model)
    generator = check_generator(generator)
    x1 = check_data(model, x1)
    _check_teacher_matches(objective, x1)
    config = objective.split_config()
    tb, n_d = resolve_times(config, x1, generator, times)
    x0 = _resolve_noise(x0, x1, generator, model_dtype(model))
    n_off = x1.shape[0] - n_d
    with value_checks_disabled():
        diag = diagonal_fm(model, config.interpolant, tb.t[:n_d], x0[:n_d], x1[:n_d]) if n_d > 0 else x1.new_zeros(0)
        off = objective.off_diagonal(model, tb.s[n_d:], tb.t[n_d:], x0[n_d:], x1[n_d:], generator)
        off = _check_off_diagonal(objective, off, n_off)
        raw = torch.cat([diag, off.raw])
        weighed = raw if off.loss is None else torch.cat([diag, off.loss])
        loss = config.weighting(weighed, model, tb, x1)
    weight = gradient_weight(config.weighting, weighed, model, tb, x1)
    if off.weight is not None:
        weight = weight * torch.cat([torch.ones_like(diag), off.weight]).detach()
    if config.time_weight == "sin":
        tw = torch.sin(0.5 * math.pi * tb.s)
        loss, weight = loss * tw, weight * tw.detach()
    if off.u is not None:
        tb = dataclasses.replace(tb, u=torch.cat([tb.t[:n_d], off.u]))
    terms = {DIAGONAL_TERM: diag}
    for k, v in off.terms.items():
        terms[k] = torch.cat([diag, v]) if k == DIAGONAL_TERM else v
    aux = {"raw_loss": raw.detach(), **{k: v.detach() for k, v in off.aux.items()}, "weight": weight.detach()}
    return ObjectiveResult(loss=loss, terms=terms, times=tb, aux=aux)
