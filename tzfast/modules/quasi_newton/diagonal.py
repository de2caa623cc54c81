"""Diagonal quasi-Newton methods: a vector instead of a matrix, so O(n) memory and time.

``DiagonalBFGS`` and ``DiagonalSR1`` apply the BFGS/SR1 formulas to the diagonal only (they do
not satisfy the secant equation); the quasi-Cauchy family fits the diagonal to the curvature
``s'y`` along the step (the weak secant condition).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

from ...core.module import Chainable
from .defaults import _HessianUpdateStrategyDefaults, _InverseHessianUpdateStrategyDefaults
from .hessian_update import HessianUpdateStrategy, InitScale, fill_doc, safe_clip

__all__ = ["DiagonalBFGS", "DiagonalSR1", "DiagonalQuasiCauchi", "DiagonalWeightedQuasiCauchi", "DNRTR", "NewDQN"]

State = dict[str, Any]
Setting = Mapping[str, Any]


# ------------------------------------------------------------------ formulas
def diagonal_bfgs_H_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, tol: float, w: float) -> None:
    """The diagonal of the BFGS update of ``diag(H)``; skipped when ``s'y < tol``."""
    sy = s.dot(y)
    if sy < tol:
        return
    term1 = ((sy + y * H * y) * s * s).div_(safe_clip(sy**2))
    term2 = (H * y * s).add_(s * y * H).div_(sy)
    H.add_(term1.sub_(term2), alpha=w)


def diagonal_sr1_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, tol: float, w: float) -> None:
    """``H += z*z/z'y``, ``z = s - H*y``; skipped as in SR1. With ``s``, ``y`` swapped: the B update."""
    z = s - H * y
    denom = z.dot(y)
    if denom.abs() <= tol * torch.linalg.vector_norm(y) * torch.linalg.vector_norm(z):
        return
    H.add_((z * z).div_(safe_clip(denom)), alpha=w)


def diagonal_qc_B_(B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, w: float) -> None:
    """Zhu-Nazareth-Wolkowicz: ``B += s^2 (s'y - s'Bs) / sum(s^4)``."""
    s2 = s * s
    B.add_(s2 * ((s.dot(y) - (s * B).dot(s)) / safe_clip((s**4).sum())), alpha=w)


def diagonal_wqc_B_(B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, w: float) -> None:
    """Leong-Enshaei-Kek: ``B += E (s'y - s'Bs) / s'Es`` with weights ``E = s^2 B^2``."""
    E = s**2 * B**2
    num = s.dot(y) - (s * B).dot(s)
    B.add_(E * (num / safe_clip((s * E).dot(s))), alpha=w)


def new_dqn_B_(B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, w: float) -> None:
    """Nosrati-Amini: ``B += s^2 s'y / sum(s^4)``."""
    B.add_(s**2 * (s.dot(y) / safe_clip((s**4).sum())), alpha=w)


# ------------------------------------------------------------------ modules
@fill_doc()
class DiagonalBFGS(_InverseHessianUpdateStrategyDefaults):
    """BFGS restricted to the diagonal of H (O(n) memory).

    Args:
{qn_args}
    References:
        Nocedal & Wright, "Numerical Optimization", 2nd ed., section 6.1 (the full-matrix formula).

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.DiagonalBFGS(), tz.m.Backtracking())
    """

    diagonal = True

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        diagonal_bfgs_H_(H, s, y, setting["tol"], w)


