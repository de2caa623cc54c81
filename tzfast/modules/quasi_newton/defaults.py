"""The two constructor signatures shared by most quasi-Newton modules (``QN-inv`` and ``QN-H``)."""
from __future__ import annotations

from typing import Literal

from ...core.module import Chainable
from .hessian_update import HessianUpdateStrategy, InitScale

__all__ = ["_InverseHessianUpdateStrategyDefaults", "_HessianUpdateStrategyDefaults"]


class _InverseHessianUpdateStrategyDefaults(HessianUpdateStrategy):
    """A ``HessianUpdateStrategy`` with the shared defaults and ``inverse=True`` (torchzero's ``QN-inv``)."""

    def __init__(self, init_scale: InitScale = "auto", tol: float = 1e-32, ptol: float | None = 1e-32,
                 ptol_restart: bool = False, gtol: float | None = 1e-32,
                 restart_interval: int | Literal["auto"] | None = None, beta: float | None = None,
                 update_freq: int = 1, scale_first: bool = False, concat_params: bool = True,
                 inverse: bool = True, inner: Chainable | None = None, *, scale_second: bool = False):
        super().__init__(None, init_scale=init_scale, tol=tol, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
                         restart_interval=restart_interval, beta=beta, update_freq=update_freq,
                         scale_first=scale_first, scale_second=scale_second, concat_params=concat_params,
                         inverse=inverse, inner=inner)


class _HessianUpdateStrategyDefaults(HessianUpdateStrategy):
    """A ``HessianUpdateStrategy`` with the shared defaults and ``inverse=False`` (torchzero's ``QN-H``)."""

    def __init__(self, init_scale: InitScale = "auto", tol: float = 1e-32, ptol: float | None = 1e-32,
                 ptol_restart: bool = False, gtol: float | None = 1e-32,
                 restart_interval: int | Literal["auto"] | None = None, beta: float | None = None,
                 update_freq: int = 1, scale_first: bool = False, concat_params: bool = True,
                 inverse: bool = False, inner: Chainable | None = None, *, scale_second: bool = False):
        super().__init__(None, init_scale=init_scale, tol=tol, ptol=ptol, ptol_restart=ptol_restart, gtol=gtol,
                         restart_interval=restart_interval, beta=beta, update_freq=update_freq,
                         scale_first=scale_first, scale_second=scale_second, concat_params=concat_params,
                         inverse=inverse, inner=inner)
