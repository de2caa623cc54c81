"""PSGD preconditioners (Li, arXiv:1512.04202, arXiv:2402.11858): dense, Kronecker and low-rank.

``DenseNewton``, ``KronNewton`` and ``KronWhiten`` are the names the documentation's examples use;
they are the same classes as ``PSGDDenseNewton``, ``PSGDKronNewton`` and ``PSGDKronWhiten``.
"""
from __future__ import annotations

from .dense import DenseNewton, PSGDDenseNewton
from .kron import KronNewton, KronWhiten, PSGDKronNewton, PSGDKronWhiten
from .lra import PSGDLRANewton, PSGDLRAWhiten

__all__ = ["PSGDDenseNewton", "PSGDKronNewton", "PSGDKronWhiten", "PSGDLRANewton", "PSGDLRAWhiten",
           "DenseNewton", "KronNewton", "KronWhiten"]
