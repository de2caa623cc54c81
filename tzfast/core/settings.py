"""Per-parameter settings with cheap change detection.

torchzero resolves settings through ``ChainMap(local, group, defaults)`` per parameter. tzfast
keeps that shape (so ``module.settings[p]['lr']`` still answers) but makes every map a
:class:`VersionedDict`: any write bumps a process-wide version number, and the hot path
re-resolves settings into per-bucket runs only when that number moved.

Two counters are kept apart: writes to param-group dicts (an LR scheduler, every step) only
invalidate group-level values (O(number of groups) to refresh), while writes to module defaults or
to module-local per-parameter overrides (rare) trigger a rescan of which parameters are overridden.
"""
from __future__ import annotations

from collections import ChainMap
from typing import Any

__all__ = ["VersionedDict", "LocalSettings", "GroupSettings", "versions"]

# [group_version, local_version]
_VERSIONS = [0, 0]


def versions() -> tuple[int, int]:
    return _VERSIONS[0], _VERSIONS[1]


class VersionedDict(dict):
    """A dict that bumps a version counter whenever it is written to."""

    _slot = 1

    def _bump(self) -> None:
        _VERSIONS[self._slot] += 1

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._bump()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._bump()

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(*args, **kwargs)
        self._bump()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self._bump()
        return super().setdefault(key, default)

    def pop(self, *args: Any) -> Any:  # type: ignore[override]
        self._bump()
        return super().pop(*args)

    def popitem(self) -> tuple[Any, Any]:
        self._bump()
        return super().popitem()

    def clear(self) -> None:
        super().clear()
        self._bump()

    def __ior__(self, other: Any) -> VersionedDict:  # type: ignore[override]
        self.update(other)
        return self

    def __reduce__(self) -> Any:
        return (self.__class__, (dict(self),))

    def __deepcopy__(self, memo: dict) -> VersionedDict:
        import copy

        return self.__class__({copy.deepcopy(k, memo): copy.deepcopy(v, memo) for k, v in self.items()})


class LocalSettings(VersionedDict):
    """Module-local per-parameter overrides (``set_param_groups``) and module defaults."""

    _slot = 1


class GroupSettings(VersionedDict):
    """The explicit entries of one optimizer param group (what schedulers write)."""

    _slot = 0


def make_settings(local: dict, group: dict, defaults: dict) -> ChainMap:
    return ChainMap(local, group, defaults)
