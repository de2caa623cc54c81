"""Self-scaling and classical variable-metric methods: SSVM, NewSSM, Hoshino, Fletcher's VMM,
Shor's r-algorithm, and the gradient correction of Hoshino (1972).

As in :mod:`.full_matrix`, each update is one in-place ``addr_``/``addmm_`` on the stored matrix
(SSVM also rescales it); ``w = 1 - beta`` is the momentum weight.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from ...core.module import Chainable
from ...core.transform import TensorTransform
from .defaults import _InverseHessianUpdateStrategyDefaults
from .hessian_update import HessianUpdateStrategy, InitScale, fill_doc, rank2_, safe_clip

__all__ = ["SSVM", "NewSSM", "Horisho", "FletcherVMM", "ShorR", "GradientCorrection"]

State = dict[str, Any]
Setting = Mapping[str, Any]
Switch = tuple[float, float] | Literal[1, 2, 3, 4]


# ------------------------------------------------------------------ formulas
def _ssvm_phi_theta(switch: Switch, sy: torch.Tensor, yHy: torch.Tensor, e: torch.Tensor) -> tuple[Any, Any]:
    """Oren & Spedicato's choice of the scaling ``phi`` and the Broyden-class parameter ``theta``."""
    if isinstance(switch, tuple):
        return switch
    o, t = sy, yHy
    if switch in (1, 3):
        if e / o <= 1:
            return e / safe_clip(o), 0
        if o / t >= 1:
            return o / safe_clip(t), 1
        denom = safe_clip(e * t - o**2)
        return 1, (o * (e - o) / denom if switch == 1 else o * (t - o) / denom)
    if switch == 2:
        t, o, e = safe_clip(t), safe_clip(o), safe_clip(e)
        return (e / t) ** 0.5, 1 / (1 + (t * e / o**2) ** 0.5)
    return e / safe_clip(t), 1 / 2  # switch == 4


def ssvm_H_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, switch: Switch, tol: float,
            w: float) -> None:
    """``H = u (H - Hy y'H/y'Hy + theta vv') + ss'/s'y``; skipped when ``s'y < tol``."""
    Hy = torch.mv(H, y)
    gHy = safe_clip(g.dot(Hy))
    yHy = safe_clip(y.dot(Hy))
    sy = s.dot(y)
    if sy < tol:
        return
    v = (s / sy - Hy / yHy) * yHy.sqrt()
    gs = g.dot(s)
    phi, theta = _ssvm_phi_theta(switch, sy, yHy, gs / gHy)
    u = phi * (gs / gHy) + (1 - phi) * (sy / yHy)
    HTy = torch.mv(H.mT, y)
    H.mul_(1 - w + w * u)
    H.addmm_(torch.stack((Hy, v, s), 1), torch.stack((-u / yHy * HTy, u * theta * v, s / sy), 0), alpha=w)


def hoshino_H_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, tol: float, w: float) -> None:
    """Hoshino's update; skipped when ``|y's| <= tol``."""
    Hy = torch.mv(H, y)
    ys = y.dot(s)
    if ys.abs() <= tol:
        return
    yHy = y.dot(Hy)
    denom = safe_clip(ys + yHy)
    HTy = torch.mv(H.mT, y)
    a = 1 + (2 * yHy) / ys
    rank2_(H, s, (a * s - HTy) / denom, Hy, -(s + HTy) / denom, w)


def fletcher_vmm_H_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, tol: float, w: float) -> None:
    """Fletcher's (1970) update; skipped when ``|s'y| < tol``."""
    sy = s.dot(y)
    if sy.abs() < tol:
        return
    Hy = torch.mv(H, y)
    HTy = torch.mv(H.mT, y)
    c = 1 + y.dot(Hy) / sy
    rank2_(H, s, (c * s - HTy) / sy, Hy, -s / sy, w)


def new_ssm_H_(H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, f: torch.Tensor, f_prev: torch.Tensor,
               tol: float, type: int, w: float) -> None:
    """Moghrabi et al.'s self-scaling update, using the function values; skipped when ``s'y < tol``."""
    sy = s.dot(y)
    if sy < tol:
        return
    Hy = torch.mv(H, y)
    HTy = torch.mv(H.mT, y)
    if type == 1:
        pba = (2 * sy + 2 * (f - f_prev)) / sy
    else:
        pba = (f_prev - f + 1 / (2 * sy)) / sy
    c = 1 / pba + y.dot(Hy) / sy
    rank2_(H, Hy, -s / sy, s, (c * s - HTy) / sy, w)


