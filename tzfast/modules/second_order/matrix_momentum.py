"""``MatrixMomentum`` (momentum through Hessian-vector products) and ``HpuEstimate``."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...core.derivatives import HVPMethod, canonical_hvp_method
from ...core.module import Chainable
from ...core.transform import TensorTransform, Transform

if TYPE_CHECKING:
    from ...core.objective import Objective

__all__ = ["HpuEstimate", "MatrixMomentum"]


def _norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def _small_first_step(update: list[torch.Tensor], eps: float) -> float:
    """Scale ``1 / sum|u|`` clipped to ``[eps / max|u|, 1]`` (1 when ``max|u| <= eps``)."""
    eps = max(eps, torch.finfo(update[0].dtype).eps)
    u_max = torch.stack([t.abs().max() for t in update if t.numel()]).max()
    lo = eps / u_max
    if lo >= 1:
        return 1.0
    total = sum(t.abs().sum() for t in update)
    return float((1 / total).clip(min=lo.item(), max=1))


class MatrixMomentum(Transform):
    """Matrix momentum (Orr & Leen): ``d = lr * u - s + mu * H s`` with ``s = x - x_prev``.

    The parameters move by ``-d = s - lr u - mu H s``: momentum whose decay ``I - mu H`` is a
    matrix. ``H s`` is one Hessian-vector product per step. The first step is
    ``lr * u`` scaled down so that its largest entry is small (no ``s`` yet). With ``adaptive``,
    ``mu`` is multiplied by ``|s| / |y|`` (``y`` the gradient difference; with ``adapt_freq``,
    the previous point's gradient is re-evaluated on the current batch every ``adapt_freq``
    steps). Put it last in the chain: ``lr`` is its own learning rate.

    Needs a closure accepting ``backward``.

    Args:
        mu: curvature coefficient, smaller than 1 / (largest Hessian eigenvalue). Default 0.1.
        hvp_method: ``'autograd'``, ``'batched_autograd'``, ``'fd_forward'``, ``'fd_central'``
            (aliases ``'forward'``, ``'central'``). Default ``'autograd'``.
        h: finite-difference step. Default 1e-3.
        hvp_tfm: chain applied to ``H s``. Default None.
        lr: learning rate of the gradient term (keyword-only; torchzero 0.4.4 takes it as its
            first, required argument). Default 1.0.
        adaptive: scale ``mu`` by ``|s| / |y|``. Default False (keyword-only).
        adapt_freq: with ``adaptive``, re-evaluate the previous point's gradient every
            ``adapt_freq`` steps (stochastic objectives); None uses consecutive gradients.
            Default None (keyword-only).
        inner: chain applied to the input before the update. Default None (keyword-only).

    References:
        Orr, Leen, "Using curvature information for fast stochastic search", NeurIPS 9 (1996).

    Examples:
        >>> import torch, tzfast as tz
        >>> x = torch.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = tz.Optimizer([x], tz.m.MatrixMomentum(mu=0.1, lr=0.1))
        >>> def closure(backward=True):
        ...     loss = (x ** 2).sum()
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
    """

    def __init__(self, mu: float = 0.1, hvp_method: HVPMethod = "autograd", h: float = 1e-3,
                 hvp_tfm: Chainable | None = None, *, lr: float = 1.0, adaptive: bool = False,
                 adapt_freq: int | None = None, inner: Chainable | None = None):
        try:
            canonical_hvp_method(hvp_method)
        except ValueError as e:
            raise ValueError(f"MatrixMomentum: {e}") from None
        if adapt_freq is not None and (isinstance(adapt_freq, bool) or not isinstance(adapt_freq, int)
                                       or adapt_freq < 1):
            raise ValueError(f"MatrixMomentum: `adapt_freq` must be None or an int >= 1, got {adapt_freq!r}")
        super().__init__(dict(lr=lr, mu=mu, hvp_method=hvp_method, h=h, adaptive=adaptive, adapt_freq=adapt_freq),
                         inner=inner)
        self.set_child("hvp_tfm", hvp_tfm)

    def reset_for_online(self) -> None:
        super().reset_for_online()
        self.clear_state_keys("p_prev")

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        if objective.closure is None:
            raise RuntimeError("MatrixMomentum needs a closure, but `step` was called without one. Pass a closure "
                               "`def closure(backward=True): ...` to `optimizer.step(closure)`.")
        step = self.increment_counter("step", 0)
        params = objective.params
        fs = settings[0]
        p_prev = self.get_state(params, "p_prev", init=lambda p: p.detach().clone())
        if step > 0:
            s = torch._foreach_sub(params, p_prev)
            try:
                Hs, _ = objective.hessian_vector_product(s, rgrad=None, at_x0=True, hvp_method=fs["hvp_method"],
                                                         h=fs["h"])
            except RuntimeError as e:
                if "scalar outputs" in str(e):
                    raise ValueError(f"MatrixMomentum: the closure must return a scalar loss (one element), got a "
                                     f"loss with more elements ({e})") from None
                raise
            Hs = [t.detach() for t in Hs]
            Hs = self.inner_step_tensors("hvp_tfm", Hs, clone=False, objective=objective, must_exist=False)
            self.store(params, ("Hs", "s"), (Hs, s))
            if fs["adaptive"]:
                self._adapt(objective, s, fs, step)
        elif fs["adaptive"]:
            self.store(params, "g_prev", [g.detach().clone() for g in objective.get_grads()])
        torch._foreach_copy_(p_prev, params)

    def _adapt(self, objective: Objective, s: list[torch.Tensor], fs: Mapping[str, Any], step: int) -> None:
        params = objective.params
        g = [t.detach() for t in objective.get_grads()]
        if fs["adapt_freq"] is None:
            g_prev = self.get_state(params, "g_prev")
            y = torch._foreach_sub(g, g_prev)
            torch._foreach_copy_(g_prev, g)
        else:
            if (step - 1) % fs["adapt_freq"] != 0:
                return
            p_prev = self.get_state(params, "p_prev")
            p_cur = [p.detach().clone() for p in params]
            try:
                torch._foreach_copy_(params, p_prev)
                g_old = objective.get_loss_grads(at_x0=False)[1]
            finally:
                torch._foreach_copy_(params, p_cur)
            y = torch._foreach_sub(g, g_old)
        denom = _norm(y)
        denom = denom.clip(min=torch.finfo(denom.dtype).tiny * 2)
        self.global_state["mu_mul"] = _norm(s) / denom

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        update = objective.get_updates()
        params = objective.params
        lr = [s["lr"] for s in settings]
        torch._foreach_mul_(update, lr)
        if self.global_state.get("step", 0) == 0:
            torch._foreach_mul_(update, _small_first_step(update, 1e-7))
            return objective
        mu: Any = [s["mu"] for s in settings]
        if "mu_mul" in self.global_state:
            mu = torch._foreach_mul([torch.as_tensor(m, dtype=update[0].dtype) for m in mu],
                                    self.global_state["mu_mul"])
        s, Hs = self.get_state(params, "s", "Hs")
        torch._foreach_sub_(update, s)
        torch._foreach_add_(update, torch._foreach_mul(Hs, mu))
        objective.updates = update
        return objective


class HpuEstimate(TensorTransform):
    """``y / |s|``: the change of the update over the length of the parameter step.

    ``y = u - u_prev`` and ``s = x - x_prev`` (both start from zero, so the first output is
    ``u / |x|``); ``|s|`` is clipped below at 1e-8. A finite-difference estimate of the Hessian
    times the previous (normalised) step when the input is the gradient.

    References:
        Nocedal, Wright, "Numerical Optimization", 2nd ed., §8 (secant pairs).

    Examples:
        >>> import torch, tzfast as tz
        >>> x = torch.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = tz.Optimizer([x], tz.m.HpuEstimate(), tz.m.LR(0.1))
        >>> (x ** 2).sum().backward()
        >>> opt.step()
    """

    def __init__(self) -> None:
        super().__init__({})

    def reset_for_online(self) -> None:
        super().reset_for_online()
        self.clear_state_keys("prev_params", "prev_update")

    @torch.no_grad()
    def multi_tensor_update(self, tensors: list[torch.Tensor], params: list[torch.Tensor],
                            grads: list[torch.Tensor] | None, loss: Any, states: list[dict[str, Any]],
                            settings: Sequence[Mapping[str, Any]]) -> None:
        prev_params, prev_update = self.get_state(params, "prev_params", "prev_update")
        s = torch._foreach_sub(params, prev_params)
        y = torch._foreach_sub(tensors, prev_update)
        torch._foreach_copy_(prev_params, params)
        torch._foreach_copy_(prev_update, tensors)
        norm = torch.linalg.vector_norm(torch.cat([t.reshape(-1) for t in s])).clip(min=1e-8)
        torch._foreach_div_(y, norm)
        self.store(params, "y", y)

    @torch.no_grad()
    def multi_tensor_apply(self, tensors: list[torch.Tensor], params: list[torch.Tensor],
                           grads: list[torch.Tensor] | None, loss: Any, states: list[dict[str, Any]],
                           settings: Sequence[Mapping[str, Any]]) -> list[torch.Tensor]:
        return [st["y"].clone() for st in states]
