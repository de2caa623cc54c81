"""The torchzero-compatible core: modules, chains, the objective and the optimizer."""
from __future__ import annotations

from .chain import Chain, flatten_modules, maybe_chain
from .elementwise import ElementwiseTransform, ScaleTransform
from .functional import apply, step, step_tensors, update
from .layout import Layout
from .module import Chainable, Module
from .objective import Objective, Var
from .operations import BinaryOperationBase, MultiOperationBase, ReduceOperationBase
from .optimizer import Modular, Optimizer
from .reformulation import Reformulation
from .transform import Target, TensorTransform, Transform

__all__ = [
    "Chain", "Chainable", "ElementwiseTransform", "Layout", "Modular", "Module", "Objective", "Optimizer",
    "ScaleTransform", "Target", "TensorTransform", "Transform", "Var", "BinaryOperationBase",
    "MultiOperationBase", "ReduceOperationBase", "Reformulation", "apply", "flatten_modules", "maybe_chain", "step",
    "step_tensors", "update",
]
