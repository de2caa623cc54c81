"""Gauss-Newton and ``SumOfSquares`` for closures returning a vector of residuals."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ...core import Chainable, Objective, Transform
from ...core.derivatives import _jacobian
from ...linalg.linear_operator import Dense, LinearOperator, _solve

__all__ = ["GaussNewton", "SumOfSquares", "AtA"]


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, o = [], 0
    for p in like:
        n = p.numel()
        out.append(vec[o:o + n].view_as(p))
        o += n
    return out


def _sum_of_squares(value: Any) -> Any:
    return value.pow(2).sum() if isinstance(value, torch.Tensor) else value * value


def _sos_closure(objective: Objective, closure: Callable) -> Callable:
    """A closure returning ``sum(closure(False) ** 2)`` (with its gradient when ``backward``)."""

    def sos_closure(backward: bool = True) -> Any:
        if backward:
            objective.zero_grad()
            with torch.enable_grad():
                loss = closure(False).pow(2).sum()
                loss.backward()
            return loss
        return _sum_of_squares(closure(False))

    return sos_closure


class AtA(LinearOperator):
    """``A^T A`` for a (m, n) matrix ``A`` (a Jacobian), never formed unless asked for.

    ``solve_plus_diag`` uses the Woodbury identity with the m x m matrix ``A A^T`` when
    ``m < n``.

    Args:
        A: the (m, n) matrix.
    """

    def __init__(self, A: torch.Tensor):
        self.A = A
        self.device = A.device
        self.dtype = A.dtype

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.A.mH.mv(self.A.mv(x))

    def rmatvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.matvec(x)

    def matmat(self, X: torch.Tensor) -> Dense:
        return Dense(torch.linalg.multi_dot([self.A.mH, self.A, X]))

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        m, n = self.A.shape
        if m >= n:
            return _solve(self.to_tensor(), b)
        # minimum-norm solution: pinv(A^T A) b = A^T (A A^T)^-2 A b for a full-row-rank A
        A = self.A
        C = A @ A.mH
        L, info = torch.linalg.cholesky_ex(C)
        if int(info) != 0:
            return A.mH @ _solve(C, _solve(C, A @ b))
        z = torch.cholesky_solve(torch.cholesky_solve((A @ b).unsqueeze(-1), L), L)
        return A.mH @ z.squeeze(-1)

    def solve_plus_diag(self, b: torch.Tensor, diag: torch.Tensor | float) -> torch.Tensor:
        """``(A^T A + diag)^-1 b``; a scalar ``diag`` with ``m < n`` solves an m x m system."""
        m, n = self.A.shape
        if m >= n or (isinstance(diag, torch.Tensor) and diag.numel() > 1):
            return _solve(self.add_diagonal(diag).to_tensor(), b)
        A = self.A
        C = A @ A.mH
        C.diagonal().add_(diag)
        L, info = torch.linalg.cholesky_ex(C)
        Ab = (A @ b).unsqueeze(-1)
        z = (torch.cholesky_solve(Ab, L) if int(info) == 0 else _solve(C, Ab)).squeeze(-1)
        return (b - A.mH @ z) / diag

    def add_diagonal(self, x: torch.Tensor | float) -> Dense:
        out = self.to_tensor()
        out.diagonal().add_(x)
        return Dense(out)

    def diagonal(self) -> torch.Tensor:
        return self.A.pow(2).sum(0)

    def inv(self) -> Dense:
        return Dense(self.to_tensor()).inv()

    def to_tensor(self) -> torch.Tensor:
        return self.A.mH @ self.A

    def size(self) -> tuple[int, ...]:
        n = self.A.size(1)
        return (n, n)

    def transpose(self) -> AtA:
        return AtA(self.A)

    def is_dense(self) -> bool:
        return False


class SumOfSquares(Transform):
    """Makes the loss the sum of squares of the vector the closure returns.

    Meant for comparing least-squares methods with ordinary minimisation on the same problem.
    The closure returns a vector of residuals and must accept ``backward`` (it is called with
    ``False``; the gradient of the sum of squares is computed here).

    Examples:
        >>> import torch, tzfast as tz
        >>> X = torch.tensor([-1.1, 2.5], dtype=torch.float64, requires_grad=True)
        >>> opt = tz.Optimizer([X], tz.m.SumOfSquares(), tz.m.LBFGS(), tz.m.Backtracking())
        >>> def closure(backward=True):
        ...     return torch.stack([1 - X[0], 10 * (X[1] - X[0] ** 2)])
        >>> for _ in range(50):
        ...     residuals = opt.step(closure)
        >>> bool(residuals.abs().max() < 1e-3)
        True
    """

    def __init__(self) -> None:
        super().__init__()

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        if objective.closure is not None:
            objective.closure = _sos_closure(objective, objective.closure)
        if objective.loss is not None:
            objective.loss = _sum_of_squares(objective.loss)
        if objective.loss_approx is not None:
            objective.loss_approx = _sum_of_squares(objective.loss_approx)

    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        return objective


class GaussNewton(Transform):
    """Gauss-Newton step for minimising ``sum(r(x)**2)`` of a closure returning residuals ``r``.

    The closure returns the vector of residuals and must accept ``backward`` (always called
    with ``False``: the Jacobian ``J`` is computed here by batched autograd). The gradient is
    set to ``J^T r`` and the update is ``(J^T J + reg I)^-1 J^T r`` (with more parameters than
    residuals, ``J^T (J J^T + reg I)^-1 r``, the minimum-norm solution). Later modules see the
    loss and the closure as the scalar sum of squares, so line searches and trust regions work
    on it; ``get_H`` returns ``J^T J`` as a matrix-free :class:`AtA` operator (used by trust
    regions such as ``TrustCG``, where memory is ``m * ndim`` instead of ``ndim**2``).

    Args:
        reg: added to the diagonal of ``J^T J`` (or ``J J^T``). Defaults to 1e-8.
        update_freq: the Jacobian is recomputed every ``update_freq`` steps; in between only the
            residuals are re-evaluated. Defaults to 1.
        batched: compute the Jacobian with one vectorised backward pass (else one per
            residual). Defaults to True.
        inner: applied to ``J^T r`` before the solve (this forces the ``ndim x ndim`` system).
            Defaults to None.

    References:
        Nocedal & Wright, Numerical Optimization (2006), section 10.3.

    Examples:
        >>> import torch, tzfast as tz
        >>> X = torch.tensor([-1.1, 2.5], requires_grad=True)
        >>> opt = tz.Optimizer([X], tz.m.GaussNewton(), tz.m.Backtracking())
        >>> def closure(backward=True):
        ...     return torch.stack([1 - X[0], 100 * (X[1] - X[0] ** 2)])
        >>> for _ in range(10):
        ...     residuals = opt.step(closure)
        >>> bool(closure().pow(2).sum() < 1e-6)
        True
    """

    def __init__(self, reg: float = 1e-8, update_freq: int = 1, batched: bool = True,
                 inner: Chainable | None = None):
        if not isinstance(update_freq, int) or isinstance(update_freq, bool) or update_freq < 1:
            raise ValueError(f"GaussNewton: `update_freq` must be a positive int, got {update_freq!r}")
        super().__init__(defaults=dict(update_freq=update_freq, batched=batched, reg=reg))
        if inner is not None:
            self.set_child("inner", inner)

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        s = settings[0]
        params = objective.params
        closure = objective.closure
        r = objective.loss
        if r is None:
            if closure is None:
                raise RuntimeError("GaussNewton needs a closure, but `step` was called without one. Pass a closure "
                                   "`def closure(backward=True): ...` returning the vector of residuals.")
            with torch.enable_grad():
                r = objective.get_loss(backward=False)
        if not isinstance(r, torch.Tensor):
            raise TypeError(f"GaussNewton: the closure must return a tensor of residuals, got {type(r).__name__}")
        if r.numel() == 1:
            warnings.warn(f"GaussNewton: the closure returned a single residual (shape {tuple(r.shape)}); "
                          f"least squares expects a vector of residuals", stacklevel=3)
        with torch.enable_grad():  # a view taken under no_grad would cut the graph
            r = r.reshape(-1)
        objective.loss = objective.loss_approx = r.detach().pow(2).sum()

        gs = self.global_state
        step = self.increment_counter("step", start=0)
        if step % s["update_freq"] == 0 or "J" not in gs:
            with torch.enable_grad():
                gs["J"] = _jacobian(r, params, batched=s["batched"], create_graph=False)
        J: torch.Tensor = gs["J"]

        Jr = J.T @ r.detach()
        m, n = J.shape
        if m >= n or "inner" in self.children:
            gs["Jr"] = Jr
            gs.pop("r", None)
        else:
            gs["r"] = r.detach()
            gs.pop("Jr", None)
        objective.grads = _unflat(Jr, params)
        if closure is not None:
            objective.closure = _sos_closure(objective, closure)

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        reg = settings[0]["reg"]
        gs = self.global_state
        J: torch.Tensor = gs["J"]
        m, n = J.shape
        if m >= n or "inner" in self.children:
            Jr: torch.Tensor = gs["Jr"]
            if "inner" in self.children:
                objective = self.inner_step("inner", objective, must_exist=True)
                Jr = _flat(objective.get_updates())
            JtJ = J.T @ J
            if reg != 0:
                JtJ.diagonal().add_(reg)
            if m >= n:
                v = _solve(JtJ, Jr)
            else:
                v = torch.linalg.lstsq(JtJ, Jr).solution
        else:
            JJt = J @ J.T
            if reg != 0:
                JJt.diagonal().add_(reg)
            v = J.T @ _solve(JJt, gs["r"])
        objective.updates = _unflat(v, objective.params)
        return objective

    def get_H(self, objective: Objective | None = None) -> AtA:
        """``J^T J`` of the last Jacobian, as a matrix-free operator."""
        return AtA(self.global_state["J"])
