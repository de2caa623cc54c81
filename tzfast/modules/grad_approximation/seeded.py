"""The shared driver of the estimators whose random directions come from the perturbation engine.

An estimate is ``g = (1/n) sum_k c_k u_k``: ``n`` seeded directions and one number per
direction, the finite-difference quotient along it. The driver walks the parameters through the
formula's points for every direction (moving out to the next direction in the same pass that
moves back from the previous one), then either

* materialises ``g`` with one engine pass into fresh gradient tensors, or
* (fused, see :meth:`SeededEstimator._fused_step`) moves the parameters back from the last
  direction *and* applies ``-lr * g`` in one pass: nothing of the model's size is allocated and
  ``p.grad`` is not set.

The parameters are moved back by subtracting what was added, as torchzero does (not restored
from a copy); if the closure raises, they are moved back before the error propagates.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...core.settings import versions
from .directions import DirectionSet, Segment, Walk, next_key, tail_scales
from .formulas import FDFormula, numerator
from .grad_approximator import GradApproximator, GradTarget

if TYPE_CHECKING:
    from ...core.layout import Layout
    from ...core.module import Module
    from ...core.objective import Objective

__all__ = ["SeededEstimator", "scalar"]


# The written-out walks for the common cases (one segment; one central direction); False runs
# the general walk, which the tests use to check that both give the same bits.
_FAST_PATHS = True


def scalar(v: Any) -> float:
    """A closure's value as a float; per-sample (vector) values are averaged."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            v = v.mean()
        return float(v.item())
    return float(v)


