from __future__ import annotations

from .momentum import *  # noqa: F403
from .momentum import __all__ as _momentum

__all__ = [*_momentum]
