"""Newton-Schulz orthogonalization: the op's Python face, coefficient schedules and reference twin.

:func:`newton_schulz` maps a matrix ``G`` (or a batch ``[..., m, n]`` of same-shape matrices) to
an approximation of its polar factor ``U V^T`` (``G = U S V^T``), the "zeroth power" Muon uses.
Per matrix it works on the wide orientation (``X = G^T`` when ``m > n``), normalises
``X <- X / max(||X||_F * norm_scale + eps, 2 * tiny)`` and runs one step per ``(a, b, c)`` of the
schedule: ``A = X X^T``, ``B = b A + c A^2``, ``X <- a X + B X``. The Gram variant computes the
same iterates on the ``r x r`` side (``r = min(m, n)``): ``X_k = Q_k X_0``,
``Q <- (a I + B) Q``, ``A <- (a I + B) A (a I + B)``; it is chosen by shape (``max(m, n) >= 2 r``
in float32/float64) unless ``gram`` says otherwise. The math and its cost are described at the
top of ``csrc/ops/newton_schulz.cpp``.

Schedules (:data:`SCHEDULES`):

* ``'quintic'``: Keller Jordan's original Muon quintic ``(3.4445, -4.7750, 2.0315)``, 5 steps.
* ``'newtonschulz'`` / ``'ns5'``: torchzero 0.4.4's per-step schedule (5 steps, coefficients
  from HeavyBall, see INVENTORY §8), normalised by ``max(||X||_F, 2 tiny)``.
* ``'polar_express'``: Polar Express (Amsel et al. 2025, arXiv:2505.16932, the degree-5
  coefficients of its v3 table as torchzero/HeavyBall tabulate them), each step but the last
  divided by the safety factor ``1.01`` (``a / 1.01, b / 1.01^3, c / 1.01^5``), 10 steps (the
  last polynomial repeated), normalised by ``||X||_F * 1.01 + 1e-7``.

The wrapper calls the native op ``torch.ops.tzfast.newton_schulz`` (ATen batched GEMMs, CPU and
CUDA) when the extension is loaded, else the pure-torch twin :func:`newton_schulz_reference`
(the same algorithm, op for op).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .._native import HAS_EXTENSION

__all__ = [
    "POLAR_EXPRESS_COEFFS",
    "QUINTIC_COEFFS",
    "SCHEDULES",
    "TORCHZERO_NS5_COEFFS",
    "Schedule",
    "default_compute_dtype",
    "newton_schulz",
    "newton_schulz_",
    "newton_schulz_reference",
    "polar_express_schedule",
    "schedule",
]

Coeffs = tuple[tuple[float, float, float], ...]

#: Keller Jordan's quintic (Muon), the same (a, b, c) for each of the 5 steps.
QUINTIC_COEFFS: Coeffs = ((3.4445, -4.7750, 2.0315),) * 5

#: torchzero 0.4.4's ``newtonschulz``/``ns5`` per-step schedule (INVENTORY §8).
TORCHZERO_NS5_COEFFS: Coeffs = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)

#: Polar Express degree-5 polynomials (Amsel, Persson, Musco, Gower, "The Polar Express: Optimal
#: Matrix Sign Methods and Their Application to the Muon Algorithm", arXiv:2505.16932 v3), before
#: the safety factor.
POLAR_EXPRESS_COEFFS: Coeffs = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)


def polar_express_schedule(steps: int = 10, safety: float = 1.01) -> Coeffs:
    """The Polar Express schedule for ``steps`` steps: every polynomial but the last divided by
    ``safety`` (``a/s, b/s^3, c/s^5``); steps past the table repeat its last (scaled) entry."""
    table = [(a / safety, b / safety**3, c / safety**5) for a, b, c in POLAR_EXPRESS_COEFFS[:-1]]
    table.append(POLAR_EXPRESS_COEFFS[-1])
    return tuple(table[min(k, len(table) - 1)] for k in range(steps))


class Schedule(NamedTuple):
    """A coefficient schedule with its normalisation: ``X / max(||X|| * norm_scale + eps, 2 tiny)``."""

    coeffs: Coeffs
    norm_scale: float
    eps: float


SCHEDULES: dict[str, Schedule] = {
    "quintic": Schedule(QUINTIC_COEFFS, 1.0, 0.0),
    "newtonschulz": Schedule(TORCHZERO_NS5_COEFFS, 1.0, 0.0),
    "ns5": Schedule(TORCHZERO_NS5_COEFFS, 1.0, 0.0),
    "polar_express": Schedule(polar_express_schedule(), 1.01, 1e-7),
}


def schedule(name: str) -> Schedule:
    """The schedule called ``name`` (a key of :data:`SCHEDULES`).

    Raises:
        ValueError: for any other name, listing the accepted ones.
    """
    s = SCHEDULES.get(name) if isinstance(name, str) else None
    if s is None:
        raise ValueError(f"newton_schulz: unknown schedule {name!r}; accepted: {', '.join(map(repr, SCHEDULES))}")
    return s


def default_compute_dtype(t: Tensor, method: str = "newtonschulz") -> torch.dtype:
    """The dtype NS runs in when none is given: bfloat16 on CUDA for ``'newtonschulz'``/``'ns5'``
    (as torchzero and Muon; cuBLAS accumulates in float32), else ``t``'s dtype, with float16 and
    bfloat16 promoted to float32 on the CPU (which lacks fast half-precision GEMMs)."""
    if t.device.type == "cuda" and method in ("newtonschulz", "ns5"):
        return torch.bfloat16
    if t.device.type == "cpu" and t.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return t.dtype


_TINY = {torch.float64: torch.finfo(torch.float64).tiny, torch.float16: torch.finfo(torch.float16).tiny}


def _flat_coeffs(coeffs: Sequence[Sequence[float]] | Sequence[float]) -> list[float]:
    flat: list[float] = []
    for c in coeffs:
        if isinstance(c, (int, float)):
            flat.append(float(c))
        else:
            flat.extend(float(x) for x in c)
    return flat


def _check(op: str, G: Tensor, flat: list[float], norm_scale: float, eps: float, gram: int,
           dtype: torch.dtype | None) -> None:
    """The native op's checks, same order and messages (RuntimeError like TORCH_CHECK)."""
    if G.dim() < 2:
        raise RuntimeError(f"tzfast::{op}: expected G to have at least 2 dimensions ([..., m, n]) but got shape "
                           f"{list(G.shape)}")
    floating = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    if G.dtype not in floating:
        raise RuntimeError(f"tzfast::{op}: expected G to be Float, Double, Half or BFloat16 but got {G.dtype}")
    if not flat or len(flat) % 3:
        raise RuntimeError(f"tzfast::{op}: expected coeffs to hold (a, b, c) per step (a non-empty multiple of 3 "
                           f"numbers) but got {len(flat)} numbers")
    if not norm_scale > 0:
        raise RuntimeError(f"tzfast::{op}: expected norm_scale > 0 but got {norm_scale}")
    if not eps >= 0:
        raise RuntimeError(f"tzfast::{op}: expected eps >= 0 but got {eps}")
    if gram not in (-1, 0, 1):
        raise RuntimeError(f"tzfast::{op}: expected gram to be -1 (by shape), 0 (plain) or 1 (Gram) but got {gram}")
    if dtype is not None and dtype not in floating:
        raise RuntimeError(f"tzfast::{op}: expected dtype to be Float, Double, Half or BFloat16 but got {dtype}")


