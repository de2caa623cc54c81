"""``SPSA1``: one-measurement SPSA."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .directions import Segment, check_n_samples, check_seed
from .fdm import check_h
from .formulas import FDFormula
from .grad_approximator import GradTarget
from .rfdm import with_zo_note
from .seeded import SeededEstimator

if TYPE_CHECKING:
    from ...core.layout import Layout

__all__ = ["SPSA1"]

# one evaluation at x + h u, no f(x): the "numerator" is f(x + h u) itself
_ONE_POINT = FDFormula("one_point", (1,), ((1, 1),), 1, 0)


@with_zo_note
class SPSA1(SeededEstimator):
    """One-measurement SPSA: ``g = (1/n) sum_k u_k (f(x + h u_k) + eps)``, ``u`` Rademacher.

    Unlike two-measurement SPSA the estimate is often not a descent direction, but its
    expectation (``h`` times the gradient, plus higher-order terms) points downhill. Recommended
    only where the objective changes on every evaluation, e.g. feedback control.

    {zo_note}
    Args:
        h: the perturbation size (per parameter); set it to the learning rate. Defaults to 1e-3.
        n_samples: number of random directions per estimate. Defaults to 1.
        eps: measurement-noise estimate added to every measurement (per parameter).
            Defaults to 1e-8.
        pre_generate: same directions for every estimate within a step. Defaults to False.
        seed: int, ``torch.Generator`` or None (see :class:`RandomizedFDM`). Defaults to None.
        target: ``'closure'``, ``'grad'`` or ``'update'``. Defaults to ``'closure'``.
        fuse: keyword-only; False restores torchzero's behaviour (see the note). Defaults to True.

    References:
        Spall, "A one-measurement form of simultaneous perturbation stochastic approximation",
        Automatica 33 (1997), doi:10.1016/S0005-1098(96)00149-5.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.SPSA1(h=1e-3), tz.m.LR(1e-3))
    """

    def __init__(self, h: float = 1e-3, n_samples: int = 1, eps: float = 1e-8, pre_generate: bool = False,
                 seed: int | None | torch.Generator = None, target: GradTarget = "closure", *, fuse: bool = True):
        check_h("SPSA1", h)
        check_n_samples("SPSA1", n_samples)
        check_seed("SPSA1", seed)
        super().__init__(dict(h=h, eps=eps, n_samples=n_samples, pre_generate=pre_generate, seed=seed),
                         False, target, fuse)

    def _estimate(self, closure: Callable, params: list[torch.Tensor], loss: Any, layout: Layout,
                  scales: list[list[float]] | None) -> tuple[list[torch.Tensor] | None, Any, Any]:
        n = check_n_samples("SPSA1", self.defaults["n_samples"])
        dirs = self._directions(layout, self._call_key(), n, "rademacher")
        for seg in dirs.segments:
            check_h("SPSA1", seg.settings["h"])

        def unit(seg: Segment, k: int) -> float:
            return seg.settings["h"]

        def gcoef(seg: Segment, k: int, q: float) -> float:
            return q + seg.settings["eps"]

        grads, _, _ = self._fd_walk(closure, dirs, _ONE_POINT, None, unit, gcoef, params, scales)
        return grads, loss, None
