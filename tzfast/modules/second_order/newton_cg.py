"""``NewtonCG`` (truncated Newton) and ``NewtonCGSteihaug`` (trust-region Newton-CG): Newton
steps solved by conjugate gradients with Hessian-vector products, never forming the Hessian."""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from ...core.derivatives import HVPMethod
from ...core.module import Chainable
from ...core.transform import Transform
from ._common import check_choice, check_hvp_method, check_int, check_real, flat, require_closure, unflat
from ._solvers import cg, find_within_trust_radius, minres

if TYPE_CHECKING:
    from ...core.objective import Objective

__all__ = ["NewtonCG", "NewtonCGSteihaug"]

MatVec = Callable[[torch.Tensor], torch.Tensor]


def _hvp_operator(who: str, objective: Objective, hvp_method: str, h: float) -> MatVec:
    """Flat ``v -> H v`` at the objective's parameters (the gradient is evaluated once here)."""
    require_closure(who, objective)
    _, H_mv, _ = objective.tensor_Hvp_function(hvp_method=hvp_method, h=h, at_x0=True)  # type: ignore[arg-type]
    return H_mv


class NewtonCG(Transform):
    """Newton's method with the system ``(H + reg I) d = u`` solved by conjugate gradients (or
    MINRES) from Hessian-vector products.

    ``u`` is the gradient (or the output of ``inner``). CG stops when the residual norm is below
    ``tol`` (after at least ``miniter`` iterations) or after ``maxiter`` iterations: with a small
    ``maxiter`` this is the truncated Newton method. On negative curvature in the first iteration
    the direction is ``u`` scaled by ``|u^T u / u^T H u|``. A closure that accepts ``backward`` is
    required.

    Args:
        maxiter: CG iterations at most; None for the number of parameters. Defaults to None.
        tol: absolute tolerance on the CG residual norm. Defaults to 1e-8.
        reg: added to the Hessian's diagonal. Defaults to 1e-8.
        hvp_method: ``'autograd'`` / ``'batched_autograd'`` (exact, double backward; one product
            per iteration, so both are the same here), ``'fd_forward'`` (one gradient per
            product), ``'fd_central'`` (two); ``'forward'``/``'central'`` are aliases. Defaults to
            ``'autograd'``.
        solver: ``'cg'`` or ``'minres'``. Defaults to ``'cg'``.
        npc_terminate: stop at the first negative curvature. Defaults to False.
        h: finite-difference step. Defaults to 1e-3.
        miniter: CG iterations at least. Defaults to 1.
        warm_start: start CG from the previous step's solution. Defaults to False.
        warm_beta: the stored start is ``warm_beta * previous + (1 - warm_beta) * solution``.
            Defaults to 0.
        inner: modules whose output is preconditioned. Defaults to None.

    References:
        Nocedal, J. and Wright, S. J. "Numerical Optimization", 2nd ed., Springer (2006), ch. 7.1.

    Examples:
        >>> import torch
        >>> import tzfast as tz
        >>> x = torch.nn.Parameter(torch.tensor([-1.1, 2.5], dtype=torch.float64))
        >>> opt = tz.Optimizer([x], tz.m.NewtonCG(), tz.m.Backtracking())
        >>> def closure(backward=True):
        ...     loss = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> for _ in range(40):
        ...     _ = opt.step(closure)
        >>> bool(torch.allclose(x, torch.ones(2, dtype=torch.float64)))
        True
    """

    def __init__(self, maxiter: int | None = None, tol: float = 1e-8, reg: float = 1e-8,
                 hvp_method: HVPMethod = "autograd", solver: Literal["cg", "minres"] = "cg",
                 npc_terminate: bool = False, h: float = 1e-3, miniter: int = 1, warm_start: bool = False,
                 warm_beta: float = 0, inner: Chainable | None = None):
        who = "NewtonCG"
        check_int(who, "maxiter", maxiter, 0, allow_none=True)
        check_real(who, "tol", tol, 0.0)
        check_real(who, "reg", reg)
        check_hvp_method(who, hvp_method)
        check_choice(who, "solver", solver.lower().strip() if isinstance(solver, str) else solver, ("cg", "minres"))
        check_real(who, "h", h, 0.0, open_low=True)
        check_int(who, "miniter", miniter, 0)
        check_real(who, "warm_beta", warm_beta)
        defaults = dict(maxiter=maxiter, tol=tol, reg=reg, hvp_method=hvp_method, solver=solver,
                        npc_terminate=npc_terminate, h=h, miniter=miniter, warm_start=warm_start,
                        warm_beta=warm_beta)
        super().__init__(defaults, inner=inner)
        self._num_hvps = 0
        self._num_hvps_last_step = 0

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        s = settings[0]
        objective.temp = _hvp_operator(type(self).__name__, objective, s["hvp_method"], s["h"])

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        H_mv = objective.poptemp()
        s = settings[0]
        updates = objective.get_updates()
        b = flat(updates)
        x0 = self.global_state.get("prev_x") if s["warm_start"] else None  # None: zeros, without A @ 0
        solver = s["solver"].lower().strip()
        count = [0]

        def A(v: torch.Tensor) -> torch.Tensor:
            count[0] += 1
            return H_mv(v)

        if solver == "cg":
            d = cg(A, b, x0=x0, tol=s["tol"], maxiter=s["maxiter"], miniter=s["miniter"], reg=s["reg"],
                   npc_terminate=s["npc_terminate"]).x
        else:
            d = minres(A, b, x0=x0, tol=s["tol"], maxiter=s["maxiter"], reg=s["reg"], npc_terminate=s["npc_terminate"])
        if s["warm_start"]:
            if x0 is None:
                x0 = self.global_state["prev_x"] = torch.zeros_like(b)
            x0.lerp_(d, 1 - s["warm_beta"])
        self._num_hvps_last_step = count[0]
        self._num_hvps += count[0]
        objective.updates = unflat(d, updates)
        return objective


