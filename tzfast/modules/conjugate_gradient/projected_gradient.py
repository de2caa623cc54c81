"""``ProjectedGradientMethod``: Pearson's projected gradient (conjugate directions by projection)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

from ...core.module import Chainable
from ..quasi_newton.hessian_update import HessianUpdateStrategy, InitScale, fill_doc, safe_clip

__all__ = ["ProjectedGradientMethod", "projected_gradient_H_"]


def projected_gradient_H_(H: torch.Tensor, y: torch.Tensor, w: float) -> None:
    """``H -= w * Hy (y'H) / y'Hy`` in place: one ``addr_`` (torchzero forms ``(Hy y') H``, an n^3 product)."""
    Hy = torch.mv(H, y)
    yH = torch.mv(H.mT, y)
    scale = -w / safe_clip(y.dot(Hy))
    H.addr_(Hy.mul_(scale), yH)


@fill_doc(init_scale="1", restart_interval="'auto'", inverse=None)
class ProjectedGradientMethod(HessianUpdateStrategy):
    """Pearson's projected gradient method: the gradient projected onto the subspace conjugate to the
    previous steps, ``H <- H - Hy y'H / y'Hy`` (H starts as the identity and is never a Hessian
    approximation; ``s`` is not used). Keeps an n x n matrix; use a line search after it, e.g.
    ``tz.m.StrongWolfe(c2=0.1, a_init="first-order")``. Not projected gradient descent.

    Args:
{qn_args}
    References:
        Pearson, J. D. (1969). Variable metric methods of minimisation. The Computer Journal 12(2),
        171-178 (algorithm 5 in section 6). doi:10.1093/comjnl/12.2.171

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.ProjectedGradientMethod(),
        ...                    tz.m.StrongWolfe(c2=0.1, a_init="first-order"))
    """

    def __init__(self, init_scale: InitScale = 1, tol: float = 1e-32, ptol: float | None = 1e-32,
                 ptol_restart: bool = False, gtol: float | None = 1e-32,
                 restart_interval: int | Literal["auto"] | None = "auto", beta: float | None = None,
                 update_freq: int = 1, scale_first: bool = False, concat_params: bool = True,
                 inner: Chainable | None = None, *, scale_second: bool = False):
        super().__init__(None, init_scale=init_scale, tol=tol, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
                         restart_interval=restart_interval, beta=beta, update_freq=update_freq,
                         scale_first=scale_first, scale_second=scale_second, concat_params=concat_params,
                         inverse=True, inner=inner)

    def update_H_(self, H: torch.Tensor, s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, w: float,
                  state: dict[str, Any], setting: Mapping[str, Any]) -> None:
        projected_gradient_H_(H, y, w)
