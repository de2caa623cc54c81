"""``Chain``: a sequence of modules stepped in order."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .functional import _chain_step
from .module import Chainable, Module
from .objective import Objective

__all__ = ["Chain", "maybe_chain", "flatten_modules"]


def _flatten(items: Any, who: str = "Chain") -> list[Module]:
    out: list[Module] = []
    for m in items:
        if isinstance(m, Module):
            out.append(m)
        elif isinstance(m, (list, tuple)):
            out.extend(_flatten(m, who))
        else:
            raise TypeError(f"{who}: expected a Module or a list/tuple of modules, got {type(m).__name__}: {m!r}")
    return out


class Chain(Module):
    """Steps its children in order (a nested list of modules is a ``Chain``)."""

    def __init__(self, *modules: Module | Iterable[Module]):
        super().__init__()
        for i, module in enumerate(_flatten(modules)):
            self.set_child(f"module_{i}", module)

    def _sequence(self) -> list[Module]:
        return [self.children[f"module_{i}"] for i in range(len(self.children))]

    def update(self, objective: Objective) -> None:
        if len(self.children) > 1:
            raise RuntimeError("can't call `update` on a Chain with more than one child; use `step`")
        if self.children:
            self.children["module_0"].update(objective)

    def apply(self, objective: Objective) -> Objective:
        if len(self.children) > 1:
            raise RuntimeError("can't call `apply` on a Chain with more than one child; use `step`")
        if not self.children:
            return objective
        return self.children["module_0"].apply(objective)

    def step(self, objective: Objective) -> Objective:
        return _chain_step(objective, self._sequence())

    def __repr__(self) -> str:
        name = type(self).__name__
        if self.children:
            name = "C" if name == "Chain" else name
            return f"{name}({', '.join(str(m) for m in self.children.values())})"
        return name


def maybe_chain(*modules: Chainable) -> Module:
    """The module itself when one is given, otherwise a ``Chain`` of them."""
    flat = _flatten(modules)
    if len(flat) == 1:
        return flat[0]
    return Chain(*flat)


def flatten_modules(*modules: Chainable) -> list[Module]:
    """Every module, children included, depth first."""
    flat: list[Module] = []
    for m in modules:
        if isinstance(m, Module):
            flat.append(m)
            flat.extend(flatten_modules(*m.children.values()))
        else:
            flat.extend(flatten_modules(*m))
    return flat
