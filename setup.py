"""Thin shim from pip/setuptools to CMake: CMakeLists.txt is the one build description.

`pip install --no-build-isolation -e .` (torch already installed) configures CMake once in
$TZFAST_BUILD_DIR (default build/) with Ninja, builds the `_C` target, and setuptools puts
`_C*.so` inside `tzfast/`. A rebuild reruns only what Ninja finds out of date. Environment:

  TZFAST_BUILD_DIR   CMake build directory (default: build/ in the source tree)
  TZFAST_CUDA=1      -DTZFAST_CUDA=ON (CUDA kernels; needs a CUDA build of torch)
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "on", "true", "yes"}


def _tool(name: str) -> str:
    """A build tool from this interpreter's environment first, then PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"tzfast: '{name}' not found (pip install {name})")
    return found


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch.utils  # the build needs the installed torch (no build isolation)

        build_dir = Path(os.environ.get("TZFAST_BUILD_DIR") or ROOT / "build")
        if not build_dir.is_absolute():
            build_dir = ROOT / build_dir
        lib_dir = build_dir / "lib"  # stable, so CMake is configured once
        args = [
            _tool("cmake"), "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={_tool('ninja')}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={lib_dir}",
            f"-DTZFAST_CUDA={'ON' if _truthy(os.environ.get('TZFAST_CUDA')) else 'OFF'}",
        ]
        stamp = build_dir / "tzfast-configure.args"
        wanted = shlex.join(args)
        if not (build_dir / "CMakeCache.txt").exists() or not stamp.exists() \
                or stamp.read_text() != wanted:
            build_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(args, check=True)
            stamp.write_text(wanted)
        # Ninja reruns CMake by itself when CMakeLists.txt or a globbed directory changes.
        subprocess.run([_tool("cmake"), "--build", str(build_dir), "--target", "_C"], check=True)

        suffix = self.get_ext_filename("_C")[len("_C"):]
        built = lib_dir / f"_C{suffix}"
        if not built.exists():
            raise RuntimeError(f"tzfast: CMake did not produce {built}")
        dest = Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, dest)


setup(
    ext_modules=[CMakeExtension("tzfast._C")],
    cmdclass={"build_ext": CMakeBuild},
)
