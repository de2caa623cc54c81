"""SOAP (Adam in Shampoo's eigenbasis) and SOAPBasis (any modules in Shampoo's eigenbases)."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ...core.module import Chainable
from ...core.transform import TensorTransform
from ._linalg import (FakeChildState, accumulate_covariances_, check_beta, check_int, check_number, child_buffers,
                      ensure_fake_params, kron_dims, merge, merge_plan, project, project_back, unmerge)

__all__ = ["SOAP", "SOAPBasis"]


def _initial_basis(GG: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Eigenvectors of each factor (in float64, largest eigenvalue first)."""
    out: list[torch.Tensor | None] = []
    for M in GG:
        if M is None:
            out.append(None)
            continue
        if not torch.isfinite(M).all():
            raise RuntimeError(f"Initial gradient for parameter {tuple(M.shape)} has non-finite values.")
        M64 = M.to(torch.float64)
        M64.diagonal().add_(1e-30)
        try:
            _, Q = torch.linalg.eigh(M64)
        except RuntimeError:
            if M64.is_cpu:
                raise
            _, Q = torch.linalg.eigh(M64.cpu())
            Q = Q.to(M.device)
        out.append(Q.flip(1).to(M.dtype))
    return out


def _refresh_basis(GG: Sequence[torch.Tensor | None], Qs: Sequence[torch.Tensor | None],
                   diag_buffers: list[torch.Tensor]) -> tuple[list[torch.Tensor | None], list[torch.Tensor]]:
    """One power iteration + QR (in float32, as SOAP does) per factor; ``diag_buffers`` (second-moment
    like, in projected coordinates) are permuted to the new order of the basis."""
    new: list[torch.Tensor | None] = []
    for i, (M, O) in enumerate(zip(GG, Qs)):
        if M is None or O is None:
            new.append(None)
            continue
        est = torch.diagonal(O.T @ M @ O)
        order = torch.argsort(est, descending=True)
        diag_buffers = [b.index_select(i, order) for b in diag_buffers]
        power_iter = M @ O[:, order]
        try:
            Q, _ = torch.linalg.qr(power_iter.to(torch.float32))
        except torch.linalg.LinAlgError:
            Q, _ = torch.linalg.qr(power_iter.to(torch.float64))
        new.append(Q.to(power_iter.dtype))
    return new, diag_buffers


