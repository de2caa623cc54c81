"""Weight decay."""
from __future__ import annotations

from ... import ops
from ...core.elementwise import ElementwiseTransform
from ...core.transform import Target

__all__ = ["WeightDecay"]


class WeightDecay(ElementwiseTransform):
    """Adds the gradient of an L``ord`` penalty: ``x + weight_decay * p`` for ``ord=2``.

    Placed before ``Adam`` it is L2 regularisation; after it (before ``LR``), decoupled decay
    that still scales with the learning rate; after ``LR``, fully decoupled decay.

    Args:
        weight_decay: strength.
        ord: order of the penalty (1: ``sign(p)``, 2: ``p``, else ``p**(ord-1)``). Defaults to 2.
        target: what is transformed. Defaults to ``'update'``.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.Adam(), tz.m.WeightDecay(1e-2), tz.m.LR(1e-3))
    """

    def __init__(self, weight_decay: float, ord: int = 2, target: Target = "update"):
        super().__init__(dict(weight_decay=weight_decay, ord=ord), target=target)

    def _kernel(self, tensors, params, state, out, s, out_scale, accumulate, ctx):  # type: ignore[no-untyped-def]
        ops.weight_decay_(tensors, params, out, s["weight_decay"], int(s["ord"]), out_scale, accumulate)
