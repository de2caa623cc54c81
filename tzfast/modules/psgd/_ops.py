"""Preconditioner fitting rules of PSGD (Li, arXiv:1512.04202, arXiv:2402.11858), real tensors.

Every rule draws its random numbers from torch's default generator, in the order (and with the
shapes) of the reference implementation (lixilinx/psgd_torch, as shipped in torchzero 0.4.4), so
``torch.manual_seed`` reproduces a run of either library.

Notation: ``Q`` is the preconditioner factor, ``P = Q^T Q`` the preconditioner; ``L`` the running
Lipschitz-constant estimate that normalises each step (``L <- max(betaL L + (1 - betaL) ell, ell)``).
Kronecker factors act along one dimension each: a 2-D factor is a matrix, a 1-D factor a diagonal,
a 0-d factor (scalar parameter) a scale.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "DQ_CHOICES", "canonical_dq", "spd_norm_lower_bound", "skew_norm_lower_bound", "procrustes_step_",
    "kron_factor_shapes", "kron_init", "kron_precondition", "kron_newton_update_", "kron_whiten_update_",
    "dense_update_", "dense_precondition", "lra_init", "lra_update_", "lra_precondition",
]

DQ_CHOICES: tuple[str, ...] = ("QUAD4P", "QUAD", "QEP", "EQ", "QEQ", "Q0p5EQ1p5", "Q0.5EQ1.5")


def canonical_dq(who: str, dQ: str) -> str:
    """``dQ`` with ``'Q0p5EQ1p5'`` spelled ``'Q0.5EQ1.5'``; ValueError naming ``dQ`` if unknown."""
    if dQ not in DQ_CHOICES:
        raise ValueError(f"{who}: `dQ` must be one of {DQ_CHOICES}, got {dQ!r}")
    return "Q0.5EQ1.5" if dQ == "Q0p5EQ1p5" else dQ


def _tiny(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).smallest_normal


def _lift(x: torch.Tensor) -> torch.Tensor:
    """Half precision raised to float32; single and double unchanged."""
    return x.float() if torch.finfo(x.dtype).eps > 1e-6 else x


def _new_L(like: torch.Tensor) -> torch.Tensor:
    return _lift(torch.zeros((), dtype=like.dtype, device=like.device))


def _ema_max_(L: torch.Tensor, ell: torch.Tensor, betaL: float) -> torch.Tensor:
    """``L <- max(betaL L + (1 - betaL) ell, ell)`` in place; returns L."""
    return L.copy_(torch.maximum(L * betaL + ell * (1 - betaL), ell))


# ----------------------------------------------------------------------------- norms, rotation
def _subspace_bound(A: torch.Tensor, scale: torch.Tensor, k: int, half_iters: int) -> torch.Tensor:
    """Spectral-norm lower bound of ``A * scale`` by ``half_iters`` double subspace iterations of ``k`` rows."""
    tiny = _tiny(A)
    row = A[torch.argmax(torch.linalg.vector_norm(A, dim=1))]
    V = torch.randn(k, A.shape[1], dtype=A.dtype, device=A.device)
    V = row + torch.sign(V @ row).unsqueeze(1) * V  # rows of V point towards the largest row of A
    for _ in range(half_iters):
        V = V @ A
        V = V / (torch.linalg.vector_norm(V, dim=1, keepdim=True) + tiny)
        V = V @ A
    return scale * torch.linalg.vector_norm(V, dim=1).amax()


def spd_norm_lower_bound(A: torch.Tensor, k: int = 32, half_iters: int = 2) -> torch.Tensor:
    """A cheap lower bound of the spectral norm of a symmetric positive semi-definite ``A``."""
    scale = A.diagonal().amax() + _tiny(A)
    return _subspace_bound(A / scale, scale, k, half_iters)


def skew_norm_lower_bound(A: torch.Tensor, k: int = 32, half_iters: int = 2) -> torch.Tensor:
    """A cheap lower bound of the spectral norm of a skew-symmetric ``A``."""
    scale = A.abs().amax() + _tiny(A)
    return _subspace_bound(A / scale, scale, k, half_iters)


def procrustes_step_(Q: torch.Tensor, max_step_size: float = 1 / 8) -> None:
    """One rotation ``Q <- exp(a R) Q`` (second order), ``R = Q^T - Q``: moves ``Q`` towards SPD."""
    R = Q.T - Q
    R = R / (skew_norm_lower_bound(R) + _tiny(R))
    RQ = R @ Q
    RRQ = R @ RQ
    tr_RQ = RQ.diagonal().sum()
    tr_RRQ = RRQ.diagonal().sum()
    a = torch.where(tr_RRQ < 0, torch.clamp(-tr_RQ / tr_RRQ, min=0, max=max_step_size), max_step_size)
    Q.add_(a * (RQ + 0.5 * a * RRQ))


# ----------------------------------------------------------------------------- Kronecker factors
def kron_factor_shapes(shape: Sequence[int], max_dim: float, max_skew: float) -> list[tuple[int, ...]]:
    """Shapes of the factors of a (squeezed) tensor: ``(n, n)`` dense, ``(n,)`` diagonal, ``()`` scalar."""
    if len(shape) == 0:
        return [()]
    if len(shape) > 26:
        raise ValueError(f"PSGD Kronecker preconditioners support tensors of at most 26 dims, got {len(shape)}")
    numel = 1
    for s in shape:
        numel *= s
    return [(s,) if (s <= 1 or s > max_dim or s * s > max_skew * numel) else (s, s) for s in shape]


def kron_init(t: torch.Tensor, scale: float | torch.Tensor, max_dim: float, max_skew: float,
              dQ: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Factors ``Q`` (product equal to ``scale * I``; ``scale**2`` when fitting P with QUAD4P) and zero ``L``."""
    if dQ == "QUAD4P":
        scale = scale ** 2
    shapes = kron_factor_shapes(t.shape, max_dim, max_skew)
    if t.ndim == 0:
        return [scale * torch.ones_like(t)], [_new_L(t)]
    s = scale ** (1 / t.ndim)
    Q = [s * (torch.eye(sh[0], dtype=t.dtype, device=t.device) if len(sh) == 2
              else torch.ones(sh[0], dtype=t.dtype, device=t.device)) for sh in shapes]
    return Q, [_new_L(t) for _ in shapes]


