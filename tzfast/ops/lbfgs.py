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
dispatcher), a CUDA implementation in a TZFAST_CUDA build (cuBLAS passes, the scalar recursion
in one device thread: no host sync in a direction), and a pure-torch twin with the same math,
used for other devices and dtypes and by the tests; :func:`two_loop_reference` is the textbook recursion the tests compare with.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._native import HAS_EXTENSION, _C

__all__ = ["METHODS", "lbfgs_direction_", "lbfgs_direction_reference_", "lbfgs_pair_", "lbfgs_pair_reference_",
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


def _cuda_kernel(name: str, tensors: Sequence[Tensor]) -> bool:
    """Whether the registered op ``tzfast::name`` has a CUDA kernel for these tensors (a
    TZFAST_CUDA build; float32/float64 on one CUDA device)."""
    if not HAS_EXTENSION or not tensors or tensors[0].device.type != "cuda":
        return False
    dt = tensors[0].dtype
    if dt not in (torch.float32, torch.float64) or any(t.dtype != dt or t.device != tensors[0].device for t in tensors):
        return False
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"tzfast::{name}", "CUDA"))
    except (RuntimeError, AttributeError):
        return False


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
    if _cuda_kernel("lbfgs_pair_", [*params, *grads, nxt]):
        return torch.ops.tzfast.lbfgs_pair_(list(params), list(grads), prev, nxt, pair)  # type: ignore[no-any-return]
    return lbfgs_pair_reference_(params, grads, prev, nxt, pair)


# ----------------------------------------------------------------------------- direction
#: ``method`` codes of :func:`lbfgs_direction_`.
METHODS = {"lbfgs": 0, "lsr1": 1, "lsr1_compact": 2}


def _update_gram(dots: list[list[float]], gram: Tensor, order: Sequence[int], new_slot: int) -> None:
    if new_slot < 0:
        return
    SY, YY = gram[0], gram[1]
    t = new_slot
    for i, o in enumerate(order):
        SY[o, t] = dots[2 * i][2]
        SY[t, o] = dots[2 * i + 1][1]
        YY[o, t] = YY[t, o] = dots[2 * i + 1][2]


def _lbfgs_coefficients(Sx: list[float], Yx: list[float], sy_g: Callable[[int, int], float],
                        yy_g: Callable[[int, int], float], sy: Sequence[float]) -> tuple[float, list[float]]:
    m = len(Sx)
    alpha = [0.0] * m
    for i in range(m - 1, -1, -1):
        sq = Sx[i]
        for j in range(i + 1, m):
            sq -= alpha[j] * sy_g(i, j)
        alpha[i] = sq / sy[i]
    gamma = sy[-1] / yy_g(m - 1, m - 1)
    c = [0.0] * m
    for i in range(m):
        yq = Yx[i]
        for j in range(m):
            yq -= alpha[j] * yy_g(i, j)
        yr = gamma * yq
        for j in range(i):
            yr += c[j] * sy_g(j, i)
        c[i] = alpha[i] - yr / sy[i]
    return gamma, [v for i in range(m) for v in (c[i], -gamma * alpha[i])]


def _lsr1_coefficients(Sx: list[float], Yx: list[float], sy_g: Callable[[int, int], float],
                       yy_g: Callable[[int, int], float], tiny: float) -> list[float]:
    m = len(Sx)
    P = [[0.0] * m for _ in range(m)]
    Q = [[0.0] * m for _ in range(m)]
    wy = [0.0] * m

    def w_dot_y(j: int, k: int) -> float:
        return sum(P[j][i] * sy_g(i, k) + Q[j][i] * yy_g(i, k) for i in range(j + 1))

    for k in range(m):
        P[k][k], Q[k][k] = 1.0, -1.0
        for j in range(k):
            if abs(wy[j]) < tiny:
                continue
            a = w_dot_y(j, k) / wy[j]
            for i in range(j + 1):
                P[k][i] -= a * P[j][i]
                Q[k][i] -= a * Q[j][i]
        wy[k] = w_dot_y(k, k)
    coef = [0.0] * (2 * m)
    for k in range(m):
        if abs(wy[k]) < tiny:
            continue
        b = sum(P[k][i] * Sx[i] + Q[k][i] * Yx[i] for i in range(k + 1)) / wy[k]
        for i in range(k + 1):
            coef[2 * i] += b * P[k][i]
            coef[2 * i + 1] += b * Q[k][i]
    return coef


