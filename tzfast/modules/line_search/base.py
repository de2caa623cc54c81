"""``LineSearchBase``: the base class of every line search, and the checks its subclasses share.

A line search receives the update ``d`` of the modules before it and looks for a step size
``a`` along ``-d``: it evaluates the closure at ``x0 - a*d`` for trial values of ``a`` (with
:meth:`~LineSearchBase.evaluate_f` and friends) and returns the chosen ``a`` from
:meth:`~LineSearchBase.search`. The base class then either leaves the parameters at
``x0 - a*d`` (when the line search is the last module of the optimizer, so nothing is
evaluated twice) or restores ``x0`` and multiplies the update by ``a``.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch

from ...core.module import Module
from ...core.objective import _grads_of

if TYPE_CHECKING:
    from ...core.objective import Objective

__all__ = ["LineSearch", "LineSearchBase", "MaxLineSearchItersReached", "TerminationCondition"]

TerminationCondition = Literal["armijo", "curvature", "strong_curvature", "wolfe", "strong_wolfe", "goldstein",
                               "decrease"]
TERMINATION_CONDITIONS: tuple[str, ...] = get_args(TerminationCondition)


class MaxLineSearchItersReached(Exception):
    """Raised by an evaluation past ``maxiter``; the search then uses the best step size seen."""


# ---------------------------------------------------------------------------- argument checks
def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_real(who: str, name: str, value: Any, lo: float = -math.inf, hi: float = math.inf,
               lo_open: bool = True, hi_open: bool = True, allow_none: bool = False) -> None:
    """Raises TypeError/ValueError unless ``value`` is a real number in the given interval."""
    if value is None and allow_none:
        return
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if not _is_real(value):
        raise TypeError(f"{who}: `{name}` must be a real number in {interval}"
                        f"{' or None' if allow_none else ''}, got {type(value).__name__} {value!r}")
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok or math.isnan(value):
        raise ValueError(f"{who}: `{name}` must be in {interval}, got {value!r}")


def check_int(who: str, name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    """Raises TypeError/ValueError unless ``value`` is an int ``>= minimum`` (or None when allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{who}: `{name}` must be an int >= {minimum}{' or None' if allow_none else ''}, "
                        f"got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{who}: `{name}` must be an int >= {minimum}, got {value!r}")


def check_choice(who: str, name: str, value: Any, choices: Sequence[str]) -> None:
    """Raises ValueError unless ``value`` is one of ``choices`` (the message lists them)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{who}: unknown `{name}` {value!r}; expected one of {', '.join(map(repr, choices))}")


# ---------------------------------------------------------------------------- small helpers
def tofloat(x: Any) -> float:
    """A Python float from a float, a 0-d tensor or a numpy scalar."""
    if isinstance(x, float):
        return x
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().item()
    return float(x)


def clip_to_dtype(x: Any, dtype: torch.dtype) -> Any:
    """``x`` clipped to ``[finfo.min / 2, finfo.max / 2]`` of ``dtype`` (its type kept when inside)."""
    fi = torch.finfo(dtype)
    if x > fi.max / 2:
        return fi.max / 2
    if x < fi.min / 2:
        return fi.min / 2
    return x


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i <a_i, b_i>`` as a 0-d tensor, without materialising the products."""
    total: Any = 0
    for x, y in zip(a, b, strict=True):
        total = total + torch.dot(x.reshape(-1), y.reshape(-1))
    if not isinstance(total, torch.Tensor):  # no tensors at all
        return torch.tensor(0.0)
    return total


def import_scipy_optimize(who: str) -> ModuleType:
    try:
        import scipy.optimize
    except ImportError as e:
        raise ImportError(f"{who} needs scipy (scipy.optimize), which could not be imported: {e}. "
                          f"Install it with `pip install scipy`.") from e
    return scipy.optimize


# ---------------------------------------------------------------------------- termination conditions
def sufficient_decrease(f_0: Any, g_0: Any, f_a: Any, a: Any, c: float) -> Any:
    """Armijo: ``f(a) < f(0) + c*a*min(g(0), 0)``."""
    return f_a < f_0 + c * a * min(g_0, 0)


def curvature(g_0: Any, g_a: Any, c: float) -> Any:
    return True if g_0 > 0 else g_a >= c * g_0


def strong_curvature(g_0: Any, g_a: Any, c: float) -> Any:
    return True if g_0 > 0 else abs(g_a) <= c * abs(g_0)


