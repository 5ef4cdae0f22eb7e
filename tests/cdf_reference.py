"""Independent high-precision references (mpmath) for the CDF-based flows: 1-D Gaussian mixtures and rings.

They share no code with ``workbench.flows``: the schedules are written out here, the component CDFs
come from mpmath (``ncdf``; the Bessel series of Marcum's Q for a ring), and the maps are found by
bisection in mpmath arithmetic. Each CDF level is formed as G - c = sum_{k outer} pi_k F_k -
sum_{k inner} pi_k S_k for a split chosen here (exact algebra for any split), with every tail
evaluated directly at ``dps`` digits, so tail masses far below float64 round-off survive.
"""

from __future__ import annotations

import math

import mpmath as mp


def schedule(ip: str, t):
    """(alpha_t, beta_t) of the linear (1 - t, t) or trig (cos, sin of pi t / 2) schedule, in mpmath."""
    t = mp.mpf(t)
    if ip == "linear":
        return 1 - t, t
    return mp.cos(mp.pi * t / 2), mp.sin(mp.pi * t / 2)


# -- 1-D Gaussian mixtures ----------------------------------------------------------------------------
def _mixture_components(p: dict, ip: str, t):
    al, be = schedule(ip, t)
    return [(mp.mpf(w), be * mp.mpf(m), mp.sqrt(al**2 + be**2 * mp.mpf(sd) ** 2))
            for w, m, sd in zip(p["weights"], p["means"], p["stds"])]


def _component_cdf(y, m, s):
    """(F, S) of N(m, s^2) at y; s = 0 is an atom (F = 1 at and above m)."""
    if s == 0:
        return (mp.mpf(1), mp.mpf(0)) if y >= m else (mp.mpf(0), mp.mpf(1))
    z = (y - m) / s
    return mp.ncdf(z), mp.ncdf(-z)


def mixture_offset(p: dict, ip: str, t, y, inner: list[bool]):
    """G_t(y) - c with c the weight of the ``inner`` components: sum_outer pi F - sum_inner pi S."""
    out = mp.mpf(0)
    for (w, m, s), is_inner in zip(_mixture_components(p, ip, t), inner):
        F, S = _component_cdf(y, m, s)
        out += -w * S if is_inner else w * F
    return out


def mixture_map(p: dict, ip: str, s: float, t: float, x: float, *, dps: int = 60, lo: float | None = None,
                hi: float | None = None) -> float:
    """X_{s,t}(x) = G_t^{-1}(G_s(x)) by bisection at ``dps`` digits (the level split at the components
    whose mean lies below x at time s), on [lo, hi] (default +-100 (|x| + 50)) until the bracket is
    below 1e-40 of its size."""
    with mp.workdps(dps):
        x = mp.mpf(x)
        reach = 100 * (abs(x) + 50)
        inner = [m < x for _, m, _ in _mixture_components(p, ip, s)]
        target = mixture_offset(p, ip, s, x, inner)
        a, b = mp.mpf(-reach if lo is None else lo), mp.mpf(reach if hi is None else hi)
        while b - a > mp.mpf(10) ** -40 * (abs(a) + abs(b) + 1):
            mid = (a + b) / 2
            if mixture_offset(p, ip, t, mid, inner) < target:
                a = mid
            else:
                b = mid
        return float((a + b) / 2)


# -- rings: the Rice law of |Z + a e|, Z ~ N(0, I_2) ----------------------------------------------------
def _bessel_decay(k, x):
    """-log(I_k(x) / I_0(x)) to leading order (Debye's uniform expansion): k asinh(k / x) - sqrt(x^2 + k^2) + x,
    i.e. k^2 / 2x for k << x and k log(2k / e x) for k >> x."""
    return k * mp.asinh(k / x) - mp.sqrt(x * x + k * k) + x


