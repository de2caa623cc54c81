"""The :class:`Module` base class: settings, state, children, update/apply/step."""
from __future__ import annotations

import warnings
from abc import ABC
from collections import ChainMap, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import torch

from .layout import Bucket, Layout, Run
from .settings import LocalSettings, versions

if TYPE_CHECKING:
    from .objective import Objective

__all__ = ["Module", "Chainable"]


def _make_param_groups(params: Any, who: str) -> list[dict[str, Any]]:
    """Normalises ``params`` (tensors, an nn.Module, or param-group dicts) into group dicts."""
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    if isinstance(params, torch.Tensor):
        raise TypeError(f"{who}: `params` must be an iterable of tensors or of param-group dicts, "
                        f"got a single Tensor; wrap it in a list: [tensor]")
    if isinstance(params, Mapping):
        params = [params]
    try:
        items = list(params)
    except TypeError:
        raise TypeError(f"{who}: `params` must be an iterable of tensors or of param-group dicts, "
                        f"got {type(params).__name__}") from None
    if len(items) == 0:
        return []
    if all(isinstance(i, Mapping) for i in items):
        groups = []
        for i, g in enumerate(items):
            if "params" not in g:
                raise ValueError(f"{who}: param group {i} has no 'params' key; got keys {sorted(g)}")
            g = dict(g)
            ps = g["params"]
            if isinstance(ps, torch.Tensor):
                ps = [ps]
            g["params"] = list(ps)
            groups.append(g)
        return groups
    if any(isinstance(i, Mapping) for i in items):
        raise TypeError(f"{who}: `params` mixes tensors and param-group dicts; pass one or the other")
    return [{"params": items}]


# Attributes the fused step paths cache per layout and settings version (see core/elementwise.py
# and modules/grad_approximation/); never pickled or deep-copied.
_STEP_CACHES = ("_segments_cache", "_tails_align_cache", "_tail_scales_cache", "_dirs_cache")