def goldstein(f_0: Any, g_0: Any, f_a: Any, a: Any, c: float) -> Any:
    """Armijo with the lower bound ``f(0) + (1-c)*a*g(0) < f(a)``."""
    g_0 = min(g_0, 0)
    return f_0 + (1 - c) * a * g_0 < f_a < f_0 + c * a * g_0


def termination_condition(condition: str, f_0: Any, g_0: Any, f_a: Any, g_a: Any, a: Any, c: float,
                          c2: float | None = None) -> Any:
    """Whether the step ``a`` with value ``f_a`` (and slope ``g_a``) is accepted; a non-finite ``f_a`` never is."""
    if not math.isfinite(f_a):
        return False
    if condition == "armijo":
        return sufficient_decrease(f_0, g_0, f_a, a, c)
    if condition == "decrease":
        return f_a < f_0
    if condition == "goldstein":
        return goldstein(f_0, g_0, f_a, a, c)
    if condition == "curvature":
        return curvature(g_0, g_a, c)
    if condition == "strong_curvature":
        return strong_curvature(g_0, g_a, c)
    if condition == "wolfe":
        return sufficient_decrease(f_0, g_0, f_a, a, c) and curvature(g_0, g_a, c2)  # type: ignore[arg-type]
    if condition == "strong_wolfe":
        return sufficient_decrease(f_0, g_0, f_a, a, c) and strong_curvature(g_0, g_a, c2)  # type: ignore[arg-type]
    raise ValueError(f"unknown condition {condition!r}; expected one of {', '.join(map(repr, TERMINATION_CONDITIONS))}")


