"""Dogleg trust region."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch

from ...core import Chainable
from ...linalg.linear_operator import LinearOperator
from .base import RadiusStrategy, TrustRegionBase

__all__ = ["Dogleg"]


class Dogleg(TrustRegionBase):
    """Dogleg trust region: the point at distance ``radius`` on the path from the Cauchy point
    to the Newton point ``H^-1 g``.

    As in torchzero 0.4.4 the step is always the intersection of the line through both points
    with the sphere of the radius (at most 2), also when the Newton point lies inside it.

    Args:
        hess_module: keeps the Hessian approximation (quasi-Newton with ``inverse=False``,
            ``Newton``, ``GaussNewton``).
        eta: a step is accepted when ``rho > eta``. Defaults to 0.0.
        nplus: radius factor after a very good step. Defaults to 2.
        nminus: radius factor after a bad step. Defaults to 0.25.
        rho_good: ``rho`` above which the radius grows. Defaults to 0.75.
        rho_bad: ``rho`` below which the radius shrinks. Defaults to 0.25.
        boundary_tol: the radius grows only when the step is this close (relatively) to the
            boundary; None: always. Defaults to None.
        init: initial radius. Defaults to 1.
        max_attempts: attempts per step before a zero update. Defaults to 10.
        radius_strategy: ``'default'``, ``'fixed'`` or a callable. Defaults to ``'default'``.
        update_freq: ``H`` is updated every ``update_freq`` steps. Defaults to 1.
        inner: applied to the gradient before the solve. Defaults to None.

    References:
        Nocedal & Wright, Numerical Optimization (2006), section 4.1.

    Examples:
        >>> import torch, tzfast as tz
        >>> X = torch.tensor([-1.1, 2.5], dtype=torch.float64, requires_grad=True)
        >>> opt = tz.Optimizer([X], tz.m.Dogleg(tz.m.BFGS(inverse=False)))
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

    def __init__(self, hess_module: Chainable, eta: float = 0.0, nplus: float = 2, nminus: float = 0.25,
                 rho_good: float = 0.75, rho_bad: float = 0.25, boundary_tol: float | None = None,
                 init: float = 1, max_attempts: int = 10,
                 radius_strategy: RadiusStrategy | Literal["default", "fixed"] = "default", update_freq: int = 1,
                 inner: Chainable | None = None):
        super().__init__(defaults={}, hess_module=hess_module, eta=eta, nplus=nplus, nminus=nminus,
                         rho_good=rho_good, rho_bad=rho_bad, boundary_tol=boundary_tol, init=init,
                         max_attempts=max_attempts, radius_strategy=radius_strategy, update_freq=update_freq,
                         inner=inner, radius_fn=torch.linalg.vector_norm)

    def trust_solve(self, f: float, g: torch.Tensor, H: LinearOperator, radius: float, params: list[torch.Tensor],
                    closure: Callable, settings: Mapping[str, Any]) -> torch.Tensor:
        radius = min(radius, 2)
        eps = torch.finfo(g.dtype).tiny * 2
        gHg = g.dot(H.matvec(g))
        if gHg <= eps:
            return (radius / torch.linalg.vector_norm(g)) * g
        p_cauchy = (g.dot(g) / gHg) * g
        a = H.solve(g) - p_cauchy
        aa = a.dot(a)
        if aa < eps:
            return (radius / torch.linalg.vector_norm(g)) * g
        ab = a.dot(p_cauchy)
        c = p_cauchy.dot(p_cauchy) - radius ** 2
        discriminant = (2 * ab) ** 2 - 4 * aa * c
        beta = (-2 * ab + discriminant.clip(min=0).sqrt()) / (2 * aa)
        return p_cauchy + beta * a
