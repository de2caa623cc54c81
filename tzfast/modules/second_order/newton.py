"""``Newton``: the exact Newton step ``(H + damping I)^-1 g`` with the full Hessian."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...core.derivatives import HESSIAN_METHODS, HessianMethod
from ...core.module import Chainable
from ...core.transform import Transform
from ._common import (check_callable, check_choice, check_int, check_real, flat, newton_get_H, newton_solve,
                      newton_update_state_, require_closure, unflat)

if TYPE_CHECKING:
    from ...core.objective import Objective
    from ...linalg.linear_operator import LinearOperator

__all__ = ["Newton"]


class Newton(Transform):
    """Newton's method: the update is ``(H + damping I)^-1 u``, with ``H`` the Hessian and ``u``
    the gradient (or the output of ``inner``).

    The Hessian is computed every ``update_freq`` steps by ``hessian_method`` (a closure that
    accepts ``backward`` is required) and factored once; the system is solved by Cholesky, then LU,
    then least squares when the previous one fails (least squares only, with ``use_lstsq``). When
    ``eigval_fn``, ``eigv_tol`` or ``truncate`` is given, the Hessian is eigendecomposed instead:
    ``eigval_fn`` maps the eigenvalues (``lambda L: L.abs().clip(min=1e-4)`` makes every step a
    descent direction on non-convex functions), eigenvalues below ``eigv_tol`` times the largest
    are dropped and only the ``truncate`` largest are kept. ``get_H`` hands the (damped) Hessian to
    trust regions.

    Args:
        damping: added to the Hessian's diagonal. Defaults to 0.
        eigval_fn: function applied to the Hessian's eigenvalues; None for no eigendecomposition.
            Defaults to None.
        eigv_tol: drop eigenvalues below ``eigv_tol`` times the largest. Defaults to None.
        truncate: keep only this many largest eigenvalues. Defaults to None.
        update_freq: recompute the Hessian every ``update_freq`` steps. Defaults to 1.
        precompute_inverse: invert the Hessian once when it is computed (then every step is a
            product); None means ``update_freq >= 10``. Defaults to None.
        use_lstsq: solve by least squares only. Defaults to False.
        hessian_method: ``'batched_autograd'``, ``'autograd'``, ``'functional_revrev'``,
            ``'functional_fwdrev'``, ``'func'``, ``'gfd_forward'``, ``'gfd_central'``, ``'fd'``,
            ``'fd_full'`` or ``'thoad'`` (needs the ``thoad`` package), see
            ``Objective.hessian``. Defaults to ``'batched_autograd'``.
        h: finite-difference step of the ``'gfd_*'``/``'fd*'`` methods. Defaults to 1e-3.
        inner: modules whose output is preconditioned. Defaults to None.

    References:
        Nocedal, J. and Wright, S. J. "Numerical Optimization", 2nd ed., Springer (2006), ch. 3.3.

    Examples:
        >>> import torch
        >>> import tzfast as tz
        >>> x = torch.nn.Parameter(torch.tensor([-1.1, 2.5], dtype=torch.float64))
        >>> opt = tz.Optimizer([x], tz.m.Newton(eigval_fn=lambda L: L.abs().clip(min=1e-4)), tz.m.Backtracking())
        >>> def closure(backward=True):
        ...     loss = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> for _ in range(50):
        ...     _ = opt.step(closure)
        >>> bool(torch.allclose(x, torch.ones(2, dtype=torch.float64)))
        True
    """

    def __init__(self, damping: float = 0, eigval_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 eigv_tol: float | None = None, truncate: int | None = None, update_freq: int = 1,
                 precompute_inverse: bool | None = None, use_lstsq: bool = False,
                 hessian_method: HessianMethod = "batched_autograd", h: float = 1e-3,
                 inner: Chainable | None = None):
        who = "Newton"
        check_real(who, "damping", damping)
        check_callable(who, "eigval_fn", eigval_fn)
        check_real(who, "eigv_tol", eigv_tol, allow_none=True)
        check_int(who, "truncate", truncate, 1, allow_none=True)
        check_int(who, "update_freq", update_freq, 1)
        check_choice(who, "hessian_method", hessian_method, HESSIAN_METHODS)
        check_real(who, "h", h, 0.0, open_low=True)
        defaults = dict(damping=damping, eigval_fn=eigval_fn, eigv_tol=eigv_tol, truncate=truncate,
                        precompute_inverse=precompute_inverse, use_lstsq=use_lstsq, hessian_method=hessian_method,
                        h=h)
        super().__init__(defaults, update_freq=update_freq, inner=inner)

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        s = settings[0]
        require_closure(type(self).__name__, objective)
        precompute_inverse = s["precompute_inverse"]
        if precompute_inverse is None:
            precompute_inverse = s["__update_freq"] >= 10
        _, _, H = objective.hessian(hessian_method=s["hessian_method"], h=s["h"], at_x0=True)
        newton_update_state_(self.global_state, H, damping=s["damping"], eigval_fn=s["eigval_fn"],
                             eigv_tol=s["eigv_tol"], truncate=s["truncate"], precompute_inverse=precompute_inverse,
                             use_lstsq=s["use_lstsq"])

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        updates = objective.get_updates()
        sol = newton_solve(flat(updates), self.global_state, use_lstsq=settings[0]["use_lstsq"])
        objective.updates = unflat(sol, updates)
        return objective

    def get_H(self, objective: Objective | None = None) -> LinearOperator:
        """The (damped) Hessian of the last update as a linear operator (for trust regions)."""
        return newton_get_H(self.global_state)
