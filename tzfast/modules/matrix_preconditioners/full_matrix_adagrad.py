"""Full-matrix Adagrad (and, with ``beta``, full-matrix RMSprop/Adam)."""
from __future__ import annotations

from typing import Literal

import torch

from ...core.module import Chainable
from ...core.transform import TensorTransform
from ._linalg import (MATRIX_POWER_METHODS, FakeChildState, MatrixPowerMethod, check_beta, check_choice,
                      check_int, check_number, ensure_fake_params, matrix_power)

__all__ = ["FullMatrixAdagrad"]

_INITS = ("identity", "zeros", "ones", "GGT")


class FullMatrixAdagrad(FakeChildState, TensorTransform):
    """Full-matrix Adagrad: the update multiplied by ``(A + reg I)^matrix_power``, ``A`` the sum of ``g g^T``.

    The accumulator is updated in place by a rank-1 ``addr_`` (no ``n x n`` outer product is
    formed). Its power is recomputed every ``precond_freq`` applications (the first included)
    and kept in between; a failed decomposition falls back to the diagonal's power.

    Args:
        reg: multiple of the identity added before the power. Defaults to 1e-12.
        precond_freq: applications between recomputations of the power. Defaults to 1.
        beta: None sums ``g g^T``; a number keeps their exponential average (full-matrix RMSprop).
            Defaults to None.
        beta_debias: with ``beta``, multiply by ``sqrt(1 - beta**k)``, ``k`` the number of
            accumulated outer products. Defaults to True.
        init: initial accumulator: ``'identity'``, ``'zeros'``, ``'ones'`` or ``'GGT'`` (the first
            outer product). Defaults to ``'identity'``.
        matrix_power: exponent of the accumulator. Defaults to -1/2.
        matrix_power_method: ``'eigh'``, ``'eigh_abs'`` or ``'svd'``. Defaults to ``'eigh_abs'``.
        concat_params: one accumulator over all parameters concatenated; False gives every
            parameter its own. Defaults to True.
        inner: modules applied to the update after the accumulator is updated and before
            preconditioning. Defaults to None.
        accumulator_tfm: modules applied to (a copy of) the accumulator before its power is taken.
            Defaults to None.

    References:
        Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online Learning and
        Stochastic Optimization", JMLR 2011.

    Examples:
        Full-matrix Adam:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.FullMatrixAdagrad(beta=0.999, inner=tz.m.EMA(0.9)),
        ...                    tz.m.Debias(0.9, 0.999), tz.m.LR(1e-2))
    """

    _fake_children = ("accumulator",)

    def __init__(self, reg: float = 1e-12, precond_freq: int = 1, beta: float | None = None, beta_debias: bool = True,
                 init: Literal["identity", "zeros", "ones", "GGT"] = "identity", matrix_power: float = -1 / 2,
                 matrix_power_method: MatrixPowerMethod = "eigh_abs", concat_params: bool = True,
                 inner: Chainable | None = None, accumulator_tfm: Chainable | None = None):
        who = type(self).__name__
        check_number(who, "reg", reg, 0)
        check_int(who, "precond_freq", precond_freq, 1)
        check_beta(who, "beta", beta, allow_none=True)
        check_choice(who, "init", init, _INITS)
        check_number(who, "matrix_power", matrix_power)
        check_choice(who, "matrix_power_method", matrix_power_method, MATRIX_POWER_METHODS)
        super().__init__(dict(reg=reg, precond_freq=precond_freq, beta=beta, beta_debias=beta_debias, init=init,
                              matrix_power=matrix_power, matrix_power_method=matrix_power_method),
                         concat_params=concat_params, inner=inner)
        self.set_child("accumulator", accumulator_tfm)
        self.add_projected_keys("covariance", "accumulator")

    @torch.no_grad()
    def single_tensor_update(self, tensor, param, grad, loss, state, setting):  # type: ignore[no-untyped-def]
        g = tensor.reshape(-1)
        acc = state.get("accumulator")
        if acc is None or acc.shape[0] != g.numel():
            init = setting["init"]
            n = g.numel()
            if init == "identity":
                acc = torch.eye(n, dtype=g.dtype, device=g.device)
            elif init == "zeros":
                acc = torch.zeros(n, n, dtype=g.dtype, device=g.device)
            elif init == "ones":
                acc = torch.ones(n, n, dtype=g.dtype, device=g.device)
            else:
                acc = torch.outer(g, g)
            state["accumulator"] = acc
        beta = setting["beta"]
        if beta is None:
            acc.addr_(g, g)
        else:
            acc.lerp_(torch.outer(g, g), 1 - beta)
        state["num_GGTs"] = state.get("num_GGTs", 0) + 1

    @torch.no_grad()
    def single_tensor_apply(self, tensor, param, grad, loss, state, setting):  # type: ignore[no-untyped-def]
        self._restore_fake_children()
        step = state.get("step", 0)
        state["step"] = step + 1
        acc: torch.Tensor = state["accumulator"]
        if "accumulator" in self.children:
            fakes = ensure_fake_params(self, "accumulator", [acc])
            acc = self.inner_step_tensors("accumulator", [acc], clone=True, params=fakes)[0]
        reg = setting["reg"]
        power = setting["matrix_power"]
        if tensor.numel() == 1:
            a = acc + reg if reg != 0 else acc
            d = tensor * a.squeeze() ** power
        else:
            B = state.get("B")
            try:
                if B is None or step % setting["precond_freq"] == 0 or B.shape != acc.shape:
                    A = acc.clone() if reg != 0 else acc
                    if reg != 0:
                        A.diagonal().add_(reg)
                    B = state["B"] = matrix_power(A, power, setting["matrix_power_method"])
                d = (B @ tensor.reshape(-1)).view_as(tensor)
            except torch.linalg.LinAlgError:
                diag = acc.diagonal() + reg
                d = tensor * diag.view_as(tensor) ** power
        beta = setting["beta"]
        if setting["beta_debias"] and beta is not None:
            d = d * (1 - beta ** state.get("num_GGTs", 1)) ** 0.5
        return d
