"""Muon-style orthogonalization of updates: ``Orthogonalize``, ``DualNormCorrection``,
``MuonAdjustLR`` and the functional ``orthogonalize_grads_``."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ...core.objective import Objective
from ...core.settings import versions
from ...core.transform import TensorTransform, Transform
from .batching import Config, Plan, build_plan, check_method, is_at_least_2d, muon_lr_factor, run_plan

__all__ = ["Orthogonalize", "DualNormCorrection", "MuonAdjustLR", "orthogonalize_grads_"]

_KEYS = ("orthogonalize", "method", "channel_first", "dual_norm_correction", "adjust_lr", "compute_dtype")


def _config(who: str, t: Tensor, param: Tensor, s: Mapping[str, Any]) -> Config:
    orth, method, cf, dnc, adjust, ct = (s[k] for k in _KEYS)
    method = check_method(who, method)
    scale = muon_lr_factor(param.shape, cf) if adjust and is_at_least_2d(t.shape, cf) else 1.0
    return Config(bool(orth), method, bool(cf), bool(dnc), scale, ct)


class Orthogonalize(TensorTransform):
    """Replaces each matrix of the update by its orthogonalization (Muon's "zeroth power").

    The matrices are the first two dims of each tensor (``channel_first=True``) or the last two;
    the other dims are batch dims. Tensors whose matrix dims are not both larger than 1 (biases,
    norms' weights) pass through unchanged, as do parameters in a param group with
    ``"orthogonalize": False`` (embeddings and classifier heads usually should be). Matrices of
    one shape (transposes included) are orthogonalized together in one batch; the grouping is
    computed once and cached until shapes or settings change.

    Newton-Schulz runs in bfloat16 on CUDA (as torchzero and Muon do) and, on the CPU, in the
    update's dtype (float32 for half types), unless ``compute_dtype`` says otherwise.

    Args:
        adjust_lr: multiply by Moonlight's ``0.2 * sqrt(max(A, B))`` for an ``A x B`` matrix
            (default False).
        dual_norm_correction: multiply each orthogonalized matrix ``X`` by ``<G, X>`` (``G`` the
            input matrix), adaptive Muon's dual-norm correction (default False).
        method: ``'newtonschulz'`` (default) or ``'ns5'`` (Newton-Schulz, torchzero's 5-step
            schedule), ``'polar_express'`` (Polar Express, 10 steps), ``'svd'`` (exact ``U V^T``,
            slow), ``'qr'`` (``Q`` factor), ``'eigh'`` (exact polar factor from the
            eigendecomposition of the small Gram matrix).
        channel_first: orthogonalize along the first two dims (default True), else the last two.
        compute_dtype: keyword-only, tzfast extra: the dtype Newton-Schulz runs in (default None:
            chosen by device as above).

    References:
        Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024),
        https://kellerjordan.github.io/posts/muon/; Amsel et al., "The Polar Express"
        (arXiv:2505.16932); Liu et al., "Muon is Scalable for LLM Training" (arXiv:2502.16982).

    Examples:
        >>> import torch, tzfast as tz
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        >>> opt = tz.Optimizer(model.parameters(), tz.m.HeavyBall(), tz.m.Orthogonalize(), tz.m.LR(1e-2))
        >>> x, y = torch.randn(32, 8), torch.randn(32, 1)
        >>> def closure(backward=True):
        ...     loss = (model(x) - y).pow(2).mean()
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
    """

    def __init__(self, adjust_lr: bool = False, dual_norm_correction: bool = False, method: str = "newtonschulz",
                 channel_first: bool = True, *, compute_dtype: torch.dtype | None = None):
        method = check_method(type(self).__name__, method)
        defaults = dict(orthogonalize=True, dual_norm_correction=dual_norm_correction, adjust_lr=adjust_lr,
                        method=method, channel_first=channel_first, compute_dtype=compute_dtype)
        super().__init__(defaults)
        self._plan: tuple[Any, Plan, list[Config]] | None = None

    def _get_plan(self, tensors: list[Tensor], params: list[Tensor],
                  settings: Sequence[Mapping[str, Any]]) -> tuple[Plan, list[Config]]:
        fast_key = (tuple(map(id, params)), versions())
        cached = self._plan
        if cached is not None and cached[0] == fast_key:
            return cached[1], cached[2]
        who = type(self).__name__
        configs = [_config(who, t, p, s) for t, p, s in zip(tensors, params, settings)]
        plan = build_plan(tensors, configs)
        if cached is not None and cached[1].key == plan.key:
            plan, configs = cached[1], cached[2]  # same layout and settings: keep the old plan
        self._plan = (fast_key, plan, configs)
        return plan, configs

    @torch.no_grad()
    def multi_tensor_apply(self, tensors: list[Tensor], params: list[Tensor], grads: list[Tensor] | None, loss: Any,
                           states: list[dict[str, Any]], settings: Sequence[Mapping[str, Any]]) -> Sequence[Tensor]:
        plan, configs = self._get_plan(tensors, params, settings)
        if any(t.shape != c[0] for t, c in zip(tensors, plan.key)):
            plan = build_plan(tensors, configs)  # tensors of other shapes than the parameters
        return run_plan(plan, tensors, configs)

    def __getstate__(self) -> dict[str, Any]:
        d = super().__getstate__()
        d["_plan"] = None
        return d


class DualNormCorrection(TensorTransform):
    """Adaptive Muon's dual-norm correction: each matrix ``X`` of the update becomes ``<G, X> X``
    with ``G`` the matching matrix of the gradient (``Orthogonalize(dual_norm_correction=True)``
    does the same with its own input).

    Args:
        channel_first: the matrices are the first two dims (default True), else the last two.

    References:
        leloykun, "adaptive-muon", https://github.com/leloykun/adaptive-muon

    Examples:
        >>> import torch, tzfast as tz
        >>> W = torch.nn.Parameter(torch.randn(4, 6))
        >>> opt = tz.Optimizer([W], tz.m.Orthogonalize(), tz.m.DualNormCorrection(), tz.m.LR(1e-2))
        >>> W.grad = torch.randn(4, 6)
        >>> _ = opt.step()
    """

    def __init__(self, channel_first: bool = True):
        super().__init__(dict(channel_first=channel_first), uses_grad=True)

    @torch.no_grad()
    def single_tensor_apply(self, tensor: Tensor, param: Tensor, grad: Tensor | None, loss: Any,
                            state: dict[str, Any], setting: Mapping[str, Any]) -> Tensor:
        assert grad is not None
        cf = setting["channel_first"]
        if not is_at_least_2d(tensor.shape, cf):
            return tensor
        dims = (0, 1) if cf else (-2, -1)
        return tensor * (grad.to(tensor.dtype) * tensor).sum(dim=dims, keepdim=True)


class MuonAdjustLR(Transform):
    """Moonlight's learning-rate adjustment for Muon: matrices ``A x B`` of the update are
    multiplied by ``alpha * 0.2 * sqrt(max(A, B))``; other tensors pass through.

    Args:
        channel_first: the matrix dims are the first two (default True), else the last two.
        alpha: extra multiplier (default 1).

    References:
        Liu et al., "Muon is Scalable for LLM Training" (arXiv:2502.16982).

    Examples:
        >>> import torch, tzfast as tz
        >>> W = torch.nn.Parameter(torch.randn(4, 16))
        >>> opt = tz.Optimizer([W], tz.m.Orthogonalize(), tz.m.MuonAdjustLR(), tz.m.LR(1e-2))
        >>> W.grad = torch.randn(4, 16)
        >>> _ = opt.step()
    """

    def __init__(self, channel_first: bool = True, alpha: float = 1):
        super().__init__(dict(channel_first=channel_first, alpha=alpha))

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        updates = objective.get_updates()
        sel, factors = [], []
        for u, s in zip(updates, settings):
            cf = s["channel_first"]
            if is_at_least_2d(u.shape, cf):
                sel.append(u)
                factors.append(s["alpha"] * muon_lr_factor(u.shape, cf))
        if sel:
            torch._foreach_mul_(sel, factors)
        return objective


@torch.no_grad()
def orthogonalize_grads_(params: Iterable[Tensor], dual_norm_correction: bool = False, method: str = "newtonschulz",
                         channel_first: bool = True) -> None:
    """Orthogonalizes the gradients of ``params`` in place (matrix dims as in :class:`Orthogonalize`;
    gradients whose matrix dims are not both larger than 1 are left as they are).

    Args:
        params: parameters holding ``.grad``.
        dual_norm_correction: apply adaptive Muon's dual-norm correction (default False).
        method: as in :class:`Orthogonalize` (default ``'newtonschulz'``).
        channel_first: matrices along the first two dims (default True), else the last two.

    Examples:
        >>> import torch, tzfast as tz
        >>> W = torch.nn.Parameter(torch.randn(4, 6)); W.grad = torch.randn(4, 6)
        >>> tz.m.orthogonalize_grads_([W], method="svd")
        >>> bool(torch.allclose(W.grad @ W.grad.T, torch.eye(4), atol=1e-5))
        True
    """
    method = check_method("orthogonalize_grads_", method)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    cfg = Config(True, method, bool(channel_first), bool(dual_norm_correction), 1.0, None)
    configs = [cfg] * len(grads)
    run_plan(build_plan(grads, configs), grads, configs, out=list(grads))
