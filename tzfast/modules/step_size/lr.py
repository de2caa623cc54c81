"""Learning rate modules."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...core.elementwise import ScaleTransform

__all__ = ["LR", "StepSize"]


class LR(ScaleTransform):
    """Multiplies the update by ``lr``; its ``lr`` is what LR schedulers change.

    Args:
        lr: the learning rate.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.Adam(), tz.m.LR(1e-3))
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    """

    def __init__(self, lr: float):
        super().__init__(dict(lr=lr))

    def _scale_of(self, s: Mapping[str, Any]) -> float:
        return s["lr"]


class StepSize(ScaleTransform):
    """``LR`` whose setting is named ``key`` (default ``'step_size'``) to avoid clashes.

    Args:
        step_size: the multiplier.
        key: name of the setting. Defaults to ``'step_size'``.
    """

    def __init__(self, step_size: float, key: str = "step_size"):
        if not isinstance(key, str):
            raise TypeError(f"StepSize: `key` must be a str, got {type(key).__name__}")
        super().__init__({"key": key, key: step_size})

    def _scale_of(self, s: Mapping[str, Any]) -> float:
        return s[s["key"]]
