from __future__ import annotations

from .lr import *  # noqa: F403
from .lr import __all__ as _lr

__all__ = [*_lr]
