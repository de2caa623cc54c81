"""Restart strategies: reset the state of other modules when a condition holds."""
from __future__ import annotations

from .restarts import *  # noqa: F403
from .restarts import __all__ as _restarts

__all__ = [*_restarts]
