"""Every module, re-exported flat as ``tz.m.<Name>``.

The list is generated from each family's ``__all__``; adding a family means adding it to
``_FAMILIES`` below, nothing else.
"""
from __future__ import annotations

import importlib
from typing import Any

_FAMILIES = ("adaptive", "momentum", "step_size", "ops", "clipping", "weight_decay", "smoothing", "grad_approximation",
             "line_search", "quasi_newton", "conjugate_gradient", "restarts", "psgd", "matrix_preconditioners", "meta",
             "orthogonalization", "second_order", "least_squares", "trust_region")

__all__: list[str] = []
_origin: dict[str, str] = {}
for _family in _FAMILIES:
    _mod = importlib.import_module(f"{__name__}.{_family}")
    for _name in _mod.__all__:
        if _name in _origin:
            raise ImportError(f"tz.m.{_name} is exported by both {_origin[_name]} and {_family}")
        _origin[_name] = _family
        globals()[_name] = getattr(_mod, _name)
        __all__.append(_name)
del _family, _mod, _name


def family_of(name: str) -> str:
    """The family (sub-package) a module of ``tz.m`` comes from."""
    return _origin[name]


def __getattr__(name: str) -> Any:
    raise AttributeError(f"module 'tzfast.m' has no attribute {name!r}; implemented modules: "
                         f"see tzfast.m.__all__ ({len(__all__)} so far)")
