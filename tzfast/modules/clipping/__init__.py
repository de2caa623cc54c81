from __future__ import annotations

from .clipping import *  # noqa: F403
from .clipping import __all__ as _clipping

__all__ = [*_clipping]
