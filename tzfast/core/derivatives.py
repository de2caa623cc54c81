"""Second- and higher-order derivative helpers of :class:`~tzfast.core.Objective`.

``Objective`` inherits :class:`DerivativesMixin`, which adds torchzero 0.4.4's helper methods:
Hessian-vector and Hessian-matrix products, the Hutchinson diagonal estimator, the full
Hessian, derivative tensors of any order, and ready-made ``H @ v`` callables.

The mixin only needs ``params``, ``closure``, ``loss``/``loss_approx``/``grads`` and the
``get_loss`` / ``get_grads`` / ``get_loss_grads`` methods of the objective.

Differences from torchzero 0.4.4 (results are otherwise the same):

* finite-difference methods restore the parameters bitwise (from a saved copy, also when the
  closure raises) instead of adding and subtracting the step again;
* ``hessian(..., "fd")`` / ``"fd_full"`` put each second derivative at its own index
  (torchzero 0.4.4 permutes the rows and columns of every parameter of more than two elements);
* ``hutchinson_hessian`` with ``"batched_autograd"`` averages over ``n_samples`` random vectors,
  drawn in the same order as the looped methods draw them (torchzero 0.4.4 draws one);
* ``derivatives_at`` copies values into the parameters instead of re-pointing their storage;
* a gradient cached without a graph (computed by an earlier module) is evaluated again with
  one, where torchzero raises; derivatives of parameters the loss does not depend on are zeros;
* ``"forward"`` / ``"central"`` are accepted as ``hvp_method`` aliases of ``"fd_forward"`` /
  ``"fd_central"``, and every method name is checked before anything is evaluated.
"""
from __future__ import annotations

import copyreg
import importlib
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import torch

__all__ = [
    "DERIVATIVES_METHODS", "HESSIAN_METHODS", "HVP_METHODS", "DerivativesMethod", "DerivativesMixin",
    "Distributions", "HVPMethod", "HessianMethod", "canonical_hvp_method",
]

HVPMethod = Literal["batched_autograd", "autograd", "fd_forward", "fd_central", "forward", "central"]
HessianMethod = Literal["batched_autograd", "autograd", "functional_revrev", "functional_fwdrev", "func",
                        "gfd_forward", "gfd_central", "fd", "fd_full", "thoad"]
DerivativesMethod = Literal["batched_autograd", "autograd", "thoad"]
Distributions = Literal["normal", "gaussian", "uniform", "sphere", "rademacher"]

HVP_METHODS: tuple[str, ...] = ("batched_autograd", "autograd", "fd_forward", "fd_central", "forward", "central")
HESSIAN_METHODS: tuple[str, ...] = ("batched_autograd", "autograd", "functional_revrev", "functional_fwdrev", "func",
                                    "gfd_forward", "gfd_central", "fd", "fd_full", "thoad")
DERIVATIVES_METHODS: tuple[str, ...] = ("batched_autograd", "autograd", "thoad")
DISTRIBUTIONS: tuple[str, ...] = ("normal", "gaussian", "uniform", "sphere", "rademacher")

_HVP_ALIASES = {"forward": "fd_forward", "central": "fd_central"}


def _choices(values: Sequence[str]) -> str:
    return ", ".join(repr(v) for v in values)


def canonical_hvp_method(hvp_method: str) -> HVPMethod:
    """``hvp_method`` with the aliases ``'forward'``/``'central'`` resolved; ValueError if unknown."""
    if hvp_method not in HVP_METHODS:
        raise ValueError(f"Unknown hvp_method {hvp_method!r}; expected one of {_choices(HVP_METHODS)}")
    return cast(HVPMethod, _HVP_ALIASES.get(hvp_method, hvp_method))


def _check_choice(name: str, value: str, accepted: Sequence[str]) -> None:
    if value not in accepted:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {_choices(accepted)}")


