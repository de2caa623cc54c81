"""Cubic regularization (adaptive regularisation with cubics) as a trust region."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch

from ...core import Chainable
from ...linalg.linear_operator import LinearOperator
from .base import RadiusStrategy, TrustRegionBase, _as_scalar_loss, _unflat, solve_plus_diag
from .levenberg_marquardt import check_not_inverse

__all__ = ["CubicRegularization", "cubic_subproblem"]


def _cauchy_radius(g: torch.Tensor, H: LinearOperator, M: float) -> torch.Tensor:
    """Length of the minimiser of the cubic model along ``-g`` (a lower bound on the solution's)."""
    g_norm = torch.linalg.vector_norm(g)
    if g_norm == 0 or M == 0:
        return torch.zeros((), dtype=g.dtype, device=g.device)
    g_dir = g / g_norm
    gHg = H.matvec(g_dir) @ g_dir
    R = -gHg / (2 * M) + torch.sqrt((gHg / M) ** 2 / 4 + g_norm / M)
    return torch.linalg.vector_norm(-R * g_dir)


@torch.no_grad()
def cubic_subproblem(f: float, g: torch.Tensor, H: LinearOperator, M: float,
                     loss_at: Callable[[torch.Tensor], float] | None, maxiter: int = 100,
                     eps: float = 1e-8) -> torch.Tensor:
    """Minimiser ``s`` of ``g^T s + s^T H s / 2 + M |s|^3 / 3`` by bisection on ``|s|``.

    The solution is ``s = -(H + M |s| I)^-1 g``; ``|s|`` is bracketed between the Cauchy
    radius and the Newton step's length. With ``loss_at``, the Newton step is returned as soon
    as it decreases the loss.
    """
    newton = H.solve(g).neg_()
    if M == 0:
        return newton
    r_min = _cauchy_radius(g, H, M)
    if loss_at is not None and f > loss_at(newton):
        return newton
    r_max = torch.linalg.vector_norm(newton)
    if r_max - r_min < eps:
        return newton
    s: torch.Tensor | None = None
    for _ in range(maxiter):
        r_try = (r_min + r_max) / 2
        s = solve_plus_diag(H, g, r_try * M).neg()
        crit = 1 / torch.linalg.vector_norm(s) - 1 / r_try
        if torch.abs(crit) < eps:
            return s
        if crit < 0:
            r_min = r_try
        else:
            r_max = r_try
        if r_max - r_min < eps:
            break
    assert s is not None
    return s


class CubicRegularization(TrustRegionBase):
    """Cubic-regularized Newton / quasi-Newton: each step minimises the model
    ``g^T s + s^T H s / 2 + |s|^3 / (3 radius)``; the radius adapts as in a trust region.

    Args:
        hess_module: keeps the Hessian approximation (quasi-Newton with ``inverse=False``,
            ``Newton``, ``GaussNewton``).
        eta: a step is accepted when ``rho > eta``. Defaults to 0.0.
        nplus: radius factor after a very good step. Defaults to 3.5.
        nminus: radius factor after a bad step. Defaults to 0.25.
        rho_good: ``rho`` above which the radius grows. Defaults to 0.99.
        rho_bad: ``rho`` below which the radius shrinks. Defaults to 1e-4.
        init: initial radius (``1 / M``). Defaults to 1.
        max_attempts: attempts per step before a zero update. Defaults to 10.
        radius_strategy: ``'default'``, ``'fixed'`` or a callable. Defaults to ``'default'``.
        maxiter: bisection iterations of the subproblem. Defaults to 100.
        eps: tolerance of the subproblem. Defaults to 1e-8.
        check_decrease: take the Newton step whenever it decreases the loss (one more closure
            evaluation per attempt). Defaults to False.
        update_freq: ``H`` is updated every ``update_freq`` steps. Defaults to 1.
        inner: applied to the gradient before the solve. Defaults to None.
        fallback: (keyword-only, spec) invert a Hessian inverse anyway instead of raising.
            Defaults to False.

    References:
        Nesterov & Polyak, "Cubic regularization of Newton method and its global performance",
        Math. Program. 108 (2006); subproblem solver after K. Mishchenko's ``opt_methods``.

    Examples:
        >>> import torch, tzfast as tz
        >>> X = torch.tensor([-1.1, 2.5], dtype=torch.float64, requires_grad=True)
        >>> opt = tz.Optimizer([X], tz.m.CubicRegularization(tz.m.BFGS(inverse=False)))
        >>> def closure(backward=True):
        ...     loss = (X ** 2).sum() + X[0] * X[1]
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> for _ in range(30):
        ...     loss = opt.step(closure)
        >>> bool(loss < 1e-6)
        True
    """

    def __init__(self, hess_module: Chainable, eta: float = 0.0, nplus: float = 3.5, nminus: float = 0.25,
                 rho_good: float = 0.99, rho_bad: float = 1e-4, init: float = 1, max_attempts: int = 10,
                 radius_strategy: RadiusStrategy | Literal["default", "fixed"] = "default", maxiter: int = 100,
                 eps: float = 1e-8, check_decrease: bool = False, update_freq: int = 1,
                 inner: Chainable | None = None, *, fallback: bool = False):
        super().__init__(defaults=dict(maxiter=maxiter, eps=eps, check_decrease=check_decrease, fallback=fallback),
                         hess_module=hess_module, eta=eta, nplus=nplus, nminus=nminus, rho_good=rho_good,
                         rho_bad=rho_bad, init=init, max_attempts=max_attempts, radius_strategy=radius_strategy,
                         update_freq=update_freq, inner=inner, boundary_tol=None, radius_fn=None)

    def trust_solve(self, f: float, g: torch.Tensor, H: LinearOperator, radius: float, params: list[torch.Tensor],
                    closure: Callable, settings: Mapping[str, Any]) -> torch.Tensor:
        who = type(self).__name__
        H = check_not_inverse(who, H, self.children["hess_module"], settings["fallback"])
        loss_at = None
        if settings["check_decrease"]:
            def loss_at(x: torch.Tensor) -> float:
                x0 = [p.clone() for p in params]
                try:
                    torch._foreach_add_(params, _unflat(x, params))
                    return _as_scalar_loss(who, closure(False), "the closure's value at the Newton point")
                finally:
                    torch._foreach_copy_(params, x0)

        s = cubic_subproblem(f, g, H, 1 / radius, loss_at, maxiter=settings["maxiter"], eps=settings["eps"])
        return s.neg_()
