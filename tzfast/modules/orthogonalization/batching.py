"""Orthogonalizing many tensors at once: same-shape matrices are stacked into one batch.

A :class:`Plan` is built once per (tensor shapes, settings) and reused every step: it says, for
each tensor, whether it is orthogonalized, how its matrices are laid out (``channel_first``: the
first two dims, else the last two; the other dims are batch dims), and which batch it joins. A
batch holds every matrix of one wide shape ``[r, c]`` (``r <= c``; tall matrices are transposed
in, so ``768 x 3072`` and ``3072 x 768`` weights share one batch), method, compute dtype and
dual-norm setting, and is orthogonalized by one call.

Methods (torchzero 0.4.4's names):

* ``'newtonschulz'``, ``'ns5'`` — Newton-Schulz with torchzero's per-step schedule
  (:mod:`tzfast.ops.newton_schulz`), ``'polar_express'`` — Polar Express;
* ``'svd'`` — ``U V^T`` from a batched SVD (retried in float64 on failure);
* ``'qr'`` — ``Q`` of the reduced QR of the tall orientation, as torchzero orients it;
* ``'eigh'`` — the polar factor ``(X X^T)^{-1/2} X`` from the eigendecomposition of the small
  Gram matrix, in float64 (directions with zero singular value map to zero).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ...ops.newton_schulz import default_compute_dtype, newton_schulz

__all__ = ["METHODS", "Config", "Plan", "build_plan", "check_method", "is_at_least_2d", "muon_lr_factor", "run_plan"]

METHODS: tuple[str, ...] = ("newtonschulz", "ns5", "polar_express", "svd", "qr", "eigh")


def check_method(who: str, method: Any) -> str:
    """``method`` lower-cased, or ValueError listing the accepted values."""
    m = method.lower() if isinstance(method, str) else method
    if m not in METHODS:
        raise ValueError(f"{who}: `method` must be one of {METHODS}, got {method!r}")
    return m  # type: ignore[no-any-return]


def is_at_least_2d(shape: Sequence[int], channel_first: bool) -> bool:
    """Whether the two matrix dims exist and are both larger than 1 (torchzero's rule)."""
    if len(shape) < 2:
        return False
    if channel_first:
        return shape[0] > 1 and shape[1] > 1
    return shape[-2] > 1 and shape[-1] > 1


def muon_lr_factor(shape: Sequence[int], channel_first: bool) -> float:
    """Moonlight's learning-rate factor ``0.2 * sqrt(max(A, B))`` of the matrix dims ``A, B``."""
    A, B = (shape[0], shape[1]) if channel_first else (shape[-2], shape[-1])
    return 0.2 * math.sqrt(max(A, B))


class Config(NamedTuple):
    """What to do with one tensor."""

    orthogonalize: bool
    method: str
    channel_first: bool
    dual_norm_correction: bool
    scale: float  # multiplies the result (adjust_lr factor, or 1)
    compute_dtype: torch.dtype | None  # NS compute dtype; None: by device


class _Entry(NamedTuple):
    index: int
    start: int
    count: int
    rows: int  # d0 of the natural [count, d0, d1] matrices
    cols: int
    tall: bool
    scale: float


class _Batch(NamedTuple):
    method: str
    r: int
    c: int
    dtype: torch.dtype
    device: torch.device
    compute_dtype: torch.dtype
    dual_norm: bool
    qr_direct: bool
    entries: tuple[_Entry, ...]
    total: int


class Plan(NamedTuple):
    batches: tuple[_Batch, ...]
    key: tuple


def _natural(t: Tensor, channel_first: bool) -> Tensor:
    """The matrices of ``t`` as ``[k, d0, d1]`` (a view where possible)."""
    if channel_first:
        if t.dim() > 2:
            t = t.permute(*range(2, t.dim()), 0, 1)
        return t.reshape(-1, t.shape[-2], t.shape[-1])
    return t.reshape(-1, t.shape[-2], t.shape[-1])


def build_plan(tensors: Sequence[Tensor], configs: Sequence[Config]) -> Plan:
    """Groups the matrices of ``tensors`` into batches by wide shape, method and dtype."""
    groups: dict[tuple, list[_Entry]] = {}
    starts: dict[tuple, int] = {}
    key = []
    for i, (t, cfg) in enumerate(zip(tensors, configs)):
        key.append((tuple(t.shape), t.dtype, t.device, cfg))
        if not cfg.orthogonalize or not is_at_least_2d(t.shape, cfg.channel_first):
            continue
        if cfg.channel_first:
            d0, d1 = t.shape[0], t.shape[1]
        else:
            d0, d1 = t.shape[-2], t.shape[-1]
        k = t.numel() // (d0 * d1) if d0 * d1 else 0
        tall = d0 > d1
        r, c = (d1, d0) if tall else (d0, d1)
        ct = cfg.compute_dtype if cfg.compute_dtype is not None else default_compute_dtype(t, cfg.method)
        # torchzero orients QR on its working matrix (the transposed slice when channel_first); for
        # a square channel-last matrix that is the matrix itself, for every other case the tall side
        qr_direct = cfg.method == "qr" and d0 == d1 and not cfg.channel_first
        gk = (cfg.method, r, c, t.dtype, t.device, ct, cfg.dual_norm_correction, qr_direct)
        s = starts.get(gk, 0)
        groups.setdefault(gk, []).append(_Entry(i, s, k, d0, d1, tall, cfg.scale))
        starts[gk] = s + k
    batches = tuple(_Batch(gk[0], gk[1], gk[2], gk[3], gk[4], gk[5], gk[6], gk[7], tuple(es), starts[gk])
                    for gk, es in groups.items())
    return Plan(batches, tuple(key))


# ----------------------------------------------------------------------------- methods
def _svd(X: Tensor) -> Tensor:
    try:
        U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    except torch.linalg.LinAlgError:
        if X.dtype == torch.float64:
            raise
        U, _, Vh = torch.linalg.svd(X.double(), full_matrices=False)
        return (U @ Vh).to(X.dtype)
    return U @ Vh


def _qr(X: Tensor, direct: bool) -> Tensor:
    def q(M: Tensor) -> Tensor:
        try:
            return torch.linalg.qr(M, mode="reduced").Q
        except torch.linalg.LinAlgError:
            if M.dtype == torch.float64:
                raise
            return torch.linalg.qr(M.double(), mode="reduced").Q.to(M.dtype)

    return q(X) if direct else q(X.mT).mT


def _eigh(X: Tensor) -> Tensor:
    Xd = X.double()
    L, V = torch.linalg.eigh(Xd @ Xd.mT)
    tol = L.amax(dim=-1, keepdim=True).clamp_min(0) * (X.shape[-2] * torch.finfo(torch.float64).eps) * 10
    inv = torch.where(L > tol, L.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), torch.zeros_like(L))
    return ((V * inv.unsqueeze(-2)) @ (V.mT @ Xd)).to(X.dtype)


