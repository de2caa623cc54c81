"""Adam."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ... import ops
from ...core.elementwise import ElementwiseTransform

__all__ = ["Adam"]


def debiased_step_size(step: int, beta1: float | None, beta2: float | None, pow: float, alpha: float) -> float:
    """``alpha * (1 - beta2**step)**(1/pow) / (1 - beta1**step)``; a ``None`` beta is left out."""
    s = alpha
    if beta1 is not None:
        s /= 1.0 - beta1**step
    if beta2 is not None:
        s *= (1.0 - beta2**step) ** (1.0 / pow)
    return s


class Adam(ElementwiseTransform):
    """Adam: the EMA of the update divided by the root of the EMA of its squares, debiased.

    Identical to ``torch.optim.Adam`` when followed by ``LR``. Runs as one native kernel per
    bucket; followed only by ``LR`` at the end of a chain, it also applies the step to the
    parameters in the same pass.

    Args:
        beta1: first-moment decay. Defaults to 0.9.
        beta2: second-moment decay. Defaults to 0.999.
        eps: added to the denominator. Defaults to 1e-8.
        amsgrad: divide by the running maximum of the second moment. Defaults to False.
        alpha: step size multiplier. Defaults to 1.
        debias: apply Adam's bias corrections. Defaults to True.
        pow: power of the second moment and of its root. Defaults to 2.

    References:
        Kingma and Ba, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.Adam(), tz.m.LR(1e-3))
    """

    _split = "both"

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, amsgrad: bool = False,
                 alpha: float = 1.0, debias: bool = True, pow: float = 2):
        super().__init__(dict(beta1=beta1, beta2=beta2, eps=eps, amsgrad=amsgrad, alpha=alpha, debias=debias,
                              pow=pow))
        self.add_projected_keys("grad", "exp_avg")
        self.add_projected_keys("grad_sq", "exp_avg_sq", "max_exp_avg_sq")

    def _state_specs(self, s: Mapping[str, Any]) -> dict[str, str]:
        if s["amsgrad"]:
            return {"exp_avg": "zeros", "exp_avg_sq": "zeros", "max_exp_avg_sq": "zeros"}
        return {"exp_avg": "zeros", "exp_avg_sq": "zeros"}

    def _begin(self, s: Mapping[str, Any], update: bool) -> int:
        if update:
            return self.increment_counter("step", 0) + 1
        return self.global_state.get("step", 0) + 1

    @staticmethod
    def _step_size(s: Mapping[str, Any], step: int) -> float:
        if s["debias"]:
            return debiased_step_size(step, s["beta1"], s["beta2"], s["pow"], s["alpha"])
        return s["alpha"]

    def _kernel(self, tensors, params, state, out, s, out_scale, accumulate, step):  # type: ignore[no-untyped-def]
        ops.adam_(tensors, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"), out,
                  s["beta1"], s["beta2"], s["eps"], self._step_size(s, step), s["pow"], out_scale, accumulate)

    def _apply_only(self, tensors, state, s, step):  # type: ignore[no-untyped-def]
        d = state["max_exp_avg_sq"] if s["amsgrad"] else state["exp_avg_sq"]
        p = s["pow"]
        root = d.sqrt() if p == 2 else d.abs() if p == 1 else d.pow(1 / p)
        u = state["exp_avg"] * self._step_size(s, step) / (root + s["eps"])
        out, i = [], 0
        for t in tensors:
            n = t.numel()
            out.append(u[i:i + n].view_as(t))
            i += n
        return out


