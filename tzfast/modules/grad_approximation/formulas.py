"""Finite-difference formulas shared by the coordinate-wise and the randomized estimators.

A formula visits points ``x + m t`` (``t`` = ``h e_i`` for FDM, ``h u`` for randomized FD) in
a fixed order, evaluating the function at each, and returns to ``x``; the directional
derivative is ``sum_j w_j f(x + m_j t) / (den h)``. The visiting order, the moves and the order
in which the numerator is summed are torchzero 0.4.4's, so FDM reproduces its rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

__all__ = ["FD_FORMULAS", "FD_Formula", "FDFormula", "fd_formula", "numerator"]

FD_Formula = Literal["forward", "forward2", "backward", "backward2", "central", "central2", "central3",
                     "forward3", "backward3", "central4", "forward4", "forward5",
                     "fd_forward", "fd_backward", "fd_central"]


@dataclass(frozen=True)
class FDFormula:
    """One finite-difference formula.

    Attributes:
        name: canonical name.
        points: the displacements (in units of the step) evaluated, in order.
        terms: ``(displacement, weight)`` of the numerator, in summation order (0 is ``f(x)``).
        den: the denominator is ``den * h``.
        order: order of accuracy in ``h``.
    """

    name: str
    points: tuple[int, ...]
    terms: tuple[tuple[int, float], ...]
    den: float
    order: int

    @cached_property
    def uses_f0(self) -> bool:
        return any(pos == 0 for pos, _ in self.terms)

    @cached_property
    def moves(self) -> tuple[int, ...]:
        """Displacement changes: one before each evaluation, then the one that returns to ``x``."""
        out, cur = [], 0
        for p in (*self.points, 0):
            out.append(p - cur)
            cur = p
        return tuple(out)

    @property
    def central(self) -> bool:
        """Central formulas do not use ``f(x)``; their ``loss_approx`` is the first point's value."""
        return not self.uses_f0


def _f(name: str, points: tuple[int, ...], terms: tuple[tuple[int, float], ...], den: float, order: int) -> FDFormula:
    return FDFormula(name, points, terms, den, order)


_FORWARD2 = _f("forward2", (1,), ((1, 1), (0, -1)), 1, 1)
_BACKWARD2 = _f("backward2", (-1,), ((0, 1), (-1, -1)), 1, 1)
_CENTRAL2 = _f("central2", (1, -1), ((1, 1), (-1, -1)), 2, 2)
_FORWARD3 = _f("forward3", (1, 2), ((0, -3), (1, 4), (2, -1)), 2, 2)
_BACKWARD3 = _f("backward3", (-1, -2), ((-2, 1), (-1, -4), (0, 3)), 2, 2)
_CENTRAL4 = _f("central4", (1, 2, -1, -2), ((-2, 1), (-1, -8), (1, 8), (2, -1)), 12, 4)
_FORWARD4 = _f("forward4", (1, 2, 3), ((3, 2), (2, -9), (1, 18), (0, -11)), 6, 3)
_FORWARD5 = _f("forward5", (1, 2, 3, 4), ((4, -3), (3, 16), (2, -36), (1, 48), (0, -25)), 12, 4)

#: Every accepted formula name (aliases included) and the formula it names.
FD_FORMULAS: dict[str, FDFormula] = {
    "forward": _FORWARD2, "forward2": _FORWARD2, "fd_forward": _FORWARD2,
    "backward": _BACKWARD2, "backward2": _BACKWARD2, "fd_backward": _BACKWARD2,
    "central": _CENTRAL2, "central2": _CENTRAL2, "central3": _CENTRAL2, "fd_central": _CENTRAL2,
    "forward3": _FORWARD3, "backward3": _BACKWARD3, "central4": _CENTRAL4,
    "forward4": _FORWARD4, "forward5": _FORWARD5,
}


def fd_formula(who: str, formula: Any) -> FDFormula:
    """The formula named ``formula``; ValueError naming the accepted ones otherwise."""
    f = FD_FORMULAS.get(formula) if isinstance(formula, str) else None
    if f is None:
        raise ValueError(f"{who}: unknown formula {formula!r}; expected one of "
                         f"{', '.join(repr(k) for k in FD_FORMULAS)}")
    return f


def numerator(formula: FDFormula, values: dict[int, Any]) -> Any:
    """``sum_j w_j f_j`` summed left to right as torchzero writes it (``values`` by displacement)."""
    acc: Any = None
    for pos, w in formula.terms:
        v = values[pos]
        if acc is None:
            acc = v if w == 1 else -v if w == -1 else w * v
        elif w == 1:
            acc = acc + v
        elif w == -1:
            acc = acc - v
        elif w > 0:
            acc = acc + w * v
        else:
            acc = acc - (-w) * v
    return acc