@fill_doc()
class DiagonalSR1(_InverseHessianUpdateStrategyDefaults):
    """SR1 restricted to the diagonal (O(n) memory).

    Args:
{qn_args}
    References:
        Nocedal & Wright, "Numerical Optimization", 2nd ed., section 6.2 (the full-matrix formula).

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.DiagonalSR1(), tz.m.Backtracking())
    """

    diagonal = True

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        diagonal_sr1_(H, s, y, setting["tol"], w)

    def update_B_(self, B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        diagonal_sr1_(B, y, s, setting["tol"], w)


@fill_doc(inverse="False")
class DiagonalQuasiCauchi(_HessianUpdateStrategyDefaults):
    """Diagonal quasi-Cauchy method: the least change of diag(B) meeting ``s'Bs = s'y``.

    Args:
{qn_args}
    References:
        Zhu, Nazareth & Wolkowicz, "The quasi-Cauchy relation and diagonal updating", SIAM
        Journal on Optimization 9(4), 1999. doi:10.1137/S1052623497318079

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.DiagonalQuasiCauchi(), tz.m.Backtracking())
    """

    diagonal = True

    def update_B_(self, B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        diagonal_qc_B_(B, s, y, w)


@fill_doc(inverse="False")
class DiagonalWeightedQuasiCauchi(_HessianUpdateStrategyDefaults):
    """Diagonal quasi-Newton update by least change in a weighted Frobenius norm.

    Args:
{qn_args}
    References:
        Leong, Enshaei & Kek, "Diagonal quasi-Newton methods via least change updating principle
        with weighted Frobenius norm", Numerical Algorithms 86, 2021. doi:10.1007/s11075-020-00930-8

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.DiagonalWeightedQuasiCauchi(), tz.m.Backtracking())
    """

    diagonal = True

    def update_B_(self, B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        diagonal_wqc_B_(B, s, y, w)


@fill_doc(inverse=None)
class DNRTR(HessianUpdateStrategy):
    """Diagonal quasi-Newton method with truncation: entries of B outside ``(lb, ub)`` act as 1.

    The diagonal is updated by the weighted quasi-Cauchy rule, as torchzero 0.4.4 does.

    Args:
        lb: entries of B at or below this are replaced by 1 when used. Defaults to 0.01.
        ub: entries of B at or above this are replaced by 1 when used. Defaults to 1e5.
{qn_args}
    References:
        Andrei, "A diagonal quasi-Newton updating method for unconstrained optimization",
        Numerical Algorithms 81(2), 2019. doi:10.1007/s11075-018-0562-7

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.DNRTR(), tz.m.Backtracking())
    """

    diagonal = True

    def __init__(self, lb: float = 1e-2, ub: float = 1e5, init_scale: InitScale = "auto", tol: float = 1e-32,
                 ptol: float | None = 1e-32, ptol_restart: bool = False, gtol: float | None = 1e-32,
                 restart_interval: int | Literal["auto"] | None = None, beta: float | None = None,
                 update_freq: int = 1, scale_first: bool = False, concat_params: bool = True,
                 inner: Chainable | None = None, *, scale_second: bool = False):
        who = type(self).__name__
        for name, v in (("lb", lb), ("ub", ub)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                raise ValueError(f"{who}: `{name}` must be a number, got {v!r}")
        if not lb < ub:
            raise ValueError(f"{who}: `lb` must be smaller than `ub`, got lb={lb!r}, ub={ub!r}")
        super().__init__(dict(lb=lb, ub=ub), init_scale=init_scale, tol=tol, ptol=ptol, ptol_restart=ptol_restart,
                         gtol=gtol, restart_interval=restart_interval, beta=beta, update_freq=update_freq,
                         scale_first=scale_first, scale_second=scale_second, concat_params=concat_params,
                         inverse=False, inner=inner)

    def update_B_(self, B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        diagonal_wqc_B_(B, s, y, w)

    def modify_B(self, B: torch.Tensor, state: State, setting: Setting) -> torch.Tensor:
        inside = (B > setting["lb"]).logical_and_(B < setting["ub"])
        return torch.where(inside, B, 1)


@fill_doc(inverse=None)
class NewDQN(DNRTR):
    """New diagonal quasi-Newton method: ``B += s^2 s'y / sum(s^4)``, truncated as in ``DNRTR``.

    Args:
        lb: entries of B at or below this are replaced by 1 when used. Defaults to 0.01.
        ub: entries of B at or above this are replaced by 1 when used. Defaults to 1e5.
{qn_args}
    References:
        Nosrati & Amini, "A new diagonal quasi-Newton algorithm for unconstrained optimization
        problems", Applications of Mathematics 69(4), 2024. doi:10.21136/AM.2024.0204-23

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.NewDQN(), tz.m.Backtracking())
    """

    def update_B_(self, B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        new_dqn_B_(B, s, y, w)
