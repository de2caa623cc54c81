"""The :class:`Objective` passed from module to module during a step (alias ``Var``)."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .derivatives import DerivativesMixin
from .layout import Layout

if TYPE_CHECKING:
    from .module import Module
    from .optimizer import Optimizer

__all__ = ["Objective", "Var"]


def _grads_of(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``p.grad`` of each parameter (zeros where None); dense gradients only."""
    grads = [p.grad for p in params]
    for i, g in enumerate(grads):
        if g is None:
            grads[i] = torch.zeros_like(params[i])
        elif g.layout != torch.strided:
            raise RuntimeError(f"the gradient of parameter {i} is {g.layout} (sparse); tzfast modules need dense "
                               f"gradients — use a dense embedding (sparse=False) or convert with .to_dense()")
    return grads


def _closure_backward(closure: Callable, params: Sequence[torch.Tensor], backward: bool,
                      retain_graph: bool | None, create_graph: bool) -> Any:
    """Calls ``closure``; with ``backward`` it runs under ``torch.enable_grad`` and sets ``p.grad``."""
    if not backward:
        return closure(False)
    with torch.enable_grad():
        if not (retain_graph or create_graph):
            return closure()
        for p in params:
            p.grad = None
        loss = closure(False).ravel()
        grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, create_graph=create_graph,
                                    allow_unused=True, materialize_grads=True)
    for p, g in zip(params, grads):
        p.grad = g
    return loss


