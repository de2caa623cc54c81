"""Matrix preconditioners: Shampoo, SOAP, GGT, full-matrix Adagrad and the *Basis wrappers."""
from __future__ import annotations

from .full_matrix_adagrad import FullMatrixAdagrad
from .ggt import GGT, GGTBasis
from .shampoo import Shampoo
from .soap import SOAP, SOAPBasis

__all__ = ["Shampoo", "SOAP", "SOAPBasis", "GGT", "GGTBasis", "FullMatrixAdagrad"]
