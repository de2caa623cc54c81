"""Restart strategies: clear the state of other modules when a condition holds."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, final

import torch

from ...core.module import Chainable, Module

if TYPE_CHECKING:
    from ...core.objective import Objective

__all__ = ["RestartStrategyBase", "RestartEvery", "RestartOnStuck", "PowellRestart", "BirginMartinezRestart"]


# ----------------------------------------------------------------------------- helpers
def _check_modules(who: str, name: str, modules: Any, allow_none: bool) -> None:
    if modules is None and allow_none:
        return
    if isinstance(modules, Module):
        return
    if isinstance(modules, (list, tuple)) and modules and all(isinstance(m, (Module, list, tuple)) for m in modules):
        return
    expected = "a Module, a non-empty list/tuple of modules" + (" or None" if allow_none else "")
    raise TypeError(f"{who}: `{name}` must be {expected}, got {type(modules).__name__}: {modules!r}")


def _check_real(who: str, name: str, value: Any, minimum: float | None = None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    kind = "a finite number" + (f" >= {minimum}" if minimum is not None else "") + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{who}: `{name}` must be {kind}, got {type(value).__name__}: {value!r}")
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise ValueError(f"{who}: `{name}` must be {kind}, got {value!r}")


def _check_int(who: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{who}: `{name}` must be an int >= {minimum}, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{who}: `{name}` must be an int >= {minimum}, got {value}")


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i <a_i, b_i>`` over lists of tensors (a 0-d tensor)."""
    total: Any = 0
    for x, y in zip(a, b, strict=True):
        total = total + torch.dot(x.reshape(-1), y.reshape(-1))
    return total if isinstance(total, torch.Tensor) else torch.tensor(0.0)


def _reset_others(keep: Module, objective: Objective, modules: Sequence[Module]) -> None:
    """Post-step hook: resets every top-level module of the optimizer except ``keep``."""
    for m in modules:
        if m is not keep:
            m.reset()


# ----------------------------------------------------------------------------- base
class RestartStrategyBase(Module, ABC):
    """Base class of restart strategies: resets modules when :meth:`should_reset` says so.

    Each step first asks :meth:`should_reset`. When it returns True, the wrapped ``modules``
    are reset (their state and global state cleared) before they step; with ``modules=None``
    every other top-level module of the optimizer is reset after the step's update has been
    applied to the parameters. Subclasses override :meth:`should_reset` only.

    Args:
        defaults: default settings of the strategy. Defaults to None.
        modules: the modules to wrap and reset; None resets all other modules of the optimizer
            instead. Defaults to None.

    Examples:
        Reset Adam's moments whenever the loss went up:

        >>> class RestartOnIncrease(tz.m.RestartStrategyBase):
        ...     def should_reset(self, objective):
        ...         loss = float(objective.get_loss(backward=True))
        ...         prev = self.global_state.get("prev", math.inf)
        ...         self.global_state["prev"] = loss
        ...         return loss > prev
        >>> opt = tz.Optimizer(model.parameters(), RestartOnIncrease(modules=tz.m.Adam()), tz.m.LR(1e-2))
    """

    def __init__(self, defaults: dict[str, Any] | None = None, modules: Chainable | None = None):
        if defaults is not None and not isinstance(defaults, dict):
            raise TypeError(f"{type(self).__name__}: `defaults` must be a dict or None, got {type(defaults).__name__}"
                            f"{'; pass the modules to reset as modules=...' if isinstance(defaults, Module) else ''}")
        _check_modules(type(self).__name__, "modules", modules, allow_none=True)
        super().__init__(defaults)
        if modules is not None:
            self.set_child("modules", modules)

    @abstractmethod
    def should_reset(self, objective: Objective) -> bool:
        """Whether to reset now (called once per step, before the wrapped modules step)."""

    def _check_reset(self, objective: Objective) -> Module | None:
        modules = self.children.get("modules")
        if self.should_reset(objective):
            if modules is None:
                objective.post_step_hooks.append(partial(_reset_others, self))
            else:
                modules.reset()
        return modules

    @final
    def update(self, objective: Objective) -> None:
        modules = self._check_reset(objective)
        if modules is not None:
            modules.update(objective)

    @final
    def apply(self, objective: Objective) -> Objective:
        modules = self.children.get("modules")
        if modules is None:
            return objective
        return modules.apply(objective.clone(clone_updates=False))

    @final
    def step(self, objective: Objective) -> Objective:
        modules = self._check_reset(objective)
        if modules is None:
            return objective
        return modules.step(objective.clone(clone_updates=False))


