"""Bases of the arithmetic modules whose operands may be numbers or modules."""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .module import Chainable, Module
from .objective import Objective

__all__ = ["BinaryOperationBase", "MultiOperationBase", "ReduceOperationBase"]


def _is_module_operand(v: Any) -> bool:
    return isinstance(v, Module) or (isinstance(v, (list, tuple)) and len(v) > 0
                                     and all(isinstance(i, (Module, list, tuple)) for i in v))


class _OperandsMixin(Module):
    def _set_operands(self, operands: dict[str, Any]) -> None:
        self.operands: dict[str, Any] = {}
        for k, v in operands.items():
            if _is_module_operand(v):
                self.set_child(k, v)
                self.operands[k] = self.children[k]
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                self.operands[k] = v
            elif isinstance(v, torch.Tensor) and v.numel() == 1:
                self.operands[k] = v
            else:
                raise TypeError(f"{type(self).__name__}: operand `{k}` must be a number or a module "
                                f"(or a list of modules), got {type(v).__name__}")

    def _evaluate_operands(self, objective: Objective) -> dict[str, Any]:
        processed = dict(self.operands)
        for k, v in self.operands.items():
            if k in self.children:
                out = v.step(objective.clone(clone_updates=True))
                processed[k] = out.get_updates()
                objective.update_attrs_from_clone_(out)
        return processed

    def update(self, objective: Objective) -> None:
        raise RuntimeError(f"{type(self).__name__} has no separate update; use step")

    def apply(self, objective: Objective) -> Objective:
        raise RuntimeError(f"{type(self).__name__} has no separate apply; use step")


class BinaryOperationBase(_OperandsMixin):
    """An operation whose first operand is the update; other operands are numbers or modules.

    A module operand is evaluated on a copy of the same input: ``Add(Grad())`` gives
    ``update + grad``. Override :meth:`transform`.
    """

    def __init__(self, defaults: dict[str, Any] | None, **operands: Chainable | Any):
        super().__init__(defaults=defaults)
        self._set_operands(operands)

    @abstractmethod
    def transform(self, objective: Objective, update: list[torch.Tensor],
                  **operands: Any | list[torch.Tensor]) -> Iterable[torch.Tensor]:
        """Applies the operation."""

    @torch.no_grad()
    def step(self, objective: Objective) -> Objective:
        operands = self._evaluate_operands(objective)
        objective.updates = list(self.transform(objective, update=objective.get_updates(), **operands))
        return objective


class MultiOperationBase(_OperandsMixin):
    """An operation over named operands (numbers or modules), at least one of them a module."""

    def __init__(self, defaults: dict[str, Any] | None, **operands: Chainable | Any):
        super().__init__(defaults=defaults)
        self._set_operands(operands)
        if not self.children:
            raise ValueError(f"{type(self).__name__}: at least one operand must be a module")

    @abstractmethod
    def transform(self, objective: Objective, **operands: Any | list[torch.Tensor]) -> list[torch.Tensor]:
        """Applies the operation."""

    @torch.no_grad()
    def step(self, objective: Objective) -> Objective:
        operands = self._evaluate_operands(objective)
        objective.updates = list(self.transform(objective, **operands))
        return objective


class ReduceOperationBase(_OperandsMixin):
    """A reduction over the update and any number of operands (numbers or modules)."""

    def __init__(self, defaults: dict[str, Any] | None, *operands: Chainable | Any):
        super().__init__(defaults=defaults)
        self.operands_list: list[Any] = []
        for i, v in enumerate(operands):
            if _is_module_operand(v):
                self.set_child(f"operand_{i}", v)
                self.operands_list.append(self.children[f"operand_{i}"])
            elif isinstance(v, (int, float, torch.Tensor)):
                self.operands_list.append(v)
            else:
                raise TypeError(f"{type(self).__name__}: operand {i} must be a number or a module, "
                                f"got {type(v).__name__}")
        self.operands = {}

    @abstractmethod
    def transform(self, objective: Objective, *operands: Any | list[torch.Tensor]) -> list[torch.Tensor]:
        """Applies the reduction."""

    @torch.no_grad()
    def step(self, objective: Objective) -> Objective:
        processed: list[Any] = []
        for v in self.operands_list:
            if isinstance(v, Module):
                out = v.step(objective.clone(clone_updates=True))
                processed.append(out.get_updates())
                objective.update_attrs_from_clone_(out)
            else:
                processed.append(v)
        objective.updates = list(self.transform(objective, *processed))
        return objective


