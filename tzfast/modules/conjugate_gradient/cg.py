"""The nonlinear conjugate gradient methods: the classical ``beta`` formulas.

Notation (torchzero's sign convention, where the direction ``d`` is subtracted from the
parameters): ``g`` the current input (the gradient), ``g_prev`` the previous one,
``y = g - g_prev``, ``d_prev`` the previous direction. ``beta`` is 0 where its denominator is
within ``2 * tiny`` of 0. Each method needs a line search after it, e.g.
``tz.m.StrongWolfe(c2=0.1, a_init="first-order")``.
"""
from __future__ import annotations

import torch

from ...core.module import Chainable
from .base import ConjugateGradientBase, RestartInterval, zero_if_tiny

__all__ = ["DYHS", "ConjugateDescent", "DaiYuan", "FletcherReeves", "HagerZhang", "HestenesStiefel", "LiuStorey",
           "PolakRibiere"]

Tensor = torch.Tensor


class PolakRibiere(ConjugateGradientBase):
    """Polak-Ribière-Polyak conjugate gradient: ``beta = g'y / g_prev'g_prev`` (PRP+ with ``clip_beta``).

    Args:
        clip_beta: replace a negative ``beta`` by 0 (PRP+). Defaults to True.
        restart_interval: forget the history every this many steps; ``'auto'`` is the number of
            variables + 1, None never restarts. Defaults to 'auto'.
        inner: modules applied to the input before the direction is formed. Defaults to None.

    References:
        Polak, E. & Ribière, G. (1969). Note sur la convergence de méthodes de directions conjuguées.
        Revue française d'informatique et de recherche opérationnelle 3(16), 35-43.
        Polyak, B. T. (1969). The conjugate gradient method in extremal problems. USSR Computational
        Mathematics and Mathematical Physics 9(4), 94-112. doi:10.1016/0041-5553(69)90035-4

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.PolakRibiere(), tz.m.StrongWolfe(c2=0.1, a_init="first-order"))
    """

    def __init__(self, clip_beta: bool = True, restart_interval: RestartInterval = "auto",
                 inner: Chainable | None = None):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval, inner=inner)

    def get_beta(self, p: list[Tensor], g: Tensor, g_prev: Tensor, d_prev: Tensor) -> Tensor:
        return zero_if_tiny(g.dot(g - g_prev), g_prev.dot(g_prev))


class FletcherReeves(ConjugateGradientBase):
    """Fletcher-Reeves conjugate gradient: ``beta = g'g / g_prev'g_prev``.

    Args:
        restart_interval: forget the history every this many steps; ``'auto'`` is the number of
            variables + 1, None never restarts. Defaults to 'auto'.
        clip_beta: replace a negative ``beta`` by 0. Defaults to False.
        inner: modules applied to the input before the direction is formed. Defaults to None.

    References:
        Fletcher, R. & Reeves, C. M. (1964). Function minimization by conjugate gradients. The Computer
        Journal 7(2), 149-154. doi:10.1093/comjnl/7.2.149

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.FletcherReeves(),
        ...                    tz.m.StrongWolfe(c2=0.1, a_init="first-order"))
    """

    def __init__(self, restart_interval: RestartInterval = "auto", clip_beta: bool = False,
                 inner: Chainable | None = None):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval, inner=inner)

    def initialize(self, p: list[Tensor], g: Tensor) -> None:
        self.global_state["prev_gg"] = g.dot(g)

    def get_beta(self, p: list[Tensor], g: Tensor, g_prev: Tensor, d_prev: Tensor) -> Tensor:
        gg = g.dot(g)
        beta = zero_if_tiny(gg, self.global_state["prev_gg"])
        self.global_state["prev_gg"] = gg
        return beta


class HestenesStiefel(ConjugateGradientBase):
    """Hestenes-Stiefel conjugate gradient: ``beta = -g'y / d_prev'y``.

    Args:
        restart_interval: forget the history every this many steps; ``'auto'`` is the number of
            variables + 1, None never restarts. Defaults to 'auto'.
        clip_beta: replace a negative ``beta`` by 0. Defaults to False.
        inner: modules applied to the input before the direction is formed. Defaults to None.

    References:
        Hestenes, M. R. & Stiefel, E. (1952). Methods of conjugate gradients for solving linear systems.
        Journal of Research of the National Bureau of Standards 49(6), 409-436. doi:10.6028/jres.049.044

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.HestenesStiefel(),
        ...                    tz.m.StrongWolfe(c2=0.1, a_init="first-order"))
    """

    def __init__(self, restart_interval: RestartInterval = "auto", clip_beta: bool = False,
                 inner: Chainable | None = None):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval, inner=inner)

    def get_beta(self, p: list[Tensor], g: Tensor, g_prev: Tensor, d_prev: Tensor) -> Tensor:
        y = g - g_prev
        return zero_if_tiny(g.dot(y), d_prev.dot(y), strict=True).neg()


class DaiYuan(ConjugateGradientBase):
    """Dai-Yuan conjugate gradient: ``beta = -g'g / d_prev'y``.

    Args:
        restart_interval: forget the history every this many steps; ``'auto'`` is the number of
            variables + 1, None never restarts. Defaults to 'auto'.
        clip_beta: replace a negative ``beta`` by 0. Defaults to False.
        inner: modules applied to the input before the direction is formed. Defaults to None.

    References:
        Dai, Y. H. & Yuan, Y. (1999). A nonlinear conjugate gradient method with a strong global
        convergence property. SIAM Journal on Optimization 10(1), 177-182. doi:10.1137/S1052623497318992

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.DaiYuan(), tz.m.StrongWolfe(c2=0.1))
    """

    def __init__(self, restart_interval: RestartInterval = "auto", clip_beta: bool = False,
                 inner: Chainable | None = None):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval, inner=inner)

    def get_beta(self, p: list[Tensor], g: Tensor, g_prev: Tensor, d_prev: Tensor) -> Tensor:
        return zero_if_tiny(g.dot(g), d_prev.dot(g - g_prev)).neg()