class Objective(DerivativesMixin):
    """Holds the parameters, the closure, the loss, the gradient and the current update.

    Modules receive an ``Objective``, transform it and pass it on. The final ``updates`` are
    subtracted from the parameters.

    Args:
        params: the parameters being optimized (those with ``requires_grad``).
        closure: re-evaluates the loss; accepts ``backward: bool``. None when not given.
        loss: the loss at ``params`` if already known.
        model: the ``nn.Module`` given to the optimizer, if any.
        current_step: number of optimizer steps taken before this one.
        parent: the objective this one was derived from (projections); loss and gradients
            computed here are also set there.
        modular: the top-level optimizer.
        storage: extra keyword arguments passed to ``step``.
    """

    def __init__(self, params: Iterable[torch.Tensor], closure: Callable | None = None,
                 loss: torch.Tensor | None = None, model: torch.nn.Module | None = None,
                 current_step: int = 0, parent: Objective | None = None, modular: Optimizer | None = None,
                 storage: dict | None = None):
        self.params: list[torch.Tensor] = params if isinstance(params, list) else list(params)
        self.closure = closure
        self.model = model
        self.current_step: int = current_step
        self.parent = parent
        self.modular = modular
        self.updates: list[torch.Tensor] | None = None
        self.grads: list[torch.Tensor] | None = None
        self.loss: Any = loss
        self.loss_approx: Any = None
        self.post_step_hooks: list[Callable[[Objective, tuple[Module, ...]], None]] = []
        self.stop: bool = False
        self.skip_update: bool = False
        self.attrs: dict = {}
        self.storage: dict = {} if storage is None else storage
        self.should_terminate: bool | None = None
        self.temp: Any = None
        # tzfast internals
        self.layout: Layout | None = None
        self._fusable: bool = False  # True only on the top-level chain of an Optimizer step
        self._applied: bool = False  # a fused module already applied the update to the params

    # ------------------------------------------------------------ older names
    @property
    def grad(self) -> list[torch.Tensor] | None:
        return self.grads

    @grad.setter
    def grad(self, value: list[torch.Tensor] | None) -> None:
        self.grads = value

    @property
    def update(self) -> list[torch.Tensor] | None:
        return self.updates

    @update.setter
    def update(self, value: list[torch.Tensor] | None) -> None:
        self.updates = value

    # ------------------------------------------------------------ evaluation
    def _need_closure(self, what: str) -> Callable:
        if self.closure is None:
            raise RuntimeError(f"{what} needs a closure, but `step` was called without one. Pass a closure "
                               f"`def closure(backward=True): ...` to `optimizer.step(closure)`.")
        return self.closure

    def get_loss(self, backward: bool, retain_graph: bool | None = None, create_graph: bool = False,
                 at_x0: bool = True) -> Any:
        """The loss at the current parameters, evaluated (once) with the closure if needed."""
        if not at_x0:
            return _closure_backward(self._need_closure("get_loss"), self.params, backward, retain_graph, create_graph)

        if self.loss is None:
            closure = self._need_closure("get_loss")
            self.loss = self.loss_approx = _closure_backward(closure, self.params, backward, retain_graph, create_graph)
            if backward:
                self.grads = _grads_of(self.params)

        if backward and self.grads is None:
            warnings.warn("get_loss was called with backward=False, and then with backward=True, so the closure "
                          "was evaluated twice where once would have done.", stacklevel=2)
            closure = self._need_closure("get_loss")
            self.loss = self.loss_approx = _closure_backward(closure, self.params, True, retain_graph, create_graph)
            self.grads = _grads_of(self.params)

        if self.parent is not None:
            if self.parent.loss is None:
                self.parent.loss = self.loss
            if self.parent.grads is None and backward:
                self.parent.grads = _grads_of(self.parent.params)
        return self.loss

    def get_grads(self, retain_graph: bool | None = None, create_graph: bool = False,
                  at_x0: bool = True) -> list[torch.Tensor]:
        """The gradient at the current parameters, evaluated (once) with the closure if needed."""
        if not at_x0:
            return self.get_loss_grads(retain_graph, create_graph, at_x0=False)[1]
        if self.grads is None:
            self._need_closure("get_grads")
            self.get_loss(backward=True, retain_graph=retain_graph, create_graph=create_graph)
        assert self.grads is not None
        return self.grads

    def get_loss_grads(self, retain_graph: bool | None = None, create_graph: bool = False,
                       at_x0: bool = True) -> tuple[Any, list[torch.Tensor]]:
        """``(loss, grads)``."""
        if not at_x0:
            closure = self._need_closure("get_loss_grads")
            with torch.enable_grad():
                if retain_graph or create_graph:
                    loss = closure(False).ravel()
                    grads = list(torch.autograd.grad(loss, self.params, retain_graph=retain_graph,
                                                     create_graph=create_graph, allow_unused=True,
                                                     materialize_grads=True))
                    return loss, grads
                loss = closure()
            return loss, _grads_of(self.params)
        grads = self.get_grads(retain_graph=retain_graph, create_graph=create_graph)
        return self.get_loss(False), grads

    def get_updates(self) -> list[torch.Tensor]:
        """The update; initialised to a copy of the gradient when nothing set it yet."""
        if self.updates is None:
            self.updates = [g.clone() for g in self.get_grads()]
        return self.updates

    get_grad = get_grads
    get_update = get_updates

    # ------------------------------------------------------------ bookkeeping
    def clone(self, clone_updates: bool, parent: Objective | None = None) -> Objective:
        """A shallow copy; ``updates`` is deep-copied when ``clone_updates``."""
        c = Objective(params=self.params, closure=self.closure, model=self.model, current_step=self.current_step,
                      parent=parent, modular=self.modular, loss=self.loss, storage=self.storage)
        if clone_updates and self.updates is not None:
            c.updates = [u.clone() for u in self.updates]
        else:
            c.updates = self.updates
        c.grads = self.grads
        c.loss_approx = self.loss_approx
        c.post_step_hooks = self.post_step_hooks
        c.stop = self.stop
        c.skip_update = self.skip_update
        c.attrs = self.attrs
        c.should_terminate = self.should_terminate
        if parent is None:
            c.layout = self.layout
        return c

    def update_attrs_from_clone_(self, objective: Objective) -> None:
        """Takes loss, gradient and flags that a child computed on a clone."""
        if self.loss is None:
            self.loss = objective.loss
        if self.loss_approx is None:
            self.loss_approx = objective.loss_approx
        if self.grads is None:
            self.grads = objective.grads
        if objective.should_terminate is not None:
            self.should_terminate = objective.should_terminate
        if objective.skip_update:
            self.skip_update = objective.skip_update

    @torch.no_grad()
    def zero_grad(self, set_to_none: bool = True) -> None:
        if set_to_none:
            for p in self.params:
                p.grad = None
        else:
            grads = [p.grad for p in self.params if p.grad is not None]
            if grads:
                torch._foreach_zero_(grads)

    def poptemp(self) -> Any:
        temp, self.temp = self.temp, None
        return temp

    def update_parameters(self) -> None:
        """Subtracts the update from the parameters (unless ``skip_update`` or already applied)."""
        if self.skip_update or self._applied:
            return
        updates = self.get_updates()
        if updates:
            with torch.no_grad():
                torch._foreach_sub_(self.params, updates)

    def apply_post_step_hooks(self, modules: Sequence[Module]) -> None:
        """Runs hooks added by modules; called after the parameters were updated."""
        modules = tuple(modules)
        for hook in self.post_step_hooks:
            hook(self, modules)


Var = Objective
