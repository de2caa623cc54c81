"""The ``zero_order`` decorator: gradients of a function estimated from function values only.

The estimators are the documented ones (ES-style Gaussian smoothing, seed 003):

* ``'naive'``:      ``g = 1/(n sigma) * sum_k f(theta + sigma z_k) z_k``
* ``'forward'``:    ``g = 1/(n sigma) * sum_k (f(theta + sigma z_k) - f(theta)) z_k``
* ``'antithetic'``: ``g = 1/(2 n sigma) * sum_k (f(theta + sigma z_k) - f(theta - sigma z_k)) z_k``

each an unbiased estimate of the gradient of the smoothed objective
``f_sigma(theta) = E_z[f(theta + sigma z)]``. TorchOpt's own ``'forward'`` estimator overwrites
its baseline ``f(theta)`` after the first sample and multiplies by ``sigma`` where it should
divide; this one computes the formula above.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import torch
from torch.autograd.function import once_differentiable
from torch.utils import _pytree as pytree

from . import _directions

__all__ = ["zero_order", "Method", "METHODS", "DISTRIBUTIONS", "Samplable", "SampleFunc"]

Method = Literal["naive", "forward", "antithetic"]
METHODS: tuple[str, ...] = ("naive", "forward", "antithetic")
DISTRIBUTIONS: tuple[str, ...] = _directions.DISTRIBUTIONS

F = TypeVar("F", bound=Callable[..., torch.Tensor])


@runtime_checkable
class Samplable(Protocol):
    """An object with ``sample(sample_shape)`` (e.g. any ``torch.distributions.Distribution``)."""

    def sample(self, sample_shape: torch.Size = ...) -> torch.Tensor: ...


SampleFunc = Callable[[torch.Size], torch.Tensor]
Distribution = str | Samplable | SampleFunc


# ---------------------------------------------------------------------------------- validation
def _check_method(method: Any) -> Method:
    if method not in METHODS:
        raise ValueError(f"zero_order: `method` must be one of {METHODS}, got {method!r}")
    return method


def _check_num_samples(num_samples: Any) -> int:
    if not isinstance(num_samples, int) or isinstance(num_samples, bool):
        raise TypeError(f"zero_order: `num_samples` must be an int >= 1, got {type(num_samples).__name__}")
    if num_samples < 1:
        raise ValueError(f"zero_order: `num_samples` must be >= 1, got {num_samples}")
    return num_samples


def _check_sigma(sigma: Any) -> float:
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool):
        raise TypeError(f"zero_order: `sigma` must be a positive number, got {type(sigma).__name__}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"zero_order: `sigma` must be a positive finite number, got {sigma!r}")
    return float(sigma)


def _check_argnums(argnums: Any) -> tuple[int, ...]:
    if isinstance(argnums, int) and not isinstance(argnums, bool):
        argnums = (argnums,)
    if not isinstance(argnums, (tuple, list)) or len(argnums) == 0 or \
            not all(isinstance(a, int) and not isinstance(a, bool) for a in argnums):
        raise TypeError(f"zero_order: `argnums` must be an int or a non-empty tuple of ints, got {argnums!r}")
    if len(set(argnums)) != len(argnums):
        raise ValueError(f"zero_order: `argnums` has repeated entries: {tuple(argnums)}")
    return tuple(argnums)


class _UserSampler:
    """Noise from a user distribution: ``sample(sample_shape=p.shape)`` per differentiable tensor."""

    def __init__(self, sample: Callable[..., Any], name: str):
        self.sample = sample
        self.name = name

    def noise(self, p: torch.Tensor) -> torch.Tensor:
        z = self.sample(sample_shape=p.shape) if self.name == "sample" else self.sample(p.shape)
        if not isinstance(z, torch.Tensor):
            z = torch.as_tensor(z)
        if z.shape != p.shape:
            raise ValueError(f"zero_order: the distribution returned a sample of shape {tuple(z.shape)} for a "
                             f"parameter of shape {tuple(p.shape)}; `sample(sample_shape)` must return a tensor of "
                             f"exactly `sample_shape` (a distribution with batch shape () )")
        return z.to(device=p.device, dtype=p.dtype)


def _make_sampler(distribution: Any) -> _UserSampler | str:
    """A string naming an engine distribution, or a sampler around the user's distribution."""
    if isinstance(distribution, str):
        return _directions.check_distribution("zero_order", distribution)
    sample = getattr(distribution, "sample", None)
    if callable(sample):
        return _UserSampler(sample, "sample")
    if callable(distribution):
        return _UserSampler(distribution, "call")
    raise TypeError(f"zero_order: `distribution` must be an object with a `sample(sample_shape)` method (e.g. "
                    f"torch.distributions.Normal(0, 1)), a function `f(sample_shape) -> Tensor`, or one of "
                    f"{DISTRIBUTIONS}; got {type(distribution).__name__}")


