"""Argument checks and small helpers shared by the PSGD modules."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ...core.derivatives import DISTRIBUTIONS, canonical_hvp_method
from ._ops import canonical_dq

__all__ = ["check_common", "check_hvp", "flat", "unflat", "check_half_quad4p", "clip_norm_"]


def _number(who: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{who}: `{name}` must be a number, got {type(value).__name__}: {value!r}")
    return float(value)


def check_common(who: str, init_scale: Any, lr_preconditioner: Any, betaL: Any, damping: Any,
                 grad_clip: tuple[str, Any], update_probability: Any, dQ: str | None = None) -> None:
    """Checks the settings every PSGD module has (each error names its argument)."""
    if init_scale is not None and not _number(who, "init_scale", init_scale) > 0:
        raise ValueError(f"{who}: `init_scale` must be None or > 0, got {init_scale!r}")
    if not _number(who, "lr_preconditioner", lr_preconditioner) > 0:
        raise ValueError(f"{who}: `lr_preconditioner` must be > 0, got {lr_preconditioner!r}")
    if not 0 <= _number(who, "betaL", betaL) < 1:
        raise ValueError(f"{who}: `betaL` must be in [0, 1), got {betaL!r}")
    if not _number(who, "damping", damping) >= 0:
        raise ValueError(f"{who}: `damping` must be >= 0, got {damping!r}")
    name, value = grad_clip
    if not _number(who, name, value) > 0:
        raise ValueError(f"{who}: `{name}` must be > 0 (math.inf for no clipping), got {value!r}")
    if not 0 <= _number(who, "update_probability", update_probability) <= 1:
        raise ValueError(f"{who}: `update_probability` must be in [0, 1], got {update_probability!r}")
    if dQ is not None:
        canonical_dq(who, dQ)


def check_hvp(who: str, hvp_method: str, h: Any, distribution: str) -> None:
    try:
        canonical_hvp_method(hvp_method)
    except ValueError as e:
        raise ValueError(f"{who}: `hvp_method`: {e}") from None
    if not _number(who, "h", h) > 0:
        raise ValueError(f"{who}: `h` must be > 0, got {h!r}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"{who}: `distribution` must be one of {DISTRIBUTIONS}, got {distribution!r}")


def check_half_quad4p(who: str, dQ: str, dtype: torch.dtype) -> None:
    if dQ == "QUAD4P" and torch.finfo(dtype).eps >= 1e-6:
        raise ValueError(f"{who}: `dQ`='QUAD4P' fits P directly and needs at least single precision, "
                         f"got parameters of dtype {dtype}")


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tensors concatenated into one column vector."""
    return torch.cat([t.reshape(-1) for t in tensors]).unsqueeze(1)


def unflat(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of the flat ``vec`` shaped like ``like``."""
    vec = vec.view(-1)
    out, start = [], 0
    for t in like:
        n = t.numel()
        out.append(vec[start:start + n].view_as(t))
        start += n
    return out


def clip_norm_(vec: torch.Tensor, max_norm: float) -> None:
    """Scales ``vec`` down to norm ``max_norm`` when it is longer (no-op for ``inf``)."""
    if max_norm < math.inf:
        norm = torch.linalg.vector_norm(vec)
        if norm > max_norm:
            vec.mul_(max_norm / norm)
