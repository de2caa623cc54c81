"""``ConjugateGradientBase``: nonlinear conjugate gradients on one flat vector.

A nonlinear CG method turns the update ``g`` (normally the gradient) into the direction
``d = g + beta * d_prev``; the methods differ only in ``beta``. Directions follow torchzero's
sign convention (the optimizer subtracts them, so ``d`` points uphill and a line search after
the module chooses the step). The previous input ``g_prev`` and direction ``d_prev`` are kept
as one flat vector each (all parameters concatenated), so ``beta`` costs a few ``torch.dot``
calls and the direction one ``mul_`` and one ``add_``, whatever the number of parameters; no
``beta`` test moves a value to the host (``torch.where`` instead of ``if``).

Schedule (as torchzero 0.4.4): the first step stores ``g`` and returns it unchanged (steepest
descent); later steps return ``g + beta * d_prev``. With ``restart_interval`` ``k`` (``'auto'``:
number of variables + 1), after the step with counter ``step`` where ``(step + 1) % k == 0`` the
module forgets everything, so the next step is steepest descent again.

Two deliberate differences from torchzero 0.4.4 (docs/architecture.md): ``g_prev`` is the input
of the previous step (torchzero keeps the first input of the cycle, so every ``beta`` but
Fletcher-Reeves' sees a stale gradient), and with ``inner`` the first step's history
(``g_prev``, ``d_prev``, Fletcher-Reeves' ``g'g``) is taken from ``inner``'s output, like every
later step's (torchzero takes it from the input before ``inner``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from ...core.module import Chainable, Module
from ...core.objective import Objective
from ...core.transform import TensorTransform

__all__ = ["ConjugateGradientBase", "RestartInterval", "check_restart_interval", "flatten", "unflatten", "zero_if_tiny"]

RestartInterval = int | Literal["auto"] | None


def check_restart_interval(who: str, restart_interval: Any) -> None:
    ok = (restart_interval is None or restart_interval == "auto"
          or (isinstance(restart_interval, int) and not isinstance(restart_interval, bool) and restart_interval >= 1))
    if not ok:
        raise ValueError(f"{who}: `restart_interval` must be None, 'auto' or an int >= 1, got {restart_interval!r}")


def _check_inner(who: str, inner: Any) -> None:
    if inner is None or isinstance(inner, Module):
        return
    if isinstance(inner, Sequence) and not isinstance(inner, str) and all(isinstance(m, Module) for m in inner):
        return
    raise TypeError(f"{who}: `inner` must be None, a Module or a sequence of Modules, got {type(inner).__name__}")


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """All tensors as one 1-D vector: a view for a single contiguous tensor, else a new vector."""
    if len(tensors) == 1:
        return tensors[0].reshape(-1)
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``flat`` shaped (and typed, where dtypes were promoted) like ``like``."""
    if len(like) == 1:
        return [flat.view(like[0].shape).to(like[0].dtype)]
    chunks = flat.split([t.numel() for t in like])
    return [c.view(t.shape).to(t.dtype) for c, t in zip(chunks, like)]


