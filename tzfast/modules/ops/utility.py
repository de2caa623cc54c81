"""Utility modules: gradient, parameters, identity, clone."""
from __future__ import annotations

from typing import Any

import torch

from ...core.module import Module
from ...core.objective import Objective

__all__ = ["Clone", "Grad", "Params", "Identity", "Noop"]


class Clone(Module):
    """Outputs a copy of the update (protects it from later in-place operations)."""

    def __init__(self) -> None:
        super().__init__({})

    @torch.no_grad()
    def apply(self, objective: Objective) -> Objective:
        objective.updates = [u.clone() for u in objective.get_updates()]
        return objective


class Grad(Module):
    """Outputs the gradient."""

    def __init__(self) -> None:
        super().__init__({})

    @torch.no_grad()
    def apply(self, objective: Objective) -> Objective:
        objective.updates = [g.clone() for g in objective.get_grads()]
        return objective


class Params(Module):
    """Outputs the parameters."""

    def __init__(self) -> None:
        super().__init__({})

    @torch.no_grad()
    def apply(self, objective: Objective) -> Objective:
        objective.updates = [p.detach().clone() for p in objective.params]
        return objective


class Identity(Module):
    """Passes the objective through unchanged; ignores any arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def update(self, objective: Objective) -> None:
        pass

    def apply(self, objective: Objective) -> Objective:
        return objective


Noop = Identity
