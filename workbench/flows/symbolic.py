"""Symbolic derivation (sympy) of the point-mass and Gaussian flow maps for symbolic alpha, beta.

Both velocities are affine in x, so the probability-flow ODE is linear and sympy can solve it:

* point mass a:   b_t(x) = beta'_t a + (alpha'_t / alpha_t)(x - beta_t a)
* Gaussian, one eigen-direction with eigenvalue lam of the covariance (mean mu):
                  b_t(x) = beta'_t mu + c'_t / (2 c_t) (x - beta_t mu),  c_t = alpha_t^2 + beta_t^2 lam

``derive_*`` solve dx/dt = b_t(x), x(s) = x0 for undefined functions alpha(t), beta(t) (the mean
path m_t = beta_t mean is a trajectory; the deviation from it obeys a homogeneous linear ODE that
sympy integrates) and return X_{s,t}(x0); ``check_*`` return the simplified residuals of the ODE,
the boundary condition and the semigroup property (each must simplify to 0). ``lambdify_*`` turn
the derived maps into numeric functions for concrete schedules, so tests can compare them with the
torch closed forms in :mod:`workbench.flows.point_mass` and :mod:`workbench.flows.gaussian`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import sympy as sp

t, s, u, x0, a, mu, lam = sp.symbols("t s u x0 a mu lambda", real=True)
alpha = sp.Function("alpha")
beta = sp.Function("beta")

SCHEDULES = {
    "linear": (1 - t, t),
    "trig": (sp.cos(sp.pi * t / 2), sp.sin(sp.pi * t / 2)),
}


def point_mass_velocity(time: sp.Symbol, x: sp.Expr) -> sp.Expr:
    al, be = alpha(time), beta(time)
    return sp.diff(be, time) * a + sp.diff(al, time) / al * (x - be * a)


def gaussian_velocity(time: sp.Symbol, x: sp.Expr) -> sp.Expr:
    c = alpha(time) ** 2 + beta(time) ** 2 * lam
    return sp.diff(beta(time), time) * mu + sp.diff(c, time) / (2 * c) * (x - beta(time) * mu)


def _solve_affine(velocity: Callable[[sp.Symbol, sp.Expr], sp.Expr], mean_path: sp.Expr) -> sp.Expr:
    """Solve dx/dt = velocity(t, x), x(s) = x0 for a velocity affine in x.

    Steps (each checked): (1) ``mean_path`` m_t solves the ODE, (2) the velocity is affine,
    b_t(x) = b_t(m_t) + A_t (x - m_t), so the deviation y = x - m_t obeys y' = A_t y, (3) hence
    y_t = exp(int_s^t A) y_s, with the integral done by sympy.
    """
    xs, tau = sp.Symbol("xi", real=True), sp.Symbol("tau", real=True)
    if sp.simplify(sp.diff(mean_path, t) - velocity(t, mean_path)) != 0:
        raise ValueError("mean_path does not solve the ODE")
    A = sp.diff(velocity(t, xs), xs)
    if sp.diff(A, xs) != 0:
        raise ValueError("velocity is not affine in x")
    log_ratio = sp.integrate(A.subs(t, tau), (tau, s, t))
    growth = sp.simplify(sp.powsimp(sp.exp(sp.expand_log(log_ratio, force=True)), force=True))
    return mean_path + growth * (x0 - mean_path.subs(t, s))


@cache
def derive_point_mass_flow_map() -> sp.Expr:
    """X_{s,t}(x0) for the point mass, derived by dsolve (expected: beta_t a + alpha_t/alpha_s (x0 - beta_s a))."""
    return _solve_affine(point_mass_velocity, beta(t) * a)


@cache
def derive_gaussian_flow_map() -> sp.Expr:
    """X_{s,t}(x0) along one eigen-direction (expected: beta_t mu + sqrt(c_t/c_s)(x0 - beta_s mu))."""
    return _solve_affine(gaussian_velocity, beta(t) * mu)


@dataclass(frozen=True)
class SymbolicChecks:
    """Simplified residuals: each must be 0."""

    ode: sp.Expr
    boundary: sp.Expr
    semigroup: sp.Expr


def _checks(X: sp.Expr, velocity: Callable[[sp.Symbol, sp.Expr], sp.Expr], schedule: str | None) -> SymbolicChecks:
    def concrete(e):
        if schedule is None:
            return e
        al, be = SCHEDULES[schedule]
        e = e.subs({alpha(t).diff(t): sp.diff(al, t), beta(t).diff(t): sp.diff(be, t)})
        return e.subs({alpha(t): al, beta(t): be, alpha(s): al.subs(t, s), beta(s): be.subs(t, s),
                       alpha(u): al.subs(t, u), beta(u): be.subs(t, u)}).doit()

    ode = sp.simplify(concrete(sp.diff(X, t) - velocity(t, X)))
    boundary = sp.simplify(concrete(X.subs(t, s) - x0))
    X_su = X.subs(t, u)
    X_ut_of = X.subs(s, u).subs(x0, X_su)
    semigroup = sp.simplify(concrete(X_ut_of - X))
    return SymbolicChecks(ode=ode, boundary=boundary, semigroup=semigroup)


def check_point_mass(schedule: str | None = None) -> SymbolicChecks:
    """Residuals of the derived point-mass map (generic alpha, beta if schedule is None)."""
    return _checks(derive_point_mass_flow_map(), point_mass_velocity, schedule)


def check_gaussian(schedule: str | None = None) -> SymbolicChecks:
    """Residuals of the derived Gaussian eigen-direction map."""
    return _checks(derive_gaussian_flow_map(), gaussian_velocity, schedule)


def _lambdify(X: sp.Expr, schedule: str, params: tuple[sp.Symbol, ...]) -> Callable:
    al, be = SCHEDULES[schedule]
    e = X.subs({alpha(t): al, beta(t): be, alpha(s): al.subs(t, s), beta(s): be.subs(t, s)}).doit()
    return sp.lambdify((s, t, x0) + params, sp.simplify(e), "numpy")


def lambdify_point_mass(schedule: str) -> Callable:
    """f(s, t, x0, a) -> X_{s,t}(x0) (numpy, elementwise per coordinate) for a named schedule."""
    return _lambdify(derive_point_mass_flow_map(), schedule, (a,))


def lambdify_gaussian(schedule: str) -> Callable:
    """f(s, t, x0, mu, lam) -> X_{s,t}(x0) along one eigen-direction (numpy) for a named schedule."""
    return _lambdify(derive_gaussian_flow_map(), schedule, (mu, lam))
