"""Seeded random directions for the randomized estimators: keys, and moving the parameters.

A direction is never stored. Sample ``k`` of key ``K`` is ``u_k = sigma_k * z(K, k, i)`` over the
global element index ``i`` of the parameters (``docs/perturbation.md``), with ``sigma_k = 1``
except for ``'sphere'`` (a Gaussian direction rescaled to norm ``sqrt(N)``). Every write to the
parameters, and every materialised estimate, is one ``accumulate_directions_`` call per bucket
(per run of identical settings inside a bucket) that generates all the directions it combines.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...core.derivatives import DISTRIBUTIONS
from ...core.elementwise import tail_scales, tails_align

if TYPE_CHECKING:
    from ...core.layout import Layout
    from ...core.module import Module

__all__ = ["DirectionSet", "Walk", "check_distribution", "check_seed", "mix_key", "next_key", "tail_scales",
           "tails_align"]

_MASK = (1 << 64) - 1
_GAUSSIAN = 0


_ENGINE: Any = None


def _perturb() -> Any:
    """``tzfast.ops.perturb`` (imported on first use)."""
    global _ENGINE
    if _ENGINE is None:
        from ...ops import perturb

        _ENGINE = perturb
    return _ENGINE


# ----------------------------------------------------------------------------- arguments
def check_distribution(who: str, distribution: Any) -> str:
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        raise ValueError(f"{who}: unknown distribution {distribution!r}; expected one of "
                         f"{', '.join(repr(d) for d in DISTRIBUTIONS)}")
    return distribution


def check_seed(who: str, seed: Any) -> None:
    if seed is None or isinstance(seed, torch.Generator):
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{who}: `seed` must be an int, a torch.Generator or None, got {type(seed).__name__}")


def check_n_samples(who: str, n_samples: Any) -> int:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int):
        raise TypeError(f"{who}: `n_samples` must be an int >= 1, got {type(n_samples).__name__}")
    if n_samples < 1:
        raise ValueError(f"{who}: `n_samples` must be >= 1, got {n_samples}")
    return n_samples


# ----------------------------------------------------------------------------- keys
def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def mix_key(*words: int) -> int:
    """A 64-bit key from integers (SplitMix64 chained over the words), as a signed int64."""
    h = 0
    for w in words:
        h = _splitmix64(h ^ (w & _MASK))
    return h - (1 << 64) if h >= 1 << 63 else h


def _draw_key(generator: torch.Generator | None) -> int:
    kw: dict[str, Any] = {} if generator is None else {"generator": generator, "device": generator.device}
    return int(torch.randint(-(1 << 63), (1 << 63) - 1, (1,), dtype=torch.int64, **kw).item())


def next_key(module: Module, seed: int | torch.Generator | None, step: int) -> int:
    """A fresh key: drawn from torch's default generator (``seed=None``) or from ``seed`` (a
    generator), or for an int ``seed`` mixed from ``(seed, step, number of keys drawn this step)``."""
    if seed is None:
        return _draw_key(None)
    if isinstance(seed, torch.Generator):
        return _draw_key(seed)
    gs = module.global_state
    if gs.get("key_step") != step:
        gs["key_step"] = step
        gs["key_draws"] = 0
    i = gs["key_draws"]
    gs["key_draws"] = i + 1
    return mix_key(seed, step, i)


# ----------------------------------------------------------------------------- tail multipliers
# ----------------------------------------------------------------------------- directions
class Segment:
    """A run of parameters that share their settings: one engine call."""

    __slots__ = ("params", "offsets", "settings", "index", "bucket", "run", "device")

    def __init__(self, params: Sequence[torch.Tensor], offsets: Sequence[int], settings: Mapping[str, Any],
                 bucket: int, run: int, index: Sequence[int]):
        self.params = list(params)
        self.offsets = list(offsets)
        self.settings = settings
        self.bucket = bucket
        self.run = run
        self.index = list(index)  # positions of the parameters in the layout's list
        self.device = self.params[0].device


def segments_of(module: Module, layout: Layout) -> list[Segment]:
    """The segments (runs of equal settings inside each bucket) of ``module`` over ``layout``, cached
    as long as the runs are."""
    runs = [module._runs(layout, b) for b in layout.buckets]
    cached = module.__dict__.get("_segments_cache")
    if cached is not None and cached[0] == layout.token and all(a is b for a, b in zip(cached[1], runs, strict=True)):
        return cached[2]
    segments = []
    for b, bruns in zip(layout.buckets, runs, strict=True):
        for ri, run in enumerate(bruns):
            segments.append(Segment(b.params[run.pstart:run.pend], b.global_offsets[run.pstart:run.pend],
                                    run.settings, b.index, ri, b.param_idx[run.pstart:run.pend]))
    module.__dict__["_segments_cache"] = (layout.token, runs, segments)
    return segments


class DirectionSet:
    """``n`` seeded directions over the parameters of ``layout``, split into segments.

    Args:
        module: whose settings runs split the buckets into segments.
        layout: the parameters (global element offsets, buckets).
        key: the 64-bit key.
        n: number of directions (samples ``0 .. n-1``).
        distribution: one of ``DISTRIBUTIONS``.
        sq_norms: a cache of ``||z_k||^2`` for this key (shared by the estimates of a step).
    """

    def __init__(self, module: Module, layout: Layout, key: int, n: int, distribution: str,
                 sq_norms: dict[int, float] | None = None):
        self.layout = layout
        self.key = key
        self.n = n
        self.distribution = distribution
        self.numel = layout.numel
        self.code = _GAUSSIAN if distribution == "sphere" else _perturb().distribution_code(distribution)
        self.segments = segments_of(module, layout)
        self._sq_norms: dict[int, float] = {} if sq_norms is None else sq_norms
        # per segment, the cheapest entry to the engine (a direct call on the CPU)
        calls_for = _perturb().accumulate_directions_for
        self.calls = [calls_for(seg.device) for seg in self.segments]

    def rekey(self, key: int, sq_norms: dict[int, float]) -> None:
        """The same directions' layout with another key (and that key's norm cache)."""
        self.key = key
        self._sq_norms = sq_norms

    def sq_norm_z(self, k: int) -> float:
        """``||z_k||^2`` (before the sphere rescaling)."""
        v = self._sq_norms.get(k)
        if v is None:
            if self.code == _perturb().distribution_code("rademacher"):
                v = float(self.numel)
            else:
                v = float(_perturb().direction_sq_norm(self.key, k, self.code, self.numel))
            self._sq_norms[k] = v
        return v

    def sigma(self, k: int) -> float:
        """The factor from ``z_k`` to ``u_k`` (1 except for ``'sphere'``)."""
        if self.distribution != "sphere" or self.numel == 0:
            return 1.0
        sq = self.sq_norm_z(k)
        return math.sqrt(self.numel / sq) if sq > 0 else 0.0

    def norm(self, k: int) -> float:
        """``||u_k||``."""
        if self.distribution == "sphere":
            return math.sqrt(self.numel)
        return math.sqrt(self.sq_norm_z(k))

    def combine_(self, outs: Sequence[Sequence[torch.Tensor]] | None,
                 coeffs: Callable[[Segment], dict[int, float]], accumulate: bool) -> None:
        """For every segment: ``out (+)= sum_k coeffs(segment)[k] * z_k`` (``u_k / sigma_k``).

        ``outs`` gives each segment's output tensors; None writes the parameters.
        """
        for si, seg in enumerate(self.segments):
            cs = coeffs(seg)
            samples = [k for k, c in cs.items() if c != 0.0]
            out = seg.params if outs is None else outs[si]
            if not samples:
                if not accumulate:
                    for t in out:
                        t.zero_()
                continue
            self.calls[si](out, seg.offsets, self.key, samples, [float(cs[k]) for k in samples], self.code, 1.0,
                           accumulate)

    def outputs(self, tensors: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """``tensors`` (aligned with the layout's parameters) split by segment."""
        return [[tensors[i] for i in seg.index] for seg in self.segments]


class Walk:
    """Moves the parameters along the directions of a :class:`DirectionSet` and back.

    Moves are queued and applied in one engine call when the parameters are next needed
    (:meth:`flush`), so the move back from one sample and the move out to the next are one
    pass. :meth:`undo` takes the parameters back after an exception.

    Args:
        dirs: the directions.
        unit: per segment and sample, the coefficient of ``z_k`` for a move of 1.
    """

    def __init__(self, dirs: DirectionSet, unit: Callable[[Segment, int], float]):
        self.dirs = dirs
        self.unit = unit
        self.pending: dict[int, int] = {}
        self.applied: dict[int, int] = {}

    def move(self, k: int, m: int) -> None:
        self.pending[k] = self.pending.get(k, 0) + m

    def _coeffs(self, moves: Mapping[int, int], extra: Callable[[Segment], dict[int, float]] | None
                ) -> Callable[[Segment], dict[int, float]]:
        unit = self.unit

        def coeffs(seg: Segment) -> dict[int, float]:
            out = {k: m * unit(seg, k) for k, m in moves.items() if m != 0}
            if extra is not None:
                for k, c in extra(seg).items():
                    out[k] = out.get(k, 0.0) + c
            return out

        return coeffs

    def _record(self) -> None:
        for k, m in self.pending.items():
            self.applied[k] = self.applied.get(k, 0) + m
        self.pending.clear()

    def flush(self) -> None:
        """Applies the queued moves."""
        if any(self.pending.values()):
            self.dirs.combine_(None, self._coeffs(self.pending, None), True)
        self._record()

    def finish(self, extra: Callable[[Segment], dict[int, float]]) -> None:
        """Applies the queued moves and ``sum_k extra(segment)[k] z_k`` in one pass."""
        self.dirs.combine_(None, self._coeffs(self.pending, extra), True)
        self._record()

    def undo(self) -> None:
        """Moves back by what has been applied (after an exception); queued moves are dropped."""
        self.pending.clear()
        back = {k: -m for k, m in self.applied.items() if m != 0}
        if back:
            self.dirs.combine_(None, self._coeffs(back, None), True)
        self.applied.clear()
