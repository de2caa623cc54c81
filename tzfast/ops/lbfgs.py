"""L-BFGS ops: the curvature pair and the two-pass direction (math in ``docs/lbfgs.md``).

The history of one bucket lives in ``hist``, a ``[2 * slots, n]`` tensor (slot ``t``: ``s_t`` in
row ``2t``, ``y_t`` in row ``2t + 1``), and ``gram``, a float64 CPU ``[2, slots, slots]`` tensor
(``s_i . y_j`` and ``y_i . y_j``). ``order`` lists the slots in use, oldest first.

* :func:`lbfgs_pair_` forms ``s = p - p_prev`` and ``y = g - g_prev`` into a slot, copies
  ``p`` and ``g`` as the next ``p_prev``/``g_prev`` and returns ``(s . y, max|s|, max|y|,
  NaN count)`` in one pass.
* :func:`lbfgs_direction_` writes the L-BFGS direction ``H x`` (the two-loop recursion's
  result) in two passes over the history; a pair stored since the last direction gets its Gram
  entries from the first pass.

Each has a native CPU kernel (float32/float64, called through ``tzfast._C`` without the
dispatcher) and a pure-torch twin with the same math, used for other devices and dtypes and
by the tests; :func:`two_loop_reference` is the textbook recursion the tests compare with.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._native import HAS_EXTENSION, _C

__all__ = ["lbfgs_direction_", "lbfgs_direction_reference_", "lbfgs_pair_", "lbfgs_pair_reference_",
           "native_lbfgs_ok", "two_loop_reference"]

_direct_pair = getattr(_C, "_lbfgs_pair_cpu", None)
_direct_direction = getattr(_C, "_lbfgs_direction_cpu", None)


def native_lbfgs_ok(tensors: Sequence[Tensor]) -> bool:
    """Whether the native kernels take these tensors: CPU, float32/float64, contiguous, one dtype."""
    if not HAS_EXTENSION or _direct_pair is None or not tensors or torch.compiler.is_compiling():
        return False
    dt = tensors[0].dtype
    return dt in (torch.float32, torch.float64) and all(
        t.device.type == "cpu" and t.dtype == dt and t.is_contiguous() for t in tensors)


def _flat(ts: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    return torch.cat([t.reshape(-1).to(dtype) for t in ts]) if len(ts) > 1 else ts[0].reshape(-1).to(dtype)


# ----------------------------------------------------------------------------- pair
def lbfgs_pair_reference_(params: Sequence[Tensor], grads: Sequence[Tensor], prev: Tensor | None, nxt: Tensor,
                          pair: Tensor | None) -> Tensor:
    """Pure-torch twin of :func:`lbfgs_pair_`."""
    p = _flat(params, nxt.dtype)
    g = _flat(grads, nxt.dtype)
    stats = torch.zeros(4, dtype=torch.float64)
    if prev is not None:
        assert pair is not None
        torch.sub(p, prev[0], out=pair[0])
        torch.sub(g, prev[1], out=pair[1])
        s, y = pair[0], pair[1]
        stats[0] = (s.double() * y.double()).sum()
        finite_s, finite_y = s.nan_to_num(nan=0.0).abs(), y.nan_to_num(nan=0.0).abs()
        stats[1] = finite_s.max().double() if s.numel() else 0.0
        stats[2] = finite_y.max().double() if y.numel() else 0.0
        stats[3] = float(s.isnan().sum() + y.isnan().sum())
    nxt[0].copy_(p)
    nxt[1].copy_(g)
    return stats


def lbfgs_pair_(params: Sequence[Tensor], grads: Sequence[Tensor], prev: Tensor | None, nxt: Tensor,
                pair: Tensor | None) -> Tensor:
    """``pair = (p - prev[0], g - prev[1])``, ``next = (p, g)``; returns float64
    ``[s . y, max|s|, max|y|, NaN count]`` (zeros and no pair when ``prev`` is None)."""
    if _direct_pair is not None and native_lbfgs_ok([*params, *grads, nxt]):
        return _direct_pair(list(params), list(grads), prev, nxt, pair)  # type: ignore[no-any-return]
    return lbfgs_pair_reference_(params, grads, prev, nxt, pair)


# ----------------------------------------------------------------------------- direction
def _coefficients(dots: list[list[float]], gram: Tensor, order: Sequence[int], new_slot: int,
                  sy: Sequence[float]) -> tuple[float, list[float]]:
    """The Gram update and the two-loop recursion on scalars (the native op's host code)."""
    m = len(order)
    SY, YY = gram[0], gram[1]
    if new_slot >= 0:
        t = new_slot
        for i, o in enumerate(order):
            SY[o, t] = dots[2 * i][2]
            SY[t, o] = dots[2 * i + 1][1]
            YY[o, t] = YY[t, o] = dots[2 * i + 1][2]
    sy_m = SY.tolist()
    yy_m = YY.tolist()
    alpha = [0.0] * m
    for i in range(m - 1, -1, -1):
        sq = dots[2 * i][0]
        for j in range(i + 1, m):
            sq -= alpha[j] * sy_m[order[i]][order[j]]
        alpha[i] = sq / sy[i]
    last = order[-1]
    gamma = sy[-1] / yy_m[last][last]
    c = [0.0] * m
    for i in range(m):
        yq = dots[2 * i + 1][0]
        for j in range(m):
            yq -= alpha[j] * yy_m[order[i]][order[j]]
        yr = gamma * yq
        for j in range(i):
            yr += c[j] * sy_m[order[j]][order[i]]
        c[i] = alpha[i] - yr / sy[i]
    coef = []
    for i in range(m):
        coef += [c[i], -gamma * alpha[i]]
    return gamma, coef


def lbfgs_direction_reference_(out: Sequence[Tensor], x: Sequence[Tensor], hist: Tensor, gram: Tensor,
                               order: Sequence[int], new_slot: int, sy: Sequence[float]) -> Tensor:
    """Pure-torch twin of :func:`lbfgs_direction_` (same algorithm; sums in float64)."""
    xf = _flat(x, torch.float64).to(hist.device)
    m = len(order)
    gamma, terms = 1.0, 0
    if m == 0:
        d = xf
    else:
        rows = torch.tensor([r for o in order for r in (2 * o, 2 * o + 1)], device=hist.device)
        H = hist.index_select(0, rows).double()
        cols = [xf]
        if new_slot >= 0:
            cols += [hist[2 * new_slot].double(), hist[2 * new_slot + 1].double()]
        else:
            cols += [torch.zeros_like(xf), torch.zeros_like(xf)]
        dots = (H @ torch.stack(cols, 1)).cpu().tolist()
        gamma, coef = _coefficients(dots, gram, order, new_slot, sy)
        d = gamma * xf + H.T @ torch.tensor(coef, dtype=torch.float64, device=hist.device)
        terms = len(coef)
    i = 0
    for o in out:
        k = o.numel()
        o.copy_(d[i:i + k].view(o.shape))
        i += k
    return torch.tensor([gamma, float(terms)], dtype=torch.float64)


def lbfgs_direction_(out: Sequence[Tensor], x: Sequence[Tensor], hist: Tensor, gram: Tensor, order: Sequence[int],
                     new_slot: int, sy: Sequence[float]) -> Tensor:
    """``out = H x``, the L-BFGS inverse-Hessian approximation from the pairs of ``order`` (oldest
    first; ``sy[i]`` is ``s . y`` of ``order[i]``) applied to ``x``, with ``H_0 = (s.y / y.y) I`` of
    the newest pair; ``out = x`` when ``order`` is empty. ``new_slot`` (or -1) is a slot whose Gram
    entries are not yet in ``gram``: they are filled from the first pass. Returns float64
    ``[gamma, number of history rows combined]``."""
    if _direct_direction is not None and native_lbfgs_ok([*out, *x, hist]):
        return _direct_direction(list(out), list(x), hist, gram, list(order), int(new_slot),  # type: ignore[no-any-return]
                                 [float(v) for v in sy])
    return lbfgs_direction_reference_(out, x, hist, gram, order, new_slot, sy)


def two_loop_reference(x: Tensor, s_history: Sequence[Tensor], y_history: Sequence[Tensor]) -> Tensor:
    """The textbook two-loop recursion on flat vectors (oldest pair first), for tests."""
    q = x.clone()
    if not s_history:
        return q
    rho = [1.0 / torch.dot(s, y) for s, y in zip(s_history, y_history, strict=True)]
    alpha = [torch.zeros((), dtype=x.dtype)] * len(s_history)
    for i in range(len(s_history) - 1, -1, -1):
        alpha[i] = rho[i] * torch.dot(s_history[i], q)
        q = q - alpha[i] * y_history[i]
    s, y = s_history[-1], y_history[-1]
    r = q * (torch.dot(s, y) / torch.dot(y, y))
    for i in range(len(s_history)):
        beta = rho[i] * torch.dot(y_history[i], r)
        r = r + (alpha[i] - beta) * s_history[i]
    return r
