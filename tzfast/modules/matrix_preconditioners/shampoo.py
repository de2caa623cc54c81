"""Shampoo: a Kronecker-factored full-matrix preconditioner."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch

from ...core.module import Chainable
from ...core.transform import TensorTransform
from ._linalg import (MATRIX_POWER_METHODS, MatrixPowerMethod, accumulate_covariances_, check_beta, check_choice,
                      check_int, check_number, kron_dims, matrix_power, merge, merge_plan, project, unmerge)

__all__ = ["Shampoo"]


class Shampoo(TensorTransform):
    """Shampoo: each dim ``i`` of a tensor gets a factor ``(sum_t G_i G_i^T + reg I)^matrix_power``.

    ``G_i`` is the gradient contracted with itself over every dim but ``i``. The factors start at
    the identity; they are raised to ``matrix_power`` every ``precond_freq`` steps (starting with
    the first) and the update is multiplied by every factor along its dim. Tensors with no
    preconditioned dim (0-d tensors, 1-D with ``precondition_1d=False``, every size 1 or
    ``>= max_dim``) get diagonal Adagrad instead. Same-size factors are raised to their power in
    one batched decomposition.

    Args:
        reg: multiple of the identity added to a factor before the power. Defaults to 1e-12.
        precond_freq: steps between recomputations of the powers. Defaults to 10.
        matrix_power: exponent of the factors; None means ``-1 / (2 * ndim)`` of the (merged) tensor.
            Defaults to None.
        merge_small: sort dims and merge the smallest ones while their product stays
            ``<= max_dim``. Defaults to True.
        max_dim: dims of this size or larger get no factor. Defaults to 10_000.
        precondition_1d: give 1-D tensors a full-matrix factor. Defaults to True.
        adagrad_eps: epsilon of the diagonal fallback's denominator. Defaults to 1e-8.
        matrix_power_method: ``'eigh'``, ``'eigh_abs'`` (eigenvalues' absolute values) or ``'svd'``.
            Defaults to ``'eigh_abs'``.
        beta: None sums the Gram matrices (Shampoo); a number keeps their exponential average.
            Defaults to None.
        beta_debias: with ``beta``, multiply by ``sqrt(1 - beta**k)``, ``k`` the number of power
            recomputations so far. Defaults to True.
        inner: modules applied after the statistics are updated and before preconditioning.
            Defaults to None.

    References:
        Gupta, Koren and Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization",
        arXiv:1802.09568.

    Examples:
        Adam with a Shampoo preconditioner:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.Shampoo(beta=0.999, inner=tz.m.EMA(0.9)),
        ...                    tz.m.Debias(0.9, 0.999), tz.m.LR(1e-3))
    """

    def __init__(self, reg: float = 1e-12, precond_freq: int = 10, matrix_power: float | None = None,
                 merge_small: bool = True, max_dim: int = 10_000, precondition_1d: bool = True,
                 adagrad_eps: float = 1e-8, matrix_power_method: MatrixPowerMethod = "eigh_abs",
                 beta: float | None = None, beta_debias: bool = True, inner: Chainable | None = None):
        who = type(self).__name__
        check_number(who, "reg", reg, 0)
        check_int(who, "precond_freq", precond_freq, 1)
        check_number(who, "matrix_power", matrix_power, allow_none=True)
        check_int(who, "max_dim", max_dim, 1)
        check_number(who, "adagrad_eps", adagrad_eps, 0)
        check_choice(who, "matrix_power_method", matrix_power_method, MATRIX_POWER_METHODS)
        check_beta(who, "beta", beta, allow_none=True)
        super().__init__(dict(reg=reg, precond_freq=precond_freq, matrix_power=matrix_power, merge_small=merge_small,
                              max_dim=max_dim, precondition_1d=precondition_1d, adagrad_eps=adagrad_eps,
                              matrix_power_method=matrix_power_method, beta=beta, beta_debias=beta_debias),
                         inner=inner)

    @staticmethod
    def _plan(t: torch.Tensor, s: Mapping[str, Any]) -> Any:
        return merge_plan(t.shape, s["max_dim"]) if s["merge_small"] else None

    @torch.no_grad()
    def single_tensor_initialize(self, tensor, param, grad, loss, state, setting):  # type: ignore[no-untyped-def]
        plan = state["merge_plan"] = self._plan(tensor, setting)
        shape = merge(tensor, plan).shape
        dims = kron_dims(shape, setting["max_dim"], setting["precondition_1d"])
        eye = {s: torch.eye(s, dtype=tensor.dtype, device=tensor.device) for s, d in zip(shape, dims) if d}
        state["accumulators"] = [eye[s].clone() if d else None for s, d in zip(shape, dims)]
        state["preconditioners"] = [eye[s].clone() if d else None for s, d in zip(shape, dims)]
        if not any(dims):
            state["diagonal_accumulator"] = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
        state["step"] = 0
        state["num_GTG"] = 0

    @torch.no_grad()
    def multi_tensor_update(self, tensors, params, grads, loss, states, settings):  # type: ignore[no-untyped-def]
        # refresh jobs grouped by (size, power, method, reg) so each group is one batched decomposition
        jobs: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        for t, st, s in zip(tensors, states, settings):
            t = merge(t, st["merge_plan"])
            beta = s["beta"]
            if "diagonal_accumulator" in st:
                d = st["diagonal_accumulator"]
                if beta is None:
                    d.add_(t.square())
                else:
                    d.mul_(beta).addcmul_(t, t, value=1 - beta)
            else:
                accs = st["accumulators"]
                accumulate_covariances_(t, accs, beta)
                if st["step"] % s["precond_freq"] == 0:
                    power = s["matrix_power"]
                    if power is None:
                        power = -1 / max(t.ndim * 2, 2)
                    for acc, pre in zip(accs, st["preconditioners"]):
                        if acc is not None:
                            key = (acc.shape[0], acc.dtype, acc.device, power, s["matrix_power_method"], s["reg"])
                            jobs[key].append((acc, pre))
            if st["step"] % s["precond_freq"] == 0:
                st["num_GTG"] += 1
            st["step"] += 1
        for (n, _, _, power, method, reg), pairs in jobs.items():
            A = torch.stack([a for a, _ in pairs])
            if reg != 0:
                A.diagonal(dim1=-2, dim2=-1).add_(reg)
            P = matrix_power(A, power, method)
            for (_, pre), p in zip(pairs, P):
                pre.copy_(p)

    @torch.no_grad()
    def multi_tensor_apply(self, tensors, params, grads, loss, states, settings):  # type: ignore[no-untyped-def]
        out = []
        for t, st, s in zip(tensors, states, settings):
            plan = st["merge_plan"]
            m = merge(t, plan)
            if "diagonal_accumulator" in st:
                d = m / st["diagonal_accumulator"].sqrt().add_(s["adagrad_eps"])
            else:
                d = project(m, st["preconditioners"])
            d = unmerge(d, plan)
            beta = s["beta"]
            if s["beta_debias"] and beta is not None:
                d = d * (1 - beta ** st["num_GTG"]) ** 0.5
            out.append(d)
        return out