def _iterate_reference(G: Tensor, flat: list[float], norm_scale: float, eps: float, gram: int,
                       ct: torch.dtype) -> Tensor:
    m, n = G.shape[-2], G.shape[-1]
    tall = m > n
    r, c = (n, m) if tall else (m, n)
    X = G.reshape(-1, m, n)
    if tall:
        X = X.mT
    X = X.to(ct).contiguous()
    norm_dtype = torch.float64 if ct == torch.float64 else torch.float32
    denom = torch.linalg.vector_norm(X, 2, dim=(-2, -1), keepdim=True, dtype=norm_dtype)
    if norm_scale != 1.0:
        denom = denom * norm_scale
    if eps != 0.0:
        denom = denom + eps
    denom = denom.clamp_min(2.0 * _TINY.get(ct, torch.finfo(torch.float32).tiny))
    X = X / denom.to(ct)
    steps = len(flat) // 3
    use_gram = (ct in (torch.float32, torch.float64) and c >= 2 * r and steps >= 2) if gram < 0 else gram == 1
    if not use_gram:
        for k in range(steps):
            a, b, cc = flat[3 * k:3 * k + 3]
            A = torch.bmm(X, X.mT)
            Bm = torch.baddbmm(A, A, A, beta=b, alpha=cc)
            X = torch.baddbmm(X, Bm, X, beta=a)
        return X
    A = torch.bmm(X, X.mT)
    Q = A
    for k in range(steps):
        a, b, cc = flat[3 * k:3 * k + 3]
        Bm = torch.baddbmm(A, A, A, beta=b, alpha=cc)
        if k == 0:
            Q = Bm.clone()
            Q.diagonal(0, -2, -1).add_(a)
        else:
            Q = torch.baddbmm(Q, Bm, Q, beta=a)
        if k + 1 < steps:
            T = torch.baddbmm(A, Bm, A, beta=a)
            A = torch.baddbmm(T, T, Bm, beta=a)
    return torch.bmm(Q, X)


