"""Shared pieces of the degenerate-solution detectors: the report type, the evaluation probe and the
contract checks.

A detector answers one question about a flow-map model (is it one of the degenerate solutions D1-D9
catalogued in ``docs/detectors.md``?) with a :class:`DetectorReport`: a scale-free statistic, the
threshold it is compared with, whether it fired, and the evidence in words with numbers.

A :class:`Probe` holds the inputs several detectors share and caches what is expensive: a fixed
set of base noise z ~ N(0, I), data pools x1 ~ data, marginal samples x_t ~ p_t, and the
reference flow's map X*_{s,t} evaluated on them (an ODE solve for mixtures). Build one probe and
hand it to several detectors (``diagnose`` does) so the oracle runs once per (s, t).

Conventions: t = 0 is noise, t = 1 is data, I_t = alpha_t x0 + beta_t x1. Everything a detector
compares is computed in float64 on the model's device; the model itself is evaluated in its own
dtype. ``T`` is the end time of the one-step map, :func:`workbench.flows.base.data_end_time` of the
reference: 1, or 1 - ``DATA_END_MARGIN`` for references singular at the data (atoms, rings).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ...core.contract import Flow, check_implements
from ...core.validation import check_positive_int, check_tensor, model_dtype
from ...flows.base import data_end_time

F64 = torch.float64


class NonFiniteOutput(ValueError):
    """The model returned NaN or inf where a detector evaluated it (see ``detect_non_finite``)."""


@dataclass(frozen=True)
class DetectorReport:
    """The answer of one detector.

    name: detector name (e.g. ``"identity"``); fired: whether the degeneracy was detected;
    statistic: the scale-free number compared with ``threshold`` (NaN only when the detector does not
    apply, which ``evidence`` then says); evidence: plain words with the numbers; code: the
    catalogue entry ("D1" ... "D9" of ``docs/detectors.md``, "" for detectors outside it); fires_above: the detector fires
    when statistic > threshold (True) or statistic < threshold (False), possibly with extra
    conditions named in the evidence.
    """

    name: str
    fired: bool
    statistic: float
    threshold: float
    evidence: str
    code: str = ""
    fires_above: bool = True

    def to_dict(self) -> dict:
        """JSON-safe dict (non-finite numbers as the strings "nan", "inf", "-inf")."""
        def num(v: float) -> float | str:
            return v if math.isfinite(v) else str(v)

        return {"name": self.name, "code": self.code, "fired": bool(self.fired), "statistic": num(float(self.statistic)),
                "threshold": num(float(self.threshold)), "fires_above": bool(self.fires_above),
                "evidence": self.evidence}


def report(name: str, code: str, statistic: float, threshold: float, fired: bool, evidence: str,
           *, fires_above: bool = True) -> DetectorReport:
    return DetectorReport(name=name, fired=bool(fired), statistic=float(statistic), threshold=float(threshold),
                          evidence=evidence, code=code, fires_above=fires_above)


def not_applicable(name: str, code: str, threshold: float, why: str, *, fires_above: bool = True) -> DetectorReport:
    """A quiet report with statistic NaN that says why the detector does not apply."""
    return report(name, code, math.nan, threshold, False, f"not applicable: {why}", fires_above=fires_above)


# -- the model under test ---------------------------------------------------------------------------
def model_dtype_device(model: object) -> tuple[torch.dtype, torch.device | None]:
    """(dtype, device) the model computes on: the dtype is :func:`workbench.core.validation.model_dtype`
    (float64 for a model that follows its input, e.g. an analytic flow or ``ExactFlowMap``), the device
    that of its first floating parameter or buffer (None if it has none)."""
    dtype = model_dtype(model)
    device = None
    if isinstance(model, torch.nn.Module):
        for p in list(model.parameters()) + list(model.buffers()):
            if p.is_floating_point():
                device = p.device
                break
    return (F64 if dtype is None else dtype), device


def check_model_dim(model: object) -> int:
    """The model must have the flow contract (:class:`workbench.core.contract.Flow`: velocity,
    flow_map, dim); returns dim."""
    check_implements(model, Flow, "model")
    return int(model.dim)


@contextlib.contextmanager
def evaluating(model: object) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the previous mode is restored."""
    was = model.training if isinstance(model, torch.nn.Module) else None
    if was is not None:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was is not None:
            model.train(was)


