"""``Transform`` and ``TensorTransform``: modules defined by per-tensor update rules."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal, cast

import torch

from .module import Chainable, Module

if TYPE_CHECKING:
    from .objective import Objective

__all__ = ["Transform", "TensorTransform", "Target", "TARGETS"]

Target = Literal["update", "grad", "closure", "params_direct", "params_difference", "update_difference"]
TARGETS: tuple[str, ...] = ("update", "grad", "closure", "params_direct", "params_difference", "update_difference")


def check_target(who: str, target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"{who}: `target` must be one of {TARGETS}, got {target!r}")
    return target


class Transform(Module):
    """A module with optional children that updates per-parameter ``states`` with ``settings``.

    Override :meth:`update_states` (optional) and :meth:`apply_states`.

    Args:
        defaults: default settings.
        update_freq: states are updated every ``update_freq`` steps.
        inner: a chain applied to the input after the state update, before :meth:`apply_states`.
    """

    def __init__(self, defaults: dict[str, Any] | None = None, update_freq: int = 1, inner: Chainable | None = None):
        defaults = {} if defaults is None else dict(defaults)
        if "__update_freq" in defaults:
            raise ValueError("`__update_freq` is a reserved setting name")
        defaults["__update_freq"] = update_freq
        super().__init__(defaults)
        if inner is not None:
            self.set_child("__inner", inner)

    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        """Updates ``states``; must not modify ``objective.updates``."""

    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        raise NotImplementedError(f"{type(self).__name__} doesn't implement `apply_states`.")

    def _get_states_settings(self, objective: Objective) -> tuple[list[dict[str, Any]], Sequence[Mapping[str, Any]]]:
        params = objective.params
        if len(params) == 1:
            return [self.state[params[0]]], (self.settings[params[0]],)
        getter = itemgetter(*params)
        return list(getter(self.state)), getter(self.settings)

    def update(self, objective: Objective) -> None:
        step = self.increment_counter("__step", 0)
        if step % self.settings[objective.params[0]]["__update_freq"] == 0:
            states, settings = self._get_states_settings(objective)
            self.update_states(objective, states, settings)

    def apply(self, objective: Objective) -> Objective:
        if "__inner" in self.children:
            objective = self.children["__inner"].step(objective)
        states, settings = self._get_states_settings(objective)
        return self.apply_states(objective, states, settings)


class TensorTransform(Transform):
    """A ``Transform`` that operates on lists of tensors.

    Override one of ``single_tensor_update`` / ``multi_tensor_update`` (optional) and one of
    ``single_tensor_apply`` / ``multi_tensor_apply``.

    Args:
        defaults: default settings.
        update_freq: states are updated every ``update_freq`` steps.
        concat_params: concatenate all tensors into one vector (full-matrix methods).
        uses_grad: the rule needs the gradient (evaluated if needed).
        uses_loss: the rule needs the loss (evaluated if needed).
        inner: a chain applied to the input after the state update.
        target: what is transformed: ``'update'`` (default), ``'grad'``, ``'closure'``,
            ``'params_direct'``, ``'params_difference'`` or ``'update_difference'``.
    """

    def __init__(self, defaults: dict[str, Any] | None = None, update_freq: int = 1, concat_params: bool = False,
                 uses_grad: bool = False, uses_loss: bool = False, inner: Chainable | None = None,
                 target: Target = "update"):
        super().__init__(defaults, update_freq=update_freq, inner=inner)
        self._concat_params = concat_params
        self._uses_grad = uses_grad
        self._uses_loss = uses_loss
        self._target = check_target(type(self).__name__, target)

    # -------------------------------------------------------------- single tensor hooks
    def single_tensor_initialize(self, tensor: torch.Tensor, param: torch.Tensor, grad: torch.Tensor | None,
                                 loss: Any, state: dict[str, Any], setting: Mapping[str, Any]) -> None:
        """Initialises ``state`` before the first update."""

    def single_tensor_update(self, tensor: torch.Tensor, param: torch.Tensor, grad: torch.Tensor | None,
                             loss: Any, state: dict[str, Any], setting: Mapping[str, Any]) -> None:
        """Updates ``state``; must not modify ``tensor``."""

    def single_tensor_apply(self, tensor: torch.Tensor, param: torch.Tensor, grad: torch.Tensor | None,
                            loss: Any, state: dict[str, Any], setting: Mapping[str, Any]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} doesn't implement `single_tensor_apply`.")

    # -------------------------------------------------------------- multi tensor hooks
    def multi_tensor_initialize(self, tensors: list[torch.Tensor], params: list[torch.Tensor],
                                grads: list[torch.Tensor] | None, loss: Any, states: list[dict[str, Any]],
                                settings: Sequence[Mapping[str, Any]]) -> None:
        gs = grads if grads is not None else cast(list, [None] * len(tensors))
        for t, p, g, st, s in zip(tensors, params, gs, states, settings):
            self.single_tensor_initialize(t, p, g, loss, st, s)

    def multi_tensor_update(self, tensors: list[torch.Tensor], params: list[torch.Tensor],
                            grads: list[torch.Tensor] | None, loss: Any, states: list[dict[str, Any]],
                            settings: Sequence[Mapping[str, Any]]) -> None:
        gs = grads if grads is not None else cast(list, [None] * len(tensors))
        for t, p, g, st, s in zip(tensors, params, gs, states, settings):
            self.single_tensor_update(t, p, g, loss, st, s)

    def multi_tensor_apply(self, tensors: list[torch.Tensor], params: list[torch.Tensor],
                           grads: list[torch.Tensor] | None, loss: Any, states: list[dict[str, Any]],
                           settings: Sequence[Mapping[str, Any]]) -> Sequence[torch.Tensor]:
        gs = grads if grads is not None else cast(list, [None] * len(tensors))
        return [self.single_tensor_apply(t, p, g, loss, st, s)
                for t, p, g, st, s in zip(tensors, params, gs, states, settings)]

    # -------------------------------------------------------------- plumbing
    def _get_grads_loss(self, objective: Objective) -> tuple[list[torch.Tensor] | None, Any]:
        grads = objective.get_grads() if self._uses_grad else None
        loss = objective.get_loss(backward=True) if self._uses_loss else None
        return grads, loss

    def _input(self, objective: Objective) -> list[torch.Tensor]:
        """The tensors this transform reads, according to ``target``."""
        t = self._target
        if t in ("update", "update_difference"):
            return objective.get_updates()
        if t == "grad":
            return [g.clone() for g in objective.get_grads()]
        if t in ("params_direct", "params_difference"):
            return [p.detach().clone() for p in objective.params]
        raise ValueError(f"{type(self).__name__}: target {t!r} is handled by step()")

    def _output(self, objective: Objective, original: list[torch.Tensor], result: Sequence[torch.Tensor]) -> Objective:
        t = self._target
        result = list(result)
        if t == "update":
            objective.updates = result
        elif t == "grad":
            objective.grads = result
        elif t == "update_difference":
            objective.updates = [o - r for o, r in zip(original, result)]
        elif t == "params_direct":
            with torch.no_grad():
                for p, r in zip(objective.params, result):
                    p.copy_(r)
        elif t == "params_difference":
            objective.updates = [p - r for p, r in zip(objective.params, result)]
        return objective

    @torch.no_grad()
    def _gather(self, objective: Objective, tensors: list[torch.Tensor], states: list[dict[str, Any]],
                settings: Sequence[Mapping[str, Any]]) -> tuple:
        grads, loss = self._get_grads_loss(objective)
        params = objective.params
        if self._concat_params:
            tensors = [torch.cat([t.ravel() for t in tensors])]
            params = [torch.cat([p.ravel() for p in params])]
            if grads is not None:
                grads = [torch.cat([g.ravel() for g in grads])]
            states, settings = [states[0]], [settings[0]]
        return tensors, params, grads, loss, states, settings

    def _run_update(self, objective: Objective, tensors: list[torch.Tensor]) -> None:
        step = self.increment_counter("__step", 0)
        if step % self.settings[objective.params[0]]["__update_freq"] != 0:
            return
        states, settings = self._get_states_settings(objective)
        ts, ps, gs, loss, states, settings = self._gather(objective, tensors, states, settings)
        if self.increment_counter("__num_updates", 0) == 0:
            self.multi_tensor_initialize(ts, ps, gs, loss, states, settings)
        self.multi_tensor_update(ts, ps, gs, loss, states, settings)

    def _run_apply(self, objective: Objective, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if "__inner" in self.children:
            from .functional import step_tensors

            tensors = step_tensors(self.children["__inner"], tensors=tensors, params=objective.params,
                                   grads=objective.grads, loss=objective.loss, closure=objective.closure)
        states, settings = self._get_states_settings(objective)
        ts, ps, gs, loss, states, settings = self._gather(objective, tensors, states, settings)
        out = self.multi_tensor_apply(ts, ps, gs, loss, states, settings)
        if self._concat_params:
            vec = out[0]
            res, i = [], 0
            for p in objective.params:
                n = p.numel()
                res.append(vec[i:i + n].view_as(p))
                i += n
            return res
        return list(out)

    def update(self, objective: Objective) -> None:
        if self._target == "closure":
            return
        self._run_update(objective, self._input_for_update(objective))

    def _input_for_update(self, objective: Objective) -> list[torch.Tensor]:
        t = self._target
        if t in ("update", "update_difference"):
            return objective.get_updates()
        if t == "grad":
            return objective.get_grads()
        return list(objective.params)

    def apply(self, objective: Objective) -> Objective:
        if self._target == "closure":
            return self._wrap_closure(objective)
        original = self._input(objective)
        inp = [o.clone() for o in original] if self._target == "update_difference" else original
        return self._output(objective, original, self._run_apply(objective, inp))

    def _wrap_closure(self, objective: Objective) -> Objective:
        closure = objective._need_closure(f"{type(self).__name__}(target='closure')")
        params = objective.params

        def transformed_closure(backward: bool = True) -> Any:
            loss = closure(backward)
            if backward:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                sub = objective.clone(clone_updates=False)
                sub.updates, sub.grads, sub.loss = list(grads), list(grads), loss
                self._run_update(sub, sub.updates)
                new = self._run_apply(sub, sub.updates)
                for p, g in zip(params, new):
                    p.grad = g
            return loss

        objective.closure = transformed_closure
        return objective

    def _extra_pack(self) -> dict:
        return {"__concat_params": self._concat_params, "__uses_grad": self._uses_grad,
                "__uses_loss": self._uses_loss}

    def _extra_unpack(self, d: dict) -> None:
        self._concat_params = d.get("__concat_params", self._concat_params)
        self._uses_grad = d.get("__uses_grad", self._uses_grad)
        self._uses_loss = d.get("__uses_loss", self._uses_loss)