class LiuStorey(ConjugateGradientBase):
    """Liu-Storey conjugate gradient: ``beta = g'y / g_prev'd_prev``.

    Args:
        restart_interval: forget the history every this many steps; ``'auto'`` is the number of
            variables + 1, None never restarts. Defaults to 'auto'.
        clip_beta: replace a negative ``beta`` by 0. Defaults to False.
        inner: modules applied to the input before the direction is formed. Defaults to None.

    References:
        Liu, Y. & Storey, C. (1991). Efficient generalized conjugate gradient algorithms, part 1:
        theory. Journal of Optimization Theory and Applications 69(1), 129-137.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.LiuStorey(), tz.m.StrongWolfe(c2=0.1, a_init="first-order"))
    """

    def __init__(self, restart_interval: RestartInterval = "auto", clip_beta: bool = False,
                 inner: Chainable | None = None):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval, inner=inner)

    def get_beta(self, p: list[Tensor], g: Tensor, g_prev: Tensor, d_prev: Tensor) -> Tensor:
        return zero_if_tiny(g.dot(g - g_prev), g_prev.dot(d_prev))


class ConjugateDescent(ConjugateGradientBase):
    """Fletcher's conjugate descent: ``beta = g'g / g_prev'd_prev``.

    Args:
        restart_interval: forget the history every this many steps; ``'auto'`` is the number of
            variables + 1, None never restarts. Defaults to 'auto'.
        clip_beta: replace a negative ``beta`` by 0. Defaults to False.
        inner: modules applied to the input before the direction is formed. Defaults to None.

    References:
        Fletcher, R. (1987). Practical Methods of Optimization, 2nd ed., Wiley, section 4.1.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.ConjugateDescent(),
        ...                    tz.m.StrongWolfe(c2=0.1, a_init="first-order"))
    """

    def __init__(self, restart_interval: RestartInterval = "auto", clip_beta: bool = False,
                 inner: Chainable | None = None):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval, inner=inner)

    def get_beta(self, p: list[Tensor], g: Tensor, g_prev: Tensor, d_prev: Tensor) -> Tensor:
        return zero_if_tiny(g.dot(g), g_prev.dot(d_prev))


class HagerZhang(ConjugateGradientBase):
    """Hager-Zhang conjugate gradient: ``beta = -(y - 2 d_prev y'y / d_prev'y)'g / d_prev'y``.

    Computed from dot products (``g'y - 2 (y'y / d_prev'y) d_prev'g``), with no vector beyond ``y``.

    Args:
        restart_interval: forget the history every this many steps; ``'auto'`` is the number of
            variables + 1, None never restarts. Defaults to 'auto'.
        clip_beta: replace a negative ``beta`` by 0. Defaults to False.
        inner: modules applied to the input before the direction is formed. Defaults to None.

    References:
        Hager, W. W. & Zhang, H. (2005). A new conjugate gradient method with guaranteed descent and an
        efficient line search. SIAM Journal on Optimization 16(1), 170-192. doi:10.1137/030601880

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.HagerZhang(), tz.m.StrongWolfe(c2=0.1, a_init="first-order"))
    """

    def __init__(self, restart_interval: RestartInterval = "auto", clip_beta: bool = False,
                 inner: Chainable | None = None):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval, inner=inner)

    def get_beta(self, p: list[Tensor], g: Tensor, g_prev: Tensor, d_prev: Tensor) -> Tensor:
        y = g - g_prev
        denom = d_prev.dot(y)
        num = y.dot(g) - 2 * (y.dot(y) / denom) * d_prev.dot(g)
        return zero_if_tiny(num, denom).neg()


class DYHS(ConjugateGradientBase):
    """Dai-Yuan / Hestenes-Stiefel hybrid: ``beta = max(0, min(beta_DY, beta_HS))``.

    Args:
        restart_interval: forget the history every this many steps; ``'auto'`` is the number of
            variables + 1, None never restarts. Defaults to 'auto'.
        clip_beta: replace a negative ``beta`` by 0. Defaults to False.
        inner: modules applied to the input before the direction is formed. Defaults to None.

    References:
        Dai, Y. H. & Yuan, Y. (2001). An efficient hybrid conjugate gradient method for unconstrained
        optimization. Annals of Operations Research 103, 33-47.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.DYHS(), tz.m.StrongWolfe(c2=0.1, a_init="first-order"))
    """

    def __init__(self, restart_interval: RestartInterval = "auto", clip_beta: bool = False,
                 inner: Chainable | None = None):
        super().__init__(clip_beta=clip_beta, restart_interval=restart_interval, inner=inner)

    def get_beta(self, p: list[Tensor], g: Tensor, g_prev: Tensor, d_prev: Tensor) -> Tensor:
        y = g - g_prev
        denom = d_prev.dot(y)
        dy = (g.dot(g) / denom).neg()
        hs = (g.dot(y) / denom).neg()
        beta = torch.minimum(dy, hs)  # min of the two (each clipped at 0 first: same result)
        beta = torch.where(beta > 0, beta, torch.zeros_like(beta))  # NaN -> 0, as max(0, nan) in Python
        tiny = torch.finfo(denom.dtype).tiny * 2
        return torch.where(denom.abs() <= tiny, torch.zeros_like(beta), beta)
