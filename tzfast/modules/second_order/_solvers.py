"""Flat-vector solvers shared by the second-order modules.

Conjugate gradients (optionally bounded by a trust radius, with a history of iterates to re-use
when the radius shrinks), MINRES, the Nyström approximation of a symmetric positive
semi-definite matrix from one sketch ``A @ Omega``, and the Nyström-preconditioned CG.

Every vector is one flat tensor (all parameters concatenated); ``A_mv`` maps such a vector to
``A x``. The iterations follow torchzero 0.4.4's solvers step for step (same tests, same order
of updates), so trajectories agree; they differ only where torchzero divides by zero (see the
notes on each function).
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = ["CG", "cg", "minres", "trust_tau", "find_within_trust_radius", "nystrom_approximation",
           "nystrom_sketch_and_solve", "nystrom_pcg", "regularize_eigh", "orthogonalize_columns"]

MatVec = Callable[[torch.Tensor], torch.Tensor]


def _tiny2(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).tiny * 2


def _with_reg(A_mv: MatVec, reg: float) -> MatVec:
    if reg == 0:
        return A_mv

    def A_mv_reg(x: torch.Tensor) -> torch.Tensor:
        return A_mv(x).add_(x, alpha=reg)

    return A_mv_reg


def trust_tau(x: torch.Tensor, d: torch.Tensor, radius: float) -> torch.Tensor:
    """``x + tau d`` with ``tau >= 0`` chosen so that ``|x + tau d| = radius``."""
    xx, xd, dd = x.dot(x), x.dot(d), d.dot(d)
    tiny = _tiny2(dd)
    if dd.abs() < tiny:
        dd = dd.new_full((), tiny).copysign(dd)
    rad = (xd ** 2 - dd * (xx - radius ** 2)).clamp(min=0).sqrt()
    return x + ((rad - xd) / dd) * d


def find_within_trust_radius(history: deque, radius: float) -> torch.Tensor | None:
    """The boundary point of the last stored CG segment that starts inside ``radius``; None if none does."""
    for x, x_norm, d in reversed(tuple(history)):
        if x_norm <= radius:
            return trust_tau(x, d, radius)
    return None


class CG:
    """Conjugate gradients for ``(A + reg I) x = b`` on flat vectors.

    Stops when the residual norm falls below ``tol`` (after ``miniter`` iterations), after
    ``maxiter`` iterations (default ``b.numel()``), when an iterate leaves ``trust_radius`` (the
    boundary point is returned: Steihaug-Toint), or on non-positive curvature ``d^T A d <= tiny``:
    then the boundary point with a trust radius, ``b`` scaled by ``|b^T b / d^T A d|`` on the first
    iteration, the current iterate with ``npc_terminate``, otherwise it goes on.

    Differences from torchzero 0.4.4: exactly zero curvature on the first iteration returns ``b``
    (torchzero returns ``inf * b``), and on a later iteration the current iterate (torchzero
    divides by zero). As in torchzero, the initial residual with ``x0`` is ``b - A x0`` (without
    ``reg``).
    """

    def __init__(self, A_mv: MatVec, b: torch.Tensor, x0: torch.Tensor | None = None, tol: float | None = 1e-8,
                 maxiter: int | None = None, reg: float = 0, trust_radius: float | None = None,
                 npc_terminate: bool = False, miniter: int = 0, history_size: int = 0):
        self.A_mv = _with_reg(A_mv, reg)
        self.A_mv_noreg = A_mv
        self.b = b
        self.eps = _tiny2(b)
        self.tol = self.eps if tol is None else tol
        self.maxiter = b.numel() if maxiter is None else maxiter
        self.miniter = miniter
        self.trust_radius = trust_radius
        self.npc_terminate = npc_terminate
        self.history: deque | None = deque(maxlen=history_size) if history_size > 0 else None
        self.iter = 0
        self.num_matvecs = 0
        if x0 is None:
            self.x = torch.zeros_like(b)
            self.r = b
        else:
            self.x = x0
            self.num_matvecs += 1
            self.r = b - A_mv(x0)
        self.d = self.r
        if self.history is not None:
            self.history.append((self.x, torch.linalg.vector_norm(self.x), self.d))

    def _A(self, v: torch.Tensor) -> torch.Tensor:
        self.num_matvecs += 1
        return self.A_mv(v)

    def step(self) -> tuple[torch.Tensor, bool]:
        """One iteration; returns ``(solution so far, finished)``."""
        x, b, d, r = self.x, self.b, self.d, self.r
        if self.iter >= self.maxiter:
            return x, True
        Ad = self._A(d)
        dAd = d.dot(Ad)
        if dAd <= self.eps:  # non-positive curvature
            if self.trust_radius is not None:
                return trust_tau(x, d, self.trust_radius), True
            if dAd == 0:
                return (b.clone() if self.iter == 0 else x), True
            if self.iter == 0:
                return b * (b.dot(b) / dAd).abs(), True
            if self.npc_terminate:
                return x, True
        rr = r.dot(r)
        alpha = rr / dAd
        x_next = x + alpha * d
        x_next_norm = None
        if self.trust_radius is not None:
            x_next_norm = torch.linalg.vector_norm(x_next)
            if x_next_norm >= self.trust_radius:
                return trust_tau(x, d, self.trust_radius), True
        r_next = r - alpha * Ad
        if self.iter >= self.miniter and torch.linalg.vector_norm(r_next) < self.tol:
            return x_next, True
        beta = r_next.dot(r_next) / rr
        self.d = r_next + beta * d
        self.x, self.r = x_next, r_next
        if self.history is not None:
            if x_next_norm is None:
                x_next_norm = torch.linalg.vector_norm(x_next)
            self.history.append((x_next, x_next_norm, self.d))
        self.iter += 1
        return x_next, False

    def solve(self) -> torch.Tensor:
        if self.miniter < 1 and torch.linalg.vector_norm(self.r) < self.tol:
            return self.x
        while True:
            sol, done = self.step()
            if done:
                return sol


class CGSolution(NamedTuple):
    x: torch.Tensor
    solver: CG


def cg(A_mv: MatVec, b: torch.Tensor, x0: torch.Tensor | None = None, tol: float | None = 1e-8,
       maxiter: int | None = None, reg: float = 0, trust_radius: float | None = None, npc_terminate: bool = False,
       miniter: int = 0, history_size: int = 0) -> CGSolution:
    """Runs :class:`CG`; returns ``(x, solver)`` (the solver keeps the history and the counts)."""
    solver = CG(A_mv, b, x0=x0, tol=tol, maxiter=maxiter, reg=reg, trust_radius=trust_radius,
                npc_terminate=npc_terminate, miniter=miniter, history_size=history_size)
    return CGSolution(solver.solve(), solver)


def minres(A_mv: MatVec, b: torch.Tensor, x0: torch.Tensor | None = None, tol: float | None = 1e-8,
           maxiter: int | None = None, reg: float = 0, npc_terminate: bool = True,
           trust_radius: float | None = None) -> torch.Tensor:
    """MINRES for ``(A + reg I) x = b`` with negative-curvature detection (Liu & Roosta 2022),
    optionally bounded by ``trust_radius``; torchzero 0.4.4's iteration on flat vectors."""
    A = _with_reg(A_mv, reg)
    eps = math.sqrt(_tiny2(b))
    tol = eps if tol is None else tol
    maxiter = b.numel() if maxiter is None else maxiter
    if x0 is None:
        R = b
        X = torch.zeros_like(b)
    else:
        R = b - A(x0)
        X = x0
    beta = b_norm = torch.linalg.vector_norm(b)
    if b_norm < eps ** 2:
        return torch.zeros_like(b)
    V = b / beta
    V_prev = torch.zeros_like(b)
    D = torch.zeros_like(b)
    D_prev = torch.zeros_like(b)
    c: float | torch.Tensor = -1
    phi = beta
    s: float | torch.Tensor = 0
    delta1: float | torch.Tensor = 0
    e: float | torch.Tensor = 0
    for _ in range(maxiter):
        P = A(V)
        alpha = V.dot(P)
        P = P - beta * V_prev - alpha * V
        beta = torch.linalg.vector_norm(P)
        delta2 = c * delta1 + s * alpha
        gamma1 = s * delta1 - c * alpha
        e_next = s * beta
        delta1 = -c * beta
        if c * gamma1 >= 0:  # non-positive curvature
            if trust_radius is not None:
                return trust_tau(X, R if npc_terminate else D, trust_radius)
            if npc_terminate:
                return R
        gamma2 = (gamma1 ** 2 + beta ** 2) ** 0.5
        if abs(gamma2) <= eps:  # singular system
            return X if trust_radius is None else trust_tau(X, D, trust_radius)
        c, s = gamma1 / gamma2, beta / gamma2
        tau = c * phi
        phi = s * phi
        D_prev, D = D, (V - delta2 * D - e * D_prev) / gamma2
        e = e_next
        X = X + tau * D
        if trust_radius is not None and torch.linalg.vector_norm(X) > trust_radius:
            return trust_tau(X, D, trust_radius)
        if abs(beta) < eps or phi / b_norm <= tol:
            return X
        V_prev, V = V, P / beta
        R = s ** 2 * R - phi * c * V
    return X


