"""Newton variants built on the full Hessian: INM, inverse-free Newton and multipoint methods.

* :class:`ImprovedNewton` — Newton with a rank-one correction of the Hessian from the last step.
* :class:`InverseFreeNewton` — one Newton-Schulz-like iteration per step towards ``H^-1``.
* :class:`SixthOrder3P`, :class:`SixthOrder3PM2`, :class:`SixthOrder5P`,
  :class:`TwoPointNewton` — multipoint methods that apply a Newton-type root finder to the
  gradient, evaluating the gradient and Hessian at several points per step.

All vectors are flat (the parameters concatenated); one ``(n, n)`` matrix per step.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...core.derivatives import DERIVATIVES_METHODS, HESSIAN_METHODS, DerivativesMethod, HessianMethod
from ...core.module import Chainable
from ...core.transform import Transform
from ._solvers import regularize_eigh

if TYPE_CHECKING:
    from ...core.objective import Objective

__all__ = ["ImprovedNewton", "InverseFreeNewton", "SixthOrder3P", "SixthOrder3PM2", "SixthOrder5P", "TwoPointNewton"]


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat_into(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for t in like:
        out.append(vec[i:i + t.numel()].view_as(t))
        i += t.numel()
    return out


def _need_closure(who: str, objective: Objective) -> None:
    if objective.closure is None:
        raise RuntimeError(f"{who} needs a closure, but `step` was called without one. Pass a closure "
                           f"`def closure(backward=True): ...` to `optimizer.step(closure)`.")


def _full_hessian(who: str, objective: Objective, method: HessianMethod, h: float) -> torch.Tensor:
    _need_closure(who, objective)
    try:
        f, _, H = objective.hessian(hessian_method=method, h=h, at_x0=True)
    except RuntimeError as e:
        if "scalar outputs" in str(e):
            raise ValueError(f"{who}: the closure must return a scalar loss (one element), got a loss with "
                             f"more elements ({e})") from None
        raise
    loss = objective.loss if f is None else f
    if isinstance(loss, torch.Tensor) and loss.numel() != 1:
        raise ValueError(f"{who}: the closure must return a scalar loss (one element), got a loss of shape "
                         f"{tuple(loss.shape)}")
    return H


def _check_method(who: str, name: str, value: str, accepted: Sequence[str]) -> None:
    if value not in accepted:
        raise ValueError(f"{who}: `{name}` must be one of {tuple(accepted)}, got {value!r}")


def _tiny_clip(x: torch.Tensor) -> torch.Tensor:
    """``x`` with magnitude at least twice the dtype's smallest normal number (sign kept)."""
    tiny = torch.finfo(x.dtype).tiny * 2
    return x if x.abs() >= tiny else x.new_full(x.shape, tiny).copysign(x)


