"""Linear operators: how a module hands its Hessian (or Hessian-inverse) approximation to others.

``Module.get_H`` returns one of these; trust regions and damping strategies call ``matvec``,
``solve`` and ``add_diagonal`` on it without knowing how the matrix is stored. The names and
semantics follow torchzero 0.4.4's ``torchzero.linalg.linear_operator``.

Examples:
    >>> import torch
    >>> from tzfast.linalg.linear_operator import Dense, DenseInverse
    >>> B = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    >>> Dense(B).solve(torch.tensor([2.0, 4.0]))
    tensor([1., 1.])
    >>> DenseInverse(torch.linalg.inv(B)).matvec(torch.tensor([1.0, 1.0]))
    tensor([2., 4.])
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

__all__ = ["LinearOperator", "Dense", "DenseInverse", "Diagonal"]


def _solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``A^-1 b``; a least-squares solution when ``A`` is singular."""
    sol, info = torch.linalg.solve_ex(A, b)
    if int(info) == 0:
        return sol
    return torch.linalg.lstsq(A, b).solution


def _inv(A: torch.Tensor) -> torch.Tensor:
    """``A^-1``; the pseudo-inverse when ``A`` is singular."""
    inv, info = torch.linalg.inv_ex(A)
    if int(info) == 0:
        return inv
    return torch.linalg.pinv(A)


class LinearOperator(ABC):
    """A square matrix known through its products and solves."""

    device: torch.device
    dtype: torch.dtype

    @abstractmethod
    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``."""

    @abstractmethod
    def rmatvec(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H x``."""

    @abstractmethod
    def matmat(self, X: torch.Tensor) -> LinearOperator:
        """``A X`` as a ``Dense`` operator."""

    @abstractmethod
    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """``A^-1 b``."""

    @abstractmethod
    def add_diagonal(self, x: torch.Tensor | float) -> LinearOperator:
        """``A + diag(x)`` (a number adds ``x I``)."""

    @abstractmethod
    def diagonal(self) -> torch.Tensor:
        """The diagonal of ``A``."""

    @abstractmethod
    def inv(self) -> LinearOperator:
        """``A^-1``."""

    @abstractmethod
    def to_tensor(self) -> torch.Tensor:
        """``A`` as a dense tensor."""

    @abstractmethod
    def size(self) -> tuple[int, ...]:
        """The shape of ``A``."""

    @abstractmethod
    def transpose(self) -> LinearOperator:
        """``A^H``."""

    @abstractmethod
    def is_dense(self) -> bool:
        """Whether the operator holds an n x n matrix."""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.size())

    @property
    def T(self) -> LinearOperator:  # noqa: N802 (torch's name)
        return self.transpose()

    def to_dense(self) -> Dense:
        return Dense(self.to_tensor())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


class Dense(LinearOperator):
    """A matrix ``A`` held as an n x n tensor (not copied).

    Args:
        A: the matrix, or another operator (densified).
    """

    def __init__(self, A: torch.Tensor | LinearOperator):
        if isinstance(A, LinearOperator):
            A = A.to_tensor()
        self.A = A
        self.device = A.device
        self.dtype = A.dtype

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.A.mv(x)

    def rmatvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.A.mH.mv(x)

    def matmat(self, X: torch.Tensor) -> Dense:
        return Dense(self.A.mm(X))

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return _solve(self.A, b)

    def add_diagonal(self, x: torch.Tensor | float) -> Dense:
        out = self.A.clone()
        out.diagonal().add_(x)
        return Dense(out)

    def diagonal(self) -> torch.Tensor:
        return self.A.diagonal()

    def inv(self) -> Dense:
        return Dense(_inv(self.A))

    def to_tensor(self) -> torch.Tensor:
        return self.A

    def size(self) -> tuple[int, ...]:
        return tuple(self.A.size())

    def transpose(self) -> Dense:
        return Dense(self.A.mH)

    def is_dense(self) -> bool:
        return True


class DenseInverse(LinearOperator):
    """The inverse of a matrix, held as ``A_inv`` (not copied): ``matvec`` solves, ``solve`` multiplies.

    Args:
        A_inv: the n x n inverse.
    """

    def __init__(self, A_inv: torch.Tensor):
        self.A_inv = A_inv
        self.device = A_inv.device
        self.dtype = A_inv.dtype

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return _solve(self.A_inv, x)

    def rmatvec(self, x: torch.Tensor) -> torch.Tensor:
        return _solve(self.A_inv.mH, x)

    def matmat(self, X: torch.Tensor) -> Dense:
        return Dense(_solve(self.A_inv, X))

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return self.A_inv.mv(b)

    def add_diagonal(self, x: torch.Tensor | float) -> Dense:
        return Dense(self.to_tensor()).add_diagonal(x)

    def diagonal(self) -> torch.Tensor:
        return self.to_tensor().diagonal()

    def inv(self) -> Dense:
        return Dense(self.A_inv)

    def to_tensor(self) -> torch.Tensor:
        return _inv(self.A_inv)

    def size(self) -> tuple[int, ...]:
        return tuple(self.A_inv.size())

    def transpose(self) -> DenseInverse:
        return DenseInverse(self.A_inv.mH)

    def is_dense(self) -> bool:
        return True


class Diagonal(LinearOperator):
    """A diagonal matrix held as its diagonal (not copied).

    Args:
        x: the diagonal, a 1-D tensor.
    """

    def __init__(self, x: torch.Tensor):
        if x.ndim != 1:
            raise ValueError(f"Diagonal: `x` must be a 1-D tensor, got shape {tuple(x.shape)}")
        self.A = x
        self.device = x.device
        self.dtype = x.dtype

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.A * x

    def rmatvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.A * x

    def matmat(self, X: torch.Tensor) -> Dense:
        return Dense(X * self.A.unsqueeze(-1))

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return b / self.A

    def add_diagonal(self, x: torch.Tensor | float) -> Diagonal:
        return Diagonal(self.A + x)

    def diagonal(self) -> torch.Tensor:
        return self.A

    def inv(self) -> Diagonal:
        return Diagonal(1 / self.A)

    def to_tensor(self) -> torch.Tensor:
        return self.A.diag_embed()

    def size(self) -> tuple[int, ...]:
        return (self.A.numel(), self.A.numel())

    def transpose(self) -> Diagonal:
        return Diagonal(self.A)

    def is_dense(self) -> bool:
        return False
