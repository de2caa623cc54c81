"""Newton steps with a Nyström approximation of the Hessian from ``rank`` Hessian-vector
products: ``NystromSketchAndSolve`` solves with the approximation, ``NystromPCG`` uses it to
precondition conjugate gradients on the exact Hessian. The ``rank`` products are one batched
call (``hvp_method='batched_autograd'``: a single vectorised backward pass)."""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...core.derivatives import HVPMethod
from ...core.module import Chainable
from ...core.transform import Transform
from ._common import check_choice, check_hvp_method, check_int, check_real, flat, require_closure, unflat
from ._operators import Eigendecomposition, ScaledIdentity
from ._solvers import cg, nystrom_approximation, nystrom_pcg, nystrom_sketch_and_solve, orthogonalize_columns, \
    regularize_eigh

if TYPE_CHECKING:
    from ...core.objective import Objective
    from ...linalg.linear_operator import LinearOperator

__all__ = ["NystromSketchAndSolve", "NystromPCG"]

ORTHOGONALIZE_METHODS = ("qr", "svd", "eigh", "newtonschulz", "ns5", "polar_express")


def _check_seed(who: str, seed: Any) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"{who}: `seed` must be an int or None, got {type(seed).__name__}: {seed!r}")


def _sketch(module: Transform, objective: Objective, rank: int, seed: int | None) -> torch.Tensor:
    """A Gaussian ``(n, min(rank, n))`` test matrix, drawn as torchzero draws it (same generator,
    same shape), so a seeded run draws the same matrices."""
    p0 = objective.params[0]
    n = sum(p.numel() for p in objective.params)
    generator = module.get_generator(p0.device, seed)
    return torch.randn(n, min(rank, n), device=p0.device, dtype=p0.dtype, generator=generator)


