"""``GradientSampling``: the objective smoothed by sampling values and gradients at perturbed points."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import partial
from typing import Any, Literal

import torch

from ...core.module import Chainable, Module
from ...core.objective import Objective
from ...core.reformulation import Reformulation
from ...zero_order._directions import DISTRIBUTIONS, Directions
from ..grad_approximation.directions import next_key

__all__ = ["GradientSampling", "AGGREGATES", "SIGMA_STRATEGIES"]

Aggregate = Literal["mean", "max", "min", "min-norm", "min-value"]
AGGREGATES: tuple[str, ...] = ("mean", "max", "min", "min-norm", "min-value")
SIGMA_STRATEGIES: tuple[str | None, ...] = (None, "grad-norm", "value")
Distributions = Literal["gaussian", "normal", "rademacher", "uniform", "sphere"]

# GradientSampling draws torchzero's ``sample_like(distribution)`` without a variance: N(0, 1),
# U(-1, 1), +-1 and a direction of norm 1. The engine's uniform has variance 1 (half-width
# sqrt(3)) and its sphere has norm sqrt(numel), hence these factors.
_UNIFORM_SCALE = 1 / math.sqrt(3)


def _reset_except_self(objective: Objective, modules: Sequence[Module], self: Module) -> None:
    for m in modules:
        if m is not self:
            m.reset()


def _is_finite(value: Any) -> bool:
    return math.isfinite(float(value))


def _owned(value: Any, like: torch.Tensor) -> torch.Tensor:
    """A detached tensor copy of a loss value."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


def _global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    norms = torch._foreach_norm(list(tensors))
    return torch.stack([n.to(device=norms[0].device, dtype=torch.float64) for n in norms]).norm()


