"""Seeded random directions over a list of tensors, on top of the perturbation engine.

A :class:`Directions` object names a family of directions ``z_k`` (``k`` = sample index) over a
list of tensors, each a pure function of ``(key, k, global element index)`` computed by
``tzfast.ops.perturb`` (docs/perturbation.md). Directions are never stored: adding
``alpha * z_k`` to tensors, or forming ``sum_k c_k z_k``, regenerates them in the kernel.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["DISTRIBUTIONS", "Directions", "check_distribution", "draw_key"]

DISTRIBUTIONS: tuple[str, ...] = ("gaussian", "normal", "rademacher", "uniform", "sphere")
"""Distribution names the engine generates; each has zero mean and unit variance per element."""

def _perturb() -> Any:
    from ..ops import perturb

    return perturb


def check_distribution(who: str, distribution: Any) -> str:
    """``distribution`` if it names an engine distribution, else a ValueError listing them."""
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        raise ValueError(f"{who}: `distribution` must be one of {DISTRIBUTIONS}, got {distribution!r}")
    return distribution


def draw_key(generator: torch.Generator | None = None) -> int:
    """A 64-bit engine key (a signed int64) drawn from ``generator`` (torch's default CPU generator when None)."""
    kw: dict[str, Any] = {} if generator is None else {"generator": generator, "device": generator.device}
    return int(torch.randint(-(1 << 63), (1 << 63) - 1, (1,), dtype=torch.int64, **kw).item())


class Directions:
    """The directions ``z_k`` (``k = 0, 1, ...``) of one key over a list of tensors.

    Element ``e`` of tensor ``j`` is the engine's value at global index ``offsets[j] + e``, the
    offsets counting through the tensors in order (each flattened row-major). For ``'sphere'``
    each direction is scaled to norm ``sqrt(numel)`` over all the tensors.

    Args:
        tensors: the tensors the directions live on (their shapes, dtypes and devices).
        distribution: one of :data:`DISTRIBUTIONS`.
        key: the engine key (seed).
    """

    __slots__ = ("key", "distribution", "code", "numel", "offsets", "groups", "_sphere_scales")

    def __init__(self, tensors: Sequence[torch.Tensor], distribution: str, key: int):
        self.key = int(key)
        self.distribution = check_distribution("Directions", distribution)
        # 'sphere' is the Gaussian direction rescaled to norm sqrt(numel) (the scale is applied here)
        self.code = int(_perturb().distribution_code("gaussian" if distribution == "sphere" else distribution))
        numels = [t.numel() for t in tensors]
        self.offsets = [0, *itertools.accumulate(numels)][:-1]
        self.numel = sum(numels)
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for j, t in enumerate(tensors):
            groups.setdefault((t.device, t.dtype), []).append(j)
        self.groups = list(groups.values())
        self._sphere_scales: dict[int, float] = {}

    def scale(self, k: int) -> float:
        """The factor applied to the engine's raw values of direction ``k`` (1 except for ``'sphere'``)."""
        if self.distribution != "sphere" or self.numel == 0:
            return 1.0
        s = self._sphere_scales.get(k)
        if s is None:
            sq = float(_perturb().direction_sq_norm(self.key, k, self.code, self.numel))
            s = self._sphere_scales[k] = math.sqrt(self.numel / sq) if sq > 0 else 0.0
        return s

    def add_(self, tensors: Sequence[torch.Tensor], k: int, alpha: float | Sequence[float]) -> None:
        """``tensors[j] += alpha_j * z_k`` in place (``alpha`` a number or one number per tensor)."""
        self._accumulate(tensors, [k], alpha, [1.0], accumulate=True)

    def perturbed_(self, out: Sequence[torch.Tensor], base: Sequence[torch.Tensor], k: int,
                   alpha: float | Sequence[float]) -> None:
        """``out[j] = base[j] + alpha_j * z_k``."""
        torch._foreach_copy_(list(out), list(base))
        self.add_(out, k, alpha)

    def combine_(self, out: Sequence[torch.Tensor], samples: Sequence[int], coeffs: Sequence[float],
                 alpha: float | Sequence[float] = 1.0) -> None:
        """``out[j] = alpha_j * sum_i coeffs[i] * z_{samples[i]}`` (overwrites ``out``), one pass for all samples."""
        self._accumulate(out, samples, alpha, coeffs, accumulate=False)

    def _accumulate(self, tensors: Sequence[torch.Tensor], samples: Sequence[int], alpha: float | Sequence[float],
                    coeffs: Sequence[float], accumulate: bool) -> None:
        samples = [int(k) for k in samples]
        if len(samples) != len(coeffs):
            raise ValueError(f"Directions: {len(samples)} samples but {len(coeffs)} coefficients")
        if self.distribution == "sphere":
            coeffs = [float(c) * self.scale(k) for c, k in zip(coeffs, samples, strict=True)]
        else:
            coeffs = [float(c) for c in coeffs]
        alphas = [float(alpha)] * len(tensors) if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
        if len(alphas) != len(tensors):
            raise ValueError(f"Directions: {len(tensors)} tensors but {len(alphas)} values of alpha")
        acc = _perturb().accumulate_directions_
        for idx in self.groups:
            by_alpha: dict[float, list[int]] = {}
            for j in idx:
                by_alpha.setdefault(alphas[j], []).append(j)
            for a, js in by_alpha.items():
                if a == 0.0 and accumulate:
                    continue
                acc([tensors[j] for j in js], [self.offsets[j] for j in js], self.key, samples, coeffs, self.code,
                    a, accumulate)
