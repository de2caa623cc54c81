"""``LBFGS``: limited-memory BFGS with a two-pass native direction (``docs/lbfgs.md``)."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...core.transform import TensorTransform
from ...linalg.linear_operator import Dense, LinearOperator
from ...ops import lbfgs as ops

if TYPE_CHECKING:
    from ...core.module import Chainable
    from ...core.objective import Objective

__all__ = ["LBFGS", "LBFGSOperator", "LSR1", "LSR1Operator", "check_history_size", "check_damping", "initial_step_size", "safe_clip"]

DampingFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, LinearOperator], tuple[torch.Tensor, torch.Tensor]]
DAMPING = ("powell", "double")


def check_history_size(who: str, history_size: Any) -> int:
    if isinstance(history_size, bool) or not isinstance(history_size, int):
        raise TypeError(f"{who}: `history_size` must be an int >= 1, got {type(history_size).__name__}")
    if history_size < 1:
        raise ValueError(f"{who}: `history_size` must be >= 1, got {history_size}")
    return history_size


def check_damping(who: str, damping: Any) -> None:
    if damping is None or callable(damping):
        return
    if not isinstance(damping, str) or damping not in DAMPING:
        raise ValueError(f"{who}: unknown `damping` {damping!r}; expected None, a callable "
                         f"(s, y, g, H) -> (s, y), or one of {', '.join(repr(d) for d in DAMPING)}")


def safe_clip(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its magnitude raised to at least twice the dtype's smallest normal number."""
    tiny = torch.finfo(x.dtype).tiny * 2
    return x.new_full(x.size(), tiny).copysign(x) if x.abs() < tiny else x


def initial_step_size(tensors: Sequence[torch.Tensor], eps: float | None = None) -> float:
    """A first-step scale ``1 / ||d||_1``, clipped to ``[eps / ||d||_inf, 1]`` (``eps`` at least the
    dtype's machine epsilon); 1 when that lower bound is >= 1 (torch.optim.LBFGS's first step,
    made safe for tiny directions)."""
    l1 = torch.stack([t.abs().sum() for t in tensors]).sum()
    linf = torch.stack([t.abs().max() for t in tensors if t.numel()]).max()
    feps = torch.finfo(tensors[0].dtype).eps
    eps = feps if eps is None else max(eps, feps)
    lo = eps / linf
    if lo >= 1:
        return 1.0
    return float((1 / l1).clip(min=lo.item(), max=1).item())


def _powell(s: torch.Tensor, y: torch.Tensor, Hs: torch.Tensor, sHs: torch.Tensor, u: float) -> torch.Tensor:
    sy = s.dot(y)
    if sy < u * sHs:
        phi = ((1 - u) * sHs) / safe_clip(sHs - sy)
        s = phi * s + (1 - phi) * Hs
    return s


def powell_damping(s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, H: LinearOperator,
                   u: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Powell's damping: moves ``s`` towards ``B s`` until ``s.y >= u s.B s`` (``H`` is the Hessian
    approximation ``B``)."""
    Hs = H.matvec(s)
    return _powell(s, y, Hs, s.dot(Hs), u), y


def double_damping(s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, H: LinearOperator,
                   u1: float = 0.2, u2: float = 1 / 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Powell's damping on ``B`` then on the identity (Goldfarb, Ren and Bahamou, NeurIPS 2020)."""
    Hs = H.matvec(s)
    s = _powell(s, y, Hs, s.dot(Hs), u1)
    sy, ss = s.dot(y), s.dot(s)
    if sy < u2 * ss:
        phi = ((1 - u2) * ss) / safe_clip(ss - sy)
        y = phi * y + (1 - phi) * s
    return s, y


_DAMPING_FNS: dict[str, DampingFn] = {"powell": powell_damping, "double": double_damping}