# ---------------------------------------------------------------------------- the base class
class LineSearchBase(Module, ABC):
    """Base class of line searches: subclass it and override :meth:`search`.

    ``search(update, var)`` returns a step size ``a``; the parameters then move to
    ``x0 - a * update``. Inside ``search`` the helpers evaluate the objective along the update:

    * :meth:`evaluate_f` (alias :meth:`evaluate_step_size`) - the loss at step size ``a``;
    * :meth:`evaluate_f_d` - the loss and the directional derivative ``d/da f(x0 - a*update)``;
    * :meth:`evaluate_f_d_g` - the same and the gradient at the trial point;
    * :meth:`make_objective` / :meth:`make_objective_with_derivative` - those as functions of
      ``a`` alone, to hand to a scalar solver (``self.scopt`` is ``scipy.optimize``, imported
      on first use).

    The loss at ``a = 0`` is taken from the objective when known (no closure call). The
    parameters are set to ``x0 - a*update`` from a saved copy of ``x0`` (no drift across
    trials), and restored to ``x0`` when ``search`` raises. When the line search is the last
    module of the optimizer the parameters are left at the chosen point (the update is
    skipped); otherwise ``x0`` is restored and the update multiplied by the step size. A step
    size that is not finite is replaced by 0.

    Args:
        defaults: default values of the module's settings. Defaults to None.
        maxiter: when given, an evaluation past this many raises internally and the step size
            with the lowest loss seen so far is used (useful with external solvers that have
            no iteration limit). Defaults to None.

    Examples:
        A grid search over ``[start, end]``:

        >>> class GridLineSearch(tz.m.LineSearch):
        ...     def __init__(self, start, end, num):
        ...         super().__init__(dict(start=start, end=end, num=num))
        ...
        ...     @torch.no_grad()
        ...     def search(self, update, var):
        ...         best_loss, best_step = float("inf"), 0.0
        ...         for a in torch.linspace(self.defaults["start"], self.defaults["end"], self.defaults["num"]):
        ...             loss = self.evaluate_step_size(a.item(), var=var, backward=False)
        ...             if loss < best_loss:
        ...                 best_loss, best_step = loss, a.item()
        ...         return best_step
        >>> opt = tz.Optimizer(model.parameters(), GridLineSearch(0, 2, 20))

        Brent's method from scipy:

        >>> class Brent(tz.m.LineSearch):
        ...     @torch.no_grad()
        ...     def search(self, update, var):
        ...         return self.scopt.minimize_scalar(self.make_objective(var=var), method="brent").x
    """

    def __init__(self, defaults: dict[str, Any] | None = None, maxiter: int | None = None):
        check_int(type(self).__name__, "maxiter", maxiter, 1, allow_none=True)
        super().__init__(defaults)
        self._maxiter = maxiter
        self._begin(None)

    # ------------------------------------------------------------------ per-search state
    def _begin(self, objective: Objective | None) -> None:
        self._objective: Objective | None = objective
        self._params: list[torch.Tensor] = [] if objective is None else objective.params
        self._direction: list[torch.Tensor] = []
        self._x0: list[torch.Tensor] = []
        self._current_step_size: float = 0.0
        self._lowest_loss: float = math.inf
        self._best_step_size: Any = 0.0
        self._current_iter = 0

    def _end(self) -> None:
        """Drops the references to the step's tensors and closure (the scalars stay for inspection)."""
        self._objective = None
        self._params = []
        self._direction = []
        self._x0 = []

    def _save_x0(self, objective: Objective) -> None:
        """Copies the parameters into a flat per-bucket scratch buffer kept between steps."""
        params = objective.params
        layout = self._layout_for(objective)
        cached = self.global_state.get("__flat_x0")
        if cached is None or cached[0] != layout.token:
            views: list[torch.Tensor] = [torch.empty(0)] * len(params)
            for bucket in layout.buckets:
                flat = torch.empty(bucket.numel, dtype=bucket.dtype, device=bucket.device)
                for i, v in zip(bucket.param_idx, bucket.views(flat), strict=True):
                    views[i] = v
            cached = (layout.token, views)
            self.global_state["__flat_x0"] = cached
        self._x0 = cached[1]
        if params:
            torch._foreach_copy_(self._x0, params)

    def _set_step_size(self, step_size: Any) -> None:
        """Sets the parameters to ``x0 - step_size * d`` (from the saved ``x0``: no drift)."""
        if not math.isfinite(step_size):
            return
        step = clip_to_dtype(tofloat(step_size), self._direction[0].dtype) if self._direction else tofloat(step_size)
        if step == self._current_step_size:
            return
        params = self._params
        with torch.no_grad():
            if step == 0:
                if params:
                    torch._foreach_copy_(params, self._x0)
            else:
                # one pass per tensor (read x0 and d, write p), no temporary
                for p, x, d in zip(params, self._x0, self._direction, strict=True):
                    torch.sub(x, d, alpha=step, out=p)
        self._current_step_size = step

    def _check_var(self, var: Objective | None, who: str) -> Objective:
        obj = self._objective
        if obj is None:
            raise RuntimeError(f"{type(self).__name__}.{who} can only be called from `search` (during a step)")
        if var is not None and var is not obj:
            raise ValueError(f"{type(self).__name__}.{who}: `var` must be the objective passed to `search`, "
                             f"got another {type(var).__name__}")
        if obj.closure is None:
            raise RuntimeError(f"{type(self).__name__}: a line search needs a closure, but `step` was called "
                               f"without one; pass `closure` (def closure(backward=True): ...) to "
                               f"`optimizer.step(closure)`")
        return obj

    # ------------------------------------------------------------------ evaluations
    def _loss(self, step_size: Any, backward: bool = False, force: bool = False) -> float:
        """The loss at ``step_size``; at 0 the known loss is reused unless ``force``."""
        obj = self._objective
        assert obj is not None
        at_zero = step_size == 0
        if at_zero and obj.loss is not None and not force:
            return tofloat(obj.loss)
        if self._maxiter is not None and self._current_iter >= self._maxiter:
            raise MaxLineSearchItersReached
        self._current_iter += 1

        self._set_step_size(step_size)
        closure = obj.closure
        assert closure is not None
        if backward:
            with torch.enable_grad():
                loss = closure()
        else:
            loss = closure(False)

        if loss < self._lowest_loss:
            self._lowest_loss = tofloat(loss)
            self._best_step_size = step_size
        if at_zero:
            obj.loss = loss
            if backward:
                obj.grads = _grads_of(self._params)
        return tofloat(loss)

    def _loss_derivative_gradient(self, step_size: Any) -> tuple[float, float, list[torch.Tensor]]:
        obj = self._objective
        assert obj is not None
        if step_size == 0:
            # the gradient at x0 is evaluated (once) when no earlier module did
            loss = self._loss(step_size, backward=obj.grads is None, force=obj.grads is None)
            grads = obj.grads
            assert grads is not None
        else:
            loss = self._loss(step_size, backward=True)
            grads = _grads_of(self._params)
        derivative = -dot(grads, self._direction)
        return loss, tofloat(derivative), grads

    def _loss_derivative(self, step_size: Any) -> tuple[float, float]:
        loss, derivative, _ = self._loss_derivative_gradient(step_size)
        return loss, derivative

    def evaluate_f(self, step_size: float, var: Objective | None = None, backward: bool = False) -> float:
        """The loss at ``x0 - step_size * update`` (with ``backward``, also sets ``p.grad`` there)."""
        self._check_var(var, "evaluate_f")
        return self._loss(step_size, backward=backward)

    def evaluate_step_size(self, step_size: float, var: Objective | None = None, backward: bool = False) -> float:
        """Alias of :meth:`evaluate_f`."""
        self._check_var(var, "evaluate_step_size")
        return self._loss(step_size, backward=backward)

    def evaluate_f_d(self, step_size: float, var: Objective | None = None) -> tuple[float, float]:
        """``(loss, directional derivative)`` at ``step_size``; the derivative is ``-<grad, update>``."""
        self._check_var(var, "evaluate_f_d")
        return self._loss_derivative(step_size)

    def evaluate_f_d_g(self, step_size: float, var: Objective | None = None
                       ) -> tuple[float, float, list[torch.Tensor]]:
        """``(loss, directional derivative, gradient)`` at ``step_size``.

        The gradient tensors are those the closure left in ``p.grad`` (valid until the next
        evaluation when the closure zeroes gradients in place).
        """
        self._check_var(var, "evaluate_f_d_g")
        return self._loss_derivative_gradient(step_size)

    def make_objective(self, var: Objective | None = None, backward: bool = False) -> Callable[[float], float]:
        """``a -> loss(x0 - a * update)``, e.g. for ``scipy.optimize.minimize_scalar``."""
        self._check_var(var, "make_objective")
        return partial(self._loss, backward=backward)

    def make_objective_with_derivative(self, var: Objective | None = None) -> Callable[[float], tuple[float, float]]:
        """``a -> (loss, directional derivative)``."""
        self._check_var(var, "make_objective_with_derivative")
        return self._loss_derivative

    def make_objective_with_derivative_and_gradient(
            self, var: Objective | None = None) -> Callable[[float], tuple[float, float, list[torch.Tensor]]]:
        """``a -> (loss, directional derivative, gradient)``."""
        self._check_var(var, "make_objective_with_derivative_and_gradient")
        return self._loss_derivative_gradient

    @property
    def scopt(self) -> ModuleType:
        """``scipy.optimize``, imported on first use (ImportError naming scipy when missing)."""
        own = self.__dict__.get("_scopt")
        return own if own is not None else import_scipy_optimize(type(self).__name__)

    @scopt.setter
    def scopt(self, value: ModuleType) -> None:
        self.__dict__["_scopt"] = value

    # ------------------------------------------------------------------ the step
    @abstractmethod
    def search(self, update: list[torch.Tensor], var: Objective) -> float:
        """Finds the step size to use along ``-update``."""

    @torch.no_grad()
    def apply(self, objective: Objective) -> Objective:
        if objective.closure is None:
            raise RuntimeError(f"{type(self).__name__}: a line search needs a closure, but `step` was called "
                               f"without one; pass `closure` (def closure(backward=True): ...) to "
                               f"`optimizer.step(closure)`")
        self._begin(objective)
        self._save_x0(objective)
        try:
            update = objective.get_updates()
            self._direction = update
            try:
                step_size = self.search(update=update, var=objective)
            except MaxLineSearchItersReached:
                step_size = self._best_step_size
            step = tofloat(step_size) if step_size is not None else 0.0
            if not math.isfinite(step):
                step = 0.0
            if update:
                step = clip_to_dtype(step, update[0].dtype)

            if objective.loss_approx is None:
                objective.loss_approx = self._lowest_loss

            modular = objective.modular
            if modular is not None and len(modular.modules) > 0 and self is modular.modules[-1]:
                # last module: leave the parameters at the chosen point, nothing is evaluated twice
                self._set_step_size(step)
                objective.stop = True
                objective.skip_update = True
                return objective

            self._set_step_size(0.0)
            if update:
                torch._foreach_mul_(update, step)
            return objective
        except BaseException:
            self._set_step_size(0.0)
            raise
        finally:
            self._end()


LineSearch = LineSearchBase
"""Older name of :class:`LineSearchBase` used by the documentation's examples."""
