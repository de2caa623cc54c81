"""``Graft``: the direction of one module's update with the norm of another's."""
from __future__ import annotations

from typing import Any

import torch

from ...core.module import Chainable
from ...core.objective import Objective
from ...core.operations import MultiOperationBase
from ..clipping.clipping import Metrics, _check_ord, _global_metric, _metric

__all__ = ["Graft", "GraftModules"]


def graft_(direction: list[torch.Tensor], magnitude: list[torch.Tensor], tensorwise: bool, ord: Metrics,
           eps: float, strength: float) -> list[torch.Tensor]:
    """Scales ``direction`` in place to the norm of ``magnitude`` (per tensor or over all of them).

    With ``strength`` s the target norm is ``s * |magnitude| + (1 - s) * |direction|``; the
    denominator ``|direction|`` is clamped below at ``eps``.
    """
    if not tensorwise:
        n_dir = _global_metric(direction, ord)
        n_mag = _global_metric(magnitude, ord)
        if strength != 1:
            n_mag = torch.lerp(n_mag, n_dir, 1 - strength)
        torch._foreach_mul_(direction, n_mag / n_dir.clamp(min=eps))
        return direction
    if not isinstance(ord, str) and float(ord) == 2:
        d_norms = list(torch._foreach_norm(direction))
        m_norms = list(torch._foreach_norm(magnitude))
    else:
        d_norms = [_metric(t, ord, None) for t in direction]
        m_norms = [_metric(t, ord, None) for t in magnitude]
    if strength != 1:
        torch._foreach_lerp_(m_norms, d_norms, 1 - strength)
    torch._foreach_clamp_min_(d_norms, eps)
    torch._foreach_div_(m_norms, d_norms)
    torch._foreach_mul_(direction, m_norms)
    return direction


class Graft(MultiOperationBase):
    """The output of ``direction`` rescaled to the norm of the output of ``magnitude``.

    Both chains receive a copy of the same input (``direction`` first); they share the step's
    loss and gradient.

    Args:
        direction: modules whose output gives the direction.
        magnitude: modules whose output gives the norm.
        tensorwise: norms per tensor (True) or over all tensors (False). Defaults to True.
        ord: norm order, or one of ``'mad'``, ``'std'``, ``'var'``, ``'sum'``, ``'l0'`` ...
            ``'l4'``, ``'linf'``. Defaults to 2.
        eps: the direction's norm is clamped below at this value. Defaults to 1e-6.
        strength: 1 takes the magnitude's norm, 0 keeps the direction's; values between
            interpolate. Defaults to 1.

    References:
        Agarwal, Anil, Hazan, Koren, Zhang. Disentangling Adaptive Gradient Methods from Learning
        Rates, arXiv:2002.11803.

    Examples:
        Shampoo's direction with Adam's step lengths:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.GraftModules(direction=tz.m.Shampoo(),
        ...                    magnitude=tz.m.Adam()), tz.m.LR(1e-3))
    """

    def __init__(self, direction: Chainable, magnitude: Chainable, tensorwise: bool = True, ord: Metrics = 2,
                 eps: float = 1e-6, strength: float = 1):
        who = type(self).__name__
        _check_ord(who, ord)
        if not isinstance(tensorwise, bool):
            raise TypeError(f"{who}: `tensorwise` must be a bool, got {type(tensorwise).__name__}")
        for name, value in (("eps", eps), ("strength", strength)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{who}: `{name}` must be a number, got {type(value).__name__}: {value!r}")
        if eps < 0:
            raise ValueError(f"{who}: `eps` must be >= 0, got {eps!r}")
        for name, value in (("direction", direction), ("magnitude", magnitude)):
            if value is None or isinstance(value, (int, float, torch.Tensor)):
                raise TypeError(f"{who}: `{name}` must be a module or a list of modules, got {type(value).__name__}")
        super().__init__(dict(tensorwise=tensorwise, ord=ord, eps=eps, strength=strength),
                         direction=direction, magnitude=magnitude)

    @torch.no_grad()
    def transform(self, objective: Objective, **operands: Any) -> list[torch.Tensor]:
        d = self.defaults
        return graft_(list(operands["direction"]), list(operands["magnitude"]), d["tensorwise"], d["ord"], d["eps"],
                      d["strength"])


GraftModules = Graft