# ----------------------------------------------------------------------------- strategies
class RestartEvery(RestartStrategyBase):
    """Resets ``modules`` every ``steps`` steps.

    Args:
        modules: the modules to reset; None resets every other module of the optimizer.
        steps: number of steps between resets, or ``'ndim'`` for the number of parameters
            (elements of the parameters that require gradients).

    Examples:
        Conjugate gradient restarted every n steps:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.RestartEvery(tz.m.PolakRibiere(), steps="ndim"),
        ...                    tz.m.StrongWolfe(c2=0.1))
    """

    def __init__(self, modules: Chainable | None, steps: int | Literal["ndim"]):
        if isinstance(steps, str):
            if steps != "ndim":
                raise ValueError(f"RestartEvery: `steps` must be an int >= 1 or 'ndim', got {steps!r}")
        else:
            _check_int("RestartEvery", "steps", steps, 1)
        super().__init__(dict(steps=steps), modules)

    def should_reset(self, objective: Objective) -> bool:
        step = self.global_state.get("step", 0) + 1
        self.global_state["step"] = step
        n = self.defaults["steps"]
        if isinstance(n, str):
            n = sum(p.numel() for p in objective.params)
        if step % n == 0:
            self.global_state.clear()
            return True
        return False


class RestartOnStuck(RestartStrategyBase):
    """Resets ``modules`` when the parameters stopped moving for ``n_tol`` steps in a row.

    A step is stuck when the largest absolute change of any parameter since the previous step
    is at most ``tol``.

    Args:
        modules: the modules to reset; None resets every other module of the optimizer.
        tol: the change at or below which a step is stuck; None uses twice the smallest
            positive normal number of the parameters' dtype. Defaults to None.
        n_tol: number of stuck steps in a row that trigger a reset. Defaults to 10.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.RestartOnStuck(tz.m.BarzilaiBorwein()))
    """

    def __init__(self, modules: Chainable | None, tol: float | None = None, n_tol: int = 10):
        _check_real("RestartOnStuck", "tol", tol, minimum=0.0, allow_none=True)
        _check_int("RestartOnStuck", "n_tol", n_tol, 1)
        super().__init__(dict(tol=tol, n_tol=n_tol), modules)

    @torch.no_grad()
    def should_reset(self, objective: Objective) -> bool:
        gs = self.global_state
        step = gs.get("step", 0)
        gs["step"] = step + 1
        params = objective.params
        prev = self.get_state(params, "prev_params")
        n_bad = gs.get("n_bad", 0)
        if step > 0:
            tol = self.defaults["tol"]
            if tol is None:
                tol = torch.finfo(params[0].dtype).tiny * 2
            torch._foreach_sub_(prev, params)  # prev - p: the negated change, in place
            change = float(torch.stack(torch._foreach_norm(prev, math.inf)).max())
            n_bad = n_bad + 1 if change <= tol else 0
        torch._foreach_copy_(prev, params)
        gs["n_bad"] = n_bad
        if n_bad >= self.defaults["n_tol"]:
            gs.clear()
            return True
        return False


