"""Trust regions around a Hessian approximation from ``hess_module``."""
from __future__ import annotations

from .base import TrustRegionBase
from .cubic_regularization import CubicRegularization
from .dogleg import Dogleg
from .levenberg_marquardt import LevenbergMarquardt
from .trust_cg import TrustCG

__all__ = ["TrustRegionBase", "TrustCG", "LevenbergMarquardt", "Dogleg", "CubicRegularization"]
