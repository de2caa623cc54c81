"""Stepping a sequence of modules, with the fusion planner for the top-level chain."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .objective import Objective

if TYPE_CHECKING:
    from .module import Module

__all__ = ["step", "step_tensors", "update", "apply"]


def update(objective: Objective, module: Module, states: list | None = None, settings: Sequence | None = None) -> None:
    if states is None:
        module.update(objective)
    else:
        module.update_states(objective, states, settings)  # type: ignore[attr-defined]


def apply(objective: Objective, module: Module, states: list | None = None, settings: Sequence | None = None) -> Objective:
    if states is None:
        return module.apply(objective)
    return module.apply_states(objective, states, settings)  # type: ignore[attr-defined]


def _fusable_tail(modules: Sequence[Module]) -> bool:
    return all(getattr(m, "_is_scale", False) and m._scale_ready() for m in modules)  # type: ignore[attr-defined]


def _chain_step(objective: Objective, modules: Sequence[Module], fuse: bool = False) -> Objective:
    """Steps ``objective`` through ``modules`` in order.

    With ``fuse`` (only the top-level chain of an optimizer step, where the update is subtracted
    from the parameters right after the chain), an elementwise native module followed only by
    scalar multipliers (``LR``, ``StepSize``, ``Mul(number)``, ``Div(number)``, ``Negate``) is
    run as one kernel that writes the parameters directly: the update is never materialised.
    """
    for i, module in enumerate(modules):
        if i != 0:
            objective = objective.clone(clone_updates=False)
        # hooks may read objective.updates after the step, so a chain with hooks is not fused
        if (fuse and not objective.skip_update and not objective.post_step_hooks and getattr(module, "_fused_step", None) is not None
                and _fusable_tail(modules[i + 1:]) and module._fused_step(objective, modules[i + 1:])):  # type: ignore[attr-defined]
            objective._applied = True
            return objective
        objective = module.step(objective)
        if objective.stop:
            break
    return objective


def step(objective: Objective, modules: Module | Sequence[Module]) -> Objective:
    """Steps ``objective`` through ``modules`` (no hooks, parameters not updated)."""
    if not isinstance(modules, Sequence):
        modules = (modules,)
    if len(modules) == 0:
        raise RuntimeError("`modules` is an empty sequence")
    if objective.closure is None and objective.grads is None:
        objective.grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in objective.params]
    return _chain_step(objective, modules, fuse=objective._fusable)


def step_tensors(modules: Module | Sequence[Module], tensors: Sequence[torch.Tensor],
                 params: Iterable[torch.Tensor] | None = None, grads: Sequence[torch.Tensor] | None = None,
                 loss: Any = None, closure: Callable | None = None, objective: Objective | None = None) -> list[torch.Tensor]:
    """Runs ``modules`` on ``tensors`` as the update and returns the result (parameters untouched)."""
    if objective is not None and any(v is not None for v in (params, grads, loss, closure)):
        raise RuntimeError("Specify either `objective` or `(params, grads, loss, closure)`")
    if not isinstance(modules, Sequence):
        modules = (modules,)
    if params is None:
        params = [t.view_as(t).requires_grad_() for t in tensors]
    if objective is None:
        objective = Objective(params=params, loss=loss, closure=closure)
    if grads is not None:
        objective.grads = list(grads)
    objective.updates = list(tensors)
    objective = _chain_step(objective, modules)
    return objective.get_updates()