class _HistoryOperator(LinearOperator):
    """A symmetric matrix of a limited-memory history ``S``, ``Y`` (rows oldest first), known through
    ``matvec`` (the Hessian approximation) and ``solve`` (its inverse); dense forms are built column
    by column. The identity when the history is empty."""

    def __init__(self, S: torch.Tensor | None, Y: torch.Tensor | None):
        self.S, self.Y = S, Y
        ref = S if S is not None else torch.empty(0)
        self.device, self.dtype = ref.device, ref.dtype

    def rmatvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.matvec(x)

    def matmat(self, X: torch.Tensor) -> Dense:
        return Dense(torch.stack([self.matvec(c) for c in X.T], 1))

    def add_diagonal(self, x: torch.Tensor | float) -> Dense:
        return self.to_dense().add_diagonal(x)

    def diagonal(self) -> torch.Tensor:
        return self.to_tensor().diagonal()

    def _eye(self) -> torch.Tensor:
        return torch.eye(self.size()[0], dtype=self.dtype, device=self.device)

    def inv(self) -> Dense:
        return Dense(torch.stack([self.solve(c) for c in self._eye()], 1))

    def to_tensor(self) -> torch.Tensor:
        return torch.stack([self.matvec(c) for c in self._eye()], 1)

    def size(self) -> tuple[int, ...]:
        if self.S is None:
            raise RuntimeError(f"{type(self).__name__}: the size of an empty history is unknown")
        return (self.S.shape[1], self.S.shape[1])

    def transpose(self) -> _HistoryOperator:
        return self

    def is_dense(self) -> bool:
        return False


class LBFGSOperator(_HistoryOperator):
    """The L-BFGS matrices of a history (oldest pair first): ``solve`` applies the inverse-Hessian
    approximation ``H`` (two-loop recursion), ``matvec`` the Hessian approximation ``B`` (compact
    representation, Byrd, Nocedal and Schnabel 1994), both with ``B_0 = (y.y / s.y) I`` of the
    newest pair; the identity when the history is empty."""

    def __init__(self, S: torch.Tensor | None, Y: torch.Tensor | None, sy: Sequence[float]):
        super().__init__(S, Y)
        self.sy = list(sy)
        self._M: torch.Tensor | None = None

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        if self.S is None or self.Y is None:
            return b.clone()
        return ops.two_loop_reference(b, list(self.S), list(self.Y))

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        S, Y = self.S, self.Y
        if S is None or Y is None:
            return x.clone()
        m = S.shape[0]
        y = Y[-1]
        b0 = y.dot(y) / self.sy[-1]
        if self._M is None:
            M = torch.zeros(2 * m, 2 * m, dtype=S.dtype, device=S.device)
            L = (S @ Y.T).tril_(-1)
            M[:m, :m] = b0 * S @ S.T
            M[:m, m:] = L
            M[m:, :m] = L.T
            M[m:, m:] = torch.diag(-(S * Y).sum(1))
            self._M = M
        psi = torch.cat([b0 * (S @ x), Y @ x])
        u, info = torch.linalg.solve_ex(self._M, psi)
        if int(info) != 0:
            return x * b0
        return x * b0 - (b0 * (S.T @ u[:m]) + Y.T @ u[m:])


