"""PSGD with Kronecker-factored preconditioners: Newton-type and whitening."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from ...core.derivatives import Distributions, HVPMethod, _sample_like
from ...core.module import Chainable
from ...core.objective import Objective
from ...core.transform import TensorTransform, Transform
from ._common import check_common, check_half_quad4p, check_hvp
from ._ops import canonical_dq, kron_init, kron_newton_update_, kron_precondition, kron_whiten_update_

__all__ = ["PSGDKronNewton", "PSGDKronWhiten", "KronNewton", "KronWhiten"]

DQ = Literal["QEP", "EQ", "QEQ", "QUAD", "Q0.5EQ1.5", "Q0p5EQ1p5", "QUAD4P"]


# ----------------------------------------------------------------------------- per-parameter factors
# A parameter's factors are kept as separate state tensors "Q0", "Q1", ... and "L0", "L1", ...,
# so state_dict / load_state_dict see plain tensors (no lists, no callables).
def _ready(state: Mapping[str, Any]) -> bool:
    return "Q0" in state


def _factors(state: Mapping[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    k = state["num_factors"]
    return [state[f"Q{i}"] for i in range(k)], [state[f"L{i}"] for i in range(k)]


def _init_state(state: dict[str, Any], like: torch.Tensor, scale: float | torch.Tensor, s: Mapping[str, Any],
                who: str) -> None:
    dQ = canonical_dq(who, s["dQ"])
    check_half_quad4p(who, dQ, like.dtype)
    Q, L = kron_init(like.squeeze(), scale, s["max_dim"], s["max_skew"], dQ)
    state["num_factors"] = len(Q)
    for i, (q, li) in enumerate(zip(Q, L)):
        state[f"Q{i}"] = q
        state[f"L{i}"] = li


def _precondition(tensors: Sequence[torch.Tensor], params: Sequence[torch.Tensor], states: Sequence[Mapping[str, Any]],
                  settings: Sequence[Mapping[str, Any]], who: str) -> list[torch.Tensor]:
    out = [kron_precondition(_factors(st)[0], t.squeeze(), canonical_dq(who, s["dQ"])).view_as(p)
           for t, p, st, s in zip(tensors, params, states, settings)]
    max_amp = settings[0]["grad_clip_max_amp"]
    if max_amp < math.inf:
        numel = sum(t.numel() for t in out)
        amp = (torch.stack([(t * t).sum() for t in out]).sum() / numel).sqrt()
        if amp > max_amp:
            torch._foreach_mul_(out, max_amp / amp)
    return out


def _check_kron(who: str, max_dim: Any, max_skew: Any, balance_probability: Any) -> None:
    if isinstance(max_dim, bool) or not isinstance(max_dim, (int, float)) or not max_dim >= 0:
        raise ValueError(f"{who}: `max_dim` must be a number >= 0, got {max_dim!r}")
    if isinstance(max_skew, bool) or not isinstance(max_skew, (int, float)) or not max_skew >= 0:
        raise ValueError(f"{who}: `max_skew` must be a number >= 0, got {max_skew!r}")
    if isinstance(balance_probability, bool) or not isinstance(balance_probability, (int, float)) \
            or not 0 <= balance_probability <= 1:
        raise ValueError(f"{who}: `balance_probability` must be in [0, 1], got {balance_probability!r}")


class PSGDKronNewton(Transform):
    """Preconditioned SGD with a Kronecker-factored Newton-type preconditioner per parameter.

    Each parameter (squeezed) gets one factor per dimension: a dense matrix where the dimension
    is at most ``max_dim`` and its square at most ``max_skew`` times the parameter's size, else a
    diagonal. Each update draws ``v`` and fits the factors so that ``P (H v) ~ v``.

    Args:
        max_dim: dimensions larger than this get a diagonal factor. Defaults to 10000.
        max_skew: a dimension ``k`` with ``k**2 > max_skew * numel`` gets a diagonal factor. Defaults to 1.0.
        init_scale: initial scale of ``Q``; None sets it from the first Hessian-vector product.
            Defaults to None.
        lr_preconditioner: step size of the preconditioner fit. Defaults to 0.1.
        betaL: EMA factor of the Lipschitz-constant estimates. Defaults to 0.9.
        damping: scale of the noise added to the Hessian-vector product. Defaults to 1e-9.
        grad_clip_max_amp: the preconditioned update is scaled down to this root-mean-square
            amplitude. Defaults to inf.
        update_probability: probability of fitting the preconditioner on a step. Defaults to 1.0.
        dQ: geometry of the fit: ``'Q0.5EQ1.5'`` (alias ``'Q0p5EQ1p5'``), ``'QEQ'``, ``'QEP'``,
            ``'EQ'``, ``'QUAD'`` or ``'QUAD4P'``. Defaults to ``'Q0.5EQ1.5'``.
        balance_probability: probability of rebalancing the factors' scales after a fit.
            Defaults to 0.01.
        hvp_method: ``'autograd'``, ``'batched_autograd'``, ``'fd_forward'`` or ``'fd_central'``.
            Defaults to ``'autograd'``.
        h: finite-difference step of the ``fd`` methods. Defaults to 1e-3.
        distribution: distribution of ``v``. Defaults to ``'normal'``.
        inner: modules applied to the update before preconditioning. Defaults to None.

    References:
        Li, X.-L. Stochastic Hessian fittings with Lie groups, arXiv:2402.11858.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.KronNewton(inner=tz.m.EMA(0.9)), tz.m.LR(1e-3))
    """

    def __init__(self, max_dim: int = 10_000, max_skew: float = 1.0, init_scale: float | None = None,
                 lr_preconditioner: float = 0.1, betaL: float = 0.9, damping: float = 1e-9,
                 grad_clip_max_amp: float = math.inf, update_probability: float = 1.0, dQ: DQ = "Q0.5EQ1.5",
                 balance_probability: float = 0.01, hvp_method: HVPMethod = "autograd", h: float = 1e-3,
                 distribution: Distributions = "normal", inner: Chainable | None = None):
        who = type(self).__name__
        _check_kron(who, max_dim, max_skew, balance_probability)
        check_common(who, init_scale, lr_preconditioner, betaL, damping, ("grad_clip_max_amp", grad_clip_max_amp),
                     update_probability, dQ)
        check_hvp(who, hvp_method, h, distribution)
        super().__init__(dict(max_dim=max_dim, max_skew=max_skew, init_scale=init_scale,
                              lr_preconditioner=lr_preconditioner, betaL=betaL, damping=damping,
                              grad_clip_max_amp=grad_clip_max_amp, update_probability=update_probability, dQ=dQ,
                              balance_probability=balance_probability, hvp_method=hvp_method, h=h,
                              distribution=distribution), inner=inner)

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        who = type(self).__name__
        params = objective.params
        for p, st, s in zip(params, states, settings):
            if not _ready(st) and s["init_scale"] is not None:
                _init_state(st, p, s["init_scale"], s, who)
        s0 = settings[0]
        uninitialized = not all(_ready(st) for st in states)
        if torch.rand([]) < s0["update_probability"] or uninitialized:
            vs = _sample_like(params, s0["distribution"], None, None)
            Hvs, _ = objective.hessian_vector_product(vs, rgrad=None, at_x0=True, hvp_method=s0["hvp_method"],
                                                      h=s0["h"])
            if uninitialized:
                numel = sum(v.numel() for v in vs)
                scale = (torch.stack([(v * v).sum() for v in vs]).sum() / numel) ** (1 / 4)
                scale = scale * (torch.stack([(h.abs() ** 4).mean() for h in Hvs]).amax()
                                 + s0["damping"] ** 4) ** (-1 / 8)
                for h, st, s in zip(Hvs, states, settings):
                    if not _ready(st):
                        _init_state(st, h, scale, s, who)
            for v, h, st, s in zip(vs, Hvs, states, settings):
                Q, L = _factors(st)
                kron_newton_update_(Q, L, v.squeeze(), h.squeeze(), canonical_dq(who, s["dQ"]), s["lr_preconditioner"],
                                    s["betaL"], s["damping"], s["balance_probability"])

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        objective.updates = _precondition(objective.get_updates(), objective.params, states, settings,
                                          type(self).__name__)
        return objective


class PSGDKronWhiten(TensorTransform):
    """Preconditioned SGD with a Kronecker-factored whitening preconditioner per parameter.

    The factors are fitted so that the preconditioned input is white (``P ~ E[g g^T]^{-1/2}``),
    from the module's input; the input (or ``inner``'s output) is multiplied by ``P``. Factor
    shapes follow ``max_dim`` / ``max_skew`` as in :class:`PSGDKronNewton`. Needs no closure.

    Args:
        max_dim: dimensions larger than this get a diagonal factor. Defaults to 10000.
        max_skew: a dimension ``k`` with ``k**2 > max_skew * numel`` gets a diagonal factor. Defaults to 1.0.
        init_scale: initial scale of ``Q``; None sets it from the first input. Defaults to None.
        lr_preconditioner: step size of the preconditioner fit. Defaults to 0.1.
        betaL: EMA factor of the Lipschitz-constant estimates. Defaults to 0.9.
        damping: scale of the noise added to the input when fitting. Defaults to 1e-9.
        grad_clip_max_amp: the preconditioned update is scaled down to this root-mean-square
            amplitude. Defaults to inf.
        update_probability: probability of fitting the preconditioner on a step. Defaults to 1.0.
        dQ: geometry of the fit: ``'Q0.5EQ1.5'`` (alias ``'Q0p5EQ1p5'``), ``'QEQ'``, ``'QEP'``,
            ``'EQ'``, ``'QUAD'`` or ``'QUAD4P'``. Defaults to ``'Q0.5EQ1.5'``.
        balance_probability: probability of rebalancing the factors' scales after a fit.
            Defaults to 0.01.
        inner: modules applied to the input after the fit, before preconditioning. Defaults to None.

    References:
        Li, X.-L. Stochastic Hessian fittings with Lie groups, arXiv:2402.11858.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.KronWhiten(inner=tz.m.EMA(0.9)), tz.m.LR(1e-3))
    """

    def __init__(self, max_dim: int = 10_000, max_skew: float = 1.0, init_scale: float | None = None,
                 lr_preconditioner: float = 0.1, betaL: float = 0.9, damping: float = 1e-9,
                 grad_clip_max_amp: float = math.inf, update_probability: float = 1.0, dQ: DQ = "Q0.5EQ1.5",
                 balance_probability: float = 0.01, inner: Chainable | None = None):
        who = type(self).__name__
        _check_kron(who, max_dim, max_skew, balance_probability)
        check_common(who, init_scale, lr_preconditioner, betaL, damping, ("grad_clip_max_amp", grad_clip_max_amp),
                     update_probability, dQ)
        super().__init__(dict(max_dim=max_dim, max_skew=max_skew, init_scale=init_scale,
                              lr_preconditioner=lr_preconditioner, betaL=betaL, damping=damping,
                              grad_clip_max_amp=grad_clip_max_amp, update_probability=update_probability, dQ=dQ,
                              balance_probability=balance_probability), inner=inner)

    @torch.no_grad()
    def multi_tensor_initialize(self, tensors: list[torch.Tensor], params: list[torch.Tensor],
                                grads: list[torch.Tensor] | None, loss: Any, states: list[dict[str, Any]],
                                settings: Sequence[Mapping[str, Any]]) -> None:
        for p, st, s in zip(params, states, settings):
            if not _ready(st) and s["init_scale"] is not None:
                _init_state(st, p, s["init_scale"], s, type(self).__name__)

    @torch.no_grad()
    def multi_tensor_update(self, tensors: list[torch.Tensor], params: list[torch.Tensor],
                            grads: list[torch.Tensor] | None, loss: Any, states: list[dict[str, Any]],
                            settings: Sequence[Mapping[str, Any]]) -> None:
        who = type(self).__name__
        if not all(_ready(st) for st in states):
            m4 = torch.stack([(t.abs() ** 4).mean() for t in tensors]).amax()
            scale = (m4 + settings[0]["damping"] ** 4) ** (-1 / 8)
            for p, st, s in zip(params, states, settings):
                if not _ready(st):
                    _init_state(st, p, scale, s, who)
        if torch.rand([]) < settings[0]["update_probability"]:
            for t, st, s in zip(tensors, states, settings):
                Q, L = _factors(st)
                kron_whiten_update_(Q, L, t.squeeze(), canonical_dq(who, s["dQ"]), s["lr_preconditioner"], s["betaL"],
                                    s["damping"], s["balance_probability"])

    @torch.no_grad()
    def multi_tensor_apply(self, tensors: list[torch.Tensor], params: list[torch.Tensor],
                           grads: list[torch.Tensor] | None, loss: Any, states: list[dict[str, Any]],
                           settings: Sequence[Mapping[str, Any]]) -> Sequence[torch.Tensor]:
        return _precondition(tensors, params, states, settings, type(self).__name__)


KronNewton = PSGDKronNewton
KronWhiten = PSGDKronWhiten
