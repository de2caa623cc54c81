"""Helpers shared by the second-order modules: argument checks, the closure check, and the
Newton system ``(H + damping I) x = b`` (factor once in ``update``, solve in ``apply``)."""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...core.derivatives import HVP_METHODS
from ...linalg.linear_operator import Dense, LinearOperator
from ._operators import DenseWithInverse, Eigendecomposition
from ._solvers import regularize_eigh

if TYPE_CHECKING:
    from ...core.objective import Objective

__all__ = ["check_int", "check_real", "check_choice", "check_hvp_method", "require_closure", "flat", "unflat",
           "newton_update_state_", "newton_solve", "newton_get_H"]


# ----------------------------------------------------------------------------- argument checks
def check_int(who: str, name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    kind = f"an int >= {minimum}" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{who}: `{name}` must be {kind}, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{who}: `{name}` must be {kind}, got {value}")


def check_real(who: str, name: str, value: Any, minimum: float | None = None, open_low: bool = False,
               allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    rng = "" if minimum is None else (f" > {minimum}" if open_low else f" >= {minimum}")
    kind = f"a finite number{rng}" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{who}: `{name}` must be {kind}, got {type(value).__name__}: {value!r}")
    if not math.isfinite(value) or (minimum is not None and (value < minimum or (open_low and value == minimum))):
        raise ValueError(f"{who}: `{name}` must be {kind}, got {value!r}")


def check_choice(who: str, name: str, value: Any, accepted: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in accepted:
        raise ValueError(f"{who}: `{name}` must be one of {', '.join(map(repr, accepted))}, got {value!r}")


def check_hvp_method(who: str, value: Any) -> None:
    check_choice(who, "hvp_method", value, HVP_METHODS)


def check_callable(who: str, name: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{who}: `{name}` must be a callable or None, got {type(value).__name__}: {value!r}")


# ----------------------------------------------------------------------------- closure
def _user_closure(closure: Callable) -> Callable:
    inner = getattr(closure, "closure", None)  # the optimizer's evaluation counter wraps the user's closure
    return inner if callable(inner) and type(closure).__name__ == "_EvalCounterClosure" else closure


def require_closure(who: str, objective: Objective) -> Callable:
    """The objective's closure; RuntimeError when there is none, TypeError when it cannot take ``backward``."""
    closure = objective.closure
    if closure is None:
        raise RuntimeError(f"{who} needs a closure, but `step` was called without one. Pass a closure "
                           f"`def closure(backward=True): ...` to `optimizer.step(closure)`.")
    user = _user_closure(closure)
    try:
        sig = inspect.signature(user)
    except (TypeError, ValueError):  # builtins and C callables: nothing to check
        return closure
    try:
        sig.bind(False)
    except TypeError:
        raise TypeError(f"{who}: the closure must accept a `backward` argument (`def closure(backward=True): "
                        f"...`), got a closure with signature {sig}") from None
    return closure


# ----------------------------------------------------------------------------- flat vectors
def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0].reshape(-1)
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for t in like:
        n = t.numel()
        out.append(vec[start:start + n].view_as(t))
        start += n
    return out


# ----------------------------------------------------------------------------- Newton system
def _eigh(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return torch.linalg.eigh(H)
    except (torch.linalg.LinAlgError, RuntimeError):
        if H.dtype == torch.float64:
            raise
        L, Q = torch.linalg.eigh(H.double())
        return L.to(H.dtype), Q.to(H.dtype)


def _pinv_solve(H: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.pinv(H) @ b


def _lstsq(H: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Least-squares solution; the pseudo-inverse where ``lstsq`` cannot handle a singular ``H``
    (CUDA's only driver) or returns non-finite values."""
    if H.device.type == "cpu":
        x = torch.linalg.lstsq(H, b.unsqueeze(-1)).solution.squeeze(-1)
        if bool(x.isfinite().all()):
            return x
    return _pinv_solve(H, b)


def newton_update_state_(state: dict, H: torch.Tensor, damping: float, eigval_fn: Callable | None,
                         eigv_tol: float | None, truncate: int | None, precompute_inverse: bool,
                         use_lstsq: bool) -> None:
    """Stores what solving with ``H + damping I`` needs: ``L``/``Q`` (when ``eigval_fn``, ``eigv_tol``
    or ``truncate`` is given), else ``H`` and, with ``precompute_inverse``, ``H_inv``."""
    for key in ("H", "H_inv", "L", "Q"):
        state.pop(key, None)
    if damping != 0:
        H.diagonal().add_(damping)
    if eigval_fn is not None or eigv_tol is not None or truncate is not None:
        try:
            L, Q = _eigh(H)
        except torch.linalg.LinAlgError:
            state["H"] = H
            return
        if eigval_fn is not None:
            L = eigval_fn(L)
        reg = regularize_eigh(L, Q, truncate=truncate, tol=eigv_tol)
        if reg is None:  # no finite eigenvalue (torchzero stores None and fails in apply)
            state["H"] = H
            return
        state["L"], state["Q"] = reg
        return
    state["H"] = H
    if precompute_inverse:
        if use_lstsq:
            state["H_inv"] = torch.linalg.pinv(H)
        else:
            H_inv, info = torch.linalg.inv_ex(H)
            if int(info) != 0 and H.dtype != torch.float64:
                H_inv, info = torch.linalg.inv_ex(H.double())
                H_inv = H_inv.to(H.dtype)
            # a singular H: the pseudo-inverse (torchzero keeps inv_ex's garbage)
            state["H_inv"] = H_inv if int(info) == 0 else torch.linalg.pinv(H)


def newton_solve(b: torch.Tensor, state: dict, use_lstsq: bool) -> torch.Tensor:
    """``(H + damping I)^-1 b`` from the stored state: eigendecomposition, then inverse, then
    Cholesky, LU, least squares. A zero (transformed) eigenvalue contributes nothing (torchzero
    divides by it)."""
    if "L" in state:
        L, Q = state["L"], state["Q"]
        Qtb = Q.mH @ b
        coef = torch.where(L != 0, Qtb / L, torch.zeros_like(Qtb))
        return Q @ coef
    if "H_inv" in state:
        return state["H_inv"] @ b
    H = state["H"]
    if use_lstsq:
        return _lstsq(H, b)
    C, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0:
        return torch.cholesky_solve(b.unsqueeze(-1), C).squeeze(-1)
    x, info = torch.linalg.solve_ex(H, b)
    if int(info) != 0 and H.dtype != torch.float64:
        x, info = torch.linalg.solve_ex(H.double(), b.double())
        x = x.to(H.dtype)
    if int(info) == 0 and bool(x.isfinite().all()):
        return x
    return _lstsq(H, b)


def newton_get_H(state: dict) -> LinearOperator:
    if "H_inv" in state:
        return DenseWithInverse(state["H"], state["H_inv"])
    if "L" in state:
        return Eigendecomposition(state["L"], state["Q"], use_nystrom=False)
    return Dense(state["H"])
