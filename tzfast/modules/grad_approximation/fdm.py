"""``FDM``: coordinate-wise finite differences."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch


from .formulas import FD_Formula, FDFormula, fd_formula, numerator
from .grad_approximator import GradApproximator, GradTarget

if TYPE_CHECKING:
    from ...core.module import Module
    from ...core.objective import Objective

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
        fuse: keyword-only. Followed only by ``LR``, ``StepSize``, ``Mul``/``Div`` by a number or
            ``Negate`` at the end of the optimizer's chain, the step subtracts the scaled estimate
            from the parameters itself: the same arithmetic as the chain (each multiplier in
            turn, then the subtraction), without the chain's per-module work and without the
            extra evaluation of ``f(x)`` for the step's loss that a central formula does not
            need; ``p.grad`` is then not set. False gives torchzero's behaviour. Defaults to True.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.FDM(), tz.m.LR(1e-2))
    """

    def __init__(self, h: float = 1e-3, formula: FD_Formula = "central", target: GradTarget = "closure", *,
                 fuse: bool = True):
        check_h("FDM", h)
        fd_formula("FDM", formula)
        super().__init__(dict(h=h, formula=formula), target=target)
        self.fuse = bool(fuse)

    def _fused_step(self, objective: Objective, tail: Sequence[Module]) -> bool:
        """Estimate, then ``p -= (g * s_1) * s_2 ...`` for the tail's multipliers ``s_i`` (see ``fuse``)."""
        layout = self._fusion_layout(objective, tail)
        if layout is None:
            return False
        closure = self._closure_of(objective)
        for m in tail:
            m._tick()  # type: ignore[attr-defined]
        grads, loss, loss_approx = self.approximate(closure, objective.params, objective.loss)
        with torch.no_grad():
            for b in layout.buckets:
                runs = self._runs(layout, b)
                theirs = [runs if getattr(m, "_scale_uniform", False) else m._runs(layout, b) for m in tail]
                for i, r in enumerate(runs):
                    ps = b.params[r.pstart:r.pend]
                    gs = [grads[j] for j in b.param_idx[r.pstart:r.pend]]
                    for m, mruns in zip(tail, theirs, strict=True):
                        torch._foreach_mul_(gs, m._scale_of(mruns[i].settings))  # type: ignore[attr-defined]
                    torch._foreach_sub_(ps, gs)
        if loss_approx is not None:
            objective.loss_approx = loss_approx
        if loss is not None:
            objective.loss = loss
        return True

    def approximate(self, closure: Callable, params: list[torch.Tensor], loss: Any
                    ) -> tuple[list[torch.Tensor], Any, Any]:
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self._approximate(closure, params, loss)
        return self._approximate(closure, params, loss)

    def _approximate(self, closure: Callable, params: list[torch.Tensor], loss: Any
                     ) -> tuple[list[torch.Tensor], Any, Any]:
        grads = []
        loss_approx = None
        for p in params:
            s = self.settings[p]
            h = check_h("FDM", s["h"])
            formula = fd_formula("FDM", s["formula"])
            g = torch.zeros_like(p)
            grads.append(g)
            k = 0
            if p.device.type == "cpu" and p.dtype in _NUMPY_DTYPES and not torch.compiler.is_compiling():
                k, loss, loss_approx = _coordinates_numpy(closure, p, g, h, formula, loss, loss_approx)
            if k == p.numel():
                continue
            param_at, grad_at = _element(p), _element(g)
            for k in range(k, p.numel()):
                loss, loss_approx, d = _coordinate(closure, param_at(k), h, formula, loss)
                grad_at(k).copy_(d)
        return grads, loss, loss_approx


_NUMPY_DTYPES = (torch.float32, torch.float64)


