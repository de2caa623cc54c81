"""Nonlinear conjugate gradients (Fletcher-Reeves, Polak-Ribière, Hestenes-Stiefel, Dai-Yuan,
Liu-Storey, conjugate descent, Hager-Zhang, the DY/HS hybrid) and Pearson's projected gradient
method. ``ConjugateGradientBase`` is importable from here to write other ``beta`` formulas; as in
torchzero it is not exported to ``tz.m``."""
from __future__ import annotations

from .base import ConjugateGradientBase as ConjugateGradientBase  # importable, not in tz.m
from .cg import DYHS, ConjugateDescent, DaiYuan, FletcherReeves, HagerZhang, HestenesStiefel, LiuStorey, PolakRibiere
from .projected_gradient import ProjectedGradientMethod

__all__ = ["DYHS", "ConjugateDescent", "DaiYuan", "FletcherReeves", "HagerZhang", "HestenesStiefel", "LiuStorey",
           "PolakRibiere", "ProjectedGradientMethod"]
