"""Clipping and normalisation of updates and gradients."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Union

import torch

from ...core.elementwise import UNARY_CLAMP, ElementwiseTransform
from ...core.transform import Target, TensorTransform
from ... import ops

__all__ = ["ClipValue", "ClipNorm", "Normalize", "clip_grad_value_", "clip_grad_norm_", "normalize_grads_"]

Metrics = Union[Literal["mad", "std", "var", "sum", "l0", "l1", "l2", "l3", "l4", "linf"], float, torch.Tensor]
_NAMED = ("mad", "std", "var", "sum", "l0", "l1", "l2", "l3", "l4", "linf")


def _check_ord(who: str, ord: Any) -> None:
    if isinstance(ord, str):
        if ord not in _NAMED:
            raise ValueError(f"{who}: `ord` must be a number or one of {_NAMED}, got {ord!r}")
    elif not isinstance(ord, (int, float, torch.Tensor)) or isinstance(ord, bool):
        raise TypeError(f"{who}: `ord` must be a number or one of {_NAMED}, got {type(ord).__name__}")


def _check_dim(who: str, dim: Any) -> None:
    ok = dim is None or dim == "global" or isinstance(dim, int) or (
        isinstance(dim, (list, tuple)) and all(isinstance(d, int) for d in dim))
    if not ok or isinstance(dim, bool):
        raise ValueError(f"{who}: `dim` must be None, 'global', an int or a sequence of ints, got {dim!r}")


def _norm_order(ord: Any) -> float:
    if isinstance(ord, str):
        return math.inf if ord == "linf" else float(ord[1:])
    return float(ord)


def _metric(x: torch.Tensor, ord: Any, dims: list[int] | None) -> torch.Tensor:
    """The metric of ``x`` over ``dims`` (all dims when None), keeping dims."""
    d = dims if dims is not None else list(range(x.ndim))
    if isinstance(ord, str) and ord in ("mad", "std", "var", "sum"):
        if ord == "mad":
            return x.abs().mean(dim=d, keepdim=True)
        if ord == "std":
            return x.std(dim=d, keepdim=True)
        if ord == "var":
            return x.var(dim=d, keepdim=True)
        return x.sum(dim=d, keepdim=True)
    return torch.linalg.vector_norm(x, ord=_norm_order(ord), dim=d, keepdim=True)


def _global_metric(tensors: Sequence[torch.Tensor], ord: Any) -> torch.Tensor:
    """The metric of all tensors concatenated into one vector."""
    if isinstance(ord, str) and ord in ("mad", "std", "var", "sum"):
        if ord == "sum":
            return torch.stack([t.sum() for t in tensors]).sum()
        if ord == "mad":
            n = sum(t.numel() for t in tensors)
            return torch.stack([t.abs().sum() for t in tensors]).sum() / n
        vec = torch.cat([t.ravel() for t in tensors])
        return vec.std() if ord == "std" else vec.var()
    p = _norm_order(ord)
    norms = torch._foreach_norm(list(tensors), p)
    return torch.linalg.vector_norm(torch.stack(norms), ord=p)


def _clip_norm_(tensors: list[torch.Tensor], max_norm: Sequence[float] | None, norm_value: Sequence[float] | None,
                ord: Any, dim: Any, inverse_dims: bool, min_size: int, min_norm: Sequence[float] | None = None) -> None:
    """Scales ``tensors`` in place so their norms are ``norm_value`` or within ``[min_norm, max_norm]``."""
    if not tensors:
        return
    if dim == "global":
        norm = _global_metric(tensors, ord)
        if norm == 0:
            return
        if norm_value is not None:
            torch._foreach_mul_(tensors, [v / norm for v in norm_value])
            return
        muls = []
        for i in range(len(tensors)):
            m = torch.ones_like(norm)
            if min_norm is not None and min_norm[i] is not None:
                m = m * (min_norm[i] / norm).clamp(min=1)
            if max_norm is not None and max_norm[i] is not None:
                m = m * (max_norm[i] / norm).clamp(max=1)
            muls.append(m)
        torch._foreach_mul_(tensors, muls)
        return

    if dim is None and not inverse_dims and not (isinstance(ord, str) and ord in ("mad", "std", "var", "sum")) \
            and len({(t.dtype, t.device) for t in tensors}) == 1:
        _clip_norm_tensorwise_(tensors, max_norm, norm_value, _norm_order(ord), min_size, min_norm)
        return

    dims = [dim] if isinstance(dim, int) else (list(dim) if dim is not None else None)
    targets, muls = [], []
    for i, t in enumerate(tensors):
        x = t.unsqueeze(0) if t.ndim == 0 else t
        real = list(range(x.ndim)) if dims is None else [d for d in dims if d < x.ndim]
        if inverse_dims:
            real = [d for d in range(x.ndim) if d not in real]
        if not real:
            continue
        if math.prod(x.size(d) for d in real) < min_size:
            continue
        norm = _metric(x, ord, real)
        if norm.numel() == 1 and norm == 0:
            continue
        norm = torch.where(norm <= 1e-12, torch.ones_like(norm), norm)
        if norm_value is not None:
            mul = norm_value[i] / norm
        else:
            mul = torch.ones_like(norm)
            if min_norm is not None and min_norm[i] is not None:
                mul = mul * (min_norm[i] / norm).clamp(min=1)
            if max_norm is not None and max_norm[i] is not None:
                mul = mul * (max_norm[i] / norm).clamp(max=1)
        targets.append(t)
        muls.append(mul.view_as(t) if t.ndim == 0 else mul)
    if targets:
        torch._foreach_mul_(targets, muls)


def _clip_norm_tensorwise_(tensors: list[torch.Tensor], max_norm: Sequence[float] | None,
                           norm_value: Sequence[float] | None, p: float, min_size: int,
                           min_norm: Sequence[float] | None) -> None:
    """The per-tensor case of :func:`_clip_norm_` with all norms and factors computed at once."""
    norms = torch.stack(torch._foreach_norm(tensors, p))
    small = torch.tensor([t.numel() < min_size for t in tensors], device=norms.device)
    skip = small | (norms == 0)
    norms = torch.where(norms <= 1e-12, torch.ones_like(norms), norms)

    def vec(values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(list(values), dtype=norms.dtype, device=norms.device)

    if norm_value is not None:
        mul = vec(norm_value) / norms
    else:
        mul = torch.ones_like(norms)
        if min_norm is not None:
            mul = mul * (vec(min_norm) / norms).clamp(min=1)
        if max_norm is not None:
            mul = mul * (vec(max_norm) / norms).clamp(max=1)
    mul = torch.where(skip, torch.ones_like(mul), mul)
    torch._foreach_mul_(tensors, list(mul.unbind(0)))


def _grads(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def clip_grad_value_(params: Iterable[torch.Tensor], value: float) -> None:
    """Clamps every gradient to ``[-value, value]`` in place."""
    grads = _grads(params)
    if grads:
        torch._foreach_clamp_min_(grads, -value)
        torch._foreach_clamp_max_(grads, value)


def clip_grad_norm_(params: Iterable[torch.Tensor], max_norm: float | None, ord: Metrics = 2,
                    dim: int | Sequence[int] | Literal["global"] | None = None, inverse_dims: bool = False,
                    min_size: int = 2, min_norm: float | None = None) -> None:
    """Clips gradient norms to at most ``max_norm`` (and at least ``min_norm``) in place.

    Args:
        params: parameters whose ``.grad`` is clipped.
        max_norm: upper bound of the norm (None: no upper bound).
        ord: norm order, or ``'mad'``, ``'std'``, ``'var'``, ``'sum'``, ``'l0'``..``'l4'``, ``'linf'``. Defaults to 2.
        dim: dims the norm is taken over; ``'global'`` for all gradients as one vector; None: each tensor.
        inverse_dims: take the norm over all dims except ``dim``. Defaults to False.
        min_size: tensors (or slices) with fewer elements are left alone. Defaults to 2.
        min_norm: lower bound of the norm. Defaults to None.
    """
    _check_ord("clip_grad_norm_", ord)
    _check_dim("clip_grad_norm_", dim)
    grads = _grads(params)
    n = len(grads)
    _clip_norm_(grads, None if max_norm is None else [max_norm] * n, None, ord, dim, inverse_dims, min_size,
                None if min_norm is None else [min_norm] * n)


def normalize_grads_(params: Iterable[torch.Tensor], norm_value: float, ord: Metrics = 2,
                     dim: int | Sequence[int] | Literal["global"] | None = None, inverse_dims: bool = False,
                     min_size: int = 1) -> None:
    """Scales gradients in place so their norm is ``norm_value`` (see :func:`clip_grad_norm_`)."""
    _check_ord("normalize_grads_", ord)
    _check_dim("normalize_grads_", dim)
    grads = _grads(params)
    _clip_norm_(grads, None, [norm_value] * len(grads), ord, dim, inverse_dims, min_size)


class ClipValue(ElementwiseTransform):
    """Clamps the update to ``[-value, value]``.

    Args:
        value: bound.
        target: ``'update'`` (update clipping, default) or ``'grad'`` (gradient clipping), ...

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.ClipValue(1), tz.m.Adam(), tz.m.LR(1e-2))
    """

    def __init__(self, value: float, target: Target = "update"):
        super().__init__(dict(value=value), target=target)

    def _kernel(self, tensors, params, state, out, s, out_scale, accumulate, ctx):  # type: ignore[no-untyped-def]
        v = s["value"]
        ops.unary_(tensors, out, UNARY_CLAMP, -v, v, out_scale, accumulate)


class _NormTransform(TensorTransform):
    def multi_tensor_apply(self, tensors, params, grads, loss, states, settings):  # type: ignore[no-untyped-def]
        s0: Mapping[str, Any] = settings[0]
        self._clip(list(tensors), settings, s0)
        return tensors

    def _clip(self, tensors: list[torch.Tensor], settings: Sequence[Mapping[str, Any]], s0: Mapping[str, Any]) -> None:
        raise NotImplementedError


class ClipNorm(_NormTransform):
    """Clips the norm of the update to at most ``max_norm``.

    Args:
        max_norm: bound of the norm.
        ord: norm order or metric name. Defaults to 2.
        dim: dims of the norm; ``'global'`` for all tensors as one vector; None: each tensor.
        inverse_dims: take the norm over all dims except ``dim``. Defaults to False.
        min_size: tensors (or slices) with fewer elements are left alone. Defaults to 1.
        target: what is transformed. Defaults to ``'update'``.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.Adam(), tz.m.ClipNorm(1), tz.m.LR(1e-2))
    """

    def __init__(self, max_norm: float, ord: Metrics = 2, dim: int | Sequence[int] | Literal["global"] | None = None,
                 inverse_dims: bool = False, min_size: int = 1, target: Target = "update"):
        _check_ord("ClipNorm", ord)
        _check_dim("ClipNorm", dim)
        super().__init__(dict(max_norm=max_norm, ord=ord, dim=dim, min_size=min_size, inverse_dims=inverse_dims),
                         target=target)

    def _clip(self, tensors, settings, s0):  # type: ignore[no-untyped-def]
        _clip_norm_(tensors, [s["max_norm"] for s in settings], None, s0["ord"], s0["dim"], s0["inverse_dims"],
                    s0["min_size"])


class Normalize(_NormTransform):
    """Scales the update so that its norm is ``norm_value``.

    Args:
        norm_value: the norm to set. Defaults to 1.
        ord: norm order or metric name. Defaults to 2.
        dim: dims of the norm; ``'global'`` for all tensors as one vector; None: each tensor.
        inverse_dims: take the norm over all dims except ``dim``. Defaults to False.
        min_size: tensors (or slices) with fewer elements are left alone. Defaults to 1.
        target: what is transformed. Defaults to ``'update'``.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.Normalize(1, dim="global"), tz.m.LR(1e-2))
    """

    def __init__(self, norm_value: float = 1, ord: Metrics = 2,
                 dim: int | Sequence[int] | Literal["global"] | None = None, inverse_dims: bool = False,
                 min_size: int = 1, target: Target = "update"):
        _check_ord("Normalize", ord)
        _check_dim("Normalize", dim)
        super().__init__(dict(norm_value=norm_value, ord=ord, dim=dim, min_size=min_size, inverse_dims=inverse_dims),
                         target=target)

    def _clip(self, tensors, settings, s0):  # type: ignore[no-untyped-def]
        _clip_norm_(tensors, None, [s["norm_value"] for s in settings], s0["ord"], s0["dim"], s0["inverse_dims"],
                    s0["min_size"])
