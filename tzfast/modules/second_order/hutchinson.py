"""Optimizers preconditioned by Hutchinson estimates of the Hessian diagonal.

Every update draws ``n_samples`` random vectors ``z`` and forms ``z * Hz`` (or ``Hz``) with
Hessian-vector products (:meth:`~tzfast.core.Objective.hutchinson_hessian`; with
``hvp_method='batched_autograd'`` all products are one vectorised backward pass). The
elementwise state updates are ``torch._foreach_*`` calls over all parameters at once (no native
kernel yet).

* :class:`AdaHessian` — Adam whose second moment is the EMA of the squared (block-averaged)
  diagonal estimate.
* :class:`SophiaH` — EMA of the diagonal estimate, clipped preconditioned momentum.
* :class:`ESGD` — equilibrated SGD: Adagrad-like accumulation of squared ``Hz``.
* :class:`RandomHvp` — outputs ``Hz`` (or ``z * Hz``) itself.

Random vectors are drawn exactly as torchzero 0.4.4 draws them (same distribution, generator
and order), so a seeded run reproduces torchzero's trajectory.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...core.derivatives import DISTRIBUTIONS, Distributions, HVPMethod, canonical_hvp_method
from ...core.module import Chainable, Module
from ...core.transform import Transform

if TYPE_CHECKING:
    from ...core.objective import Objective

__all__ = ["AdaHessian", "ESGD", "RandomHvp", "SophiaH"]


# ----------------------------------------------------------------------------- argument checks
def _check_int(who: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{who}: `{name}` must be an int >= {minimum}, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{who}: `{name}` must be an int >= {minimum}, got {value}")


def _check_number(who: str, name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        kind = "a finite number" + (" or None" if allow_none else "")
        raise TypeError(f"{who}: `{name}` must be {kind}, got {type(value).__name__}: {value!r}")


def _check_hutchinson_args(who: str, hvp_method: str, distribution: str, n_samples: Any, update_freq: Any,
                           h: Any) -> None:
    try:
        canonical_hvp_method(hvp_method)
    except ValueError as e:
        raise ValueError(f"{who}: {e}") from None
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"{who}: `distribution` must be one of {DISTRIBUTIONS}, got {distribution!r}")
    _check_int(who, "n_samples", n_samples, 1)
    _check_int(who, "update_freq", update_freq, 1)
    _check_number(who, "h", h)


# ----------------------------------------------------------------------------- shared helpers
def hutchinson_diagonal(module: Module, objective: Objective, setting: Mapping[str, Any]) -> list[torch.Tensor]:
    """Mean of ``z * Hz`` (``zHz=True``) or of ``Hz`` over ``setting['n_samples']`` random ``z``.

    Raises ``RuntimeError`` naming the module without a closure, and ``ValueError`` when the
    closure returns a loss with more than one element. The parameters are never left perturbed
    (autograd methods do not move them; finite-difference methods restore them bitwise).
    """
    who = type(module).__name__
    if objective.closure is None:
        raise RuntimeError(f"{who} needs a closure, but `step` was called without one. Pass a closure "
                           f"`def closure(backward=True): ...` to `optimizer.step(closure)`.")
    params = objective.params
    try:
        D, _ = objective.hutchinson_hessian(
            rgrad=None, at_x0=True, n_samples=setting["n_samples"], distribution=setting["distribution"],
            hvp_method=setting["hvp_method"], h=setting["h"], zHz=setting["zHz"],
            generator=module.get_generator(params[0].device, setting["seed"]))
    except RuntimeError as e:
        if "scalar outputs" in str(e):
            raise ValueError(f"{who}: the closure must return a scalar loss (one element) for Hessian-vector "
                             f"products, got a loss with more elements ({e})") from None
        raise
    return [d.detach() for d in D]


def _block_average(x: torch.Tensor, block_size: int | None, enable: bool) -> torch.Tensor:
    """AdaHessian's spatial / block averaging of a diagonal estimate.

    Tensors with fewer than 2 dims, or one row's worth of elements, are returned as they are.
    With ``block_size=None``, a tensor of 3+ dims (a conv kernel) is replaced by the mean of
    ``|x|`` over its dims 2..; a 2-D tensor is kept. With a ``block_size``, consecutive rows
    (dim 0) are grouped into blocks of ``block_size`` and each block's rows become the block's
    mean of ``|x|`` (the rows left over form one last block).
    """
    if not enable or x.ndim < 2 or math.prod(x.shape[1:]) <= 1:
        return x
    if block_size is None:
        if x.ndim >= 3:
            return x.abs().mean(dim=list(range(2, x.ndim)), keepdim=True)
        return x
    rows = x.size(0)
    n_blocks = rows // block_size
    if n_blocks <= 1:
        return x.abs().mean(0, keepdim=True)
    n_full = n_blocks * block_size
    full = x[:n_full].abs().reshape(n_blocks, block_size, *x.shape[1:]).mean(1).repeat_interleave(block_size, 0)
    if n_full == rows:
        return full
    rest = x[n_full:].abs().mean(0, keepdim=True).expand(rows - n_full, *x.shape[1:])
    return torch.cat([full, rest], 0)


def _scalars(settings: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [s[key] for s in settings]


def _same(values: list[float]) -> float | list[float]:
    """One number when every parameter has the same setting (cheaper foreach overload)."""
    first = values[0]
    return first if all(v == first for v in values) else values


# ----------------------------------------------------------------------------- AdaHessian
class AdaHessian(Transform):
    """AdaHessian: Adam with the squared gradient replaced by a squared Hessian-diagonal estimate.

    Every ``update_freq`` steps, a Hutchinson estimate ``D`` of the Hessian diagonal is formed
    from ``n_samples`` Hessian-vector products with random ``z`` (``z * Hz`` averaged), averaged
    spatially or in blocks (``averaging``), and ``v <- beta2 v + (1 - beta2) D^2``. The first
    moment is ``m <- beta1 m + (1 - beta1) u`` with ``u`` the input (the output of ``inner`` when
    given). The update is ``m_hat / (v_hat^(hessian_power / 2) + eps)`` with bias corrections
    ``1 - beta1^t`` (t = step) and ``1 - beta2^k`` (k = number of estimates).

    Needs a closure accepting ``backward`` (the gradient is re-evaluated with a graph).

    Args:
        beta1: first-moment decay. Default 0.9.
        beta2: decay of the EMA of squared diagonal estimates. Default 0.999.
        averaging: block-diagonal / spatial averaging of parameters with 2+ dims (settable per
            parameter group). Default True.
        block_size: rows per block for the averaging; None averages conv kernels over their
            spatial dims only. Default None.
        update_freq: the diagonal is re-estimated every ``update_freq`` steps. Default 1.
        eps: added to the denominator. Default 1e-8.
        hvp_method: ``'autograd'``, ``'batched_autograd'``, ``'fd_forward'``, ``'fd_central'``
            (aliases ``'forward'``, ``'central'``). Default ``'autograd'``.
        h: finite-difference step for the ``fd`` methods. Default 1e-3.
        n_samples: random vectors per estimate. Default 1.
        seed: seed of the module's own generator; None draws from torch's default generator.
            Default None.
        inner: chain applied to the input before momentum and preconditioning. Default None.
        hessian_power: power of the diagonal in the denominator. Default 1 (keyword-only).
        distribution: distribution of ``z``. Default ``'rademacher'`` (keyword-only).
        zHz: average ``z * Hz`` (True) or ``Hz`` (False). Default True (keyword-only).
        debias: apply the bias corrections. Default True (keyword-only).
        exp_avg_tfm: chain applied to the (debiased) first moment. Default None (keyword-only).
        D_exp_avg_sq_tfm: chain applied to the (debiased) second moment. Default None
            (keyword-only).

    References:
        Yao et al., "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning",
        arXiv:2006.00719.

    Examples:
        >>> import torch, tzfast as tz
        >>> x = torch.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = tz.Optimizer([x], tz.m.AdaHessian(beta1=0, inner=tz.m.NAG(0.9)), tz.m.LR(0.1))
        >>> def closure(backward=True):
        ...     loss = (x ** 2 * torch.tensor([1.0, 10.0])).sum()
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
    """

    def __init__(
        self,
        beta1: float = 0.9,
        beta2: float = 0.999,
        averaging: bool = True,
        block_size: int | None = None,
        update_freq: int = 1,
        eps: float = 1e-8,
        hvp_method: HVPMethod = "autograd",
        h: float = 1e-3,
        n_samples: int = 1,
        seed: int | None = None,
        inner: Chainable | None = None,
        *,
        hessian_power: float = 1,
        distribution: Distributions = "rademacher",
        zHz: bool = True,
        debias: bool = True,
        exp_avg_tfm: Chainable | None = None,
        D_exp_avg_sq_tfm: Chainable | None = None,
    ):
        who = "AdaHessian"
        _check_hutchinson_args(who, hvp_method, distribution, n_samples, update_freq, h)
        for name, value in (("beta1", beta1), ("beta2", beta2), ("eps", eps), ("hessian_power", hessian_power)):
            _check_number(who, name, value)
        if block_size is not None:
            _check_int(who, "block_size", block_size, 1)
        defaults = dict(beta1=beta1, beta2=beta2, averaging=averaging, block_size=block_size,
                        update_freq=update_freq, eps=eps, hessian_power=hessian_power, distribution=distribution,
                        hvp_method=hvp_method, h=h, n_samples=n_samples, zHz=zHz, debias=debias, seed=seed)
        super().__init__(defaults, inner=inner)
        self.set_child("exp_avg", exp_avg_tfm)
        self.set_child("D_exp_avg_sq", D_exp_avg_sq_tfm)

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        step = self.increment_counter("step", start=0)
        fs = settings[0]
        if step % fs["update_freq"] != 0:
            return
        D = hutchinson_diagonal(self, objective, fs)
        self.increment_counter("num_Ds", start=1)
        D = [_block_average(d, s["block_size"], s["averaging"]) for d, s in zip(D, settings, strict=True)]
        v = self.get_state(objective.params, "D_exp_avg_sq")
        beta2 = _scalars(settings, "beta2")
        torch._foreach_mul_(v, _same(beta2))
        torch._foreach_addcmul_(v, D, D, [1 - b for b in beta2])

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        params = objective.params
        tensors = objective.get_updates()
        m, v = self.get_state(params, "exp_avg", "D_exp_avg_sq")
        beta1 = _scalars(settings, "beta1")
        torch._foreach_lerp_(m, tensors, _same([1 - b for b in beta1]))

        exp_avg: list[torch.Tensor] = m
        D_sq: list[torch.Tensor] = v
        if settings[0]["debias"]:
            t = self.global_state["step"] + 1
            k = self.global_state.get("num_Ds", 0)
            exp_avg = torch._foreach_div(m, [1 - b ** t for b in beta1])
            D_sq = torch._foreach_div(v, [1 - s["beta2"] ** k for s in settings])
        exp_avg = self.inner_step_tensors("exp_avg", list(exp_avg), clone=exp_avg is m, objective=objective,
                                          must_exist=False)
        D_sq = self.inner_step_tensors("D_exp_avg_sq", list(D_sq), clone=D_sq is v, objective=objective,
                                       must_exist=False)
        power = [s["hessian_power"] / 2 for s in settings]
        denom = torch._foreach_pow(D_sq, _same(power)) if any(p != 1 for p in power) else [d.clone() for d in D_sq]
        torch._foreach_add_(denom, _same(_scalars(settings, "eps")))
        objective.updates = list(torch._foreach_div(exp_avg, denom))
        return objective


# ----------------------------------------------------------------------------- SophiaH
class SophiaH(Transform):
    """Sophia-H: momentum divided by an EMA of Hutchinson Hessian-diagonal estimates, clipped.

    Every ``update_freq`` steps, ``D`` (mean of ``z * Hz`` over ``n_samples`` Gaussian ``z``)
    updates ``h <- beta2 h + (1 - beta2) D``. The momentum is ``m <- beta1 m + (1 - beta1) u``
    (``u`` the input, or ``inner``'s output), and the update is
    ``clip(m / max(precond_scale * h, eps), -clip, clip)``.

    Needs a closure accepting ``backward``.

    Args:
        beta1: momentum decay. Default 0.96.
        beta2: decay of the diagonal EMA. Default 0.99.
        update_freq: the diagonal is re-estimated every ``update_freq`` steps. Default 10.
        precond_scale: multiplies the diagonal EMA. Default 1.
        clip: the update is clipped to ``[-clip, clip]``. Default 1.
        eps: lower bound of the scaled diagonal. Default 1e-12.
        hvp_method: as in :class:`AdaHessian`. Default ``'autograd'``.
        h: finite-difference step. Default 1e-3.
        n_samples: random vectors per estimate. Default 1.
        seed: seed of the module's generator (None: torch's default generator). Default None.
        inner: chain applied to the input before momentum and preconditioning. Default None.
        distribution: distribution of ``z``. Default ``'gaussian'`` (keyword-only).
        zHz: average ``z * Hz`` (True) or ``Hz``. Default True (keyword-only).
        debias: Adam-style bias corrections. Default False (keyword-only).
        exp_avg_tfm: chain applied to the momentum. Default None (keyword-only).
        D_exp_avg_tfm: chain applied to the diagonal EMA. Default None (keyword-only).

    References:
        Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
        Pre-training", arXiv:2305.14342.

    Examples:
        >>> import torch, tzfast as tz
        >>> x = torch.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = tz.Optimizer([x], tz.m.SophiaH(), tz.m.LR(0.1))
        >>> def closure(backward=True):
        ...     loss = (x ** 2).sum()
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
    """

    def __init__(
        self,
        beta1: float = 0.96,
        beta2: float = 0.99,
        update_freq: int = 10,
        precond_scale: float = 1,
        clip: float = 1,
        eps: float = 1e-12,
        hvp_method: HVPMethod = "autograd",
        h: float = 1e-3,
        n_samples: int = 1,
        seed: int | None = None,
        inner: Chainable | None = None,
        *,
        distribution: Distributions = "gaussian",
        zHz: bool = True,
        debias: bool = False,
        exp_avg_tfm: Chainable | None = None,
        D_exp_avg_tfm: Chainable | None = None,
    ):
        who = "SophiaH"
        _check_hutchinson_args(who, hvp_method, distribution, n_samples, update_freq, h)
        for name, value in (("beta1", beta1), ("beta2", beta2), ("precond_scale", precond_scale),
                            ("clip", clip), ("eps", eps)):
            _check_number(who, name, value)
        defaults = dict(beta1=beta1, beta2=beta2, update_freq=update_freq, precond_scale=precond_scale, clip=clip,
                        eps=eps, hvp_method=hvp_method, distribution=distribution, h=h, n_samples=n_samples,
                        zHz=zHz, debias=debias, seed=seed)
        super().__init__(defaults, inner=inner)
        self.set_child("exp_avg", exp_avg_tfm)
        self.set_child("D_exp_avg", D_exp_avg_tfm)

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        step = self.increment_counter("step", start=0)
        fs = settings[0]
        if step % fs["update_freq"] != 0:
            return
        D = hutchinson_diagonal(self, objective, fs)
        self.increment_counter("num_Ds", start=1)
        h_ema = self.get_state(objective.params, "D_exp_avg")
        torch._foreach_lerp_(h_ema, D, _same([1 - s["beta2"] for s in settings]))

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        params = objective.params
        tensors = objective.get_updates()
        m, h_ema = self.get_state(params, "exp_avg", "D_exp_avg")
        beta1 = _scalars(settings, "beta1")
        torch._foreach_lerp_(m, tensors, _same([1 - b for b in beta1]))

        exp_avg: list[torch.Tensor] = m
        D: list[torch.Tensor] = h_ema
        if settings[0]["debias"]:
            t = self.global_state["step"] + 1
            k = self.global_state.get("num_Ds", 0)
            exp_avg = torch._foreach_div(m, [1 - b ** t for b in beta1])
            D = torch._foreach_div(h_ema, [1 - s["beta2"] ** k for s in settings])
        exp_avg = self.inner_step_tensors("exp_avg", list(exp_avg), clone=exp_avg is m, objective=objective,
                                          must_exist=False)
        D = self.inner_step_tensors("D_exp_avg", list(D), clone=D is h_ema, objective=objective, must_exist=False)
        scale = _scalars(settings, "precond_scale")
        denom = torch._foreach_mul(D, _same(scale)) if any(s != 1 for s in scale) else [d.clone() for d in D]
        torch._foreach_clamp_min_(denom, _same(_scalars(settings, "eps")))
        out = torch._foreach_div(exp_avg, denom)
        clip = _scalars(settings, "clip")
        torch._foreach_clamp_min_(out, _same([-c for c in clip]))
        torch._foreach_clamp_max_(out, _same(clip))
        objective.updates = list(out)
        return objective


# ----------------------------------------------------------------------------- ESGD
class ESGD(Transform):
    """Equilibrated SGD: the input divided by the root mean square of random ``Hz`` products.

    Every ``update_freq`` steps, ``Hz`` (``z`` Gaussian; ``z * Hz`` with ``zHz=True``) is added
    squared to an accumulator ``a`` (``a <- a + Hz^2``, or an EMA with ``beta``). The update is
    ``u / (sqrt(a_hat) + damping)`` with ``a_hat = a / k`` (k = number of products), or the
    bias-corrected EMA ``a / (1 - beta^k)`` (``beta`` given, ``beta_debias``), or ``a`` itself
    (``beta`` given, no debiasing). ``u`` is the input or ``inner``'s output.

    Needs a closure accepting ``backward``.

    Args:
        damping: added to the denominator. Default 1e-4.
        update_freq: ``Hz`` is re-evaluated every ``update_freq`` steps. Default 20.
        hvp_method: as in :class:`AdaHessian`. Default ``'autograd'``.
        h: finite-difference step. Default 1e-3.
        n_samples: random vectors per evaluation. Default 1.
        seed: seed of the module's generator (None: torch's default generator). Default None.
        inner: chain applied to the input before the preconditioning. Default None.
        distribution: distribution of ``z``. Default ``'gaussian'`` (keyword-only).
        zHz: accumulate ``z * Hz`` instead of ``Hz``. Default False (keyword-only).
        beta: EMA decay of the accumulator; None sums. Default None (keyword-only).
        beta_debias: bias-correct the EMA. Default True (keyword-only).
        Hz_sq_acc_tfm: accepted for torchzero compatibility; torchzero 0.4.4 registers it but
            never uses it, and neither does this module. Default None (keyword-only).

    References:
        Dauphin, de Vries, Bengio, "Equilibrated adaptive learning rates for non-convex
        optimization", arXiv:1502.04390.

    Examples:
        >>> import torch, tzfast as tz
        >>> x = torch.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = tz.Optimizer([x], tz.m.ESGD(inner=tz.m.NAG(0.9)), tz.m.LR(0.1))
        >>> def closure(backward=True):
        ...     loss = (x ** 2).sum()
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
    """

    def __init__(
        self,
        damping: float = 1e-4,
        update_freq: int = 20,
        hvp_method: HVPMethod = "autograd",
        h: float = 1e-3,
        n_samples: int = 1,
        seed: int | None = None,
        inner: Chainable | None = None,
        *,
        distribution: Distributions = "gaussian",
        zHz: bool = False,
        beta: float | None = None,
        beta_debias: bool = True,
        Hz_sq_acc_tfm: Chainable | None = None,
    ):
        who = "ESGD"
        _check_hutchinson_args(who, hvp_method, distribution, n_samples, update_freq, h)
        _check_number(who, "damping", damping)
        _check_number(who, "beta", beta, allow_none=True)
        defaults = dict(damping=damping, update_freq=update_freq, distribution=distribution, hvp_method=hvp_method,
                        h=h, n_samples=n_samples, zHz=zHz, seed=seed, beta=beta, beta_debias=beta_debias)
        super().__init__(defaults, inner=inner)
        self.set_child("Hz_sq_acc", Hz_sq_acc_tfm)

    @torch.no_grad()
    def update_states(self, objective: Objective, states: list[dict[str, Any]],
                      settings: Sequence[Mapping[str, Any]]) -> None:
        step = self.increment_counter("step", start=0)
        fs = settings[0]
        if step % fs["update_freq"] != 0:
            return
        Hz = hutchinson_diagonal(self, objective, fs)
        self.increment_counter("num_Hzs", start=1)
        acc = self.get_state(objective.params, "Hz_sq_acc")
        beta = fs["beta"]
        if beta is None:
            torch._foreach_addcmul_(acc, Hz, Hz)
        else:
            torch._foreach_mul_(acc, beta)
            torch._foreach_addcmul_(acc, Hz, Hz, 1 - beta)

    @torch.no_grad()
    def apply_states(self, objective: Objective, states: list[dict[str, Any]],
                     settings: Sequence[Mapping[str, Any]]) -> Objective:
        tensors = objective.get_updates()
        acc = self.get_state(objective.params, "Hz_sq_acc")
        fs = settings[0]
        k = self.global_state.get("num_Hzs", 0)
        beta = fs["beta"]
        if beta is None:
            divisor = float(max(k, 1))
        elif fs["beta_debias"]:
            divisor = 1.0 - beta ** k if k > 0 else 1.0
        else:
            divisor = 1.0
        denom = torch._foreach_div(acc, divisor)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, _same(_scalars(settings, "damping")))
        torch._foreach_div_(tensors, denom)
        objective.updates = tensors
        return objective


# ----------------------------------------------------------------------------- RandomHvp
class RandomHvp(Module):
    """Outputs the Hessian times a random vector (``Hz``), or ``z * Hz`` with ``zHz=True``.

    Averaged over ``n_samples`` vectors; re-evaluated every ``update_freq`` steps and reused in
    between. Needs a closure accepting ``backward``.

    Args:
        n_samples: random vectors averaged. Default 1.
        distribution: distribution of ``z``. Default ``'normal'``.
        update_freq: re-evaluation period. Default 1.
        zHz: output ``z * Hz`` (a Hessian-diagonal estimate) instead of ``Hz``. Default False.
        hvp_method: as in :class:`AdaHessian`. Default ``'autograd'``.
        h: finite-difference step. Default 1e-3.
        seed: seed of the module's generator (None: torch's default generator). Default None.

    References:
        Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
        smoothing splines" (1989).

    Examples:
        >>> import torch, tzfast as tz
        >>> x = torch.tensor([1.0, -2.0], requires_grad=True)
        >>> opt = tz.Optimizer([x], tz.m.RandomHvp(zHz=True, n_samples=4), tz.m.LR(0.1))
        >>> def closure(backward=True):
        ...     loss = (x ** 2).sum()
        ...     if backward:
        ...         opt.zero_grad()
        ...         loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
    """

    def __init__(
        self,
        n_samples: int = 1,
        distribution: Distributions = "normal",
        update_freq: int = 1,
        zHz: bool = False,
        hvp_method: HVPMethod = "autograd",
        h: float = 1e-3,
        seed: int | None = None,
    ):
        _check_hutchinson_args("RandomHvp", hvp_method, distribution, n_samples, update_freq, h)
        super().__init__(dict(n_samples=n_samples, distribution=distribution, update_freq=update_freq, zHz=zHz,
                              hvp_method=hvp_method, h=h, seed=seed))

    @torch.no_grad()
    def apply(self, objective: Objective) -> Objective:
        params = objective.params
        step = self.global_state.get("step", 0)
        self.global_state["step"] = step + 1
        fs = self.defaults
        if step % fs["update_freq"] == 0:
            D = hutchinson_diagonal(self, objective, fs)
            if fs["update_freq"] != 1:
                for p, d in zip(self.get_state(params, "D"), D, strict=True):
                    p.copy_(d)
        else:
            D = [t.clone() for t in self.get_state(params, "D")]
        objective.updates = D
        return objective
