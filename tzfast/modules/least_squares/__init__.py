"""Least squares: Gauss-Newton and the sum-of-squares reformulation for closures that return
a vector of residuals (seed 004)."""
from __future__ import annotations

from .gauss_newton import AtA, GaussNewton, SumOfSquares

__all__ = ["GaussNewton", "SumOfSquares"]
_ = AtA  # the operator GaussNewton.get_H returns; importable from .gauss_newton
