"""The batched torch ODE oracle against independent computations.

- the Dormand-Prince tableau against the Runge-Kutta order conditions (exact rationals);
- linear ODEs against matrix exponentials (scipy.linalg.expm), forward and backward, per-sample
  times, with the variational Jacobian;
- a nonlinear, time-dependent ODE against scipy's DOP853 at rtol = atol = 1e-13;
- velocity_jacobian against a hand-derived Jacobian; failures raise, never return NaN.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from workbench.core import rel_err, ulps
from workbench.flows import ode
from workbench.flows.ode import (
    DP5_A,
    DP5_B,
    DP5_B_HAT,
    DP5_C,
    DP5_E,
    ODESolverError,
    ODEStats,
    default_tolerances,
    odeint_flow,
    solve_flow,
    velocity_jacobian,
)

F64 = torch.float64
#: the accuracy promised at the default float64 tolerances (relative |A - B| / (1 + |B|)).
MAP_TOL = 1e-9


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the tableau ----------------------------------------------------------------------------------
def test_dormand_prince_tableau_satisfies_order_conditions():
    """Quadrature and tree conditions up to order 5 (order 4 for the embedded weights), checked on
    rationals recovered from the float coefficients, which must round-trip exactly."""
    A = [[Fraction(a).limit_denominator(400_000) for a in row] for row in DP5_A]
    c = [Fraction(ci).limit_denominator(100) for ci in DP5_C]
    b = [Fraction(bi).limit_denominator(400_000) for bi in DP5_B]
    bh = [Fraction(bi).limit_denominator(400_000) for bi in DP5_B_HAT]
    for row, x in zip(A, DP5_A):
        assert [float(f) for f in row] == list(x)
    n = len(c)
    for i in range(n):  # row sums
        assert sum(A[i], Fraction(0)) == c[i]
    assert list(A[6]) + [Fraction(0)] == b  # first same as last

    def a(i, j):
        return A[i][j] if j < len(A[i]) else Fraction(0)

    Ac = [sum(a(i, j) * c[j] for j in range(n)) for i in range(n)]
    Ac2 = [sum(a(i, j) * c[j] ** 2 for j in range(n)) for i in range(n)]
    AAc = [sum(a(i, j) * Ac[j] for j in range(n)) for i in range(n)]
    for w, order in ((b, 5), (bh, 4)):
        for q in range(1, order + 1):
            assert sum(wi * ci ** (q - 1) for wi, ci in zip(w, c)) == Fraction(1, q)
        assert sum(wi * x for wi, x in zip(w, Ac)) == Fraction(1, 6)
        assert sum(wi * ci * x for wi, ci, x in zip(w, c, Ac)) == Fraction(1, 8)
        assert sum(wi * x for wi, x in zip(w, Ac2)) == Fraction(1, 12)
        assert sum(wi * x for wi, x in zip(w, AAc)) == Fraction(1, 24)
    assert sum(wi * ci**2 * x for wi, ci, x in zip(b, c, Ac)) == Fraction(1, 10)  # an order-5 tree
    AAAc = [sum(a(i, j) * AAc[j] for j in range(n)) for i in range(n)]
    assert sum(wi * x for wi, x in zip(b, AAAc)) == Fraction(1, 120)  # the tall order-5 tree
    for e, bi, bhi in zip(DP5_E, b, bh):
        assert e == pytest.approx(float(bi - bhi), abs=ulps(F64, 1))


# -- linear ODEs with matrix-exponential solutions ------------------------------------------------
def _linear_problem(seed: int, d: int = 3):
    g = _gen(seed)
    M = torch.randn(d, d, generator=g, dtype=F64)
    A = 0.7 * (M - M.T) + 0.3 * torch.eye(d, dtype=F64) * torch.randn(d, generator=g, dtype=F64)
    return A


def _exact_linear(A: torch.Tensor, s: torch.Tensor, t: torch.Tensor, x: torch.Tensor, power: int):
    """dx/du = u^power A x  =>  X = expm((t^(p+1) - s^(p+1)) / (p+1) A) x."""
    out, jac = [], []
    for si, ti, xi in zip(s.tolist(), t.tolist(), x.numpy()):
        E = expm((ti ** (power + 1) - si ** (power + 1)) / (power + 1) * A.numpy())
        out.append(E @ xi)
        jac.append(E)
    return torch.tensor(np.array(out)), torch.tensor(np.array(jac))


@pytest.mark.parametrize("power", [0, 2])
def test_linear_ode_matches_matrix_exponential_forward_and_backward(power):
    A = _linear_problem(1)
    g = _gen(2)
    n = 24
    s = torch.rand(n, generator=g, dtype=F64) * 2 - 0.5
    t = torch.rand(n, generator=g, dtype=F64) * 2 - 0.5
    t[:4] = s[:4]  # some samples stay put
    x = torch.randn(n, 3, generator=g, dtype=F64)

    def velocity(u, y):
        return (u[:, None] ** power) * (y @ A.T)

    sol = solve_flow(velocity, s, t, x, jacobian=True)
    ref_x, ref_j = _exact_linear(A, s, t, x, power)
    assert float(rel_err(sol.x, ref_x).max()) <= MAP_TOL
    assert float(rel_err(sol.jacobian, ref_j).max()) <= MAP_TOL
    assert torch.equal(sol.x[:4], x[:4])
    assert (t < s).any() and (t > s).any()
    assert sol.stats.n_steps > 0 and sol.stats.nfev >= 6 * sol.stats.n_steps


def test_error_shrinks_with_tolerance_and_stays_near_it():
    """The achieved error follows the requested tolerance (a solver that ignored rtol would fail)."""
    A = _linear_problem(3)
    g = _gen(4)
    x = torch.randn(16, 3, generator=g, dtype=F64)
    s, t = torch.zeros(16, dtype=F64), torch.full((16,), 3.0, dtype=F64)
    ref, _ = _exact_linear(A, s, t, x, 0)
    errs, nfevs = [], []
    for tol in (1e-5, 1e-8, 1e-11):
        sol = solve_flow(lambda u, y: y @ A.T, s, t, x, rtol=tol, atol=tol)
        errs.append(float(rel_err(sol.x, ref).max()))
        nfevs.append(sol.stats.nfev)
        assert errs[-1] <= 100 * tol
    assert errs[0] > 10 * errs[1] > 100 * errs[2]
    assert nfevs[0] < nfevs[1] < nfevs[2]


def test_every_sample_meets_the_tolerance_not_only_the_batch_average():
    """One fast sample among many slow ones is integrated as accurately as when it is alone.

    x' = -rate x with exact solution exp(-rate (t - s)) x. With the per-sample (max over the batch)
    error norm the fast sample sets the steps; a batch-RMS norm would dilute its error by
    sqrt(batch) and let its error grow (measured: 18x larger here).
    """
    n = 64
    rates = torch.full((n,), 0.01, dtype=F64)
    rates[7] = 25.0
    tol = 1e-6
    x = torch.ones(n, 1, dtype=F64)
    batch = solve_flow(lambda u, y: -rates[:, None] * y, 0.0, 1.0, x, rtol=tol, atol=tol)
    alone = solve_flow(lambda u, y: -rates[7] * y, 0.0, 1.0, x[7:8], rtol=tol, atol=tol)
    exact = torch.exp(-rates)
    err_batch = float((batch.x[7, 0] - exact[7]).abs())
    err_alone = float((alone.x[0, 0] - exact[7]).abs())
    assert err_batch <= 2 * err_alone
    assert batch.stats.nfev >= alone.stats.nfev
    assert float((batch.x[:, 0] - exact).abs().max()) <= tol


def test_nonlinear_time_dependent_ode_matches_scipy_dop853():
    """Forced pendulum y'' = -sin(y) + 0.3 cos(2u), per-sample (s, t), forward and backward."""
    g = _gen(5)
    n = 12
    s = torch.rand(n, generator=g, dtype=F64) * 4
    t = torch.rand(n, generator=g, dtype=F64) * 4
    x = torch.randn(n, 2, generator=g, dtype=F64)

    def velocity(u, y):
        return torch.stack([y[:, 1], -torch.sin(y[:, 0]) + 0.3 * torch.cos(2 * u)], dim=1)

    sol = solve_flow(velocity, s, t, x)
    ref = []
    for si, ti, xi in zip(s.tolist(), t.tolist(), x.numpy()):

        def rhs(u, y):
            return [y[1], -math.sin(y[0]) + 0.3 * math.cos(2 * u)]

        ref.append(solve_ivp(rhs, (si, ti), xi, method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1])
    ref = torch.tensor(np.array(ref))
    assert float(rel_err(sol.x, ref).max()) <= MAP_TOL


def test_image_shaped_states_and_scalar_times():
    """x of shape (batch, C, H, W): the flow of u-independent decay is exp(-(t - s)) x."""
    x = torch.randn(3, 2, 4, 4, generator=_gen(6), dtype=F64)
    out = odeint_flow(lambda u, y: -y, 0.25, torch.tensor(0.75, dtype=F64), x)
    assert out.shape == x.shape
    assert float(rel_err(out, math.exp(-0.5) * x).max()) <= MAP_TOL


def test_float32_in_float32_out_at_its_own_tolerance():
    A = _linear_problem(7)
    x = torch.randn(8, 3, generator=_gen(8), dtype=torch.float32)
    out = odeint_flow(lambda u, y: y @ A.T.to(y.dtype), 0.0, 1.0, x)
    assert out.dtype == torch.float32
    ref, _ = _exact_linear(A, torch.zeros(8, dtype=F64), torch.ones(8, dtype=F64), x.double(), 0)
    rtol, _ = default_tolerances(torch.float32)
    assert float(rel_err(out.double(), ref).max()) <= 100 * rtol


def test_velocity_jacobian_matches_hand_derivative():
    """b_u(y) = (u sin(y1) y2, y1^2 - u y2): grad b = [[u cos(y1) y2, u sin(y1)], [2 y1, -u]]."""
    g = _gen(9)
    y = torch.randn(10, 2, generator=g, dtype=F64)
    u = torch.rand(10, generator=g, dtype=F64)

    def velocity(uu, z):
        return torch.stack([uu * torch.sin(z[:, 0]) * z[:, 1], z[:, 0] ** 2 - uu * z[:, 1]], dim=1)

    J = velocity_jacobian(velocity, u, y)
    exact = torch.stack(
        [
            torch.stack([u * torch.cos(y[:, 0]) * y[:, 1], u * torch.sin(y[:, 0])], dim=1),
            torch.stack([2 * y[:, 0], -u], dim=1),
        ],
        dim=1,
    )
    assert torch.allclose(J, exact, rtol=0, atol=ulps(F64, 8))


def test_identity_when_s_equals_t():
    x = torch.randn(5, 2, generator=_gen(10), dtype=F64)
    sol = solve_flow(lambda u, y: y, 0.3, 0.3, x, jacobian=True)
    assert torch.equal(sol.x, x)
    assert torch.equal(sol.jacobian, torch.eye(2, dtype=F64).expand(5, 2, 2))
    assert sol.stats == ODEStats(0, 0, 0)


# -- failures are loud -----------------------------------------------------------------------------
def test_max_steps_exceeded_raises():
    x = torch.ones(2, 1, dtype=F64)
    with pytest.raises(ODESolverError, match="max_steps=3"):
        odeint_flow(lambda u, y: torch.cos(40 * u)[:, None] * y, 0.0, 5.0, x, max_steps=3)


def test_non_finite_velocity_raises_instead_of_returning_nan():
    x = torch.ones(2, 1, dtype=F64)

    def pole(u, y):  # a pole at u = 0.5 inside [0, 1]
        return y / (0.5 - u)[:, None]

    with pytest.raises(ODESolverError):
        odeint_flow(pole, 0.0, 1.0, x)

    def nan_after(u, y):
        return torch.where(u[:, None] > 0.3, torch.full_like(y, float("nan")), y)

    with pytest.raises(ODESolverError, match="non-finite"):
        odeint_flow(nan_after, 0.0, 1.0, x)
    with pytest.raises(ODESolverError, match="start"):
        odeint_flow(lambda u, y: y / 0.0, 0.0, 1.0, x)


def test_bad_input_raises():
    x = torch.ones(2, 2, dtype=F64)
    with pytest.raises(TypeError, match="velocity"):
        odeint_flow("not callable", 0.0, 1.0, x)
    with pytest.raises(TypeError, match="x"):
        odeint_flow(lambda u, y: y, 0.0, 1.0, np.ones((2, 2)))
    with pytest.raises(ValueError, match="x"):
        odeint_flow(lambda u, y: y, 0.0, 1.0, torch.tensor([1.0, float("nan")], dtype=F64).expand(2, 2))
    with pytest.raises(ValueError, match="rtol"):
        odeint_flow(lambda u, y: y, 0.0, 1.0, x, rtol=1e-17)
    with pytest.raises(ValueError, match="rtol"):
        odeint_flow(lambda u, y: y, 0.0, 1.0, x.float(), rtol=1e-9)
    with pytest.raises(ValueError, match="atol"):
        odeint_flow(lambda u, y: y, 0.0, 1.0, x, atol=0.0)
    with pytest.raises(ValueError, match="max_steps"):
        odeint_flow(lambda u, y: y, 0.0, 1.0, x, max_steps=0)
    with pytest.raises(ValueError, match="s"):
        odeint_flow(lambda u, y: y, torch.zeros(3, dtype=F64), 1.0, x)
    with pytest.raises(ValueError, match="jacobian"):
        solve_flow(lambda u, y: y, 0.0, 1.0, torch.ones(2, 1, 2, dtype=F64), jacobian=True)


@pytest.mark.gpu
def test_runs_on_cuda_like_on_cpu():
    A = _linear_problem(11)
    x = torch.randn(16, 3, generator=_gen(12), dtype=F64)
    s = torch.rand(16, generator=_gen(13), dtype=F64)
    cpu = solve_flow(lambda u, y: u[:, None] * (y @ A.T), s, 1.0, x, jacobian=True)
    Ac = A.cuda()
    gpu = solve_flow(lambda u, y: u[:, None] * (y @ Ac.T), s.cuda(), 1.0, x.cuda(), jacobian=True)
    assert gpu.x.device.type == "cuda" and gpu.jacobian.device.type == "cuda"
    assert float(rel_err(gpu.x.cpu(), cpu.x).max()) <= MAP_TOL
    assert float(rel_err(gpu.jacobian.cpu(), cpu.jacobian).max()) <= MAP_TOL


# -- the step-size controller (white box) -------------------------------------------------------------------
# A wrong error order in the controller leaves every accuracy test green (the error stays below the
# tolerance; only the number of steps changes: 1208 vs 1292 velocity evaluations on the 8-Gaussian
# mixture), so the controller's formula is checked directly. Hairer, Norsett & Wanner, Solving ODEs I,
# II.4 (eq. 4.13) and Hairer & Wanner II, IV.2 (PI control), for an embedded pair whose error estimate is
# O(h^k) with k = 5 (the 4th-order solution's local error):
#   accepted:  h_new = h min(f_max, max(0.2, 0.9 err^(-0.7 / k) err_prev^(0.4 / k)))   (f_max = 1 right after a rejection)
#   rejected:  h_new = h max(0.2, 0.9 err^(-1 / k))
K_ERROR = 5


class _Recorder:
    """Records the normalised time tau of every velocity evaluation and every error norm of solve_flow."""

    def __init__(self, monkeypatch):
        self.taus, self.errs = [], []
        original_call, original_error = ode._Problem.__call__, ode._Problem.error
        recorder = self

        def call(problem, tau, state):
            recorder.taus.append(float(tau))
            return original_call(problem, tau, state)

        def error(problem, *args):
            norm = original_error(problem, *args)
            recorder.errs.append(float(norm.max()))
            return norm

        monkeypatch.setattr(ode._Problem, "__call__", call)
        monkeypatch.setattr(ode._Problem, "error", error)

    def attempts(self):
        """(h, err) of every step attempt: after k1 = f(0) and the starting-step probe, each attempt
        evaluates the stages c = 1/5, 3/10, 4/5, 8/9, 1, 1 at tau + c h, so h = (tau_c=1 - tau_c=1/5) / (4/5)."""
        stages = self.taus[2:]
        assert len(stages) == 6 * len(self.errs)
        hs = [(stages[6 * i + 4] - stages[6 * i]) / 0.8 for i in range(len(self.errs))]
        return list(zip(hs, self.errs))


def _decay_with_a_kink(u, y):
    """b = -y, and -100 y after u = 0.5: the step across the kink is rejected."""
    return -y * torch.where(u > 0.5, 100.0, 1.0).to(y.dtype)[:, None]


def test_step_size_controller_follows_the_pi_formula_of_order_5(monkeypatch):
    rec = _Recorder(monkeypatch)
    x = torch.ones(3, 2, dtype=torch.float64)
    sol = solve_flow(_decay_with_a_kink, 0.0, 1.0, x, rtol=1e-10, atol=1e-20)
    attempts = rec.attempts()
    assert sol.stats.n_rejected >= 1 and len(attempts) == sol.stats.n_steps + sol.stats.n_rejected
    err_prev, just_rejected, tau, checked = 1e-4, False, 0.0, {"accepted": 0, "rejected": 0}
    for (h, err), (h_next, _) in zip(attempts, attempts[1:]):
        # h is recovered from two stage times near tau <= 1: good to ~4 eps / h relative
        tol = 1e-9 + 8 * ulps(F64, 1) / h_next
        if err <= 1.0:
            fac = 0.9 * max(err, 1e-10) ** (-0.7 / K_ERROR) * err_prev ** (0.4 / K_ERROR)
            fac = min(1.0 if just_rejected else 10.0, max(0.2, fac))
            err_prev, just_rejected, tau = max(err, 1e-4), False, tau + h
            if h_next < h * fac * (1 - tol) and abs(tau + h_next - 1.0) <= 1e-9:
                continue  # the last step is cut to end at tau = 1
            checked["accepted"] += 1
        else:
            fac, just_rejected = max(0.2, 0.9 * err ** (-1.0 / K_ERROR)), True
            checked["rejected"] += 1
        assert h_next == pytest.approx(h * fac, rel=tol), (h, err, h_next, h * fac)
    assert checked["accepted"] >= 20 and checked["rejected"] >= 1


def test_accepted_error_norms_settle_where_the_order_5_controller_puts_them(monkeypatch):
    """y' = -y with pure relative control: err = C h^5 exactly in the limit, so the PI controller's fixed
    point fac = 1 is err* = 0.9^(1 / (0.7/5 - 0.4/5)) = 0.9^(50/3) = 0.1725 (an exponent for order 4
    would give 0.9^(40/3) = 0.245, order 6 0.129)."""
    rec = _Recorder(monkeypatch)
    x = torch.ones(2, 1, dtype=torch.float64)
    solve_flow(lambda u, y: -y, 0.0, 10.0, x, rtol=1e-11, atol=1e-300)
    accepted = [e for _, e in rec.attempts() if e <= 1.0]
    settled = float(np.median(accepted[len(accepted) // 2 : -1]))
    predicted = 0.9 ** (1.0 / (0.3 / K_ERROR))
    assert len(accepted) > 50
    assert abs(settled / predicted - 1.0) < 0.05, (settled, predicted)


#: measured: 169 accepted steps, 0 rejected, 6 * 169 + 2 evaluations (k1 and the starting-step probe)
PINNED_NFEV = 1016


def test_evaluation_count_on_the_eight_gaussians_is_pinned():
    """The work of one fixed solve (gmm_8, 64 points from N(0, I), 0 -> 1 at the default tolerance): a
    changed controller, tableau or error norm shows here first (a wrong error order in the accepted-step
    exponents costs 10-20% more evaluations here, with unchanged accuracy). The band allows 2% for platform round-off
    flipping an accept/reject decision; a deliberate change must update the pinned numbers."""
    from workbench.flows.registry import make_flow

    flow = make_flow("gmm_8", "linear")
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    stats = flow.flow_solution(0.0, 1.0, x).stats
    assert abs(stats.nfev - PINNED_NFEV) <= 0.02 * PINNED_NFEV, stats
    assert stats.nfev == 6 * (stats.n_steps + stats.n_rejected) + 2
