"""Barzilai-Borwein step sizes: ``BarzilaiBorwein`` and the stabilized ``BBStab``.

The previous parameters and gradients live in one flat buffer per (device, dtype) bucket
(``module.state[p]['prev_p']`` / ``['prev_g']`` are views of them). A step turns the buffers into
``-s`` and ``-y`` in place, takes ``s^T y``, ``y^T y`` and ``s^T s`` as one dot product each per
bucket, and copies the current point in: no temporaries of the parameters' size, one host sync.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import torch

from ...core.elementwise import tail_scales, tails_align
from ...core.layout import Layout
from ...core.module import Chainable, Module
from ...core.transform import TensorTransform

if TYPE_CHECKING:
    from ...core.objective import Objective
    from ...linalg.linear_operator import LinearOperator

__all__ = ["BarzilaiBorwein", "BBStab"]

BBType = Literal["long", "short", "geom", "geom-fallback"]
_TYPES: tuple[str, ...] = ("long", "short", "geom", "geom-fallback")


# ----------------------------------------------------------------------------- arguments
def _check_type(who: str, type: Any) -> None:
    if not isinstance(type, str) or type not in _TYPES:
        raise ValueError(f"{who}: `type` must be one of {_TYPES}, got {type!r}")


def _check_positive(who: str, name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    kind = "a finite number > 0" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{who}: `{name}` must be {kind}, got {type(value).__name__}: {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{who}: `{name}` must be {kind}, got {value!r}")


def _check_bool(who: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{who}: `{name}` must be a bool, got {type(value).__name__}: {value!r}")


# ----------------------------------------------------------------------------- formulas
def bb_short(sy: float, yy: float, ss: float, eps: float) -> float | None:
    """``s^T y / y^T y``; ``s^T s / s^T y`` when ``y^T y < eps``; None when both are undefined."""
    if yy < eps:
        return None if sy < eps else ss / sy
    return sy / yy


def bb_long(sy: float, yy: float, ss: float, eps: float) -> float | None:
    """``s^T s / s^T y``; ``s^T y / y^T y`` when ``s^T y < eps``; None when both are undefined."""
    if sy < eps:
        return None if yy < eps else sy / yy
    return ss / sy


def bb_step(type: str, sy: float, yy: float, ss: float, eps: float) -> float | None:
    """The Barzilai-Borwein step of ``type`` (``'geom'``: the geometric mean of short and long;
    ``'geom-fallback'`` falls back to whichever of them is defined)."""
    if type == "short":
        return bb_short(sy, yy, ss, eps)
    if type == "long":
        return bb_long(sy, yy, ss, eps)
    short, long = bb_short(sy, yy, ss, eps), bb_long(sy, yy, ss, eps)
    if short is None or long is None:
        if type == "geom-fallback":
            return short if short is not None else long
        return None
    return math.sqrt(short * long)


def acceptable_alpha(alpha: float | None, dtype: torch.dtype) -> bool:
    """Whether ``alpha`` is a usable step size in ``dtype`` (positive, finite, not tiny or huge)."""
    if alpha is None:
        return False
    fi = torch.finfo(dtype)
    return math.isfinite(alpha) and fi.tiny * 2 <= alpha <= fi.max / 2


def epsilon_step_size(tensors: Sequence[torch.Tensor], alpha: float) -> float:
    """A step size that makes the largest entry of ``tensors`` at most ``alpha`` (1 if it already is)."""
    tmax = float(torch.stack(torch._foreach_norm(list(tensors), math.inf)).max()) if tensors else 0.0
    if tmax < alpha:
        return 1.0
    return alpha / tmax if tmax < 1 else alpha


# ----------------------------------------------------------------------------- history buffers
class _History:
    """Flat ``prev_p`` / ``prev_g`` buffers of one layout, with the per-parameter views."""

    __slots__ = ("token", "p", "g", "p_views", "g_views")

    def __init__(self, token: int):
        self.token = token
        self.p: list[torch.Tensor] = []
        self.g: list[torch.Tensor] = []
        self.p_views: list[list[torch.Tensor]] = []
        self.g_views: list[list[torch.Tensor]] = []


class _BarzilaiBorweinBase(TensorTransform):
    """Keeps the previous point and gradient; subclasses turn the curvature pair into ``alpha``.

    ``update`` records the pair, ``apply`` multiplies the update by ``alpha``. At the end of the
    optimizer's chain (followed only by ``LR``-like multipliers) the step is applied to the
    parameters directly, ``p -= alpha * lr * g``, and the update is never materialised.
    """

    _eps_factor = 2.0  # eps = tiny * factor

    def __init__(self, defaults: dict[str, Any], use_grad: bool, inner: Chainable | None):
        super().__init__(defaults, uses_grad=use_grad, inner=inner)

    def reset_for_online(self) -> None:
        super().reset_for_online()
        self.clear_state_keys("prev_g")
        self.global_state["reset"] = True

    def _history(self, layout: Layout) -> _History:
        h = self.global_state.get("__flat")
        if isinstance(h, _History) and h.token == layout.token:
            return h
        h = _History(layout.token)
        for key, bufs, views in (("prev_p", h.p, h.p_views), ("prev_g", h.g, h.g_views)):
            for b in layout.buckets:
                buf = torch.zeros(b.numel, dtype=b.dtype, device=b.device)
                vs = b.views(buf)
                for p, v in zip(b.params, vs, strict=True):
                    st = self.state[p]
                    prev = st.get(key)
                    if isinstance(prev, torch.Tensor) and prev.shape == v.shape:
                        v.copy_(prev)
                    st[key] = v
                bufs.append(buf)
                views.append(vs)
        self.global_state["__flat"] = h
        return h

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update(self, objective: Objective) -> None:
        self.increment_counter("__step", 0)
        gs = self.global_state
        step = gs.get("step", 0)
        gs["step"] = step + 1
        params = objective.params
        g = objective.get_grads() if self._uses_grad else objective.get_updates()
        layout = self._layout_for(objective)
        h = self._history(layout)
        compute = step != 0 and not gs.pop("reset", False)

        dots: list[torch.Tensor] = []
        for bi, b in enumerate(layout.buckets):
            bp, bg = cast(list, b.take(params)), cast(list, b.take(g))
            if compute:
                torch._foreach_sub_(h.p_views[bi], bp)  # -s
                torch._foreach_sub_(h.g_views[bi], bg)  # -y
                P, G = h.p[bi], h.g[bi]
                dots.append(torch.stack([torch.dot(P, G), torch.dot(G, G), torch.dot(P, P)]))
            torch._foreach_copy_(h.p_views[bi], bp)
            torch._foreach_copy_(h.g_views[bi], bg)
        if not compute:
            return
        if self._needs_g_norm():
            for bi in range(len(layout.buckets)):
                dots[bi] = torch.cat([dots[bi], torch.dot(h.g[bi], h.g[bi]).unsqueeze(0)])
        values = [sum(col) for col in zip(*(d.tolist() for d in dots), strict=True)]
        eps = torch.finfo(params[0].dtype).tiny * self._eps_factor
        self._new_alpha(values[0], values[1], values[2], values[3] if len(values) > 3 else 0.0, eps)

    def _needs_g_norm(self) -> bool:
        return False

    def _new_alpha(self, sy: float, yy: float, ss: float, gg: float, eps: float) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ apply
    def _fallback_alpha(self, tensors: Sequence[torch.Tensor], objective: Objective) -> float:
        return epsilon_step_size(tensors, self.settings[objective.params[0]]["alpha_0"])

    def _alpha(self, tensors: Sequence[torch.Tensor], objective: Objective) -> float:
        alpha = self.global_state.get("alpha")
        if not acceptable_alpha(alpha, tensors[0].dtype):
            return self._fallback_alpha(tensors, objective)
        return alpha  # type: ignore[return-value]

    @torch.no_grad()
    def apply(self, objective: Objective) -> Objective:
        if "__inner" in self.children:
            from ...core.functional import step_tensors

            tensors = step_tensors(self.children["__inner"], tensors=objective.get_updates(), params=objective.params,
                                   grads=objective.grads, loss=objective.loss, closure=objective.closure)
        elif objective.updates is None:
            g = objective.get_grads()
            objective.updates = list(torch._foreach_mul(g, self._alpha(g, objective)))  # no separate copy of g
            return objective
        else:
            tensors = objective.updates
        torch._foreach_mul_(tensors, self._alpha(tensors, objective))
        objective.updates = list(tensors)
        return objective

    @torch.no_grad()
    def _fused_step(self, objective: Objective, tail: Sequence[Module]) -> bool:
        """``update``, then ``p -= alpha * (tail multipliers) * u`` in one pass (top-level chain only)."""
        layout = objective.layout
        if self.children or layout is None or layout.params is not objective.params \
                or not tails_align(self, layout, tail):
            return False
        self.update(objective)
        tensors = objective.updates if objective.updates is not None else objective.get_grads()
        alpha = self._alpha(tensors, objective)
        for m in tail:
            m._tick()  # type: ignore[attr-defined]
        scales = tail_scales(self, layout, tail)
        for b in layout.buckets:
            bp, bt = b.take(objective.params), b.take(tensors)
            for ri, run in enumerate(self._runs(layout, b)):
                torch._foreach_add_(list(run.take(bp)), list(run.take(bt)), alpha=-alpha * scales[b.index][ri])
        return True

    def get_H(self, objective: Objective) -> LinearOperator:
        """``I / alpha`` (the identity when no usable step size is known yet)."""
        from ...linalg.linear_operator import Diagonal

        p = objective.params[0]
        alpha = self.global_state.get("alpha")
        if alpha is None or not acceptable_alpha(alpha, p.dtype):
            alpha = 1.0
        n = sum(q.numel() for q in objective.params)
        return Diagonal(torch.tensor(1 / alpha, dtype=p.dtype, device=p.device).expand(n))


# ----------------------------------------------------------------------------- modules
class BarzilaiBorwein(_BarzilaiBorweinBase):
    """Barzilai-Borwein step size: the update is multiplied by ``alpha`` from the last step's curvature.

    With ``s = x_k - x_{k-1}`` and ``y = g_k - g_{k-1}``: ``'short'`` is ``s^T y / y^T y``,
    ``'long'`` is ``s^T s / s^T y`` and ``'geom'`` their geometric mean; each falls back on the
    other formula when its denominator is below the smallest normal number. On the first step,
    and whenever no usable step size exists (negative curvature), the update is scaled so that
    its largest entry is ``alpha_0`` (or by ``fallback`` when given).

    Args:
        type: ``'short'``, ``'long'``, ``'geom'`` or ``'geom-fallback'`` (``'geom'`` that uses
            whichever of short and long is defined when the other is not). Defaults to ``'geom'``.
        alpha_0: largest entry of the update on the first step (and when no step size is
            usable). Defaults to 1e-7.
        use_grad: take ``y`` from the gradients; False takes it from the module's input
            update. Defaults to True.
        inner: modules whose output the step size multiplies. Defaults to None.
        fallback: the step size when the Barzilai-Borwein step is undefined after the first
            step; None keeps the ``alpha_0`` rule. Keyword-only. Defaults to None.

    References:
        Barzilai, J., and Borwein, J. M. "Two-point step size gradient methods." IMA Journal of
        Numerical Analysis 8.1 (1988): 141-148.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.BarzilaiBorwein())
        >>> opt = tz.Optimizer(model.parameters(), tz.m.BarzilaiBorwein("long"), tz.m.ClipNorm(1.0))
    """

    def __init__(self, type: BBType = "geom", alpha_0: float = 1e-7, use_grad: bool = True,
                 inner: Chainable | None = None, *, fallback: float | None = None):
        _check_type("BarzilaiBorwein", type)
        _check_positive("BarzilaiBorwein", "alpha_0", alpha_0)
        _check_bool("BarzilaiBorwein", "use_grad", use_grad)
        _check_positive("BarzilaiBorwein", "fallback", fallback, allow_none=True)
        super().__init__(dict(type=type, alpha_0=alpha_0, fallback=fallback), use_grad=use_grad, inner=inner)

    def _new_alpha(self, sy: float, yy: float, ss: float, gg: float, eps: float) -> None:
        self.global_state["alpha"] = bb_step(self.defaults["type"], sy, yy, ss, eps)

    def _fallback_alpha(self, tensors: Sequence[torch.Tensor], objective: Objective) -> float:
        fallback = self.defaults["fallback"]
        if fallback is not None and self.global_state.get("step", 0) > 1:
            return fallback
        return super()._fallback_alpha(tensors, objective)


class BBStab(_BarzilaiBorweinBase):
    """Stabilized Barzilai-Borwein: the step ``alpha * g`` is clipped to norm ``delta``.

    The step size is ``min(alpha_BB, delta / ||g||)``. With ``delta=None`` it is chosen
    adaptively: the first ``inf_iters`` usable steps after the first are not clipped, and
    ``delta`` is then ``c`` times the smallest norm of ``s`` seen during them. Steps with no
    usable Barzilai-Borwein value keep the previous step size.

    Args:
        c: the multiplier of the adaptive ``delta``. Defaults to 0.2.
        delta: the largest norm of the step; None for the adaptive choice. Defaults to None.
        type: ``'short'``, ``'long'``, ``'geom'`` or ``'geom-fallback'`` (see
            :class:`BarzilaiBorwein`; ``'long'`` is BB1stab, ``'short'`` BB2stab). Defaults to ``'geom'``.
        alpha_0: largest entry of the update on the first step (and when no step size is
            usable). Defaults to 1e-7.
        use_grad: take ``y`` (and ``g``) from the gradients; False takes them from the module's
            input update. Defaults to True.
        inf_iters: number of unclipped steps used to choose the adaptive ``delta``. Defaults to 3.
        inner: modules whose output the step size multiplies. Defaults to None.

    References:
        Burdakov, O., Dai, Y.-H., and Huang, N. "Stabilized Barzilai-Borwein method." Journal of
        Computational Mathematics 37.6 (2019): 916-936. arXiv:1907.06409

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.BBStab())
        >>> opt = tz.Optimizer(model.parameters(), tz.m.BBStab(delta=0.1, type="long"))
    """

    _eps_factor = 1.0

    def __init__(self, c: float = 0.2, delta: float | None = None, type: BBType = "geom", alpha_0: float = 1e-7,
                 use_grad: bool = True, inf_iters: int = 3, inner: Chainable | None = None):
        _check_positive("BBStab", "c", c)
        _check_positive("BBStab", "delta", delta, allow_none=True)
        _check_type("BBStab", type)
        _check_positive("BBStab", "alpha_0", alpha_0)
        _check_bool("BBStab", "use_grad", use_grad)
        if isinstance(inf_iters, bool) or not isinstance(inf_iters, int):
            raise TypeError(f"BBStab: `inf_iters` must be an int >= 1, got {_type_name(inf_iters)}: {inf_iters!r}")
        if inf_iters < 1:
            raise ValueError(f"BBStab: `inf_iters` must be an int >= 1, got {inf_iters}")
        super().__init__(dict(type=type, alpha_0=alpha_0, c=c, delta=delta, inf_iters=inf_iters),
                         use_grad=use_grad, inner=inner)

    def _needs_g_norm(self) -> bool:
        return True

    def _new_alpha(self, sy: float, yy: float, ss: float, gg: float, eps: float) -> None:
        d = self.defaults
        gs = self.global_state
        alpha = bb_step(d["type"], sy, yy, ss, eps)
        if alpha is None:
            return
        delta = d["delta"]
        if delta is None:
            niters = gs.get("niters", 0)  # counts usable steps only
            gs["niters"] = niters + 1
            if niters == 0:
                pass  # the first pair comes from the alpha_0 step: not used for delta
            elif niters <= d["inf_iters"]:
                s_norm = math.sqrt(ss)
                prev = gs.get("s_norm_min")
                gs["s_norm_min"] = s_norm if prev is None else min(prev, s_norm)
            else:
                delta = d["c"] * gs["s_norm_min"]
        if delta is None:
            gs["alpha"] = alpha
            return
        g_norm = math.sqrt(gg)
        a_stab = delta / g_norm if g_norm > 0 else math.inf
        gs["alpha"] = min(alpha, a_stab)


def _type_name(x: Any) -> str:
    return type(x).__name__
