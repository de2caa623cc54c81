"""Smoothing: Laplacian smoothing of the update and gradient sampling (Gaussian homotopy)."""
from __future__ import annotations

from .laplacian import LaplacianSmoothing
from .sampling import GradientSampling

__all__ = ["GradientSampling", "LaplacianSmoothing"]