class PowellRestart(RestartStrategyBase):
    """Powell's two restart criteria for conjugate gradient methods.

    With ``g`` the gradient and ``d`` the update entering this module, a reset happens when

    * ``|g_prev^T g| >= cond1 * ||g||^2`` (consecutive gradients far from orthogonal), or
    * ``(-1 - cond2) ||g||^2 < d^T g < (-1 + cond2) ||g||^2``.

    The step after a reset is not checked. A reset clears the state of ``modules``.

    Args:
        modules: the modules to reset; None resets every other module of the optimizer.
        cond1: threshold of the first criterion, None to disable it. Defaults to 0.2 (Powell's value).
        cond2: width of the second criterion, None to disable it. Defaults to 0.2.

    References:
        Powell, M. J. D. "Restart procedures for the conjugate gradient method."
        Mathematical Programming 12.1 (1977): 241-254.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.PowellRestart(tz.m.FletcherReeves()),
        ...                    tz.m.StrongWolfe(c2=0.1))
    """

    def __init__(self, modules: Chainable | None, cond1: float | None = 0.2, cond2: float | None = 0.2):
        _check_real("PowellRestart", "cond1", cond1, minimum=0.0, allow_none=True)
        _check_real("PowellRestart", "cond2", cond2, minimum=0.0, allow_none=True)
        super().__init__(dict(cond1=cond1, cond2=cond2), modules)

    @torch.no_grad()
    def should_reset(self, objective: Objective) -> bool:
        g = objective.get_grads()
        params = objective.params
        cond1, cond2 = self.defaults["cond1"], self.defaults["cond2"]
        if "initialized" not in self.global_state:
            self.global_state["initialized"] = 0
            self.store(params, "g_prev", [t.clone() for t in g])
            return False

        g_prev = self.get_state(params, "g_prev", must_exist=True)
        dots = [_dot(g, g)]
        if cond1 is not None:
            dots.append(_dot(g_prev, g))
        if cond2 is not None:
            dots.append(_dot(objective.get_updates(), g))
        values = torch.stack(dots).tolist() if len(dots) > 1 else [float(dots[0])]
        gg = values[0]
        reset = cond1 is not None and abs(values[1]) >= cond1 * gg
        if not reset and cond2 is not None:
            reset = (-1 - cond2) * gg < values[-1] < (-1 + cond2) * gg

        if reset:
            self.global_state.clear()
            self.clear_state_keys("g_prev")
            return True
        # torchzero 0.4.4 never refreshes g_prev after a (re)start; Powell's test is on consecutive gradients
        torch._foreach_copy_(g_prev, g)
        return False


class BirginMartinezRestart(Module):
    """Birgin and Martinez's restart criterion for conjugate gradient methods.

    After ``module`` computed the direction ``d`` (the update), the module is reset and the
    update replaced by the gradient ``g`` when ``d^T g < cond * ||d|| ||g||``, i.e. when the
    angle between the direction and the gradient is not acute enough.

    Args:
        module: the module (a conjugate gradient or quasi-Newton method) to check and reset.
        cond: the threshold on the cosine between ``d`` and ``g``. Defaults to 1e-3.

    References:
        Birgin, E. G., and Martinez, J. M. "A spectral conjugate gradient method for unconstrained
        optimization." Applied Mathematics & Optimization 43.2 (2001): 117-128.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.BirginMartinezRestart(tz.m.PolakRibiere()),
        ...                    tz.m.StrongWolfe(c2=0.1))
    """

    def __init__(self, module: Chainable, cond: float = 1e-3):
        _check_modules("BirginMartinezRestart", "module", module, allow_none=False)
        _check_real("BirginMartinezRestart", "cond", cond)
        super().__init__(dict(cond=cond))
        self.set_child("module", module)

    def update(self, objective: Objective) -> None:
        self.children["module"].update(objective)

    def apply(self, objective: Objective) -> Objective:
        return self._check(self.children["module"].apply(objective.clone(clone_updates=False)))

    def step(self, objective: Objective) -> Objective:
        return self._check(self.children["module"].step(objective.clone(clone_updates=False)))

    @torch.no_grad()
    def _check(self, objective: Objective) -> Objective:
        g = objective.get_grads()
        d = objective.get_updates()
        dg, dd, gg = torch.stack([_dot(d, g), _dot(d, d), _dot(g, g)]).tolist()
        if dg < self.defaults["cond"] * math.sqrt(dd) * math.sqrt(gg):
            self.children["module"].reset()
            objective.updates = [t.clone() for t in g]
        return objective
