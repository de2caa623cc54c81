"""Linear operators that second-order modules hand to trust regions through ``get_H``.

``DenseWithInverse`` (a matrix and its precomputed inverse), ``Eigendecomposition``
(``Q diag(L) Q^T``, also low-rank), ``Sketched`` (``S A_proj S^T``) and ``ScaledIdentity``;
each also has ``solve_plus_diag(b, diag)`` = ``(A + diag)^-1 b``, which Levenberg-Marquardt and
cubic regularization call. Semantics of torchzero 0.4.4's operators of the same names.
"""
from __future__ import annotations

import torch

from ...linalg.linear_operator import Dense, LinearOperator
from ._solvers import nystrom_sketch_and_solve

__all__ = ["DenseWithInverse", "Eigendecomposition", "Sketched", "ScaledIdentity", "solve_plus_diag"]


def solve_plus_diag(H: LinearOperator, b: torch.Tensor, diag: float | torch.Tensor) -> torch.Tensor:
    """``(H + diag)^-1 b`` through the operator's own ``solve_plus_diag`` when it has one."""
    fn = getattr(H, "solve_plus_diag", None)
    if fn is not None:
        return fn(b, diag)
    return H.add_diagonal(diag).solve(b)


def _as_vector(x: float | torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor) and x.numel() > 1:
        return x
    return torch.full((n,), float(x), dtype=like.dtype, device=like.device)


class DenseWithInverse(Dense):
    """A dense matrix whose inverse is known too; ``solve`` is one product with the inverse.

    Args:
        A: the matrix.
        A_inv: its inverse.
    """

    def __init__(self, A: torch.Tensor, A_inv: torch.Tensor):
        super().__init__(A)
        self.A_inv = A_inv

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return self.A_inv @ b

    def solve_plus_diag(self, b: torch.Tensor, diag: float | torch.Tensor) -> torch.Tensor:
        return self.add_diagonal(diag).solve(b)

    def inv(self) -> DenseWithInverse:  # type: ignore[override]  # Dense's inv returns Dense; this one keeps both
        return DenseWithInverse(self.A_inv, self.A)

    def transpose(self) -> DenseWithInverse:  # type: ignore[override]
        return DenseWithInverse(self.A.mH, self.A_inv.mH)


class Eigendecomposition(LinearOperator):
    """``A = Q diag(L) Q^T`` with ``Q`` of shape ``(n, rank)`` (orthonormal columns).

    Args:
        L: eigenvalues, shape ``(rank,)``.
        Q: eigenvectors, shape ``(n, rank)``.
        use_nystrom: ``solve_plus_diag`` with a scalar uses the Nyström sketch-and-solve formula
            (exact for ``Q diag(L) Q^T + d I``, also when ``rank < n``); otherwise it shifts the
            eigenvalues. Defaults to True.
    """

    def __init__(self, L: torch.Tensor, Q: torch.Tensor, use_nystrom: bool = True):
        self.L, self.Q, self.use_nystrom = L, Q, use_nystrom
        self.device, self.dtype = L.device, L.dtype

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.Q @ ((self.Q.mH @ x) * self.L)

    def rmatvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.matvec(x)

    def matmat(self, X: torch.Tensor) -> Dense:
        return Dense(self.Q @ (self.L[:, None] * (self.Q.mH @ X)))

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return self.Q @ ((self.Q.mH @ b) / self.L)

    def solve_plus_diag(self, b: torch.Tensor, diag: float | torch.Tensor) -> torch.Tensor:
        if isinstance(diag, torch.Tensor) and diag.numel() > 1:
            return Dense(self.to_tensor()).add_diagonal(diag).solve(b)
        if not self.use_nystrom:
            return self.add_diagonal(diag).solve(b)
        return nystrom_sketch_and_solve(self.L, self.Q, b, float(diag))

    def add_diagonal(self, x: torch.Tensor | float) -> Eigendecomposition:
        """Shifts the eigenvalues by a scalar ``x`` (equal to ``A + x I`` only when ``rank == n``)."""
        if isinstance(x, torch.Tensor) and x.numel() > 1:
            raise RuntimeError("Eigendecomposition.add_diagonal takes a scalar, not a vector diagonal")
        return Eigendecomposition(self.L + x, self.Q, self.use_nystrom)

    def diagonal(self) -> torch.Tensor:
        return (self.Q * self.Q * self.L).sum(-1)

    def inv(self) -> Eigendecomposition:
        return Eigendecomposition(1 / self.L, self.Q, self.use_nystrom)

    def to_tensor(self) -> torch.Tensor:
        return (self.Q * self.L) @ self.Q.mH

    def size(self) -> tuple[int, ...]:
        n = self.Q.shape[0]
        return (n, n)

    def transpose(self) -> Eigendecomposition:
        return self

    def is_dense(self) -> bool:
        return False


