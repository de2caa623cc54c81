"""Steihaug-Toint conjugate gradient trust region."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch

from ...core import Chainable
from ...linalg.linear_operator import LinearOperator
from .base import RadiusStrategy, TrustRegionBase

__all__ = ["TrustCG", "steihaug_cg"]


def _to_boundary(x: torch.Tensor, d: torch.Tensor, radius: float) -> torch.Tensor:
    """``x + tau d`` with ``tau >= 0`` and ``|x + tau d| = radius``."""
    xx, xd, dd = x.dot(x), x.dot(d), d.dot(d)
    tiny = torch.finfo(dd.dtype).tiny * 2
    if dd.abs() < tiny:
        dd = dd.new_full((), tiny).copysign(dd)
    rad = (xd ** 2 - dd * (xx - radius ** 2)).clip(min=0).sqrt()
    return x + ((rad - xd) / dd) * d


@torch.no_grad()
def steihaug_cg(A_mv: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, radius: float, reg: float = 0,
                maxiter: int | None = None, miniter: int = 1, tol: float | None = 1e-8) -> torch.Tensor:
    """Approximately solves ``(A + reg I) x = b`` with ``|x| <= radius`` (Steihaug-Toint CG).

    Stops on the boundary when a step leaves the region or meets non-positive curvature, and
    inside when ``|r| < tol`` after ``miniter`` iterations or after ``maxiter`` (default: ``b``'s
    size) iterations.
    """
    eps = torch.finfo(b.dtype).tiny * 2
    if tol is None:
        tol = eps
    if maxiter is None:
        maxiter = b.numel()
    x = torch.zeros_like(b)
    r = b
    if miniter < 1 and torch.linalg.vector_norm(r) < tol:
        return x
    d = r
    rr = r.dot(r)
    for it in range(maxiter):
        Ad = A_mv(d)
        if reg != 0:
            Ad = Ad + d * reg
        dAd = d.dot(Ad)
        if dAd <= eps:
            return _to_boundary(x, d, radius)
        alpha = rr / dAd
        x_next = x + alpha * d
        if torch.linalg.vector_norm(x_next) >= radius:
            return _to_boundary(x, d, radius)
        r = r - alpha * Ad
        if it >= miniter and torch.linalg.vector_norm(r) < tol:
            return x_next
        rr_next = r.dot(r)
        d = r + (rr_next / rr) * d
        rr = rr_next
        x = x_next
    return x


class TrustCG(TrustRegionBase):
    """Trust region whose subproblem is solved by Steihaug-Toint conjugate gradient on ``H``.

    Only products with ``H`` are needed, so with ``GaussNewton`` the memory is ``m * ndim``.
    For the exact Hessian, the matrix-free ``NewtonCGSteihaug`` is usually cheaper.

    Args:
        hess_module: keeps the Hessian approximation (quasi-Newton with ``inverse=False``,
            ``Newton``, ``GaussNewton``).
        eta: a step is accepted when ``rho > eta``. Defaults to 0.0.
        nplus: radius factor after a very good step. Defaults to 3.5.
        nminus: radius factor after a bad step. Defaults to 0.25.
        rho_good: ``rho`` above which the radius grows. Defaults to 0.99.
        rho_bad: ``rho`` below which the radius shrinks. Defaults to 1e-4.
        boundary_tol: the radius grows only when the step is this close (relatively) to the
            boundary. Defaults to 1e-6.
        init: initial radius. Defaults to 1.
        max_attempts: attempts per step before a zero update. Defaults to 10.
        radius_strategy: ``'default'``, ``'fixed'`` or a callable. Defaults to ``'default'``.
        reg: added to ``H``'s diagonal inside CG. Defaults to 0.
        maxiter: CG iterations (None: the number of parameters). Defaults to None.
        miniter: CG iterations before the tolerance is checked. Defaults to 1.
        cg_tol: CG stops when the residual norm is below this. Defaults to 1e-8.
        prefer_exact: use the operator's exact bounded solve (``solve_bounded``) when it has one.
            Defaults to True.
        update_freq: ``H`` is updated every ``update_freq`` steps. Defaults to 1.
        inner: applied to the gradient before the solve. Defaults to None.

    References:
        Steihaug, "The conjugate gradient method and trust regions in large scale optimization",
        SIAM J. Numer. Anal. 20.3 (1983).

    Examples:
        >>> import torch, tzfast as tz
        >>> X = torch.tensor([-1.1, 2.5], dtype=torch.float64, requires_grad=True)
        >>> opt = tz.Optimizer([X], tz.m.TrustCG(hess_module=tz.m.SR1(inverse=False)))
        >>> def closure(backward=True):
        ...     loss = (1 - X[0]) ** 2 + 100 * (X[1] - X[0] ** 2) ** 2
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> for _ in range(100):
        ...     loss = opt.step(closure)
        >>> bool(loss < 1e-8)
        True
    """

    def __init__(self, hess_module: Chainable, eta: float = 0.0, nplus: float = 3.5, nminus: float = 0.25,
                 rho_good: float = 0.99, rho_bad: float = 1e-4, boundary_tol: float | None = 1e-6,
                 init: float = 1, max_attempts: int = 10,
                 radius_strategy: RadiusStrategy | Literal["default", "fixed"] = "default", reg: float = 0,
                 maxiter: int | None = None, miniter: int = 1, cg_tol: float = 1e-8, prefer_exact: bool = True,
                 update_freq: int = 1, inner: Chainable | None = None):
        super().__init__(defaults=dict(reg=reg, prefer_exact=prefer_exact, cg_tol=cg_tol, maxiter=maxiter,
                                       miniter=miniter),
                         hess_module=hess_module, eta=eta, nplus=nplus, nminus=nminus, rho_good=rho_good,
                         rho_bad=rho_bad, boundary_tol=boundary_tol, init=init, max_attempts=max_attempts,
                         radius_strategy=radius_strategy, radius_fn=torch.linalg.vector_norm,
                         update_freq=update_freq, inner=inner)

    def trust_solve(self, f: float, g: torch.Tensor, H: LinearOperator, radius: float, params: list[torch.Tensor],
                    closure: Callable, settings: Mapping[str, Any]) -> torch.Tensor:
        bounded = getattr(H, "solve_bounded", None)
        if settings["prefer_exact"] and bounded is not None:
            return bounded(g, radius)
        return steihaug_cg(H.matvec, g, radius, reg=settings["reg"], maxiter=settings["maxiter"],
                           miniter=settings["miniter"], tol=settings["cg_tol"])