# ----------------------------------------------------------------------------- flat vectors
def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``vec`` shaped (and typed) like ``like``."""
    out, start = [], 0
    for t in like:
        n = t.numel()
        out.append(vec[start:start + n].type_as(t).view_as(t))
        start += n
    return out


def _as_list(x: torch.Tensor | Sequence[torch.Tensor], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return _unflat(x, like) if isinstance(x, torch.Tensor) else list(x)


# ----------------------------------------------------------------------------- autograd products
def _vjp(outputs: Sequence[torch.Tensor], params: Sequence[torch.Tensor], vectors: Sequence[torch.Tensor],
         retain_graph: bool, create_graph: bool = False) -> list[torch.Tensor]:
    """``sum_i vectors[i] . d outputs[i] / d params``; zeros where nothing depends on a parameter."""
    pairs = [(o, v) for o, v in zip(outputs, vectors, strict=True) if o.requires_grad]
    if not pairs:
        return [torch.zeros_like(p) for p in params]
    return list(torch.autograd.grad([o for o, _ in pairs], params, [v for _, v in pairs],
                                    retain_graph=retain_graph, create_graph=create_graph,
                                    allow_unused=True, materialize_grads=True))


def _batched_vjp(flat_output: torch.Tensor, params: Sequence[torch.Tensor], V: torch.Tensor,
                 retain_graph: bool, create_graph: bool = False) -> torch.Tensor:
    """``V @ J`` for the Jacobian ``J`` of ``flat_output`` w.r.t. the flattened params, as one
    vectorised backward pass over the rows of ``V`` (``is_grads_batched``). Returns ``(k, n)``."""
    k = V.shape[0]
    n = sum(p.numel() for p in params)
    if k == 0 or not flat_output.requires_grad:
        return torch.zeros(k, n, dtype=V.dtype, device=V.device)
    grads = torch.autograd.grad(flat_output, params, V, retain_graph=retain_graph, create_graph=create_graph,
                                allow_unused=True, is_grads_batched=True)
    rows = [torch.zeros(k, p.numel(), dtype=p.dtype, device=p.device) if g is None else g.reshape(k, -1)
            for g, p in zip(grads, params, strict=True)]
    return torch.cat(rows, dim=1)


def _jacobian(flat_output: torch.Tensor, params: Sequence[torch.Tensor], batched: bool,
              create_graph: bool) -> torch.Tensor:
    """Jacobian ``(m, n)`` of a flat output w.r.t. the flattened params."""
    m = flat_output.numel()
    eye = torch.eye(m, dtype=flat_output.dtype, device=flat_output.device)
    if batched:
        return _batched_vjp(flat_output, params, eye, retain_graph=create_graph, create_graph=create_graph)
    rows = [_flat(_vjp([flat_output], params, [eye[i]], retain_graph=create_graph or i < m - 1,
                       create_graph=create_graph)) for i in range(m)]
    if not rows:
        return torch.zeros(0, sum(p.numel() for p in params), dtype=flat_output.dtype, device=flat_output.device)
    return torch.stack(rows)


# ----------------------------------------------------------------------------- perturbation
class _SavedParams:
    """Copies of the parameters; ``restore()`` writes them back bitwise.

    Used as a context manager around every finite-difference evaluation so that the parameters
    come back exactly as they were, whatever the closure does (including raising).
    """

    def __init__(self, params: Sequence[torch.Tensor]):
        self.params = params
        self.dirty = False  # set by whoever writes to the parameters
        with torch.no_grad():
            self.saved = [p.detach().clone() for p in params]

    def restore(self) -> None:
        with torch.no_grad():
            for p, s in zip(self.params, self.saved, strict=True):
                p.copy_(s)
        self.dirty = False

    def __enter__(self) -> _SavedParams:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.dirty:
            self.restore()
        for p in self.params:
            p.grad = None


def _swap_tensors(a: torch.Tensor, b: torch.Tensor) -> None:
    """Exchanges the contents (class, attributes, TensorImpl) of two tensor objects.

    Like ``torch.utils.swap_tensors`` but without its use-count check, which would poison the
    parameter's AccumulateGrad node for a swap that is undone right after.
    """
    for t in (a, b):
        if weakref.getweakrefs(t):
            raise RuntimeError("Cannot evaluate the closure at a functional input: a parameter has weak "
                               "references to it; use hessian_method='batched_autograd' instead")
    slots = set(copyreg._slotnames(type(a)))  # type: ignore[attr-defined]  # private, no stub
    if slots != set(copyreg._slotnames(type(b))):  # type: ignore[attr-defined]
        raise RuntimeError("Cannot swap tensors of classes with different __slots__")
    a.__class__, b.__class__ = b.__class__, a.__class__
    a.__dict__, b.__dict__ = b.__dict__, a.__dict__
    missing = object()
    for name in slots:
        va, vb = getattr(a, name, missing), getattr(b, name, missing)
        for t, v in ((a, vb), (b, va)):
            if v is missing:
                if hasattr(t, name):
                    delattr(t, name)
            else:
                setattr(t, name, v)
    torch._C._swap_tensor_impl(a, b)


def _loss_of_flat_input(closure: Callable, params: Sequence[torch.Tensor]) -> Callable[[torch.Tensor], Any]:
    """``x -> closure(False)`` with the parameters temporarily replaced by views of ``x``."""

    def loss_at(x: torch.Tensor) -> Any:
        parts = _unflat(x, params)
        for p, t in zip(params, parts, strict=True):
            _swap_tensors(p, t)
        try:
            return closure(False)
        finally:
            for p, t in zip(params, parts, strict=True):
                _swap_tensors(p, t)

    return loss_at


def _scalar_view(p: torch.Tensor, k: int) -> torch.Tensor:
    """0-d view of element ``k`` (row-major) of ``p``, any strides."""
    if p.is_contiguous():
        return p.view(-1)[k]
    index = []
    for size in reversed(p.shape):
        k, r = divmod(k, size)
        index.append(r)
    return p[tuple(reversed(index))]


# ----------------------------------------------------------------------------- random probes
def _sample_like(params: Sequence[torch.Tensor], distribution: str, variance: Any,
                 generator: torch.Generator | None) -> list[torch.Tensor]:
    """Random vector around 0 shaped like ``params``; draws exactly as torchzero's ``sample_like``."""
    _check_choice("distribution", distribution, DISTRIBUTIONS)
    if isinstance(variance, Sequence):
        variance = None if all(v is None for v in variance) else [1 if v is None else v for v in variance]
    per_tensor = variance if isinstance(variance, list) else [variance] * len(params)

    def randn() -> list[torch.Tensor]:
        return [torch.randn(p.shape, generator=generator, dtype=p.dtype, device=p.device) for p in params]

    if distribution in ("normal", "gaussian"):
        z = randn()
        return z if variance is None else [t.mul_(v) for t, v in zip(z, per_tensor, strict=True)]
    if distribution == "uniform":
        bounds = [1.0 if variance is None else ((12 * v) ** 0.5) / 2 for v in per_tensor]
        return [torch.empty_like(p).uniform_(-b, b, generator=generator) for p, b in zip(params, bounds, strict=True)]
    if distribution == "sphere":
        z = randn()
        norm = torch.linalg.vector_norm(_flat(z))
        n = sum(p.numel() for p in params)
        radii = [1.0 if variance is None else v * n ** 0.5 for v in per_tensor]
        return [t.mul_(r / norm) for t, r in zip(z, radii, strict=True)]
    # rademacher
    z = [torch.bernoulli(torch.full_like(p, 0.5), generator=generator).mul_(2).sub_(1) for p in params]
    return z if variance is None else [t.mul_(v) for t, v in zip(z, per_tensor, strict=True)]


