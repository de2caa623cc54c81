"""Elementwise unary operations."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ... import ops
from ...core.elementwise import UNARY_ABS, UNARY_SIGN, UNARY_SQRT, ElementwiseTransform, ScaleTransform

__all__ = ["Abs", "Sign", "Sqrt", "Negate"]


class _Unary(ElementwiseTransform):
    _op = -1

    def __init__(self) -> None:
        super().__init__()

    def _kernel(self, tensors, params, state, out, s, out_scale, accumulate, ctx):  # type: ignore[no-untyped-def]
        ops.unary_(tensors, out, self._op, 0.0, 0.0, out_scale, accumulate)


class Abs(_Unary):
    """``|x|``."""

    _op = UNARY_ABS


class Sign(_Unary):
    """``sign(x)``."""

    _op = UNARY_SIGN


class Sqrt(_Unary):
    """``sqrt(x)``."""

    _op = UNARY_SQRT


class Negate(ScaleTransform):
    """``-x``."""

    _scale_uniform = True

    def __init__(self) -> None:
        super().__init__()

    def _scale_of(self, s: Mapping[str, Any]) -> float:
        return -1.0