def _mode(q: torch.Tensor, T: torch.Tensor, i: int) -> torch.Tensor:
    """Applies factor ``q`` along dim ``i`` of ``T`` (matrix product, diagonal or scalar scaling)."""
    if q.ndim == 0:
        return q * T
    if q.ndim == 1:
        shape = [1] * T.ndim
        shape[i] = -1
        return T * q.view(shape)
    return torch.movedim(torch.tensordot(q, T, dims=([1], [i])), 0, i)


def _mode_all(Q: Sequence[torch.Tensor], T: torch.Tensor) -> torch.Tensor:
    for i, q in enumerate(Q):
        T = _mode(q, T, i)
    return T


def _apply_P(Q: Sequence[torch.Tensor], T: torch.Tensor) -> torch.Tensor:
    """``P T`` with ``P = Q^T Q`` factor by factor."""
    for i, q in enumerate(Q):
        T = _mode(q.T @ q if q.ndim == 2 else q * q, T, i)
    return T


def _contract(X: torch.Tensor, Y: torch.Tensor, i: int, dense: bool) -> torch.Tensor:
    """Contraction of ``X`` and ``Y`` over every dim but ``i``: ``X_(i) Y_(i)^T`` (its diagonal when not dense)."""
    if X.ndim == 0:
        return X * Y
    if not dense:
        dims = [d for d in range(X.ndim) if d != i]
        return (X * Y).sum(dim=dims) if dims else X * Y
    n = X.shape[i]
    Xi = torch.movedim(X, i, 0).reshape(n, -1)
    Yi = torch.movedim(Y, i, 0).reshape(n, -1)
    return Xi @ Yi.T


def _balance_(Q: Sequence[torch.Tensor]) -> None:
    """Rescales the factors to equal max-abs (their product is unchanged)."""
    if len(Q) > 1:
        norms = [q.abs().amax() for q in Q]
        gmean = torch.stack(norms).prod() ** (1 / len(Q))
        for q, n in zip(Q, norms):
            q.mul_(gmean / n)


