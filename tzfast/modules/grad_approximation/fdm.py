"""``FDM``: coordinate-wise finite differences."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .formulas import FD_Formula, FDFormula, fd_formula, numerator
from .grad_approximator import GradApproximator, GradTarget

__all__ = ["FDM"]


def check_h(who: str, h: Any) -> float:
    if isinstance(h, bool) or not isinstance(h, (int, float)):
        raise TypeError(f"{who}: `h` must be a positive number, got {type(h).__name__}")
    if not h > 0:
        raise ValueError(f"{who}: `h` must be > 0, got {h}")
    return float(h)


def _element(p: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """``k -> 0-d view of element k`` (row-major) of ``p``, whatever its strides."""
    if p.is_contiguous():
        flat = p.view(-1)
        return flat.__getitem__
    shape = p.shape

    def at(k: int) -> torch.Tensor:
        index = []
        for size in reversed(shape):
            k, r = divmod(k, size)
            index.append(r)
        return p[tuple(reversed(index))]

    return at


class FDM(GradApproximator):
    """Gradient by finite differences, one coordinate at a time.

    For every scalar ``x_i`` of every parameter, ``g_i = D(f, x, h e_i)`` with the chosen
    formula (``central``: ``(f(x + h e_i) - f(x - h e_i)) / 2h``). Costs about ``2 N`` closure
    evaluations for ``N`` scalars with central differences, ``N + 1`` with forward ones (``f(x)``
    is evaluated at most once per estimate). Each coordinate is moved in place and moved back
    by the opposite steps, as torchzero does, so the result equals torchzero's.

    Note:
        This module is a gradient approximator. It modifies the closure to evaluate the
        estimated gradients, and further closure-based modules will use the modified closure.
        All modules after this will use estimated gradients.

    Args:
        h: the finite-difference step (per parameter through param groups). Defaults to 1e-3.
        formula: ``'central'`` (aliases ``'central2'``, ``'central3'``, ``'fd_central'``),
            ``'forward'`` (``'forward2'``, ``'fd_forward'``), ``'backward'`` (``'backward2'``,
            ``'fd_backward'``), ``'forward3'``, ``'backward3'``, ``'central4'``, ``'forward4'``
            or ``'forward5'``; the number is the count of points. Defaults to ``'central'``.
        target: ``'closure'``, ``'grad'`` or ``'update'`` (see :class:`GradApproximator`).
            Defaults to ``'closure'``.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.FDM(), tz.m.LR(1e-2))
    """

    def __init__(self, h: float = 1e-3, formula: FD_Formula = "central", target: GradTarget = "closure"):
        check_h("FDM", h)
        fd_formula("FDM", formula)
        super().__init__(dict(h=h, formula=formula), target=target)

    @torch.no_grad()
    def approximate(self, closure: Callable, params: list[torch.Tensor], loss: Any
                    ) -> tuple[list[torch.Tensor], Any, Any]:
        grads = []
        loss_approx = None
        for p in params:
            s = self.settings[p]
            h = check_h("FDM", s["h"])
            formula = fd_formula("FDM", s["formula"])
            g = torch.zeros_like(p)
            grads.append(g)
            param_at, grad_at = _element(p), _element(g)
            for k in range(p.numel()):
                loss, loss_approx, d = _coordinate(closure, param_at(k), h, formula, loss)
                grad_at(k).copy_(d)
        return grads, loss, loss_approx


def _coordinate(closure: Callable, x: torch.Tensor, h: float, formula: FDFormula, f0: Any) -> tuple[Any, Any, Any]:
    """One coordinate's derivative; ``x`` is a 0-d view of it. Returns ``(loss, loss_approx, d)``."""
    if formula.uses_f0 and f0 is None:
        f0 = closure(False)
    values: dict[int, Any] = {0: f0}
    moves = formula.moves
    moved = 0
    try:
        for pos, m in zip(formula.points, moves, strict=False):
            x += m * h
            moved += m
            values[pos] = closure(False)
        x += moves[-1] * h
        moved = 0
    finally:
        if moved:
            x -= moved * h
    d = numerator(formula, values) / (formula.den * h)
    if isinstance(d, torch.Tensor) and d.numel() > 1:
        d = d.mean()
    if formula.central:
        return f0, values[formula.points[0]], d
    return f0, f0, d