def zero_if_tiny(num: torch.Tensor, denom: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """``num / denom``, or 0 where ``|denom| <= 2 * tiny`` (``<`` when ``strict``), without a host sync."""
    tiny = torch.finfo(denom.dtype).tiny * 2
    small = denom.abs() < tiny if strict else denom.abs() <= tiny
    return torch.where(small, torch.zeros_like(num), num / denom)


class ConjugateGradientBase(TensorTransform):
    """Base class of the nonlinear conjugate gradient methods; subclasses define ``get_beta``.

    ``get_beta(p, g, g_prev, d_prev)`` receives the parameters (a list) and three flat vectors:
    the current input ``g`` (after ``inner``), the input of the previous step and the previous
    direction; it returns ``beta`` as a 0-d tensor or a number. ``initialize(p, g)`` runs on the
    first step of each cycle (after a restart too) with that step's input. torchzero-style subclasses that only call
    ``.dot`` on their arguments work unchanged.

    Args:
        defaults: extra settings of the subclass. Defaults to None.
        clip_beta: replace a negative ``beta`` by 0. Defaults to False.
        restart_interval: forget the history every this many steps; ``'auto'`` is the number of
            variables + 1, None never restarts. Defaults to 'auto'.
        inner: modules applied to the input before the direction is formed (the previous
            direction is added to their output). Defaults to None.

    References:
        Nocedal & Wright, "Numerical Optimization", 2nd ed., section 5.2.

    Examples:
        Polak-Ribière written on the base class:

        >>> import torch, tzfast as tz
        >>> from tzfast.modules.conjugate_gradient import ConjugateGradientBase
        >>> class MyPR(ConjugateGradientBase):
        ...     def __init__(self):
        ...         super().__init__(clip_beta=True)
        ...     def get_beta(self, p, g, g_prev, d_prev):
        ...         return g.dot(g - g_prev) / g_prev.dot(g_prev)
        >>> x = torch.nn.Parameter(torch.tensor([-1.2, 1.0]))
        >>> opt = tz.Optimizer([x], MyPR(), tz.m.LR(1e-3))
    """

    def __init__(self, defaults: dict[str, Any] | None = None, clip_beta: bool = False,
                 restart_interval: RestartInterval = "auto", inner: Chainable | None = None):
        who = type(self).__name__
        if not isinstance(clip_beta, bool):
            raise TypeError(f"{who}: `clip_beta` must be a bool, got {type(clip_beta).__name__} {clip_beta!r}")
        check_restart_interval(who, restart_interval)
        _check_inner(who, inner)
        defaults = {} if defaults is None else dict(defaults)
        clash = {"clip_beta", "restart_interval"} & set(defaults)
        if clash:
            raise ValueError(f"{who}: `defaults` repeats the conjugate gradient settings {sorted(clash)}")
        defaults.update(restart_interval=restart_interval, clip_beta=clip_beta)
        super().__init__(defaults, inner=inner)

    # ------------------------------------------------------------ methods to override
    def initialize(self, p: list[torch.Tensor], g: torch.Tensor) -> None:
        """Runs on the first step of a cycle, with the flat input ``g`` (after ``inner``)."""

    def get_beta(self, p: list[torch.Tensor], g: torch.Tensor, g_prev: torch.Tensor,
                 d_prev: torch.Tensor) -> torch.Tensor | float:
        raise NotImplementedError(f"{type(self).__name__} doesn't implement `get_beta`")

    # ------------------------------------------------------------ stepping
    @torch.no_grad()
    def update(self, objective: Objective) -> None:
        gs = self.global_state
        gs["step"] = gs.get("step", -1) + 1
        gs["stage"] = "first apply" if gs.get("stage", "first update") == "first update" else "initialized"

    @torch.no_grad()
    def apply(self, objective: Objective) -> Objective:
        gs = self.global_state
        stage = gs.get("stage", "first update")
        if stage == "first update":
            raise RuntimeError(f"{type(self).__name__}.apply was called before update: step the module with "
                               f"`step` (update, then apply)")
        if "__inner" in self.children:
            objective = self.children["__inner"].step(objective)
        params = objective.params
        updates = objective.get_updates()
        g = flatten(updates)
        if stage == "first apply":  # no previous direction yet: steepest descent, the input starts the history
            gs["g_prev"] = g if g.data_ptr() not in {u.data_ptr() for u in updates} else g.clone()  # a cat is ours
            gs["d_prev"] = gs["g_prev"].clone()
            self.initialize(params, gs["g_prev"])
            gs["stage"] = "initialized"
            return objective

        g_prev, d_prev = gs["g_prev"], gs["d_prev"]
        beta = self.get_beta(params, g, g_prev, d_prev)
        setting = self.settings[params[0]]
        if setting["clip_beta"]:
            beta = torch.where(beta > 0, beta, 0.0) if isinstance(beta, torch.Tensor) else max(0.0, beta)
        g_prev.copy_(g)  # torchzero 0.4.4 keeps the first one (see docs/architecture.md)
        d_prev.mul_(beta)
        g.add_(d_prev)
        d_prev.copy_(g)
        objective.updates = unflatten(g, updates)

        restart_interval = setting["restart_interval"]
        if restart_interval == "auto":
            restart_interval = g.numel() + 1
        if restart_interval is not None and (gs["step"] + 1) % restart_interval == 0:
            self.state.clear()
            self.global_state.clear()
        return objective

    def reset_for_online(self) -> None:
        super().reset_for_online()
        self.global_state.pop("stage", None)
        self.global_state["step"] = self.global_state.get("step", 1) - 1
