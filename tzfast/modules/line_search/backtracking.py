"""Backtracking line searches: ``Backtracking`` and ``AdaptiveBacktracking``."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch

from .base import LineSearchBase, check_choice, check_int, check_real, dot, termination_condition

if TYPE_CHECKING:
    from ...core.objective import Objective

__all__ = ["AdaptiveBacktracking", "Backtracking", "backtracking_line_search"]

BacktrackingCondition = Literal["armijo", "decrease", "goldstein"]
# conditions that need no derivative at the trial point (the others need f'(a), which backtracking never computes)
BACKTRACKING_CONDITIONS: tuple[str, ...] = get_args(BacktrackingCondition)


def backtracking_line_search(f: Callable[[float], float], g_0: Any, init: float = 1.0, beta: float = 0.5,
                             c: float = 1e-4, maxiter: int = 10, condition: str = "armijo") -> float | None:
    """Multiplies the step size by ``beta`` until ``condition`` holds; None after ``maxiter`` tries.

    A non-finite value is skipped; when the value rises again after having dropped below
    ``f(0)``, the previous (better) step size is returned.

    Args:
        f: the objective as a function of the step size.
        g_0: the directional derivative at step size 0.
        init: the first step size. Defaults to 1.0.
        beta: the factor applied after each rejected step size. Defaults to 0.5.
        c: the sufficient decrease constant. Defaults to 1e-4.
        maxiter: the number of step sizes tried. Defaults to 10.
        condition: ``'armijo'``, ``'decrease'`` or ``'goldstein'``. Defaults to ``'armijo'``.
    """
    a = init
    f_0 = f(0)
    f_prev = None
    for _ in range(maxiter):
        f_a = f(a)
        if not math.isfinite(f_a):
            a *= beta
            continue
        if f_prev is not None and f_a > f_prev and f_prev < f_0:
            return a / beta
        f_prev = f_a
        if termination_condition(condition, f_0=f_0, g_0=g_0, f_a=f_a, g_a=None, a=a, c=c):
            return a
        a *= beta
    return None


def _check_common(who: str, init: Any, beta: Any, c: Any, condition: Any, maxiter: Any) -> None:
    check_real(who, "init", init, 0, math.inf)
    check_real(who, "beta", beta, 0, 1)
    check_real(who, "c", c, 0, 1, lo_open=False)
    check_choice(who, "condition", condition, BACKTRACKING_CONDITIONS)
    check_int(who, "maxiter", maxiter, 1)


class Backtracking(LineSearchBase):
    """Backtracking line search: tries ``init, init*beta, init*beta**2, ...`` until the condition holds.

    Args:
        init: the first step size. Defaults to 1.0.
        beta: each rejected step size is multiplied by this, in (0, 1). Defaults to 0.5.
        c: the sufficient decrease constant, in [0, 1); with 0 no gradient is needed.
            Defaults to 1e-4.
        condition: ``'armijo'`` (sufficient decrease), ``'decrease'`` (any decrease) or
            ``'goldstein'`` (armijo with a lower bound; allowed, though without a zoom stage it
            rarely helps). Defaults to ``'armijo'``.
        maxiter: the maximum number of function evaluations per step. Defaults to 10.
        adaptive: after a failed search the next one starts where this one stopped
            (``init * beta**maxiter``), otherwise from ``init``. Defaults to True.

    References:
        Armijo, L. (1966). Minimization of functions having Lipschitz continuous first partial
        derivatives. Pacific Journal of Mathematics, 16(1).

    Examples:
        Gradient descent, and L-BFGS, with backtracking:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.Backtracking())
        >>> opt = tz.Optimizer(model.parameters(), tz.m.LBFGS(), tz.m.Backtracking())
    """

    def __init__(self, init: float = 1.0, beta: float = 0.5, c: float = 1e-4,
                 condition: BacktrackingCondition = "armijo", maxiter: int = 10, adaptive: bool = True):
        _check_common(type(self).__name__, init, beta, c, condition, maxiter)
        super().__init__(dict(init=init, beta=beta, c=c, condition=condition, maxiter=maxiter, adaptive=adaptive))

    @torch.no_grad()
    def search(self, update: list[torch.Tensor], var: Objective) -> float:
        s = self.defaults
        init, beta, c, maxiter, adaptive = s["init"], s["beta"], s["c"], s["maxiter"], s["adaptive"]
        f = self.make_objective(var=var)
        g_0: Any = 0 if c == 0 else -dot(var.get_grads(), var.get_updates())

        init_scale = self.global_state.get("init_scale", 1)
        if adaptive:
            init = init * init_scale

        step = backtracking_line_search(f, g_0, init=init, beta=beta, c=c, condition=s["condition"],
                                        maxiter=maxiter)
        if step is not None:
            self.global_state["init_scale"] = 1
            return step

        if adaptive:  # continue decreasing next time; restart from a large step when it became tiny
            if init_scale <= torch.finfo(var.params[0].dtype).tiny * 2:
                self.global_state["init_scale"] = init * 2
            else:
                self.global_state["init_scale"] = init_scale * beta**maxiter
        return 0


class AdaptiveBacktracking(LineSearchBase):
    """Backtracking whose next first step size is set so that the accepted step is found after
    about ``target_iters`` reductions.

    When the first step size is accepted it grows by ``nplus ** target_iters``; otherwise the
    next first step size is ``step / beta**target_iters`` (smoothed by ``scale_beta``). After a
    failure, ``beta`` is reduced for the next search (divided by 1.5) and restored gradually.

    Args:
        init: the first step size. Defaults to 1.0.
        beta: each rejected step size is multiplied by this, in (0, 1). Defaults to 0.5.
        c: the sufficient decrease constant, in [0, 1). Defaults to 1e-4.
        condition: ``'armijo'``, ``'decrease'`` or ``'goldstein'``. Defaults to ``'armijo'``.
        maxiter: the maximum number of function evaluations per step. Defaults to 20.
        target_iters: the number of reductions the next search is expected to need.
            Defaults to 1.
        nplus: growth factor when the first step size was accepted. Defaults to 2.0.
        scale_beta: momentum of the first step size's scale, 0 disables it. Defaults to 0.0.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.AdaptiveBacktracking())
    """

    def __init__(self, init: float = 1.0, beta: float = 0.5, c: float = 1e-4,
                 condition: BacktrackingCondition = "armijo", maxiter: int = 20, target_iters: int = 1,
                 nplus: float = 2.0, scale_beta: float = 0.0):
        who = type(self).__name__
        _check_common(who, init, beta, c, condition, maxiter)
        check_int(who, "target_iters", target_iters, 0)
        check_real(who, "nplus", nplus, 0, math.inf)
        check_real(who, "scale_beta", scale_beta, 0, 1, lo_open=False, hi_open=False)
        super().__init__(dict(init=init, beta=beta, c=c, condition=condition, maxiter=maxiter,
                              target_iters=target_iters, nplus=nplus, scale_beta=scale_beta))
        self._init_scales()

    def _init_scales(self) -> None:
        self.global_state["beta_scale"] = 1.0
        self.global_state["initial_scale"] = 1.0

    def reset(self) -> None:
        super().reset()
        self._init_scales()

    @torch.no_grad()
    def search(self, update: list[torch.Tensor], var: Objective) -> float:
        s = self.defaults
        c, target_iters, nplus, scale_beta = s["c"], s["target_iters"], s["nplus"], s["scale_beta"]
        gs = self.global_state
        f = self.make_objective(var=var)
        g_0: Any = 0 if c == 0 else -dot(var.get_grads(), update)

        beta = s["beta"] * gs["beta_scale"]
        init = s["init"] * gs["initial_scale"]
        step = backtracking_line_search(f, g_0, init=init, beta=beta, c=c, condition=s["condition"],
                                        maxiter=s["maxiter"])
        if step is None:
            gs["beta_scale"] /= 1.5
            return 0

        if step == init and target_iters > 0:
            gs["initial_scale"] = min(gs["initial_scale"] * nplus**target_iters,
                                      torch.finfo(var.params[0].dtype).max / 2)
        else:
            # the first step size that reaches `step` after `target_iters` reductions
            target = step / beta**target_iters
            weight = 1 - scale_beta
            gs["initial_scale"] = gs["initial_scale"] + weight * (target / init - gs["initial_scale"])
        gs["beta_scale"] = min(1.0, gs["beta_scale"] * math.sqrt(1.5))
        return step