class Module(ABC):
    """Base class of every optimizer module.

    A module keeps per-parameter ``state`` and per-parameter ``settings`` keyed by the parameter
    tensors (as ``torch.optim.Optimizer`` does), a ``global_state`` dict and named ``children``.
    Settings resolve with priority: :meth:`set_param_groups` (module-local) > the optimizer's
    param groups > ``defaults``.

    Args:
        defaults: default values of the module's settings.
    """

    def __init__(self, defaults: dict[str, Any] | None = None):
        if defaults is None:
            defaults = {}
        for k, v in defaults.items():
            if isinstance(v, Module):
                raise TypeError(f"{type(self).__name__}: setting {k!r} is a Module; pass modules as children "
                                f"(set_child), not as settings")
        self.defaults: dict[str, Any] = LocalSettings(defaults)
        self.settings: defaultdict[torch.Tensor, ChainMap[str, Any]] = defaultdict(self._new_settings)
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        self.global_state: dict[str, Any] = {}
        self.children: dict[str, Module] = {}
        self._overridden_keys: set[str] = set()
        self._projected_keys: defaultdict[str, set[str]] = defaultdict(set)
        self._runs_cache: dict[tuple[int, int], tuple[int, list[Run]]] = {}
        self._layout_cache: Layout | None = None

    # ------------------------------------------------------------------ settings
    def _new_settings(self) -> ChainMap[str, Any]:
        return ChainMap(LocalSettings(), {}, self.defaults)

    def set_param_groups(self, param_groups: Any) -> Module:
        """Sets module-specific per-parameter settings (highest priority)."""
        for group in _make_param_groups(param_groups, f"{type(self).__name__}.set_param_groups"):
            settings = dict(group)
            params = settings.pop("params")
            if not settings:
                continue
            self._overridden_keys.update(settings.keys())
            for p in params:
                self.settings[p].maps[0].update(settings)
        return self

    def get_settings(self, params: Sequence[torch.Tensor], key: str | list[str] | tuple[str, ...],
                     key2: str | None = None, *keys: str, cls: type = list) -> Any:
        """Per-parameter values of one or several settings (like ``operator.itemgetter``)."""
        if isinstance(key, str) and key2 is None:
            return cls(self.settings[p][key] for p in params)
        all_keys = ((key,) if isinstance(key, str) else tuple(key)) + ((key2,) if key2 is not None else ()) + keys
        return [cls(self.settings[p][k] for p in params) for k in all_keys]

    def get_state(self, params: Sequence[torch.Tensor], key: str | list[str] | tuple[str, ...],
                  key2: str | None = None, *keys: str, must_exist: bool = False,
                  init: Any = torch.zeros_like, cls: type = list) -> Any:
        """Per-parameter state values, created with ``init`` where missing."""
        single = isinstance(key, str) and key2 is None
        all_keys = ((key,) if isinstance(key, str) else tuple(key)) + ((key2,) if key2 is not None else ()) + keys
        out = [cls() for _ in all_keys]
        for i, p in enumerate(params):
            st = self.state[p]
            for ki, k in enumerate(all_keys):
                if k not in st:
                    if must_exist:
                        raise KeyError(f"{type(self).__name__}: state key {k!r} does not exist; "
                                       f"existing keys: {tuple(st.keys())}")
                    kinit = init[ki] if (isinstance(init, (list, tuple)) and not single) else init
                    st[k] = _initial_value(p, kinit, i)
                out[ki].append(st[k])
        return out[0] if single else out

    def clear_state_keys(self, *keys: str) -> None:
        for s in self.state.values():
            for k in keys:
                s.pop(k, None)
        self._invalidate_flat()

    def store(self, params: Sequence[torch.Tensor], keys: str | Sequence[str], values: Sequence) -> None:
        if isinstance(keys, str):
            for p, v in zip(params, values):
                self.state[p][keys] = v
            return
        for p, *vs in zip(params, *values):
            st = self.state[p]
            for k, v in zip(keys, vs):
                st[k] = v

    def increment_counter(self, key: str, start: int) -> int:
        """Increments ``global_state[key]`` and returns it; the first value is ``start``."""
        value = self.global_state.get(key, start - 1) + 1
        self.global_state[key] = value
        return value

    def add_projected_keys(self, kind: str, *keys: str) -> None:
        """Records which state keys hold gradient-like buffers (used by projections)."""
        self._projected_keys[kind].update(keys)

    # ------------------------------------------------------------------ runs
    def _layout_for(self, objective: Objective) -> Layout:
        """The objective's layout (the optimizer's), or one built for its parameters and cached."""
        layout = objective.layout
        if layout is not None and layout.params is objective.params:
            return layout
        return self._layout_of(objective.params)

    def _layout_of(self, params: list[torch.Tensor]) -> Layout:
        cached = self._layout_cache
        if cached is not None and len(cached.params) == len(params) and cached.ids == list(map(id, params)):
            return cached
        layout = Layout(params)
        self._layout_cache = layout
        return layout

    def _runs(self, layout: Layout, bucket: Bucket) -> list[Run]:
        """Contiguous slices of ``bucket`` whose parameters share their settings (cached)."""
        lv = versions()[1]
        cache_key = (layout.token, bucket.index)
        hit = self._runs_cache.get(cache_key)
        if hit is not None and hit[0] == lv:
            return hit[1]
        runs: list[Run] = []
        offs = bucket.offsets
        settings = self.settings
        n = len(bucket.params)
        last_key: object = None  # merge key of runs[-1]; None when it cannot be extended
        for ps, pe, group in bucket.segments:
            for j in range(ps, pe):
                s = settings[bucket.params[j]]
                own = bool(s.maps[0]) or (group is None and bool(s.maps[1]))
                merge = None if own else ("group", id(group)) if group is not None else ("defaults",)
                if merge is not None and merge == last_key:
                    r = runs[-1]
                    r.pend = j + 1
                    r.eend = offs[j + 1]
                    continue
                runs.append(Run(j, j + 1, offs[j], offs[j + 1], s, whole=False))
                last_key = merge
        if len(runs) == 1 and runs[0].pstart == 0 and runs[0].pend == n:
            runs[0].whole = True
        self._runs_cache[cache_key] = (lv, runs)
        return runs

    def _invalidate_flat(self) -> None:
        """Drops cached flat buffers so they are rebuilt from ``self.state`` on next use."""
        self.global_state.pop("__flat", None)

    # ------------------------------------------------------------------ children
    def set_child(self, key: str, module: Chainable | None) -> None:
        if key in self.children:
            warnings.warn(f"set_child overwriting child `{key}`", stacklevel=2)
        if module is None:
            return
        from .chain import maybe_chain

        self.children[key] = maybe_chain(module)

    def set_children_sequence(self, modules: Iterable[Chainable], prefix: str = "module_") -> None:
        from .chain import maybe_chain

        for i, m in enumerate(list(modules)):
            self.set_child(f"{prefix}{i}", maybe_chain(m))

    def get_children_sequence(self, prefix: str = "module_") -> list[Module]:
        return [self.children[f"{prefix}{i}"] for i in range(len(self.children)) if f"{prefix}{i}" in self.children]

    def inner_step(self, key: str, objective: Objective, must_exist: bool = True) -> Objective:
        """Steps ``objective`` through child ``key``."""
        child = self.children.get(key)
        if child is None:
            if must_exist:
                raise KeyError(f"{type(self).__name__}: child `{key}` doesn't exist; children: {list(self.children)}")
            return objective
        return child.step(objective)

    def inner_step_tensors(self, key: str, tensors: list[torch.Tensor], clone: bool,
                           params: Iterable[torch.Tensor] | None = None,
                           grads: Sequence[torch.Tensor] | None = None, loss: torch.Tensor | None = None,
                           closure: Callable | None = None, objective: Objective | None = None,
                           must_exist: bool = True) -> list[torch.Tensor]:
        """Steps a list of tensors through child ``key`` and returns its output."""
        child = self.children.get(key)
        if child is None:
            if must_exist:
                raise KeyError(f"{type(self).__name__}: child `{key}` doesn't exist; children: {list(self.children)}")
            return tensors
        if clone:
            tensors = [t.clone() for t in tensors]
        from .functional import step_tensors

        if params is None:
            fakes = self.global_state.get(f"__fake_{key}")
            if fakes is None or len(fakes) != len(tensors) or any(f.shape != t.shape for f, t in zip(fakes, tensors)):
                # stand-in parameters (state keys for the child): one element each, expanded to the shape
                fakes = [torch.empty((), device=t.device, dtype=t.dtype).expand(t.shape) for t in tensors]
                self.global_state[f"__fake_{key}"] = fakes
            params = fakes
        return step_tensors(child, tensors=tensors, params=params, grads=grads, loss=loss, closure=closure,
                            objective=objective)

    # ------------------------------------------------------------------ stepping
    def update(self, objective: Objective) -> None:
        """Updates internal state from ``objective``; must not modify the update."""

    def apply(self, objective: Objective) -> Objective:
        """Applies the module to ``objective.updates`` using the state."""
        raise NotImplementedError(f"{type(self).__name__} doesn't implement `apply`.")

    def step(self, objective: Objective) -> Objective:
        """``update`` then ``apply``."""
        self.update(objective)
        return self.apply(objective)

    def get_H(self, objective: Objective) -> Any:
        """A linear operator for the Hessian approximation kept by this module or a child, or None."""
        H = None
        for k, v in self.children.items():
            Hv = v.get_H(objective)
            if H is not None and Hv is not None:
                raise RuntimeError(f"Two children of {self} have a hessian, second one is {k}={v}")
            if Hv is not None:
                H = Hv
        return H

    def reset(self) -> None:
        """Clears state and global state (keeping the random generator) and resets children."""
        self.state.clear()
        generator = self.global_state.get("generator")
        self.global_state.clear()
        if generator is not None:
            self.global_state["generator"] = generator
        for c in self.children.values():
            c.reset()

    def reset_for_online(self) -> None:
        """Resets buffers that depend on the previous evaluation (used by ``Online``)."""
        for c in self.children.values():
            c.reset_for_online()

    def get_generator(self, device: torch.types.Device, seed: int | None) -> torch.Generator | None:
        """``None`` if ``seed`` is None, else a generator seeded once and kept in ``global_state``."""
        if seed is None:
            return None
        gen = self.global_state.get("generator")
        if gen is None or gen.device != torch.device(device):
            gen = torch.Generator(device).manual_seed(seed)
            self.global_state["generator"] = gen
        return gen

    # ------------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, Any]:
        """Module state keyed by ``id`` of the parameters (as torchzero does)."""
        return {
            "state": {id(k): v for k, v in self.state.items()},
            "settings": {"local": {id(k): dict(v.maps[0]) for k, v in self.settings.items()}},
            "global_state": {k: v for k, v in self.global_state.items() if not k.startswith("__flat")},
            "extra": self._extra_pack(),
            "children": {k: v.state_dict() for k, v in self.children.items()},
        }

    def _extra_pack(self) -> dict:
        return {}

    def _extra_unpack(self, d: dict) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["_runs_cache"] = {}
        d["_layout_cache"] = None
        for k in _STEP_CACHES:  # per-layout caches of the fused paths: rebuilt on the next step
            d.pop(k, None)
        d["settings"] = dict(self.settings)
        d["state"] = dict(self.state)
        d["global_state"] = {k: v for k, v in self.global_state.items() if not k.startswith("__flat")}
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        settings = d.pop("settings")
        state = d.pop("state")
        self.__dict__.update(d)
        self.settings = defaultdict(self._new_settings, settings)
        self.state = defaultdict(dict, state)

    def __repr__(self) -> str:
        s = type(self).__name__
        if self.children:
            s = f"{s}({', '.join(f'{k}={v}' for k, v in self.children.items())})"
        return s


def _initial_value(p: torch.Tensor, init: Any, i: int) -> Any:
    if callable(init):
        return init(p)
    if isinstance(init, str):
        raise ValueError(f"unknown state init {init!r}")
    if isinstance(init, (list, tuple)):
        v = init[i]
        return v.clone() if isinstance(v, torch.Tensor) else v
    if isinstance(init, torch.Tensor):
        return init.detach().clone()
    return init


Chainable = Union[Module, Sequence[Module]]
