"""Laplacian smoothing of the update (Osher et al., "Laplacian smoothing gradient descent")."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ...core.transform import Target, TensorTransform

__all__ = ["LaplacianSmoothing", "laplacian_denominator", "laplacian_smooth"]

_FFT_DTYPES = (torch.float32, torch.float64)


def laplacian_denominator(numel: int, sigma: float, dtype: torch.dtype = torch.float32,
                          device: torch.types.Device = None) -> torch.Tensor:
    """The Fourier-space denominator ``1 - sigma * fft(v)`` of the smoothing solve, real, ``numel // 2 + 1`` entries.

    ``v = [-2, 1, 0, ..., 0, 1]`` is the first column of the periodic 1-D discrete Laplacian, so
    ``(I - sigma * L) u = g`` is solved by ``u = ifft(fft(g) / denominator)``. ``v`` is symmetric,
    so its transform is real and only the non-negative frequencies (an ``rfft``) are kept.
    ``v`` is built as torchzero builds it: for ``numel == 2`` that is ``[-2, 1]``; a single
    element has a zero Laplacian (denominator 1, no smoothing).

    Args:
        numel: length of the vector being smoothed.
        sigma: amount of smoothing.
        dtype: real dtype of the result (float32 or float64). Defaults to float32.
        device: device of the result. Defaults to None (the default device).
    """
    if numel < 1:
        raise ValueError(f"laplacian_denominator: `numel` must be >= 1, got {numel}")
    v = torch.zeros(numel, dtype=dtype, device=device)
    if numel > 1:
        v[0] = -2
        v[1] = 1
        v[-1] = 1
    return 1 - sigma * torch.fft.rfft(v).real


def laplacian_smooth(tensor: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``tensor`` (flattened) smoothed with a denominator from :func:`laplacian_denominator`; same shape and dtype."""
    x = tensor.reshape(-1)
    if x.dtype not in _FFT_DTYPES:
        x = x.float()
    out = torch.fft.irfft(torch.fft.rfft(x) / denominator, n=x.numel())
    return out.to(tensor.dtype).view_as(tensor)


def _batched_smooth(tensors: Sequence[torch.Tensor], denominator: torch.Tensor) -> list[torch.Tensor]:
    """Smooths several tensors of the same numel, dtype and device in one batched FFT."""
    if len(tensors) == 1:
        return [laplacian_smooth(tensors[0], denominator)]
    x = torch.stack([t.reshape(-1) for t in tensors])
    if x.dtype not in _FFT_DTYPES:
        x = x.float()
    out = torch.fft.irfft(torch.fft.rfft(x, dim=1) / denominator, n=x.size(1), dim=1)
    return [o.to(t.dtype).view_as(t) for o, t in zip(out, tensors, strict=True)]


