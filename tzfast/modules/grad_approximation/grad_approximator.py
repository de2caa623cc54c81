"""``GradApproximator``: the base class of every gradient estimator built from function values."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch

from ...core.elementwise import tails_align
from ...core.module import Module

if TYPE_CHECKING:
    from ...core.layout import Layout
    from ...core.objective import Objective

__all__ = ["GradApproximator", "GradTarget"]

GradTarget = Literal["update", "grad", "closure"]
GRAD_TARGETS: tuple[str, ...] = get_args(GradTarget)


def check_target(who: str, target: Any) -> None:
    if target not in GRAD_TARGETS:
        raise ValueError(f"{who}: unknown target {target!r}; expected one of "
                         f"{', '.join(repr(t) for t in GRAD_TARGETS)}")


class GradApproximator(Module, ABC):
    """Base class of gradient approximations: subclass it and override :meth:`approximate`.

    With ``target='closure'`` (the default) the module replaces the objective's closure by one
    that, when called with ``backward=True``, estimates the gradient with :meth:`approximate`
    and writes it to ``p.grad``; every later module that asks for gradients (a line search at
    another point, a gradient-difference Hessian-vector product, ...) gets the estimate at the
    point where it asks. ``closure(False)`` evaluates the original closure. With
    ``target='grad'`` or ``'update'`` the estimate is computed once and set as the objective's
    gradient or update.

    :meth:`pre_step` runs once per step, before any :meth:`approximate` call (which may run
    several times per step): the place to draw the step's random directions.

    Args:
        defaults: default values of the module's settings. Defaults to None.
        return_approx_loss: when the estimator evaluated no loss at the current point, make the
            installed closure return its ``loss_approx`` (a loss at a nearby point) instead of
            evaluating the closure once more. Defaults to False.
        target: ``'closure'``, ``'grad'`` or ``'update'``: what the estimate replaces.
            Defaults to ``'closure'``.

    Examples:
        A basic SPSA (two evaluations per step along a random ±h direction); ``approximate``
        returns ``(grads, loss, loss_approx)`` and must leave the parameters as it found them:

        >>> class MySPSA(tz.m.GradApproximator):
        ...     def __init__(self, h=1e-3):
        ...         super().__init__(dict(h=h))
        ...
        ...     @torch.no_grad()
        ...     def approximate(self, closure, params, loss):
        ...         h = [self.settings[p]["h"] for p in params]
        ...         prt = [(torch.randint(0, 2, p.shape) * 2 - 1).to(p) * hp for p, hp in zip(params, h)]
        ...         torch._foreach_add_(params, prt)
        ...         loss_plus = closure(False)
        ...         torch._foreach_sub_(params, prt)
        ...         torch._foreach_sub_(params, prt)
        ...         loss_minus = closure(False)
        ...         torch._foreach_add_(params, prt)
        ...         d = [(loss_plus - loss_minus) / (2 * hp**2) for hp in h]
        ...         return [t * di for t, di in zip(prt, d)], None, loss_plus
        >>> opt = tz.Optimizer(model.parameters(), MySPSA(), tz.m.LR(1e-2))
    """

    def __init__(self, defaults: dict[str, Any] | None = None, return_approx_loss: bool = False,
                 target: GradTarget = "closure"):
        check_target(type(self).__name__, target)
        super().__init__(defaults)
        self._target: GradTarget = target
        self._return_approx_loss = bool(return_approx_loss)

    @abstractmethod
    def approximate(self, closure: Callable, params: list[torch.Tensor], loss: torch.Tensor | None
                    ) -> tuple[Iterable[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """Estimates the gradient; returns ``(grads, loss, loss_approx)``.

        ``loss`` is the loss at the current parameters when known (None otherwise); the returned
        ``loss`` is the loss at the current parameters if the estimator evaluated it (else None),
        ``loss_approx`` a loss at a nearby point. The parameters must be left as they were.
        """

    def pre_step(self, objective: Objective) -> None:
        """Runs once per step before :meth:`approximate` (which may run several times per step)."""

    def _fusion_layout(self, objective: Objective, tail: Sequence[Module]) -> Layout | None:
        """The layout to fuse a step over (see the estimators' ``fuse``), or None when this step
        cannot be fused: fusion off, children, an estimate the chain would not use, a layout that
        is not the objective's, or tail multipliers whose settings split the parameters differently."""
        if not getattr(self, "fuse", False) or self.children:
            return None
        if self._target == "closure" and (objective.grads is not None or objective.updates is not None):
            return None  # the chain would not use this estimate
        if self._target == "grad" and objective.updates is not None:
            return None
        layout = objective.layout
        if layout is None or layout.params is not objective.params or not tails_align(self, layout, tail):
            return None
        return layout

    def _closure_of(self, objective: Objective) -> Callable:
        closure = objective.closure
        if closure is None:
            raise RuntimeError(f"{type(self).__name__}: gradient approximation requires closure; pass "
                               f"`def closure(backward=True): ...` to `optimizer.step(closure)`")
        if not callable(closure):
            raise TypeError(f"{type(self).__name__}: the closure must be callable, got {type(closure).__name__}")
        return closure

    @torch.no_grad()
    def update(self, objective: Objective) -> None:
        self.pre_step(objective)
        closure = self._closure_of(objective)
        params = objective.params

        if self._target == "closure":
            approximate = self.approximate
            return_approx = self._return_approx_loss

            def approx_closure(backward: bool = True) -> Any:
                if not backward:
                    return closure(False)
                # the loss is not passed: this closure may be called at other points than x0
                grads, loss, loss_approx = approximate(closure, params, None)
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                if loss is not None:
                    return loss
                if return_approx and loss_approx is not None:
                    return loss_approx
                return closure(False)

            objective.closure = approx_closure
            return

        grads, loss, loss_approx = self.approximate(closure, params, objective.loss)
        self._set_estimate(objective, list(grads), loss, loss_approx)

    def _set_estimate(self, objective: Objective, grads: list[torch.Tensor], loss: Any, loss_approx: Any) -> None:
        """What ``target='grad'`` / ``'update'`` does with an estimate."""
        if loss_approx is not None:
            objective.loss_approx = loss_approx
        if loss is not None:
            objective.loss = objective.loss_approx = loss
        if self._target == "grad":
            objective.grads = grads
        else:
            objective.updates = grads

    def apply(self, objective: Objective) -> Objective:
        return objective