# ---------------------------------------------------------------------------------- the estimator
class _Call:
    """One call of the decorated function: rebuilds its arguments around given differentiable tensors."""

    __slots__ = ("fn", "args", "kwargs", "argnums", "treespec", "leaves", "diff_index")

    def __init__(self, fn: Callable[..., torch.Tensor], args: tuple, kwargs: dict, argnums: tuple[int, ...]):
        if max(argnums) >= len(args) or min(argnums) < -len(args):
            raise ValueError(f"zero_order: `argnums` {argnums} is out of range for a call with {len(args)} "
                             f"positional argument(s)")
        self.fn = fn
        self.args = list(args)
        self.kwargs = kwargs
        self.argnums = tuple(a % len(args) for a in argnums)
        leaves, self.treespec = pytree.tree_flatten([args[a] for a in self.argnums])
        self.leaves = leaves
        self.diff_index = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor) and x.is_floating_point()]

    def diff_tensors(self) -> list[torch.Tensor]:
        return [self.leaves[i] for i in self.diff_index]

    def __call__(self, diff: Sequence[torch.Tensor]) -> torch.Tensor:
        leaves = list(self.leaves)
        for i, t in zip(self.diff_index, diff, strict=True):
            leaves[i] = t
        args = list(self.args)
        for a, v in zip(self.argnums, pytree.tree_unflatten(leaves, self.treespec), strict=True):
            args[a] = v
        out = self.fn(*args, **self.kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"zero_order: the decorated function must return a scalar tensor, got "
                            f"{type(out).__name__}")
        if out.ndim != 0:
            raise ValueError(f"zero_order: the decorated function must return a scalar (0-d) tensor, got shape "
                             f"{tuple(out.shape)}")
        return out


class _Estimator:
    __slots__ = ("sampler", "method", "num_samples", "sigma")

    def __init__(self, sampler: _UserSampler | str, method: str, num_samples: int, sigma: float):
        self.sampler = sampler
        self.method = method
        self.num_samples = num_samples
        self.sigma = sigma

    @torch.no_grad()
    def gradient(self, call: _Call, params: Sequence[torch.Tensor], f0: torch.Tensor,
                 grad_output: torch.Tensor) -> list[torch.Tensor]:
        """The estimate times ``grad_output`` for each differentiable tensor."""
        method, n, sigma = self.method, self.num_samples, self.sigma
        denom = (2 * n * sigma) if method == "antithetic" else (n * sigma)
        bufs = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]

        if isinstance(self.sampler, str):
            dirs = _directions.Directions(params, self.sampler, _directions.draw_key(None))
            coeffs: list[torch.Tensor] = []
            for k in range(n):
                dirs.perturbed_(bufs, params, k, sigma)
                fk = call(bufs)
                if method == "antithetic":
                    dirs.perturbed_(bufs, params, k, -sigma)
                    fk = fk - call(bufs)
                elif method == "forward":
                    fk = fk - f0
                coeffs.append(fk.to(torch.float64))
            scale = (grad_output.to(torch.float64) / denom)
            c = (torch.stack(coeffs) * scale).tolist()
            grads = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]
            dirs.combine_(grads, list(range(n)), c)
            return grads

        sampler = self.sampler
        grads = [torch.zeros_like(p) for p in params]
        for _ in range(n):
            noises = [sampler.noise(p) for p in params]
            for b, p, z in zip(bufs, params, noises, strict=True):
                torch.add(p, z, alpha=sigma, out=b)
            fk = call(bufs)
            if method == "antithetic":
                for b, p, z in zip(bufs, params, noises, strict=True):
                    torch.sub(p, z, alpha=sigma, out=b)
                fk = fk - call(bufs)
            elif method == "forward":
                fk = fk - f0
            w = (fk * grad_output / denom)
            for g, z in zip(grads, noises, strict=True):
                g.add_(z * w.to(g.dtype))
        return grads


class _ZeroOrderFunction(torch.autograd.Function):
    """Forward: the function's value. Backward: the zeroth-order estimate of its gradient."""

    @staticmethod
    def forward(ctx: Any, call: _Call, estimator: _Estimator, *params: torch.Tensor) -> torch.Tensor:
        out = call(params)
        ctx.call = call
        ctx.estimator = estimator
        ctx.f0 = out.detach()
        ctx.save_for_backward(*params)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        params = ctx.saved_tensors
        grads = ctx.estimator.gradient(ctx.call, params, ctx.f0, grad_output)
        return (None, None, *grads)


