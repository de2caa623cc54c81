"""Flat buckets: how a list of parameters maps onto contiguous per-(device, dtype) buffers.

A :class:`Layout` is built once per distinct parameter list (the optimizer caches it and
rebuilds it only when the list changes, e.g. after ``add_param_group``). Each
:class:`Bucket` holds the parameters of one (device, dtype), their element offsets inside the
bucket's flat buffers, and the param-group segments used to resolve settings without a
per-parameter dictionary walk.
"""
from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch

__all__ = ["Layout", "Bucket", "Run"]


class Run:
    """A contiguous slice of a bucket whose parameters share one settings mapping.

    ``pstart:pend`` index the bucket's parameter list, ``estart:eend`` its flat buffers.
    ``settings`` is ``module -> Mapping`` filled lazily by :meth:`Bucket.runs`.
    """

    __slots__ = ("pstart", "pend", "estart", "eend", "settings", "whole")

    def __init__(self, pstart: int, pend: int, estart: int, eend: int, settings: Mapping[str, Any], whole: bool):
        self.pstart = pstart
        self.pend = pend
        self.estart = estart
        self.eend = eend
        self.settings = settings
        self.whole = whole

    def take(self, tensors: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """The run's slice of a per-bucket tensor list."""
        return tensors if self.whole else tensors[self.pstart:self.pend]

    def narrow(self, flat: torch.Tensor) -> torch.Tensor:
        """The run's slice of a flat bucket buffer."""
        return flat if self.whole else flat[self.estart:self.eend]


class Bucket:
    __slots__ = ("index", "device", "dtype", "params", "param_idx", "numels", "offsets", "numel",
                 "segments", "_getter", "identity", "global_offsets")

    def __init__(self, index: int, params: list[torch.Tensor], param_idx: list[int],
                 segments: list[tuple[int, int, Any]], identity: bool, global_offsets: list[int]):
        self.index = index
        # element offset of each parameter in the layout's global order (DESIGN principle 4)
        self.global_offsets = global_offsets
        self.params = params
        self.param_idx = param_idx
        self.device = params[0].device
        self.dtype = params[0].dtype
        self.numels = [p.numel() for p in params]
        self.offsets = [0, *itertools.accumulate(self.numels)]
        self.numel = self.offsets[-1]
        self.segments = segments
        self.identity = identity
        if identity:
            self._getter: Callable[[Sequence[Any]], Any] | None = None
        elif len(param_idx) == 1:
            i = param_idx[0]
            self._getter = lambda seq: [seq[i]]
        else:
            g = operator.itemgetter(*param_idx)
            self._getter = lambda seq: list(g(seq))

    def take(self, seq: Sequence[Any]) -> Sequence[Any]:
        """This bucket's entries of a list aligned with the layout's params."""
        if self._getter is None:
            return seq
        return self._getter(seq)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of a flat buffer of this bucket."""
        return [flat[o:o + n].view(p.shape) for p, o, n in zip(self.params, self.offsets, self.numels)]


class Layout:
    """Parameters grouped into (device, dtype) buckets, in the order they were given.

    Args:
        params: the parameters, in optimizer order.
        groups: for each parameter the explicit settings dict of its param group, or None when
            the parameter is not managed by an optimizer (fake parameters of inner steps).
    """

    _counter = itertools.count()

    def __init__(self, params: Sequence[torch.Tensor], groups: Sequence[Mapping[str, Any] | None] | None = None):
        self.params = list(params)
        self.token = next(Layout._counter)
        if groups is None:
            groups = [None] * len(self.params)
        self.groups = list(groups)
        self.ids = list(map(id, self.params))
        self.numel = sum(p.numel() for p in self.params)

        keyed: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(self.params):
            keyed.setdefault((p.device, p.dtype), []).append(i)

        starts = [0, *itertools.accumulate(p.numel() for p in self.params)]
        self.buckets: list[Bucket] = []
        single = len(keyed) == 1
        for bi, idx in enumerate(keyed.values()):
            bparams = [self.params[i] for i in idx]
            segments: list[tuple[int, int, Any]] = []
            for j, i in enumerate(idx):
                g = self.groups[i]
                if segments and segments[-1][2] is g and g is not None:
                    s = segments[-1]
                    segments[-1] = (s[0], j + 1, g)
                else:
                    segments.append((j, j + 1, g))
            self.buckets.append(Bucket(bi, bparams, idx, segments, identity=single,
                                       global_offsets=[starts[i] for i in idx]))

    def __len__(self) -> int:
        return len(self.params)


def prod(shape: Sequence[int]) -> int:
    return math.prod(shape)
