"""Base classes for native elementwise modules working on flat buckets.

An :class:`ElementwiseTransform` keeps its state in one flat buffer per (device, dtype) bucket
and state key; ``module.state[p][key]`` holds a view of ``p``'s segment, so user code and
``state_dict`` see torchzero's per-parameter layout. A step calls one native kernel per bucket
(per run of identical settings inside the bucket; normally one), whatever the number of
parameters.

Subclasses implement :meth:`ElementwiseTransform._kernel`. A module whose torchzero
counterpart splits its rule into ``update`` (state) and ``apply`` (output) sets
``_split = "both"`` and implements :meth:`_update_only` and :meth:`_apply_only`; those are used
only when someone calls ``update``/``apply`` separately (``Online``), never by ``step``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .layout import Bucket, Layout
from .settings import versions
from .transform import TensorTransform

if TYPE_CHECKING:
    from .module import Module
    from .objective import Objective

__all__ = ["ElementwiseTransform", "ScaleTransform", "UNARY_AFFINE", "UNARY_ABS", "UNARY_SIGN", "UNARY_SQRT",
           "UNARY_CLAMP"]

# op codes of the native ``unary_`` op (docs/native-ops.md)
UNARY_AFFINE, UNARY_ABS, UNARY_SIGN, UNARY_SQRT, UNARY_CLAMP = 0, 1, 2, 3, 4


def tails_align(module: Module, layout: Layout, tail: Sequence[Module]) -> bool:
    """Whether every tail multiplier resolves its settings over the same runs as ``module``
    (False when a per-parameter override splits them differently). Cached per layout and
    settings version (runs only change with those)."""
    ckey = (layout.token, versions()[1], tuple(map(id, tail)))
    cached = module.__dict__.get("_tails_align_cache")
    if cached is not None and cached[0] == ckey:
        return cached[1]
    ok = _tails_align(module, layout, tail)
    module.__dict__["_tails_align_cache"] = (ckey, ok)
    return ok


def _tails_align(module: Module, layout: Layout, tail: Sequence[Module]) -> bool:
    for b in layout.buckets:
        mine = [(r.pstart, r.pend) for r in module._runs(layout, b)]
        for m in tail:
            if not getattr(m, "_scale_uniform", False) and [(r.pstart, r.pend) for r in m._runs(layout, b)] != mine:
                return False
    return True


def tail_scales(module: Module, layout: Layout, tail: Sequence[Module]) -> list[list[float]]:
    """Per bucket, per run of ``module``: the product of the tail multipliers (runs aligned).

    Cached while the layout and every setting stay the same, when no multiplier depends on the
    step (``_scale_static``; ``Debias`` does not qualify)."""
    static = all(getattr(m, "_scale_static", False) for m in tail)
    if static:
        ckey = (layout.token, versions(), tuple(map(id, tail)))
        cached = module.__dict__.get("_tail_scales_cache")
        if cached is not None and cached[0] == ckey:
            return cached[1]
    result = _tail_scales(module, layout, tail)
    if static:
        module.__dict__["_tail_scales_cache"] = (ckey, result)
    return result


def _tail_scales(module: Module, layout: Layout, tail: Sequence[Module]) -> list[list[float]]:
    result = []
    for b in layout.buckets:
        runs = module._runs(layout, b)
        scales = [1.0] * len(runs)
        for m in tail:
            theirs = runs if getattr(m, "_scale_uniform", False) else m._runs(layout, b)
            for i, r in enumerate(theirs):
                scales[i] *= m._scale_of(r.settings)  # type: ignore[attr-defined]
        result.append(scales)
    return result


class _Flat:
    __slots__ = ("token", "buffers")

    def __init__(self, token: int):
        self.token = token
        self.buffers: dict[str, list[torch.Tensor]] = {}


class ElementwiseTransform(TensorTransform):
    """A module whose rule is elementwise, run by native kernels over flat buckets."""

    _split = "apply"

    # ---------------------------------------------------------------- to override
    def _state_specs(self, s: Mapping[str, Any]) -> dict[str, str]:
        """State keys this rule needs, each with its initialisation: ``'zeros'`` or ``'input'``."""
        return {}

    def _begin(self, s: Mapping[str, Any], update: bool) -> Any:
        """Per-call bookkeeping (step counters); ``update`` is False for an apply-only call."""
        return None

    def _kernel(self, tensors: Sequence[torch.Tensor], params: Sequence[torch.Tensor], state: dict[str, torch.Tensor],
                out: Sequence[torch.Tensor], s: Mapping[str, Any], out_scale: float, accumulate: bool, ctx: Any) -> None:
        raise NotImplementedError

    def _apply_only(self, tensors: list[torch.Tensor], state: dict[str, torch.Tensor], s: Mapping[str, Any],
                    ctx: Any) -> list[torch.Tensor]:
        raise NotImplementedError

    # ---------------------------------------------------------------- flat state
    def _flat_state(self, layout: Layout, specs: Mapping[str, str], tensors: Sequence[torch.Tensor]) -> _Flat:
        flat: _Flat | None = self.global_state.get("__flat")
        if flat is not None and flat.token == layout.token and all(k in flat.buffers for k in specs):
            return flat
        if flat is None or flat.token != layout.token:
            old = flat
            flat = _Flat(layout.token)
            keys = dict(specs)
            if old is not None:
                for k in old.buffers:
                    keys.setdefault(k, "zeros")
        else:
            keys = {k: v for k, v in specs.items() if k not in flat.buffers}
        with torch.no_grad():
            for key, init in keys.items():
                per_bucket = []
                for b in layout.buckets:
                    buf = torch.zeros(b.numel, dtype=b.dtype, device=b.device)
                    bt = b.take(tensors)
                    for p, v, t in zip(b.params, b.views(buf), bt):
                        st = self.state[p]
                        prev = st.get(key)
                        if isinstance(prev, torch.Tensor) and prev.shape == v.shape:
                            v.copy_(prev)
                        elif init == "input":
                            v.copy_(t)
                        st[key] = v
                    per_bucket.append(buf)
                flat.buffers[key] = per_bucket
        self.global_state["__flat"] = flat
        return flat

    # ---------------------------------------------------------------- execution
    def _settings0(self, objective: Objective) -> Mapping[str, Any]:
        return self.settings[objective.params[0]]

    def _execute(self, layout: Layout, tensors: Sequence[torch.Tensor], out: Sequence[torch.Tensor],
                 ctx: Any, s0: Mapping[str, Any], scales: list[list[float]] | None, accumulate: bool) -> None:
        specs = self._state_specs(s0)
        flat = self._flat_state(layout, specs, tensors)
        keys = list(specs)
        for b in layout.buckets:
            bt = b.take(tensors)
            bo = b.take(out)
            bp = b.params
            bufs = [flat.buffers[k][b.index] for k in keys]
            for ri, run in enumerate(self._runs(layout, b)):
                state = {k: run.narrow(f) for k, f in zip(keys, bufs)}
                scale = -scales[b.index][ri] if scales is not None else 1.0
                self._kernel(run.take(bt), run.take(bp), state, run.take(bo), run.settings, scale, accumulate, ctx)

    def _fused_step(self, objective: Objective, tail: Sequence[Module]) -> bool:
        """Runs the rule and the tail multipliers as one kernel writing the parameters."""
        if self._target != "update" or self.children:
            return False
        layout = objective.layout
        if layout is None or layout.params is not objective.params or not tails_align(self, layout, tail):
            return False
        tensors = objective.updates if objective.updates is not None else objective.get_grads()
        s0 = self._settings0(objective)
        ctx = self._begin(s0, True)
        for m in tail:
            m._tick()  # type: ignore[attr-defined]
        self._execute(layout, tensors, objective.params, ctx, s0, tail_scales(self, layout, tail), True)
        return True

    def step(self, objective: Objective) -> Objective:
        if self._target != "update" or self.children:
            return super().step(objective)
        layout = self._layout_for(objective)
        tensors, out = input_output(objective)
        s0 = self._settings0(objective)
        ctx = self._begin(s0, True)
        self._execute(layout, tensors, out, ctx, s0, None, False)
        objective.updates = list(out)
        return objective

    # ---------------------------------------------------------------- update/apply split (Online, targets)
    def multi_tensor_update(self, tensors, params, grads, loss, states, settings):  # type: ignore[no-untyped-def]
        if self._split != "both":
            return
        layout = self._layout_of(list(params))
        ctx = self._begin(settings[0], True)
        scratch = [torch.empty_like(t) for t in tensors]
        self._execute(layout, tensors, scratch, ctx, settings[0], None, False)

    def multi_tensor_apply(self, tensors, params, grads, loss, states, settings):  # type: ignore[no-untyped-def]
        layout = self._layout_of(list(params))
        if self._split != "both":
            out = [torch.empty_like(t) for t in tensors]
            ctx = self._begin(settings[0], True)
            self._execute(layout, tensors, out, ctx, settings[0], None, False)
            return out
        ctx = self._begin(settings[0], False)
        specs = self._state_specs(settings[0])
        flat = self._flat_state(layout, specs, tensors)
        outs: list[torch.Tensor] = [torch.empty(0)] * len(tensors)
        for b in layout.buckets:
            bt = list(b.take(tensors))
            for run in self._runs(layout, b):
                state = {k: run.narrow(flat.buffers[k][b.index]) for k in specs}
                res = self._apply_only(list(run.take(bt)), state, run.settings, ctx)
                for j, r in zip(range(run.pstart, run.pend), res):
                    outs[b.param_idx[j]] = r
        return outs

    def reset(self) -> None:
        super().reset()
        self._runs_cache.clear()


class ScaleTransform(ElementwiseTransform):
    """A multiplier by a per-parameter scalar setting (``LR``, ``StepSize``, ...).

    Multipliers directly after a fusable module at the end of the top-level chain are folded
    into that module's kernel.
    """

    _is_scale = True
    _scale_static = True  # the multiplier depends only on the settings (False: also on the step)

    def _scale_of(self, s: Mapping[str, Any]) -> float:
        raise NotImplementedError

    def _scale_ready(self) -> bool:
        return self._target == "update" and not self.children

    def _tick(self) -> None:
        self.increment_counter("__step", 0)

    def _begin(self, s: Mapping[str, Any], update: bool) -> Any:
        self._tick()
        return None

    def _kernel(self, tensors, params, state, out, s, out_scale, accumulate, ctx):  # type: ignore[no-untyped-def]
        from .. import ops

        scale = self._scale_of(s)
        if not accumulate and out_scale == 1.0 and scale == 1.0 and tensors is out:
            return
        ops.unary_(tensors, out, UNARY_AFFINE, scale, 0.0, out_scale, accumulate)


def input_output(objective: Objective) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """What an elementwise op reads and writes: the update in place, or the gradient into new tensors
    (the gradient itself is never written)."""
    if objective.updates is None:
        tensors = objective.get_grads()
        return tensors, [torch.empty_like(t) for t in tensors]
    return objective.updates, objective.updates


def unary_on_objective(module: Module, objective: Objective, op: int, a: float, b: float) -> Objective:
    """Applies a native unary op to the update (to a copy of the gradient if none), bucket by bucket."""
    from .. import ops

    layout = module._layout_for(objective)
    tensors, out = input_output(objective)
    for bucket in layout.buckets:
        ops.unary_(bucket.take(tensors), bucket.take(out), op, a, b, 1.0, False)
    objective.updates = list(out)
    return objective