# ----------------------------------------------------------------------------- shared Newton solve
def _lstsq(H: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.lstsq(H, b.unsqueeze(-1)).solution.squeeze(-1)


def _prepare_newton(state: dict[str, Any], H: torch.Tensor, damping: float, eigval_fn: Callable | None,
                    eigv_tol: float | None, truncate: int | None, precompute_inverse: bool, use_lstsq: bool) -> None:
    """Stores what :func:`_newton_solve` needs: ``H`` (+ ``H_inv``), or eigenfactors ``L``, ``Q``."""
    for k in ("H", "H_inv", "L", "Q"):
        state.pop(k, None)
    if damping != 0:
        H = H + damping * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    if eigval_fn is not None or eigv_tol is not None or truncate is not None:
        try:
            L, Q = torch.linalg.eigh(H)
        except torch.linalg.LinAlgError:
            state["H"] = H
            return
        if eigval_fn is not None:
            L = eigval_fn(L)
        reg = regularize_eigh(L, Q, truncate=truncate, tol=eigv_tol)
        if reg is None or reg[0].numel() == 0:
            state["H"] = H  # nothing usable left: fall back to a least-squares solve with H
            return
        state["L"], state["Q"] = reg
        return
    state["H"] = H
    if precompute_inverse:
        if use_lstsq:
            state["H_inv"] = torch.linalg.pinv(H)
        else:
            H_inv, info = torch.linalg.inv_ex(H)
            state["H_inv"] = H_inv if int(info) == 0 else torch.linalg.pinv(H)


def _newton_solve(state: Mapping[str, Any], b: torch.Tensor, use_lstsq: bool) -> torch.Tensor:
    """``H^-1 b``: eigenfactors, cached inverse, Cholesky, LU, then least squares."""
    if "L" in state:
        Q = state["Q"]
        return Q @ ((Q.mH @ b) / state["L"])
    if "H_inv" in state:
        return state["H_inv"] @ b
    H = state["H"]
    if use_lstsq:
        return _lstsq(H, b)
    C, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0:
        return torch.cholesky_solve(b.unsqueeze(-1), C).squeeze(-1)
    x, info = torch.linalg.solve_ex(H, b)
    if int(info) == 0:
        return x
    return _lstsq(H, b)


# ----------------------------------------------------------------------------- ImprovedNewton
class ImprovedNewton(Transform):
    """Improved Newton's method (INM): Newton with a rank-one correction of the Hessian.

    With ``s = x - x_prev``, ``y = g - g_prev`` and the Hessian ``J`` at ``x``, the matrix used
    is ``P = J + (y^T (y - J s) / (y^T y)) g s^T / (s^T s)`` (``P = J`` on the first step), then
    ``P + damping I``, solved as in Newton's method (eigenvalue transform, truncation, cached
    inverse or least squares as requested).

    Args:
        damping: added to the diagonal. Default 0.
        eigval_fn: transforms the eigenvalues of ``P`` (e.g. ``lambda L: L.abs().clip(min=1e-4)``).
            Default None.
        eigv_tol: eigenvalues below ``eigv_tol`` times the largest are dropped. Default None.
        truncate: keep only the ``truncate`` largest eigenvalues. Default None.
        update_freq: the Hessian is re-evaluated every ``update_freq`` steps. Default 1.
        precompute_inverse: cache ``P^-1``; None means ``update_freq >= 10``. Default None.
        use_lstsq: solve by least squares. Default False.
        hessian_method: how the Hessian is computed (see ``Newton``). Default
            ``'batched_autograd'``.
        h: finite-difference step for the ``fd`` methods. Default 1e-3.
        inner: chain applied to the input before preconditioning. Default None.

    References:
        Saheya et al., "A new Newton-like method for solving nonlinear equations",
        SpringerPlus 5 (2016) 1269.

    Examples:
        >>> import torch, tzfast as tz
        >>> x = torch.tensor([-1.1, 2.5], requires_grad=True)
        >>> opt = tz.Optimizer([x], tz.m.ImprovedNewton(), tz.m.LR(0.5))
        >>> def closure(backward=True):
        ...     loss = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
    """

    def __init__(
        self,
        damping: float = 0,
        eigval_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        eigv_tol: float | None = None,
        truncate: int | None = None,
        update_freq: int = 1,
        precompute_inverse: bool | None = None,
        use_lstsq: bool = False,
        hessian_method: HessianMethod = "batched_autograd",
        h: float = 1e-3,
        inner: Chainable | None = None,
    ):
        _check_method("ImprovedNewton", "hessian_method", hessian_method, HESSIAN_METHODS)
        if isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1:
            raise ValueError(f"ImprovedNewton: `update_freq` must be an int >= 1, got {update_freq!r}")
        defaults = dict(damping=damping, eigval_fn=eigval_fn, eigv_tol=eigv_tol, truncate=truncate,
                        precompute_inverse=precompute_inverse, use_lstsq=use_lstsq, hessian_method=hessian_method,
                        h=h)
        super().__init__(defaults, update_freq=update_freq, inner=inner)

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        fs = settings[0]
        J = _full_hessian("ImprovedNewton", objective, fs["hessian_method"], fs["h"])
        x = _flat(objective.params)
        g = _flat(objective.get_grads()).detach()
        gs = self.global_state
        if "x_prev" not in gs:
            P = J
        else:
            s = x - gs["x_prev"]
            y = g - gs["g_prev"]
            coef = y.dot(y - J @ s) / _tiny_clip(y.dot(y)) / _tiny_clip(s.dot(s))
            P = torch.outer(g, s).mul_(coef).add_(J)
        gs["x_prev"], gs["g_prev"] = x.clone(), g.clone()
        precompute = fs["precompute_inverse"]
        if precompute is None:
            precompute = fs["__update_freq"] >= 10
        _prepare_newton(gs, P, fs["damping"], fs["eigval_fn"], fs["eigv_tol"], fs["truncate"], precompute,
                        fs["use_lstsq"])

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        updates = objective.get_updates()
        sol = _newton_solve(self.global_state, _flat(updates), settings[0]["use_lstsq"])
        objective.updates = [t.clone() for t in _unflat_into(sol, updates)]
        return objective


# ----------------------------------------------------------------------------- InverseFreeNewton
class InverseFreeNewton(Transform):
    """Inverse-free Newton: ``Y`` tracks ``H^-1`` by one Schulz iteration per step; update ``Y u``.

    ``Y_0 = H^T / (|H|_1 |H|_inf)``, then ``Y <- Y (2I - H Y)`` with the current Hessian.

    Args:
        update_freq: the Hessian (and ``Y``) is updated every ``update_freq`` steps. Default 1.
        hessian_method: how the Hessian is computed. Default ``'batched_autograd'``.
        h: finite-difference step. Default 1e-3.
        inner: chain applied to the input before preconditioning. Default None.

    References:
        Massalski, Nockowska-Rosiak, "Inverse-free Newton's method", J. Appl. Anal. Comput.
        15(4) (2025) 2238-2257.

    Examples:
        >>> import torch, tzfast as tz
        >>> x = torch.tensor([-1.1, 2.5], requires_grad=True)
        >>> opt = tz.Optimizer([x], tz.m.InverseFreeNewton(), tz.m.LR(0.5))
        >>> def closure(backward=True):
        ...     loss = (x ** 2).sum()
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
    """

    def __init__(self, update_freq: int = 1, hessian_method: HessianMethod = "batched_autograd", h: float = 1e-3,
                 inner: Chainable | None = None):
        _check_method("InverseFreeNewton", "hessian_method", hessian_method, HESSIAN_METHODS)
        if isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1:
            raise ValueError(f"InverseFreeNewton: `update_freq` must be an int >= 1, got {update_freq!r}")
        super().__init__(dict(hessian_method=hessian_method, h=h), update_freq=update_freq, inner=inner)

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        fs = settings[0]
        H = _full_hessian("InverseFreeNewton", objective, fs["hessian_method"], fs["h"])
        gs = self.global_state
        gs["H"] = H
        Y = gs.get("Y")
        if Y is None:
            finfo = torch.finfo(H.dtype)
            scale = (torch.linalg.matrix_norm(H, 1) * torch.linalg.matrix_norm(H, float("inf")))
            gs["Y"] = H.T / scale.clip(min=finfo.tiny * 2, max=finfo.max / 2)
        else:
            HY = H @ Y
            HY.neg_().diagonal().add_(2)
            gs["Y"] = Y @ HY

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        updates = objective.get_updates()
        d = self.global_state["Y"] @ _flat(updates)
        objective.updates = [t.clone() for t in _unflat_into(d, objective.params)]
        return objective


# ----------------------------------------------------------------------------- multipoint methods
def _solve(A: torch.Tensor, b: torch.Tensor, lstsq: bool) -> torch.Tensor:
    if not lstsq:
        x, info = torch.linalg.solve_ex(A, b)
        if int(info) == 0:
            return x
    return _lstsq(A, b)


def _inv(A: torch.Tensor, lstsq: bool) -> torch.Tensor:
    if not lstsq:
        A_inv, info = torch.linalg.inv_ex(A)
        if int(info) == 0:
            return A_inv
    return torch.linalg.pinv(A)


class HigherOrderMethodBase(Transform):
    """A Newton-type root finder applied to the gradient; the update is ``x - x_new``.

    Subclasses implement :meth:`one_iteration` with ``grad(x)`` and ``grad_hess(x)`` (flat
    vectors; the parameters are restored bitwise after each evaluation). A closure is required.
    """

    def __init__(self, defaults: dict[str, Any] | None = None,
                 derivatives_method: DerivativesMethod = "batched_autograd"):
        _check_method(type(self).__name__, "derivatives_method", derivatives_method, DERIVATIVES_METHODS)
        self._derivatives_method = derivatives_method
        super().__init__(defaults)

    def one_iteration(self, x: torch.Tensor, grad: Callable[[torch.Tensor], torch.Tensor],
                      grad_hess: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                      setting: Mapping[str, Any]) -> torch.Tensor:
        """Returns the new point."""
        raise NotImplementedError

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        who = type(self).__name__
        _need_closure(who, objective)
        method = self._derivatives_method

        def grad(x: torch.Tensor) -> torch.Tensor:
            return objective.derivatives_at(x, 1, method=method)[1]

        def grad_hess(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            _, g, H = objective.derivatives_at(x, 2, method=method)
            return g, H

        x = _flat(objective.params).detach().clone()
        try:
            x_new = self.one_iteration(x, grad, grad_hess, settings[0])
        except RuntimeError as e:
            if "scalar outputs" in str(e):
                raise ValueError(f"{who}: the closure must return a scalar loss (one element), got a loss with "
                                 f"more elements ({e})") from None
            raise
        d = x - x_new
        objective.updates = [t.clone() for t in _unflat_into(d, objective.params)]
        return objective


def _doc(cls_doc: str, evaluations: str, ref: str, name: str) -> str:
    return f"""{cls_doc}

    Per step: {evaluations}. Needs a closure; solves fall back to least squares when singular.

    Args:
        lstsq: solve every linear system by least squares (pseudo-inverse). Default False.
        derivatives_method: ``'batched_autograd'``, ``'autograd'`` or ``'thoad'``. Default
            ``'batched_autograd'``.

    References:
        {ref}

    Examples:
        >>> import torch, tzfast as tz
        >>> x = torch.tensor([-1.1, 2.5], requires_grad=True)
        >>> opt = tz.Optimizer([x], tz.m.{name}())
        >>> def closure(backward=True):
        ...     loss = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
    """


class SixthOrder3P(HigherOrderMethodBase):
    def __init__(self, lstsq: bool = False, derivatives_method: DerivativesMethod = "batched_autograd"):
        super().__init__(dict(lstsq=lstsq), derivatives_method)

    def one_iteration(self, x: torch.Tensor, grad: Callable[[torch.Tensor], torch.Tensor],
                      grad_hess: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                      setting: Mapping[str, Any]) -> torch.Tensor:
        ls = setting["lstsq"]
        g_x, H_x = grad_hess(x)
        y = x - _solve(H_x, g_x, ls)
        g_y, H_y = grad_hess(y)
        z = y - _solve(H_y, g_y, ls)
        g_z = grad(z)
        return y - _solve(H_y, g_y + g_z, ls)


SixthOrder3P.__doc__ = _doc("Sixth-order three-point method (3 gradients, 2 Hessians, 3 solves).",
                            "the gradient and Hessian at x and y, the gradient at z",
                            "Abro, Shaikh, \"A new time-efficient and convergent nonlinear solver\", "
                            "Appl. Math. Comput. 355 (2019) 516-536.", "SixthOrder3P")


class SixthOrder3PM2(HigherOrderMethodBase):
    def __init__(self, lstsq: bool = False, derivatives_method: DerivativesMethod = "batched_autograd"):
        super().__init__(dict(lstsq=lstsq), derivatives_method)

    def one_iteration(self, x: torch.Tensor, grad: Callable[[torch.Tensor], torch.Tensor],
                      grad_hess: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                      setting: Mapping[str, Any]) -> torch.Tensor:
        g_x, H_x = grad_hess(x)
        H_x_inv = _inv(H_x, setting["lstsq"])
        y = x - H_x_inv @ g_x
        g_y, H_y = grad_hess(y)
        M = -(H_x_inv @ H_y)
        M.diagonal().add_(2)
        term = M @ H_x_inv
        z = y - term @ g_y
        return z - term @ grad(z)


SixthOrder3PM2.__doc__ = _doc("Sixth-order Newton-type method of Wang and Li (one inverse per step).",
                              "the gradient and Hessian at x and y, the gradient at z",
                              "Wang, Li, \"An efficient sixth-order Newton-type method for solving nonlinear "
                              "systems\", Algorithms 10(2) (2017) 45.", "SixthOrder3PM2")


class SixthOrder5P(HigherOrderMethodBase):
    def __init__(self, lstsq: bool = False, derivatives_method: DerivativesMethod = "batched_autograd"):
        super().__init__(dict(lstsq=lstsq), derivatives_method)

    def one_iteration(self, x: torch.Tensor, grad: Callable[[torch.Tensor], torch.Tensor],
                      grad_hess: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                      setting: Mapping[str, Any]) -> torch.Tensor:
        ls = setting["lstsq"]
        g_x, H_x = grad_hess(x)
        y = x - _solve(H_x, g_x, ls)
        g_y, H_y = grad_hess(y)
        _, H_xy = grad_hess((x + y) / 2)
        z = y - 4 * _solve(H_x + 2 * H_xy + H_y, g_y, ls)
        g_z, H_z = grad_hess(z)
        _, H_xz = grad_hess((x + z) / 2)
        return z - 4 * _solve(H_x + 2 * H_xz + H_z, g_z, ls)


SixthOrder5P.__doc__ = _doc("Sixth-order five-point method (5 gradients and Hessians, 3 solves).",
                            "the gradient and Hessian at x, y, (x+y)/2, z and (x+z)/2",
                            "Argyros et al., \"Extended convergence for two sixth order methods under the same "
                            "weak conditions\", Foundations 3(1) (2023) 127-139.", "SixthOrder5P")


class TwoPointNewton(HigherOrderMethodBase):
    def __init__(self, lstsq: bool = False, derivatives_method: DerivativesMethod = "batched_autograd"):
        super().__init__(dict(lstsq=lstsq), derivatives_method)

    def one_iteration(self, x: torch.Tensor, grad: Callable[[torch.Tensor], torch.Tensor],
                      grad_hess: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                      setting: Mapping[str, Any]) -> torch.Tensor:
        ls = setting["lstsq"]
        g_x, H_x = grad_hess(x)
        y = x - _solve(H_x, g_x, ls)
        return x - _solve(H_x, g_x + grad(y), ls)


TwoPointNewton.__doc__ = _doc("Two-point Newton method with a frozen Hessian (third order).",
                              "the gradient and Hessian at x, the gradient at y",
                              "Sharma, Kumar, \"A fast and efficient composite Newton-Chebyshev method for systems "
                              "of nonlinear equations\", J. Complexity 49 (2018) 56-73.", "TwoPointNewton")
