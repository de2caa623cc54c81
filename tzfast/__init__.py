"""tzfast: a native-backed, drop-in re-implementation of the torchzero modular optimizer library.

    import tzfast as tz
    opt = tz.Optimizer(model.parameters(), tz.m.Adam(), tz.m.LR(1e-3))
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import core
from ._version import __version__
from .core import Chain, Modular, Module, Objective, Optimizer, TensorTransform, Transform, Var
from . import modules
from . import modules as m

if TYPE_CHECKING:  # type checkers see the decorator; at run time the subpackage, which is callable
    from .zero_order import zero_order
else:
    from . import zero_order

__all__ = ["Chain", "Modular", "Module", "Objective", "Optimizer", "TensorTransform", "Transform", "Var",
           "core", "m", "modules", "zero_order", "__version__"]
