from __future__ import annotations

from .weight_decay import *  # noqa: F403
from .weight_decay import __all__ as _wd

__all__ = [*_wd]