class _ShampooEigenbasis(TensorTransform):
    """Shared state of SOAP and SOAPBasis: merged shapes, Kronecker factors ``GG`` and their bases ``Q``."""

    _moments = True

    def _check_common(self, shampoo_beta: float | None, precond_freq: int, max_dim: int) -> None:
        who = type(self).__name__
        check_beta(who, "shampoo_beta", shampoo_beta, allow_none=True)
        check_int(who, "precond_freq", precond_freq, 1)
        check_int(who, "max_dim", max_dim, 1)

    @torch.no_grad()
    def single_tensor_initialize(self, tensor, param, grad, loss, state, setting):  # type: ignore[no-untyped-def]
        plan = state["merge_plan"] = merge_plan(tensor.shape, setting["max_dim"]) if setting["merge_small"] else None
        t = merge(tensor, plan)
        if self._moments:
            state["exp_avg_proj"] = torch.zeros_like(t)
            state["exp_avg_sq_proj"] = torch.zeros_like(t)
        dims = kron_dims(t.shape, setting["max_dim"], setting["precondition_1d"])
        GG: list[torch.Tensor | None] | None = [
            torch.zeros(s, s, dtype=t.dtype, device=t.device) if d else None for s, d in zip(t.shape, dims)]
        if not any(dims):
            GG = None
        if GG is not None:
            accumulate_covariances_(t, GG, setting["shampoo_beta"])
            try:
                state["Q"] = _initial_basis(GG)
            except torch.linalg.LinAlgError as e:
                warnings.warn(f"{type(self).__name__}: torch.linalg.eigh failed on the first step, this parameter "
                              f"uses diagonal preconditioning. The error was:\n{e}", stacklevel=2)
                GG = None
        state["GG"] = GG
        state["step"] = 0

    def _project_all(self, tensors: list[torch.Tensor], updates: list[torch.Tensor], states: list[dict[str, Any]]
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        grads_m, updates_m, projected = [], [], []
        for g, u, st in zip(tensors, updates, states):
            plan = st["merge_plan"]
            um = merge(u, plan)
            grads_m.append(um if u is g else merge(g, plan))
            updates_m.append(um)
            projected.append(project(um, st["Q"]) if st["GG"] is not None else um)
        return grads_m, updates_m, projected

    @staticmethod
    def _project_back(dirs: Sequence[torch.Tensor], states: list[dict[str, Any]]) -> list[torch.Tensor]:
        out = []
        for d, st in zip(dirs, states):
            if st["GG"] is not None:
                d = project_back(d, st["Q"])
            out.append(unmerge(d, st["merge_plan"]))
        return out


class SOAP(_ShampooEigenbasis):
    """SOAP: Adam run in the eigenbasis of Shampoo's Kronecker factors.

    The factors are the exponential averages (``shampoo_beta``) of the gradient's per-dim Gram
    matrices; the basis comes from ``eigh`` on the first step and is refreshed every
    ``precond_freq`` steps by one power iteration and a QR decomposition (in float32, as the
    reference implementation does), the second moment being permuted to the new order. The first
    step returns the update clamped to [-0.1, 0.1]; the factors are updated after the step, so the
    current gradient never shapes its own projection.

    Args:
        beta1: first-moment decay. Defaults to 0.95.
        beta2: second-moment decay. Defaults to 0.95.
        shampoo_beta: decay of the factors; None sums them. Defaults to 0.95.
        precond_freq: steps between basis refreshes. Defaults to 10.
        merge_small: sort dims and merge the smallest while their product stays ``<= max_dim``.
            Defaults to False.
        max_dim: dims of this size or larger are not rotated. Defaults to 4096.
        precondition_1d: rotate 1-D tensors too (the paper does not). Defaults to True.
        eps: added to the root of the second moment. Defaults to 1e-8.
        debias: Adam's bias corrections. Defaults to True.
        proj_exp_avg: keep the first moment in the rotated coordinates (True) or in the
            original ones. Defaults to True.
        alpha: step size multiplier. Defaults to 1.
        inner: modules whose output (not the gradient, which updates the factors) Adam runs on.
            Defaults to None.

    References:
        Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv:2409.11321.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.SOAP(), tz.m.LR(1e-3))
    """

    def __init__(self, beta1: float = 0.95, beta2: float = 0.95, shampoo_beta: float | None = 0.95,
                 precond_freq: int = 10, merge_small: bool = False, max_dim: int = 4096, precondition_1d: bool = True,
                 eps: float = 1e-8, debias: bool = True, proj_exp_avg: bool = True, alpha: float = 1,
                 inner: Chainable | None = None):
        who = type(self).__name__
        check_beta(who, "beta1", beta1)
        check_beta(who, "beta2", beta2)
        check_number(who, "eps", eps, 0)
        check_number(who, "alpha", alpha)
        self._check_common(shampoo_beta, precond_freq, max_dim)
        super().__init__(dict(beta1=beta1, beta2=beta2, shampoo_beta=shampoo_beta, precond_freq=precond_freq,
                              merge_small=merge_small, max_dim=max_dim, precondition_1d=precondition_1d, eps=eps,
                              debias=debias, proj_exp_avg=proj_exp_avg, alpha=alpha))
        self.set_child("inner", inner)

    @torch.no_grad()
    def multi_tensor_apply(self, tensors, params, grads, loss, states, settings):  # type: ignore[no-untyped-def]
        steps = [st["step"] for st in states]
        if any(s == 0 for s in steps):
            for st in states:
                st["step"] += 1
            return [t.clamp(-0.1, 0.1) for t in tensors]
        updates = tensors
        if "inner" in self.children:
            updates = self.inner_step_tensors("inner", list(tensors), clone=True, params=params, grads=grads,
                                              loss=loss)
        grads_m, updates_m, projected = self._project_all(list(tensors), list(updates), states)
        proj_ema = settings[0]["proj_exp_avg"]
        dirs = []
        for u, p, st, s in zip(updates_m, projected, states, settings):
            m, v = st["exp_avg_proj"], st["exp_avg_sq_proj"]
            if proj_ema:
                m.lerp_(p, 1 - s["beta1"])
                mp = m
            else:
                m.lerp_(u, 1 - s["beta1"])
                mp = project(m, st["Q"]) if st["GG"] is not None else m
            v.mul_(s["beta2"]).addcmul_(p, p, value=1 - s["beta2"])
            dirs.append(mp / v.sqrt().add_(s["eps"]))
        dirs = self._project_back(dirs, states)

        # the factors (and the basis) are updated after the step
        for g, st, s in zip(grads_m, states, settings):
            if st["GG"] is not None:
                accumulate_covariances_(g, st["GG"], s["shampoo_beta"])
                if (st["step"] - 1) % s["precond_freq"] == 0:
                    m_orig = project_back(st["exp_avg_proj"], st["Q"]) if proj_ema else None
                    try:
                        Q, (v,) = _refresh_basis(st["GG"], st["Q"], [st["exp_avg_sq_proj"]])
                    except torch.linalg.LinAlgError:
                        pass
                    else:
                        st["Q"] = Q
                        st["exp_avg_sq_proj"].copy_(v)
                        if m_orig is not None:
                            st["exp_avg_proj"].copy_(project(m_orig, Q))
            st["step"] += 1

        for d, step, s in zip(dirs, steps, settings):
            a = s["alpha"]
            if settings[0]["debias"]:
                a = a * (1.0 - s["beta2"] ** (step + 1)) ** 0.5 / (1.0 - s["beta1"] ** (step + 1))
            d.mul_(a)
        return dirs


class SOAPBasis(FakeChildState, _ShampooEigenbasis):
    """Runs ``basis_opt`` in the eigenbases of Shampoo's Kronecker factors (SOAP's rotation, any optimizer).

    When a basis is refreshed, the gradient-like buffers of ``basis_opt`` (its modules' ``'grad'``
    buffers, e.g. ``EMA``'s ``exp_avg``) are rotated to the new basis and its second-moment-like
    ones (``'grad_sq'``, ``'grad_cu'``) are permuted to its new order, in place.

    Args:
        basis_opt: module or modules run on the rotated update.
        shampoo_beta: decay of the factors; None sums them. Defaults to 0.95.
        precond_freq: steps between basis refreshes. Defaults to 10.
        merge_small: sort dims and merge the smallest while their product stays ``<= max_dim``.
            Defaults to True.
        max_dim: dims of this size or larger are not rotated. Defaults to 4096.
        precondition_1d: rotate 1-D tensors too. Defaults to True.
        inner: modules whose output is rotated and given to ``basis_opt`` (the factors are updated
            from the gradient). Defaults to None.

    References:
        Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv:2409.11321.

    Examples:
        Lion in Shampoo's eigenbases:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.SOAPBasis(tz.m.Adam(0.95, 0.95)), tz.m.LR(1e-3))
    """

    _moments = False
    _fake_children = ("basis_opt",)

    def __init__(self, basis_opt: Chainable, shampoo_beta: float | None = 0.95, precond_freq: int = 10,
                 merge_small: bool = True, max_dim: int = 4096, precondition_1d: bool = True,
                 inner: Chainable | None = None):
        if basis_opt is None:
            raise TypeError(f"{type(self).__name__}: `basis_opt` must be a module or a sequence of modules, got None")
        self._check_common(shampoo_beta, precond_freq, max_dim)
        super().__init__(dict(shampoo_beta=shampoo_beta, precond_freq=precond_freq, merge_small=merge_small,
                              max_dim=max_dim, precondition_1d=precondition_1d))
        self.set_child("inner", inner)
        self.set_child("basis_opt", basis_opt)

    @torch.no_grad()
    def multi_tensor_apply(self, tensors, params, grads, loss, states, settings):  # type: ignore[no-untyped-def]
        self._restore_fake_children()
        if any(st["step"] == 0 for st in states):
            for st in states:
                st["step"] += 1
            return [t.clamp(-0.1, 0.1) for t in tensors]
        updates = tensors
        if "inner" in self.children:
            updates = self.inner_step_tensors("inner", list(tensors), clone=True, params=params, grads=grads,
                                              loss=loss)
        grads_m, _, projected = self._project_all(list(tensors), list(updates), states)
        fakes = ensure_fake_params(self, "basis_opt", projected)
        dirs = self.inner_step_tensors("basis_opt", projected, clone=True, params=fakes, grads=projected)
        dirs = self._project_back(dirs, states)

        child = self.children["basis_opt"]
        for i, (g, st, s) in enumerate(zip(grads_m, states, settings)):
            if st["GG"] is not None:
                accumulate_covariances_(g, st["GG"], s["shampoo_beta"])
                if (st["step"] - 1) % s["precond_freq"] == 0:
                    self._refresh(child, fakes[i], st)
            st["step"] += 1
        return dirs

    @staticmethod
    def _refresh(child: Any, fake: torch.Tensor, st: dict[str, Any]) -> None:
        g_bufs = [m.state[fake][k] for m, k in child_buffers(child, ("grad",), fake)]
        sq_bufs = [m.state[fake][k] for m, k in child_buffers(child, ("grad_sq", "grad_cu"), fake)]
        g_orig = [project_back(b, st["Q"]) for b in g_bufs]
        try:
            Q, sq_new = _refresh_basis(st["GG"], st["Q"], sq_bufs)
        except torch.linalg.LinAlgError:
            return
        st["Q"] = Q
        for b, n in zip(sq_bufs, sq_new):
            b.copy_(n)
        for b, o in zip(g_bufs, g_orig):
            b.copy_(project(o, Q))
