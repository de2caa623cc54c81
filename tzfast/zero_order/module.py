"""``ZeroOrderGradientModule``: an ``nn.Module`` whose parameters get zeroth-order gradients."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .decorator import Method, _check_method, _check_num_samples, _check_sigma, zero_order

__all__ = ["ZeroOrderGradientModule"]

_DEFAULTS: dict[str, Any] = dict(method="naive", num_samples=1, sigma=1.0)


def _enable_zero_order(cls: type[ZeroOrderGradientModule], original: Callable[..., torch.Tensor],
                       settings: dict[str, Any]) -> None:
    """Replaces ``cls.forward`` by a zero-order differentiated version of ``original``."""
    method, num_samples, sigma = settings["method"], settings["num_samples"], settings["sigma"]

    @functools.wraps(original)
    def forward(self: ZeroOrderGradientModule, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.__dict__.get("_zero_order_depth", 0) > 0:
            # re-entered from functional_call below: the parameters are already substituted
            return original(self, *args, **kwargs)
        named = dict(self.named_parameters())
        if not named:
            raise RuntimeError(f"{type(self).__name__}: a ZeroOrderGradientModule needs parameters to estimate "
                               f"gradients for; this module has none")
        names = tuple(named)

        @zero_order(self.sample, method=method, argnums=0, num_samples=num_samples, sigma=sigma)
        def evaluate(flat_params: tuple[torch.Tensor, ...], *a: Any, **kw: Any) -> torch.Tensor:
            self.__dict__["_zero_order_depth"] = self.__dict__.get("_zero_order_depth", 0) + 1
            try:
                return torch.func.functional_call(self, dict(zip(names, flat_params, strict=True)), a, kw)
            finally:
                self.__dict__["_zero_order_depth"] -= 1

        return evaluate(tuple(named.values()), *args, **kwargs)

    forward.__zero_order_gradients_enabled__ = True  # type: ignore[attr-defined]
    cls.forward = forward  # type: ignore[method-assign]
    cls.__zero_order_forward__ = staticmethod(original)  # type: ignore[attr-defined]
    cls.__zero_order_settings__ = dict(settings)  # type: ignore[attr-defined]


class ZeroOrderGradientModule(nn.Module):
    """Base class of models whose parameters receive zeroth-order (ES) gradient estimates.

    Subclass it, choosing the estimator with class keywords, and implement ``forward`` (returning
    a scalar objective) and ``sample`` (the noise distribution). Calling the model evaluates
    ``forward`` once; differentiating the result with respect to ``model.parameters()`` gives
    the estimate of :func:`tzfast.zero_order.zero_order` (the documented ``'naive'``,
    ``'forward'`` or ``'antithetic'`` formula) instead of backpropagating through ``forward``,
    which may therefore be non-differentiable. ``forward`` is evaluated at perturbed parameters
    with ``torch.func.functional_call``; buffers are used as they are.

    Class keywords (each inherited from the parent class when not given):
        method: ``'naive'``, ``'forward'`` or ``'antithetic'``. Defaults to ``'naive'``.
        num_samples: number of noise samples per gradient estimate. Defaults to 1.
        sigma: the smoothing scale. Defaults to 1.0.

    To implement:
        ``forward(self, *args, **kwargs) -> Tensor``: the scalar objective.
        ``sample(self, sample_shape=torch.Size()) -> Tensor``: noise of shape ``sample_shape``
        with zero mean and unit variance per element (e.g. ``torch.randn(sample_shape)``).

    References:
        Salimans, T., Ho, J., Chen, X., Sidor, S., Sutskever, I. (2017). Evolution Strategies as a
        Scalable Alternative to Reinforcement Learning. arXiv:1703.03864.

    Examples:
        >>> class Net(ZeroOrderGradientModule, method='naive', num_samples=100, sigma=0.01):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(4, 1)
        ...     def forward(self, batch):
        ...         x, y = batch
        ...         return ((self.fc(x) - y) ** 2).mean()
        ...     def sample(self, sample_shape=torch.Size()):
        ...         return torch.randn(sample_shape)
        >>> net = Net()
        >>> loss = net((x, y))
        >>> grads = torch.autograd.grad(loss, net.parameters())
    """

    def __init_subclass__(cls, method: Method | None = None, num_samples: int | None = None,
                          sigma: float | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        inherited = dict(getattr(cls, "__zero_order_settings__", _DEFAULTS))
        given = {k: v for k, v in dict(method=method, num_samples=num_samples, sigma=sigma).items() if v is not None}
        if "method" in given:
            _check_method(given["method"])
        if "num_samples" in given:
            _check_num_samples(given["num_samples"])
        if "sigma" in given:
            given["sigma"] = _check_sigma(given["sigma"])
        settings = {**inherited, **given}

        own = cls.__dict__.get("forward")
        if own is not None:
            if getattr(own, "__zero_order_gradients_enabled__", False):
                raise TypeError(f"{cls.__name__}: zero-order gradient estimation is already enabled for `forward`")
            _enable_zero_order(cls, own, settings)
        elif given and hasattr(cls, "__zero_order_forward__"):
            # new settings for an inherited forward: wrap the parent's original forward again
            _enable_zero_order(cls, cls.__zero_order_forward__, settings)
        else:
            cls.__zero_order_settings__ = settings  # type: ignore[attr-defined]

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The scalar objective; subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement `forward`")

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        """Noise of shape ``sample_shape`` with zero mean and unit variance per element; subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement `sample(sample_shape)` (e.g. "
                                  f"`return torch.randn(sample_shape)`)")
