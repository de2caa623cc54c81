"""⟂Grad: the update projected to be orthogonal to the weights (``OrthoGrad``, ``orthograd_``)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ...core.transform import TensorTransform

__all__ = ["OrthoGrad", "orthograd_"]


def _flat(ts: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts]) if len(ts) > 1 else ts[0].reshape(-1)


class OrthoGrad(TensorTransform):
    """Projects the update ``u`` orthogonally to the weights ``w`` (all parameters as one vector):
    ``u - (w.u / (w.w + eps)) w``, then, with ``renormalize``, rescales it to ``u``'s norm.

    Args:
        eps: added to ``w.w`` (default 1e-8).
        renormalize: graft the projected update to the original update's norm (default True).

    References:
        Prieto et al., "Grokking at the Edge of Numerical Stability" (arXiv:2501.04697).

    Examples:
        >>> import torch, tzfast as tz
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = tz.Optimizer(model.parameters(), tz.m.OrthoGrad(), tz.m.LR(1e-2))
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> _ = opt.step()
    """

    def __init__(self, eps: float = 1e-8, renormalize: bool = True):
        super().__init__(dict(eps=eps, renormalize=renormalize))

    @torch.no_grad()
    def multi_tensor_apply(self, tensors: list[Tensor], params: list[Tensor], grads: list[Tensor] | None, loss: Any,
                           states: list[dict[str, Any]], settings: Sequence[Mapping[str, Any]]) -> Sequence[Tensor]:
        eps, renormalize = settings[0]["eps"], settings[0]["renormalize"]
        w, u = _flat(params), _flat(tensors)
        scale = w.dot(u) / (w.dot(w) + eps)
        out = u - w * scale
        if renormalize:
            out.mul_(torch.linalg.vector_norm(u) / torch.linalg.vector_norm(out))
        res, i = [], 0
        for t in tensors:
            n = t.numel()
            res.append(out[i:i + n].view_as(t))
            i += n
        return res


@torch.no_grad()
def orthograd_(params: Iterable[Tensor], eps: float = 1e-30) -> None:
    """Applies ⟂Grad to the gradients of ``params`` in place:
    ``g -= (w.g / (w.w + eps)) w`` with ``w``, ``g`` all parameters / gradients as one vector.

    Args:
        params: parameters holding ``.grad`` (those without are ignored).
        eps: added to ``w.w`` (default 1e-30).

    References:
        Prieto et al., "Grokking at the Edge of Numerical Stability" (arXiv:2501.04697).

    Examples:
        >>> import torch, tzfast as tz
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 0.0])); w.grad = torch.tensor([1.0, 1.0])
        >>> tz.m.orthograd_([w])
        >>> w.grad
        tensor([0., 1.])
    """
    ps = [p for p in params if p.grad is not None]
    if not ps:
        return
    gs = [p.grad for p in ps]
    w, g = _flat(ps), _flat(gs)  # type: ignore[arg-type]
    scale = w.dot(g) / (w.dot(w) + eps)
    torch._foreach_sub_(gs, torch._foreach_mul(ps, scale))  # type: ignore[arg-type]
