"""``Reformulation``: a module that replaces the objective by a modified one.

A reformulation defines a new closure, returning its own loss and gradient (a smoothed
objective, a homotopy, ...). Either the modules given to it optimize the modified objective, or,
without modules, the modified closure is installed on the objective so that every module after
it (and the final update, when nothing follows) sees the modified objective.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .module import Chainable, Module
from .objective import Objective

__all__ = ["Reformulation"]


def _versions(params: Sequence[torch.Tensor]) -> list[int]:
    """In-place modification counters of ``params`` (cheap "did anything write to them" check)."""
    return [p._version for p in params]


class _ClosureContext:
    """What a modified closure needs: the original closure and a cache of the loss at ``x0``.

    ``x0_objective`` carries the original closure and caches the loss and gradient at the point
    where the step started. When a module evaluates the modified closure somewhere else (a line
    search inside ``modules``), :meth:`objective_here` hands out a fresh objective so that
    ``objective.get_loss`` evaluates the original function at the *current* parameters instead of
    returning the stale value at ``x0`` (torchzero 0.4.4 returns the cached ``x0`` value there).
    """

    __slots__ = ("closure", "params", "x0_objective", "x0_versions")

    def __init__(self, closure: Callable, params: list[torch.Tensor], x0_objective: Objective):
        self.closure = closure
        self.params = params
        self.x0_objective = x0_objective
        self.x0_versions = _versions(params)

    def objective_here(self) -> tuple[Objective, bool]:
        """The objective to evaluate the original function at the current parameters, and whether they are ``x0``."""
        if _versions(self.params) == self.x0_versions:
            return self.x0_objective, True
        o = self.x0_objective
        return Objective(params=self.params, closure=self.closure, model=o.model, current_step=o.current_step,
                         modular=o.modular, storage=o.storage), False


class Reformulation(Module, ABC):
    """Base class of modules that optimize a modified objective instead of the original one.

    Subclasses override :meth:`closure`, which evaluates the modified objective (its loss and,
    when ``backward``, its gradient) from the original closure, and optionally :meth:`pre_step`,
    which runs once per step (for example to draw new random perturbations), whereas ``closure``
    may run several times per step.

    With ``modules``, the step builds the modified closure, steps ``modules`` on an objective that
    uses it, and takes their output as the update. Without ``modules``, the modified closure
    replaces the objective's closure: every later module, and the final update when nothing
    follows, uses the modified objective (its gradient is the update). In that case put the
    reformulation first in the chain — a loss or gradient that an earlier module already computed
    belongs to the original objective and is dropped.

    Args:
        defaults: default values of the module's settings.
        modules: the modules optimizing the modified objective, or None (see above).

    Examples:
        A reformulation that optimizes ``f(x)**2``:

        >>> class Squared(Reformulation):
        ...     def __init__(self, modules=None):
        ...         super().__init__({}, modules)
        ...     def closure(self, backward, closure, params, objective):
        ...         loss = objective.get_loss(backward=backward)
        ...         grads = [2 * loss * g for g in objective.get_grads()] if backward else None
        ...         return loss ** 2, grads
        >>> opt = tz.Optimizer(model.parameters(), Squared([tz.m.LR(1e-2)]))
    """

    def __init__(self, defaults: dict[str, Any] | None, modules: Chainable | None):
        super().__init__(defaults)
        if modules is not None:
            self.set_child("modules", modules)

    @abstractmethod
    def closure(self, backward: bool, closure: Callable, params: list[torch.Tensor],
                objective: Objective) -> tuple[Any, Sequence[torch.Tensor] | None]:
        """Evaluates the modified objective at the current parameters.

        Args:
            backward: whether the gradient is needed.
            closure: the original closure (``closure(backward=True)``).
            params: the parameters.
            objective: an objective of the *original* function at the current parameters:
                ``objective.get_loss(backward)`` / ``objective.get_grads()`` evaluate (and cache)
                the original loss and gradient here, reusing values already computed at the
                step's starting point.

        Returns:
            ``(loss, grads)``; ``grads`` may be None when ``backward`` is False. When the
            parameters are changed to evaluate other points they must be restored before
            returning (also when the original closure raises).
        """

    def pre_step(self, objective: Objective) -> None:
        """Runs once at the start of each step, before any call of :meth:`closure`."""

    # ------------------------------------------------------------------ plumbing
    def _modified_closure(self, closure: Callable, params: list[torch.Tensor], x0_objective: Objective) -> Callable:
        ctx = _ClosureContext(closure, params, x0_objective)

        def modified_closure(backward: bool = True) -> Any:
            objective, at_x0 = ctx.objective_here()
            loss, grads = self.closure(backward, closure, params, objective)
            if at_x0:
                # the subclass restored the parameters to x0 (possibly with in-place writes)
                ctx.x0_versions = _versions(params)
            if grads is not None:
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
            return loss

        return modified_closure

    def _closure_of(self, objective: Objective) -> Callable:
        if objective.closure is None:
            raise RuntimeError(f"{type(self).__name__} is a Reformulation and requires a closure; pass "
                               f"`def closure(backward=True): ...` to `optimizer.step(closure)`")
        return objective.closure

    def update(self, objective: Objective) -> None:
        """Installs the modified closure on ``objective`` (only without ``modules``)."""
        if "modules" in self.children:
            raise RuntimeError(f"{type(self).__name__} has `modules`, so it only supports `step`, "
                               f"not `update`/`apply`")
        closure = self._closure_of(objective)
        self.pre_step(objective)
        x0_objective = objective.clone(clone_updates=False)
        objective.closure = self._modified_closure(closure, objective.params, x0_objective)
        # a loss or gradient computed so far belongs to the original objective
        objective.loss = objective.loss_approx = None
        objective.grads = None

    def apply(self, objective: Objective) -> Objective:
        return objective

    def step(self, objective: Objective) -> Objective:
        modules = self.children.get("modules")
        if modules is None:
            self.update(objective)
            return self.apply(objective)

        closure = self._closure_of(objective)
        self.pre_step(objective)
        modified = objective.clone(clone_updates=False)
        modified.closure = self._modified_closure(closure, objective.params, objective)
        modified.loss = modified.loss_approx = None
        modified.grads = None
        modified = modules.step(modified)
        # the loss and gradient of `modified` are the modified objective's: only the update is taken
        objective.updates = modified.get_updates()
        objective.skip_update = modified.skip_update
        objective._applied = modified._applied
        if modified.should_terminate is not None:
            objective.should_terminate = modified.should_terminate
        return objective
