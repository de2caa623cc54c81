from __future__ import annotations

from .barzilai_borwein import *  # noqa: F403
from .barzilai_borwein import __all__ as _barzilai_borwein
from .lr import *  # noqa: F403
from .lr import __all__ as _lr

__all__ = [*_lr, *_barzilai_borwein]