def _mean(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.numel() > 1:
        return v.mean()
    return v


class SeededEstimator(GradApproximator):
    """Base of the randomized estimators (directions from the perturbation engine).

    Subclasses implement :meth:`_estimate`; :meth:`approximate` and the fused step call it.

    Args:
        defaults: settings.
        return_approx_loss: see :class:`GradApproximator`.
        target: see :class:`GradApproximator`.
        fuse: apply the step in the pass that moves the parameters back when the estimator is
            followed only by scalar multipliers at the end of the optimizer's chain (``p.grad`` is
            then not set). False gives torchzero's behaviour: the estimate is materialised and,
            with ``target='closure'``, written to ``p.grad``.
    """

    def __init__(self, defaults: dict[str, Any], return_approx_loss: bool, target: GradTarget, fuse: bool):
        super().__init__(defaults, return_approx_loss=return_approx_loss, target=target)
        self.fuse = bool(fuse)
        self._layout_now: Layout | None = None
        self._key: int | None = None
        self._step = 0
        self._sq: tuple[tuple[int, int], dict[int, float]] | None = None

    # ------------------------------------------------------------------ to override
    def _estimate(self, closure: Callable, params: list[torch.Tensor], loss: Any, layout: Layout,
                  scales: list[list[float]] | None) -> tuple[list[torch.Tensor] | None, Any, Any]:
        """Estimates the gradient. With ``scales`` (per bucket, per run: the tail's multiplier)
        the parameters are updated by ``-scale * g`` instead and no gradient is returned."""
        raise NotImplementedError

    # ------------------------------------------------------------------ keys and directions
    def _seed(self) -> int | torch.Generator | None:
        return self.defaults.get("seed")

    def _pre_generate(self) -> bool:
        return bool(self.defaults.get("pre_generate", True))

    def pre_step(self, objective: Objective) -> None:
        self._layout_now = self._layout_for(objective)
        self._step = objective.current_step
        self._key = next_key(self, self._seed(), self._step) if self._pre_generate() else None

    def _call_key(self) -> int:
        """The key of this estimate: the step's with ``pre_generate``, else a fresh one."""
        if self._pre_generate():
            if self._key is None:
                self._key = next_key(self, self._seed(), self._step)
            return self._key
        return next_key(self, self._seed(), self._step)

    def _directions(self, layout: Layout, key: int, n: int, distribution: str) -> DirectionSet:
        if self._sq is None or self._sq[0] != (key, layout.numel):
            self._sq = ((key, layout.numel), {})
        # the segments and engine entries depend only on the layout, the settings and the tracing
        # state: a step reuses the last set with its own key
        ckey = (layout.token, versions()[1], n, distribution, torch.compiler.is_compiling())
        cached = self.__dict__.get("_dirs_cache")
        if cached is not None and cached[0] == ckey:
            dirs: DirectionSet = cached[1]
            dirs.rekey(key, self._sq[1])
            return dirs
        dirs = DirectionSet(self, layout, key, n, distribution, self._sq[1])
        self.__dict__["_dirs_cache"] = (ckey, dirs)
        return dirs

    def _layout_of_params(self, params: list[torch.Tensor]) -> Layout:
        layout = self._layout_now
        if layout is not None and layout.params is params:
            return layout
        return self._layout_of(params)

    # ------------------------------------------------------------------ GradApproximator
    def approximate(self, closure: Callable, params: list[torch.Tensor], loss: Any
                    ) -> tuple[list[torch.Tensor], Any, Any]:
        with torch.no_grad():
            grads, loss, loss_approx = self._estimate(closure, params, loss, self._layout_of_params(params), None)
        assert grads is not None
        return grads, loss, loss_approx

    def _fused_step(self, objective: Objective, tail: Sequence[Module]) -> bool:
        """Estimate and ``p -= lr * g`` without materialising ``g`` (see the module docstring)."""
        layout = self._fusion_layout(objective, tail)
        if layout is None:
            return False
        self.pre_step(objective)
        closure = self._closure_of(objective)
        for m in tail:
            m._tick()  # type: ignore[attr-defined]
        scales = tail_scales(self, layout, tail)  # after the ticks: a step-dependent multiplier (Debias)
        if torch.is_grad_enabled():
            with torch.no_grad():
                _, loss, loss_approx = self._estimate(closure, objective.params, objective.loss, layout, scales)
        else:
            _, loss, loss_approx = self._estimate(closure, objective.params, objective.loss, layout, scales)
        if loss_approx is not None:
            objective.loss_approx = loss_approx
        if loss is not None:
            objective.loss = loss
        return True

    def reset(self) -> None:
        # like torchzero's generator, an int seed's stream is not restarted by reset()
        keep: dict[str, Any] = {k: self.global_state[k] for k in ("key_step", "key_draws") if k in self.global_state}
        super().reset()
        self.global_state.update(keep)
        self._key = None

    def __getstate__(self) -> dict[str, Any]:
        d = super().__getstate__()
        d["_layout_now"] = None
        d["_sq"] = None
        return d

    # ------------------------------------------------------------------ the finite-difference walk
    def _fd_walk(self, closure: Callable, dirs: DirectionSet, formula: FDFormula, f0: Any,
                 unit: Callable[[Segment, int], float], gcoef: Callable[[Segment, int, float], float],
                 params: list[torch.Tensor], scales: list[list[float]] | None
                 ) -> tuple[list[torch.Tensor] | None, Any, Any]:
        """Runs ``formula`` along every direction of ``dirs`` and finishes the estimate.

        ``unit(seg, k)`` is the coefficient of ``z_k`` for a move of one step; ``gcoef(seg, k, q)``
        the coefficient of ``z_k`` in the gradient for the quotient ``q = numerator / den``.
        Returns ``(grads or None, loss, loss_approx)``.
        """
        if _FAST_PATHS and len(dirs.segments) == 1:
            return self._fd_walk_one(closure, dirs, formula, f0, unit, gcoef, params, scales)
        n = dirs.n
        walk = Walk(dirs, unit)
        quotients: list[float] = []
        loss_approx: Any = None
        moves = formula.moves
        try:
            for k in range(n):
                if formula.uses_f0 and f0 is None:
                    walk.flush()
                    f0 = closure(False)
                values: dict[int, float] = {0: 0.0 if f0 is None else scalar(f0)}
                for i, (pos, m) in enumerate(zip(formula.points, moves, strict=False)):
                    walk.move(k, m)
                    walk.flush()
                    v = closure(False)
                    if i == 0:
                        loss_approx = v if formula.central else f0
                    values[pos] = scalar(v)  # per-sample (vector) values averaged first: the quotient is linear
                walk.move(k, moves[-1])
                quotients.append(numerator(formula, values) / formula.den)
        except BaseException:
            walk.undo()
            raise
        inv_n = 1.0 / n

        if scales is None:
            walk.flush()
            return self._materialise(dirs, params, lambda seg: {
                k: gcoef(seg, k, q) * inv_n for k, q in enumerate(quotients)}), _mean(f0), _mean(loss_approx)

        walk.finish(lambda seg: {k: -scales[seg.bucket][seg.run] * gcoef(seg, k, q) * inv_n
                                 for k, q in enumerate(quotients)})
        return None, _mean(f0), _mean(loss_approx)

    def _fd_walk_one(self, closure: Callable, dirs: DirectionSet, formula: FDFormula, f0: Any,
                     unit: Callable[[Segment, int], float], gcoef: Callable[[Segment, int, float], float],
                     params: list[torch.Tensor], scales: list[list[float]] | None
                     ) -> tuple[list[torch.Tensor] | None, Any, Any]:
        """:meth:`_fd_walk` for parameters that form one segment (one bucket, one run of
        settings: the usual case), without the per-segment bookkeeping of :class:`Walk`.

        It makes the same engine calls as :meth:`_fd_walk` with the same samples and
        coefficients in the same order (so the same bits); tests/test_grad_approximation.py
        compares the two paths.
        """
        seg = dirs.segments[0]
        call = dirs.calls[0]
        tensors, offsets, key, code = seg.params, seg.offsets, dirs.key, dirs.code
        n = dirs.n
        points, moves = formula.points, formula.moves
        if _FAST_PATHS and n == 1 and points == (1, -1) and scales is not None and not formula.uses_f0:
            # one direction, central differences, fused: the most common step, written out (the
            # same calls, coefficients and arithmetic as the loop below)
            u = unit(seg, 0)
            moved = 0
            try:
                call(tensors, offsets, key, [0], [u], code, 1.0, True)
                moved = 1
                fp = closure(False)
                call(tensors, offsets, key, [0], [-2 * u], code, 1.0, True)
                moved = -1
                fm = closure(False)
            except BaseException:
                if moved:
                    call(tensors, offsets, key, [0], [-moved * u], code, 1.0, True)
                raise
            q = (scalar(fp) - scalar(fm)) / formula.den
            c = u + -scales[seg.bucket][seg.run] * gcoef(seg, 0, q) * 1.0
            if c != 0.0:
                call(tensors, offsets, key, [0], [float(c)], code, 1.0, True)
            return None, _mean(f0), _mean(fp)
        uses_f0, central, den = formula.uses_f0, formula.central, formula.den
        applied: dict[int, float] = {}  # displacement (in units) applied along each direction
        pend_k = -1  # the queued move back from the previous direction
        pend_c = 0.0
        pend_m = 0
        quotients: list[float] = []
        loss_approx: Any = None
        try:
            for k in range(n):
                u = unit(seg, k)
                if uses_f0 and f0 is None:
                    if pend_k >= 0:
                        call(tensors, offsets, key, [pend_k], [pend_c], code, 1.0, True)
                        applied[pend_k] = applied.get(pend_k, 0) + pend_m
                        pend_k = -1
                    f0 = closure(False)
                values: dict[int, float] = {0: 0.0 if f0 is None else scalar(f0)}
                for i, pos in enumerate(points):
                    m = moves[i]
                    if pend_k >= 0:
                        call(tensors, offsets, key, [pend_k, k], [pend_c, m * u], code, 1.0, True)
                        applied[pend_k] = applied.get(pend_k, 0) + pend_m
                        pend_k = -1
                    else:
                        call(tensors, offsets, key, [k], [m * u], code, 1.0, True)
                    applied[k] = applied.get(k, 0) + m
                    v = closure(False)
                    if i == 0:
                        loss_approx = v if central else f0
                    values[pos] = scalar(v)
                pend_k, pend_m = k, moves[-1]
                pend_c = pend_m * u
                quotients.append(numerator(formula, values) / den)
        except BaseException:
            back = [(j, -m * unit(seg, j)) for j, m in applied.items() if m != 0]
            if back:
                call(tensors, offsets, key, [j for j, _ in back], [c for _, c in back], code, 1.0, True)
            raise
        inv_n = 1.0 / n

        if scales is None:
            if pend_k >= 0:
                call(tensors, offsets, key, [pend_k], [pend_c], code, 1.0, True)
            grads = [torch.empty(p.shape, dtype=p.dtype, device=p.device) for p in params]
            cs = [gcoef(seg, k, q) * inv_n for k, q in enumerate(quotients)]
            live = [k for k in range(n) if cs[k] != 0.0]
            outs = [grads[i] for i in seg.index]
            if live:
                call(outs, offsets, key, live, [float(cs[k]) for k in live], code, 1.0, False)
            else:
                for t in outs:
                    t.zero_()
            return grads, _mean(f0), _mean(loss_approx)

        # the move back from the last direction and -lr * g, in one pass (sample order as in
        # Walk.finish: the queued move first, then the estimate's directions)
        scale = scales[seg.bucket][seg.run]
        cs_by_k: dict[int, float] = {pend_k: pend_c}
        for k, q in enumerate(quotients):
            cs_by_k[k] = cs_by_k.get(k, 0.0) + -scale * gcoef(seg, k, q) * inv_n
        live = [k for k, c in cs_by_k.items() if c != 0.0]
        if live:
            call(tensors, offsets, key, live, [float(cs_by_k[k]) for k in live], code, 1.0, True)
        return None, _mean(f0), _mean(loss_approx)

    @staticmethod
    def _materialise(dirs: DirectionSet, params: list[torch.Tensor],
                     coeffs: Callable[[Segment], dict[int, float]]) -> list[torch.Tensor]:
        """``g = sum_k coeffs[k] z_k`` in fresh tensors shaped like ``params`` (one pass per segment)."""
        grads = [torch.empty(p.shape, dtype=p.dtype, device=p.device) for p in params]
        dirs.combine_(dirs.outputs(grads), coeffs, False)
        return grads
