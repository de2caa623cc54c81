"""Loading of the native extension ``tzfast._C``.

Importing ``tzfast._C`` registers the native ops as ``torch.ops.tzfast.*``. When the extension
cannot be imported, or ``TZFAST_NO_EXTENSION=1`` is set, every op runs on its pure-torch
reference twin (``tzfast.ops``), and exactly one :class:`RuntimeWarning` says so.
"""
from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType
from typing import Any

import torch  # noqa: F401  (libtorch must be loaded before _C)

from ._version import __version__

__all__ = ["HAS_EXTENSION", "LOAD_ERROR", "build_info"]


def _load() -> tuple[ModuleType | None, str | None]:
    if os.environ.get("TZFAST_NO_EXTENSION", "").strip() not in ("", "0"):
        return None, "disabled by TZFAST_NO_EXTENSION"
    try:
        return importlib.import_module(f"{__package__}._C"), None
    except ImportError as e:
        return None, f"{type(e).__name__}: {e}"


_C, LOAD_ERROR = _load()
HAS_EXTENSION: bool = _C is not None

if not HAS_EXTENSION:
    warnings.warn(
        f"tzfast: native extension not loaded ({LOAD_ERROR}); all ops run on their pure-torch "
        "reference twins, which are correct but slower",
        RuntimeWarning,
        stacklevel=2,
    )


def build_info() -> dict[str, Any]:
    """How the native extension was built, or a description of the pure-Python fallback.

    Keys: ``version``, ``extension`` (bool), ``simd_compiled`` (list), ``simd_selected`` (the
    SIMD level chosen at run time; ``TZFAST_SIMD=baseline`` forces baseline), ``cuda_enabled``,
    ``cuda_archs`` (list of str), ``compiler``, ``flags``; ``load_error`` without extension.
    """
    if _C is not None:
        info: dict[str, Any] = dict(_C.build_info())
        info["extension"] = True
        return info
    return {
        "version": __version__,
        "extension": False,
        "load_error": LOAD_ERROR,
        "simd_compiled": [],
        "simd_selected": "none",
        "cuda_enabled": False,
        "cuda_archs": [],
        "compiler": "",
        "flags": "",
    }
