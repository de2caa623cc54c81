"""``ScipyMinimizeScalar``: a line search by ``scipy.optimize.minimize_scalar`` (imported on use)."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .base import LineSearchBase, check_int, tofloat

if TYPE_CHECKING:
    from ...core.objective import Objective

__all__ = ["ScipyMinimizeScalar"]

METHODS: tuple[str, ...] = ("brent", "golden", "bounded")


class ScipyMinimizeScalar(LineSearchBase):
    """Line search by ``scipy.optimize.minimize_scalar`` (Brent, golden section or bounded Brent).

    scipy is imported when the module is created (ImportError naming scipy when it is missing),
    not when tzfast is imported.

    Args:
        method: ``'brent'``, ``'golden'``, ``'bounded'``, a callable accepted by scipy, or None
            (scipy's default). Defaults to None.
        maxiter: the maximum number of iterations of the solver (``options['maxiter']``).
            Defaults to None.
        bracket: a triple ``(xa, xb, xc)`` with ``f(xb) < f(xa), f(xc)``, or a pair ``(xa, xb)``
            to start a downhill bracket search from. Defaults to None.
        bounds: ``(lower, upper)``, required by ``'bounded'``. Defaults to None.
        tol: the solver's tolerance. Defaults to None.
        prev_init: use the previous step size as the last point of the bracket.
            Defaults to False.
        options: other solver options. Defaults to None.

    References:
        Brent, R. P. (1973). Algorithms for Minimization without Derivatives. Prentice-Hall.

    Examples:
        Coordinate descent with a few Brent iterations per coordinate:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.ScipyMinimizeScalar(maxiter=8))
    """

    def __init__(self, method: str | Callable | None = None, maxiter: int | None = None,
                 bracket: Sequence[float] | None = None, bounds: Sequence[float] | None = None,
                 tol: float | None = None, prev_init: bool = False, options: Mapping[str, Any] | None = None):
        who = type(self).__name__
        if method is not None and not callable(method):
            if not isinstance(method, str) or method.lower() not in METHODS:
                raise ValueError(f"{who}: unknown `method` {method!r}; expected one of "
                                 f"{', '.join(map(repr, METHODS))}, a callable, or None")
        check_int(who, "maxiter", maxiter, 1, allow_none=True)
        if isinstance(method, str) and method.lower() == "bounded" and bounds is None:
            raise ValueError(f"{who}: method='bounded' needs `bounds` (lower, upper), got bounds=None")
        if bracket is not None and (not hasattr(bracket, "__len__") or len(bracket) not in (2, 3)):
            raise ValueError(f"{who}: `bracket` must be a pair or a triple of numbers, got {bracket!r}")
        if bounds is not None and (not hasattr(bounds, "__len__") or len(bounds) != 2):
            raise ValueError(f"{who}: `bounds` must be a pair (lower, upper), got {bounds!r}")
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"{who}: `options` must be a dict or None, got {type(options).__name__}")
        super().__init__(dict(method=method, bracket=bracket, bounds=bounds, tol=tol, options=options,
                              maxiter=maxiter, prev_init=prev_init))
        self.scopt  # noqa: B018  # import now: a missing scipy is reported when the module is created

    @torch.no_grad()
    def search(self, update: list[torch.Tensor], var: Objective) -> float:
        s = self.defaults
        f = self.make_objective(var=var)
        options = s["options"]
        if s["maxiter"] is not None:
            options = dict(options) if isinstance(options, Mapping) else {}
            options["maxiter"] = s["maxiter"]
        bracket = s["bracket"]
        if s["prev_init"] and "x_prev" in self.global_state:
            if bracket is None:
                bracket = (0, 1)
            bracket = (*bracket[:-1], self.global_state["x_prev"])

        x = self.scopt.minimize_scalar(f, method=s["method"], bracket=bracket, bounds=s["bounds"], tol=s["tol"],
                                       options=options).x
        x = tofloat(x)
        if not math.isfinite(x) or abs(x) >= torch.finfo(var.params[0].dtype).max / 2:
            x = 0
        self.global_state["x_prev"] = x
        return x
