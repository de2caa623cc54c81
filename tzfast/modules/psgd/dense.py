"""PSGD with a dense (full-matrix) Newton-type preconditioner."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from ...core.derivatives import Distributions, HVPMethod, _sample_like
from ...core.module import Chainable
from ...core.objective import Objective
from ...core.transform import Transform
from ._common import check_common, check_half_quad4p, check_hvp, clip_norm_, flat, unflat
from ._ops import _new_L, canonical_dq, dense_precondition, dense_update_

__all__ = ["PSGDDenseNewton", "DenseNewton"]

DQ = Literal["QUAD4P", "QUAD", "QEP", "EQ", "QEQ", "Q0p5EQ1p5", "Q0.5EQ1.5"]


class PSGDDenseNewton(Transform):
    """Preconditioned SGD with a dense ``n x n`` Newton-type preconditioner ``P = Q^T Q``.

    Each update draws ``v`` and fits ``P`` so that ``P (H v) ~ v`` with one normalised step of
    the chosen geometry ``dQ``; the update (or ``inner``'s output) is multiplied by ``P``.
    Uses O(n^2) memory for n parameters.

    Args:
        init_scale: initial ``Q = init_scale * I``; None sets it from the first
            Hessian-vector product. Defaults to None.
        lr_preconditioner: step size of the preconditioner fit. Defaults to 0.1.
        betaL: EMA factor of the Lipschitz-constant estimate. Defaults to 0.9.
        damping: scale of the noise added to the Hessian-vector product. Defaults to 1e-9.
        grad_clip_max_norm: the preconditioned update is scaled down to this norm. Defaults to inf.
        update_probability: probability of fitting the preconditioner on a step. Defaults to 1.0.
        dQ: geometry of the fit: ``'Q0.5EQ1.5'`` (alias ``'Q0p5EQ1p5'``), ``'QEQ'``, ``'QEP'``,
            ``'EQ'``, ``'QUAD'`` or ``'QUAD4P'`` (fits P directly). Defaults to ``'Q0.5EQ1.5'``.
        hvp_method: ``'autograd'``, ``'batched_autograd'``, ``'fd_forward'`` or ``'fd_central'``.
            Defaults to ``'autograd'``.
        h: finite-difference step of the ``fd`` methods. Defaults to 1e-3.
        distribution: distribution of ``v``. Defaults to ``'normal'``.
        inner: modules applied to the update before preconditioning. Defaults to None.

    References:
        Li, X.-L. Preconditioned Stochastic Gradient Descent, arXiv:1512.04202; Stochastic Hessian
        fittings with Lie groups, arXiv:2402.11858.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.PSGDDenseNewton(inner=tz.m.EMA(0.9)), tz.m.LR(1e-3))
    """

    def __init__(self, init_scale: float | None = None, lr_preconditioner: float = 0.1, betaL: float = 0.9,
                 damping: float = 1e-9, grad_clip_max_norm: float = math.inf, update_probability: float = 1.0,
                 dQ: DQ = "Q0.5EQ1.5", hvp_method: HVPMethod = "autograd", h: float = 1e-3,
                 distribution: Distributions = "normal", inner: Chainable | None = None):
        who = type(self).__name__
        check_common(who, init_scale, lr_preconditioner, betaL, damping, ("grad_clip_max_norm", grad_clip_max_norm),
                     update_probability, dQ)
        check_hvp(who, hvp_method, h, distribution)
        super().__init__(dict(init_scale=init_scale, lr_preconditioner=lr_preconditioner, betaL=betaL, damping=damping,
                              grad_clip_max_norm=grad_clip_max_norm, update_probability=update_probability, dQ=dQ,
                              hvp_method=hvp_method, h=h, distribution=distribution), inner=inner)

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        s = settings[0]
        params = objective.params
        dQ = canonical_dq(type(self).__name__, s["dQ"])
        gs = self.global_state
        if "L" not in gs:
            p = params[0]
            check_half_quad4p(type(self).__name__, dQ, p.dtype)
            if s["init_scale"] is not None:
                n = sum(t.numel() for t in params)
                scale = s["init_scale"] ** 2 if dQ == "QUAD4P" else s["init_scale"]
                gs["Q"] = torch.eye(n, dtype=p.dtype, device=p.device) * scale
            gs["L"] = _new_L(p)
        Q = gs.get("Q")
        if torch.rand([]) < s["update_probability"] or Q is None:
            vs = _sample_like(params, s["distribution"], None, None)
            Hvs, _ = objective.hessian_vector_product(vs, rgrad=None, at_x0=True, hvp_method=s["hvp_method"], h=s["h"])
            v, h = flat(vs), flat(Hvs)
            if Q is None:
                scale = (v * v).mean() ** (1 / 4) * ((h ** 4).mean() + s["damping"] ** 4) ** (-1 / 8)
                if dQ == "QUAD4P":
                    scale = scale * scale
                Q = gs["Q"] = torch.eye(v.shape[0], dtype=v.dtype, device=v.device) * scale
            dense_update_(Q, gs["L"], v, h, dQ, s["lr_preconditioner"], s["betaL"], s["damping"])

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        s = settings[0]
        updates = objective.get_updates()
        pre = dense_precondition(self.global_state["Q"], flat(updates), canonical_dq(type(self).__name__, s["dQ"]))
        clip_norm_(pre, s["grad_clip_max_norm"])
        objective.updates = unflat(pre, updates)
        return objective

    def _extra_unpack(self, d: dict) -> None:
        super()._extra_unpack(d)
        for k in ("Q", "L"):  # a loaded optimizer owns its matrices
            if isinstance(self.global_state.get(k), torch.Tensor):
                self.global_state[k] = self.global_state[k].clone()


DenseNewton = PSGDDenseNewton
