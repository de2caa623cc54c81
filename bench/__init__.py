"""Side-by-side benchmarks for tzfast (see shared/BENCHMARKS.md).

Run everything with ``python -m bench.run``; ``python -m bench.run --quick`` is the
smoke-sized run used by the test suite (it checks the harness, never a speed).
"""

from __future__ import annotations

__all__: list[str] = []
