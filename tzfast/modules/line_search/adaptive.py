"""``AdaptiveBisection``: start from the previous step size, then halve or double it while the
value keeps decreasing."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .base import LineSearchBase, check_int, check_real

if TYPE_CHECKING:
    from ...core.objective import Objective

__all__ = ["AdaptiveBisection", "adaptive_bisection"]


def adaptive_bisection(f: Callable[[float], float], a_init: float, maxiter: int, nplus: float = 2,
                       nminus: float = 0.5, f_0: Any = None) -> tuple[Any, Any, int]:
    """Tries ``a_init``; if the value rose (or is not finite) multiplies the step by ``nminus``,
    else by ``nplus``, until the value stops decreasing.

    Returns ``(step, value, number of extra evaluations)``; ``(0, f(0), n)`` when no step size
    decreased the value.
    """
    niter = 0
    if f_0 is None:
        f_0 = f(0)
    a = a_init
    f_a = f(a)
    a_prev, f_prev = a, math.inf

    if f_a > f_0 or not math.isfinite(f_a):  # backtrack while it keeps improving
        while f_a < f_prev or not math.isfinite(f_a):
            a_prev, f_prev = a, f_a
            maxiter -= 1
            if maxiter < 0:
                break
            a = a * nminus
            f_a = f(a)
            niter += 1
    else:  # forward-track while it keeps improving
        while f_a <= f_prev and math.isfinite(f_a):
            a_prev, f_prev = a, f_a
            maxiter -= 1
            if maxiter < 0:
                break
            a *= nplus
            f_a = f(a)
            niter += 1

    if f_prev < f_0:
        return a_prev, f_prev, niter
    return 0, f_0, niter


class AdaptiveBisection(LineSearchBase):
    """Evaluates the previous step size; if the value rose, halves it until the value stops
    decreasing, otherwise doubles it until the value stops decreasing.

    Args:
        init: the first step size (and the restart value after a failure). Defaults to 1.0.
        nplus: multiplier when the step size can grow, > 1. Defaults to 2.
        nminus: multiplier when the step size is too large, in (0, 1). Defaults to 0.5.
        maxiter: the maximum number of function evaluations per step. Defaults to 10.
        adaptive: after a failed search the next one starts smaller (``nminus**maxiter``
            times). Defaults to True.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.AdaptiveBisection())
    """

    def __init__(self, init: float = 1.0, nplus: float = 2, nminus: float = 0.5, maxiter: int = 10,
                 adaptive: bool = True):
        who = type(self).__name__
        check_real(who, "init", init, 0, math.inf)
        check_real(who, "nplus", nplus, 1, math.inf)
        check_real(who, "nminus", nminus, 0, 1)
        check_int(who, "maxiter", maxiter, 1)
        super().__init__(dict(init=init, nplus=nplus, nminus=nminus, maxiter=maxiter, adaptive=adaptive))

    @torch.no_grad()
    def search(self, update: list[torch.Tensor], var: Objective) -> float:
        s = self.defaults
        init, nplus, nminus, maxiter = s["init"], s["nplus"], s["nminus"], s["maxiter"]
        gs = self.global_state
        f = self.make_objective(var=var)

        a_init = gs.get("a_prev", init)
        if s["adaptive"]:
            a_init = a_init * gs.get("init_scale", 1)
        finfo = torch.finfo(var.params[0].dtype)
        if a_init < finfo.tiny * 2:
            a_init = finfo.max / 2

        step, _, niter = adaptive_bisection(f, a_init=a_init, maxiter=maxiter, nplus=nplus, nminus=nminus)
        if step != 0:
            gs["init_scale"] = 1
            # one evaluation only: forward-tracking overshot straight away, so step back
            if niter == 1 and step >= a_init:
                step *= nminus
            gs["a_prev"] = step
            return step

        gs["init_scale"] = gs.get("init_scale", 1) * nminus**maxiter
        gs["a_prev"] = init
        return 0
