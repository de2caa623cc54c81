"""``SG2``: a Hessian estimated from gradient differences along random ±h directions (2SPSA).

Per sample ``c`` (Rademacher entries times ``h``), the gradient is evaluated at ``x + c`` and
``x - c``; with ``dg = g(x + c) - g(x - c)`` the estimate is the symmetric part of
``(0.5 / c) dg^T``. On a quadratic with Hessian ``A``, ``dg = 2 A c`` and the estimate's
expectation is ``A`` exactly. All samples of a step are combined with one matrix product
(``U^T V`` over the stacked ``0.5 / c`` and ``dg`` rows), so a step holds at most three n x n
matrices (the product, its symmetric part and the running estimate).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...core.module import Chainable
from ...core.transform import Transform

if TYPE_CHECKING:
    from ...core.objective import Objective
    from ...linalg.linear_operator import LinearOperator

__all__ = ["SG2"]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"SG2: `{name}` must be an int >= {minimum}, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"SG2: `{name}` must be an int >= {minimum}, got {value}")


def _check_real(name: str, value: Any, low: float, high: float | None = None, open_low: bool = False,
                allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    rng = (f"in {'(' if open_low else '['}{low}, {high}]" if high is not None
           else (f"> {low}" if open_low else f">= {low}"))
    kind = f"a finite number {rng}" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"SG2: `{name}` must be {kind}, got {type(value).__name__}: {value!r}")
    bad = (not math.isfinite(value) or value < low or (open_low and value == low)
           or (high is not None and value > high))
    if bad:
        raise ValueError(f"SG2: `{name}` must be {kind}, got {value!r}")


def _solve(H: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``H^-1 b`` by LU; the minimum-norm least-squares solution when ``H`` is numerically singular.

    torchzero calls ``torch.linalg.lstsq`` (MKL's gelsy on CPU, whose last bit depends on the
    buffers' alignment, so runs are not bitwise reproducible); LU is deterministic and about 3x
    faster, and gives the same solution for a nonsingular ``H``.
    """
    LU, pivots, info = torch.linalg.lu_factor_ex(H)
    d = LU.diagonal().abs()
    lo, hi = torch.stack([d.min(), d.max()]).tolist()
    if int(info) == 0 and lo > hi * H.shape[-1] * torch.finfo(H.dtype).eps:
        return torch.linalg.lu_solve(LU, pivots, b.unsqueeze(-1)).squeeze(-1)
    driver = "gelsd" if H.device.type == "cpu" else None  # SVD: deterministic, rank-revealing
    return torch.linalg.lstsq(H, b.unsqueeze(-1), driver=driver).solution.squeeze(-1)


