"""Full-matrix secant updates: BFGS, SR1, DFP, PSB, the Broyden/Greenstadt family, ICUM, Thomas,
Pearson, McCormick and projected Newton-Raphson.

Every formula changes the stored n x n matrix in place with one ``addr_``/``addmm_`` (a rank-1
or rank-2 correction whose scalars are folded into the vectors), so a step costs a few passes
over the matrix and no n x n temporaries. ``w`` is the momentum weight ``1 - beta`` (1 without
momentum): the stored matrix moves by ``w`` times the method's correction.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

from ...core.module import Chainable
from .defaults import _HessianUpdateStrategyDefaults, _InverseHessianUpdateStrategyDefaults
from .hessian_update import HessianUpdateStrategy, InitScale, fill_doc, rank2_, safe_clip

__all__ = ["BFGS", "SR1", "DFP", "PSB", "BroydenGood", "BroydenBad", "Greenstadt1", "Greenstadt2", "ICUM",
           "ThomasOptimalMethod", "Pearson", "McCormick", "ProjectedNewtonRaphson"]

State = dict[str, Any]
Setting = Mapping[str, Any]


# ------------------------------------------------------------------ formulas
def bfgs_H_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, tol: float, w: float) -> None:
    """``H += rho(1 + rho y'Hy) ss' - rho(Hy s' + s y'H)``, ``rho = 1/s'y``; skipped when ``s'y <= tol``."""
    sy = s.dot(y)
    if sy <= tol:
        return
    rho = 1.0 / sy
    Hy = torch.mv(H, y)
    a = rho * (1 + rho * y.dot(Hy))
    rank2_(H, s, a * s - rho * Hy, Hy, -rho * s, w)


def bfgs_B_(B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, tol: float, w: float) -> None:
    """``B += yy'/s'y - Bs s'B'/s'Bs``; skipped when ``s'y < tol``."""
    sy = s.dot(y)
    if sy < tol:
        return
    Bs = torch.mv(B, s)
    sBs = safe_clip(s.dot(Bs))
    rank2_(B, y, y / sy, Bs, -Bs / sBs, w)


def sr1_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, tol: float, w: float) -> None:
    """``H += zz'/z'y``, ``z = s - Hy``; skipped when ``|z'y| <= tol |y| |z|`` (Nocedal & Wright p.146).

    With ``s`` and ``y`` swapped this is the update of B.
    """
    z = s - torch.mv(H, y)
    denom = z.dot(y)
    if denom.abs() <= tol * torch.linalg.vector_norm(y) * torch.linalg.vector_norm(z):
        return
    H.addr_(z, z / safe_clip(denom), alpha=w)


def dfp_H_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, tol: float, w: float) -> None:
    """``H += ss'/s'y - Hy y'H/y'Hy``; skipped when ``|s'y| <= tol``."""
    sy = s.dot(y)
    if sy.abs() <= tol:
        return
    Hy = torch.mv(H, y)
    yHy = safe_clip(y.dot(Hy))
    rank2_(H, s, s / sy, Hy, -torch.mv(H.mT, y) / yHy, w)


def dfp_B_(B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, tol: float, w: float) -> None:
    """``B = (I - ys'/s'y) B (I - sy'/s'y) + yy'/s'y`` expanded into a rank-2 correction."""
    sy = s.dot(y)
    if sy.abs() <= tol:
        return
    Bs = torch.mv(B, s)
    c = s.dot(Bs) / sy**2 + 1 / sy
    rank2_(B, y, c * y - torch.mv(B.mT, s) / sy, Bs, -y / sy, w)


def psb_B_(B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, w: float) -> None:
    """Powell's symmetric Broyden: ``B += (rs' + sr')/s's - (r's) ss'/(s's)^2``, ``r = y - Bs``."""
    r = y - torch.mv(B, s)
    ss = safe_clip(s.dot(s))
    rank2_(B, r, s / ss, s, r / ss - s * (r.dot(s) / safe_clip(ss**2)), w)


def broyden_good_H_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, w: float) -> None:
    """``H -= (Hy - s) c'/c'y`` with ``c = H's``."""
    c = torch.mv(H.mT, s)
    H.addr_((torch.mv(H, y) - s) / safe_clip(c.dot(y)), c, alpha=-w)


