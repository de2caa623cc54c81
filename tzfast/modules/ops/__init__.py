from __future__ import annotations

from .binary import *  # noqa: F403
from .binary import __all__ as _binary
from .higher_level import *  # noqa: F403
from .higher_level import __all__ as _higher
from .multi import *  # noqa: F403
from .multi import __all__ as _multi
from .unary import *  # noqa: F403
from .unary import __all__ as _unary
from .utility import *  # noqa: F403
from .utility import __all__ as _utility

__all__ = [*_binary, *_higher, *_multi, *_unary, *_utility]