def _finite(y: torch.Tensor, what: str) -> torch.Tensor:
    if not bool(torch.isfinite(y).all()):
        bad = int((~torch.isfinite(y)).sum())
        raise NonFiniteOutput(f"{what} returned {bad} non-finite value(s); run detect_non_finite / diagnose "
                              "for a divergence report")
    return y


def sq_norms(a: torch.Tensor) -> torch.Tensor:
    """|a_i|^2 per row, float64, shape (n,)."""
    return a.reshape(a.shape[0], -1).to(F64).pow(2).sum(dim=1)


def trace_cov(x: torch.Tensor) -> float:
    """tr Cov of the rows of x (unbiased), float64."""
    x = x.reshape(x.shape[0], -1).to(F64)
    return float((x - x.mean(dim=0)).pow(2).sum() / max(x.shape[0] - 1, 1))


class Probe:
    """Shared, cached evaluation inputs for the detectors (module docstring).

    dim: the state dimension; reference: an analytic flow (velocity, flow_map, sample_data,
    sample_marginal, interpolant), enabling the oracle-based detectors; data: (m, dim) samples of the
    data law (used when there is no reference; with a reference, data pools are drawn from it);
    generator: the source of every random draw (default: a CPU generator seeded 0, so a diagnosis
    is reproducible); n: points per evaluation set; interpolant: for marginals built from data when
    there is no reference (default: the reference's, else linear); device: where the model lives.
    """

    def __init__(self, dim: int, *, reference: object = None, data: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, n: int = 512, interpolant: object = None,
                 device: torch.device | str | None = None) -> None:
        self.dim = check_positive_int(int(dim), "dim")
        self.n = check_positive_int(n, "n")
        if reference is not None:
            check_implements(reference, Flow, "reference", also=("sample_data", "sample_marginal"))
            if int(reference.dim) != self.dim:
                raise ValueError(f"reference.dim must equal the model's dim {self.dim}, got {reference.dim}")
        if data is not None:
            data = check_tensor(data, "data")
            if data.ndim != 2 or data.shape[1] != self.dim or data.shape[0] < 2:
                raise ValueError(f"data must have shape (m, {self.dim}) with m >= 2, got {tuple(data.shape)}")
            if not bool(torch.isfinite(data).all()):
                raise ValueError("data contains non-finite values; expected finite samples of the data law")
        self.reference = reference
        self.device = torch.device(device) if device is not None else (
            data.device if data is not None else torch.device("cpu"))
        self._data = None if data is None else data.detach().to(device=self.device, dtype=F64)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        from ...flows.interpolants import get_interpolant

        if interpolant is None and reference is not None:
            interpolant = getattr(reference, "interpolant", None)
        self.interpolant = get_interpolant(interpolant)
        self.T = data_end_time(reference)
        self._cache: dict[tuple, object] = {}
        self.z = self._randn(self.n)

    # -- availability ------------------------------------------------------------------------------
    @property
    def has_reference(self) -> bool:
        return self.reference is not None

    @property
    def has_samples(self) -> bool:
        """Whether samples of the data law (hence of every p_t) are available."""
        return self.reference is not None or self._data is not None

    # -- random draws ------------------------------------------------------------------------------
    def _randn(self, n: int) -> torch.Tensor:
        dev = self.generator.device
        return torch.randn(n, self.dim, generator=self.generator, dtype=F64, device=dev).to(self.device)

    def _memo(self, key: tuple, make) -> object:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def data_pool(self, k: int = 0) -> torch.Tensor:
        """The k-th pool (k = 0, 1) of data samples, float64 (n', dim); pools are disjoint."""
        def make():
            if self.reference is not None:
                x = self.reference.sample_data(self.n, self.generator, dtype=F64, device=self.generator.device)
                return x.to(self.device)
            if self._data is None:
                raise ValueError("this detector needs samples of the data law: pass data= or reference=")
            perm = self._memo(("perm",), lambda: torch.randperm(
                self._data.shape[0], generator=self.generator, device=self.generator.device).to(self.device))
            m = min(self.n, self._data.shape[0] // 2)
            return self._data[perm[k * m:(k + 1) * m]]

        return self._memo(("data", k), make)

    def source(self, s: float) -> torch.Tensor:
        """Starting points at time s: the fixed noise z for s = 0, else samples of p_s."""
        s = float(s)
        if s == 0.0:
            return self.z
        return self.marginal(s)

    def marginal(self, t: float, k: int = 0) -> torch.Tensor:
        """n samples of p_t (float64), set k (independent sets for k = 0, 1): the reference's, or
        alpha_t z' + beta_t x1 with x1 from data pool k."""
        t = float(t)

        def make():
            if self.reference is not None:
                x = self.reference.sample_marginal(t, self.n, self.generator, dtype=F64, device=self.generator.device)
                return x.to(self.device)
            x1 = self.data_pool(k)
            z = self._randn(x1.shape[0])
            tt = torch.full((x1.shape[0], 1), t, dtype=F64, device=self.device)
            return self.interpolant.alpha(tt) * z + self.interpolant.beta(tt) * x1

        return self._memo(("marginal", t, k), make)

    def target(self, t: float, k: int = 0) -> torch.Tensor:
        """Samples of p_t independent of the noise z: data pool k at t = 1, else ``marginal(t, k)``."""
        return self.data_pool(k) if float(t) == 1.0 else self.marginal(t, k)

    def trace_cov(self, t: float) -> float:
        """tr Cov(p_t) estimated from ``target(t)``."""
        return self._memo(("trcov", float(t)), lambda: trace_cov(self.target(t)))

    # -- the oracle --------------------------------------------------------------------------------
    def oracle(self, s: float, t: float) -> torch.Tensor:
        """X*_{s,t}(source(s)) by the reference flow, float64 (cached)."""
        if self.reference is None:
            raise ValueError("this detector needs the reference flow: pass reference=")

        def make():
            return _finite(self.reference.flow_map(float(s), float(t), self.source(s)).to(F64), "reference.flow_map")

        return self._memo(("oracle", float(s), float(t)), make)

    def reference_velocity(self, t: float, x: torch.Tensor) -> torch.Tensor:
        if self.reference is None:
            raise ValueError("this detector needs the reference flow: pass reference=")
        return self.reference.velocity(float(t), x.to(F64)).to(F64)


def run_map(model: object, s: object, t: object, x: torch.Tensor) -> torch.Tensor:
    """model.flow_map(s, t, x) evaluated in the model's dtype, returned in float64; raises
    :class:`NonFiniteOutput` on NaN / inf."""
    dtype, _ = model_dtype_device(model)
    if isinstance(s, torch.Tensor):
        s = s.to(dtype)
    if isinstance(t, torch.Tensor):
        t = t.to(dtype)
    return _finite(model.flow_map(s, t, x.to(dtype)).to(F64), f"model.flow_map at (s, t) = ({_fmt_time(s)}, {_fmt_time(t)})")


def run_velocity(model: object, t: object, x: torch.Tensor) -> torch.Tensor:
    """model.velocity(t, x) (the model's diagonal v_{t,t}) in float64; raises on NaN / inf."""
    dtype, _ = model_dtype_device(model)
    if isinstance(t, torch.Tensor):
        t = t.to(dtype)
    return _finite(model.velocity(t, x.to(dtype)).to(F64), f"model.velocity at t = {_fmt_time(t)}")


def _fmt_time(t: object) -> str:
    if isinstance(t, torch.Tensor):
        return f"{float(t.min()):.3g}..{float(t.max()):.3g}" if t.numel() > 1 else f"{float(t):.3g}"
    return f"{float(t):.3g}"


def resolve_probe(model: object, probe: Probe | None, reference: object, data: torch.Tensor | None,
                  generator: torch.Generator | None, n: int) -> Probe:
    """The probe a detector runs on: the given one, or a fresh one for these inputs."""
    dim = check_model_dim(model)
    if probe is not None:
        if not isinstance(probe, Probe):
            raise TypeError(f"probe must be a Probe, got {type(probe).__name__}")
        if probe.dim != dim:
            raise ValueError(f"probe.dim {probe.dim} does not match the model's dim {dim}")
        return probe
    _, device = model_dtype_device(model)
    return Probe(dim, reference=reference, data=data, generator=generator, n=n, device=device)
