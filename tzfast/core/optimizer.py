"""``tz.Optimizer`` (alias ``tz.Modular``): chains modules into a ``torch.optim.Optimizer``."""
from __future__ import annotations

import warnings
from collections import ChainMap
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .chain import _flatten, flatten_modules
from .functional import step as _step
from .layout import Layout
from .module import Chainable, Module, _make_param_groups
from .objective import Objective, _grads_of
from .settings import GroupSettings

from torch.optim.optimizer import _global_optimizer_post_hooks as _global_post_hooks
from torch.optim.optimizer import _global_optimizer_pre_hooks as _global_pre_hooks

__all__ = ["Optimizer", "Modular"]


class _EvalCounterClosure:
    """Counts closure evaluations and keeps the first return value of the step."""

    __slots__ = ("optimizer", "closure")

    def __init__(self, optimizer: Optimizer, closure: Callable):
        self.optimizer = optimizer
        self.closure = closure

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        v = self.closure(*args, **kwargs)
        opt = self.optimizer
        if opt._closure_return is None:
            opt._closure_return = v
        opt.num_evaluations += 1
        return v


_GEN_KEY = "__torch_generator_state__"


def _pack(v: Any) -> Any:
    """A ``torch.Generator`` as its state tensor and device (so a state dict holds only tensors and
    plain data, loadable with ``torch.load(weights_only=True)``, and a loaded optimizer gets its own
    generator rather than sharing the saved one)."""
    if isinstance(v, torch.Generator):
        return {_GEN_KEY: v.get_state(), "device": str(v.device)}
    return v


def _unpack(v: Any) -> Any:
    if isinstance(v, dict) and _GEN_KEY in v:
        gen = torch.Generator(v["device"])
        gen.set_state(v[_GEN_KEY])
        return gen
    return v


def _check_param(p: Any, gi: int, pi: int) -> None:
    where = f"param_groups[{gi}]['params'][{pi}]"
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"tz.Optimizer: {where} must be a torch.Tensor, got {type(p).__name__}")
    if not p.is_leaf:
        raise ValueError(f"tz.Optimizer: {where} is not a leaf tensor (it was produced by an operation); "
                         f"optimizers can only update leaf tensors — pass the parameter itself, or .detach() "
                         f"it and set requires_grad_()")
    if p.is_complex():
        raise TypeError(f"tz.Optimizer: {where} is complex ({p.dtype}); modules work on real tensors. "
                        f"Wrap the chain in tz.m.ViewAsReal(...) to optimize complex parameters as real pairs")
    if not p.is_floating_point():
        raise TypeError(f"tz.Optimizer: {where} must have a floating-point dtype, got {p.dtype}")
    if p.is_sparse:
        raise TypeError(f"tz.Optimizer: {where} is a sparse tensor; only dense (strided) parameters are supported")


