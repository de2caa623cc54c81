"""Step-size interpolation for the strong-Wolfe line search: cubic, quadratic, bisection and
polynomial (Hermite) fits of the points evaluated so far.

The arithmetic follows torchzero 0.4.4 so trial step sizes agree: the cubic fit works on 0-d
tensors and turns plain numbers into float32 tensors first (as torchzero does), so a fit
between two trial points of a float64 problem is computed in float32, while one that
involves ``f(0)``/``f'(0)`` (float64 tensors) is promoted to float64.

References:
    Nocedal, J. & Wright, S. J. (2006). Numerical Optimization, 2nd ed., §3.5 (interpolation).
    Schmidt, M. minFunc's ``polyinterp`` (polynomial fits through function and derivative values).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["apply_bounds", "bisect", "cubic_min", "polynomial_min", "polynomial2_min", "quadratic_min"]

Bounds = tuple[Any, Any]


def apply_bounds(x: Any, bounds: Bounds) -> Any:
    """``x`` clipped to ``bounds = (lb, ub)`` (either may be None)."""
    lb, ub = bounds
    if lb is not None and x < lb:
        return lb
    if ub is not None and x > ub:
        return ub
    return x


def bisect(a_lo: Any, a_hi: Any, bounds: Bounds) -> Any:
    return apply_bounds(a_lo + 0.5 * (a_hi - a_lo), bounds)


def _t(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.float32)


def cubic_min(x1: Any, f1: Any, g1: Any, x2: Any, f2: Any, g2: Any, bounds: Bounds) -> float:
    """Minimiser of the cubic through ``(x1, f1, g1)`` and ``(x2, f2, g2)``, clipped to ``bounds``;
    the middle of ``bounds`` when the cubic has no minimum."""
    x1, f1, g1, x2, f2, g2 = map(_t, (x1, f1, g1, x2, f2, g2))
    lo, hi = bounds
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    disc = d1**2 - g1 * g2
    if disc >= 0:
        d2 = disc.sqrt()
        if x1 <= x2:
            xmin = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            xmin = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return float(min(max(xmin, lo), hi))
    return float((lo + hi) / 2.0)


def quadratic_min(a_lo: Any, f_lo: Any, g_lo: Any, a_hi: Any, f_hi: Any, bounds: Bounds) -> Any:
    """Minimiser of the quadratic through ``(a_lo, f_lo, g_lo)`` and ``(a_hi, f_hi)``; bisection when it
    is not convex."""
    a = a_hi - a_lo
    denom = 2 * (f_hi - f_lo - g_lo * a)
    if denom > 1e-32:
        return apply_bounds(g_lo * a**2 / -denom, bounds)
    return bisect(a_lo, a_hi, bounds)


# ---------------------------------------------------------------------------- Hermite polynomial fits
def _fit(points: np.ndarray) -> np.ndarray | None:
    """Coefficients (highest power first) of the polynomial of degree ``2n-1`` matching ``f`` and
    ``f'`` at the ``n`` points (rows ``x, f, g``); None when the system is singular."""
    deg = 2 * len(points) - 1
    # scalar powers on purpose: numpy's vectorised power rounds differently (a few ulp), and these
    # systems are ill-conditioned enough to turn that into ~1e-9 differences of the minimiser
    rows_f = [[x**k for k in range(deg, -1, -1)] for x in points[:, 0]]
    rows_g = [[k * x ** (k - 1) for k in range(deg, 0, -1)] + [0.0] for x in points[:, 0]]
    a = np.array(rows_f + rows_g, dtype=np.float64)
    b = np.concatenate([points[:, 1], points[:, 2]])
    if np.linalg.matrix_rank(a) != a.shape[0]:
        return None
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return None


def _best_critical_point(coeff: np.ndarray, points: np.ndarray, lb: Any, ub: Any) -> Any:
    """The candidate in ``[lb, ub]`` with the least polynomial value, or None.

    Candidates: ``lb``, ``ub``, the points and the real roots of the derivative, in that order.
    """
    deg = len(coeff) - 1
    dcoeff = coeff[:-1] * np.arange(deg, 0, -1)
    candidates: list[Any] = [lb, ub, *points[:, 0]]
    if not np.isinf(dcoeff).any():
        candidates.extend(np.roots(dcoeff))
    best: Any = None
    best_value: Any = np.inf
    for c in candidates:
        if not np.isreal(c):
            continue
        c = np.real(c)
        if c < lb or c > ub:
            continue
        value = np.polyval(coeff, c)
        if value < best_value:
            best, best_value = np.real(c), value
    return best


