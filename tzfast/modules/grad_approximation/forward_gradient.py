"""``ForwardGradient``: directional derivatives along random directions, by forward-mode AD or FD."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.autograd.forward_ad as fwAD

from ...core.derivatives import Distributions, _swap_tensors
from .directions import DirectionSet, Segment, check_distribution, check_n_samples
from .fdm import check_h
from .formulas import FD_FORMULAS
from .grad_approximator import GradTarget
from .rfdm import RandomizedFDM, with_zo_note
from .seeded import scalar

if TYPE_CHECKING:
    from ...core.layout import Layout

__all__ = ["ForwardGradient"]

JVP_METHODS: tuple[str, ...] = ("autograd", "forward", "central")


def _check_jvp_method(jvp_method: Any) -> str:
    if jvp_method not in JVP_METHODS:
        raise ValueError(f"ForwardGradient: unknown jvp_method {jvp_method!r}; expected one of "
                         f"{', '.join(repr(m) for m in JVP_METHODS)}")
    return jvp_method


def jvp(closure: Callable, params: Sequence[torch.Tensor], tangents: Sequence[torch.Tensor]) -> tuple[Any, Any]:
    """``(f(x), grad f(x) . t)`` by forward-mode AD: the parameters are swapped for dual tensors
    (sharing their storage) while ``closure(False)`` runs, and swapped back whatever happens."""
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p.detach(), t) for p, t in zip(params, tangents, strict=True)]
        swapped = []
        try:
            for p, d in zip(params, duals, strict=True):
                _swap_tensors(p, d)
                swapped.append((p, d))
            loss = closure(False)
        finally:
            for p, d in reversed(swapped):
                _swap_tensors(p, d)
        if not isinstance(loss, torch.Tensor):
            return loss, 0.0
        primal, tangent = fwAD.unpack_dual(loss)
    return primal, 0.0 if tangent is None else tangent


@with_zo_note
class ForwardGradient(RandomizedFDM):
    """Forward gradient: ``g = (1/n) sum_k u_k (grad f(x) . u_k)`` for random directions ``u``.

    The directional derivative is an exact Jacobian-vector product by forward-mode AD
    (``jvp_method='autograd'``: one forward pass, no backward), or a finite difference along
    the normalised direction (``'forward'``: ``(f(x + h u/|u|) - f(x)) |u| / h``; ``'central'``
    likewise with ``x - h u/|u|``), which makes it a randomized finite difference.
    With ``'autograd'`` one tangent of the model's size exists during each JVP.

    {zo_note}
    Args:
        n_samples: number of random directions per estimate. Defaults to 1.
        distribution: direction distribution (see :class:`RandomizedFDM`). Defaults to ``'gaussian'``.
        pre_generate: same directions for every estimate within a step. Defaults to True.
        jvp_method: ``'autograd'``, ``'forward'`` or ``'central'``. Defaults to ``'autograd'``.
        h: the finite-difference step of the ``'forward'`` and ``'central'`` methods.
            Defaults to 1e-3.
        target: ``'closure'``, ``'grad'`` or ``'update'``. Defaults to ``'closure'``.
        seed: int, ``torch.Generator`` or None (see :class:`RandomizedFDM`). Defaults to None.
        fuse: keyword-only; False restores torchzero's behaviour (see the note). Defaults to True.

    References:
        Baydin et al., "Gradients without Backpropagation", arXiv:2202.08587.

    Examples:
        >>> opt = tz.Optimizer(model.parameters(), tz.m.ForwardGradient(n_samples=4), tz.m.LR(1e-2))
    """

    PRE_MULTIPLY_BY_H = False

    def __init__(self, n_samples: int = 1, distribution: Distributions = "gaussian", pre_generate: bool = True,
                 jvp_method: Literal["autograd", "forward", "central"] = "autograd", h: float = 1e-3,
                 target: GradTarget = "closure", seed: int | None | torch.Generator = None, *, fuse: bool = True):
        _check_jvp_method(jvp_method)
        super().__init__(h=h, n_samples=n_samples, distribution=distribution, target=target,
                         pre_generate=pre_generate, seed=seed, fuse=fuse)
        self.defaults["jvp_method"] = jvp_method

    def _estimate(self, closure: Callable, params: list[torch.Tensor], loss: Any, layout: Layout,
                  scales: list[list[float]] | None) -> tuple[list[torch.Tensor] | None, Any, Any]:
        if not params:
            return [], loss, None
        s = self.settings[params[0]]
        n = check_n_samples("ForwardGradient", s["n_samples"])
        method = _check_jvp_method(s["jvp_method"])
        h = check_h("ForwardGradient", s["h"])
        dirs = self._directions(layout, self._call_key(), n, check_distribution("ForwardGradient", s["distribution"]))
        sigma, norm = dirs.sigma, dirs.norm
        if method == "autograd":
            return self._autograd(closure, params, loss, dirs, scales)

        def unit(seg: Segment, k: int) -> float:
            nk = norm(k)
            return h * sigma(k) / nk if nk > 0 else 0.0

        def gcoef(seg: Segment, k: int, q: float) -> float:
            return sigma(k) * q * norm(k) / h

        formula = FD_FORMULAS["forward" if method == "forward" else "central"]
        return self._fd_walk(closure, dirs, formula, loss, unit, gcoef, params, scales)

    def _autograd(self, closure: Callable, params: list[torch.Tensor], loss: Any, dirs: DirectionSet,
                  scales: list[list[float]] | None) -> tuple[list[torch.Tensor] | None, Any, Any]:
        n, sigma = dirs.n, dirs.sigma
        tangents = [torch.empty(p.shape, dtype=p.dtype, device=p.device) for p in params]
        outs = dirs.outputs(tangents)
        derivs: list[float] = []
        for k in range(n):
            coeff = {k: sigma(k)}
            dirs.combine_(outs, lambda seg: coeff, False)  # noqa: B023 (used at once)
            loss, d = jvp(closure, params, tangents)
            derivs.append(scalar(d))
        if scales is not None:
            del tangents, outs
            dirs.combine_(None, lambda seg: {k: -scales[seg.bucket][seg.run] * sigma(k) * d / n
                                             for k, d in enumerate(derivs)}, True)
            return None, loss, None
        if n == 1:  # the tangent is the direction: scale it in place
            torch._foreach_mul_(tangents, derivs[0])
            return tangents, loss, None
        del tangents, outs
        grads = self._materialise(dirs, params, lambda seg: {k: sigma(k) * d / n for k, d in enumerate(derivs)})
        return grads, loss, None
