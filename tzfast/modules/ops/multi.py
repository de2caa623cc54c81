"""Operations over several module operands."""
from __future__ import annotations

import torch

from ...core.module import Chainable
from ...core.operations import MultiOperationBase

__all__ = ["DivModules"]


class DivModules(MultiOperationBase):
    """``input / other``; each operand is a number or a module evaluated on the same input.

    Args:
        input: numerator, a number or a module.
        other: denominator, a number or a module.
        other_first: evaluate ``other`` before ``input`` (matters when they share state or the
            closure). Defaults to False.

    Examples:
        Adam from its parts:

        >>> tz.m.DivModules([tz.m.EMA(0.9), tz.m.Debias(beta1=0.9)], [tz.m.SqrtEMASquared(0.999, debiased=True),
        ...                  tz.m.Add(1e-8)])
    """

    def __init__(self, input: Chainable | float, other: Chainable | float, other_first: bool = False):
        if other_first:
            super().__init__({}, other=other, input=input)
        else:
            super().__init__({}, input=input, other=other)

    @torch.no_grad()
    def transform(self, objective, input, other):  # type: ignore[no-untyped-def]
        if isinstance(input, (int, float)):
            return [input / t for t in other]
        torch._foreach_div_(input, other)
        return input
