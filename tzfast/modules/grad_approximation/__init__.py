"""Gradient approximation from function values: finite differences, randomized finite
differences (SPSA, RDSA, Gaussian smoothing, MeZO), one-measurement SPSA and forward gradients."""
from __future__ import annotations

from .fdm import FDM
from .forward_gradient import ForwardGradient
from .grad_approximator import GradApproximator, GradTarget
from .rfdm import RDSA, SPSA, GaussianSmoothing, MeZO, RandomizedFDM
from .spsa1 import SPSA1

__all__ = ["FDM", "ForwardGradient", "GaussianSmoothing", "GradApproximator", "GradTarget", "MeZO", "RDSA",
           "RandomizedFDM", "SPSA", "SPSA1"]