def broyden_good_B_(B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, w: float) -> None:
    """``B += (y - Bs) s'/s's``."""
    B.addr_((y - torch.mv(B, s)) / safe_clip(s.dot(s)), s, alpha=w)


def broyden_bad_H_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, w: float) -> None:
    """``H += (s - Hy) y'/y'y``."""
    H.addr_((s - torch.mv(H, y)) / safe_clip(y.dot(y)), y, alpha=w)


def broyden_bad_B_(B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, w: float) -> None:
    """``B += (y - Bs) y'/y's``."""
    B.addr_((y - torch.mv(B, s)) / safe_clip(y.dot(s)), y, alpha=w)


def greenstadt1_H_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, c: torch.Tensor, w: float) -> None:
    """``H -= (Hy - s) c'/c'y`` with ``c`` the gradient."""
    H.addr_((torch.mv(H, y) - s) / safe_clip(c.dot(y)), c, alpha=-w)


def greenstadt2_H_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, w: float) -> None:
    """``H -= (Hy - s) c'/c'y`` with ``c = H H y``."""
    Hy = torch.mv(H, y)
    c = torch.mv(H, Hy)
    H.addr_((Hy - s) / safe_clip(c.dot(y)), c, alpha=-w)


def icum_H_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, w: float) -> None:
    """Column ``j = argmax|y|`` of H gets ``(s - Hy)/y_j``."""
    j = int(y.abs().argmax())
    H[:, j].add_((s - torch.mv(H, y)) / safe_clip(y[j]), alpha=w)


def thomas_H_(H: torch.Tensor, R: torch.Tensor, s: torch.Tensor, y: torch.Tensor, w: float) -> None:
    """Thomas's update of H along ``d = (R + |s|/2 I) s``, and of the metric R, both in place."""
    s_norm = torch.linalg.vector_norm(s)
    d = torch.mv(R, s).add_(s * (s_norm / 2))
    ds = safe_clip(d.dot(s))
    c = torch.mv(H.mT, d)
    R.diagonal().add_(s_norm)
    R.addr_(d, d / ds, alpha=-1)
    R.mul_(1 + s_norm)
    H.addr_((torch.mv(H, y) - s) / safe_clip(c.dot(y)), c, alpha=-w)


def pearson_H_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, w: float) -> None:
    """``H += (s - Hy) y'H/y'Hy``."""
    Hy = torch.mv(H, y)
    H.addr_((s - Hy) / safe_clip(y.dot(Hy)), Hy, alpha=w)


def mccormick_H_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, w: float) -> None:
    """``H += (s - Hy) s'/s'y``."""
    H.addr_((s - torch.mv(H, y)) / safe_clip(s.dot(y)), s, alpha=w)


def projected_newton_raphson_H_(H: torch.Tensor, R: torch.Tensor, s: torch.Tensor, y: torch.Tensor,
                                w: float) -> None:
    """``H -= Hy y'H/y'Hy`` (a projection) and ``R += (s - Ry) y'H/y'Hy`` (the restart matrix)."""
    Hy = torch.mv(H, y)
    yHy = safe_clip(y.dot(Hy))
    Ry = torch.mv(R, y)
    H.addr_(Hy / yHy, Hy, alpha=-w)
    R.addr_((s - Ry) / yHy, Hy)