class Optimizer(torch.optim.Optimizer):
    """Chains modules into an optimizer.

    Args:
        params: an iterable of tensors, of param-group dicts, or an ``nn.Module``.
        *modules: the modules, applied in order; a list or tuple is a nested chain.

    Examples:
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = tz.Optimizer(model.parameters(), tz.m.Adam(), tz.m.LR(1e-3))
    """

    def __init__(self, params: Any, *modules: Chainable):
        if len(modules) == 0:
            raise RuntimeError("Empty list of modules passed to `Optimizer`")
        self.model: torch.nn.Module | None = None
        if isinstance(params, torch.nn.Module):
            self.model = params
            params = params.parameters()
        flat_top = _flatten(modules, "tz.Optimizer")
        if not flat_top:
            raise RuntimeError("Empty list of modules passed to `Optimizer` (a nested list/tuple holds no module)")
        self.modules: tuple[Module, ...] = tuple(modules) if all(isinstance(m, Module) for m in modules) \
            else tuple(flat_top)
        self._chain: tuple[Module, ...] = tuple(flat_top)
        self.flat_modules: list[Module] = flatten_modules(*self._chain)

        groups = _make_param_groups(params, "tz.Optimizer")
        lr_modules = [m for m in self.flat_modules if "lr" in m.defaults]
        if len(lr_modules) > 1:
            warnings.warn(f"multiple learning rate modules detected: {lr_modules}. This may lead to compounding of "
                          f"learning rate multiplication with per-parameter learning rates and schedulers.",
                          stacklevel=2)
        for g in groups:
            for k in g:
                if k in ("params", "lr"):
                    continue
                owners = [m for m in self.flat_modules if k in m.defaults and k not in m._overridden_keys]
                if len(owners) > 1:
                    warnings.warn(f"`params` has a `{k}` key, and multiple modules have that key: {owners}. If you "
                                  f"intended to only set `{k}` to one of them, use `module.set_param_groups(params)`",
                                  stacklevel=2)

        defaults: dict[str, Any] = {}
        for m in self.flat_modules:
            defaults.update(m.defaults)
        self._layout: Layout | None = None
        super().__init__(groups, defaults=defaults)

        self.current_step = 0
        self.num_evaluations = 0
        self._closure_return: Any = None
        self.attrs: dict[str, Any] = {}
        self.should_terminate = False

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a param group; buckets are rebuilt on the next step."""
        if not isinstance(param_group, dict) and not isinstance(param_group, ChainMap):
            raise TypeError(f"tz.Optimizer.add_param_group: expected a dict, got {type(param_group).__name__}")
        group = _make_param_groups([dict(param_group)], "tz.Optimizer.add_param_group")[0]
        gi = len(self.param_groups)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for pi, p in enumerate(group["params"]):
            _check_param(p, gi, pi)
            if id(p) in seen:
                raise ValueError(f"tz.Optimizer: param_groups[{gi}]['params'][{pi}] appears in more than one "
                                 f"parameter group (or twice in one)")
            seen.add(id(p))
        explicit = GroupSettings(group)
        self.param_groups.append(ChainMap(explicit, self.defaults))  # type: ignore[arg-type]
        for p in group["params"]:
            for m in self.flat_modules:
                m.settings[p].maps[1] = explicit  # the group's live dict: scheduler writes are seen at once
        self._layout = None

    def _current_layout(self) -> Layout:
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        layout = self._layout
        if layout is not None and len(layout.params) == len(params) and layout.ids == list(map(id, params)):
            return layout
        group_of = {id(p): g.maps[0] for g in self.param_groups for p in g["params"]}
        layout = Layout(params, [group_of[id(p)] for p in params])
        self._layout = layout
        return layout

    # ------------------------------------------------------------------ step
    def step(self, closure: Callable | None = None, loss: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """Performs one step; returns the value of the step's first closure evaluation (None without a closure).

        Step pre/post hooks (``register_step_pre_hook``, global optimizer hooks) and the profiler's
        ``Optimizer.step#...`` range behave as in ``torch.optim``; when none is active the step
        skips that machinery (torch wraps every optimizer's step in it, ~20 us per call).
        """
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks or _global_pre_hooks
                or _global_post_hooks or torch.autograd._profiler_enabled()):
            return self._hooked_step(self, closure, loss, **kwargs)
        grad_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        try:
            return self._step(closure, loss, kwargs)
        finally:
            torch.set_grad_enabled(grad_enabled)

    step.hooked = True  # type: ignore[attr-defined]  # torch.optim must not wrap it again

    def _step_with_hooks(self, closure: Callable | None = None, loss: Any = None, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self._step(closure, loss, kwargs)

    _hooked_step = staticmethod(torch.optim.Optimizer.profile_hook_step(_step_with_hooks))

    def _step(self, closure: Callable | None, loss: Any, kwargs: dict[str, Any]) -> Any:
        self._closure_return = None
        layout = self._current_layout()
        params = layout.params
        objective = Objective(params=params, closure=None if closure is None else _EvalCounterClosure(self, closure),
                              model=self.model, current_step=self.current_step, modular=self, loss=loss,
                              storage=kwargs)
        objective.layout = layout
        objective._fusable = True
        if closure is None:
            objective.grads = _grads_of(params)
        elif not callable(closure):
            raise TypeError(f"tz.Optimizer.step: `closure` must be callable, got {type(closure).__name__}")
        objective = _step(objective, self._chain)
        objective.update_parameters()
        self.attrs.update(objective.attrs)
        if objective.should_terminate is not None:
            self.should_terminate = objective.should_terminate
        self.current_step += 1
        objective.apply_post_step_hooks(self.modules)
        ret, self._closure_return = self._closure_return, None  # do not keep the loss's graph alive
        return ret

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """Optimizer and module state, parameters referred to by index (portable across processes)."""
        all_params = [p for g in self.param_groups for p in g["params"]]
        index = {id(p): i for i, p in enumerate(all_params)}
        groups = []
        for g in self.param_groups:
            d = {k: v for k, v in g.maps[0].items() if k != "params"}
            d["params"] = [index[id(p)] for p in g["params"]]
            groups.append(d)
        modules = []
        for m in self.flat_modules:
            modules.append({
                "type": type(m).__name__,
                "state": {index[id(p)]: dict(st) for p, st in m.state.items() if id(p) in index and st},
                "local": {index[id(p)]: dict(s.maps[0]) for p, s in m.settings.items()
                          if id(p) in index and s.maps[0]},
                "defaults": {k: _pack(v) for k, v in m.defaults.items()},
                "global_state": {k: _pack(v) for k, v in m.global_state.items() if not k.startswith("__flat")
                                 and not k.startswith("__fake")},
                "extra": m._extra_pack(),
            })
        return {"param_groups": groups, "modules": modules, "current_step": self.current_step,
                "num_evaluations": self.num_evaluations, "should_terminate": self.should_terminate}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Loads what :meth:`state_dict` returned; the trajectory continues identically."""
        if not isinstance(state_dict, dict) or "modules" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("tz.Optimizer.load_state_dict: expected a dict from tz.Optimizer.state_dict() with "
                             "'param_groups' and 'modules' keys")
        all_params = [p for g in self.param_groups for p in g["params"]]
        sd_groups = state_dict["param_groups"]
        if len(sd_groups) != len(self.param_groups) or \
                [len(g["params"]) for g in sd_groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("tz.Optimizer.load_state_dict: the state dict's param groups do not match this "
                             f"optimizer's: expected group sizes {[len(g['params']) for g in self.param_groups]}, "
                             f"got {[len(g['params']) for g in sd_groups]}")
        if len(state_dict["modules"]) != len(self.flat_modules):
            raise ValueError(f"tz.Optimizer.load_state_dict: the state dict has {len(state_dict['modules'])} "
                             f"modules, this optimizer has {len(self.flat_modules)}")
        for g, sg in zip(self.param_groups, sd_groups):
            explicit = g.maps[0]
            for k in [k for k in explicit if k != "params"]:
                del explicit[k]
            for k, v in sg.items():
                if k != "params":
                    explicit[k] = v

        def cast(v: Any, p: torch.Tensor) -> Any:
            if isinstance(v, torch.Tensor):
                v = v.detach().clone()
                if v.is_floating_point() and v.shape == p.shape:
                    v = v.to(dtype=p.dtype, device=p.device)
                return v
            return v

        for m, sd in zip(self.flat_modules, state_dict["modules"]):
            if sd.get("type", type(m).__name__) != type(m).__name__:
                raise ValueError(f"tz.Optimizer.load_state_dict: module mismatch: expected {type(m).__name__}, "
                                 f"got {sd['type']}")
            m.state.clear()
            for i, st in sd["state"].items():
                p = all_params[int(i)]
                m.state[p] = {k: cast(v, p) for k, v in st.items()}
            for p in all_params:
                m.settings[p].maps[0].clear()
            for i, loc in sd["local"].items():
                m.settings[all_params[int(i)]].maps[0].update(loc)
            m.defaults.clear()
            m.defaults.update({k: _unpack(v) for k, v in sd["defaults"].items()})
            m.global_state.clear()
            m.global_state.update({k: _unpack(v) for k, v in sd["global_state"].items()})
            m._extra_unpack(sd["extra"])
            m._runs_cache.clear()
        self.current_step = state_dict.get("current_step", 0)
        self.num_evaluations = state_dict.get("num_evaluations", 0)
        self.should_terminate = state_dict.get("should_terminate", False)

    def __getstate__(self) -> dict[str, Any]:  # type: ignore[override]
        d = self.__dict__.copy()
        d["_layout"] = None
        return d

    def __setstate__(self, state: dict[str, Any]) -> None:  # type: ignore[override]
        self.__dict__.update(state)
        self._patch_step_function()

    def __repr__(self) -> str:
        return f"Optimizer({', '.join(str(m) for m in self.modules)})"


Modular = Optimizer