class NystromSketchAndSolve(Transform):
    """Newton's method with the Hessian replaced by its rank-``rank`` Nyström approximation
    ``Q diag(L) Q^T``: the update is ``(Q diag(L) Q^T + reg I)^-1 u`` (``Q diag(1/L) Q^T u`` with
    ``reg=None``).

    Every ``update_freq`` steps a Gaussian test matrix is drawn, orthogonalized, and multiplied by
    the Hessian in one batched product. When the approximation fails (the Hessian is not positive
    semi-definite on the sketch) a warning is emitted and the previous one is kept; without any,
    the update passes through unchanged. A closure that accepts ``backward`` is required.

    Args:
        rank: size of the sketch (at most the number of parameters). Defaults to 100.
        reg: regularization of the solve; None solves with the approximation alone. Defaults to 1e-2.
        eigv_tol: drop eigenvalues below ``eigv_tol`` times the largest. Defaults to 0.
        truncate: keep only this many largest eigenvalues. Defaults to None.
        damping: added to the eigenvalues. Defaults to 0.
        rdamping: the largest eigenvalue times this is added to the eigenvalues. Defaults to 0.
        update_freq: recompute the approximation every ``update_freq`` steps. Defaults to 1.
        orthogonalize_method: ``'qr'``, ``'svd'``, ``'eigh'``, ``'newtonschulz'``/``'ns5'`` or
            ``'polar_express'``. Defaults to ``'qr'``.
        hvp_method: ``'batched_autograd'`` (one vectorised pass), ``'autograd'`` (a loop),
            ``'fd_forward'``, ``'fd_central'`` (aliases ``'forward'``, ``'central'``). Defaults to
            ``'batched_autograd'``.
        h: finite-difference step. Defaults to 1e-3.
        inner: modules whose output is preconditioned. Defaults to None.
        seed: seed of the module's generator; None draws from torch's global generator. Defaults to None.

    References:
        Frangella, Z., Tropp, J. A. and Udell, M. "Randomized Nyström preconditioning."
        SIAM Journal on Matrix Analysis and Applications 44.2 (2023). arXiv:2110.02820.

    Examples:
        >>> import torch
        >>> import tzfast as tz
        >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> x = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
        >>> opt = tz.Optimizer([x], tz.m.NystromSketchAndSolve(rank=2, reg=None, seed=0))
        >>> def closure(backward=True):
        ...     loss = 0.5 * x @ A @ x
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> _ = opt.step(closure)
        >>> bool(x.abs().max() < 1e-8)
        True
    """

    def __init__(self, rank: int = 100, reg: float | None = 1e-2, eigv_tol: float = 0, truncate: int | None = None,
                 damping: float = 0, rdamping: float = 0, update_freq: int = 1, orthogonalize_method: str = "qr",
                 hvp_method: HVPMethod = "batched_autograd", h: float = 1e-3, inner: Chainable | None = None,
                 seed: int | None = None):
        who = "NystromSketchAndSolve"
        check_int(who, "rank", rank, 1)
        check_real(who, "reg", reg, allow_none=True)
        check_real(who, "eigv_tol", eigv_tol)
        check_int(who, "truncate", truncate, 1, allow_none=True)
        check_real(who, "damping", damping)
        check_real(who, "rdamping", rdamping)
        check_int(who, "update_freq", update_freq, 1)
        check_choice(who, "orthogonalize_method", orthogonalize_method, ORTHOGONALIZE_METHODS)
        check_hvp_method(who, hvp_method)
        check_real(who, "h", h, 0.0, open_low=True)
        _check_seed(who, seed)
        defaults = dict(rank=rank, reg=reg, eigv_tol=eigv_tol, truncate=truncate, damping=damping, rdamping=rdamping,
                        orthogonalize_method=orthogonalize_method, hvp_method=hvp_method, h=h, seed=seed)
        super().__init__(defaults, update_freq=update_freq, inner=inner)

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        s = settings[0]
        require_closure(type(self).__name__, objective)
        Omega = orthogonalize_columns(_sketch(self, objective, s["rank"], s["seed"]), s["orthogonalize_method"])
        HOmega, _ = objective.hessian_matrix_product(Omega, rgrad=None, at_x0=True, hvp_method=s["hvp_method"],
                                                     h=s["h"])
        try:
            L, Q = nystrom_approximation(Omega, HOmega, eigv_tol=s["eigv_tol"])
        except torch.linalg.LinAlgError as e:
            warnings.warn(f"NystromSketchAndSolve: the Nyström approximation failed ({e}); keeping the previous one",
                          stacklevel=2)
            return
        reg = regularize_eigh(L, Q, truncate=s["truncate"], tol=s["eigv_tol"], damping=s["damping"],
                              rdamping=s["rdamping"], descending=True)
        if reg is not None:
            self.global_state["L"], self.global_state["Q"] = reg

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        if "L" not in self.global_state:
            return objective
        L, Q = self.global_state["L"], self.global_state["Q"]
        updates = objective.get_updates()
        b = flat(updates)
        reg = settings[0]["reg"]
        x = Q @ ((Q.mT @ b) / L) if reg is None else nystrom_sketch_and_solve(L, Q, b, reg)
        objective.updates = unflat(x, updates)
        return objective

    def get_H(self, objective: Objective | None = None) -> LinearOperator:
        """The approximation ``Q diag(L) Q^T`` (the identity before the first one)."""
        if "L" not in self.global_state:
            return ScaledIdentity()
        return Eigendecomposition(self.global_state["L"], self.global_state["Q"])