def shor_r_(H: torch.Tensor, y: torch.Tensor, alpha: float, w: float) -> None:
    """Space dilation along ``Hy``: ``H -= (1 - alpha^2) Hy y'H/y'Hy``."""
    Hy = torch.mv(H, y)
    H.addr_(Hy / safe_clip(y.dot(Hy)), Hy, alpha=-(1 - alpha**2) * w)


def _shared(init_scale: Any, tol: Any, ptol: Any, ptol_restart: Any, gtol: Any, restart_interval: Any, beta: Any,
            update_freq: Any, scale_first: Any, scale_second: Any, concat_params: Any,
            inner: Any) -> dict[str, Any]:
    return dict(init_scale=init_scale, tol=tol, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
                restart_interval=restart_interval, beta=beta, update_freq=update_freq, scale_first=scale_first,
                scale_second=scale_second, concat_params=concat_params, inverse=True, inner=inner)


# ------------------------------------------------------------------ modules
@fill_doc(inverse=None)
class SSVM(HessianUpdateStrategy):
    """Self-scaling variable metric method of Oren & Spedicato; use a line search.

    Args:
        switch: how the scaling ``phi`` and the Broyden parameter ``theta`` are chosen: 1, 2, 3 or 4
            (the paper's switches), or a fixed ``(phi, theta)`` pair. Defaults to 3.
{qn_args}
    References:
        Oren & Spedicato, "Optimal conditioning of self-scaling variable metric algorithms",
        Mathematical Programming 10(1), 1976. doi:10.1007/bf01580654

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.SSVM(), tz.m.StrongWolfe())
    """

    def __init__(self, switch: Switch = 3, init_scale: InitScale = "auto", tol: float = 1e-32,
                 ptol: float | None = 1e-32, ptol_restart: bool = False, gtol: float | None = 1e-32,
                 restart_interval: int | Literal["auto"] | None = None, beta: float | None = None,
                 update_freq: int = 1, scale_first: bool = False, concat_params: bool = True,
                 inner: Chainable | None = None, *, scale_second: bool = False):
        ok = (switch in (1, 2, 3, 4) and not isinstance(switch, bool)) if not isinstance(switch, tuple) else (
            len(switch) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in switch))
        if not ok:
            raise ValueError(f"SSVM: `switch` must be 1, 2, 3, 4 or a (phi, theta) pair of numbers, got {switch!r}")
        super().__init__(dict(switch=switch), **_shared(init_scale, tol, ptol, ptol_restart, gtol, restart_interval,
                                                        beta, update_freq, scale_first, scale_second,
                                                        concat_params, inner))

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        ssvm_H_(H, s, y, g, setting["switch"], setting["tol"], w)


@fill_doc(inverse=None)
class NewSSM(HessianUpdateStrategy):
    """Self-scaling quasi-Newton method of Moghrabi et al. (uses the loss); needs a line search
    such as ``tz.m.StrongWolfe()``.

    Args:
        type: which of the paper's two scalings: 1 or 2. Defaults to 1.
{qn_args}
    References:
        Moghrabi, Hassan & Askar, "New self-scaling quasi-Newton methods for unconstrained
        optimization", Int. J. Math. Comput. Sci. 17, 2022.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.NewSSM(), tz.m.StrongWolfe())
    """

    def __init__(self, type: Literal[1, 2] = 1, init_scale: InitScale = "auto", tol: float = 1e-32,
                 ptol: float | None = 1e-32, ptol_restart: bool = False, gtol: float | None = 1e-32,
                 restart_interval: int | Literal["auto"] | None = None, beta: float | None = None,
                 update_freq: int = 1, scale_first: bool = False, concat_params: bool = True,
                 inner: Chainable | None = None, *, scale_second: bool = False):
        if type not in (1, 2) or isinstance(type, bool):
            raise ValueError(f"NewSSM: `type` must be 1 or 2, got {type!r}")
        super().__init__(dict(type=type), uses_loss=True,
                         **_shared(init_scale, tol, ptol, ptol_restart, gtol, restart_interval, beta, update_freq,
                                   scale_first, scale_second, concat_params, inner))

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        new_ssm_H_(H, s, y, state["f"], state["f_prev"], setting["tol"], setting["type"], w)