def _maybe_balance_(Q: Sequence[torch.Tensor], balance_prob: float) -> None:
    if torch.rand([]) < balance_prob:
        _balance_(Q)


def kron_precondition(Q: Sequence[torch.Tensor], G: torch.Tensor, dQ: str) -> torch.Tensor:
    """The preconditioned ``G``: ``P G`` (with QUAD4P the factors are P's)."""
    return _mode_all(Q, G) if dQ == "QUAD4P" else _apply_P(Q, G)


def _kron_eq_(Q: list[torch.Tensor], L: list[torch.Tensor], V: torch.Tensor, Hv: torch.Tensor, lr: float,
              betaL: float, balance_prob: float) -> None:
    """dQ = E Q (triangular factors)."""
    A = _mode_all(Q, Hv)
    B = V
    for i, q in enumerate(Q):  # B = Q^{-T} V factor by factor
        if q.ndim == 0:
            B = B / q
        elif q.ndim == 1:
            shape = [1] * B.ndim
            shape[i] = -1
            B = B / q.view(shape)
        else:
            Bi = torch.movedim(B, i, 0)
            shape = Bi.shape
            sol = torch.linalg.solve_triangular(_lift(q).T, _lift(Bi.reshape(shape[0], -1)), upper=False)
            B = torch.movedim(sol.to(B.dtype).reshape(shape), 0, i)
    for i, (q, Li) in enumerate(zip(Q, L)):
        dense = q.ndim == 2
        t1 = _contract(A, A, i, dense)
        t2 = _contract(B, B, i, dense)
        if not dense:
            _ema_max_(Li, (t1 + t2).amax(), betaL)
            q.sub_(lr / Li * (t1 - t2) * q)
        else:
            _ema_max_(Li, spd_norm_lower_bound(t1 + t2), betaL)
            q.sub_(lr / Li * torch.triu(t1 - t2) @ q)
    _maybe_balance_(Q, balance_prob)


def kron_newton_update_(Q: list[torch.Tensor], L: list[torch.Tensor], V: torch.Tensor, Hv: torch.Tensor, dQ: str,
                        lr: float, betaL: float, damping: float, balance_prob: float) -> None:
    """Fits ``P`` to ``P Hv ~ V`` (Newton-type) with one step in the local coordinates ``dQ``."""
    if dQ == "EQ":
        _kron_eq_(Q, L, V, Hv + damping * torch.randn_like(Hv), lr, betaL, balance_prob)
        return
    if dQ == "QEP":
        _balance_(Q)  # not optional here: L is not invariant to the factors' scales
    noisy = Hv + damping * torch.randn_like(Hv)
    Ph = _mode_all(Q, noisy) if dQ == "QUAD4P" else _apply_P(Q, noisy)
    for i, (q, Li) in enumerate(zip(Q, L)):
        dense = q.ndim == 2
        if dQ == "QEP":
            a, b = _mode(q, Ph, i), _mode(q, V, i)
            t1, t2 = _contract(a, a, i, dense), _contract(b, b, i, dense)
        else:
            t1, t2 = _contract(Ph, Ph, i, dense), _contract(V, V, i, dense)
        ell = spd_norm_lower_bound(t1 + t2) if dense else (t1 + t2).amax()
        _ema_max_(Li, ell, betaL)
        if dQ in ("QUAD", "QUAD4P"):
            step = lr / Li if dQ == "QUAD4P" else lr / 2 / Li
            if not dense:
                gain = 1 - step * (t1 - t2)
                q.mul_(gain * gain)
            else:
                err = step * (t1 - t2)
                p = q - err @ q
                p = p - p @ err
                q.copy_((p + p.T) / 2)
        elif not dense:
            q.mul_(1 - lr / Li * (t1 - t2))
        elif dQ == "QEQ":
            q.sub_(lr / Li * q @ (t1 - t2))
        else:  # QEP, Q0.5EQ1.5
            q.sub_(lr / Li * (t1 - t2) @ q)
            if dQ == "Q0.5EQ1.5":
                procrustes_step_(q)
    if dQ != "QEP":
        _maybe_balance_(Q, balance_prob)


