"""The Python face of tzfast's native ops.

Each op has a thin wrapper (native when the extension is loaded, see ``tzfast._native``), a
fake kernel for ``torch.compile`` and a pure-torch reference twin named ``<op>_reference_``.
The math is specified in ``docs/native-ops.md`` (elementwise) and ``docs/perturbation.md``
(random directions).
"""
from __future__ import annotations

from .._native import HAS_EXTENSION, build_info
from . import elementwise, newton_schulz, perturb
from .elementwise import *  # noqa: F403
from .elementwise import __all__ as _elementwise_all
from .perturb import *  # noqa: F403
from .perturb import __all__ as _perturb_all

__all__ = ["HAS_EXTENSION", "build_info", "elementwise", "newton_schulz", "perturb", *_elementwise_all, *_perturb_all]
