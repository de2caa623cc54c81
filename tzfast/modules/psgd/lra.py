"""PSGD with low-rank-plus-diagonal preconditioners ``Q = (I + U V^T) diag(d)``."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ...core.derivatives import Distributions, HVPMethod, _sample_like
from ...core.module import Chainable
from ...core.objective import Objective
from ...core.transform import TensorTransform, Transform
from ._common import check_common, check_hvp, clip_norm_, flat, unflat
from ._ops import lra_init, lra_precondition, lra_update_

__all__ = ["PSGDLRANewton", "PSGDLRAWhiten"]

_KEYS = ("U", "V", "d", "Lu", "Lv", "Ld")


def _check_rank(who: str, rank: Any) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"{who}: `rank` must be an int >= 0, got {rank!r}")


def _init(state: dict[str, Any], n: int, s: Mapping[str, Any], like: torch.Tensor) -> None:
    for k, v in lra_init(n, s["rank"], s["init_scale"], like).items():
        if v is not None:
            state[k] = v


def _update(state: dict[str, Any], v: torch.Tensor, h: torch.Tensor, s: Mapping[str, Any]) -> None:
    lra_update_(*(state[k] for k in _KEYS), v, h, s["lr_preconditioner"], s["betaL"])


def _precondition(state: Mapping[str, Any], g: torch.Tensor) -> torch.Tensor:
    return lra_precondition(state["U"], state["V"], state["d"], g)


class PSGDLRANewton(Transform):
    """Preconditioned SGD with a low-rank-plus-diagonal Newton-type preconditioner over all parameters.

    ``Q = (I + U V^T) diag(d)`` with ``U``, ``V`` of ``rank`` columns; each update draws ``v`` and
    fits ``P = Q^T Q`` so that ``P (H v) ~ v``. O(n * rank) memory.

    Args:
        rank: rank of the low-rank part (clamped to [1, n - 1]). Defaults to 10.
        init_scale: initial ``d``; None sets it from the first Hessian-vector product. Defaults to None.
        lr_preconditioner: step size of the preconditioner fit. Defaults to 0.1.
        betaL: EMA factor of the Lipschitz-constant estimates. Defaults to 0.9.
        damping: scale of the noise added to the Hessian-vector product. Defaults to 1e-9.
        grad_clip_max_norm: the preconditioned update is scaled down to this norm. Defaults to inf.
        update_probability: probability of fitting the preconditioner on a step. Defaults to 1.0.
        hvp_method: ``'autograd'``, ``'batched_autograd'``, ``'fd_forward'`` or ``'fd_central'``.
            Defaults to ``'autograd'``.
        h: finite-difference step of the ``fd`` methods. Defaults to 1e-3.
        distribution: distribution of ``v``. Defaults to ``'normal'``.
        inner: modules applied to the update before preconditioning. Defaults to None.

    References:
        Li, X.-L. Stochastic Hessian fittings with Lie groups, arXiv:2402.11858.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.PSGDLRANewton(inner=tz.m.EMA(0.9)), tz.m.LR(1e-3))
    """

    def __init__(self, rank: int = 10, init_scale: float | None = None, lr_preconditioner: float = 0.1,
                 betaL: float = 0.9, damping: float = 1e-9, grad_clip_max_norm: float = math.inf,
                 update_probability: float = 1.0, hvp_method: HVPMethod = "autograd", h: float = 1e-3,
                 distribution: Distributions = "normal", inner: Chainable | None = None):
        who = type(self).__name__
        _check_rank(who, rank)
        check_common(who, init_scale, lr_preconditioner, betaL, damping, ("grad_clip_max_norm", grad_clip_max_norm),
                     update_probability)
        check_hvp(who, hvp_method, h, distribution)
        super().__init__(dict(rank=rank, init_scale=init_scale, lr_preconditioner=lr_preconditioner, betaL=betaL,
                              damping=damping, grad_clip_max_norm=grad_clip_max_norm,
                              update_probability=update_probability, hvp_method=hvp_method, h=h,
                              distribution=distribution), inner=inner)

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        s = settings[0]
        params = objective.params
        gs = self.global_state
        if "U" not in gs:
            _init(gs, sum(p.numel() for p in params), s, params[0])
        if torch.rand([]) < s["update_probability"] or "d" not in gs:
            vs = _sample_like(params, s["distribution"], None, None)
            Hvs, _ = objective.hessian_vector_product(vs, rgrad=None, at_x0=True, hvp_method=s["hvp_method"], h=s["h"])
            v, h = flat(vs), flat(Hvs)
            if "d" not in gs:
                gs["d"] = (v * v).mean() ** (1 / 4) * ((h ** 4).mean() + s["damping"] ** 4) ** (-1 / 8) \
                    * torch.ones_like(v)
            _update(gs, v, h + s["damping"] * torch.randn_like(h), s)

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        updates = objective.get_updates()
        pre = _precondition(self.global_state, flat(updates))
        clip_norm_(pre, settings[0]["grad_clip_max_norm"])
        objective.updates = unflat(pre, updates)
        return objective

    def _extra_unpack(self, d: dict) -> None:
        super()._extra_unpack(d)
        for k in _KEYS:  # a loaded optimizer owns its factors
            if isinstance(self.global_state.get(k), torch.Tensor):
                self.global_state[k] = self.global_state[k].clone()


class PSGDLRAWhiten(TensorTransform):
    """Preconditioned SGD with a low-rank-plus-diagonal whitening preconditioner.

    ``Q = (I + U V^T) diag(d)`` is fitted so that the preconditioned input is white
    (``P ~ E[g g^T]^{-1/2}``); the input (or ``inner``'s output) is multiplied by ``P``.
    Needs no closure.

    Args:
        rank: rank of the low-rank part (clamped to [1, n - 1]). Defaults to 10.
        init_scale: initial ``d``; None sets it from the first input. Defaults to None.
        lr_preconditioner: step size of the preconditioner fit. Defaults to 0.1.
        betaL: EMA factor of the Lipschitz-constant estimates. Defaults to 0.9.
        damping: scale of the noise added to the input when fitting. Defaults to 1e-9.
        grad_clip_max_amp: the preconditioned update is scaled down to this root-mean-square
            amplitude. Defaults to inf.
        update_probability: probability of fitting the preconditioner on a step. Defaults to 1.0.
        concat_params: one preconditioner over all parameters (True) or one per parameter.
            Defaults to True.
        inner: modules applied to the input after the fit, before preconditioning. Defaults to None.
        grad_clip_max_norm: keyword-only; the name the documentation gives ``grad_clip_max_amp``
            (same meaning). Defaults to None (use ``grad_clip_max_amp``).

    References:
        Li, X.-L. Stochastic Hessian fittings with Lie groups, arXiv:2402.11858.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.PSGDLRAWhiten(inner=tz.m.EMA(0.9)), tz.m.LR(1e-3))
    """

    def __init__(self, rank: int = 10, init_scale: float | None = None, lr_preconditioner: float = 0.1,
                 betaL: float = 0.9, damping: float = 1e-9, grad_clip_max_amp: float = math.inf,
                 update_probability: float = 1.0, concat_params: bool = True, inner: Chainable | None = None, *,
                 grad_clip_max_norm: float | None = None):
        who = type(self).__name__
        if grad_clip_max_norm is not None:
            if grad_clip_max_amp != math.inf:
                raise ValueError(f"{who}: pass one of `grad_clip_max_amp` and `grad_clip_max_norm` (the same "
                                 f"setting), got {grad_clip_max_amp!r} and {grad_clip_max_norm!r}")
            grad_clip_max_amp = grad_clip_max_norm
        _check_rank(who, rank)
        check_common(who, init_scale, lr_preconditioner, betaL, damping, ("grad_clip_max_amp", grad_clip_max_amp),
                     update_probability)
        if not isinstance(concat_params, bool):
            raise TypeError(f"{who}: `concat_params` must be a bool, got {type(concat_params).__name__}")
        super().__init__(dict(rank=rank, init_scale=init_scale, lr_preconditioner=lr_preconditioner, betaL=betaL,
                              damping=damping, grad_clip_max_amp=grad_clip_max_amp,
                              update_probability=update_probability), concat_params=concat_params, inner=inner)

    @torch.no_grad()
    def single_tensor_initialize(self, tensor: torch.Tensor, param: torch.Tensor, grad: torch.Tensor | None,
                                 loss: Any, state: dict[str, Any], setting: Mapping[str, Any]) -> None:
        _init(state, tensor.numel(), setting, tensor)

    @torch.no_grad()
    def single_tensor_update(self, tensor: torch.Tensor, param: torch.Tensor, grad: torch.Tensor | None,
                             loss: Any, state: dict[str, Any], setting: Mapping[str, Any]) -> None:
        g = tensor.reshape(-1, 1)
        if "d" not in state:
            state["d"] = ((g ** 4).mean() + setting["damping"] ** 4) ** (-1 / 8) * torch.ones_like(g)
        if torch.rand([]) < setting["update_probability"]:
            v = torch.randn_like(g)
            _update(state, v, g + setting["damping"] * v, setting)

    @torch.no_grad()
    def single_tensor_apply(self, tensor: torch.Tensor, param: torch.Tensor, grad: torch.Tensor | None,
                            loss: Any, state: dict[str, Any], setting: Mapping[str, Any]) -> torch.Tensor:
        pre = _precondition(state, tensor.reshape(-1, 1))
        max_amp = setting["grad_clip_max_amp"]
        if max_amp < math.inf:
            amp = (pre * pre).mean().sqrt()
            if amp > max_amp:
                pre.mul_(max_amp / amp)
        return pre.view_as(tensor)
