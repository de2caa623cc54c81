"""Levenberg-Marquardt trust region."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch

from ...core import Chainable
from ...linalg.linear_operator import DenseInverse, LinearOperator
from .base import RadiusStrategy, TrustRegionBase, solve_plus_diag

__all__ = ["LevenbergMarquardt"]


def check_not_inverse(who: str, H: LinearOperator, hess_module: Any, fallback: bool) -> LinearOperator:
    """``H`` itself, ``H`` densified when it is an inverse and ``fallback``, else a clear error."""
    if not isinstance(H, DenseInverse):
        return H
    if fallback:
        return H.to_dense()
    raise ValueError(f"{who}: `hess_module` {hess_module!r} keeps a Hessian inverse; {who} needs the Hessian. "
                     f"Construct a quasi-Newton module with `inverse=False`, or pass `fallback=True` to invert "
                     f"the inverse anyway (slow and less stable)")


class LevenbergMarquardt(TrustRegionBase):
    """Levenberg-Marquardt: ``d = (H + D / radius)^-1 g`` with a trust radius.

    Args:
        hess_module: keeps the Hessian approximation (quasi-Newton with ``inverse=False``,
            ``Newton``, ``GaussNewton``).
        eta: a step is accepted when ``rho > eta``. Defaults to 0.0.
        nplus: radius factor after a very good step. Defaults to 3.5.
        nminus: radius factor after a bad step. Defaults to 0.25.
        rho_good: ``rho`` above which the radius grows. Defaults to 0.99.
        rho_bad: ``rho`` below which the radius shrinks. Defaults to 1e-4.
        init: initial radius. Defaults to 1.
        max_attempts: attempts per step before a zero update. Defaults to 10.
        radius_strategy: ``'default'``, ``'fixed'`` or a callable. Defaults to ``'default'``.
        y: ``D = I`` when 0, ``D = diag(H)`` when 1, in between interpolated (meant for
            Gauss-Newton). Defaults to 0.
        adaptive: multiply the damping by ``sqrt(|g|)``. Defaults to False.
        fallback: invert a Hessian inverse anyway instead of raising. Defaults to False.
        update_freq: ``H`` is updated every ``update_freq`` steps. Defaults to 1.
        inner: applied to the gradient before the solve. Defaults to None.

    References:
        Moré, "The Levenberg-Marquardt algorithm: implementation and theory", Numerical Analysis
        (1978).

    Examples:
        >>> import torch, tzfast as tz
        >>> X = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
        >>> opt = tz.Optimizer([X], tz.m.LevenbergMarquardt(tz.m.GaussNewton()))
        >>> def closure(backward=True):
        ...     return torch.stack([10 * (X[1] - X[0] ** 2), 1 - X[0]])
        >>> for _ in range(30):
        ...     residuals = opt.step(closure)
        >>> bool(closure().abs().max() < 1e-8)
        True
    """

    def __init__(self, hess_module: Chainable, eta: float = 0.0, nplus: float = 3.5, nminus: float = 0.25,
                 rho_good: float = 0.99, rho_bad: float = 1e-4, init: float = 1, max_attempts: int = 10,
                 radius_strategy: RadiusStrategy | Literal["default", "fixed"] = "default", y: float = 0,
                 adaptive: bool = False, fallback: bool = False, update_freq: int = 1,
                 inner: Chainable | None = None):
        super().__init__(defaults=dict(y=y, fallback=fallback, adaptive=adaptive), hess_module=hess_module,
                         eta=eta, nplus=nplus, nminus=nminus, rho_good=rho_good, rho_bad=rho_bad, init=init,
                         max_attempts=max_attempts, radius_strategy=radius_strategy, update_freq=update_freq,
                         inner=inner, boundary_tol=None, radius_fn=None)

    def trust_solve(self, f: float, g: torch.Tensor, H: LinearOperator, radius: float, params: list[torch.Tensor],
                    closure: Callable, settings: Mapping[str, Any]) -> torch.Tensor:
        H = check_not_inverse(type(self).__name__, H, self.children["hess_module"], settings["fallback"])
        y = settings["y"]
        reg: Any = 1 / radius
        if settings["adaptive"]:
            reg = reg * torch.linalg.vector_norm(g).sqrt()
        if y == 0:
            return solve_plus_diag(H, g, reg)
        diag = H.diagonal()
        diag = torch.where(diag < torch.finfo(diag.dtype).tiny * 2, 1, diag)
        if y != 1:
            diag = diag * y + (1 - y)
        return solve_plus_diag(H, g, diag * reg)