# ----------------------------------------------------------------------------- thoad
def _import_thoad() -> Any:
    try:
        return importlib.import_module("thoad")
    except ImportError as e:
        raise ImportError("thoad is not installed: method 'thoad' needs the `thoad` package "
                          "(pip install thoad; it requires Python >= 3.12). Other methods: "
                          f"{_choices([m for m in HESSIAN_METHODS if m != 'thoad'])}") from e


def _thoad_derivative(ctrl: Any, params: Sequence[torch.Tensor], order: int) -> torch.Tensor:
    """The order-``order`` derivative from a thoad controller, as an ``(n,) * order`` tensor."""
    import itertools

    numels = [p.numel() for p in params]
    offsets = [0]
    for k in numels:
        offsets.append(offsets[-1] + k)
    p0 = params[0]
    T = torch.zeros((offsets[-1],) * order, dtype=p0.dtype, device=p0.device)
    for block in itertools.product(range(len(params)), repeat=order):
        value, _ = ctrl.fetch_hgrad(variables=tuple(params[i] for i in block))
        index = tuple(slice(offsets[i], offsets[i + 1]) for i in block)
        T[index] = value.reshape(tuple(numels[i] for i in block))
    return T


# ----------------------------------------------------------------------------- the mixin
class DerivativesMixin:
    """Derivative helpers of :class:`~tzfast.core.Objective` (torchzero 0.4.4 signatures)."""

    params: list[torch.Tensor]
    closure: Callable[..., Any] | None
    loss: Any
    loss_approx: Any
    grads: list[torch.Tensor] | None

    if TYPE_CHECKING:
        def get_loss(self, backward: bool, retain_graph: bool | None = None, create_graph: bool = False,
                     at_x0: bool = True) -> Any: ...

        def get_grads(self, retain_graph: bool | None = None, create_graph: bool = False,
                      at_x0: bool = True) -> list[torch.Tensor]: ...

        def get_loss_grads(self, retain_graph: bool | None = None, create_graph: bool = False,
                           at_x0: bool = True) -> tuple[Any, list[torch.Tensor]]: ...

    # ------------------------------------------------------------ internals
    def _require_closure(self, what: str) -> Callable[..., Any]:
        if self.closure is None:
            raise RuntimeError(f"{what} needs a closure, but none was given. Pass a closure "
                               f"`def closure(backward=True): ...` to `optimizer.step(closure)`.")
        return self.closure

    def _grads_with_graph(self, at_x0: bool) -> list[torch.Tensor]:
        """Gradient that can be differentiated again (``create_graph=True``)."""
        if at_x0:
            cached = self.grads is not None
            grads = self.get_grads(create_graph=True, at_x0=True)
            if not cached or any(g.requires_grad for g in grads):
                return grads
        return self.get_grads(create_graph=True, at_x0=False)

    def _loss_grads_with_graph(self, at_x0: bool) -> tuple[Any, list[torch.Tensor]]:
        if at_x0:
            cached = self.grads is not None
            loss, grads = self.get_loss_grads(create_graph=True, at_x0=True)
            if not cached or any(g.requires_grad for g in grads):
                return loss, grads
        return self.get_loss_grads(create_graph=True, at_x0=False)

    def _loss_with_graph(self, at_x0: bool) -> Any:
        """Loss whose graph is alive, evaluated under ``enable_grad``."""
        with torch.enable_grad():
            if at_x0 and self.loss is None:
                return self.get_loss(False, at_x0=True)
            return self.get_loss(False, at_x0=False)

    def _grads_here(self) -> list[torch.Tensor]:
        """Gradient at the current (possibly perturbed) parameters, owned by the caller."""
        for p in self.params:
            p.grad = None  # so a closure that zeroes grads in place cannot clobber cached gradients
        grads = self.get_loss_grads(at_x0=False)[1]
        for p in self.params:
            p.grad = None
        return grads

    def _fd_hvp(self, z: Sequence[torch.Tensor], h: float, g0: Sequence[torch.Tensor] | None,
                saved: _SavedParams) -> list[torch.Tensor]:
        """Gradient finite difference along ``z`` (forward when ``g0`` is given, else central).

        ``z`` is normalised, the step is ``h * z / |z|``, and the result is scaled back by ``|z|``.
        The parameters are restored from ``saved`` afterwards.
        """
        params = self.params
        z = list(z)
        norm = torch.linalg.vector_norm(_flat(z))
        if norm == 0:
            return [torch.zeros_like(p) for p in params]
        step = torch._foreach_mul(torch._foreach_div(z, norm), h)
        saved.dirty = True
        try:
            torch._foreach_add_(params, step)
            g_plus = self._grads_here()
            if g0 is None:
                torch._foreach_sub_(params, step)
                torch._foreach_sub_(params, step)
                g_minus = self._grads_here()
        finally:
            saved.restore()
        if g0 is None:
            hz = torch._foreach_sub(g_plus, g_minus)
            torch._foreach_div_(hz, 2 * h)
        else:
            hz = torch._foreach_sub(g_plus, list(g0))
            torch._foreach_div_(hz, h)
        torch._foreach_mul_(hz, norm)
        return list(hz)

    def _fd_hessian(self, closure: Callable, eps: float, full: bool) -> tuple[Any, list[torch.Tensor], torch.Tensor]:
        """Gradient and Hessian from function values only (central differences).

        ``full=False`` evaluates the upper triangle (2n^2 + 1 evaluations); ``full=True`` both
        triangles and averages them (4n^2 - 2n + 1 evaluations).
        """
        params = self.params
        n = sum(p.numel() for p in params)
        p0 = params[0]
        elements = [_scalar_view(p, k) for p in params for k in range(p.numel())]
        g_flat = torch.zeros(n, dtype=p0.dtype, device=p0.device)
        H = torch.zeros(n, n, dtype=p0.dtype, device=p0.device)
        with _SavedParams(params) as saved:
            saved_elements = [_scalar_view(s, k) for s in saved.saved for k in range(s.numel())]
            saved.dirty = True
            fx = closure(False)
            for i in range(n):
                xi = elements[i]
                for j in range(n) if full else range(i, n):
                    xj = elements[j]
                    if i == j:
                        xi.add_(eps)
                        f_plus = closure(False)
                        xi.sub_(2 * eps)
                        f_minus = closure(False)
                        g_flat[i] = (f_plus - f_minus) / (2 * eps)
                        H[i, i] = (f_plus - 2 * fx + f_minus) / (eps ** 2)
                    else:
                        xi.add_(eps)
                        xj.add_(eps)
                        f_pp = closure(False)
                        xi.sub_(2 * eps)
                        f_np = closure(False)
                        xj.sub_(2 * eps)
                        f_nn = closure(False)
                        xi.add_(2 * eps)
                        f_pn = closure(False)
                        H[i, j] = (f_pp - f_np - f_pn + f_nn) / (4 * eps ** 2)
                        if not full:
                            H[j, i] = H[i, j]
                        xj.copy_(saved_elements[j])
                    xi.copy_(saved_elements[i])
        if full:
            H = (H + H.T) / 2
        return fx, _unflat(g_flat, params), H

    # ------------------------------------------------------------ Hessian-vector products
    @torch.no_grad()
    def hessian_vector_product(
        self,
        z: Sequence[torch.Tensor],
        rgrad: Sequence[torch.Tensor] | None,
        at_x0: bool,
        hvp_method: HVPMethod,
        h: float,
        retain_graph: bool = False,
    ) -> tuple[list[torch.Tensor], Sequence[torch.Tensor] | None]:
        """One Hessian-vector product ``H z``.

        Args:
            z: the vector, one tensor per parameter.
            rgrad: None the first time; then what the previous call returned (reuses the gradient
                and, for autograd methods, its graph — pass ``retain_graph=True`` until the last).
            at_x0: True at the objective's own parameters (the gradient is then cached on the
                objective), False at parameters the caller perturbed.
            hvp_method: ``'batched_autograd'`` / ``'autograd'`` (exact, double backward),
                ``'fd_forward'`` (``(g(x + h z) - g(x)) / h``, one extra gradient),
                ``'fd_central'`` (``(g(x + h z) - g(x - h z)) / 2h``, two extra gradients); the
                finite-difference step is taken along ``z / |z|``. ``'forward'``/``'central'``
                are aliases.
            h: finite-difference step.
            retain_graph: keep the autograd graph for further products.

        Returns:
            ``(Hz, rgrad)``; ``rgrad`` is the gradient at the current parameters, or None for
            ``'fd_central'`` when none was passed.
        """
        method = canonical_hvp_method(hvp_method)
        z = list(z)
        if method in ("batched_autograd", "autograd"):
            if rgrad is None:
                self._require_closure("hessian_vector_product")
            with torch.enable_grad():
                if rgrad is None:
                    rgrad = self._grads_with_graph(at_x0)
                return _vjp(list(rgrad), self.params, z, retain_graph=retain_graph), rgrad

        self._require_closure("hessian_vector_product")
        if method == "fd_forward" and rgrad is None:
            rgrad = self.get_grads(at_x0=at_x0)
        with _SavedParams(self.params) as saved:
            Hz = self._fd_hvp(z, h, rgrad if method == "fd_forward" else None, saved)
        return Hz, rgrad

    @torch.no_grad()
    def hessian_matrix_product(
        self,
        Z: torch.Tensor,
        rgrad: Sequence[torch.Tensor] | None,
        at_x0: bool,
        hvp_method: HVPMethod,
        h: float,
        retain_graph: bool = False,
    ) -> tuple[torch.Tensor, Sequence[torch.Tensor] | None]:
        """``H @ Z`` for ``Z`` of shape ``(n, k)`` (n = total number of parameter elements).

        ``'batched_autograd'`` computes all ``k`` products in one vectorised backward pass;
        the other methods loop over the columns. Arguments as in :meth:`hessian_vector_product`.

        Returns:
            ``(HZ, rgrad)`` with ``HZ`` of shape ``(n, k)``.
        """
        method = canonical_hvp_method(hvp_method)
        params = self.params
        if rgrad is None or method.startswith("fd"):
            self._require_closure("hessian_matrix_product")

        if method in ("batched_autograd", "autograd"):
            with torch.enable_grad():
                if rgrad is None:
                    rgrad = self._grads_with_graph(at_x0)
                flat_grad = _flat(list(rgrad))
                if method == "batched_autograd":
                    HZ = _batched_vjp(flat_grad, params, Z.T, retain_graph=retain_graph).T
                else:
                    k = Z.shape[1]
                    cols = [_flat(_vjp([flat_grad], params, [col], retain_graph=retain_graph or i < k - 1))
                            for i, col in enumerate(Z.unbind(1))]
                    HZ = torch.stack(cols, 1) if cols else Z.new_zeros(Z.shape)
            return HZ, rgrad

        if method == "fd_forward" and rgrad is None:
            rgrad = self.get_grads(at_x0=at_x0)
        g0 = rgrad if method == "fd_forward" else None
        with _SavedParams(params) as saved:
            cols = [_flat(self._fd_hvp(_unflat(col, params), h, g0, saved)) for col in Z.unbind(1)]
        return (torch.stack(cols, 1) if cols else Z.new_zeros(Z.shape)), rgrad

    @torch.no_grad()
    def hutchinson_hessian(
        self,
        rgrad: Sequence[torch.Tensor] | None,
        at_x0: bool,
        n_samples: int | None,
        distribution: Distributions | Sequence[Sequence[torch.Tensor]],
        hvp_method: HVPMethod,
        h: float,
        generator: torch.Generator | None,
        variance: Any = 1,
        zHz: bool = True,
        retain_graph: bool = False,
    ) -> tuple[list[torch.Tensor], Sequence[torch.Tensor] | None]:
        """Hutchinson's estimate of the Hessian diagonal: the mean of ``z * Hz`` over random ``z``.

        Args:
            rgrad: as in :meth:`hessian_vector_product`.
            at_x0: as in :meth:`hessian_vector_product`.
            n_samples: number of random vectors; None when ``distribution`` gives the vectors.
            distribution: ``'normal'``/``'gaussian'``, ``'uniform'``, ``'sphere'``,
                ``'rademacher'``, or a sequence of vectors (each a sequence of tensors).
            hvp_method: as in :meth:`hessian_vector_product`. With ``'batched_autograd'`` all
                products are one vectorised backward pass.
            h: finite-difference step.
            generator: ``torch.Generator`` for the random vectors (None: torch's default).
            variance: variance of the random vectors (a number or one per parameter). Default 1.
            zHz: average ``z * Hz`` (True, the diagonal estimate) or ``Hz`` (False).
            retain_graph: keep the autograd graph after the last product.

        Returns:
            ``(D, rgrad)``.
        """
        method = canonical_hvp_method(hvp_method)
        params = self.params
        if isinstance(distribution, str):
            _check_choice("distribution", distribution, DISTRIBUTIONS)
            if n_samples is None or n_samples < 1:
                raise ValueError(f"hutchinson_hessian: n_samples must be a positive int when distribution is "
                                 f"{distribution!r}, got {n_samples!r}")
            n = n_samples
            samples: list[list[torch.Tensor]] | None = None
        else:
            samples = [list(s) for s in distribution]
            if n_samples is not None and n_samples != len(samples):
                raise RuntimeError(f"hutchinson_hessian got {len(samples)} vectors in `distribution` but "
                                   f"n_samples={n_samples}; set n_samples to None when passing the vectors")
            n = len(samples)
            if n == 0:
                raise ValueError("hutchinson_hessian: `distribution` holds no vectors")

        def sample(i: int) -> list[torch.Tensor]:
            if samples is not None:
                return samples[i]
            return _sample_like(params, str(distribution), variance, generator)

        if n == 1 and method == "batched_autograd":
            method = "autograd"

        if method == "batched_autograd":
            Z = torch.stack([_flat(sample(i)) for i in range(n)], 1)
            HZ, rgrad = self.hessian_matrix_product(Z, rgrad=rgrad, at_x0=at_x0, hvp_method=method, h=h,
                                                    retain_graph=retain_graph)
            if zHz:
                HZ = HZ * Z
            return _unflat(HZ.mean(1), params), rgrad

        D: list[torch.Tensor] | None = None
        for i in range(n):
            z = sample(i)
            Hz, rgrad = self.hessian_vector_product(z, rgrad=rgrad, at_x0=at_x0, hvp_method=method, h=h,
                                                    retain_graph=retain_graph or i < n - 1)
            if zHz:
                torch._foreach_mul_(Hz, z)
            if D is None:
                D = Hz
            else:
                torch._foreach_add_(D, Hz)
        assert D is not None
        if n > 1:
            torch._foreach_div_(D, n)
        return D, rgrad

    # ------------------------------------------------------------ full Hessian and derivatives
    @torch.no_grad()
    def hessian(
        self,
        hessian_method: HessianMethod,
        h: float,
        at_x0: bool,
    ) -> tuple[torch.Tensor | None, Sequence[torch.Tensor] | None, torch.Tensor]:
        """The Hessian as an ``(n, n)`` matrix of the flattened, concatenated parameters.

        Args:
            hessian_method: ``'batched_autograd'`` (n products in one vectorised pass),
                ``'autograd'`` (n products in a loop), ``'functional_revrev'`` /
                ``'functional_fwdrev'`` (``torch.autograd.functional.hessian``, reverse- or
                vectorised forward-over-reverse), ``'func'`` (``torch.func.hessian``),
                ``'gfd_forward'`` / ``'gfd_central'`` (n gradient finite differences),
                ``'fd'`` / ``'fd_full'`` (function values only: upper triangle, or both
                triangles averaged), ``'thoad'`` (the ``thoad`` package).
            h: finite-difference step.
            at_x0: True at the objective's own parameters; then ``loss`` and ``grads`` are set
                on the objective when the method computes them and they were not set.

        Returns:
            ``(f, g, H)``; ``f`` and ``g`` (a per-parameter list) are None when the method does
            not compute them (functional methods; ``f`` for ``gfd_*``, ``g`` for ``gfd_central``).
        """
        _check_choice("hessian_method", hessian_method, HESSIAN_METHODS)
        thoad = _import_thoad() if hessian_method == "thoad" else None
        closure = self._require_closure("hessian")
        params = self.params
        n = sum(p.numel() for p in params)
        f: Any = None
        g_list: Sequence[torch.Tensor] | None = None

        if hessian_method in ("batched_autograd", "autograd", "thoad"):
            f = self._loss_with_graph(at_x0)
            with torch.enable_grad():
                if thoad is not None:
                    ctrl = thoad.backward(f, 2, crossings=True)
                    g_list = _unflat(_thoad_derivative(ctrl, params, 1), params)
                    H = _thoad_derivative(ctrl, params, 2)
                    ctrl.clear()
                else:
                    grads = _vjp([f], params, [torch.ones_like(f)], retain_graph=True, create_graph=True)
                    H = _jacobian(_flat(grads), params, batched=hessian_method == "batched_autograd",
                                  create_graph=False)
                    g_list = [g.detach() for g in grads]

        elif hessian_method in ("func", "functional_revrev", "functional_fwdrev"):
            x = _flat([p.detach() for p in params])
            loss_at = _loss_of_flat_input(closure, params)
            with torch.enable_grad():
                if hessian_method == "func":
                    H = torch.func.hessian(loss_at)(x)
                else:
                    fwdrev = hessian_method == "functional_fwdrev"
                    H = torch.autograd.functional.hessian(
                        loss_at, x, vectorize=fwdrev,
                        outer_jacobian_strategy="forward-mode" if fwdrev else "reverse-mode")

        elif hessian_method in ("gfd_forward", "gfd_central"):
            eye = torch.eye(n, dtype=params[0].dtype, device=params[0].device)
            H, g_list = self.hessian_matrix_product(eye, rgrad=None, at_x0=at_x0, h=h,
                                                    hvp_method="fd_forward" if hessian_method == "gfd_forward"
                                                    else "fd_central")

        else:  # fd, fd_full
            f, g_list, H = self._fd_hessian(closure, h, full=hessian_method == "fd_full")

        if at_x0:
            if f is not None and self.loss is None:
                self.loss = self.loss_approx = f
            if g_list is not None and self.grads is None:
                self.grads = list(g_list)
        return f, g_list, H.detach()

    @torch.no_grad()
    def derivatives(self, order: int, at_x0: bool, method: DerivativesMethod = "batched_autograd") -> tuple:
        """``(f, g, H, T3, ...)`` up to ``order``: the loss, the flat gradient ``(n,)``, the
        Hessian ``(n, n)``, the third-derivative tensor ``(n, n, n)``, ...

        ``method``: ``'batched_autograd'`` (one vectorised backward pass per order),
        ``'autograd'`` (a loop over the rows) or ``'thoad'``.
        """
        _check_choice("method", method, DERIVATIVES_METHODS)
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise ValueError(f"derivatives: order must be a non-negative int, got {order!r}")
        self._require_closure("derivatives")

        if order == 0:
            return (self.get_loss(False, at_x0=at_x0),)
        if order == 1:
            f, g_list = self.get_loss_grads(at_x0=at_x0)
            return f, _flat(g_list)

        if method == "thoad":
            thoad = _import_thoad()
            f = self._loss_with_graph(at_x0)
            with torch.enable_grad():
                ctrl = thoad.backward(f, order, crossings=True)
                result = (f.detach(), *(_thoad_derivative(ctrl, self.params, o) for o in range(1, order + 1)))
                ctrl.clear()
            return result

        with torch.enable_grad():
            f, g_list = self._loss_grads_with_graph(at_x0)
            T = _flat(g_list)
            n = T.numel()
            out = [f.detach(), T.detach()]
            for o in range(2, order + 1):
                rows = _jacobian(T.reshape(-1), self.params, batched=method == "batched_autograd",
                                 create_graph=o < order)
                T = rows.reshape(*T.shape, n)
                out.append(T.detach())
        return tuple(out)

    @torch.no_grad()
    def derivatives_at(self, x: torch.Tensor | Sequence[torch.Tensor], order: int,
                       method: DerivativesMethod = "batched_autograd") -> tuple:
        """:meth:`derivatives` at the point ``x`` (a flat vector or one tensor per parameter);
        the parameters are restored bitwise afterwards."""
        _check_choice("method", method, DERIVATIVES_METHODS)
        self._require_closure("derivatives_at")
        values = _as_list(x, self.params)
        with _SavedParams(self.params) as saved:
            saved.dirty = True
            for p, v in zip(self.params, values, strict=True):
                p.copy_(v)
            return self.derivatives(order=order, at_x0=False, method=method)

    # ------------------------------------------------------------ operators
    def list_Hvp_function(self, hvp_method: HVPMethod, h: float, at_x0: bool
                          ) -> tuple[list[torch.Tensor] | None, Callable[[Any], list[torch.Tensor]]]:
        """``(grad, H_mv)``: ``H_mv`` maps a vector (flat, or one tensor per parameter) to ``H v``
        as a list of tensors. ``grad`` is None for ``'fd_central'``."""
        method = canonical_hvp_method(hvp_method)
        self._require_closure("list_Hvp_function")
        params = self.params

        if method in ("batched_autograd", "autograd"):
            with torch.enable_grad():
                grad = self._grads_with_graph(at_x0)

            def H_mv_autograd(v: Any) -> list[torch.Tensor]:
                with torch.enable_grad():
                    return _vjp(grad, params, _as_list(v, params), retain_graph=True)

            return grad, H_mv_autograd

        grad_fd = self.get_grads(at_x0=at_x0) if method == "fd_forward" else None

        @torch.no_grad()
        def H_mv_fd(v: Any) -> list[torch.Tensor]:
            with _SavedParams(params) as saved:
                return self._fd_hvp(_as_list(v, params), h, grad_fd, saved)

        return grad_fd, H_mv_fd

    def tensor_Hvp_function(self, hvp_method: HVPMethod, h: float, at_x0: bool
                            ) -> tuple[list[torch.Tensor] | None, Callable[[torch.Tensor], torch.Tensor],
                                       Callable[[torch.Tensor], torch.Tensor]]:
        """``(grad, H_mv, H_mm)`` on flat tensors: ``H_mv(v)`` is ``(n,)``, ``H_mm(V)`` is ``H @ V`` for
        ``V`` of shape ``(n, k)``. With ``'batched_autograd'``, ``H_mm`` is one vectorised pass."""
        method = canonical_hvp_method(hvp_method)
        if method != "batched_autograd":
            grad, list_H_mv = self.list_Hvp_function(method, h, at_x0)

            def H_mv_loop(v: torch.Tensor) -> torch.Tensor:
                return _flat(list_H_mv(v))

            def H_mm_loop(V: torch.Tensor) -> torch.Tensor:
                return torch.stack([H_mv_loop(col) for col in V.unbind(-1)], -1)

            return grad, H_mv_loop, H_mm_loop

        self._require_closure("tensor_Hvp_function")
        params = self.params
        with torch.enable_grad():
            grad = self._grads_with_graph(at_x0)

        def H_mv(v: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                return _flat(_vjp(grad, params, _unflat(v, params), retain_graph=True))

        def H_mm(V: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                return _batched_vjp(_flat(grad), params, V.T, retain_graph=True).T

        return grad, H_mv, H_mm
