"""Building blocks of adaptive methods: EMA of squares, its root, debiasing."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ... import ops
from ...core.elementwise import ElementwiseTransform, ScaleTransform
from ...core.transform import Target
from ..adaptive.adam import debiased_step_size

__all__ = ["EMASquared", "SqrtEMASquared", "Debias", "Debias2"]


class EMASquared(ElementwiseTransform):
    """Exponential moving average of ``|x|**pow`` (optionally its running maximum, AMSGrad).

    Args:
        beta: decay. Defaults to 0.999.
        amsgrad: output the running maximum of the average. Defaults to False.
        pow: power; the absolute value is used. Defaults to 2.
    """

    def __init__(self, beta: float = 0.999, amsgrad: bool = False, pow: float = 2):
        super().__init__(dict(beta=beta, pow=pow, amsgrad=amsgrad))
        self.add_projected_keys("grad_sq", "exp_avg_sq", "max_exp_avg_sq")

    def _state_specs(self, s: Mapping[str, Any]) -> dict[str, str]:
        if s["amsgrad"]:
            return {"exp_avg_sq": "zeros", "max_exp_avg_sq": "zeros"}
        return {"exp_avg_sq": "zeros"}

    _take_root = False

    def _root_scale(self, s: Mapping[str, Any], step: Any) -> float:
        return 1.0

    def _kernel(self, tensors, params, state, out, s, out_scale, accumulate, ctx):  # type: ignore[no-untyped-def]
        ops.ema_sq_(tensors, state["exp_avg_sq"], state.get("max_exp_avg_sq"), out, s["beta"], s["pow"],
                    self._take_root, out_scale * self._root_scale(s, ctx), accumulate)


class SqrtEMASquared(EMASquared):
    """Root of the exponential moving average of ``|x|**pow``, optionally debiased.

    Args:
        beta: decay. Defaults to 0.999.
        amsgrad: use the running maximum of the average. Defaults to False.
        debiased: divide by ``(1 - beta**step)**(1/pow)``. Defaults to False.
        pow: power and root. Defaults to 2.
    """

    _take_root = True

    def __init__(self, beta: float = 0.999, amsgrad: bool = False, debiased: bool = False, pow: float = 2):
        ElementwiseTransform.__init__(self, dict(beta=beta, pow=pow, amsgrad=amsgrad, debiased=debiased))
        self.add_projected_keys("grad_sq", "exp_avg_sq", "max_exp_avg_sq")

    def _begin(self, s: Mapping[str, Any], update: bool) -> int:
        step = self.global_state.get("step", 0) + 1
        self.global_state["step"] = step
        return step

    def _root_scale(self, s: Mapping[str, Any], step: Any) -> float:
        if s["debiased"]:
            return 1.0 / (1.0 - s["beta"] ** step) ** (1.0 / s["pow"])
        return 1.0


class _StepScale(ScaleTransform):
    _scale_static = False  # the multiplier changes with the step

    def _tick(self) -> None:
        super()._tick()
        self.global_state["step"] = self.global_state.get("step", 0) + 1


class Debias(_StepScale):
    """Multiplies by Adam's bias correction of the first and/or second moment.

    Args:
        beta1: first-moment decay used before; None leaves it out. Defaults to None.
        beta2: second-moment decay used before; None leaves it out. Defaults to None.
        alpha: step size multiplier. Defaults to 1.
        pow: power of the second moment. Defaults to 2.
        target: what is transformed. Defaults to ``'update'``.
    """

    def __init__(self, beta1: float | None = None, beta2: float | None = None, alpha: float = 1, pow: float = 2,
                 target: Target = "update"):
        super().__init__(dict(beta1=beta1, beta2=beta2, alpha=alpha, pow=pow), target=target)

    def _scale_of(self, s: Mapping[str, Any]) -> float:
        return debiased_step_size(self.global_state["step"], s["beta1"], s["beta2"], s["pow"], s["alpha"])


class Debias2(_StepScale):
    """Divides by ``(1 - beta**step)**(1/pow)``, the bias correction of a second moment's root.

    Args:
        beta: second-moment decay used before. Defaults to 0.999.
        pow: power of the second moment. Defaults to 2.
        target: what is transformed. Defaults to ``'update'``.
    """

    def __init__(self, beta: float = 0.999, pow: float = 2, target: Target = "update"):
        super().__init__(dict(beta=beta, pow=pow), target=target)

    def _scale_of(self, s: Mapping[str, Any]) -> float:
        return 1.0 / (1.0 - s["beta"] ** self.global_state["step"]) ** (1.0 / s["pow"])