class SG2(Transform):
    """Second-order stochastic gradient (2SPSA): a Newton step with a Hessian estimated by SPSA.

    Every update draws ``n_samples`` perturbations ``c`` (entries ``±h`` with probability 1/2,
    ``n_first_step_samples`` on the first update), evaluates the gradient at ``x ± c`` (two
    closure evaluations each) and averages the symmetric estimates ``sym((0.5 / c) dg^T)``,
    plus ``damping`` on the diagonal. The running Hessian is
    ``H <- beta H + (1 - beta) H_hat`` with ``beta = (k + 1) / (k + 2)`` when ``beta`` is None
    (the plain average of all estimates). For the first ``start_step`` updates the update is
    only divided by ``trace(H)``; afterwards it is replaced by the solution of ``H x = update``
    (least squares when ``H`` is singular).

    A closure is required. The parameters are restored bitwise after the evaluations (also
    when the closure raises).

    Args:
        n_samples: perturbations per update. Defaults to 1.
        n_first_step_samples: perturbations on the first update. Defaults to 10.
        start_step: number of updates before the Hessian preconditions the update. Defaults to 10.
        beta: weight of the old Hessian in the running average; None for ``(k + 1) / (k + 2)``.
            Defaults to None.
        damping: added to the diagonal of every estimate. Defaults to 1e-4.
        h: size of the perturbation (per parameter through param groups). Defaults to 0.01.
        seed: seed of the module's own random generator; None draws from torch's global
            generator (so ``torch.manual_seed`` reproduces a run). Defaults to None.
        update_freq: the Hessian is re-estimated every ``update_freq`` steps. Defaults to 1.
        inner: modules applied to the update before the Hessian. Defaults to None.

    References:
        Spall, J. C. "Adaptive stochastic approximation by the simultaneous perturbation method."
        IEEE Transactions on Automatic Control 45.10 (2000): 1839-1853.

    Examples:
        2SPSA (SPSA gradients and an SG2 Hessian):

        >>> opt = tz.Optimizer(model.parameters(), tz.m.SPSA(), tz.m.SG2(), tz.m.LR(1e-2))

        SG2 with a line search:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.SG2(), tz.m.Backtracking())
    """

    def __init__(self, n_samples: int = 1, n_first_step_samples: int = 10, start_step: int = 10,
                 beta: float | None = None, damping: float = 1e-4, h: float = 1e-2, seed: int | None = None,
                 update_freq: int = 1, inner: Chainable | None = None):
        _check_int("n_samples", n_samples, 1)
        _check_int("n_first_step_samples", n_first_step_samples, 1)
        _check_int("start_step", start_step, 0)
        _check_real("beta", beta, 0.0, 1.0, allow_none=True)
        _check_real("damping", damping, 0.0)
        _check_real("h", h, 0.0, open_low=True)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"SG2: `seed` must be an int or None, got {type(seed).__name__}: {seed!r}")
        _check_int("update_freq", update_freq, 1)
        defaults = dict(n_samples=n_samples, h=h, beta=beta, damping=damping, seed=seed, start_step=start_step,
                        n_first_step_samples=n_first_step_samples)
        super().__init__(defaults, update_freq=update_freq, inner=inner)
        # kept outside global_state so that state_dict holds only tensors and numbers (see _extra_pack)
        self._generator: torch.Generator | None = None

    # ------------------------------------------------------------------ randomness
    def _rng(self, device: torch.device) -> torch.Generator | None:
        seed = self.defaults["seed"]
        if seed is None:
            return None
        gen = self._generator
        if gen is None or gen.device != device:
            gen = torch.Generator(device).manual_seed(seed)
            self._generator = gen
        return gen

    def _extra_pack(self) -> dict:
        gen = self._generator
        if gen is None:
            return {}
        return {"generator_state": gen.get_state(), "generator_device": str(gen.device)}

    def _extra_unpack(self, d: dict) -> None:
        if "generator_state" not in d:
            self._generator = None
            return
        gen = torch.Generator(d["generator_device"])
        gen.set_state(d["generator_state"])
        self._generator = gen

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        fs = settings[0]
        k = self.increment_counter("step", 0)
        objective._need_closure("SG2")
        params = objective.params
        gen = self._rng(params[0].device)
        n = fs["n_first_step_samples"] if k == 0 else fs["n_samples"]
        hs = [s["h"] for s in settings]
        numel = sum(p.numel() for p in params)
        dtype, device = params[0].dtype, params[0].device
        U = torch.empty(n, numel, dtype=dtype, device=device)  # rows: 0.5 / c
        V = torch.empty(n, numel, dtype=dtype, device=device)  # rows: g(x + c) - g(x - c)
        sizes = [p.numel() for p in params]

        x0 = [p.detach().clone() for p in params]
        try:
            for i in range(n):
                # the draws of torchzero 0.4.4: per parameter, in order, from the same generator
                c = [torch.bernoulli(torch.full_like(p, 0.5), generator=gen) for p in params]
                torch._foreach_mul_(c, 2)
                torch._foreach_sub_(c, 1)
                torch._foreach_mul_(c, hs)
                torch.cat([t.reshape(-1) for t in c], out=U[i])
                U[i].reciprocal_().mul_(0.5)

                torch._foreach_add_(params, c)
                _, g_plus = objective.get_loss_grads(at_x0=False)
                torch.cat([g.reshape(-1) for g in g_plus], out=V[i])
                torch._foreach_copy_(params, x0)
                torch._foreach_sub_(params, c)
                _, g_minus = objective.get_loss_grads(at_x0=False)
                torch._foreach_sub_([v.view_as(g) for v, g in zip(V[i].split(sizes), g_minus, strict=True)], g_minus)
                torch._foreach_copy_(params, x0)
        except BaseException:
            torch._foreach_copy_(params, x0)
            raise

        M = U.mT @ V  # sum_i (0.5 / c_i) dg_i^T
        del U, V
        H_hat = M + M.mT
        del M
        H_hat.mul_(0.5 / n)
        if fs["damping"] != 0:
            H_hat.diagonal().add_(fs["damping"])

        H = self.global_state.get("H")
        if H is None:
            H = H_hat
        else:
            beta = fs["beta"]
            if beta is None:
                beta = (k + 1) / (k + 2)
            H.lerp_(H_hat, 1 - beta)
        self.global_state["H"] = H

    # ------------------------------------------------------------------ apply
    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        updates = objective.get_updates()
        H: torch.Tensor = self.global_state["H"]
        if self.global_state["step"] < settings[0]["start_step"]:
            torch._foreach_div_(updates, H.trace())
            return objective
        b = torch.cat([u.reshape(-1) for u in updates])
        sol = _solve(H, b).split([u.numel() for u in updates])
        objective.updates = [s.view_as(u) for s, u in zip(sol, updates, strict=True)]
        return objective

    def get_H(self, objective: Objective | None = None) -> LinearOperator | None:
        """The current Hessian estimate as a ``Dense`` operator (None before the first update)."""
        from ...linalg.linear_operator import Dense

        H = self.global_state.get("H")
        return None if H is None else Dense(H)
