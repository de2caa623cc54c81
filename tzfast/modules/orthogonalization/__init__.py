"""Orthogonalization of updates (Muon, ⟂Grad)."""
from __future__ import annotations

from .orthogonalize import *  # noqa: F403
from .orthogonalize import __all__ as _orthogonalize
from .orthograd import *  # noqa: F403
from .orthograd import __all__ as _orthograd

__all__ = [*_orthogonalize, *_orthograd]