def _steihaug_radius(params: list[torch.Tensor], closure: Callable, f: float, g: torch.Tensor, H_mv: MatVec,
                     d: torch.Tensor, radius: float, eta: float, nplus: float, nminus: float, rho_good: float,
                     rho_bad: float, boundary_tol: float | None) -> tuple[float, bool]:
    """Evaluates ``f(x - d)`` and returns ``(new radius, accept)`` from the ratio of the actual to
    the predicted reduction ``g^T d - d^T H d / 2``. The parameters are restored bitwise."""
    Hd = H_mv(d)
    # moved through ``.data`` so that the parameters' version counters do not change: the autograd
    # graph of the gradient at x stays usable for the next attempt's products (torchzero 0.4.4
    # raises "modified by an inplace operation" on the second attempt with autograd products)
    data = [p.data for p in params]
    saved = [t.clone() for t in data]
    try:
        torch._foreach_sub_(data, unflat(d, params))
        f_new = closure(False)
    finally:
        for t, x in zip(data, saved, strict=True):
            t.copy_(x)
    f_new = float(f_new)
    pred = g.dot(d) - 0.5 * d.dot(Hd)
    rho = float((f - f_new) / pred.clamp(min=torch.finfo(g.dtype).tiny * 2))
    finite = math.isfinite(f_new)
    d_norm = float(torch.linalg.vector_norm(d))
    if rho < rho_bad or not finite:
        radius = d_norm * nminus
    elif rho > rho_good:
        if boundary_tol is None or (radius - d_norm) / radius < boundary_tol:
            radius = max(radius, d_norm * nplus)
    return radius, rho > eta and finite


