"""``Split``: different module chains for two subsets of the parameters."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Union

import torch

from ...core.module import Chainable, Module
from ...core.objective import Objective

__all__ = ["Split"]

_SingleFilter = Union[Callable[[torch.Tensor], bool], torch.Tensor, Iterable[torch.Tensor], torch.nn.Module,
                      Iterable[torch.nn.Module]]
Filter = Union[_SingleFilter, Iterable[_SingleFilter]]


def _make_filter(filter: Any, who: str) -> Callable[[torch.Tensor], bool]:
    """A predicate on tensors; tensors and modules given in ``filter`` are collected once, by identity."""
    ids: set[int] = set()
    funcs: list[Callable[[torch.Tensor], bool]] = []

    def collect(f: Any) -> None:
        if isinstance(f, torch.Tensor):
            ids.add(id(f))
        elif isinstance(f, torch.nn.Module):
            ids.update(id(p) for p in f.parameters())
        elif callable(f):
            funcs.append(f)
        elif isinstance(f, Iterable) and not isinstance(f, (str, bytes)):
            for item in f:
                collect(item)
        else:
            raise TypeError(f"{who}: `filter` must be a callable on tensors, a tensor, an nn.Module, or an iterable "
                            f"of those, got {type(f).__name__}: {f!r}")

    collect(filter)
    if not funcs:
        return lambda p: id(p) in ids
    return lambda p: id(p) in ids or any(bool(f(p)) for f in funcs)


def _check_chainable(who: str, name: str, value: Any) -> None:
    if value is None or isinstance(value, Module):
        return
    if isinstance(value, (list, tuple)) and len(value) > 0:
        for v in value:
            _check_chainable(who, name, v)
        return
    raise TypeError(f"{who}: `{name}` must be a module, a non-empty list of modules, or None, "
                    f"got {type(value).__name__}: {value!r}")


def _step_subset(module: Module, idxs: list[int], objective: Objective) -> None:
    """Steps ``module`` on the parameters ``idxs`` and writes its update into ``objective.updates``."""
    sub = objective.clone(clone_updates=False, parent=objective)
    sub.params = [objective.params[i] for i in idxs]
    sub.grads = None if objective.grads is None else [objective.grads[i] for i in idxs]
    sub.updates = None if objective.updates is None else [objective.updates[i] for i in idxs]
    sub = module.step(sub)
    if sub.updates is None:
        return
    if objective.updates is None:
        # the other subset keeps the gradient (computed by now through the parent link, if needed)
        objective.updates = [None] * len(objective.params) if objective.grads is None else \
            [g.clone() for g in objective.grads]  # type: ignore[list-item]
    for i, u in zip(idxs, sub.updates):
        objective.updates[i] = u


class Split(Module):
    """Applies ``true`` to the parameters selected by ``filter`` and ``false`` to the others.

    A parameter in neither chain's subset (``true`` or ``false`` is None) keeps its input (the
    gradient) as its update. Loss and gradients computed inside a chain are shared with the
    whole step.

    Args:
        filter: selects the parameters for ``true``: a callable on a tensor returning a bool
            (e.g. ``lambda p: p.ndim >= 2``), a tensor, an iterable of tensors (e.g.
            ``model.head.parameters()``, collected once), an ``nn.Module``, or an iterable of these
            (any match selects).
        true: modules for the selected parameters, or None.
        false: modules for the other parameters, or None.

    The filter is evaluated once per parameter list (again when the optimizer's parameters
    change), not on every step.

    Examples:
        Muon with an Adam fallback:

        >>> opt = tz.Optimizer(model.parameters(), tz.m.NAG(0.95),
        ...                    tz.m.Split(lambda p: p.ndim >= 2, true=tz.m.Orthogonalize(),
        ...                               false=[tz.m.Adam(0.9, 0.95), tz.m.Mul(1 / 66)]),
        ...                    tz.m.LR(1e-2))
    """

    def __init__(self, filter: Filter, true: Chainable | None, false: Chainable | None):
        who = type(self).__name__
        self._filter = _make_filter(filter, who)
        _check_chainable(who, "true", true)
        _check_chainable(who, "false", false)
        super().__init__()
        if true is not None:
            self.set_child("true", true)
        if false is not None:
            self.set_child("false", false)
        self._split_cache: tuple[list[int], list[int], list[int]] | None = None

    def update(self, objective: Objective) -> None:
        raise RuntimeError(f"{type(self).__name__} has no separate update; use step")

    def apply(self, objective: Objective) -> Objective:
        raise RuntimeError(f"{type(self).__name__} has no separate apply; use step")

    def _indices(self, params: list[torch.Tensor]) -> tuple[list[int], list[int]]:
        ids = list(map(id, params))
        cached = self._split_cache
        if cached is not None and cached[0] == ids:
            return cached[1], cached[2]
        true_idxs, false_idxs = [], []
        for i, p in enumerate(params):
            (true_idxs if self._filter(p) else false_idxs).append(i)
        self._split_cache = (ids, true_idxs, false_idxs)
        return true_idxs, false_idxs

    def step(self, objective: Objective) -> Objective:
        true_idxs, false_idxs = self._indices(objective.params)
        if "true" in self.children and true_idxs:
            _step_subset(self.children["true"], true_idxs, objective)
        if "false" in self.children and false_idxs:
            _step_subset(self.children["false"], false_idxs, objective)
        return objective

    def __getstate__(self) -> dict[str, Any]:
        d = super().__getstate__()
        d["_split_cache"] = None
        return d
