"""Binary operations whose second operand is a number or a module."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ...core.elementwise import UNARY_AFFINE, unary_on_objective
from ...core.module import Chainable
from ...core.objective import Objective
from ...core.operations import BinaryOperationBase

__all__ = ["Add", "Sub", "Mul", "Div"]


class _NumberOrModule(BinaryOperationBase):
    """``other`` is a number (a native elementwise op) or a module (evaluated on a copy of the input)."""

    def _number(self) -> float | None:
        other = self.operands["other"]
        if "other" in self.children:
            return None
        return float(other)

    def _affine(self, x: float) -> tuple[float, float]:
        raise NotImplementedError

    def _with_module(self, update: list[torch.Tensor], other: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, objective: Objective) -> Objective:
        x = self._number()
        if x is not None:
            a, b = self._affine(x)
            return unary_on_objective(self, objective, UNARY_AFFINE, a, b)
        return super().step(objective)

    def transform(self, objective, update, other):  # type: ignore[no-untyped-def]
        return self._with_module(update, other)


class Add(_NumberOrModule):
    """``x + alpha*other``, ``other`` a number or a module evaluated on the same input.

    Args:
        other: a number or a module.
        alpha: multiplier of ``other``. Defaults to 1.
    """

    def __init__(self, other: Chainable | float, alpha: float = 1):
        super().__init__(dict(alpha=alpha), other=other)

    def _affine(self, x: float) -> tuple[float, float]:
        return 1.0, x * self.defaults["alpha"]

    def _with_module(self, update, other):  # type: ignore[no-untyped-def]
        torch._foreach_add_(update, other, alpha=self.defaults["alpha"])
        return update


class Sub(_NumberOrModule):
    """``x - alpha*other``, ``other`` a number or a module evaluated on the same input.

    Args:
        other: a number or a module.
        alpha: multiplier of ``other``. Defaults to 1.
    """

    def __init__(self, other: Chainable | float, alpha: float = 1):
        super().__init__(dict(alpha=alpha), other=other)

    def _affine(self, x: float) -> tuple[float, float]:
        return 1.0, -x * self.defaults["alpha"]

    def _with_module(self, update, other):  # type: ignore[no-untyped-def]
        torch._foreach_sub_(update, other, alpha=self.defaults["alpha"])
        return update


class _Scaling(_NumberOrModule):
    """A number operand makes this a multiplier that can be fused into the preceding kernel."""

    _is_scale = True
    _scale_uniform = True
    _scale_static = False  # the number lives in `operands`, outside the versioned settings

    def _scale_ready(self) -> bool:
        return "other" not in self.children

    def _tick(self) -> None:
        pass

    def _scale_of(self, s: Mapping[str, Any]) -> float:
        x = self._number()
        assert x is not None
        return self._affine(x)[0]


class Mul(_Scaling):
    """``x * other``, ``other`` a number or a module evaluated on the same input.

    Args:
        other: a number or a module.
    """

    def __init__(self, other: Chainable | float):
        super().__init__({}, other=other)

    def _affine(self, x: float) -> tuple[float, float]:
        return x, 0.0

    def _with_module(self, update, other):  # type: ignore[no-untyped-def]
        torch._foreach_mul_(update, other)
        return update


class Div(_Scaling):
    """``x / other``, ``other`` a number or a module evaluated on the same input.

    Args:
        other: a number or a module.
    """

    def __init__(self, other: Chainable | float):
        super().__init__({}, other=other)

    def _affine(self, x: float) -> tuple[float, float]:
        return 1.0 / x, 0.0

    def _with_module(self, update, other):  # type: ignore[no-untyped-def]
        torch._foreach_div_(update, other)
        return update
