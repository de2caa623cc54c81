"""Line searches: backtracking (plain and adaptive), adaptive bisection, strong Wolfe, scipy's
scalar minimisers, and the ``LineSearchBase`` class to write others."""
from __future__ import annotations

from .adaptive import AdaptiveBisection
from .backtracking import AdaptiveBacktracking, Backtracking
from .base import LineSearch, LineSearchBase
from .scipy import ScipyMinimizeScalar
from .strong_wolfe import StrongWolfe

__all__ = ["AdaptiveBacktracking", "AdaptiveBisection", "Backtracking", "LineSearch", "LineSearchBase",
           "ScipyMinimizeScalar", "StrongWolfe"]
