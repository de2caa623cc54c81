"""TorchOpt-style zeroth-order differentiation (seed 003).

``tz.zero_order(distribution, method, argnums, num_samples, sigma)`` is a decorator that makes a
function's result differentiable through an evolution-strategies estimate of the gradient of its
Gaussian-smoothed version; :class:`ZeroOrderGradientModule` is the ``nn.Module`` form.

``tzfast.zero_order`` is both this subpackage and, called, the decorator: ``tzfast.zero_order(...)``
and ``tzfast.zero_order.zero_order(...)`` are the same function (as ``torchopt.diff.zero_order``).
"""
from __future__ import annotations

import sys
import types
from typing import Any

from .decorator import DISTRIBUTIONS, METHODS, Method, Samplable, SampleFunc, zero_order
from .module import ZeroOrderGradientModule

__all__ = ["zero_order", "ZeroOrderGradientModule", "Method", "METHODS", "DISTRIBUTIONS", "Samplable",
           "SampleFunc"]


class _CallableModule(types.ModuleType):
    """Makes ``tzfast.zero_order(...)`` call the decorator while staying an importable subpackage."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return zero_order(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
