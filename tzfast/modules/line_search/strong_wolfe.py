"""``StrongWolfe``: bracketing + zoom line search satisfying the strong Wolfe conditions."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch

from .base import LineSearchBase, check_choice, check_int, check_real, dot
from .interpolation import (
    apply_bounds,
    bisect,
    cubic_min,
    finite_points,
    polynomial2_min,
    polynomial_min,
    quadratic_min,
)

if TYPE_CHECKING:
    from ...core.objective import Objective

__all__ = ["StrongWolfe"]

AInit = Literal["first-order", "quadratic", "quadratic-clip", "previous", "fixed"]
Interpolation = Literal["quadratic", "cubic", "bisection", "polynomial", "polynomial2"]
A_INITS: tuple[str, ...] = get_args(AInit)
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)

_FAIL = (None, None, None)


class _WolfeSearch:
    """One strong-Wolfe search along a direction (Nocedal & Wright, algorithms 3.5 and 3.6).

    ``phi(a)`` returns ``(f, f')`` at step size ``a``; values are cached per step size.
    """

    def __init__(self, phi: Callable[[Any], tuple[float, float]], f_0: Any, g_0: Any, d_norm: Any, a_init: Any,
                 a_max: float, c1: float, c2: float, maxiter: int, maxeval: int | None, maxzoom: int,
                 tol_change: float, interpolation: str):
        self.phi = phi
        self.f_0, self.g_0, self.d_norm = f_0, g_0, d_norm
        self.a_init, self.a_max = a_init, a_max
        self.c1, self.c2 = c1, c2
        self.maxiter, self.maxzoom = maxiter, maxzoom
        self.maxeval: float = math.inf if maxeval is None else maxeval
        self.tol_change = tol_change
        self.interpolation = interpolation
        self.num_evals = 0
        self.history: dict[Any, tuple[float, float]] = {}

    def f(self, a: Any) -> tuple[float, float]:
        hit = self.history.get(a)
        if hit is not None:
            return hit
        self.num_evals += 1
        value = self.phi(a)
        self.history[a] = value
        return value

    def interpolate(self, a_lo: Any, f_lo: Any, g_lo: Any, a_hi: Any, f_hi: Any, g_hi: Any, bounds: tuple) -> Any:
        kind = self.interpolation
        if kind == "cubic":
            return cubic_min(a_lo, f_lo, g_lo, a_hi, f_hi, g_hi, bounds)
        if kind == "bisection":
            return bisect(a_lo, a_hi, bounds)
        if kind == "quadratic":
            return quadratic_min(a_lo, f_lo, g_lo, a_hi, f_hi, bounds)
        points = finite_points([(a, f, g) for a, (f, g) in self.history.items()])
        if len(points) == 0:
            return bisect(a_lo, a_hi, bounds)
        fit = polynomial_min if kind == "polynomial" else polynomial2_min
        return apply_bounds(fit(points, *bounds), bounds)

    def zoom(self, a_lo: Any, f_lo: Any, g_lo: Any, a_hi: Any, f_hi: Any, g_hi: Any) -> tuple[Any, Any, Any]:
        if a_lo >= a_hi:
            a_lo, f_lo, g_lo, a_hi, f_hi, g_hi = a_hi, f_hi, g_hi, a_lo, f_lo, g_lo
        stalled = False
        for _ in range(self.maxzoom):
            if self.num_evals >= self.maxeval:
                break
            if (a_hi - a_lo) * self.d_norm < self.tol_change:  # the bracket is too small
                break
            if not (math.isfinite(f_hi) and math.isfinite(g_hi)):
                a_hi = a_hi / 2
                f_hi, g_hi = self.f(a_hi)
                continue

            a_j = self.interpolate(a_lo, f_lo, g_lo, a_hi, f_hi, g_hi, bounds=(a_lo, min(a_hi, self.a_max)))
            # keep trial points away from the bracket's ends (as torch.optim.LBFGS does)
            eps = 0.1 * (a_hi - a_lo)
            if min(a_hi - a_j, a_j - a_lo) < eps:
                if stalled or a_j >= a_hi or a_j <= a_lo:
                    a_j = a_hi - eps if abs(a_j - a_hi) < abs(a_j - a_lo) else a_lo + eps
                    stalled = False
                else:
                    stalled = True
            else:
                stalled = False

            f_j, g_j = self.f(a_j)
            if f_j > self.f_0 + self.c1 * a_j * self.g_0 or f_j > f_lo:
                a_hi, f_hi, g_hi = a_j, f_j, g_j
            else:
                if abs(g_j) <= -self.c2 * self.g_0:
                    return a_j, f_j, g_j
                if g_j * (a_hi - a_lo) >= 0:
                    a_hi, f_hi, g_hi = a_lo, f_lo, g_lo
                a_lo, f_lo, g_lo = a_j, f_j, g_j
        return _FAIL

    def search(self) -> tuple[Any, Any, Any]:
        a_i = min(self.a_init, self.a_max)
        f_i: Any = None
        g_i: Any = None
        a_prev: Any = 0
        f_prev, g_prev = self.f_0, self.g_0
        for i in range(self.maxiter):
            if self.num_evals >= self.maxeval:
                break
            f_i, g_i = self.f(a_i)
            if f_i > self.f_0 + self.c1 * a_i * self.g_0 or (i > 0 and f_i > f_prev):
                return self.zoom(a_prev, f_prev, g_prev, a_i, f_i, g_i)
            if abs(g_i) <= -self.c2 * self.g_0:
                return a_i, f_i, g_i
            if g_i >= 0:
                return self.zoom(a_i, f_i, g_i, a_prev, f_prev, g_prev)
            # extrapolate (bounds as in torch.optim.LBFGS)
            lo = a_i + 0.01 * (a_i - a_prev)
            hi = min(a_i * 10, self.a_max)
            a_next = self.interpolate(a_prev, f_prev, g_prev, a_i, f_i, g_i, bounds=(lo, hi))
            a_prev, f_prev, g_prev = a_i, f_i, g_i
            a_i = a_next
        if self.num_evals < self.maxeval:
            return self.zoom(0, self.f_0, self.g_0, a_i, f_i, g_i)
        return _FAIL


class StrongWolfe(LineSearchBase):
    """Interpolation line search that finds a step satisfying the strong Wolfe conditions.

    Sufficient decrease ``f(a) <= f(0) + c1*a*f'(0)`` and strong curvature
    ``|f'(a)| <= c2*|f'(0)|``. Each trial evaluates the loss and the gradient.

    Args:
        c1: sufficient decrease constant, in (0, c2). Defaults to 1e-4.
        c2: strong curvature constant, in (c1, 1); 0.1 is recommended for conjugate gradient.
            Defaults to 0.9.
        a_init: the initial guess of the step size:
            ``'fixed'`` - ``init_value``;
            ``'first-order'`` - the first-order change of the function is the same as at the
            previous step (``a_prev * f'_prev(0) / f'(0)``);
            ``'quadratic'`` - the minimiser of the quadratic through ``f_prev(0)``, ``f(0)``
            and ``f'(0)``;
            ``'quadratic-clip'`` - the same, capped at ``min(1, 1.01 * a)`` (Nocedal & Wright);
            ``'previous'`` - the step size found at the previous step.
            Case and surrounding spaces are ignored. Defaults to ``'fixed'``.
        a_max: upper bound of the trial step sizes. Defaults to 1e12.
        init_value: the initial step size with ``a_init='fixed'``, and the fallback of the other
            strategies. Defaults to 1.
        maxiter: maximum number of bracketing iterations. Defaults to 25.
        maxzoom: maximum number of zoom iterations. Defaults to 10.
        maxeval: maximum number of function evaluations, None for no limit. Defaults to None.
        tol_change: the search stops when the bracket times ``||d||`` is smaller. Defaults to 1e-9.
        interpolation: how a trial point is chosen: ``'cubic'``, ``'quadratic'``,
            ``'bisection'``, ``'polynomial'`` (Hermite fit through every point evaluated) or
            ``'polynomial2'`` (the same, falling back to lower degrees when the minimiser leaves
            the bracket). Defaults to ``'cubic'``.
        adaptive: halve the initial step size after a failed search (reset after a success).
            Defaults to True.
        fallback: when no point satisfies the conditions, use the evaluated point with the
            lowest value if it is below ``f(0)``. Defaults to False.
        plus_minus: when ``f'(0) > 0`` (not a descent direction) search along the opposite
            direction. Defaults to False.

    References:
        Nocedal, J. & Wright, S. J. (2006). Numerical Optimization, 2nd ed., algorithms 3.5-3.6.

    Examples:
        L-BFGS with a strong Wolfe line search, and conjugate gradient:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.LBFGS(), tz.m.StrongWolfe())
        >>> opt = tz.Optimizer(model.parameters(), tz.m.PolakRibiere(),
        ...                    tz.m.StrongWolfe(c2=0.1, a_init="first-order"))
    """

    def __init__(self, c1: float = 1e-4, c2: float = 0.9, a_init: AInit = "fixed", a_max: float = 1e12,
                 init_value: float = 1, maxiter: int = 25, maxzoom: int = 10, maxeval: int | None = None,
                 tol_change: float = 1e-9, interpolation: Interpolation = "cubic", adaptive: bool = True,
                 fallback: bool = False, plus_minus: bool = False):
        who = type(self).__name__
        check_real(who, "c1", c1, 0, 1)
        check_real(who, "c2", c2, 0, 1)
        if c1 >= c2:
            raise ValueError(f"{who}: `c1` must be smaller than `c2` (0 < c1 < c2 < 1), got c1={c1!r}, c2={c2!r}")
        if not isinstance(a_init, str):
            raise TypeError(f"{who}: `a_init` must be a str, one of {', '.join(map(repr, A_INITS))}; "
                            f"got {type(a_init).__name__} {a_init!r}")
        check_choice(who, "a_init", a_init.lower().strip(), A_INITS)
        check_real(who, "a_max", a_max, 0, math.inf, hi_open=False)
        check_real(who, "init_value", init_value, 0, math.inf)
        check_int(who, "maxiter", maxiter, 1)
        check_int(who, "maxzoom", maxzoom, 0)
        check_int(who, "maxeval", maxeval, 1, allow_none=True)
        check_real(who, "tol_change", tol_change, 0, math.inf, lo_open=False)
        check_choice(who, "interpolation", interpolation, INTERPOLATIONS)
        defaults = dict(init_value=init_value, init=a_init, a_max=a_max, c1=c1, c2=c2, maxiter=maxiter,
                        maxzoom=maxzoom, fallback=fallback, maxeval=maxeval, adaptive=adaptive,
                        interpolation=interpolation, plus_minus=plus_minus, tol_change=tol_change)
        super().__init__(defaults=defaults)
        self.global_state["initial_scale"] = 1.0

    def reset(self) -> None:
        super().reset()
        self.global_state["initial_scale"] = 1.0

    def _initial_step(self, how: str, init_value: float, f_0: Any, g_0: Any, dtype: torch.dtype) -> Any:
        gs = self.global_state
        tiny2 = torch.finfo(dtype).tiny * 2
        a_init: Any = init_value
        if how == "previous":
            a_init = gs.get("a_prev", a_init)
        elif how == "first-order":
            if "g_prev" in gs and g_0 < -tiny2 and gs["g_prev"] < 0:
                a_init = gs["a_prev"] * gs["g_prev"] / g_0
        elif how in ("quadratic", "quadratic-clip"):
            if "f_prev" in gs and g_0 < -tiny2 and f_0 < gs["f_prev"]:
                a_init = 2 * (f_0 - gs["f_prev"]) / g_0
                if how == "quadratic-clip":
                    a_init = min(1, 1.01 * a_init)
        return a_init

    @torch.no_grad()
    def search(self, update: list[torch.Tensor], var: Objective) -> float:
        s = self.defaults
        phi: Callable[[Any], tuple[float, float]] = self.make_objective_with_derivative(var=var)

        grads = var.get_grads()
        g_0 = -dot(grads, update)
        f_0 = var.get_loss(False)
        if isinstance(f_0, torch.Tensor):
            f_0 = f_0.detach()
        d_norm = dot(update, update).sqrt()
        dtype = update[0].dtype

        inverted = bool(s["plus_minus"]) and g_0 > 0
        if inverted:
            forward = phi

            def phi(a: Any) -> tuple[float, float]:
                value, slope = forward(-a)
                return value, -slope

        how = str(s["init"]).lower().strip()
        check_choice(type(self).__name__, "a_init", how, A_INITS)
        init_value = s["init_value"]
        a_init = self._initial_step(how, init_value, f_0, g_0, dtype)
        if s["adaptive"]:
            a_init = a_init * self.global_state.get("initial_scale", 1)

        wolfe = _WolfeSearch(phi, f_0=f_0, g_0=g_0, d_norm=d_norm, a_init=a_init, a_max=s["a_max"], c1=s["c1"],
                             c2=s["c2"], maxiter=s["maxiter"], maxeval=s["maxeval"], maxzoom=s["maxzoom"],
                             tol_change=s["tol_change"], interpolation=s["interpolation"])
        a, f_a, _ = wolfe.search()
        if inverted and a is not None:
            a = -a
        if f_a is not None and (f_a > f_0 or not math.isfinite(f_a)):
            a = None

        if s["fallback"] and (a is None or a == 0 or not math.isfinite(a)) and wolfe.history:
            a_best, (f_best, _) = min(wolfe.history.items(), key=lambda item: item[1][0])
            if f_best < f_0:
                a = -a_best if inverted else a_best

        if a is not None and a != 0 and math.isfinite(a):
            self.global_state["initial_scale"] = 1
            self.global_state["a_prev"] = a
            self.global_state["f_prev"] = f_0
            self.global_state["g_prev"] = g_0
            return a

        if s["adaptive"]:
            scale = self.global_state.get("initial_scale", 1) * 0.5
            if scale < torch.finfo(dtype).tiny * 2:
                scale = init_value * 2
            self.global_state["initial_scale"] = scale
        return 0
