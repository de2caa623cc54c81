"""Second-order modules: Newton's method and its Hessian-vector-product relatives."""
from __future__ import annotations

from .newton import Newton
from .newton_cg import NewtonCG, NewtonCGSteihaug
from .nystrom import NystromPCG, NystromSketchAndSolve
from .subspace_newton import SubspaceNewton
from .hutchinson import ESGD, AdaHessian, RandomHvp, SophiaH
from .matrix_momentum import HpuEstimate, MatrixMomentum
from .natural_gradient import NaturalGradient
from .newton_variants import ImprovedNewton, InverseFreeNewton, SixthOrder3P, SixthOrder3PM2, SixthOrder5P, TwoPointNewton

__all__ = ["Newton", "NewtonCG", "NewtonCGSteihaug", "NystromPCG", "NystromSketchAndSolve", "SubspaceNewton"]
__all__ += ["AdaHessian", "ESGD", "RandomHvp", "SophiaH", "HpuEstimate", "MatrixMomentum", "NaturalGradient",
            "ImprovedNewton", "InverseFreeNewton", "SixthOrder3P", "SixthOrder3PM2", "SixthOrder5P", "TwoPointNewton"]
