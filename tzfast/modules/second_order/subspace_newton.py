"""``SubspaceNewton``: a Newton step in a subspace spanned by ``sketch_size`` directions (random,
or past gradients), with the sketched Hessian ``S^T H S`` from one batched Hessian product."""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from ...core.derivatives import HVPMethod
from ...core.module import Chainable
from ...core.transform import Transform
from ._common import (check_callable, check_choice, check_hvp_method, check_int, check_real, flat, newton_solve,
                      newton_update_state_, require_closure, unflat)
from ._operators import Sketched

if TYPE_CHECKING:
    from ...core.objective import Objective
    from ...linalg.linear_operator import LinearOperator

__all__ = ["SubspaceNewton"]

SKETCH_TYPES = ("orthonormal", "common_directions", "mixed", "rademacher", "rows", "topk")


def _orthonormal_columns(A: torch.Tensor) -> torch.Tensor:
    if A.shape[0] < A.shape[1]:
        return torch.linalg.qr(A.T).Q.T
    return torch.linalg.qr(A).Q


def _selection(indices: torch.Tensor, n: int, k: int, like: torch.Tensor) -> torch.Tensor:
    P = torch.zeros(n, k, dtype=like.dtype, device=like.device)
    P[indices, torch.arange(k, device=like.device)] = 1
    return P