class _LimitedMemory(TensorTransform):
    """Shared machinery of ``LBFGS`` and ``LSR1``: the flat ring buffer of curvature pairs, the
    pair kernel and the two-pass direction (``method`` of :func:`tzfast.ops.lbfgs.lbfgs_direction_`)."""

    _who = "LBFGS"
    _check_sy_tol = True  # L-BFGS keeps a pair only when s.y > sy_tol; L-SR1 keeps every pair

    def _method(self) -> int:
        return ops.METHODS["lbfgs"]

    def get_H(self, objective: Objective | None = None) -> LinearOperator:
        raise NotImplementedError

    def _history(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(S, Y) of the current history, oldest first (None when empty)."""
        gs = self.global_state
        order = gs.get("order") or []
        if not order:
            return None, None
        hist = gs["hist"]
        return torch.stack([hist[2 * t] for t in order]), torch.stack([hist[2 * t + 1] for t in order])

    # ------------------------------------------------------------------ state
    def _reset_self(self) -> None:
        gs = self.global_state
        for k in ("hist", "gram", "prev", "cur", "order", "sy", "new_slot"):
            gs.pop(k, None)
        gs["step"] = 0

    def reset(self) -> None:
        self._reset_self()
        self.state.clear()
        for c in self.children.values():
            c.reset()

    def reset_for_online(self) -> None:
        super().reset_for_online()
        self.global_state.pop("prev", None)
        self.global_state.pop("cur", None)
        self.global_state.pop("step", None)

    def _buffers(self, ref: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hist, gram, prev), allocated on first use for ``ref``'s total size and dtype."""
        gs = self.global_state
        m = check_history_size(self._who, self.defaults["history_size"])
        n = sum(t.numel() for t in ref)
        dtype = ref[0].dtype
        for t in ref:
            if t.device != ref[0].device:
                raise RuntimeError(f"{self._who}: every parameter must be on one device, got {ref[0].device} and {t.device}")
            dtype = torch.promote_types(dtype, t.dtype)
        hist = gs.get("hist")
        if hist is None or hist.shape != (2 * (m + 1), n) or hist.dtype != dtype:
            kw = dict(dtype=dtype, device=ref[0].device)
            gs["hist"] = hist = torch.zeros(2 * (m + 1), n, **kw)
            gs["gram"] = torch.zeros(2, m + 1, m + 1, dtype=torch.float64, device=ref[0].device)
            gs["prev"] = torch.zeros(2, 2, n, **kw)
            gs["cur"] = 0
            gs["order"], gs["sy"], gs["new_slot"] = [], [], -1
        return hist, gs["gram"], gs["prev"]


    # ------------------------------------------------------------------ update / apply
    @torch.no_grad()
    def multi_tensor_update(self, tensors: list[torch.Tensor], params: list[torch.Tensor],
                            grads: list[torch.Tensor] | None, loss: Any, states: list[dict[str, Any]],
                            settings: Sequence[Mapping[str, Any]]) -> None:
        gs = self.global_state
        d = self.defaults
        step = gs.get("step", 0)
        gs["step"] = step + 1
        hist, gram, prev = self._buffers(params)
        cur = gs["cur"]
        if step == 0 or "prev_valid" not in gs:
            ops.lbfgs_pair_(params, tensors, None, prev[cur], None)
            gs["prev_valid"] = True
            return
        order: list[int] = gs["order"]
        used = set(order)  # at most history_size of the history_size + 1 slots
        free = next(t for t in range(hist.shape[0] // 2) if t not in used)
        slot = hist[2 * free:2 * free + 2]
        stats = ops.lbfgs_pair_(params, tensors, prev[cur], prev[1 - cur], slot).tolist()
        sy: float | None = stats[0]
        nan = stats[3] > 0
        damping = d["damping"]
        if damping is not None:
            fn = _DAMPING_FNS[damping] if isinstance(damping, str) else damping
            g = torch.cat([t.reshape(-1) for t in tensors]).to(hist.dtype)
            s_new, y_new = fn(slot[0].clone(), slot[1].clone(), g, self.get_H())
            slot[0].copy_(s_new)
            slot[1].copy_(y_new)
            sy = float(torch.dot(slot[0].double(), slot[1].double()))
        below_tol = False
        if d["ptol"] is not None and not nan and stats[1] <= d["ptol"]:
            if d["ptol_restart"]:
                self._restart_history()
            sy, below_tol = None, True
        if d["gtol"] is not None and not nan and stats[2] <= d["gtol"]:
            if d["gtol_restart"]:
                self._restart_history()
            sy, below_tol = None, True
        if not below_tol:
            gs["cur"] = 1 - cur  # the pair kernel wrote p and g there: they are the new p_prev, g_prev
        if gs.get("step", 0) == 0:  # a restart: the next step starts over
            return
        if sy is not None and (not self._check_sy_tol or sy > d["sy_tol"]):
            m = check_history_size(self._who, d["history_size"])
            order.append(free)
            gs["sy"].append(sy)
            if len(order) > m:
                order.pop(0)
                gs["sy"].pop(0)
            gs["new_slot"] = free

    def _restart_history(self) -> None:
        gs = self.global_state
        gs["order"], gs["sy"], gs["new_slot"] = [], [], -1
        gs["step"] = 0
        gs.pop("prev_valid", None)

    @torch.no_grad()
    def multi_tensor_apply(self, tensors: list[torch.Tensor], params: list[torch.Tensor],
                           grads: list[torch.Tensor] | None, loss: Any, states: list[dict[str, Any]],
                           settings: Sequence[Mapping[str, Any]]) -> Sequence[torch.Tensor]:
        gs = self.global_state
        out = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in tensors]
        hist, gram, _ = self._buffers(params)
        order = gs["order"]
        if order and self._method() == ops.METHODS["lsr1"]:
            # the SR1 recursion cancels heavily in w = s - H y: work on explicit vectors (as the
            # textbook does) rather than on inner products, whose combination loses those digits
            S, Y = self._history()
            assert S is not None and Y is not None
            x = torch.cat([t.reshape(-1) for t in tensors]).to(hist.dtype)
            d = LSR1Operator._apply(x, S, Y)
            i = 0
            for o in out:
                o.copy_(d[i:i + o.numel()].view(o.shape))
                i += o.numel()
        elif order and any(t.dtype != hist.dtype for t in tensors):
            x = [t.to(hist.dtype) for t in tensors]
            tmp = [torch.empty_like(t) for t in x]
            ops.lbfgs_direction_(tmp, x, hist, gram, order, gs["new_slot"], gs["sy"], self._method())
            for o, t in zip(out, tmp, strict=True):
                o.copy_(t)
        else:
            ops.lbfgs_direction_(out, tensors, hist, gram, order, gs["new_slot"], gs["sy"], self._method())
        gs["new_slot"] = -1
        if self.defaults["scale_first"] and gs.get("step", 1) == 1:
            scale = initial_step_size(out, eps=1e-7)
            torch._foreach_mul_(out, scale)
        return out


class LBFGS(_LimitedMemory):
    """Limited-memory BFGS. A line search or trust region is recommended.

    The history is kept in one flat ring buffer per optimizer, and the direction ``H g`` is
    computed in two passes over it (one reads every stored vector against ``g``, the other forms
    the result) by a native kernel on the CPU, instead of the ``4 m`` list operations of the
    two-loop recursion; the new pair's inner products come from the same first pass
    (``docs/lbfgs.md``).

    Args:
        history_size: number of past parameter and gradient differences kept. Defaults to 10.
        ptol: a step is not added to the history when the largest ``|s|`` is at most this.
            Defaults to 1e-32.
        ptol_restart: clear the history when ``ptol`` triggers. Defaults to False.
        gtol: a step is not added to the history when the largest ``|y|`` is at most this.
            Defaults to 1e-32.
        gtol_restart: clear the history when ``gtol`` triggers. Defaults to False.
        sy_tol: a pair is added only when ``s.y`` exceeds this (curvature condition).
            Defaults to 1e-32.
        scale_first: make the first step (before any curvature is known) small, as
            torch.optim.LBFGS does, to save line-search iterations. Defaults to True.
        update_freq: update the history every this many steps. Defaults to 1.
        damping: None, ``'powell'``, ``'double'`` or a callable ``(s, y, g, B) -> (s, y)``.
            Defaults to None.
        inner: modules applied after the history update and before preconditioning.
            Defaults to None.

    References:
        Nocedal and Wright, "Numerical Optimization", 2nd ed., Algorithm 7.4;
        Byrd, Nocedal and Schnabel, "Representations of quasi-Newton matrices and their use in
        limited memory methods", Math. Programming 63 (1994).

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.LBFGS(), tz.m.StrongWolfe())
        >>> opt = tz.Optimizer(model.parameters(), tz.m.LBFGS(inner=tz.m.GradientCorrection()), tz.m.Backtracking())
    """

    def __init__(self, history_size: int = 10, ptol: float | None = 1e-32, ptol_restart: bool = False,
                 gtol: float | None = 1e-32, gtol_restart: bool = False, sy_tol: float = 1e-32,
                 scale_first: bool = True, update_freq: int = 1, damping: str | DampingFn | None = None,
                 inner: Chainable | None = None):
        check_history_size("LBFGS", history_size)
        check_damping("LBFGS", damping)
        defaults = dict(history_size=history_size, scale_first=scale_first, ptol=ptol, gtol=gtol,
                        ptol_restart=ptol_restart, gtol_restart=gtol_restart, sy_tol=sy_tol, damping=damping)
        super().__init__(defaults, inner=inner, update_freq=update_freq)

    def get_H(self, objective: Objective | None = None) -> LBFGSOperator:
        """The L-BFGS Hessian approximation of the current history, as a linear operator."""
        S, Y = self._history()
        return LBFGSOperator(S, Y, self.global_state.get("sy") or [])


class LSR1Operator(_HistoryOperator):
    """The L-SR1 matrices of a history (oldest pair first), ``H_0 = B_0 = I``: ``solve`` applies
    the inverse-Hessian approximation, ``matvec`` the Hessian approximation (the same recursion
    with ``s`` and ``y`` swapped)."""

    @staticmethod
    def _apply(x: torch.Tensor, S: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """``H x`` by the SR1 recursion on explicit vectors ``w_k`` (O(m^2) vector operations)."""
        tiny = 2 * torch.finfo(x.dtype).tiny
        ws: list[torch.Tensor] = []
        wys: list[torch.Tensor] = []
        for k in range(S.shape[0]):
            hy = Y[k].clone()
            for w, wy in zip(ws, wys, strict=True):
                if wy.abs() >= tiny:
                    hy.add_(w, alpha=(w.dot(Y[k]) / wy).item())
            ws.append(S[k] - hy)
            wys.append(ws[-1].dot(Y[k]))
        out = x.clone()
        for w, wy in zip(ws, wys, strict=True):
            if wy.abs() >= tiny:
                out.add_(w, alpha=(w.dot(x) / wy).item())
        return out

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        return b.clone() if self.S is None or self.Y is None else self._apply(b, self.S, self.Y)

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone() if self.S is None or self.Y is None else self._apply(x, self.Y, self.S)


class LSR1(_LimitedMemory):
    """Limited-memory SR1. A line search or trust region is recommended.

    Same history and two-pass native direction as :class:`LBFGS`; the coefficients come from the
    SR1 recursion ``w_k = s_k - H_{k-1} y_k``, ``H x = x + sum_k w_k (w_k . x) / (w_k . y_k)``
    (``H_0 = I``; a pair whose ``|w_k . y_k|`` is below twice the dtype's smallest normal number is
    skipped), worked out on the stored inner products.

    Args:
        history_size: number of past parameter and gradient differences kept. Defaults to 10.
        ptol: a step is not added to the history when the largest ``|s|`` is at most this.
            Defaults to None.
        ptol_restart: clear the history when ``ptol`` triggers. Defaults to False.
        gtol: a step is not added to the history when the largest ``|y|`` is at most this.
            Defaults to None.
        gtol_restart: clear the history when ``gtol`` triggers. Defaults to False.
        scale_first: make the first step small (see :class:`LBFGS`). Defaults to False.
        update_freq: update the history every this many steps. Defaults to 1.
        damping: None, ``'powell'``, ``'double'`` or a callable ``(s, y, g, B) -> (s, y)``.
            Defaults to None.
        compact: use the compact representation ``H = I + W^T M^-1 W`` (``W = S - Y``, one
            ``m x m`` solve; Byrd, Nocedal and Schnabel 1994): fewer operations but no skipping of
            near-singular pairs, so less stable; the loop form is used when ``M`` is singular.
            Defaults to False.
        inner: modules applied after the history update and before preconditioning.
            Defaults to None.

    References:
        Byrd, Nocedal and Schnabel, "Representations of quasi-Newton matrices and their use in
        limited memory methods", Math. Programming 63 (1994).

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.LSR1(), tz.m.StrongWolfe(c2=0.1, fallback=True))
    """

    _who = "LSR1"
    _check_sy_tol = False

    def __init__(self, history_size: int = 10, ptol: float | None = None, ptol_restart: bool = False,
                 gtol: float | None = None, gtol_restart: bool = False, scale_first: bool = False,
                 update_freq: int = 1, damping: str | DampingFn | None = None, inner: Chainable | None = None,
                 *, compact: bool = False):
        check_history_size("LSR1", history_size)
        check_damping("LSR1", damping)
        defaults = dict(history_size=history_size, scale_first=scale_first, ptol=ptol, gtol=gtol,
                        ptol_restart=ptol_restart, gtol_restart=gtol_restart, damping=damping, compact=compact)
        super().__init__(defaults, inner=inner, update_freq=update_freq)

    def _method(self) -> int:
        return ops.METHODS["lsr1_compact" if self.defaults["compact"] else "lsr1"]

    def get_H(self, objective: Objective | None = None) -> LSR1Operator:
        """The L-SR1 Hessian approximation of the current history, as a linear operator."""
        S, Y = self._history()
        return LSR1Operator(S, Y)
