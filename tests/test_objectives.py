"""The contract every objective keeps, checked on every entry of ``OBJECTIVES`` (a newly registered
objective is covered without editing this file) and on the field variants the per-family test
files used to check one by one:

* the pattern: a frozen dataclass with ``requires_teacher``, ``split_config``, ``off_diagonal`` and
  ``__call__(model, x1, generator=None, *, x0=None, times=None)``; ``needs_teacher`` reads the
  declaration;
* the result: per-sample loss, terms, aux and realised times of the documented shapes, the diagonal
  term equal to flow matching written out here, deterministic given the generator, the term names
  the same for an all-diagonal batch;
* training: a float32 MLP gets finite, nonzero gradients;
* bad input: data, model, noise, times, generator, mixed dtypes, the teacher (missing, wrong kind,
  wrong dimension, wrong dtype) and bad field values are refused naming the argument.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from workbench.core import ulps
from workbench.core.validation import model_dtype
from workbench.experiments.presets import needs_teacher
from workbench.flows import GaussianFlow
from workbench.losses import (
    OBJECTIVES,
    ImprovedSelfDistillation,
    Objective,
    OffDiagonal,
    SplitConfig,
    TimeBatch,
    Weighting,
    evaluate_split,
    n_diagonal,
)
from workbench.losses.split import interpolate, normalise_fields, squared_error
from workbench.models import ExactFlowMap, make_mlp_flow_map
from workbench.models.perturbed import PerturbedFlowMap

F64, F32 = torch.float64, torch.float32
FLOW = GaussianFlow([0.5, -1.0], [[2.0, 0.6], [0.6, 0.5]])
NAMES = list(OBJECTIVES)
TEACHER_FREE_TEACHER_FIELD = {"scm"}  # a teacher field, but teacher=None is consistency training

# what each registered objective reports (pinned; an objective registered later gets the generic checks)
TERMS = {"fm": set(), "psd_midpoint": {"psd"}, "psd_uniform": {"psd"}, "isd": {"isd_fmd"},
         "isd_unstopped": {"isd_fmd"}, "isd_huber": {"isd_fmd"}}
AUX = {
    "fm": set(),
    "lsd": {"tangent_norm", "target_norm"}, "lmd": {"tangent_norm", "target_norm"},
    "esd": {"tangent_norm", "advection_norm", "target_norm"}, "emd": {"tangent_norm", "advection_norm", "target_norm"},
    "psd_midpoint": {"student_norm", "target_norm"}, "psd_uniform": {"student_norm", "target_norm"},
    "pd": {"student_norm", "target_norm"},
    "ct": {"target_norm", "residual_norm", "step"}, "cd": {"target_norm", "residual_norm", "step"},
    "scm": {"tangent_norm", "target_norm"}, "meanflow": {"tangent_norm", "target_norm"}, "shortcut": {"target_norm"},
    "isd": {"tangent_norm", "target_norm", "velocity_norm"}, "isd_unstopped": {"tangent_norm", "target_norm", "velocity_norm"},
    "isd_huber": {"tangent_norm", "target_norm", "velocity_norm"},
}

# field variants beyond the registry defaults (each once ran in its family's own float32 test)
VARIANTS = [
    ("lsd", {"stopgrad": "none"}), ("lsd", {"method": "fd"}), ("lsd", {"weighting": "learned"}),
    ("esd", {"stopgrad": "convex"}), ("esd", {"stopgrad": "none", "method": "fd"}), ("esd", {"weighting": "adaptive"}),
    ("psd_midpoint", {"weighting": "pseudo_huber"}), ("psd_uniform", {"stopgrad": "none", "form": "X"}),
    ("emd", {"stopgrad": "none"}), ("pd", {"teacher_map": "direct"}),
    ("ct", {"t_end": None, "distance": "l2", "delta_weight": "inverse_square", "step": "interpolant"}),
    ("cd", {"solver": "heun"}),
    ("scm", {"t_end": 1.0, "method": "fd", "fd_eps": 1e-2, "teacher": FLOW, "diag_fraction": 0.25}),
    ("meanflow", {"method": "fd", "fd_eps": 1e-2}),
    ("shortcut", {"finest": "velocity", "grid": False, "weighting": "adaptive"}),
    ("isd", {"method": "jvp"}), ("isd", {"anchor": "split", "diag_fraction": 0.75, "weighting": "learned"}),
    ("isd", {"weighting": Weighting("pseudo_huber", c=5.0), "time_weight": "sin"}),
]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def runnable(obj, teacher=FLOW):
    """The objective with a teacher when it requires one."""
    return dataclasses.replace(obj, teacher=teacher) if obj.requires_teacher else obj


def fields_of(obj) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}


def mlp(dtype=F32, seed: int = 0):
    torch.manual_seed(seed)
    return make_mlp_flow_map(2, hidden=16, depth=2, learned_weight=True).to(dtype)


def variant_id(v) -> str:
    name, kw = v

    def show(w):
        return w if isinstance(w, (str, int, float, type(None))) else getattr(w, "kind", type(w).__name__)

    return name + "".join(f"-{k}={show(w)}" for k, w in kw.items())


# -- the pattern --------------------------------------------------------------------------------------------
def check_pattern(key: str, obj) -> None:
    assert obj.name == key
    assert dataclasses.is_dataclass(obj)
    with pytest.raises(dataclasses.FrozenInstanceError):
        obj.name = "renamed"
    assert isinstance(type(obj).__dict__.get("requires_teacher"), bool), "requires_teacher must be declared on the class"
    assert "requires_teacher" not in fields_of(obj)
    assert isinstance(obj, Objective)
    params = inspect.signature(obj.__call__).parameters
    assert list(params) == ["model", "x1", "generator", "x0", "times"]
    assert params["generator"].default is None
    assert [params[p].kind for p in ("x0", "times")] == [inspect.Parameter.KEYWORD_ONLY] * 2
    assert isinstance(obj.split_config(), SplitConfig)
    assert callable(obj.off_diagonal)
    assert dataclasses.replace(obj) == obj  # construction normalises idempotently
    if obj.requires_teacher:
        assert "teacher" in fields_of(obj)
    # needs_teacher reads the declaration: the objective is not called to find out
    assert needs_teacher(obj) is (obj.requires_teacher and obj.teacher is None)
    if "teacher" in fields_of(obj):
        assert needs_teacher(dataclasses.replace(obj, teacher=FLOW)) is False


@pytest.mark.parametrize("name", NAMES)
def test_objective_follows_the_pattern(name):
    check_pattern(name, OBJECTIVES[name])
    assert needs_teacher(name) is OBJECTIVES[name].requires_teacher


def test_registry():
    b25 = {"fm", "lsd", "esd", "psd_midpoint", "psd_uniform", "lmd", "emd", "pd"}
    k26_and_peers = {"ct", "cd", "scm", "meanflow", "shortcut", "isd", "isd_unstopped", "isd_huber"}
    assert set(OBJECTIVES) == b25 | k26_and_peers
    assert {n for n, o in OBJECTIVES.items() if o.requires_teacher} == {"lmd", "emd", "pd", "cd"}
    assert OBJECTIVES["lsd"].stopgrad == "convex" and OBJECTIVES["esd"].stopgrad == "full"
    assert OBJECTIVES["lsd"].diag_fraction == 0.75
    custom = dataclasses.replace(OBJECTIVES["lsd"], diag_fraction=0.5, weighting="adaptive")
    assert custom.weighting == Weighting("adaptive") and OBJECTIVES["lsd"].diag_fraction == 0.75


def test_needs_teacher_reads_the_declaration_without_calling():
    @dataclass(frozen=True)
    class Untouchable:
        name: str = "untouchable"
        teacher: object = None
        requires_teacher: ClassVar[bool] = True

        def __call__(self, *args, **kwargs):
            raise AssertionError("needs_teacher must not call the objective")

    assert needs_teacher(Untouchable()) is True
    assert needs_teacher(Untouchable(teacher=FLOW)) is False
    assert needs_teacher(object()) is False  # nothing declared: nothing required
    with pytest.raises(ValueError, match="one of"):
        needs_teacher("no_such_objective")


# -- the result ---------------------------------------------------------------------------------------------
def check_result(obj, res, batch: int, *, key: str | None = None) -> None:
    """Shapes and names of an ObjectiveResult (module docstring of workbench.losses.base)."""
    tb = res.times
    n_d = int(tb.diagonal.sum())
    assert res.loss.shape == (batch,)
    for v in (tb.s, tb.t, tb.diagonal):
        assert v.shape == (batch,)
    if tb.u is not None:
        assert tb.u.shape == (batch,)
    assert bool(tb.diagonal[:n_d].all()) and not bool(tb.diagonal[n_d:].any())
    assert torch.equal(tb.s[:n_d], tb.t[:n_d]) and bool((tb.s <= tb.t).all())
    assert bool((tb.s >= 0).all()) and bool((tb.t <= 1).all())
    if tb.u is not None:
        assert bool((tb.u >= tb.s).all()) and bool((tb.u <= tb.t).all()) and torch.equal(tb.u[:n_d], tb.t[:n_d])
    assert "diag_fm" in res.terms and next(iter(res.terms)) == "diag_fm"
    assert res.terms["diag_fm"].shape in ((n_d,), (batch,))
    for k, v in res.terms.items():
        if k != "diag_fm":
            assert v.shape == (batch - n_d,), k
    assert {"raw_loss", "weight"} <= set(res.aux)
    for k, v in res.aux.items():
        assert not v.requires_grad, k
        assert v.shape == ((batch,) if k in ("raw_loss", "weight") else (batch - n_d,)), k
    if batch > n_d:
        assert "target_norm" in res.aux  # every off-diagonal term reports the size of its target
    if key in TERMS or key in AUX:
        off = TERMS.get(key, {key})
        assert set(res.terms) == {"diag_fm"} | off
        assert set(res.aux) == {"raw_loss", "weight"} | AUX[key]


@pytest.mark.parametrize("name", NAMES)
def test_result_shapes_times_and_determinism(name):
    obj = runnable(OBJECTIVES[name])
    model = mlp(F64, seed=1)
    x1 = FLOW.sample_data(16, gen(0))
    r1 = obj(model, x1, gen(7))
    check_result(obj, r1, 16, key=name)
    assert int(r1.times.diagonal.sum()) == n_diagonal(16, obj.split_config().diag_fraction)
    # deterministic given the generator, different for another seed
    r2 = obj(model, x1, gen(7))
    assert torch.equal(r1.loss, r2.loss)
    for a, b in ((r1.terms, r2.terms), (r1.aux, r2.aux)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for f in ("s", "t", "diagonal", "u"):
        x, y = getattr(r1.times, f), getattr(r2.times, f)
        assert (x is None and y is None) or torch.equal(x, y), f
    assert not torch.equal(r1.loss, obj(model, x1, gen(8)).loss)
    # given x0 and times are used as given
    x0 = torch.randn(16, 2, dtype=F64, generator=gen(9))
    given = obj(model, x1, gen(10), x0=x0, times=r1.times)
    again = obj(model, x1, gen(10), x0=x0, times=r1.times)
    assert torch.equal(given.loss, again.loss)
    for f in ("s", "t", "diagonal"):
        assert torch.equal(getattr(given.times, f), getattr(r1.times, f))


@pytest.mark.parametrize("name", NAMES)
def test_all_diagonal_batch_keeps_the_term_names_and_is_flow_matching(name):
    """With every sample diagonal, the off-diagonal terms are empty (not missing) and diag_fm is
    |v_{t,t}(I_t) - dI_t/dt|^2 with the linear interpolant, computed here."""
    obj = runnable(OBJECTIVES[name])
    model = mlp(F64, seed=2)
    x1 = FLOW.sample_data(8, gen(1))
    x0 = torch.randn(8, 2, dtype=F64, generator=gen(2))
    t = torch.rand(8, dtype=F64, generator=gen(3))
    res = obj(model, x1, gen(4), x0=x0, times=TimeBatch(s=t, t=t, diagonal=torch.ones(8, dtype=torch.bool)))
    check_result(obj, res, 8)
    assert res.terms.keys() == obj(model, x1, gen(4)).terms.keys()
    assert all(v.numel() == 0 for k, v in res.terms.items() if k != "diag_fm")
    x_t, dx_t = (1 - t)[:, None] * x0 + t[:, None] * x1, x1 - x0
    want = ((model.velocity(t, x_t) - dx_t) ** 2).sum(1)
    # the same arithmetic in another order: a few ulps per operation, 100 ulps of float64 leave room
    assert torch.allclose(res.terms["diag_fm"], want, rtol=ulps(F64, 100), atol=0)
    assert torch.equal(res.aux["raw_loss"], res.terms["diag_fm"].detach())


# -- every objective trains a float32 MLP -----------------------------------------------------------------------
@pytest.mark.parametrize("variant", [(n, {}) for n in NAMES] + VARIANTS, ids=variant_id)
def test_objective_trains_a_float32_mlp(variant):
    name, kw = variant
    obj = runnable(dataclasses.replace(OBJECTIVES[name], **kw))
    model = mlp(F32, seed=5)
    x1 = FLOW.sample_data(32, gen(22), dtype=F32)
    res = obj(model, x1, gen(23))
    check_result(obj, res, 32, key=name if not kw else None)
    assert res.loss.dtype == F32 and bool(torch.isfinite(res.loss).all())
    assert int(res.times.diagonal.sum()) == n_diagonal(32, obj.split_config().diag_fraction)
    res.loss.mean().backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


# -- bad input ----------------------------------------------------------------------------------------------------
def check_bad_input(obj) -> None:
    obj = runnable(obj)
    model = ExactFlowMap(FLOW)
    x1 = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="x1 contains"):
        obj(model, torch.full((4, 2), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="x1"):
        obj(model, torch.full((4, 2), float("inf"), dtype=F64))
    with pytest.raises(ValueError, match=r"x1 must have shape \(batch, 2\)"):
        obj(model, torch.zeros(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="x1 must have shape"):
        obj(model, torch.zeros(8, dtype=F64))
    with pytest.raises(TypeError, match="x1"):
        obj(model, torch.zeros(4, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="x1 must be a torch.Tensor"):
        obj(model, x1.numpy())
    with pytest.raises(TypeError, match="x1"):
        obj(model, [[0.0, 1.0]])
    with pytest.raises(TypeError, match="model must implement FlowMapModel .*lacks average_velocity"):
        obj(object(), x1)
    with pytest.raises(ValueError, match="x0 must have the shape"):
        obj(model, x1, x0=torch.zeros(3, 2, dtype=F64))
    with pytest.raises(TypeError, match="x0"):
        obj(model, x1, x0=np.zeros((4, 2)))
    # the generator: an int seed is refused with the fix (it was an AttributeError deep inside)
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator.*manual_seed\(3\)"):
        obj(model, x1, 3)
    with pytest.raises(TypeError, match="generator"):
        obj(model, x1, generator="seed")
    # times
    off = torch.zeros(4, dtype=torch.bool)
    backwards = TimeBatch(s=torch.full((4,), 0.6, dtype=F64), t=torch.full((4,), 0.2, dtype=F64), diagonal=off)
    with pytest.raises(ValueError, match="times"):
        obj(model, x1, times=backwards)
    with pytest.raises(TypeError, match="times must be a TimeBatch"):
        obj(model, x1, times=(backwards.s, backwards.t))
    diag = torch.ones(4, dtype=torch.bool)
    late = torch.full((4,), 1.5, dtype=F64)
    with pytest.raises(ValueError, match=r"times must lie in \[0, 1\]"):
        obj(model, x1, times=TimeBatch(s=late, t=late, diagonal=diag))
    short = torch.full((3,), 0.5, dtype=F64)
    with pytest.raises(ValueError, match=r"times.s must be a \(4,\) tensor"):
        obj(model, x1, times=TimeBatch(s=short, t=short, diagonal=diag[:3]))
    if obj.split_config().diag_fraction < 1.0:
        unsorted = torch.tensor([False, True, True, True])
        with pytest.raises(ValueError, match="prefix"):
            obj(model, x1, times=TimeBatch(s=late * 0.3, t=late * 0.3, diagonal=unsorted))


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_rejected_naming_the_argument(name):
    check_bad_input(OBJECTIVES[name])


def test_specific_messages_for_times():
    model = ExactFlowMap(FLOW)
    x1 = torch.zeros(8, 2, dtype=F64)
    backwards = TimeBatch(s=torch.full((8,), 0.6, dtype=F64), t=torch.full((8,), 0.2, dtype=F64),
                          diagonal=torch.zeros(8, dtype=torch.bool))
    with pytest.raises(ValueError, match="s <= t"):
        OBJECTIVES["lsd"](model, x1, times=backwards)
    with pytest.raises(ValueError, match="only diagonal times"):
        OBJECTIVES["fm"](model, x1, times=backwards)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_dtypes_are_refused_naming_the_tensor(name):
    """A neural model computes in its parameters' dtype: float64 data for a float32 model (and the
    reverse) is refused at the entry naming x1 (it ended in "mat1 and mat2 must have the same
    dtype"), so is noise x0 of another dtype; an analytic map follows its input's dtype."""
    obj = runnable(OBJECTIVES[name])
    x1 = FLOW.sample_data(8, gen(0), dtype=F32)
    with pytest.raises(TypeError, match=r"x1 has dtype torch.float64 but the model's parameters are torch.float32"):
        obj(mlp(F32), x1.double())
    with pytest.raises(TypeError, match=r"x1 has dtype torch.float32 .* x1.to\(torch.float64\)"):
        obj(mlp(F64), x1)
    with pytest.raises(TypeError, match=r"x0 has dtype torch.float64"):
        obj(mlp(F32), x1, x0=torch.zeros(8, 2, dtype=F64))
    with pytest.raises(TypeError, match=r"x0 has dtype torch.float32 but x1 has torch.float64"):
        obj(ExactFlowMap(FLOW), x1.double(), x0=torch.zeros(8, 2, dtype=F32))
    res = obj(ExactFlowMap(FLOW), x1, gen(1))  # no parameters: float32 in, float32 out
    assert res.loss.dtype == F32 and bool(torch.isfinite(res.loss).all())



@pytest.mark.parametrize("name", NAMES)
def test_a_wrapper_that_follows_its_input_is_not_refused(name):
    """``PerturbedFlowMap(ExactFlowMap(flow))`` holds a float64 ``eps`` but computes in its input's
    dtype (its ``dtype`` is None, its flow_map returns float32 for float32 x): the objectives ask the
    same question (``model_dtype``) and accept float32 data (they refused it as float64)."""
    model = PerturbedFlowMap(ExactFlowMap(FLOW), eps=0.01)
    x1 = FLOW.sample_data(8, gen(0), dtype=F32)
    assert model_dtype(model) is None and model.flow_map(0.2, 0.7, x1).dtype == F32
    res = runnable(OBJECTIVES[name])(model, x1, gen(1))
    assert res.loss.dtype == F32 and bool(torch.isfinite(res.loss).all())

# -- the teacher --------------------------------------------------------------------------------------------------
def check_teacher(obj) -> None:
    x1 = FLOW.sample_data(8, gen(0), dtype=F32)
    if obj.requires_teacher:
        with pytest.raises(ValueError, match="needs a teacher"):
            obj(ExactFlowMap(FLOW), x1.double())
    if "teacher" not in fields_of(obj):
        return
    with pytest.raises(TypeError, match="teacher"):
        dataclasses.replace(obj, teacher=object())
    # a teacher of the wrong dimension is named (it reported the teacher's own argument x)
    wide = GaussianFlow([0.0, 0.0, 0.0], np.eye(3).tolist())
    with pytest.raises(ValueError, match=r"teacher has dim 3 but x1 has shape \(8, 2\)"):
        dataclasses.replace(obj, teacher=wide)(mlp(F32), x1)
    # a neural teacher in another dtype is named too
    with pytest.raises(TypeError, match=r"teacher computes in torch.float64 but x1 is torch.float32"):
        dataclasses.replace(obj, teacher=mlp(F64))(mlp(F32), x1)
    res = dataclasses.replace(obj, teacher=mlp(F32, seed=3))(mlp(F32), x1, gen(1))  # a model as teacher
    assert bool(torch.isfinite(res.loss).all())


@pytest.mark.parametrize("name", NAMES)
def test_teacher_is_checked(name):
    check_teacher(OBJECTIVES[name])


# -- bad field values ----------------------------------------------------------------------------------------------
def check_bad_fields(obj) -> None:
    fields = fields_of(obj)
    bad = {
        "diag_fraction": [(-0.1, ValueError), (1.5, ValueError)],
        "weighting": [("huber", ValueError), ("cauchy", ValueError), (3, TypeError)],
        "interpolant": [("cubic", ValueError)],
        "method": [("autodiff", ValueError)],
        "fd_eps": [(-1.0, ValueError), (0.0, ValueError)],
        "sampler": [(object(), TypeError)],
        "time_weight": [("cos", ValueError)],
    }
    for field_name, cases in bad.items():
        if field_name not in fields:
            continue
        for value, err in cases:
            with pytest.raises(err, match=field_name):
                dataclasses.replace(obj, **{field_name: value})


@pytest.mark.parametrize("name", NAMES)
def test_bad_field_values_are_rejected(name):
    check_bad_fields(OBJECTIVES[name])


# -- the one-file recipe ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiagonalSelfConsistency:
    """A toy objective written by the registry's recipe: |v_{s,t}(I_s) - sg v_{s,s}(I_s)|^2 (not a
    flow-map characterisation; it only exercises the pattern)."""

    name: str = "toy"
    interpolant: object = "linear"
    diag_fraction: float = 0.5
    weighting: object = "none"
    requires_teacher: ClassVar[bool] = False

    def __post_init__(self) -> None:
        normalise_fields(self)

    def split_config(self) -> SplitConfig:
        return SplitConfig.of(self)

    def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
        x_s, _ = interpolate(self.interpolant, s, x0, x1)
        with torch.no_grad():
            target = model.velocity(s, x_s)
        v = model.average_velocity(s, t, x_s)
        return OffDiagonal(raw=squared_error(v, target), aux={"target_norm": target.norm(dim=1)}).named("toy")

    def __call__(self, model, x1, generator=None, *, x0=None, times=None):
        return evaluate_split(self, model, x1, generator, x0=x0, times=times)


def test_an_objective_written_by_the_recipe_passes_the_contract(monkeypatch):
    toy = DiagonalSelfConsistency()
    monkeypatch.setitem(OBJECTIVES, "toy", toy)
    check_pattern("toy", toy)
    check_bad_input(toy)
    check_teacher(toy)
    check_bad_fields(toy)
    res = toy(mlp(F64), FLOW.sample_data(16, gen(0)), gen(1))
    check_result(toy, res, 16)
    assert set(res.terms) == {"diag_fm", "toy"} and res.terms["toy"].shape == (8,)
    assert needs_teacher("toy") is False


def test_a_broken_off_diagonal_is_reported_with_the_objective_name():
    @dataclass(frozen=True)
    class Broken(DiagonalSelfConsistency):
        name: str = "broken"

        def off_diagonal(self, model, s, t, x0, x1, generator) -> OffDiagonal:
            return OffDiagonal(raw=torch.zeros(s.shape[0] + 1, dtype=x1.dtype))

    with pytest.raises(ValueError, match=r"broken.off_diagonal returned raw of shape \(9,\); expected \(8,\)"):
        Broken()(mlp(F64), FLOW.sample_data(16, gen(0)), gen(1))


def test_isd_extra_terms_travel_in_the_returned_structure():
    """iSD's anchor on every sample is an off-diagonal term named diag_fm: the result's diag_fm spans
    the batch (diagonal samples first) and the pseudo-Huber loss it weighs itself reaches ``loss``."""
    model = mlp(F64, seed=4)
    x1 = FLOW.sample_data(16, gen(0))
    obj = dataclasses.replace(ImprovedSelfDistillation(), diag_fraction=0.25, weighting="pseudo_huber", method="jvp")
    off_times = obj(model, x1, gen(1)).times
    n_d = int(off_times.diagonal.sum())
    x0 = torch.randn(16, 2, dtype=F64, generator=gen(2))
    res = obj(model, x1, x0=x0, times=off_times)
    off = obj.off_diagonal(model, off_times.s[n_d:], off_times.t[n_d:], x0[n_d:], x1[n_d:], None)
    assert torch.equal(res.terms["diag_fm"][n_d:], off.terms["diag_fm"])
    assert torch.equal(res.loss[n_d:], off.loss) and torch.equal(res.loss[:n_d], res.terms["diag_fm"][:n_d])
