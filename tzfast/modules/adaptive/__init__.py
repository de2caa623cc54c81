from __future__ import annotations

from .adam import *  # noqa: F403
from .adam import __all__ as _adam

__all__ = [*_adam]