class Sketched(LinearOperator):
    """``S A_proj S^T`` for a sketch ``S`` of shape ``(n, k)`` and a ``(k, k)`` matrix ``A_proj``.

    Args:
        S: the sketching matrix.
        A_proj: the projected matrix.
    """

    def __init__(self, S: torch.Tensor, A_proj: torch.Tensor):
        self.S, self.A_proj = S, A_proj
        self.device, self.dtype = A_proj.device, A_proj.dtype

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.S @ (self.A_proj @ (self.S.mT @ x))

    def rmatvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.S @ (self.A_proj.mH @ (self.S.mT @ x))

    def matmat(self, X: torch.Tensor) -> Dense:
        return Dense(self.S @ (self.A_proj @ (self.S.mT @ X)))

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return self.S @ torch.linalg.lstsq(self.A_proj, (self.S.mT @ b).unsqueeze(-1)).solution.squeeze(-1)

    def solve_plus_diag(self, b: torch.Tensor, diag: float | torch.Tensor) -> torch.Tensor:
        return self.add_diagonal(diag).solve(b)

    def add_diagonal(self, x: torch.Tensor | float) -> Sketched:
        """Adds ``x`` to the diagonal of ``A_proj`` (not of ``S A_proj S^T``), as torchzero does."""
        d = _as_vector(x, self.A_proj.shape[0], self.A_proj)
        return Sketched(self.S, self.A_proj + torch.diag_embed(d))

    def diagonal(self) -> torch.Tensor:
        return ((self.S @ self.A_proj) * self.S).sum(-1)

    def inv(self) -> Sketched:
        return Sketched(self.S, torch.linalg.pinv(self.A_proj))

    def to_tensor(self) -> torch.Tensor:
        return self.S @ self.A_proj @ self.S.mT

    def size(self) -> tuple[int, ...]:
        n = self.S.shape[0]
        return (n, n)

    def transpose(self) -> Sketched:
        return Sketched(self.S, self.A_proj.mH)

    def is_dense(self) -> bool:
        return False


class ScaledIdentity(LinearOperator):
    """``s I`` of unspecified size (what a module without a Hessian yet returns).

    Args:
        s: the scale. Defaults to 1.
    """

    def __init__(self, s: float = 1.0, n: int | None = None, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        self.s, self.n = float(s), n
        self.device = torch.device("cpu") if device is None else device
        self.dtype = torch.get_default_dtype() if dtype is None else dtype

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s

    def rmatvec(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s

    def matmat(self, X: torch.Tensor) -> Dense:
        return Dense(X * self.s)

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return b / self.s

    def solve_plus_diag(self, b: torch.Tensor, diag: float | torch.Tensor) -> torch.Tensor:
        return b / (self.s + diag)

    def add_diagonal(self, x: torch.Tensor | float) -> LinearOperator:
        if isinstance(x, torch.Tensor) and x.numel() > 1:
            from ...linalg.linear_operator import Diagonal
            return Diagonal(x + self.s)
        return ScaledIdentity(self.s + float(x), self.n, self.device, self.dtype)

    def diagonal(self) -> torch.Tensor:
        if self.n is None:
            raise RuntimeError("ScaledIdentity without a size has no diagonal")
        return torch.full((self.n,), self.s, device=self.device, dtype=self.dtype)

    def inv(self) -> ScaledIdentity:
        return ScaledIdentity(1 / self.s, self.n, self.device, self.dtype)

    def to_tensor(self) -> torch.Tensor:
        if self.n is None:
            raise RuntimeError("ScaledIdentity without a size cannot be made dense")
        return torch.eye(self.n, device=self.device, dtype=self.dtype) * self.s

    def size(self) -> tuple[int, ...]:
        if self.n is None:
            raise RuntimeError("ScaledIdentity without a size")
        return (self.n, self.n)

    def transpose(self) -> ScaledIdentity:
        return self

    def is_dense(self) -> bool:
        return False