class LaplacianSmoothing(TensorTransform):
    """Applies Laplacian smoothing to the update with a fast Fourier transform solver.

    Each update ``g`` (a parameter's, or all of them as one vector) is replaced by the solution
    ``u`` of ``(I - sigma * L) u = g``, with ``L`` the 1-D periodic discrete Laplacian (stencil
    ``[1, -2, 1]``) of the flattened vector: ``u = ifft(fft(g) / (1 - sigma * fft(v)))``,
    ``v = [-2, 1, 0, ..., 0, 1]``. This damps high-frequency components of the update, which can
    improve generalization. The denominators depend only on the length and ``sigma``; they are
    computed once and cached (shared by parameters of the same size), and parameters of equal
    size are smoothed in one batched FFT.

    Args:
        sigma: amount of smoothing. Defaults to 1.
        layerwise: if True, each parameter's update is smoothed separately; otherwise all updates
            are concatenated into one vector and smoothed together. Defaults to True.
        min_numel: with ``layerwise``, parameters with ``numel <= min_numel`` are left unchanged
            (as in torchzero the comparison is strict: a parameter is smoothed when it has more
            than ``min_numel`` elements). Defaults to 4.
        target: what is smoothed: ``'update'`` (default), ``'grad'``, ``'closure'`` (the
            gradients the closure computes), ``'params_direct'``, ``'params_difference'`` or
            ``'update_difference'``.

    References:
        Osher, S., Wang, B., Yin, P., Luo, X., Barekat, F., Pham, M., & Lin, A. (2022).
        Laplacian smoothing gradient descent. Research in the Mathematical Sciences, 9(3), 55.
        arXiv:1806.06317.

    Examples:
        Laplacian smoothing gradient descent, as in the paper:

        >>> opt = tz.Modular(model.parameters(), tz.m.LaplacianSmoothing(), tz.m.LR(1e-2))
    """

    def __init__(self, sigma: float = 1, layerwise: bool = True, min_numel: int = 4, target: Target = "update"):
        if not isinstance(sigma, (int, float)) or isinstance(sigma, bool):
            raise TypeError(f"LaplacianSmoothing: `sigma` must be a number, got {type(sigma).__name__}")
        if not isinstance(min_numel, int) or isinstance(min_numel, bool):
            raise TypeError(f"LaplacianSmoothing: `min_numel` must be an int, got {type(min_numel).__name__}")
        super().__init__(dict(sigma=sigma, layerwise=layerwise, min_numel=min_numel), target=target)
        self.global_state["full_denominator"] = None

    def _denominator(self, numel: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
        """A cached denominator for (numel, sigma, real FFT dtype, device)."""
        dtype = like.dtype if like.dtype in _FFT_DTYPES else torch.float32
        cache: dict[tuple, torch.Tensor] = self.global_state.setdefault("__denominators", {})
        key = (numel, float(sigma), dtype, like.device)
        d = cache.get(key)
        if d is None:
            d = cache[key] = laplacian_denominator(numel, sigma, dtype, like.device)
        return d

    @torch.no_grad()
    def multi_tensor_apply(self, tensors: list[torch.Tensor], params: list[torch.Tensor],
                           grads: list[torch.Tensor] | None, loss: Any, states: list[dict[str, Any]],
                           settings: Sequence[Mapping[str, Any]]) -> Sequence[torch.Tensor]:
        if not tensors:
            return tensors
        if settings[0]["layerwise"]:
            out: list[torch.Tensor] = list(tensors)
            groups: dict[tuple, list[int]] = {}
            for i, (t, st, s) in enumerate(zip(tensors, states, settings, strict=True)):
                n = t.numel()
                if n <= s["min_numel"]:
                    continue
                sigma = s["sigma"]
                d = st.get("denominator")
                if d is None or st.get("denominator_sigma") != sigma or d.device != t.device \
                        or d.numel() != n // 2 + 1:
                    d = st["denominator"] = self._denominator(n, sigma, t)
                    st["denominator_sigma"] = sigma
                groups.setdefault((n, t.dtype, t.device, id(d)), []).append(i)
            for idx in groups.values():
                d = states[idx[0]]["denominator"]
                for i, o in zip(idx, _batched_smooth([tensors[i] for i in idx], d), strict=True):
                    out[i] = o
            return out

        # all tensors as one vector
        sigma = settings[0]["sigma"]
        vec = torch.cat([t.reshape(-1) for t in tensors])
        d = self.global_state.get("full_denominator")
        if d is None or self.global_state.get("full_denominator_sigma") != sigma or d.device != vec.device \
                or d.numel() != vec.numel() // 2 + 1:
            d = self.global_state["full_denominator"] = self._denominator(vec.numel(), sigma, vec)
            self.global_state["full_denominator_sigma"] = sigma
        smoothed = laplacian_smooth(vec, d)
        out, i = [], 0
        for t in tensors:
            n = t.numel()
            out.append(smoothed[i:i + n].view_as(t).to(t.dtype))
            i += n
        return out