# ----------------------------------------------------------------------------- eigen / Nyström
def orthogonalize_columns(A: torch.Tensor, method: str) -> torch.Tensor:
    """An ``(n, k)`` matrix with orthonormal columns spanning those of ``A`` (``'qr'``, ``'svd'``,
    ``'eigh'``) or its Newton-Schulz approximation (``'newtonschulz'``/``'ns5'``, ``'polar_express'``)."""
    if method == "qr":
        if A.shape[0] < A.shape[1]:
            return torch.linalg.qr(A.mT, mode="reduced").Q.mT
        return torch.linalg.qr(A, mode="reduced").Q
    if method == "svd":
        U, _, Vh = torch.linalg.svd(A, full_matrices=False)
        return U @ Vh
    if method == "eigh":
        L, V = torch.linalg.eigh(A.mT @ A)
        return A @ (V * L.clamp(min=torch.finfo(A.dtype).tiny).rsqrt()) @ V.mT
    if method in ("newtonschulz", "ns5", "polar_express"):
        from ...ops.newton_schulz import newton_schulz
        return newton_schulz(A, method)
    raise ValueError(f"Unknown orthogonalize_method {method!r}; expected one of "
                     "'qr', 'svd', 'eigh', 'newtonschulz', 'ns5', 'polar_express'")