@fill_doc()
class Horisho(_InverseHessianUpdateStrategyDefaults):
    """Hoshino's variable metric method (torchzero's spelling of the name); use a line search.

    Args:
{qn_args}
    References:
        Hoshino, "A formulation of variable metric methods", IMA Journal of Applied Mathematics
        10(3), 1972. doi:10.1093/imamat/10.3.394

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.Horisho(), tz.m.StrongWolfe())
    """

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        hoshino_H_(H, s, y, setting["tol"], w)


@fill_doc()
class FletcherVMM(_InverseHessianUpdateStrategyDefaults):
    """Fletcher's variable metric method; use a line search.

    Args:
{qn_args}
    References:
        Fletcher, "A new approach to variable metric algorithms", The Computer Journal 13(3), 1970.
        doi:10.1093/comjnl/13.3.317

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.FletcherVMM(), tz.m.StrongWolfe())
    """

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        fletcher_vmm_H_(H, s, y, setting["tol"], w)


@fill_doc(init_scale="1", inverse=None)
class ShorR(HessianUpdateStrategy):
    """Shor's r-algorithm (space dilation along the gradient difference).

    It has no step-size scaling of its own: use a line search that oversteps a little, e.g.
    ``[tz.m.StrongWolfe(a_init="quadratic", fallback=True), tz.m.Mul(1.2)]``.

    Args:
        alpha: dilation coefficient; H loses ``1 - alpha^2`` of its extent along ``Hy``. Defaults to 0.5.
{qn_args}
    References:
        Burke, Lewis & Overton, "The speed of Shor's R-algorithm", IMA Journal of Numerical
        Analysis 28(4), 2008. doi:10.1093/imanum/drn008

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.ShorR(),
        ...                    tz.m.StrongWolfe(a_init="quadratic", fallback=True), tz.m.Mul(1.2))
    """

    def __init__(self, alpha: float = 0.5, init_scale: InitScale = 1, tol: float = 1e-32,
                 ptol: float | None = 1e-32, ptol_restart: bool = False, gtol: float | None = 1e-32,
                 restart_interval: int | Literal["auto"] | None = None, beta: float | None = None,
                 update_freq: int = 1, scale_first: bool = False, concat_params: bool = True,
                 inner: Chainable | None = None, *, scale_second: bool = False):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"ShorR: `alpha` must be a number in [0, 1], got {alpha!r}")
        super().__init__(dict(alpha=alpha), **_shared(init_scale, tol, ptol, ptol_restart, gtol, restart_interval,
                                                      beta, update_freq, scale_first, scale_second, concat_params,
                                                      inner))

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: State, setting: Setting) -> None:
        shor_r_(H, y, setting["alpha"], w)


class GradientCorrection(TensorTransform):
    """Moves the input to where it would be at the minimum along the last step, assuming a quadratic:
    ``g - y (s'g / s'y)``, with ``s`` and ``y`` the differences of parameters and inputs since the
    previous step (the first step passes the input through).

    Useful as ``inner`` of a second-order method with an inexact line search.

    References:
        Hoshino, "A formulation of variable metric methods", IMA Journal of Applied Mathematics
        10(3), 1972. doi:10.1093/imamat/10.3.394

    Examples:
        L-BFGS with gradient correction:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.LBFGS(inner=tz.m.GradientCorrection()),
        ...                    tz.m.Backtracking())
    """

    def __init__(self) -> None:
        super().__init__()

    @torch.no_grad()
    def multi_tensor_apply(self, tensors: list[torch.Tensor], params: list[torch.Tensor],
                           grads: list[torch.Tensor] | None, loss: Any, states: list[dict[str, Any]],
                           settings: Sequence[Mapping[str, Any]]) -> Sequence[torch.Tensor]:
        if "p_prev" not in states[0]:
            for st, p, t in zip(states, params, tensors, strict=True):
                st["p_prev"] = p.detach().clone()
                st["g_prev"] = t.clone()
            return tensors
        p_prev = [st["p_prev"] for st in states]
        g_prev = [st["g_prev"] for st in states]
        s = torch._foreach_sub(params, p_prev)
        y = torch._foreach_sub(tensors, g_prev)
        sy = safe_clip(_global_dot(s, y))
        coef = _global_dot(s, tensors) / sy
        out = torch._foreach_sub(tensors, torch._foreach_mul(y, coef))
        torch._foreach_copy_(p_prev, params)
        torch._foreach_copy_(g_prev, tensors)
        return out


def _global_dot(a: list[torch.Tensor] | tuple[torch.Tensor, ...],
                b: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``sum_i a_i . b_i`` over a list of tensors."""
    return torch.stack([t.sum() for t in torch._foreach_mul(a, b)]).sum()