class NewtonCGSteihaug(Transform):
    """Trust-region Newton with the Steihaug-Toint conjugate gradient solver.

    CG on ``(H + reg I) d = u`` stops at the trust-region boundary (or on negative curvature, at
    the boundary along the current direction). The step is accepted when the ratio ``rho`` of
    actual to predicted reduction exceeds ``eta``; the radius is multiplied by ``nminus`` (times
    the step's norm) when ``rho < rho_bad`` and grows to ``nplus`` times the step's norm when
    ``rho > rho_good`` and the step reached the boundary (within ``boundary_tol``). After a
    rejection the CG iterates are reused to find the point on the smaller boundary, so CG is not
    run again. After ``max_attempts`` rejections the update is zero. A closure that accepts
    ``backward`` is required.

    Args:
        eta: acceptance threshold on ``rho``. Defaults to 0.0.
        nplus: radius growth factor. Defaults to 3.5.
        nminus: radius shrink factor. Defaults to 0.25.
        rho_good: ``rho`` above which the radius grows. Defaults to 0.99.
        rho_bad: ``rho`` below which the radius shrinks. Defaults to 1e-4.
        init: initial radius (also after it under- or overflows). Defaults to 1.
        max_attempts: trust-region solves per step at most. Defaults to 100.
        max_history: CG iterates kept for re-use after a rejection. Defaults to 100.
        boundary_tol: relative distance to the boundary within which a step counts as on it.
            Defaults to 1e-6.
        maxiter: CG iterations at most; None for the number of parameters. Defaults to None.
        miniter: CG iterations at least. Defaults to 1.
        tol: absolute tolerance on the CG residual norm. Defaults to 1e-8.
        reg: added to the Hessian's diagonal. Defaults to 1e-8.
        solver: ``'cg'`` or ``'minres'``. Defaults to ``'cg'``.
        adapt_tol: divide ``tol`` by 10 whenever the radius collapses. Defaults to False.
        terminate_on_tr: set ``should_terminate`` when the radius collapses. Defaults to True.
        npc_terminate: stop CG at the first negative curvature. Defaults to False.
        hvp_method: as in :class:`NewtonCG`. Defaults to ``'fd_central'``.
        h: finite-difference step. Defaults to 1e-3.
        inner: modules whose output is preconditioned. Defaults to None.

    References:
        Steihaug, T. "The conjugate gradient method and trust regions in large scale
        optimization." SIAM Journal on Numerical Analysis 20.3 (1983): 626-637.

    Examples:
        >>> import torch
        >>> import tzfast as tz
        >>> x = torch.nn.Parameter(torch.tensor([-1.1, 2.5], dtype=torch.float64))
        >>> opt = tz.Optimizer([x], tz.m.NewtonCGSteihaug())
        >>> def closure(backward=True):
        ...     loss = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> for _ in range(60):
        ...     _ = opt.step(closure)
        >>> bool(torch.allclose(x, torch.ones(2, dtype=torch.float64), atol=1e-4))
        True
    """

    def __init__(self, eta: float = 0.0, nplus: float = 3.5, nminus: float = 0.25, rho_good: float = 0.99,
                 rho_bad: float = 1e-4, init: float = 1, max_attempts: int = 100, max_history: int = 100,
                 boundary_tol: float | None = 1e-6, maxiter: int | None = None, miniter: int = 1, tol: float = 1e-8,
                 reg: float = 1e-8, solver: Literal["cg", "minres"] = "cg", adapt_tol: bool = False,
                 terminate_on_tr: bool = True, npc_terminate: bool = False,
                 hvp_method: HVPMethod = "fd_central", h: float = 1e-3, inner: Chainable | None = None):
        who = "NewtonCGSteihaug"
        for name, value in (("eta", eta), ("rho_good", rho_good), ("rho_bad", rho_bad), ("tol", tol), ("reg", reg)):
            check_real(who, name, value)
        check_real(who, "nplus", nplus, 0.0, open_low=True)
        check_real(who, "nminus", nminus, 0.0, open_low=True)
        check_real(who, "init", init, 0.0, open_low=True)
        check_real(who, "boundary_tol", boundary_tol, allow_none=True)
        check_int(who, "max_attempts", max_attempts, 1)
        check_int(who, "max_history", max_history, 0)
        check_int(who, "maxiter", maxiter, 0, allow_none=True)
        check_int(who, "miniter", miniter, 0)
        check_choice(who, "solver", solver.lower().strip() if isinstance(solver, str) else solver, ("cg", "minres"))
        check_hvp_method(who, hvp_method)
        check_real(who, "h", h, 0.0, open_low=True)
        if eta > rho_bad:
            warnings.warn(f"NewtonCGSteihaug: eta={eta} is larger than rho_bad={rho_bad}; the trust region can get "
                          f"stuck (steps with rho_bad < rho < eta are rejected without shrinking it)", stacklevel=2)
        defaults = dict(eta=eta, nplus=nplus, nminus=nminus, rho_good=rho_good, rho_bad=rho_bad, init=init,
                        max_attempts=max_attempts, max_history=max_history, boundary_tol=boundary_tol, maxiter=maxiter,
                        miniter=miniter, tol=tol, reg=reg, solver=solver, adapt_tol=adapt_tol,
                        terminate_on_tr=terminate_on_tr, npc_terminate=npc_terminate, hvp_method=hvp_method, h=h)
        super().__init__(defaults, inner=inner)
        self._num_hvps = 0
        self._num_hvps_last_step = 0

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        s = settings[0]
        objective.temp = _hvp_operator(type(self).__name__, objective, s["hvp_method"], s["h"])

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        H_mv = objective.poptemp()
        s = settings[0]
        gs = self.global_state
        params = objective.params
        closure = require_closure(type(self).__name__, objective)
        tol = s["tol"] * gs.get("tol_mul", 1)
        solver = s["solver"].lower().strip()
        init = s["init"]
        updates = objective.get_updates()
        b = flat(updates)
        f = float(objective.get_loss(False))
        finfo = torch.finfo(params[0].dtype)
        count = [0]

        def A(v: torch.Tensor) -> torch.Tensor:
            count[0] += 1
            return H_mv(v)

        success, d, history = False, None, None
        for _ in range(s["max_attempts"]):
            radius = gs.get("trust_radius", init)
            if radius < finfo.tiny * 2:
                radius = gs["trust_radius"] = init
                if s["adapt_tol"]:
                    gs["tol_mul"] = gs.get("tol_mul", 1) * 0.1
                if s["terminate_on_tr"]:
                    objective.should_terminate = True
            elif radius > finfo.max / 2:
                radius = gs["trust_radius"] = init

            d = find_within_trust_radius(history, radius) if history is not None else None
            if d is None:
                if solver == "cg":
                    d, cg_solver = cg(A, b, tol=tol, maxiter=s["maxiter"], reg=s["reg"], trust_radius=radius,
                                      miniter=s["miniter"], npc_terminate=s["npc_terminate"],
                                      history_size=s["max_history"])
                    history = cg_solver.history
                else:
                    d = minres(A, b, trust_radius=radius, tol=tol, maxiter=s["maxiter"], reg=s["reg"],
                               npc_terminate=s["npc_terminate"])

            gs["trust_radius"], success = _steihaug_radius(
                params, closure, f, b, A, d, radius, eta=s["eta"], nplus=s["nplus"], nminus=s["nminus"],
                rho_good=s["rho_good"], rho_bad=s["rho_bad"], boundary_tol=s["boundary_tol"])
            if success:
                break

        assert d is not None
        objective.updates = unflat(d, updates) if success else [torch.zeros_like(u) for u in updates]
        self._num_hvps_last_step = count[0]
        self._num_hvps += count[0]
        return objective