def regularize_eigh(L: torch.Tensor, Q: torch.Tensor, truncate: int | None = None, tol: float | None = None,
                    damping: float = 0, rdamping: float = 0, descending: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Drops non-finite eigenvalues (None if none is left), those below ``tol * max``, keeps the
    ``truncate`` largest, and adds ``damping + rdamping * max``.

    "max" and "largest" are the last entries (``eigh``'s ascending order, also after an
    ``eigval_fn``, as torchzero does), or the first ones with ``descending=True`` (the Nyström
    factors; torchzero 0.4.4 treats those as ascending too, so there its ``truncate`` keeps the
    smallest eigenvalues and ``rdamping`` scales the smallest)."""
    finite = L.isfinite()
    if not bool(finite.all()):
        if not bool(finite.any()):
            return None
        L, Q = L[finite], Q[:, finite]
    L_max = L[0] if descending else L[-1]
    if tol is not None:
        keep = L > tol * L_max
        L, Q = L[keep], Q[:, keep]
    if truncate is not None:
        L, Q = (L[:truncate], Q[:, :truncate]) if descending else (L[-truncate:], Q[:, -truncate:])
    d = damping + rdamping * L_max
    if d != 0:
        L = L + d
    return L, Q


def nystrom_approximation(Omega: torch.Tensor, AOmega: torch.Tensor, eigv_tol: float = 0
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, Q)`` with ``A ~ Q diag(L) Q^T`` from the sketch ``A @ Omega`` (``L`` descending).

    Raises ``torch.linalg.LinAlgError`` when the shifted core matrix is not positive definite
    (torchzero 0.4.4 goes on with a partial Cholesky factor there and returns NaN or garbage).
    """
    shift = torch.finfo(AOmega.dtype).eps * torch.linalg.matrix_norm(AOmega, ord="fro")
    Y = AOmega + shift * Omega
    C, info = torch.linalg.cholesky_ex(Omega.mT @ Y)
    if int(info) != 0:
        raise torch.linalg.LinAlgError("the sketched Hessian is not positive definite (Cholesky failed)")
    B = torch.linalg.solve_triangular(C, Y.mT, upper=False).mT
    m, k = B.shape
    if m < k:
        U, S, _ = torch.linalg.svd(B, full_matrices=False)
    else:  # reduced SVD of the tall B from the eigendecomposition of the small B^T B
        try:
            E, V = torch.linalg.eigh(B.mT @ B)
        except torch.linalg.LinAlgError:
            U, S, _ = torch.linalg.svd(B, full_matrices=False)
        else:
            E, V = E.flip(-1), V.flip(-1)
            keep = E > eigv_tol * E[0]
            E, V = E[keep], V[:, keep]
            S = E.sqrt()
            U = (B @ V) / S
    return S.pow(2) - shift, U


def nystrom_sketch_and_solve(L: torch.Tensor, Q: torch.Tensor, b: torch.Tensor, reg: float) -> torch.Tensor:
    """``(Q diag(L) Q^T + reg I)^-1 b = Q (Q^T b / (L + reg)) + (b - Q Q^T b) / reg`` (``L`` not modified)."""
    Qtb = Q.mT @ b
    return Q @ (Qtb / (L + reg)) + (b - Q @ Qtb) / reg


def nystrom_pcg(L: torch.Tensor, Q: torch.Tensor, A_mv: MatVec, b: torch.Tensor, reg: float,
                tol: float | None = 1e-8, maxiter: int | None = None) -> torch.Tensor:
    """CG for ``(A + reg I) x = b`` preconditioned by the Nyström approximation ``Q diag(L) Q^T``.

    The inverse preconditioner ``(L_min + reg) Q diag(1 / (L + reg)) Q^T + (I - Q Q^T)`` is applied
    through ``Q`` (two ``(n, k)`` products per iteration); torchzero 0.4.4 forms it as an n x n
    matrix. The initial residual is ``b`` (x0 = 0), with no product; stops on
    ``|r| <= tol * |b|`` or after ``maxiter`` (default ``n``) iterations.
    """
    A = _with_reg(A_mv, reg)
    Lr = L + reg
    scale = Lr[-1] / Lr

    def P_inv(r: torch.Tensor) -> torch.Tensor:
        Qtr = Q.mT @ r
        return r + Q @ (scale * Qtr - Qtr)

    tol = _tiny2(b) if tol is None else tol
    maxiter = b.numel() if maxiter is None else maxiter
    x = torch.zeros_like(b)
    r = b.clone()
    z = P_inv(r)
    p = z.clone()
    init_norm = torch.linalg.vector_norm(r)
    if init_norm < tol:
        return x
    k = 0
    while True:
        Ap = A(p)
        rz = r.dot(z)
        pAp = p.dot(Ap)
        if pAp == 0:
            return x
        step = rz / pAp
        x += step * p
        r -= step * Ap
        k += 1
        if torch.linalg.vector_norm(r) <= tol * init_norm or k >= maxiter:
            return x
        z = P_inv(r)
        p = z + p * (r.dot(z) / rz)