def kron_whiten_update_(Q: list[torch.Tensor], L: list[torch.Tensor], G: torch.Tensor, dQ: str, lr: float,
                        betaL: float, damping: float, balance_prob: float) -> None:
    """Fits ``P`` so that ``P G`` is white (``E[P g g^T P] = P``) with one step in the coordinates ``dQ``."""
    if dQ == "EQ":
        V = torch.randn_like(G)
        _kron_eq_(Q, L, V, G + damping * V, lr, betaL, balance_prob)
        return
    if dQ == "QEP":
        _balance_(Q)
    n = G.numel()
    noisy = G + damping * torch.randn_like(G)
    Pg = _mode_all(Q, noisy) if dQ == "QUAD4P" else _apply_P(Q, noisy)
    for i, (q, Li) in enumerate(zip(Q, L)):
        dense = q.ndim == 2
        if dQ == "QEP":
            a = _mode(q, Pg, i)
            t1 = _contract(a, a, i, dense)
            if dense:
                t2 = n / q.shape[0] * (q @ q.T)
                _ema_max_(Li, spd_norm_lower_bound(t1 + t2), betaL)
                q.sub_(lr / Li * (t1 - t2) @ q)
            else:
                t2 = n / q.numel() * q * q
                _ema_max_(Li, (t1 + t2).amax(), betaL)
                q.mul_(1 - lr / Li * (t1 - t2))
            continue
        t1 = _contract(Pg, Pg, i, dense)
        c = n / q.shape[0] if dense else n / q.numel()  # times I
        _ema_max_(Li, (spd_norm_lower_bound(t1) if dense else t1.amax()) + c, betaL)
        if dQ in ("QUAD", "QUAD4P"):
            step = lr / Li if dQ == "QUAD4P" else lr / 2 / Li
            if not dense:
                gain = 1 - step * (t1 - c)
                q.mul_(gain * gain)
            else:
                p = q - step * (t1 @ q - c * q)
                p = p - step * (p @ t1 - p * c)
                q.copy_((p + p.T) / 2)
        elif not dense:
            q.mul_(1 - lr / Li * (t1 - c))
        elif dQ == "QEQ":
            q.sub_(lr / Li * (q @ t1 - q * c))
        else:  # Q0.5EQ1.5
            q.sub_(lr / Li * (t1 @ q - c * q))
            procrustes_step_(q)
    if dQ != "QEP":
        _maybe_balance_(Q, balance_prob)


# ----------------------------------------------------------------------------- dense
def dense_update_(Q: torch.Tensor, L: torch.Tensor, v: torch.Tensor, h: torch.Tensor, dQ: str, lr: float,
                  betaL: float, damping: float) -> None:
    """Fits the dense ``P`` to ``P h ~ v`` (``v``, ``h`` column vectors) with one step in the coordinates ``dQ``."""
    hn = h + damping * torch.randn_like(h)
    if dQ == "EQ":
        a = Q @ hn
        b = torch.linalg.solve_triangular(_lift(Q.T), _lift(v), upper=False).to(v.dtype)
        _ema_max_(L, (a * a + b * b).sum(), betaL)
        Q.sub_(lr / L * torch.triu(a @ a.T - b @ b.T) @ Q)
        return
    if dQ == "QEP":
        a = Q @ (Q.T @ (Q @ hn))
        b = Q @ v
        _ema_max_(L, (a * a + b * b).sum(), betaL)
        Q.sub_(lr / L * (a @ (a.T @ Q) - b @ (b.T @ Q)))
        return
    a = Q @ hn if dQ == "QUAD4P" else Q @ (Q @ hn) if dQ == "QUAD" else Q.T @ (Q @ hn)
    _ema_max_(L, (a * a + v * v).sum(), betaL)
    if dQ == "QEQ":
        Q.sub_(lr / L * ((Q @ a) @ a.T - (Q @ v) @ v.T))
    elif dQ == "Q0.5EQ1.5":
        Q.sub_(lr / L * (a @ (a.T @ Q) - v @ (v.T @ Q)))
        procrustes_step_(Q)
    else:  # QUAD, QUAD4P
        step = lr / L if dQ == "QUAD4P" else lr / 2 / L
        p = Q - step * (a @ (a.T @ Q) - v @ (v.T @ Q))
        p = p - step * ((p @ a) @ a.T - (p @ v) @ v.T)
        Q.copy_((p + p.T) / 2)