def newton_schulz_reference(G: Tensor, coeffs: Sequence[Sequence[float]] | Sequence[float],
                            norm_scale: float = 1.0, eps: float = 0.0, gram: int = -1,
                            dtype: torch.dtype | None = None) -> Tensor:
    """Pure-torch twin of :func:`newton_schulz` (same steps, same buffers' math)."""
    flat = _flat_coeffs(coeffs)
    _check("newton_schulz", G, flat, norm_scale, eps, gram, dtype)
    if G.numel() == 0:
        return torch.empty_like(G, memory_format=torch.contiguous_format)
    X = _iterate_reference(G, flat, norm_scale, eps, gram, dtype or G.dtype)
    if G.shape[-2] > G.shape[-1]:
        X = X.mT
    return X.to(G.dtype).reshape(G.shape).contiguous()


def _native_ok() -> bool:
    return HAS_EXTENSION and hasattr(torch.ops.tzfast, "newton_schulz")


def newton_schulz(G: Tensor, coeffs: Sequence[Sequence[float]] | Sequence[float] | str = "quintic",
                  norm_scale: float | None = None, eps: float | None = None, gram: int | None = None,
                  dtype: torch.dtype | None = None) -> Tensor:
    """Approximate polar factor ``U V^T`` of each matrix of ``G`` by Newton-Schulz iteration.

    Args:
        G: a matrix ``[m, n]`` or a batch ``[..., m, n]``; float32/float64/float16/bfloat16.
        coeffs: a schedule name (``'quintic'``, ``'newtonschulz'``, ``'ns5'``,
            ``'polar_express'``) or ``(a, b, c)`` per step (default ``'quintic'``).
        norm_scale: the Frobenius norm is multiplied by this before normalising (default: the
            named schedule's, 1.0 for explicit coefficients).
        eps: added to the scaled norm (default: the named schedule's, 0.0 for explicit
            coefficients); the denominator is at least ``2 * tiny``, so zero matrices give zeros.
        gram: ``None`` (by shape), ``False``/``0`` plain iteration, ``True``/``1`` Gram variant.
        dtype: compute dtype (default ``G.dtype``); the result has ``G``'s dtype and shape.

    Returns:
        A new contiguous tensor like ``G``.

    Examples:
        >>> import torch
        >>> from tzfast.ops.newton_schulz import newton_schulz
        >>> X = newton_schulz(torch.randn(4, 64, 256), "polar_express")
        >>> bool((torch.linalg.svdvals(X) - 1).abs().max() < 0.1)
        True
    """
    if isinstance(coeffs, str):
        s = schedule(coeffs)
        coeffs = s.coeffs
        norm_scale = s.norm_scale if norm_scale is None else norm_scale
        eps = s.eps if eps is None else eps
    flat = _flat_coeffs(coeffs)
    ns = 1.0 if norm_scale is None else float(norm_scale)
    e = 0.0 if eps is None else float(eps)
    g = -1 if gram is None else int(gram)
    if _native_ok() and not torch.compiler.is_compiling():
        out: Tensor = torch.ops.tzfast.newton_schulz(G, flat, ns, e, g, dtype)
        return out
    return newton_schulz_reference(G, flat, ns, e, g, dtype)


def newton_schulz_(G: Tensor, coeffs: Sequence[Sequence[float]] | Sequence[float] | str = "quintic",
                   norm_scale: float | None = None, eps: float | None = None, gram: int | None = None,
                   dtype: torch.dtype | None = None) -> Tensor:
    """In-place :func:`newton_schulz`: writes the result into ``G`` and returns ``G``."""
    if isinstance(coeffs, str):
        s = schedule(coeffs)
        coeffs = s.coeffs
        norm_scale = s.norm_scale if norm_scale is None else norm_scale
        eps = s.eps if eps is None else eps
    flat = _flat_coeffs(coeffs)
    ns = 1.0 if norm_scale is None else float(norm_scale)
    e = 0.0 if eps is None else float(eps)
    g = -1 if gram is None else int(gram)
    if _native_ok() and not torch.compiler.is_compiling():
        torch.ops.tzfast.newton_schulz_(G, flat, ns, e, g, dtype)
        return G
    if G.numel() == 0:
        _check("newton_schulz_", G, flat, ns, e, g, dtype)
        return G
    with torch.no_grad():
        G.copy_(newton_schulz_reference(G, flat, ns, e, g, dtype))
    return G


if HAS_EXTENSION and hasattr(torch.ops.tzfast, "newton_schulz"):

    @torch.library.register_fake("tzfast::newton_schulz")
    def _newton_schulz_fake(G: Tensor, coeffs: Sequence[float], norm_scale: float = 1.0, eps: float = 0.0,
                            gram: int = -1, dtype: torch.dtype | None = None) -> Tensor:
        return torch.empty_like(G, memory_format=torch.contiguous_format)

    @torch.library.register_fake("tzfast::newton_schulz_")
    def _newton_schulz_inplace_fake(G: Tensor, coeffs: Sequence[float], norm_scale: float = 1.0, eps: float = 0.0,
                                    gram: int = -1, dtype: torch.dtype | None = None) -> Tensor:
        return G
