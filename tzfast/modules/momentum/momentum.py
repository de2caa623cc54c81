"""Momentum: EMA, heavy ball and Nesterov."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from ... import ops
from ...core.elementwise import ElementwiseTransform
from ...core.transform import Target

__all__ = ["EMA", "HeavyBall", "NAG"]

_EMA_INITS = ("zeros", "update")


class EMA(ElementwiseTransform):
    """Exponential moving average of the update.

    Args:
        momentum: decay (beta). Defaults to 0.9.
        dampening: the input is multiplied by ``1 - dampening``. Defaults to 0.
        debias: divide by ``1 - momentum**step`` as Adam does. Defaults to False.
        lerp: ``m = lerp(m, x, 1 - momentum)`` if True, else ``m = momentum*m + x``. Defaults to True.
        ema_init: initial value of the average, ``'zeros'`` or ``'update'``. Defaults to ``'zeros'``.
        target: what is transformed. Defaults to ``'update'``.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.EMA(0.9), tz.m.LR(1e-2))
    """

    def __init__(self, momentum: float = 0.9, dampening: float = 0, debias: bool = False, lerp: bool = True,
                 ema_init: Literal["zeros", "update"] = "zeros", target: Target = "update"):
        if ema_init not in _EMA_INITS:
            raise ValueError(f"{type(self).__name__}: `ema_init` must be one of {_EMA_INITS}, got {ema_init!r}")
        super().__init__(dict(momentum=momentum, dampening=dampening, debias=debias, lerp=lerp, ema_init=ema_init),
                         target=target)
        self.add_projected_keys("grad", "exp_avg")

    def _state_specs(self, s: Mapping[str, Any]) -> dict[str, str]:
        return {"exp_avg": "zeros" if s["ema_init"] == "zeros" else "input"}

    def _begin(self, s: Mapping[str, Any], update: bool) -> int:
        step = self.global_state.get("step", 0) + 1
        self.global_state["step"] = step
        return step

    def _kernel(self, tensors, params, state, out, s, out_scale, accumulate, step):  # type: ignore[no-untyped-def]
        if s["debias"]:
            out_scale = out_scale / (1.0 - s["momentum"] ** step)
        ops.ema_(tensors, state["exp_avg"], out, s["momentum"], s["dampening"], bool(s["lerp"]), out_scale,
                 accumulate)


class HeavyBall(EMA):
    """Polyak's heavy-ball momentum: ``m = momentum*m + x`` (an ``EMA`` with other defaults).

    Args:
        momentum: momentum. Defaults to 0.9.
        dampening: the input is multiplied by ``1 - dampening``. Defaults to 0.
        debias: divide by ``1 - momentum**step``. Defaults to False.
        lerp: use linear interpolation (an EMA). Defaults to False.
        ema_init: ``'zeros'`` or ``'update'``. Defaults to ``'update'``.
        target: what is transformed. Defaults to ``'update'``.

    References:
        Polyak, "Some methods of speeding up the convergence of iteration methods", 1964.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.HeavyBall(0.9), tz.m.LR(1e-2))
    """

    def __init__(self, momentum: float = 0.9, dampening: float = 0, debias: bool = False, lerp: bool = False,
                 ema_init: Literal["zeros", "update"] = "update", target: Target = "update"):
        super().__init__(momentum=momentum, dampening=dampening, debias=debias, lerp=lerp, ema_init=ema_init,
                         target=target)


class NAG(ElementwiseTransform):
    """Nesterov momentum: ``v = momentum*(v + x)``, output ``x + (1 - dampening)*v``.

    Args:
        momentum: momentum. Defaults to 0.9.
        dampening: dampening of the velocity term. Defaults to 0.
        lerp: ``v = lerp(v, x, 1 - momentum)`` instead. Defaults to False.
        target: what is transformed. Defaults to ``'update'``.

    References:
        Nesterov, "A method for solving the convex programming problem with convergence rate O(1/k^2)", 1983.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.NAG(0.9), tz.m.LR(1e-2))
    """

    def __init__(self, momentum: float = 0.9, dampening: float = 0, lerp: bool = False, target: Target = "update"):
        super().__init__(dict(momentum=momentum, dampening=dampening, lerp=lerp), target=target)
        self.add_projected_keys("grad", "velocity")

    def _state_specs(self, s: Mapping[str, Any]) -> dict[str, str]:
        return {"velocity": "zeros"}

    def _kernel(self, tensors, params, state, out, s, out_scale, accumulate, ctx):  # type: ignore[no-untyped-def]
        ops.nag_(tensors, state["velocity"], out, s["momentum"], s["dampening"], bool(s["lerp"]), out_scale,
                 accumulate)