# ------------------------------------------------------------------ modules
@fill_doc()
class BFGS(_InverseHessianUpdateStrategyDefaults):
    """Broyden-Fletcher-Goldfarb-Shanno quasi-Newton method, usually the most robust one.

    Keeps an n x n matrix (O(n^2) memory); use a line search or a trust region.

    Args:
{qn_args}
    References:
        Nocedal & Wright, "Numerical Optimization", 2nd ed., section 6.1.

    Examples:
        BFGS with backtracking line search:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.BFGS(), tz.m.Backtracking())

        with a fixed step:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.BFGS(), tz.m.LR(0.1))
    """

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        bfgs_H_(H, s, y, setting["tol"], w)

    def update_B_(self, B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        bfgs_B_(B, s, y, setting["tol"], w)


@fill_doc()
class SR1(_InverseHessianUpdateStrategyDefaults):
    """Symmetric rank-one quasi-Newton method; best with a trust region (``inverse=False``).

    ``tol`` is the test ``|z'y| <= tol |y| |z|`` that skips an update (Nocedal & Wright p.146).

    Args:
{qn_args}
    References:
        Nocedal & Wright, "Numerical Optimization", 2nd ed., section 6.2.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.SR1(), tz.m.LR(0.1))
    """

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        sr1_(H, s, y, setting["tol"], w)

    def update_B_(self, B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        sr1_(B, y, s, setting["tol"], w)


@fill_doc()
class DFP(_InverseHessianUpdateStrategyDefaults):
    """Davidon-Fletcher-Powell quasi-Newton method; use a trust region or an accurate line search.

    Args:
{qn_args}
    References:
        Fletcher & Powell, "A rapidly convergent descent method for minimization", The Computer
        Journal 6(2), 1963. doi:10.1093/comjnl/6.2.163

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.DFP(), tz.m.StrongWolfe())
    """

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        dfp_H_(H, s, y, setting["tol"], w)

    def update_B_(self, B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        dfp_B_(B, s, y, setting["tol"], w)


@fill_doc(inverse="False")
class PSB(_HessianUpdateStrategyDefaults):
    """Powell's symmetric Broyden method (keeps the Hessian approximation B only).

    Args:
{qn_args}
    References:
        Spedicato & Huang, "Numerical experience with Newton-like methods for nonlinear algebraic
        systems", Computing 58(1), 1997. doi:10.1007/bf02684472

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.PSB(), tz.m.Backtracking())
    """

    def update_B_(self, B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        psb_B_(B, s, y, w)


@fill_doc()
class BroydenGood(_InverseHessianUpdateStrategyDefaults):
    """Broyden's "good" method; use a trust region or an accurate line search.

    Args:
{qn_args}
    References:
        Spedicato & Huang, Computing 58(1), 1997. doi:10.1007/bf02684472

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.BroydenGood(), tz.m.StrongWolfe())
    """

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        broyden_good_H_(H, s, y, w)

    def update_B_(self, B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        broyden_good_B_(B, s, y, w)


@fill_doc()
class BroydenBad(_InverseHessianUpdateStrategyDefaults):
    """Broyden's "bad" method; use a trust region or an accurate line search.

    Args:
{qn_args}
    References:
        Spedicato & Huang, Computing 58(1), 1997. doi:10.1007/bf02684472

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.BroydenBad(), tz.m.StrongWolfe())
    """

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        broyden_bad_H_(H, s, y, w)

    def update_B_(self, B: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        broyden_bad_B_(B, s, y, w)


@fill_doc()
class Greenstadt1(_InverseHessianUpdateStrategyDefaults):
    """Greenstadt's first method: ``H -= (Hy - s) c'/c'y`` with ``c`` the current gradient.

    (torchzero 0.4.4 names ``c`` the previous gradient but passes the current one; so do we.)

    Args:
{qn_args}
    References:
        Spedicato & Huang, Computing 58(1), 1997. doi:10.1007/bf02684472

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.Greenstadt1(), tz.m.StrongWolfe())
    """

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        greenstadt1_H_(H, s, y, g, w)


@fill_doc()
class Greenstadt2(_InverseHessianUpdateStrategyDefaults):
    """Greenstadt's second method: ``H -= (Hy - s) c'/c'y`` with ``c = HHy``; use a line search.

    Args:
{qn_args}
    References:
        Spedicato & Huang, Computing 58(1), 1997. doi:10.1007/bf02684472

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.Greenstadt2(), tz.m.StrongWolfe())
    """

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        greenstadt2_H_(H, s, y, w)


@fill_doc()
class ICUM(_InverseHessianUpdateStrategyDefaults):
    """Inverse column-updating method: one column of H changes per step (the cheapest update).

    Args:
{qn_args}
    References:
        Lopes & Martinez, "Convergence properties of the inverse column-updating method",
        Optimization Methods & Software 6(2), 1995. doi:10.1080/10556789508805628

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.ICUM(), tz.m.StrongWolfe())
    """

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        icum_H_(H, s, y, w)


@fill_doc()
class ThomasOptimalMethod(_InverseHessianUpdateStrategyDefaults):
    """Thomas's "optimal" quasi-Newton method (keeps a second n x n matrix R); use a line search.

    Args:
{qn_args}
    References:
        Thomas, "Sequential estimation techniques for quasi-Newton algorithms", PhD thesis,
        Cornell University, 1975.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.ThomasOptimalMethod(), tz.m.StrongWolfe())
    """

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        if "R" not in state:
            state["R"] = torch.eye(H.size(-1), device=H.device, dtype=H.dtype)
        thomas_H_(H, state["R"], s, y, w)

    def reset_P(self, P: torch.Tensor, s: torch.Tensor, y: torch.Tensor, inverse: bool, init_scale: Any,
                state: State) -> None:
        super().reset_P(P, s, y, inverse, init_scale, state)
        for st in self.state.values():
            st.pop("R", None)


@fill_doc()
class Pearson(_InverseHessianUpdateStrategyDefaults):
    """Pearson's method: ``H += (s - Hy) y'H/y'Hy``; use a line search.

    Args:
{qn_args}
    References:
        Pearson, "Variable metric methods of minimisation", The Computer Journal 12(2), 1969.
        doi:10.1093/comjnl/12.2.171

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.Pearson(), tz.m.StrongWolfe())
    """

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        pearson_H_(H, s, y, w)


@fill_doc()
class McCormick(_InverseHessianUpdateStrategyDefaults):
    """McCormick's method (Pearson's "Algorithm 2"): ``H += (s - Hy) s'/s'y``; use a line search.

    Args:
{qn_args}
    References:
        Pearson, "Variable metric methods of minimisation", The Computer Journal 12(2), 1969.
        doi:10.1093/comjnl/12.2.171

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.McCormick(), tz.m.StrongWolfe())
    """

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        mccormick_H_(H, s, y, w)


@fill_doc(restart_interval="'auto'", inverse=None)
class ProjectedNewtonRaphson(HessianUpdateStrategy):
    """Projected Newton-Raphson (Pearson's "Algorithm 7"): H is a projection that a restart replaces
    by a second matrix R, itself built from the secant pairs; use a line search.

    Args:
{qn_args}
    References:
        Pearson, "Variable metric methods of minimisation", The Computer Journal 12(2), 1969.
        doi:10.1093/comjnl/12.2.171

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.ProjectedNewtonRaphson(), tz.m.StrongWolfe())
    """

    def __init__(self, init_scale: InitScale = "auto", tol: float = 1e-32, ptol: float | None = 1e-32,
                 ptol_restart: bool = False, gtol: float | None = 1e-32,
                 restart_interval: int | Literal["auto"] | None = "auto", beta: float | None = None,
                 update_freq: int = 1, scale_first: bool = False, concat_params: bool = True,
                 inner: Chainable | None = None, *, scale_second: bool = False):
        super().__init__(None, init_scale=init_scale, tol=tol, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
                         restart_interval=restart_interval, beta=beta, update_freq=update_freq,
                         scale_first=scale_first, scale_second=scale_second, concat_params=concat_params,
                         inverse=True, inner=inner)

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        if "R" not in state:
            state["R"] = torch.eye(H.size(-1), device=H.device, dtype=H.dtype)
        projected_newton_raphson_H_(H, state["R"], s, y, w)

    def reset_P(self, P: torch.Tensor, s: torch.Tensor, y: torch.Tensor, inverse: bool, init_scale: Any,
                state: State) -> None:
        if "R" not in state:
            state["R"] = torch.eye(P.size(-1), device=P.device, dtype=P.dtype)
        P.copy_(state["R"])
