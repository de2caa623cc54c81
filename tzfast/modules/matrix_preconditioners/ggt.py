"""GGT (full-matrix Adagrad on a window of recent gradients) and GGTBasis (any modules in its eigenbasis)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

from ...core.chain import flatten_modules
from ...core.module import Chainable, Module
from ...core.transform import TensorTransform
from ._linalg import FakeChildState, check_int, check_number, child_buffers, eigh, ensure_fake_params, fake_params

__all__ = ["GGT", "GGTBasis"]


class BasisOptimizer(Protocol):
    """What ``GGT(basis_optimizer=...)`` expects (torchzero's ``tz.m.lre`` optimizers have this shape)."""

    def step(self, g: torch.Tensor, L: torch.Tensor, Q: torch.Tensor, state: dict) -> torch.Tensor: ...

    def reproject(self, L_old: torch.Tensor, Q_old: torch.Tensor, L_new: torch.Tensor, Q_new: torch.Tensor,
                  state: dict) -> None: ...


def _check_ggt(who: str, history_size: int, update_freq: int, eig_tol: float, truncate: int | None,
               damping: float, rdamping: float, matrix_power: float) -> None:
    check_int(who, "history_size", history_size, 1)
    check_int(who, "update_freq", update_freq, 1)
    check_number(who, "eig_tol", eig_tol, 0, allow_none=True)
    if truncate is not None:
        check_int(who, "truncate", truncate, 1)
    check_number(who, "damping", damping, 0)
    check_number(who, "rdamping", rdamping, 0)
    check_number(who, "matrix_power", matrix_power)


class _GGTBase(TensorTransform):
    """The window of gradients (an ``n x history_size`` ring buffer) and its Gram matrix, updated by one
    matrix-vector product per step instead of a stack and an ``n x k x k`` product."""

    @torch.no_grad()
    def _push(self, tensor: torch.Tensor, state: dict[str, Any], k: int) -> torch.Tensor:
        g = tensor.reshape(-1)
        H = state.get("history")
        if H is None or H.shape != (g.numel(), k):
            H = state["history"] = torch.zeros(g.numel(), k, dtype=g.dtype, device=g.device)
            state["gram"] = torch.zeros(k, k, dtype=g.dtype, device=g.device)
            state["count"] = 0
            state["pos"] = 0
        j = state["pos"]
        count = min(state["count"] + 1, k)
        H[:, j].copy_(g)
        Hc = H[:, :count]
        v = Hc.T @ g
        G = state["gram"]
        G[j, :count] = v
        G[:count, j] = v
        state["count"] = count
        state["pos"] = (j + 1) % k
        return Hc

    @staticmethod
    def _factors(Hc: torch.Tensor, G: torch.Tensor,
                 s: Mapping[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(L, U)``: eigenvalues (damped, filtered) of ``M^T M`` and ``U = M Q L**matrix_power``."""
        count = Hc.shape[1]
        MtM = G[:count, :count].clone()
        if s["damping"] != 0:
            MtM.diagonal().add_(s["damping"])
        try:
            L, Q = eigh(MtM)
        except torch.linalg.LinAlgError:
            return None, None
        finite = L.isfinite()
        if not finite.any():
            return None, None
        if not finite.all():
            L, Q = L[finite], Q[:, finite]
        L_max = L[-1]
        if s["eig_tol"] is not None:
            keep = L > s["eig_tol"] * L_max
            L, Q = L[keep], Q[:, keep]
        if s["truncate"] is not None:
            L, Q = L[-s["truncate"]:], Q[:, -s["truncate"]:]
        U = (Hc @ Q).mul_(L.pow(s["matrix_power"]))
        if s["rdamping"] != 0:
            L = L + s["rdamping"] * L[-1]
        return L, U

    @staticmethod
    def _fallback(tensor: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        """Elementwise: divide by the root mean square of the window."""
        Hc = state["history"][:, :state["count"]]
        rms = Hc.square().mean(1).sqrt_().add_(1e-8)
        return (tensor.reshape(-1) / rms).view_as(tensor)


class GGT(_GGTBase):
    """GGT: full-matrix Adagrad restricted to the last ``history_size`` gradients.

    The window ``M`` (``n x k``) gives ``M M^T``'s eigenpairs through the small ``k x k`` matrix
    ``M^T M + damping I``; the update is ``U L^p U^T u`` with ``U = M Q L^p``, ``p = matrix_power``.
    The Gram matrix is kept up to date with one matrix-vector product per step.

    Args:
        history_size: number of recent gradients kept. Defaults to 100.
        update_freq: steps between recomputations of the factors. Defaults to 1.
        eig_tol: eigenvalues below ``eig_tol`` times the largest are dropped. Defaults to 1e-7.
        truncate: keep only this many largest eigenvalues; None keeps all. Defaults to None.
        damping: added to the eigenvalues of ``M^T M`` (before ``U``). Defaults to 1e-4.
        rdamping: this times the largest eigenvalue is added after ``U`` is formed. Defaults to 0.
        matrix_power: exponent ``p``. Defaults to -1/2.
        basis_optimizer: an object with ``step(g, L, Q, state)`` and ``reproject(L_old, Q_old,
            L_new, Q_new, state)`` (e.g. torchzero's ``tz.m.lre`` optimizers) run in the
            eigenbasis instead of whitening. Defaults to None.
        concat_params: one window over all parameters concatenated. Defaults to True.
        inner: modules applied after the window is updated and before preconditioning.
            Defaults to None.

    References:
        Agarwal et al., "Efficient Full-Matrix Adaptive Regularization", arXiv:1806.02958.

    Examples:
        Adam with a limited-memory Adagrad preconditioner:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.GGT(inner=tz.m.EMA()), tz.m.Debias(0.9, 0.999),
        ...                    tz.m.LR(0.01))
    """

    def __init__(self, history_size: int = 100, update_freq: int = 1, eig_tol: float = 1e-7,
                 truncate: int | None = None, damping: float = 1e-4, rdamping: float = 0,
                 matrix_power: float = -1 / 2, basis_optimizer: BasisOptimizer | None = None,
                 concat_params: bool = True, inner: Chainable | None = None):
        _check_ggt(type(self).__name__, history_size, update_freq, eig_tol, truncate, damping, rdamping, matrix_power)
        if basis_optimizer is not None and not (callable(getattr(basis_optimizer, "step", None))
                                                and callable(getattr(basis_optimizer, "reproject", None))):
            raise TypeError(f"{type(self).__name__}: `basis_optimizer` must have `step` and `reproject` methods "
                            f"(a tz.m.lre optimizer) or be None, got {type(basis_optimizer).__name__}")
        super().__init__(dict(history_size=history_size, update_freq=update_freq, eig_tol=eig_tol, truncate=truncate,
                              damping=damping, rdamping=rdamping, matrix_power=matrix_power,
                              basis_optimizer=basis_optimizer), concat_params=concat_params, inner=inner)
        self.add_projected_keys("grad", "history")

    @torch.no_grad()
    def single_tensor_update(self, tensor, param, grad, loss, state, setting):  # type: ignore[no-untyped-def]
        Hc = self._push(tensor, state, setting["history_size"])
        step = state.get("step", 0)
        state["step"] = step + 1
        if step % setting["update_freq"] != 0:
            return
        L_new, U_new = self._factors(Hc, state["gram"], setting)
        opt = setting["basis_optimizer"]
        L, U = state.get("L"), state.get("U")
        if opt is not None and L is not None and U is not None and L_new is not None and U_new is not None:
            opt.reproject(L_old=L, Q_old=U, L_new=L_new, Q_new=U_new, state=state.setdefault("basis_state", {}))
        if L_new is not None:
            state["L"] = L_new
        if U_new is not None:
            state["U"] = U_new

    @torch.no_grad()
    def single_tensor_apply(self, tensor, param, grad, loss, state, setting):  # type: ignore[no-untyped-def]
        U = state.get("U")
        if U is None:
            return self._fallback(tensor, state)
        g = tensor.reshape(-1)
        L = state["L"]
        opt = setting["basis_optimizer"]
        if opt is not None:
            return opt.step(g, L=L, Q=U, state=state.setdefault("basis_state", {})).view_as(tensor)
        z = (U.T @ g).mul_(L.pow(setting["matrix_power"]))
        return (U @ z).view_as(tensor)


def _move_state(child: Module, old: torch.Tensor, new: torch.Tensor) -> None:
    """Re-keys every descendant's per-parameter state from ``old`` to ``new`` (flat buffers rebuilt)."""
    for m in flatten_modules(child):
        st = m.state.pop(old, None)
        if st is not None:
            m.state[new] = st
        m.settings.pop(old, None)
        m._invalidate_flat()


class GGTBasis(FakeChildState, _GGTBase):
    _fake_children = ("basis_opt",)

    """Runs ``basis_opt`` in GGT's eigenbasis (``rank <= history_size`` coordinates).

    Whenever the factors change, ``basis_opt``'s buffers are carried to the new basis with
    ``C = U_new^T U_old``: gradient-like buffers ``C b``, second-moment-like ``(C∘C) b``, third
    ``(C∘C∘C) b`` (the exact diagonal reprojections, so both ``approx_*`` flags give the same
    values), covariance-like ``C B C^T``. When the rank changes, the buffers change size.

    Args:
        basis_opt: module or modules run on the projected update.
        history_size: number of recent gradients kept. Defaults to 100.
        update_freq: steps between recomputations of the factors. Defaults to 1.
        eig_tol: eigenvalues below ``eig_tol`` times the largest are dropped. Defaults to 1e-7.
        truncate: keep only this many largest eigenvalues; None keeps all. Defaults to None.
        damping: added to the eigenvalues of ``M^T M``. Defaults to 1e-4.
        rdamping: this times the largest eigenvalue is added after the basis is formed. Defaults to 0.
        matrix_power: the basis is ``U = M Q L**matrix_power``. Defaults to -1/2.
        approx_sq_reproject: use ``(C∘C) b`` for second-moment buffers (identical to the exact
            ``diag(C diag(b) C^T)``). Defaults to False.
        approx_cu_reproject: use ``(C∘C∘C) b`` for third-moment buffers (identical to the exact
            form). Defaults to False.
        inner: modules applied after the window is updated and before projection. Defaults to None.

    References:
        Agarwal et al., "Efficient Full-Matrix Adaptive Regularization", arXiv:1806.02958.

    Examples:
        Full-matrix Adam in GGT's eigenbasis:

        >>> opt = tz.Optimizer(model.parameters(),
        ...                    tz.m.GGTBasis([tz.m.FullMatrixAdagrad(beta=0.99, inner=tz.m.EMA(0.9, debias=True))]),
        ...                    tz.m.LR(1e-3))
    """

    def __init__(self, basis_opt: Chainable, history_size: int = 100, update_freq: int = 1, eig_tol: float = 1e-7,
                 truncate: int | None = None, damping: float = 1e-4, rdamping: float = 0,
                 matrix_power: float = -1 / 2, approx_sq_reproject: bool = False, approx_cu_reproject: bool = False,
                 inner: Chainable | None = None):
        if basis_opt is None:
            raise TypeError(f"{type(self).__name__}: `basis_opt` must be a module or a sequence of modules, got None")
        _check_ggt(type(self).__name__, history_size, update_freq, eig_tol, truncate, damping, rdamping, matrix_power)
        super().__init__(dict(history_size=history_size, update_freq=update_freq, eig_tol=eig_tol, truncate=truncate,
                              damping=damping, rdamping=rdamping, matrix_power=matrix_power,
                              approx_sq_reproject=approx_sq_reproject, approx_cu_reproject=approx_cu_reproject),
                         concat_params=True, inner=inner)
        self.set_child("basis_opt", basis_opt)

    @torch.no_grad()
    def single_tensor_update(self, tensor, param, grad, loss, state, setting):  # type: ignore[no-untyped-def]
        self._restore_fake_children()
        Hc = self._push(tensor, state, setting["history_size"])
        step = state.get("step", 0)
        state["step"] = step + 1
        if step % setting["update_freq"] != 0:
            return
        L_new, U_new = self._factors(Hc, state["gram"], setting)
        U = state.get("U")
        if U is not None and L_new is not None and U_new is not None:
            self._reproject(U_new.T @ U)
        if L_new is not None:
            state["L"] = L_new
        if U_new is not None:
            state["U"] = U_new

    def _reproject(self, C: torch.Tensor) -> None:
        fakes = fake_params(self, "basis_opt")
        if not fakes:
            return
        old = fakes[0]
        child = self.children["basis_opt"]
        C2 = None
        new_vals: list[tuple[dict[str, Any], str, torch.Tensor]] = []
        for m, key in child_buffers(child, ("grad", "grad_sq", "grad_cu", "covariance"), old):
            b = m.state[old][key]
            kind = next(k for k in ("grad", "grad_sq", "grad_cu", "covariance") if key in m._projected_keys.get(k, ()))
            if kind == "grad":
                v = C @ b
            elif kind == "grad_sq":
                C2 = C.square() if C2 is None else C2
                v = C2 @ b
            elif kind == "grad_cu":
                v = C.pow(3) @ b
            else:
                v = C @ b @ C.T
            new_vals.append((m.state[old], key, v))
        if C.shape[0] == C.shape[1]:
            for st, key, v in new_vals:
                st[key].copy_(v)
            return
        # the rank changed: buffers change size, so the state moves to a stand-in of the new size
        for st, key, v in new_vals:
            st[key] = v
        new = torch.empty((), device=old.device, dtype=old.dtype).expand(C.shape[0])
        _move_state(child, old, new)
        self.global_state["__fake_basis_opt"] = [new]

    @torch.no_grad()
    def single_tensor_apply(self, tensor, param, grad, loss, state, setting):  # type: ignore[no-untyped-def]
        self._restore_fake_children()
        U = state.get("U")
        if U is None:
            return self._fallback(tensor, state)
        g_proj = U.T @ tensor.reshape(-1)
        fakes = ensure_fake_params(self, "basis_opt", [g_proj])
        d = self.inner_step_tensors("basis_opt", [g_proj], clone=False, params=fakes, grads=[g_proj])[0]
        return (U @ d).view_as(tensor)