def _grads_now(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


class _TerminateAny(Module):
    """Several termination criteria: terminate when any of them says so (each is asked every step)."""

    def __init__(self, criteria: Sequence[Module]):
        super().__init__()
        for i, c in enumerate(criteria):
            self.set_child(f"criterion_{i}", c)

    def should_terminate(self, objective: Objective) -> bool:
        results = [c.should_terminate(objective) for c in self.children.values()]  # type: ignore[attr-defined]
        return any(results)

    def apply(self, objective: Objective) -> Objective:
        return objective


def _termination_module(termination: Any) -> Module:
    items = list(termination) if isinstance(termination, (list, tuple)) else [termination]
    for c in items:
        if not isinstance(c, Module) or not callable(getattr(c, "should_terminate", None)):
            raise TypeError(f"GradientSampling: `termination` must be a termination criterion module (with a "
                            f"`should_terminate(objective)` method, e.g. tz.m.TerminateAfterNSteps) or a sequence "
                            f"of them, got {type(c).__name__}")
    if not items:
        raise ValueError("GradientSampling: `termination` is an empty sequence; pass None for no criterion")
    return items[0] if len(items) == 1 else _TerminateAny(items)


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"GradientSampling: `{name}` must be a positive number, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"GradientSampling: `{name}` must be a positive finite number, got {value!r}")


class GradientSampling(Reformulation):
    """Optimizes the objective smoothed by sampling values and gradients at perturbed points.

    The modified objective at ``x`` evaluates the closure (with its gradient) at ``x + sigma * z_j``
    for ``n`` points — ``x`` itself when ``include_x0``, and ``n - include_x0`` random
    perturbations ``z_j`` — and aggregates the values and gradients. With ``aggregate='mean'``
    this is a Monte-Carlo estimate of the Gaussian-smoothed objective
    ``f_sigma(x) = E_z[f(x + sigma z)]`` and its gradient (Gaussian homotopy / smoothing); the
    other aggregations give gradient sampling methods. Non-finite values are skipped (all
    non-finite: the loss and the gradient are ``inf``).

    Perturbations come from tzfast's counter-based perturbation engine: each is regenerated from
    a key and its index instead of being stored, so ``n`` costs no memory (torchzero keeps
    ``n - 1`` full copies of the parameters). Beyond the parameters and their gradients, a call
    of the modified closure keeps one copy of the starting point and one aggregate.

    Args:
        modules: modules optimizing the modified objective. If None, the modified closure
            replaces the closure for every module after this one, and the modified objective's
            gradient is the update when nothing follows. Defaults to None.
        sigma: initial magnitude of the perturbations. Defaults to 1.0.
        n: number of evaluation points per call, ``x`` included when ``include_x0``.
            Defaults to 100.
        aggregate: how values and gradients are combined. Defaults to ``'mean'``.

            * ``'mean'``: mean of the values and of the gradients (Gaussian homotopy).
            * ``'max'`` / ``'min'``: elementwise largest / smallest gradient magnitude; as in
              torchzero, each element keeps the sign of the first finite sample's gradient. The
              value is the max / min.
            * ``'min-norm'``: the gradient of least norm, with its value (without a gradient:
              the least value).
            * ``'min-value'``: the value and gradient of the point with the least value.
        distribution: perturbation distribution: ``'gaussian'`` / ``'normal'`` (N(0, 1)),
            ``'rademacher'`` (+-1), ``'uniform'`` (U(-1, 1)) or ``'sphere'`` (a direction of
            norm 1 over all parameters). Defaults to ``'gaussian'``.
        include_x0: whether the unperturbed point is one of the ``n`` points. Defaults to True.
        fixed: if True, the same perturbations are used at every step until the termination
            criterion is met (only with ``pre_generate``). Defaults to True.
        pre_generate: if True, the perturbations of a step are chosen in advance, so every call
            of the modified closure within a step (line searches, trust regions) uses the same
            ones; if False, every call draws new ones. Defaults to True.
        termination: a termination criterion module (with ``should_terminate(objective)``) or
            a sequence of them (any one suffices). When it is met, sigma is multiplied by
            ``decay``, new perturbations are drawn if ``fixed``, and other modules are reset if
            ``reset_on_termination``. Defaults to None.
        decay: sigma multiplier when the termination criterion is met. Defaults to 2/3.
        reset_on_termination: whether to reset the states of the optimizer's other top-level
            modules when the termination criterion is met. Defaults to True.
        sigma_strategy: adapts sigma at every call of the modified closure: if the condition
            holds for at least ``sigma_target`` points, sigma is multiplied by ``sigma_nplus``,
            otherwise by ``sigma_nminus``. Defaults to None.

            * ``'grad-norm'``: perturbed points whose gradient norm is below the one at ``x``.
            * ``'value'``: perturbed points whose value is below the one at ``x``.
            * None: sigma is not adapted.

            This makes the closure stateful; leave it None when ``modules`` contain a line
            search or a trust region.
        sigma_target: number of points needed for the ``sigma_strategy`` condition; a float is
            a fraction of the finite evaluations (``int(max(1, n_finite * sigma_target))``).
            Defaults to 0.2.
        sigma_nplus: sigma multiplier when the condition holds. Defaults to 4/3.
        sigma_nminus: sigma multiplier when it does not. Defaults to 2/3.
        seed: an int makes the perturbations a deterministic function of ``(seed, step)``; None
            draws their key from torch's default generator (so ``torch.manual_seed`` reproduces a
            run). Defaults to None.

    Note:
        Differences from torchzero 0.4.4, all where torchzero's behaviour is a defect:

        * without ``modules`` and with ``include_x0`` the value at ``x`` is the original
          function's (torchzero recurses into the modified closure until RecursionError);
        * ``'min-value'`` with gradients returns the gradient of the least-value point
          (torchzero clamps the value first, so the gradient is never replaced);
        * the aggregate owns its tensors: the loss and gradient cached at ``x`` are not summed
          into in place, so ``optimizer.step`` returns ``f(x)`` and ``'grad-norm'`` compares
          against the true gradient at ``x``;
        * when a module in ``modules`` evaluates the modified closure away from ``x`` (a line
          search), the ``include_x0`` term is evaluated there, not taken from the cache at ``x``.

    References:
        Mobahi, H., Fisher III, J. W. (2015). A Theoretical Analysis of Optimization by Gaussian
        Continuation. AAAI. Burke, J. V., Lewis, A. S., Overton, M. L. (2005). A Robust Gradient
        Sampling Algorithm for Nonsmooth, Nonconvex Optimization. SIAM J. Optim. 15(3).

    Examples:
        Gaussian homotopy with Adam on the smoothed objective:

        >>> opt = tz.Optimizer(model.parameters(),
        ...                    tz.m.GradientSampling([tz.m.Adam(), tz.m.LR(1e-2)], sigma=0.1, n=10))

        The smoothed gradient as the update:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.GradientSampling(n=10, sigma=0.1), tz.m.LR(1e-2))
    """

    def __init__(self, modules: Chainable | None = None, sigma: float = 1.0, n: int = 100,
                 aggregate: Aggregate = "mean", distribution: Distributions = "gaussian", include_x0: bool = True,
                 fixed: bool = True, pre_generate: bool = True, termination: Module | Sequence[Module] | None = None,
                 decay: float = 2 / 3, reset_on_termination: bool = True,
                 sigma_strategy: Literal["grad-norm", "value"] | None = None, sigma_target: int | float = 0.2,
                 sigma_nplus: float = 4 / 3, sigma_nminus: float = 2 / 3, seed: int | None = None):
        if aggregate not in AGGREGATES:
            raise ValueError(f"GradientSampling: `aggregate` must be one of {AGGREGATES}, got {aggregate!r}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"GradientSampling: `distribution` must be one of {DISTRIBUTIONS}, got {distribution!r}")
        if sigma_strategy not in SIGMA_STRATEGIES:
            raise ValueError(f"GradientSampling: `sigma_strategy` must be one of {SIGMA_STRATEGIES}, "
                             f"got {sigma_strategy!r}")
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"GradientSampling: `n` must be an int >= 1, got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"GradientSampling: `n` must be >= 1, got {n}")
        for name, value in (("sigma", sigma), ("decay", decay), ("sigma_nplus", sigma_nplus),
                            ("sigma_nminus", sigma_nminus)):
            _check_positive(name, value)
        if not isinstance(sigma_target, (int, float)) or isinstance(sigma_target, bool) or sigma_target < 0:
            raise ValueError(f"GradientSampling: `sigma_target` must be a number >= 0, got {sigma_target!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(f"GradientSampling: `seed` must be an int or None, got {type(seed).__name__}")
        defaults = dict(sigma=sigma, n=n, aggregate=aggregate, distribution=distribution, seed=seed,
                        include_x0=bool(include_x0), fixed=fixed, decay=decay,
                        reset_on_termination=reset_on_termination, sigma_strategy=sigma_strategy,
                        sigma_target=sigma_target, sigma_nplus=sigma_nplus, sigma_nminus=sigma_nminus,
                        pre_generate=pre_generate)
        super().__init__(defaults, modules)
        if termination is not None:
            self.set_child("termination", _termination_module(termination))

    # ------------------------------------------------------------------ keys
    def _draw_key(self, objective: Objective) -> int:
        """A new engine key: mixed from ``(seed, step, draw)`` when ``seed`` is set, else drawn from torch's
        default generator (the convention of the gradient approximators)."""
        return next_key(self, self.defaults["seed"], objective.current_step)

    def _directions(self, params: list[torch.Tensor], distribution: str, key: int) -> Directions:
        """The directions of ``key`` (kept while the key and the parameters stay: sphere norms are computed once)."""
        cached: Directions | None = self.__dict__.get("_cached_directions")
        ids = [(id(p), p.shape, p.dtype, p.device) for p in params]
        if cached is not None and cached.key == key and cached.distribution == distribution \
                and self.__dict__.get("_cached_ids") == ids:
            return cached
        directions = Directions(params, distribution, key)
        self.__dict__["_cached_directions"], self.__dict__["_cached_ids"] = directions, ids
        return directions

    def _sigmas(self, params: Sequence[torch.Tensor]) -> list[float]:
        sigmas = []
        for p in params:
            st = self.state[p]
            if "sigma" not in st:
                st["sigma"] = self.settings[p]["sigma"]
            sigmas.append(st["sigma"])
        return sigmas

    # ------------------------------------------------------------------ Reformulation
    @torch.no_grad()
    def pre_step(self, objective: Objective) -> None:
        params = objective.params
        termination = self.children.get("termination")
        if termination is not None and termination.should_terminate(objective):  # type: ignore[attr-defined]
            for p, sigma in zip(params, self._sigmas(params), strict=True):
                self.state[p]["sigma"] = sigma * self.settings[p]["decay"]
            if self.defaults["reset_on_termination"]:
                objective.post_step_hooks.append(partial(_reset_except_self, self=self))
            self.global_state.pop("key", None)

        if self.defaults["pre_generate"] and ("key" not in self.global_state or not self.defaults["fixed"]):
            self.global_state["key"] = self._draw_key(objective)

    @torch.no_grad()
    def closure(self, backward: bool, closure: Callable, params: list[torch.Tensor],
                objective: Objective) -> tuple[Any, list[torch.Tensor] | None]:
        d = self.defaults
        include_x0: bool = d["include_x0"]
        aggregate: str = d["aggregate"]
        strategy: str | None = d["sigma_strategy"]
        n_perturbed = d["n"] - include_x0
        sigmas = self._sigmas(params)
        grad_ctx: Callable[[], Any] = torch.enable_grad if backward else nullcontext

        loss_agg: torch.Tensor | None = None
        grad_agg: list[torch.Tensor] | None = None
        n_finite = n_good = 0
        f_0: Any = None
        g_0: list[torch.Tensor] | None = None

        if include_x0:
            f_0 = objective.get_loss(backward=backward)
            finite = _is_finite(f_0)
            if finite:
                n_finite += 1
                loss_agg = _owned(f_0, params[0])
            if backward:
                g_0 = objective.get_grads()
                if finite:
                    grad_agg = [g.clone() for g in g_0]

        if n_perturbed > 0:
            key = self.global_state.get("key") if d["pre_generate"] else None
            if key is None:
                key = self._draw_key(objective)
            directions = self._directions(params, d["distribution"], key)
            scale = _UNIFORM_SCALE if d["distribution"] == "uniform" else \
                1 / math.sqrt(max(directions.numel, 1)) if d["distribution"] == "sphere" else 1.0
            alphas = [s * scale for s in sigmas]
            x_0 = [p.clone() for p in params]

        for k in range(n_perturbed):
            grad = None
            try:
                directions.add_(params, k, alphas)
                with grad_ctx():
                    loss = closure(backward)
                if backward:
                    grad = _grads_now(params)
            finally:
                torch._foreach_copy_(params, x_0)

            if _is_finite(loss):
                n_finite += 1
                loss_agg, grad_agg = self._aggregate(aggregate, backward, loss, grad, loss_agg, grad_agg, params)

            if strategy == "value":
                if f_0 is None:
                    with grad_ctx():
                        f_0 = closure(False)
                if loss < f_0:
                    n_good += 1
            elif strategy == "grad-norm" and backward and _is_finite(loss):
                assert grad is not None
                if g_0 is None:
                    with torch.enable_grad():
                        closure()
                    g_0 = [g.clone() for g in _grads_now(params)]
                if _global_norm(grad) < _global_norm(g_0):
                    n_good += 1

        if strategy is not None:
            target = d["sigma_target"]
            if isinstance(target, float):
                target = int(max(1, n_finite * target))
            key_name = "sigma_nplus" if n_good >= target else "sigma_nminus"
            for p in params:
                self.state[p]["sigma"] *= self.settings[p][key_name]

        if n_finite == 0:
            inf = torch.tensor(math.inf, dtype=params[0].dtype, device=params[0].device)
            return inf, [torch.full_like(p, math.inf) for p in params]

        assert loss_agg is not None
        if aggregate == "mean":
            loss_agg = loss_agg / n_finite
            if grad_agg is not None:
                torch._foreach_div_(grad_agg, n_finite)
        return loss_agg, grad_agg

    @staticmethod
    def _aggregate(aggregate: str, backward: bool, loss: Any, grad: list[torch.Tensor] | None,
                   loss_agg: torch.Tensor | None, grad_agg: list[torch.Tensor] | None,
                   params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Adds one finite evaluation to the aggregate (which owns its tensors)."""
        loss_t = _owned(loss, params[0])
        if loss_agg is None:
            return loss_t, None if grad is None else [g.clone() for g in grad]
        if aggregate == "mean":
            loss_agg = loss_agg + loss_t
            if grad is not None:
                if grad_agg is None:
                    grad_agg = [g.clone() for g in grad]
                else:
                    torch._foreach_add_(grad_agg, grad)
            return loss_agg, grad_agg
        if aggregate in ("min", "max"):
            loss_agg = torch.minimum(loss_agg, loss_t) if aggregate == "min" else torch.maximum(loss_agg, loss_t)
            if grad is not None:
                if grad_agg is None:
                    grad_agg = [g.clone() for g in grad]
                else:
                    mag = torch._foreach_abs(grad_agg)
                    if aggregate == "min":
                        torch._foreach_minimum_(mag, torch._foreach_abs(grad))
                    else:
                        torch._foreach_maximum_(mag, torch._foreach_abs(grad))
                    grad_agg = [m.copysign_(a) for m, a in zip(mag, grad_agg, strict=True)]
            return loss_agg, grad_agg
        if aggregate == "min-norm" and backward:
            assert grad is not None
            if grad_agg is None or _global_norm(grad) < _global_norm(grad_agg):
                return loss_t, [g.clone() for g in grad]
            return loss_agg, grad_agg
        # 'min-value', and 'min-norm' without gradients: the least value (with its gradient)
        if loss_t < loss_agg:
            return loss_t, None if grad is None else [g.clone() for g in grad]
        return loss_agg, grad_agg
