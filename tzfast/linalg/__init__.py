"""Linear algebra shared by modules (linear operators for Hessian approximations)."""
from __future__ import annotations

from . import linear_operator
from .linear_operator import Dense, DenseInverse, Diagonal, LinearOperator

__all__ = ["linear_operator", "LinearOperator", "Dense", "DenseInverse", "Diagonal"]