def zero_order(distribution: Distribution, method: Method = "naive", argnums: int | tuple[int, ...] = (0,),
               num_samples: int = 1, sigma: float = 1.0) -> Callable[[F], F]:
    """Returns a decorator that makes a function differentiable by zeroth-order (ES) estimation.

    The decorated function returns the same value as the original; differentiating it
    (``torch.autograd.grad`` or ``.backward()``) with respect to the tensors in the arguments
    named by ``argnums`` gives the Monte-Carlo estimate of the gradient of the Gaussian-smoothed
    objective ``f_sigma(theta) = E_z[f(theta + sigma z)]`` instead of the true gradient. The
    function itself is never differentiated, so it may be non-differentiable (an inner
    optimization loop, a simulator, a discrete policy rollout). With ``theta`` the tensors named
    by ``argnums`` and ``z_k`` ``num_samples`` draws from ``distribution``:

    * ``'naive'`` (ES RL): ``1/(n sigma) * sum_k f(theta + sigma z_k) z_k``;
    * ``'forward'`` (forward FD): ``1/(n sigma) * sum_k (f(theta + sigma z_k) - f(theta)) z_k``;
    * ``'antithetic'``: ``1/(2 n sigma) * sum_k (f(theta + sigma z_k) - f(theta - sigma z_k)) z_k``.

    The forward pass evaluates the function once; the backward pass evaluates it ``num_samples``
    times (``2 * num_samples`` for ``'antithetic'``) under ``torch.no_grad``. Tensors in other
    arguments (data) receive no gradient.

    Args:
        distribution: the noise distribution ``lambda``. It must have zero mean and unit
            variance per element (E[z] = 0, E[z_i^2] = 1), e.g. the standard normal. One of:

            * an object with ``sample(sample_shape=torch.Size())`` returning a tensor of shape
              ``sample_shape`` (e.g. ``torch.distributions.Normal(loc=0, scale=1)``);
            * a function ``distribution(sample_shape) -> Tensor``;
            * a name: ``'gaussian'`` / ``'normal'``, ``'rademacher'``, ``'uniform'`` (on
              ``[-sqrt(3), sqrt(3)]``) or ``'sphere'`` (a direction of norm ``sqrt(d)`` over the
              ``d`` perturbed elements). Named distributions come from tzfast's counter-based
              perturbation engine: directions are regenerated from a key drawn from torch's
              default generator (so ``torch.manual_seed`` reproduces them) and never stored.

            Samples are drawn separately for each differentiable tensor, with
            ``sample_shape = tensor.shape``, and cast to its dtype and device.
        method: ``'naive'``, ``'forward'`` or ``'antithetic'``. Defaults to ``'naive'``.
        argnums: index or indices of the positional arguments to differentiate with respect to;
            each may be a tensor or a (nested) tuple / list / dict of tensors. Floating-point
            tensor leaves are perturbed; other leaves are passed through unchanged. Defaults to
            ``(0,)``.
        num_samples: number of noise samples ``n`` averaged by the estimate. Defaults to 1.
        sigma: the smoothing scale (standard deviation of the perturbation). Defaults to 1.0.

    Returns:
        A decorator; the decorated function must return a scalar (0-d) tensor.

    Raises:
        ValueError: unknown ``method`` or distribution name, ``num_samples < 1``,
            ``sigma <= 0``, or (at call time) ``argnums`` out of range or a non-scalar output.
        TypeError: a ``distribution`` that is neither samplable, callable nor a name.

    References:
        Salimans, T., Ho, J., Chen, X., Sidor, S., Sutskever, I. (2017). Evolution Strategies as a
        Scalable Alternative to Reinforcement Learning. arXiv:1703.03864.
        Song, X., Gao, W., Yang, Y., Choromanski, K., Pacchiano, A., Tang, Y. (2020). ES-MAML:
        Simple Hessian-Free Meta Learning. arXiv:1910.01215.

    Examples:
        >>> distribution = torch.distributions.Normal(loc=0, scale=1)
        >>> @tz.zero_order(distribution=distribution, method='naive', argnums=0, num_samples=100, sigma=0.01)
        ... def forward(params, data):
        ...     x, y = data
        ...     return ((x @ params[0] + params[1] - y) ** 2).mean()
        >>> loss = forward(params, (x, y))
        >>> grads = torch.autograd.grad(loss, params)
    """
    method = _check_method(method)
    argnums = _check_argnums(argnums)
    num_samples = _check_num_samples(num_samples)
    sigma = _check_sigma(sigma)
    estimator = _Estimator(_make_sampler(distribution), method, num_samples, sigma)

    def decorator(fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"zero_order: the decorated object must be callable, got {type(fn).__name__}")

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> torch.Tensor:
            call = _Call(fn, args, kwargs, argnums)
            params = call.diff_tensors()
            if not params:
                with torch.no_grad():
                    return call(())
            return _ZeroOrderFunction.apply(call, estimator, *params)

        wrapped.__zero_order__ = dict(method=method, argnums=argnums, num_samples=num_samples,  # type: ignore[attr-defined]
                                      sigma=sigma)
        return wrapped  # type: ignore[return-value]

    return decorator
