"""``NaturalGradient``: the empirical-Fisher natural gradient from a vector of per-sample losses."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...core.derivatives import _jacobian
from ...core.transform import Transform
from ._solvers import regularize_eigh

if TYPE_CHECKING:
    from ...core.objective import Objective

__all__ = ["NaturalGradient"]


def _unflat(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for t in like:
        out.append(vec[i:i + t.numel()].view_as(t).clone())
        i += t.numel()
    return out


class NaturalGradient(Transform):
    """Natural gradient with the empirical Fisher matrix ``F = G^T G`` of per-sample gradients.

    ``G`` (``k x n``) holds the gradients of the ``k`` entries of the loss vector, computed here
    (one vectorised backward pass with ``batched=True``). The loss vector is the ``loss=`` given
    to ``step`` or what the closure returns (called with ``backward=False``). The gradient is
    ``g = G^T 1`` (or ``G^T f`` with ``gn_grad``, the Gauss-Newton gradient of ``sum f^2 / 2``).

    * ``sqrt=False``: the update is ``G^T z`` with ``(G G^T + reg I) z = 1``, the minimum-norm
      solution of ``F v = g`` (kernel trick: a ``k x k`` system).
    * ``sqrt=True``: whitening by ``F^(-1/2)`` restricted to the row space of ``G``, from the
      eigendecomposition of ``G G^T + reg I``; if that fails, ``g / (rms of G's columns + reg)``.

    The objective's loss becomes ``sum(f)``, its gradient ``g``; a closure is wrapped so that
    later modules (line searches) see the scalar ``sum(f)`` (``sum(f^2)`` with ``gn_grad``).

    Args:
        reg: Tikhonov regularisation. Default 1e-8.
        sqrt: whiten with the square root of the empirical Fisher matrix. Default False.
        gn_grad: use ``G^T f`` as the gradient. Default False.
        batched: compute ``G`` with one vectorised backward pass (else a loop over rows).
            Default True.

    References:
        Amari, "Natural gradient works efficiently in learning", Neural Computation 10(2) (1998);
        Kunstner et al., "Limitations of the empirical Fisher approximation", arXiv:1905.12558.

    Examples:
        >>> import torch, tzfast as tz
        >>> X = torch.tensor([-1.1, 2.5], requires_grad=True)
        >>> opt = tz.Optimizer([X], tz.m.NaturalGradient(sqrt=True, gn_grad=True), tz.m.LR(0.05))
        >>> for _ in range(3):
        ...     losses = torch.stack([(1 - X[0]).abs(), 10 * (X[1] - X[0] ** 2).abs()])
        ...     _ = opt.step(loss=losses)
    """

    def __init__(self, reg: float = 1e-8, sqrt: bool = False, gn_grad: bool = False, batched: bool = True):
        if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg >= 0:
            raise ValueError(f"NaturalGradient: `reg` must be a number >= 0, got {reg!r}")
        super().__init__(dict(batched=batched, reg=reg, sqrt=sqrt, gn_grad=gn_grad))

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        params = objective.params
        closure = objective.closure
        fs = settings[0]
        f = objective.loss
        if f is None:
            if closure is None:
                raise RuntimeError("NaturalGradient needs a closure or `step(loss=...)` with the vector of losses, "
                                   "but got neither.")
            with torch.enable_grad():
                f = objective.get_loss(backward=False)
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"NaturalGradient: the loss must be a tensor of per-sample losses, got "
                            f"{type(f).__name__}")
        if not f.requires_grad:
            raise ValueError("NaturalGradient: the loss must be attached to the graph of the parameters "
                             "(requires_grad=True); compute it without torch.no_grad and do not call backward on it")
        with torch.enable_grad():
            G = _jacobian(f.reshape(-1), params, batched=fs["batched"], create_graph=False)
        f_flat = f.detach().reshape(-1)
        objective.loss = f.detach().sum()
        g = G.mH @ f_flat if fs["gn_grad"] else G.sum(0)
        self.global_state["G"] = G
        self.global_state["g"] = g
        objective.grads = _unflat(g, params)

        if closure is not None:
            gn_grad = fs["gn_grad"]

            def scalar_closure(backward: bool = True) -> torch.Tensor:
                if backward:
                    objective.zero_grad()
                    with torch.enable_grad():
                        value = closure(False)
                        value = (value.pow(2) if gn_grad else value).sum()
                        value.backward()
                    return value
                value = closure(False)
                return (value.pow(2) if gn_grad else value).sum()

            objective.closure = scalar_closure

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        fs = settings[0]
        reg = fs["reg"]
        G: torch.Tensor = self.global_state["G"]
        g: torch.Tensor = self.global_state["g"]
        k = G.shape[0]
        GGt = G @ G.mH
        if reg != 0:
            GGt.diagonal().add_(reg)
        if fs["sqrt"]:
            v = self._whiten(G, GGt, g, reg)
        else:
            z, info = torch.linalg.solve_ex(GGt, torch.ones(k, dtype=G.dtype, device=G.device))
            if int(info) != 0 or not bool(torch.isfinite(z).all()):
                z = torch.linalg.lstsq(GGt, torch.ones(k, 1, dtype=G.dtype, device=G.device),
                                       driver="gelsd" if G.device.type == "cpu" else None).solution.squeeze(-1)
            v = G.mH @ z
        objective.updates = _unflat(v, objective.params)
        return objective

    @staticmethod
    def _whiten(G: torch.Tensor, GGt: torch.Tensor, g: torch.Tensor, reg: float) -> torch.Tensor:
        try:
            L, Q = torch.linalg.eigh(GGt)
            reg_eig = regularize_eigh(L, Q, tol=1e-12)
        except torch.linalg.LinAlgError:
            reg_eig = None
        if reg_eig is None or reg_eig[0].numel() == 0:
            return g / G.square().mean(0).sqrt().add(reg)
        L, Q = reg_eig
        U = (G.mH @ Q) * L.pow(-0.5)
        L = L + 1e-16 * L[-1]
        return (U * L.rsqrt()) @ (U.mT @ g)