def _lsr1_compact_coefficients(Sx: list[float], Yx: list[float], sy_g: Callable[[int, int], float],
                               yy_g: Callable[[int, int], float]) -> list[float] | None:
    m = len(Sx)
    M = torch.tensor([[(sy_g(i, j) if i <= j else sy_g(j, i)) - yy_g(i, j) for j in range(m)] for i in range(m)],
                     dtype=torch.float64)
    u, info = torch.linalg.solve_ex(M, torch.tensor([a - b for a, b in zip(Sx, Yx, strict=True)], dtype=torch.float64))
    if int(info) != 0 or not bool(torch.isfinite(u).all()):
        return None
    return [v for x in u.tolist() for v in (x, -x)]


def _coefficients(dots: list[list[float]], gram: Tensor, order: Sequence[int], new_slot: int,
                  sy: Sequence[float], method: int, tiny: float) -> tuple[float, list[float]]:
    """The Gram update and the coefficients (the native op's host code)."""
    _update_gram(dots, gram, order, new_slot)
    m = len(order)
    sy_m, yy_m = gram[0].tolist(), gram[1].tolist()

    def sy_g(i: int, j: int) -> float:
        return float(sy_m[order[i]][order[j]])

    def yy_g(i: int, j: int) -> float:
        return float(yy_m[order[i]][order[j]])

    Sx = [dots[2 * i][0] for i in range(m)]
    Yx = [dots[2 * i + 1][0] for i in range(m)]
    if method == METHODS["lbfgs"]:
        return _lbfgs_coefficients(Sx, Yx, sy_g, yy_g, sy)
    coef = _lsr1_compact_coefficients(Sx, Yx, sy_g, yy_g) if method == METHODS["lsr1_compact"] else None
    return 1.0, coef if coef is not None else _lsr1_coefficients(Sx, Yx, sy_g, yy_g, tiny)


def lbfgs_direction_reference_(out: Sequence[Tensor], x: Sequence[Tensor], hist: Tensor, gram: Tensor,
                               order: Sequence[int], new_slot: int, sy: Sequence[float], method: int = 0) -> Tensor:
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
        tiny = 2 * torch.finfo(hist.dtype).tiny
        gamma, coef = _coefficients(dots, gram, order, new_slot, sy, method, tiny)
        d = gamma * xf + H.T @ torch.tensor(coef, dtype=torch.float64, device=hist.device)
        terms = len(coef)
    i = 0
    for o in out:
        k = o.numel()
        o.copy_(d[i:i + k].view(o.shape))
        i += k
    return torch.tensor([gamma, float(terms)], dtype=torch.float64)


def lbfgs_direction_(out: Sequence[Tensor], x: Sequence[Tensor], hist: Tensor, gram: Tensor, order: Sequence[int],
                     new_slot: int, sy: Sequence[float], method: int = 0) -> Tensor:
    """``out = H x``, the L-BFGS inverse-Hessian approximation from the pairs of ``order`` (oldest
    first; ``sy[i]`` is ``s . y`` of ``order[i]``) applied to ``x``, with ``H_0 = (s.y / y.y) I`` of
    the newest pair; ``out = x`` when ``order`` is empty. ``new_slot`` (or -1) is a slot whose Gram
    entries are not yet in ``gram``: they are filled from the first pass. ``method`` (see
    :data:`METHODS`) 1 gives limited-memory SR1 instead (``H_0 = I``; a pair whose ``w . y`` is
    below twice the dtype's smallest normal number is skipped), 2 its compact form (one
    ``m x m`` solve; the loop form when that matrix is singular). Returns float64 ``[gamma,
    number of history rows combined]``."""
    if _direct_direction is not None and native_lbfgs_ok([*out, *x, hist]):
        return _direct_direction(list(out), list(x), hist, gram, list(order), int(new_slot),  # type: ignore[no-any-return]
                                 [float(v) for v in sy], int(method))
    if _cuda_kernel("lbfgs_direction_", [*out, *x, hist]):
        return torch.ops.tzfast.lbfgs_direction_(list(out), list(x), hist, gram, list(order),  # type: ignore[no-any-return]
                                                 int(new_slot), [float(v) for v in sy], int(method))
    return lbfgs_direction_reference_(out, x, hist, gram, order, new_slot, sy, method)


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
