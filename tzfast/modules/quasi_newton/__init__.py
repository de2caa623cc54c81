"""Quasi-Newton methods: full-matrix, diagonal and limited-memory.

Add a module by importing its public classes here; ``__all__`` (and so ``tz.m``) is built from
every ``Module`` subclass imported below.
"""
# ruff: noqa: F401  (the imports are the exports: ``__all__`` is built from them below)
from __future__ import annotations

from ...core.module import Module as _Module
from .diagonal import DNRTR, DiagonalBFGS, DiagonalQuasiCauchi, DiagonalSR1, DiagonalWeightedQuasiCauchi, NewDQN
from .full_matrix import (
    BFGS,
    DFP,
    ICUM,
    PSB,
    SR1,
    BroydenBad,
    BroydenGood,
    Greenstadt1,
    Greenstadt2,
    McCormick,
    Pearson,
    ProjectedNewtonRaphson,
    ThomasOptimalMethod,
)
from .hessian_update import HessianUpdateStrategy
from .lbfgs import LBFGS, LSR1
from .sg2 import SG2
from .variable_metric import SSVM, FletcherVMM, GradientCorrection, Horisho, NewSSM, ShorR

_BASES = ("HessianUpdateStrategy",)  # importable from here, not exported to tz.m (as in torchzero)
__all__ = [_n for _n, _v in list(globals().items())
           if isinstance(_v, type) and issubclass(_v, _Module) and not _n.startswith("_") and _n not in _BASES]