def dense_precondition(Q: torch.Tensor, g: torch.Tensor, dQ: str) -> torch.Tensor:
    if dQ == "QUAD4P":
        return Q @ g
    if dQ == "QUAD":
        return Q @ (Q @ g)  # Q is symmetric
    return Q.T @ (Q @ g)


# ----------------------------------------------------------------------------- low rank + diagonal
def lra_init(n: int, rank: int, init_scale: float | None, like: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """``U``, ``V`` (random, Frobenius norm sqrt(0.1)), ``d`` (``init_scale``, or None), zero ``L``'s."""
    r = max(min(rank, n - 1), 1)
    kw = dict(dtype=like.dtype, device=like.device)
    U = torch.randn(n, r, **kw)  # type: ignore[arg-type]
    U.mul_(0.1 ** 0.5 / torch.linalg.vector_norm(U))
    V = torch.randn(n, r, **kw)  # type: ignore[arg-type]
    V.mul_(0.1 ** 0.5 / torch.linalg.vector_norm(V))
    d = None if init_scale is None else torch.full((n, 1), float(init_scale), **kw)  # type: ignore[arg-type]
    return {"U": U, "V": V, "d": d, "Lu": _new_L(like), "Lv": _new_L(like), "Ld": _new_L(like)}


def lra_update_(U: torch.Tensor, V: torch.Tensor, d: torch.Tensor, Lu: torch.Tensor, Lv: torch.Tensor,
                Ld: torch.Tensor, v: torch.Tensor, h: torch.Tensor, lr: float, betaL: float) -> None:
    """One fitting step of ``Q = (I + U V^T) diag(d)`` on the pair ``(v, h)`` (column vectors)."""
    # rebalance U and V towards U^T U = V^T V (a scaling and an approximate rotation)
    UtU, VtV = U.T @ U, V.T @ V
    trU, trV = UtU.diagonal().sum(), VtV.diagonal().sum()
    rho = (trU / trV) ** (1 / 4)
    rho2 = rho * rho
    E = 0.1 * (UtU / rho2 - VtV * rho2) / (trU / rho2 + trV * rho2)
    E2 = 0.5 * E @ E
    U.div_(rho)
    V.mul_(rho)
    U.sub_(U @ (E - E2))
    V.add_(V @ (E + E2))

    dh = d * h
    Qh = dh + U @ (V.T @ dh)
    Ph = d * (Qh + V @ (U.T @ Qh))

    IpVtU = V.T @ U
    IpVtU.diagonal().add_(1)
    LU, piv, _ = torch.linalg.lu_factor_ex(_lift(IpVtU))
    b = v / d
    b = b - V @ torch.linalg.lu_solve(LU, piv, _lift(U.T @ b), adjoint=True).to(V.dtype)  # Q^{-T} v
    invPv = (b - U @ torch.linalg.lu_solve(LU, piv, _lift(V.T @ b)).to(U.dtype)) / d

    Phh, vPv = Ph * h, v * invPv
    _ema_max_(Ld, Phh.abs().amax() + vPv.abs().amax(), betaL)
    d.sub_(lr / Ld * (Phh - vPv) * d)

    a = Qh
    if torch.rand([]) < 0.5:  # update U only
        atV, btV = a.T @ V, b.T @ V
        ell = (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(atV @ V.T)
               + torch.linalg.vector_norm(b) * torch.linalg.vector_norm(btV @ V.T))
        _ema_max_(Lu, ell, betaL)
        U.sub_(lr / Lu * (a @ (atV @ IpVtU) - b @ (btV @ IpVtU)))
    else:  # update V only
        atU, btU = a.T @ U, b.T @ U
        ell = (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(U @ atU.T)
               + torch.linalg.vector_norm(b) * torch.linalg.vector_norm(U @ btU.T))
        _ema_max_(Lv, ell, betaL)
        V.sub_(lr / Lv * ((a + V @ atU.T) @ atU - (b + V @ btU.T) @ btU))


def lra_precondition(U: torch.Tensor, V: torch.Tensor, d: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``Q^T Q g`` with ``Q = (I + U V^T) diag(d)``."""
    g = d * g
    g = g + U @ (V.T @ g)
    return d * (g + V @ (U.T @ g))