class SubspaceNewton(Transform):
    """Randomized subspace Newton: ``d = S (S^T H S + damping I)^-1 S^T u`` for a sketch ``S`` of
    ``sketch_size`` columns.

    Sketches (``sketch_type``): ``'common_directions'`` keeps the normalized gradients of past
    steps, each orthogonalized against the others (Gram-Schmidt); ``'orthonormal'`` a random
    orthonormal basis; ``'rademacher'`` random signs scaled by ``1/sqrt(n)``; ``'rows'`` random
    coordinates; ``'topk'`` the coordinates with the largest gradient magnitudes; ``'mixed'`` the
    gradient, a slow and a fast gradient EMA, the previous step and random directions,
    orthonormalized. ``S^T H S`` costs ``sketch_size`` Hessian-vector products, one batched call
    with ``hvp_method='batched_autograd'``. The small system is solved as in :class:`Newton`
    (``eigval_fn``, ``eigv_tol``, ``truncate``, ``precompute_inverse``, ``use_lstsq``).
    A closure that accepts ``backward`` is required.

    Args:
        sketch_size: number of directions (at most the number of parameters). Defaults to 100.
        sketch_type: see above. Defaults to ``'common_directions'``.
        damping: added to the diagonal of the sketched Hessian. Defaults to 0.
        eigval_fn: function applied to the sketched Hessian's eigenvalues. Defaults to None.
        eigv_tol: drop eigenvalues below ``eigv_tol`` times the largest. Defaults to None.
        truncate: keep only this many largest eigenvalues. Defaults to None.
        update_freq: recompute the sketch and Hessian every ``update_freq`` steps. Defaults to 1.
        precompute_inverse: invert the sketched Hessian when it is computed. Defaults to False.
        use_lstsq: solve by least squares only. Defaults to False.
        hvp_method: ``'batched_autograd'``, ``'autograd'``, ``'fd_forward'``, ``'fd_central'``
            (aliases ``'forward'``, ``'central'``). Defaults to ``'batched_autograd'``.
        h: finite-difference step. Defaults to 1e-2.
        seed: seed of the module's generator; None draws from torch's global generator. Defaults to None.
        inner: modules whose output is preconditioned. Defaults to None.
        H_tfm: called as ``H_tfm(H_sketched, g_sketched)`` after the sketched Hessian is formed;
            returns ``(matrix, is_inverted)`` (the matrix, or its inverse, replaces the sketched
            Hessian) or a tensor (the step in the subspace, ``sketch_size`` entries, or the full
            update, used as is). Keyword-only. Defaults to None.

    References:
        Gower, R., Kovalev, D., Lieder, F. and Richtárik, P. "RSN: randomized subspace Newton."
        NeurIPS 32 (2019). arXiv:1905.10874.

    Examples:
        >>> import torch
        >>> import tzfast as tz
        >>> x = torch.nn.Parameter(torch.tensor([-1.1, 2.5], dtype=torch.float64))
        >>> opt = tz.Optimizer([x], tz.m.SubspaceNewton(sketch_size=2), tz.m.Backtracking())
        >>> def closure(backward=True):
        ...     loss = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> for _ in range(60):
        ...     _ = opt.step(closure)
        >>> bool(torch.allclose(x, torch.ones(2, dtype=torch.float64), atol=1e-6))
        True
    """

    def __init__(self, sketch_size: int = 100,
                 sketch_type: Literal["orthonormal", "common_directions", "mixed", "rademacher", "rows", "topk"]
                 = "common_directions",
                 damping: float = 0, eigval_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 eigv_tol: float | None = None, truncate: int | None = None, update_freq: int = 1,
                 precompute_inverse: bool = False, use_lstsq: bool = False,
                 hvp_method: HVPMethod = "batched_autograd", h: float = 1e-2, seed: int | None = None,
                 inner: Chainable | None = None, *, H_tfm: Callable | None = None):
        who = "SubspaceNewton"
        check_int(who, "sketch_size", sketch_size, 1)
        check_choice(who, "sketch_type", sketch_type, SKETCH_TYPES)
        check_real(who, "damping", damping)
        check_callable(who, "eigval_fn", eigval_fn)
        check_real(who, "eigv_tol", eigv_tol, allow_none=True)
        check_int(who, "truncate", truncate, 1, allow_none=True)
        check_int(who, "update_freq", update_freq, 1)
        check_hvp_method(who, hvp_method)
        check_real(who, "h", h, 0.0, open_low=True)
        check_callable(who, "H_tfm", H_tfm)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"{who}: `seed` must be an int or None, got {type(seed).__name__}: {seed!r}")
        defaults = dict(sketch_size=sketch_size, sketch_type=sketch_type, damping=damping, eigval_fn=eigval_fn,
                        eigv_tol=eigv_tol, truncate=truncate, precompute_inverse=precompute_inverse,
                        use_lstsq=use_lstsq, hvp_method=hvp_method, h=h, seed=seed, H_tfm=H_tfm)
        super().__init__(defaults, update_freq=update_freq, inner=inner)

    # ------------------------------------------------------------------ sketches
    def _flat_grad(self, objective: Objective, hvp_method: str) -> torch.Tensor:
        return flat(objective.get_grads(create_graph=hvp_method in ("batched_autograd", "autograd")))

    def _sketch(self, objective: Objective, s: Mapping[str, Any]) -> torch.Tensor:
        params = objective.params
        p0 = params[0]
        n = sum(p.numel() for p in params)
        k = min(s["sketch_size"], n)
        kind = s["sketch_type"]
        gen = self.get_generator(p0.device, s["seed"])
        dd = dict(dtype=p0.dtype, device=p0.device)
        if kind == "rademacher":
            signs = torch.bernoulli(torch.full((n, k), 0.5, **dd), generator=gen).mul_(2).sub_(1)  # type: ignore[arg-type]
            return signs.mul_(1 / math.sqrt(n))
        if kind == "orthonormal":
            return _orthonormal_columns(torch.randn(n, k, generator=gen, **dd))  # type: ignore[arg-type]
        if kind == "rows":
            idx = torch.multinomial(torch.ones(n, **dd), k, replacement=False, generator=gen)  # type: ignore[arg-type]
            return _selection(idx, n, k, p0)
        g = self._flat_grad(objective, s["hvp_method"]).detach()
        if kind == "topk":
            return _selection(torch.topk(g.abs(), k).indices, n, k, p0)
        gs = self.global_state
        if kind == "common_directions":
            tiny = torch.finfo(g.dtype).tiny * 2
            if "directions" not in gs:
                g_norm = torch.linalg.vector_norm(g)
                if g_norm < tiny:
                    g = torch.randn_like(g)
                    g_norm = torch.linalg.vector_norm(g)
                gs["directions"] = deque([g / g_norm], maxlen=s["sketch_size"])
                return gs["directions"][0].unsqueeze(1)
            S = torch.stack(tuple(gs["directions"]), dim=1)
            p = g - S @ (S.T @ g)
            p_norm = torch.linalg.vector_norm(p)
            if p_norm > tiny:
                p = p / p_norm
                gs["directions"].append(p)
                S = torch.cat([S, p.unsqueeze(1)], dim=1)
            return S
        # mixed
        if "slow_ema" not in gs:
            gs["slow_ema"] = torch.randn_like(g) * 1e-2
            gs["fast_ema"] = torch.randn_like(g) * 1e-2
            gs["p_prev"] = torch.randn_like(g)
        p_cur = flat([p.detach() for p in params]).clone()
        prev_dir = p_cur - gs["p_prev"]
        gs["p_prev"] = p_cur
        gs["slow_ema"].lerp_(g, 0.001)
        gs["fast_ema"].lerp_(g, 0.1)
        S = torch.stack([g, gs["slow_ema"], gs["fast_ema"], prev_dir], dim=1)
        if k > 4:
            rand = torch.randn(n, k - 3, generator=gen, **dd) / math.sqrt(n)  # type: ignore[arg-type]
            S = torch.cat([S, rand], dim=1)
        return _orthonormal_columns(S)

    # ------------------------------------------------------------------ update / apply
    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        s = settings[0]
        require_closure(type(self).__name__, objective)
        S = self._sketch(objective, s)
        HS, _ = objective.hessian_matrix_product(S, rgrad=None, at_x0=True, hvp_method=s["hvp_method"], h=s["h"])
        H_sketched = S.T @ HS
        gs = self.global_state
        gs.pop("direction", None)
        H_tfm = s["H_tfm"]
        if H_tfm is not None:
            out = H_tfm(H_sketched, S.T @ flat(objective.get_grads()))
            if isinstance(out, torch.Tensor):
                for key in ("H", "H_inv", "L", "Q"):
                    gs.pop(key, None)
                gs["direction"], gs["H"], gs["S"] = out, H_sketched, S
                return
            H_sketched, is_inverted = out
            if is_inverted:
                for key in ("L", "Q"):
                    gs.pop(key, None)
                gs["H_inv"], gs["H"], gs["S"] = H_sketched, torch.linalg.pinv(H_sketched), S
                return
        newton_update_state_(gs, H_sketched, damping=s["damping"], eigval_fn=s["eigval_fn"], eigv_tol=s["eigv_tol"],
                             truncate=s["truncate"], precompute_inverse=s["precompute_inverse"],
                             use_lstsq=s["use_lstsq"])
        gs["S"] = S

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        updates = objective.get_updates()
        gs = self.global_state
        S = gs["S"]
        direction = gs.get("direction")
        if direction is not None:
            d = S @ direction if direction.numel() == S.shape[1] else direction.reshape(-1)
        else:
            d = S @ newton_solve(S.T @ flat(updates), gs, use_lstsq=settings[0]["use_lstsq"])
        objective.updates = unflat(d, updates)
        return objective

    def get_H(self, objective: Objective | None = None) -> LinearOperator:
        """``S H_sketched S^T`` (the sketched Hessian of the last update, damped)."""
        gs = self.global_state
        if "H" in gs:
            H = gs["H"]
        else:
            H = (gs["Q"] * gs["L"]) @ gs["Q"].mH
        return Sketched(gs["S"], H)
