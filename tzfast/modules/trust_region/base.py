"""``TrustRegionBase``: the accept/reject loop and the radius update shared by trust regions."""
from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from ...core import Chainable, Module, Objective
from ...linalg.linear_operator import LinearOperator

__all__ = ["TrustRegionBase", "default_radius", "fixed_radius", "solve_plus_diag"]

RadiusStrategy = Callable[..., tuple[float, bool]]


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, o = [], 0
    for p in like:
        n = p.numel()
        out.append(vec[o:o + n].view_as(p))
        o += n
    return out


def solve_plus_diag(H: LinearOperator, b: torch.Tensor, diag: torch.Tensor | float) -> torch.Tensor:
    """``(H + diag)^-1 b``, with the operator's own method when it has a cheaper one."""
    fn = getattr(H, "solve_plus_diag", None)
    if fn is not None:
        return fn(b, diag)
    return H.add_diagonal(diag).solve(b)


def _as_scalar_loss(who: str, value: Any, what: str) -> float:
    """``float(value)``; a clear error for a non-scalar tensor (a residual vector)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{who} needs a scalar loss, but {what} is a tensor of shape {tuple(value.shape)}. "
                             f"For a vector of residuals use GaussNewton as `hess_module`, or put SumOfSquares "
                             f"first in the chain")
        return float(value)
    return float(value)


@torch.no_grad()
def _reduction_ratio(params: Sequence[torch.Tensor], closure: Callable, f: float, g: torch.Tensor,
                     H: LinearOperator, d: torch.Tensor, who: str) -> tuple[torch.Tensor, float]:
    """``(rho, f(x - d))``: actual over predicted decrease of ``f(x) - g^T d + d^T H d / 2``."""
    x0 = [p.clone() for p in params]
    try:
        torch._foreach_sub_(list(params), _unflat(d, params))
        f_star = _as_scalar_loss(who, closure(False), "the closure's value at the trial point")
    finally:
        torch._foreach_copy_(list(params), x0)
    reduction = f - f_star
    pred = g.dot(d) - 0.5 * d.dot(H.matvec(d))
    rho = reduction / pred.clip(min=torch.finfo(g.dtype).tiny * 2)
    return rho, f_star


@torch.no_grad()
def default_radius(params: Sequence[torch.Tensor], closure: Callable, f: float, g: torch.Tensor,
                   H: LinearOperator, d: torch.Tensor, trust_radius: float, eta: float, nplus: float,
                   nminus: float, rho_good: float, rho_bad: float, boundary_tol: float | None, init: float,
                   state: Mapping[str, Any], settings: Mapping[str, Any],
                   radius_fn: Callable | None = torch.linalg.vector_norm, who: str = "trust region",
                   ) -> tuple[float, bool]:
    """Evaluates the trial point ``x - d`` and returns ``(new radius, accepted)``.

    The radius becomes ``nminus * |d|`` when ``rho < rho_bad`` (or the value is not finite) and
    ``max(radius, nplus * |d|)`` when ``rho > rho_good`` and ``d`` is within ``boundary_tol``
    of the boundary; ``|d|`` is ``radius_fn(d)``, or the radius itself when ``radius_fn`` is None.
    A radius outside ``[2 tiny, max / 2]`` of the dtype is reset to ``init``.
    """
    if eta > rho_bad:
        warnings.warn(f"trust region eta={eta} is larger than rho_bad={rho_bad}, this can lead to the trust "
                      f"region getting stuck.", stacklevel=3)
    rho, f_star = _reduction_ratio(params, closure, f, g, H, d, who)
    is_finite = math.isfinite(f_star)
    d_radius: Any = trust_radius if radius_fn is None else radius_fn(d)
    if bool(rho < rho_bad) or not is_finite:
        trust_radius = d_radius * nminus
    elif bool(rho > rho_good):
        if boundary_tol is None or (trust_radius - d_radius) / trust_radius < boundary_tol:
            trust_radius = max(trust_radius, d_radius * nplus)
    radius = float(trust_radius)
    finfo = torch.finfo(g.dtype)
    if radius < finfo.tiny * 2 or radius > finfo.max / 2:
        radius = float(init)
    return radius, bool(rho > eta) and is_finite


def fixed_radius(params: Sequence[torch.Tensor], closure: Callable, f: float, g: torch.Tensor,
                 H: LinearOperator, d: torch.Tensor, trust_radius: float, eta: float, nplus: float,
                 nminus: float, rho_good: float, rho_bad: float, boundary_tol: float | None, init: float,
                 state: Mapping[str, Any], settings: Mapping[str, Any],
                 radius_fn: Callable | None = torch.linalg.vector_norm, who: str = "trust region",
                 ) -> tuple[float, bool]:
    """Always ``(init, True)``: every step is accepted and the radius never changes."""
    return init, True


_RADIUS_STRATEGIES: dict[str, RadiusStrategy] = {"default": default_radius, "fixed": fixed_radius}


class TrustRegionBase(Module, ABC):
    """Base of the trust regions: ``hess_module`` supplies ``H``, :meth:`trust_solve` a step.

    Every step (or every ``update_freq`` steps) calls ``hess_module.update`` and ``get_H``. The
    step ``d`` from :meth:`trust_solve` is tried at ``x - d``; the ratio ``rho`` of the actual to
    the predicted decrease updates the radius (``radius_strategy``) and accepts the step when
    ``rho > eta``. After ``max_attempts`` rejected attempts the update is zero.

    Args:
        defaults: settings of the subclass.
        hess_module: a module keeping a Hessian approximation (not its inverse): full-matrix
            quasi-Newton modules with ``inverse=False``, ``Newton``, ``GaussNewton``.
        eta: a step is accepted when ``rho > eta``.
        nplus: radius factor after a very good step (``rho > rho_good``).
        nminus: radius factor after a bad step (``rho < rho_bad``).
        rho_good: threshold of a very good step.
        rho_bad: threshold of a bad step.
        boundary_tol: the radius only grows when ``|d| >= (1 - boundary_tol) * radius``; None:
            always.
        init: initial radius.
        max_attempts: attempts per step before giving up (zero update).
        radius_strategy: ``'default'``, ``'fixed'`` or a callable with
            :func:`default_radius`'s signature.
        radius_fn: the norm giving ``|d|``; None: the radius itself.
        update_freq: ``H`` is updated every ``update_freq`` steps. Defaults to 1.
        inner: applied to the gradient before the trust-region solve. Defaults to None.

    References:
        Conn, Gould & Toint, Trust-Region Methods (2000). Default thresholds from Gould et al.,
        "Sensitivity of trust-region algorithms to their parameters", 4OR 3.3 (2005).

    Examples:
        >>> import torch, tzfast as tz
        >>> X = torch.tensor([-1.1, 2.5], dtype=torch.float64, requires_grad=True)
        >>> opt = tz.Optimizer([X], tz.m.TrustCG(tz.m.BFGS(inverse=False)))
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

    def __init__(self, defaults: dict | None, hess_module: Chainable, eta: float, nplus: float, nminus: float,
                 rho_good: float, rho_bad: float, boundary_tol: float | None, init: float, max_attempts: int,
                 radius_strategy: RadiusStrategy | Literal["default", "fixed"],
                 radius_fn: Callable | None, update_freq: int = 1, inner: Chainable | None = None):
        who = type(self).__name__
        if hess_module is None or not isinstance(hess_module, (Module, list, tuple)):
            raise TypeError(f"{who}: `hess_module` must be a module keeping a Hessian approximation (e.g. "
                            f"BFGS(inverse=False), GaussNewton(), Newton()), got {type(hess_module).__name__}")
        if isinstance(radius_strategy, str):
            if radius_strategy not in _RADIUS_STRATEGIES:
                raise ValueError(f"{who}: `radius_strategy` must be one of {sorted(_RADIUS_STRATEGIES)} or a "
                                 f"callable, got {radius_strategy!r}")
            radius_strategy = _RADIUS_STRATEGIES[radius_strategy]
        elif not callable(radius_strategy):
            raise TypeError(f"{who}: `radius_strategy` must be 'default', 'fixed' or a callable, got "
                            f"{type(radius_strategy).__name__}")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"{who}: `max_attempts` must be a positive int, got {max_attempts!r}")
        if not isinstance(update_freq, int) or update_freq < 1:
            raise ValueError(f"{who}: `update_freq` must be a positive int, got {update_freq!r}")
        if not init > 0:
            raise ValueError(f"{who}: `init` (the initial radius) must be positive, got {init!r}")
        defaults = {} if defaults is None else dict(defaults)
        defaults.update(eta=eta, nplus=nplus, nminus=nminus, rho_good=rho_good, rho_bad=rho_bad, init=init,
                        update_freq=update_freq, max_attempts=max_attempts, radius_strategy=radius_strategy,
                        boundary_tol=boundary_tol)
        super().__init__(defaults)
        self._radius_fn = radius_fn
        self.set_child("hess_module", hess_module)
        if inner is not None:
            self.set_child("inner", inner)

    @abstractmethod
    def trust_solve(self, f: float, g: torch.Tensor, H: LinearOperator, radius: float, params: list[torch.Tensor],
                    closure: Callable, settings: Mapping[str, Any]) -> torch.Tensor:
        """A step ``d`` (subtracted from the parameters) for ``H d ~ g`` within ``radius``."""

    def trust_region_update(self, objective: Objective, H: LinearOperator | None) -> None:
        """Called after ``H`` was updated; for subclasses that keep extra state."""

    def _need_closure(self, objective: Objective) -> Callable:
        if objective.closure is None:
            raise RuntimeError(f"{type(self).__name__} needs a closure, but `step` was called without one. Pass a "
                               f"closure `def closure(backward=True): ...` to `optimizer.step(closure)`.")
        return objective.closure

    def trust_region_apply(self, objective: Objective, tensors: list[torch.Tensor],
                           H: LinearOperator | None) -> Objective:
        """Solves the subproblem until a step is accepted; sets ``objective.updates``."""
        who = type(self).__name__
        if H is None:
            raise RuntimeError(f"{who}: `hess_module` {self.children['hess_module']!r} provides no Hessian "
                               f"approximation (get_H returned None)")
        params = objective.params
        settings = self.settings[params[0]]
        closure = self._need_closure(objective)
        g = _flat(tensors)
        loss = objective.loss
        if loss is None:
            loss = objective.get_loss(False)
        f = _as_scalar_loss(who, loss, "the loss")

        strategy: RadiusStrategy = settings["radius_strategy"]
        attempts = settings["max_attempts"]
        success = False
        d: torch.Tensor | None = None
        while not success and attempts > 0:
            attempts -= 1
            radius = self.global_state.get("trust_radius", settings["init"])
            d = self.trust_solve(f=f, g=g, H=H, radius=radius, params=params, closure=closure, settings=settings)
            kwargs: dict[str, Any] = dict(
                params=params, closure=closure, d=d, f=f, g=g, H=H, trust_radius=radius, eta=settings["eta"],
                nplus=settings["nplus"], nminus=settings["nminus"], rho_good=settings["rho_good"],
                rho_bad=settings["rho_bad"], boundary_tol=settings["boundary_tol"], init=settings["init"],
                state=self.global_state, settings=settings, radius_fn=self._radius_fn)
            if strategy in (default_radius, fixed_radius):
                kwargs["who"] = who
            self.global_state["trust_radius"], success = strategy(**kwargs)

        assert d is not None
        if success and bool(torch.isfinite(d).all()):
            objective.updates = _unflat(d, params)
        else:
            objective.updates = [torch.zeros_like(p) for p in params]
        return objective

    @torch.no_grad()
    def update(self, objective: Objective) -> None:
        self._need_closure(objective)
        step = self.global_state.get("step", 0)
        self.global_state["step"] = step + 1
        if step % self.defaults["update_freq"] == 0:
            hess = self.children["hess_module"]
            hess.update(objective)
            H = hess.get_H(objective)
            self.global_state["H"] = H
            self.trust_region_update(objective, H=H)
        if objective.loss is not None:  # a residual vector here needs GaussNewton as hess_module
            _as_scalar_loss(type(self).__name__, objective.loss, "the loss")

    @torch.no_grad()
    def apply(self, objective: Objective) -> Objective:
        H = self.global_state.get("H")
        objective = self.inner_step("inner", objective, must_exist=False)
        return self.trust_region_apply(objective, objective.get_updates(), H)