class NystromPCG(Transform):
    """Newton's method with ``(H + reg I) d = u`` solved by conjugate gradients preconditioned by a
    rank-``rank`` Nyström approximation of ``H``.

    The approximation is recomputed every ``update_freq`` steps from one batched product with an
    orthogonalized Gaussian test matrix; CG then needs one Hessian-vector product per iteration
    and stops when the residual falls below ``tol`` times its initial norm. Before the first
    approximation (or when it failed) plain CG is used. A closure that accepts ``backward`` is
    required.

    Args:
        rank: size of the sketch (at most the number of parameters). Defaults to 100.
        maxiter: CG iterations at most; None for the number of parameters. Defaults to None.
        tol: relative tolerance on the CG residual. Defaults to 1e-8.
        reg: added to the Hessian's diagonal. Defaults to 1e-6.
        update_freq: recompute the preconditioner every ``update_freq`` steps. Defaults to 1.
        eigv_tol: drop eigenvalues below ``eigv_tol`` times the largest. Defaults to 0.
        orthogonalize_method: as in :class:`NystromSketchAndSolve`. Defaults to ``'qr'``.
        hvp_method: as in :class:`NystromSketchAndSolve`. Defaults to ``'batched_autograd'``.
        h: finite-difference step. Defaults to 1e-3.
        inner: modules whose output is preconditioned. Defaults to None.
        seed: seed of the module's generator; None draws from torch's global generator. Defaults to None.

    References:
        Frangella, Z., Tropp, J. A. and Udell, M. "Randomized Nyström preconditioning."
        SIAM Journal on Matrix Analysis and Applications 44.2 (2023). arXiv:2110.02820.

    Examples:
        >>> import torch
        >>> import tzfast as tz
        >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> x = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
        >>> opt = tz.Optimizer([x], tz.m.NystromPCG(rank=1, reg=0.0, seed=0))
        >>> def closure(backward=True):
        ...     loss = 0.5 * x @ A @ x
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> _ = opt.step(closure)
        >>> bool(x.abs().max() < 1e-8)
        True
    """

    def __init__(self, rank: int = 100, maxiter: int | None = None, tol: float = 1e-8, reg: float = 1e-6,
                 update_freq: int = 1, eigv_tol: float = 0, orthogonalize_method: str = "qr",
                 hvp_method: HVPMethod = "batched_autograd", h: float = 1e-3, inner: Chainable | None = None,
                 seed: int | None = None):
        who = "NystromPCG"
        check_int(who, "rank", rank, 1)
        check_int(who, "maxiter", maxiter, 0, allow_none=True)
        check_real(who, "tol", tol, 0.0)
        check_real(who, "reg", reg)
        check_int(who, "update_freq", update_freq, 1)
        check_real(who, "eigv_tol", eigv_tol)
        check_choice(who, "orthogonalize_method", orthogonalize_method, ORTHOGONALIZE_METHODS)
        check_hvp_method(who, hvp_method)
        check_real(who, "h", h, 0.0, open_low=True)
        _check_seed(who, seed)
        defaults = dict(rank=rank, maxiter=maxiter, tol=tol, reg=reg, update_freq=update_freq, eigv_tol=eigv_tol,
                        orthogonalize_method=orthogonalize_method, hvp_method=hvp_method, h=h, seed=seed)
        super().__init__(defaults, inner=inner)

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        s = settings[0]
        require_closure(type(self).__name__, objective)
        _, H_mv, H_mm = objective.tensor_Hvp_function(hvp_method=s["hvp_method"], h=s["h"], at_x0=True)
        objective.temp = H_mv
        step = self.increment_counter("step", 0)
        if step % s["update_freq"] != 0:
            return
        # the approximation is built from the orthogonalized test matrix and its product (torchzero
        # 0.4.4 pairs the raw Gaussian matrix with the product of the orthogonalized one, which
        # makes its core matrix non-symmetric: the preconditioner is off, CG still converges)
        Omega = orthogonalize_columns(_sketch(self, objective, s["rank"], s["seed"]), s["orthogonalize_method"])
        try:
            self.global_state["L"], self.global_state["Q"] = nystrom_approximation(Omega, H_mm(Omega),
                                                                                   eigv_tol=s["eigv_tol"])
        except torch.linalg.LinAlgError as e:
            warnings.warn(f"NystromPCG: the Nyström approximation failed ({e}); keeping the previous preconditioner",
                          stacklevel=2)

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        H_mv = objective.poptemp()
        s = settings[0]
        updates = objective.get_updates()
        b = flat(updates)
        if "L" not in self.global_state:
            x = cg(H_mv, b, tol=s["tol"], reg=s["reg"], maxiter=s["maxiter"]).x
        else:
            x = nystrom_pcg(self.global_state["L"], self.global_state["Q"], H_mv, b, reg=s["reg"], tol=s["tol"],
                            maxiter=s["maxiter"])
        objective.updates = unflat(x, updates)
        return objective