def _orthogonalize_batch(b: _Batch, X: Tensor) -> Tensor:
    if b.method in ("newtonschulz", "ns5", "polar_express"):
        return newton_schulz(X, b.method, dtype=b.compute_dtype)
    if b.method == "svd":
        return _svd(X)
    if b.method == "qr":
        return _qr(X, b.qr_direct)
    return _eigh(X)


@torch.no_grad()
def run_plan(plan: Plan, tensors: Sequence[Tensor], configs: Sequence[Config],
             out: list[Tensor] | None = None) -> list[Tensor]:
    """Orthogonalizes ``tensors`` per ``plan``; tensors not in a batch are passed through.

    With ``out``, results are written into ``out[i]`` (same shape) in place; otherwise fresh
    contiguous tensors are returned for the orthogonalized entries.
    """
    result = list(tensors) if out is None else out
    for b in plan.batches:
        wides = []
        for e in b.entries:
            M = _natural(tensors[e.index], configs[e.index].channel_first)
            wides.append(M.mT if e.tall else M)
        X = wides[0] if len(wides) == 1 else torch.cat(wides, dim=0)
        Y = _orthogonalize_batch(b, X)
        if b.dual_norm:
            Y = Y * (X.to(Y.dtype) * Y).sum(dim=(-2, -1), keepdim=True)
        for e in b.entries:
            t = tensors[e.index]
            cf = configs[e.index].channel_first
            target = None if out is None else out[e.index]
            direct = target is not None and target.is_contiguous()
            dst = target if direct else torch.empty_like(t, memory_format=torch.contiguous_format)
            assert dst is not None
            src = Y[e.start:e.start + e.count]
            _natural(dst, cf).copy_(src.mT if e.tall else src)  # a view: dst is contiguous
            if e.scale != 1.0:
                dst.mul_(e.scale)
            if target is not None and not direct:
                target.copy_(dst)
                dst = target
            result[e.index] = dst
    return result