def _two_point_cubic(p: np.ndarray) -> tuple[Any, bool]:
    """The cubic's minimiser through two rows ``(x, f, g)`` and whether it exists."""
    (x0, f0, g0), (x1, f1, g1) = p[0], p[1]
    d1 = g0 + g1 - 3 * ((f0 - f1) / (x0 - x1))
    disc = d1**2 - g0 * g1
    if disc > 0:
        d2 = np.sqrt(disc)
        return x1 - (x1 - x0) * ((g1 + d2 - d1) / (g1 - g0 + 2 * d2)), True
    return None, False


def polynomial_min(points: np.ndarray, lb: Any, ub: Any) -> Any:
    """Minimiser in ``[lb, ub]`` of the Hermite polynomial through ``points`` (rows ``x, f, g``).

    Two points: the cubic's minimiser clipped to the bounds (the middle without a minimum);
    otherwise the best of the bounds, the points and the derivative's real roots (the middle
    when the fit is singular).
    """
    if lb is None:
        lb = np.min(points[:, 0])
    if ub is None:
        ub = np.max(points[:, 0])
    if len(points) == 2:
        x, ok = _two_point_cubic(points)
        return np.minimum(np.maximum(lb, x), ub) if ok else (ub + lb) / 2
    coeff = _fit(points)
    if coeff is None:
        return (lb + ub) / 2
    best = _best_critical_point(coeff, points, lb, ub)
    return (lb + ub) / 2 if best is None else best


def _within(x: Any, lb: Any, ub: Any) -> bool:
    return not ((lb is not None and x < lb) or (ub is not None and x > ub))


def _quadratic2(p: np.ndarray) -> Any:
    """Minimiser of the quadratic through ``(x0, f0, g0)`` and ``(x1, f1)``, None if not convex."""
    (x0, f0, g0), (x1, f1, _) = p[0], p[1]
    if x0 == 0:
        denom = 2 * (f1 - f0 - g0 * x1)
        if abs(denom) > 1e-32:
            return -g0 * x1**2 / denom
        return None
    denom = (x0 - x1) ** 2
    if denom > 1e-32:
        curv = -(f0 - f1 - g0 * (x0 - x1)) / denom
        if curv > 1e-32:
            return x0 - g0 / (2 * curv)
    return None


def _cubic2(p: np.ndarray, lb: Any, ub: Any) -> Any:
    """Cubic minimiser within bounds, else the quadratic's within bounds, else None."""
    (x0, f0, g0), (x1, f1, g1) = p[0], p[1]
    if abs(x0 - x1) > 1e-32:
        d1 = g0 + g1 - 3 * ((f0 - f1) / (x0 - x1))
        disc = d1**2 - g0 * g1
        if disc > 0:
            d2 = np.sqrt(disc)
            denom = g1 - g0 + 2 * d2
            if abs(denom) > 1e-32:
                x = x1 - (x1 - x0) * ((g1 + d2 - d1) / denom)
                if _within(x, lb, ub):
                    return x
    x = _quadratic2(p)
    if x is not None and _within(x, lb, ub):
        return x
    return None


def polynomial2_min(points: np.ndarray, lb: Any, ub: Any) -> Any:
    """Like :func:`polynomial_min`, but a fit whose minimiser leaves the bounds is replaced by a
    lower-degree one (dropping the oldest point, or trying pairs of points), down to bisection."""
    n = len(points)
    if n <= 1:
        return (lb + ub) / 2
    if lb is None:
        lb = np.min(points[:, 0])
    if ub is None:
        ub = np.max(points[:, 0])
    if n == 2:
        x = _cubic2(points, lb, ub)
        return x if x is not None and _within(x, lb, ub) else (lb + ub) / 2
    if n == 3:
        for pair in (points[:2], points[1:], points[::2]):
            x = _cubic2(pair, lb, ub)
            if x is not None and _within(x, lb, ub):
                return x
    lb, ub = float(lb), float(ub)
    coeff = _fit(points)
    if coeff is not None:
        x = _best_critical_point(coeff, points, lb, ub)
        if x is not None and _within(x, lb, ub):
            return x
    return polynomial2_min(points[1:], lb, ub)


def finite_points(history: Sequence[tuple[Any, Any, Any]]) -> np.ndarray:
    """The ``(a, f, g)`` rows whose three values are finite, as a float64 array."""
    rows = []
    for a, f, g in history:
        a, f, g = (x.item() if isinstance(x, torch.Tensor) else float(x) for x in (a, f, g))
        if math.isfinite(a) and math.isfinite(f) and math.isfinite(g):
            rows.append((a, f, g))
    return np.array(rows, dtype=np.float64).reshape(-1, 3)