def _bessel_i_sequence(x, ratio, first: int, dps: int):
    """sum_{k >= first} ratio^k I_k(x) (ratio <= 1, x > 0) to ``dps`` significant digits.

    I_0(x) and I_1(x) come from mpmath, the others from the recurrence I_{k+1} = I_{k-1} - (2k / x) I_k
    run upward. Its rounding errors grow like K_k I_0 / (K_0 I_k) ~ (I_0 / I_k)^2, so the working
    precision carries that many guard digits for the last index the series needs."""
    target = (dps + 10) * mp.log(10)  # the series stops where ratio^k I_k / I_0 < exp(-target)
    lr = -mp.log(ratio)
    k_max = 1
    while k_max * lr + _bessel_decay(k_max, x) < target:
        k_max *= 2
    guard = int(2 * _bessel_decay(k_max, x) / mp.log(10)) + 10
    with mp.workdps(dps + guard):
        x = +x
        i_prev, i_k = mp.besseli(0, x), mp.besseli(1, x)
        total, power = (i_prev if first == 0 else mp.mpf(0)), mp.mpf(ratio)
        for k in range(1, k_max + 1):
            total += power * i_k
            i_prev, i_k = i_k, i_prev - (2 * k / x) * i_k
            power *= ratio
        return +total


def rice_cdf(a, b, dps: int = 60):
    """(G, S) = (P(|Z + a e| <= b), P(|Z + a e| > b)) at ``dps`` digits, from the Bessel series of the
    small side: 1 - Q_1(a, b) = e^{-(a^2 + b^2)/2} sum_{k>=1} (b/a)^k I_k(ab) for b < a, and
    Q_1(a, b) = e^{-(a^2 + b^2)/2} sum_{k>=0} (a/b)^k I_k(ab) for b >= a (Marcum 1950)."""
    with mp.workdps(dps + 20):
        a, b = mp.mpf(a), mp.mpf(b)
        lower = b < a
        x = a * b
        if x == 0:
            small = mp.exp(-(a * a + b * b) / 2) * (0 if lower else 1)
        else:
            ratio, first = (b / a, 1) if lower else (a / b, 0)
            small = mp.exp(-(a * a + b * b) / 2) * _bessel_i_sequence(x, ratio, first, dps + 20)
        return (small, 1 - small) if lower else (1 - small, small)


def rings_offset(radii, weights, ip: str, t, r, inner: list[bool], dps: int = 60):
    """G_t(r) - c for the rings (c the weight of the ``inner`` rings): sum_outer pi G_j - sum_inner pi S_j."""
    with mp.workdps(dps):
        al, be = schedule(ip, t)
        out = mp.mpf(0)
        for R, w, is_inner in zip(radii, weights, inner):
            G, S = rice_cdf(be * mp.mpf(R) / al, mp.mpf(r) / al, dps)
            out += -mp.mpf(w) * S if is_inner else mp.mpf(w) * G
        return out


def rings_level(radii, weights, ip: str, t, r, dps: int = 60):
    """(inner, G_t(r) - c): the rings whose radius at time t (beta_t R) lies below r, and the offset of
    G_t(r) from their weight c, at ``dps`` digits."""
    with mp.workdps(dps):
        be = schedule(ip, t)[1]
        inner = [be * mp.mpf(R) < mp.mpf(r) for R in radii]
        return inner, rings_offset(radii, weights, ip, t, r, inner, dps)


def rings_density(radii, weights, ip: str, t, r, dps: int = 60):
    """The radial density g_t(r) = sum_j pi_j (r / alpha^2) exp(-(r^2 + (beta R_j)^2) / 2 alpha^2) I_0(r beta R_j / alpha^2)."""
    with mp.workdps(dps):
        al, be = schedule(ip, t)
        r = mp.mpf(r)
        return sum(mp.mpf(w) * r / al**2 * mp.exp(-(r * r + (be * R) ** 2) / (2 * al**2)) * mp.besseli(0, r * be * R / al**2)
                   for R, w in zip((mp.mpf(R) for R in radii), weights))


def log10_abs(v) -> float:
    """log10 |v| of an mpmath number (-inf for 0), as a float."""
    return -math.inf if v == 0 else float(mp.log10(abs(v)))