def _coordinates_numpy(closure: Callable, p: torch.Tensor, g: torch.Tensor, h: float, formula: FDFormula,
                       f0: Any, loss_approx: Any) -> tuple[int, Any, Any]:
    """:func:`_coordinate` for every element of a CPU float32/float64 parameter, through NumPy
    views of ``p`` and ``g`` (a 0-d tensor op costs ~2-6 us, a NumPy scalar update ~0.3 us).

    The arithmetic is the same IEEE operations in the same dtypes: ``x += m * h`` rounds
    ``m * h`` to the parameter's dtype and adds, as torch does with a Python scalar; the
    quotient of one-element float64/float32 losses is formed as Python floats / NumPy float32
    scalars (whose Python-number operands are likewise rounded to float32 first), other closure
    values go through :func:`numerator` as tensors. The parameter's version counter is bumped
    after every move, as an in-place torch op would. Returns ``(coordinates done, loss,
    loss_approx)``: all of them.
    """
    import numpy as np

    flat = p.detach().numpy().reshape(-1) if p.is_contiguous() else p.detach().numpy().flat
    gflat = g.numpy().reshape(-1) if g.is_contiguous() else g.numpy().flat  # views, row-major order
    bump_tuple = getattr(torch._C, "_increment_version", None)  # what increment_version calls, minus its wrapping
    pt = (p,)

    def bump(_: torch.Tensor) -> None:
        if bump_tuple is not None:
            bump_tuple(pt)
        else:
            torch.autograd.graph.increment_version(p)
    points, moves = formula.points, formula.moves
    den_h = formula.den * h
    uses_f0, central = formula.uses_f0, formula.central
    steps = [m * h for m in moves]
    f32 = np.float32

    f64_, f32_, Tensor = torch.float64, torch.float32, torch.Tensor

    def fast(v: Any) -> Any:
        if isinstance(v, Tensor) and v.numel() == 1:
            dt = v.dtype
            if dt is f64_:
                return v.item()
            if dt is f32_:
                return f32(v.item())
        return None

    n = p.numel()
    if formula.points == (1, -1) and formula.terms == ((1, 1), (-1, -1)):
        return _central_numpy(closure, flat, gflat, bump_tuple, pt, p, steps, h, den_h, fast, n, f0)
    for k in range(n):
        if uses_f0 and f0 is None:
            f0 = closure(False)
        raw: dict[int, Any] = {0: f0}
        moved = 0
        try:
            for i, pos in enumerate(points):
                flat[k] += steps[i]
                bump(p)
                moved += moves[i]
                raw[pos] = closure(False)
            flat[k] += steps[-1]
            bump(p)
            moved = 0
        finally:
            if moved:
                flat[k] -= moved * h
                bump(p)
        values = {pos: fast(v) for pos, v in raw.items() if pos != 0 or uses_f0}
        if all(v is not None for v in values.values()):
            gflat[k] = numerator(formula, values) / den_h
        else:
            d = numerator(formula, raw) / den_h
            if isinstance(d, torch.Tensor) and d.numel() > 1:
                d = d.mean()
            gflat[k] = float(d)  # rounded to g's dtype, as copy_ rounds
        loss_approx = raw[points[0]] if central else f0
    return n, f0, loss_approx


def _central_numpy(closure: Callable, flat: Any, gflat: Any, bump_tuple: Any, pt: tuple[torch.Tensor],
                   p: torch.Tensor, steps: list[float], h: float, den_h: float, fast: Callable[[Any], Any], n: int,
                   f0: Any) -> tuple[int, Any, Any]:
    """The central formula's loop of :func:`_coordinates_numpy`, unrolled (the common case):
    ``x += h``, ``f+``, ``x += -2h``, ``f-``, ``x += h``; ``g = (f+ - f-) / 2h``."""
    bump = bump_tuple if bump_tuple is not None else (lambda t: torch.autograd.graph.increment_version(list(t)))
    up, down, back = steps
    loss_approx: Any = None
    for k in range(n):
        moved = 0
        try:
            flat[k] += up
            bump(pt)
            moved = 1
            fp = closure(False)
            flat[k] += down
            bump(pt)
            moved = -1
            fm = closure(False)
            flat[k] += back
            bump(pt)
            moved = 0
        finally:
            if moved:
                flat[k] -= moved * h
                bump(pt)
        a, b = fast(fp), fast(fm)
        if a is not None and b is not None:
            gflat[k] = (a - b) / den_h
        else:
            d = (fp - fm) / den_h
            if isinstance(d, torch.Tensor) and d.numel() > 1:
                d = d.mean()
            gflat[k] = float(d)
        loss_approx = fp
    return n, f0, loss_approx


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
