"""Modules that route parts of the step through other modules: ``Split`` and ``Graft``."""
from __future__ import annotations

from .graft import Graft, GraftModules
from .split import Split

__all__ = ["Split", "Graft", "GraftModules"]
