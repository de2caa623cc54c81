"""Objective's derivative helpers: Hessian-vector/matrix products, Hutchinson, Hessian, derivatives.

Three kinds of checks:

* analytic: on ``f(x) = 0.5 x^T A x + b^T x`` (H = A, Hv = Av, E[z * Az] = diag(A)), on
  Rosenbrock's known Hessian, and on a cubic whose third-derivative tensor is known;
* parity: ``tzfast.core.Objective`` against ``torchzero.core.Objective`` (0.4.4) on the same
  closure, for every method option (torchzero's ``'fd'`` Hessian is compared after undoing
  its index permutation, see ``_torchzero_fd_permutation``);
* contracts: bad method names, missing closures, batched methods being one vectorised backward
  pass, and finite-difference methods restoring the parameters bitwise — also when the closure
  raises.
"""
from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchzero as tzo

import tzfast as tz
from tzfast.core.derivatives import DERIVATIVES_METHODS, HESSIAN_METHODS, HVP_METHODS, DerivativesMixin

# torch.autograd.functional's forward mode loads decompositions through torch.jit.script
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

DT = torch.float64
HVP_CANONICAL = ["batched_autograd", "autograd", "fd_forward", "fd_central"]
HESSIAN_NO_THOAD = [m for m in HESSIAN_METHODS if m != "thoad"]
AUTOGRAD_EXACT = dict(rtol=1e-10, atol=1e-10)
BITWISE = dict(rtol=0.0, atol=0.0)


# ----------------------------------------------------------------------------- problems
class Problem:
    """Parameters, a counting closure and the analytic derivatives of the loss."""

    def __init__(self, params: list[torch.Tensor], loss_fn: Callable[[torch.Tensor], torch.Tensor]):
        self.params = params
        self.loss_fn = loss_fn
        self.calls = 0
        self.raise_on_call: int | None = None

    @property
    def n(self) -> int:
        return sum(p.numel() for p in self.params)

    def x(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def closure(self, backward: bool = True) -> torch.Tensor:
        self.calls += 1
        if self.raise_on_call is not None and self.calls >= self.raise_on_call:
            raise ArithmeticError("closure failed on purpose")
        loss = self.loss_fn(torch.cat([p.reshape(-1) for p in self.params]))
        if backward:
            for p in self.params:
                p.grad = None
            loss.backward()
        return loss

    def tzfast(self) -> tz.core.Objective:
        return tz.core.Objective(self.params, self.closure)

    def torchzero(self) -> Any:
        return tzo.core.Objective(self.params, self.closure)


def quadratic(seed: int = 0) -> tuple[Problem, torch.Tensor, torch.Tensor]:
    """``0.5 x^T A x + b^T x`` over a (2, 3) and a (4,) parameter; returns (problem, A, b)."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(10, 10, generator=g, dtype=DT)
    A = M @ M.T / 10 + torch.diag(torch.linspace(1, 3, 10, dtype=DT))
    b = torch.randn(10, generator=g, dtype=DT)
    params = [torch.randn(2, 3, generator=g, dtype=DT).requires_grad_(),
              torch.randn(4, generator=g, dtype=DT).requires_grad_()]
    # elementwise forms (not `v @ A @ v`): torch.autograd.functional's legacy vmap needs them
    return Problem(params, lambda v: 0.5 * (v * (A @ v)).sum() + (b * v).sum()), A, b


def cubic(seed: int = 1) -> tuple[Problem, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``0.5 x^T A x + sum c_i x_i^3`` over a (2,) and a (3,) parameter; returns (problem, A, c, x)."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(5, 5, generator=g, dtype=DT)
    A = M @ M.T / 5 + torch.eye(5, dtype=DT)
    c = torch.randn(5, generator=g, dtype=DT)
    # mixed magnitudes: near small values, x + s - s is not x bitwise for an FD step s
    params = [(torch.randn(2, generator=g, dtype=DT) * torch.tensor([3e-4, 1.0], dtype=DT)).requires_grad_(),
              (torch.randn(3, generator=g, dtype=DT) * torch.tensor([2e-4, 5e-4, 1.5], dtype=DT)).requires_grad_()]
    problem = Problem(params, lambda v: 0.5 * (v * (A @ v)).sum() + (c * v ** 3).sum())
    return problem, A, c, problem.x()


def rosenbrock() -> Problem:
    """Rosenbrock over two 0-d parameters at (-1.2, 1.0)."""
    params = [torch.tensor(-1.2, dtype=DT, requires_grad=True), torch.tensor(1.0, dtype=DT, requires_grad=True)]
    return Problem(params, lambda v: (1 - v[0]) ** 2 + 100 * (v[1] - v[0] ** 2) ** 2)


def rosenbrock_hessian(x: float, y: float) -> torch.Tensor:
    return torch.tensor([[1200 * x ** 2 - 400 * y + 2, -400 * x], [-400 * x, 200.0]], dtype=DT)


def flat(tensors: Any) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def unflat(vec: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for p in like:
        out.append(vec[i:i + p.numel()].view_as(p).clone())
        i += p.numel()
    return out


def bits(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().view(torch.int64) for p in params]


def assert_bitwise(params: list[torch.Tensor], before: list[torch.Tensor]) -> None:
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach().view(torch.int64), b), "parameters were not restored bitwise"


# ----------------------------------------------------------------------------- basics
def test_objective_and_var_have_the_derivative_helpers() -> None:
    assert issubclass(tz.core.Objective, DerivativesMixin)
    assert tz.core.Var is tz.core.Objective
    for name in ("hessian_vector_product", "hessian_matrix_product", "hutchinson_hessian", "hessian",
                 "derivatives", "derivatives_at", "list_Hvp_function", "tensor_Hvp_function"):
        assert callable(getattr(tz.core.Objective, name))


# ----------------------------------------------------------------------------- analytic values
@pytest.mark.parametrize("method", HVP_METHODS)
def test_hvp_equals_A_times_z_on_quadratic(method: str) -> None:
    prob, A, b = quadratic()
    z = unflat(torch.linspace(-1, 2, 10, dtype=DT), prob.params)
    obj = prob.tzfast()
    Hz, rgrad = obj.hessian_vector_product(z, rgrad=None, at_x0=True, hvp_method=method, h=1e-3)  # type: ignore[arg-type]
    tol = AUTOGRAD_EXACT if "autograd" in method else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(flat(Hz), A @ flat(z), **tol)
    assert [t.shape for t in Hz] == [p.shape for p in prob.params]
    if method in ("fd_central", "central"):
        assert rgrad is None
    else:
        assert rgrad is not None
        torch.testing.assert_close(flat(rgrad), A @ prob.x() + b, **AUTOGRAD_EXACT)
        assert obj.grads is not None  # at_x0: the gradient is cached on the objective


@pytest.mark.parametrize("method", HVP_METHODS)
def test_hessian_matrix_product_equals_A_times_Z(method: str) -> None:
    prob, A, _ = quadratic()
    Z = torch.randn(10, 4, generator=torch.Generator().manual_seed(3), dtype=DT)
    HZ, _ = prob.tzfast().hessian_matrix_product(Z, rgrad=None, at_x0=True, hvp_method=method, h=1e-3)  # type: ignore[arg-type]
    assert HZ.shape == (10, 4)
    tol = AUTOGRAD_EXACT if "autograd" in method else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(HZ, A @ Z, **tol)


def test_hvp_reuses_rgrad_across_calls_with_retain_graph() -> None:
    prob, A, _ = quadratic()
    obj = prob.tzfast()
    zs = [unflat(torch.eye(10, dtype=DT)[i], prob.params) for i in range(3)]
    rgrad = None
    for i, z in enumerate(zs):
        Hz, rgrad = obj.hessian_vector_product(z, rgrad, at_x0=True, hvp_method="autograd", h=1e-3,
                                               retain_graph=i < 2)
        torch.testing.assert_close(flat(Hz), A[:, i], **AUTOGRAD_EXACT)
    assert prob.calls == 1  # one closure evaluation for all three products


@pytest.mark.parametrize("method", HESSIAN_NO_THOAD)
def test_hessian_equals_A_on_quadratic(method: str) -> None:
    prob, A, b = quadratic()
    obj = prob.tzfast()
    f, g, H = obj.hessian(method, h=1e-3, at_x0=True)  # type: ignore[arg-type]
    x = prob.x()
    tol = AUTOGRAD_EXACT if method in ("batched_autograd", "autograd", "func") or method.startswith("functional") \
        else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(H, A, **tol)
    assert not H.requires_grad
    loss = 0.5 * x @ A @ x + b @ x
    if method in ("batched_autograd", "autograd", "fd", "fd_full"):
        torch.testing.assert_close(f, loss)
        assert obj.loss is not None
    else:
        assert f is None
    if method in ("batched_autograd", "autograd", "fd", "fd_full", "gfd_forward"):
        assert g is not None and [t.shape for t in g] == [p.shape for p in prob.params]
        torch.testing.assert_close(flat(g), A @ x + b, **tol)
        assert obj.grads is not None
    else:
        assert g is None


@pytest.mark.parametrize("method", HESSIAN_NO_THOAD)
def test_hessian_of_rosenbrock_matches_closed_form(method: str) -> None:
    prob = rosenbrock()
    h = 1e-7 if method == "gfd_forward" else 1e-4
    _, _, H = prob.tzfast().hessian(method, h=h, at_x0=True)  # type: ignore[arg-type]
    torch.testing.assert_close(H, rosenbrock_hessian(-1.2, 1.0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["batched_autograd", "autograd", "func", "gfd_central", "fd"])
def test_hessian_with_a_non_contiguous_parameter(method: str) -> None:
    g = torch.Generator().manual_seed(2)
    M = torch.randn(6, 6, generator=g, dtype=DT)
    A = M @ M.T / 6 + torch.eye(6, dtype=DT)
    W = torch.randn(2, 3, generator=g, dtype=DT).t().requires_grad_()  # a (3, 2) leaf with strides (1, 3)
    assert not W.is_contiguous()
    prob = Problem([W], lambda v: 0.5 * (v * (A @ v)).sum())
    before = bits(prob.params)
    _, _, H = prob.tzfast().hessian(method, 1e-3, True)  # type: ignore[arg-type]
    torch.testing.assert_close(H, A, rtol=1e-5, atol=1e-5)
    assert_bitwise(prob.params, before)
    assert W.stride() == (1, 3)


def test_hessian_not_at_x0_leaves_the_objective_untouched() -> None:
    prob, A, _ = quadratic()
    obj = prob.tzfast()
    _, _, H = obj.hessian("batched_autograd", h=1e-3, at_x0=False)
    torch.testing.assert_close(H, A, **AUTOGRAD_EXACT)
    assert obj.loss is None and obj.grads is None


def test_hutchinson_with_basis_vectors_is_exact() -> None:
    prob, A, _ = quadratic()
    basis = [unflat(e, prob.params) for e in torch.eye(10, dtype=DT)]
    for method in HVP_CANONICAL:
        tol = AUTOGRAD_EXACT if "autograd" in method else dict(rtol=1e-6, atol=1e-6)
        D, _ = prob.tzfast().hutchinson_hessian(None, True, None, basis, method, 1e-3, None)  # type: ignore[arg-type]
        torch.testing.assert_close(flat(D), torch.diagonal(A) / 10, **tol)
        D, _ = prob.tzfast().hutchinson_hessian(None, True, None, basis, method, 1e-3, None, zHz=False)  # type: ignore[arg-type]
        torch.testing.assert_close(flat(D), A.sum(1) / 10, **tol)


@pytest.mark.parametrize("distribution", ["rademacher", "normal"])
def test_hutchinson_expectation_is_the_hessian_diagonal(distribution: str) -> None:
    prob, A, _ = quadratic()
    n = 4000
    gen = torch.Generator().manual_seed(0)
    D, _ = prob.tzfast().hutchinson_hessian(None, True, n, distribution, "batched_autograd", 1e-3, gen)  # type: ignore[arg-type]
    diag = torch.diagonal(A)
    off = (A ** 2).sum(1) - diag ** 2
    var = off if distribution == "rademacher" else off + 2 * diag ** 2  # variance of z_i (Az)_i
    assert (flat(D) - diag).abs().le(5 * (var / n).sqrt()).all()


def test_hutchinson_batched_equals_the_loop_with_the_same_generator() -> None:
    prob, _, _ = quadratic()
    out = []
    for method in ("batched_autograd", "autograd"):
        gen = torch.Generator().manual_seed(7)
        D, _ = prob.tzfast().hutchinson_hessian(None, True, 6, "normal", method, 1e-3, gen)  # type: ignore[arg-type]
        out.append(flat(D))
    torch.testing.assert_close(out[0], out[1], **AUTOGRAD_EXACT)


def test_derivatives_of_a_cubic() -> None:
    prob, A, c, x = cubic()
    for method in ("batched_autograd", "autograd"):
        f, g, H, T3 = prob.tzfast().derivatives(3, at_x0=True, method=method)  # type: ignore[arg-type]
        torch.testing.assert_close(f.reshape(()), 0.5 * x @ A @ x + (c * x ** 3).sum())
        torch.testing.assert_close(g, A @ x + 3 * c * x ** 2, **AUTOGRAD_EXACT)
        torch.testing.assert_close(H, A + torch.diag(6 * c * x), **AUTOGRAD_EXACT)
        expected = torch.zeros(5, 5, 5, dtype=DT)
        expected[range(5), range(5), range(5)] = 6 * c
        torch.testing.assert_close(T3, expected, **AUTOGRAD_EXACT)
    assert len(prob.tzfast().derivatives(0, at_x0=True)) == 1
    f, g = prob.tzfast().derivatives(1, at_x0=True)
    assert g.shape == (5,)


def test_derivatives_at_another_point_restores_parameters() -> None:
    prob, A, c, _ = cubic()
    before = bits(prob.params)
    y = torch.linspace(-1, 1, 5, dtype=DT)
    for point in (y, unflat(y, prob.params)):
        _, g, H = prob.tzfast().derivatives_at(point, order=2)
        torch.testing.assert_close(g, A @ y + 3 * c * y ** 2, **AUTOGRAD_EXACT)
        torch.testing.assert_close(H, A + torch.diag(6 * c * y), **AUTOGRAD_EXACT)
        assert_bitwise(prob.params, before)


@pytest.mark.parametrize("method", HVP_METHODS)
def test_hvp_functions_apply_the_hessian(method: str) -> None:
    prob, A, _ = quadratic()
    tol = AUTOGRAD_EXACT if "autograd" in method else dict(rtol=1e-6, atol=1e-6)
    v = torch.linspace(-1, 1, 10, dtype=DT)
    V = torch.randn(10, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    grad, H_mv = prob.tzfast().list_Hvp_function(method, 1e-3, True)  # type: ignore[arg-type]
    assert (grad is None) == (method in ("fd_central", "central"))
    torch.testing.assert_close(flat(H_mv(v)), A @ v, **tol)
    torch.testing.assert_close(flat(H_mv(unflat(v, prob.params))), A @ v, **tol)
    _, H_mv_t, H_mm = prob.tzfast().tensor_Hvp_function(method, 1e-3, True)  # type: ignore[arg-type]
    torch.testing.assert_close(H_mv_t(v), A @ v, **tol)
    torch.testing.assert_close(H_mm(V), A @ V, **tol)


def test_gradient_cached_without_graph_is_evaluated_again() -> None:
    prob, A, _ = quadratic()
    obj = prob.tzfast()
    obj.get_grads()  # an earlier module computed the gradient without create_graph
    z = unflat(torch.ones(10, dtype=DT), prob.params)
    Hz, _ = obj.hessian_vector_product(z, None, True, "autograd", 1e-3)
    torch.testing.assert_close(flat(Hz), A.sum(1), **AUTOGRAD_EXACT)
    _, _, H = obj.hessian("batched_autograd", 1e-3, True)
    torch.testing.assert_close(H, A, **AUTOGRAD_EXACT)


def test_parameter_the_loss_ignores_gets_zero_hessian_blocks() -> None:
    prob, A, _ = quadratic()
    unused = torch.ones(3, dtype=DT, requires_grad=True)
    obj = tz.core.Objective([*prob.params, unused], prob.closure)
    expected = torch.zeros(13, 13, dtype=DT)
    expected[:10, :10] = A
    for method in ("batched_autograd", "autograd"):
        _, _, H = obj.hessian(method, 1e-3, at_x0=False)  # type: ignore[arg-type]
        torch.testing.assert_close(H, expected, **AUTOGRAD_EXACT)
    HZ, _ = obj.hessian_matrix_product(torch.eye(13, dtype=DT), None, False, "batched_autograd", 1e-3)
    torch.testing.assert_close(HZ, expected, **AUTOGRAD_EXACT)


# ----------------------------------------------------------------------------- parity with torchzero
@pytest.mark.parametrize("method", HVP_CANONICAL)
def test_hvp_and_hmp_match_torchzero(method: str) -> None:
    ours, theirs = cubic()[0], cubic()[0]
    z = unflat(torch.linspace(-1, 2, 5, dtype=DT), ours.params)
    a, ga = ours.tzfast().hessian_vector_product(z, None, True, method, 1e-3)  # type: ignore[arg-type]
    b, gb = theirs.torchzero().hessian_vector_product(z, None, True, method, 1e-3)
    torch.testing.assert_close(flat(a), flat(b), **BITWISE)
    assert (ga is None) == (gb is None)
    Z = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=DT)
    HZa, _ = ours.tzfast().hessian_matrix_product(Z, None, True, method, 1e-3)  # type: ignore[arg-type]
    HZb, _ = theirs.torchzero().hessian_matrix_product(Z, None, True, method, 1e-3)
    torch.testing.assert_close(HZa, HZb, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("alias,canonical", [("forward", "fd_forward"), ("central", "fd_central")])
def test_hvp_aliases_equal_torchzero_fd_methods(alias: str, canonical: str) -> None:
    ours, theirs = cubic()[0], cubic()[0]
    z = unflat(torch.linspace(-1, 2, 5, dtype=DT), ours.params)
    a, _ = ours.tzfast().hessian_vector_product(z, None, True, alias, 1e-3)  # type: ignore[arg-type]
    b, _ = theirs.torchzero().hessian_vector_product(z, None, True, canonical, 1e-3)
    torch.testing.assert_close(flat(a), flat(b), **BITWISE)


def _torchzero_fd_permutation(params: list[torch.Tensor]) -> torch.Tensor:
    """torchzero 0.4.4's ``hessian_fd`` perturbs element ``-k`` (mod numel) of a parameter while
    writing row/column ``k``: this index map undoes it."""
    idx, start = [], 0
    for p in params:
        n = p.numel()
        idx += [start + (-k) % n for k in range(n)]
        start += n
    return torch.tensor(idx)


@pytest.mark.parametrize("method", HESSIAN_NO_THOAD)
def test_hessian_matches_torchzero(method: str) -> None:
    ours, theirs = cubic()[0], cubic()[0]
    fa, ga, Ha = ours.tzfast().hessian(method, 1e-4, True)  # type: ignore[arg-type]
    fb, gb, Hb = theirs.torchzero().hessian(method, 1e-4, True)
    assert ours.calls == theirs.calls  # the same number of closure evaluations
    if method in ("fd", "fd_full"):
        # the permutation is a real difference on this problem, not a relabelling of equal values
        assert not torch.allclose(Ha, Hb)
        perm = _torchzero_fd_permutation(ours.params)
        Hb = Hb[perm][:, perm]
    torch.testing.assert_close(Ha, Hb, rtol=1e-9, atol=1e-9)
    assert (fa is None) == (fb is None) and (ga is None) == (gb is None)
    if fa is not None:
        torch.testing.assert_close(fa.detach(), fb.detach())
    if ga is not None:
        torch.testing.assert_close(flat(ga), flat(gb), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ["batched_autograd", "autograd"])
@pytest.mark.parametrize("at_x0", [True, False])
def test_derivatives_match_torchzero(method: str, at_x0: bool) -> None:
    ours, theirs = cubic()[0], cubic()[0]
    for order in range(4):
        a = ours.tzfast().derivatives(order, at_x0, method)  # type: ignore[arg-type]
        b = theirs.torchzero().derivatives(order, at_x0, method)
        assert len(a) == len(b) == order + 1
        for ta, tb in zip(a, b, strict=True):
            torch.testing.assert_close(ta, tb.detach(), **BITWISE)
    y = torch.linspace(-1, 1, 5, dtype=DT)
    a = ours.tzfast().derivatives_at(y, 3, method)  # type: ignore[arg-type]
    b = theirs.torchzero().derivatives_at(y, 3, method)
    for ta, tb in zip(a, b, strict=True):
        torch.testing.assert_close(ta, tb.detach(), **BITWISE)


@pytest.mark.parametrize("distribution", ["normal", "uniform", "sphere", "rademacher"])
@pytest.mark.parametrize("variance", [1, 2.5])
def test_hutchinson_draws_like_torchzero(distribution: str, variance: float) -> None:
    ours, theirs = quadratic()[0], quadratic()[0]
    results = []
    for make in (ours.tzfast, theirs.torchzero):
        D, _ = make().hutchinson_hessian(None, True, 5, distribution, "autograd", 1e-3,  # type: ignore[arg-type]
                                         torch.Generator().manual_seed(11), variance=variance)
        results.append(flat(D))
    torch.testing.assert_close(results[0], results[1], **AUTOGRAD_EXACT)
    # our batched method averages the same vectors (torchzero's batched path draws only one)
    D, _ = ours.tzfast().hutchinson_hessian(None, True, 5, distribution, "batched_autograd", 1e-3,  # type: ignore[arg-type]
                                            torch.Generator().manual_seed(11), variance=variance)
    torch.testing.assert_close(flat(D), results[1], **AUTOGRAD_EXACT)


@pytest.mark.parametrize("method", HVP_CANONICAL)
def test_hutchinson_with_given_vectors_matches_torchzero(method: str) -> None:
    ours, theirs = quadratic()[0], quadratic()[0]
    g = torch.Generator().manual_seed(5)
    vectors = [[torch.randn(p.shape, generator=g, dtype=DT) for p in ours.params] for _ in range(3)]
    a, _ = ours.tzfast().hutchinson_hessian(None, True, None, vectors, method, 1e-3, None)  # type: ignore[arg-type]
    b, _ = theirs.torchzero().hutchinson_hessian(None, True, None, vectors, method, 1e-3, None)
    torch.testing.assert_close(flat(a), flat(b), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", HVP_CANONICAL)
def test_hvp_functions_match_torchzero(method: str) -> None:
    ours, theirs = cubic()[0], cubic()[0]
    V = torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=DT)
    ga, la = ours.tzfast().list_Hvp_function(method, 1e-3, True)  # type: ignore[arg-type]
    gb, lb = theirs.torchzero().list_Hvp_function(method, 1e-3, True)
    assert (ga is None) == (gb is None)
    if ga is not None:
        torch.testing.assert_close(flat(ga), flat(gb))
    torch.testing.assert_close(flat(la(V[:, 0])), flat(lb(V[:, 0])), rtol=1e-9, atol=1e-9)
    _, mva, mma = ours.tzfast().tensor_Hvp_function(method, 1e-3, True)  # type: ignore[arg-type]
    _, mvb, mmb = theirs.torchzero().tensor_Hvp_function(method, 1e-3, True)
    torch.testing.assert_close(mva(V[:, 1]), mvb(V[:, 1]), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mma(V), mmb(V), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- batched is vectorised
def _record_autograd_grad(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    calls: list[bool] = []
    original = torch.autograd.grad

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(bool(kwargs.get("is_grads_batched", False)))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", recording)
    return calls


def test_batched_autograd_is_one_vectorised_backward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    prob, A, _ = quadratic()
    calls = _record_autograd_grad(monkeypatch)
    HZ, _ = prob.tzfast().hessian_matrix_product(torch.eye(10, dtype=DT), None, True, "batched_autograd", 1e-3)
    assert calls == [False, True]  # the gradient, then all 10 products at once
    torch.testing.assert_close(HZ, A, **AUTOGRAD_EXACT)

    calls.clear()
    prob.tzfast().hessian("batched_autograd", 1e-3, True)
    assert calls.count(True) == 1 and len(calls) == 2
    calls.clear()
    prob.tzfast().hutchinson_hessian(None, True, 8, "rademacher", "batched_autograd", 1e-3, None)  # type: ignore[arg-type]
    assert calls.count(True) == 1 and len(calls) == 2
    calls.clear()
    _, _, H_mm = prob.tzfast().tensor_Hvp_function("batched_autograd", 1e-3, True)
    H_mm(torch.eye(10, dtype=DT)[:, :4])
    assert calls.count(True) == 1 and len(calls) == 2
    calls.clear()
    cubic()[0].tzfast().derivatives(3, True, "batched_autograd")  # a quadratic's T3 needs no pass
    assert calls.count(True) == 2 and len(calls) == 3  # one batched pass per order above 1

    calls.clear()
    prob.tzfast().hessian_matrix_product(torch.eye(10, dtype=DT), None, True, "autograd", 1e-3)
    assert calls == [False] * 11  # the looped method, for contrast


# ----------------------------------------------------------------------------- bad input
def test_unknown_hvp_method_names_the_accepted_values() -> None:
    prob, _, _ = quadratic()
    obj = prob.tzfast()
    z = [torch.zeros_like(p) for p in prob.params]
    calls: list[Callable[[], Any]] = [
        lambda: obj.hessian_vector_product(z, None, True, "newton", 1e-3),  # type: ignore[arg-type]
        lambda: obj.hessian_matrix_product(torch.eye(10, dtype=DT), None, True, "newton", 1e-3),  # type: ignore[arg-type]
        lambda: obj.hutchinson_hessian(None, True, 2, "normal", "newton", 1e-3, None),  # type: ignore[arg-type]
        lambda: obj.list_Hvp_function("newton", 1e-3, True),  # type: ignore[arg-type]
        lambda: obj.tensor_Hvp_function("newton", 1e-3, True),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(ValueError, match="hvp_method 'newton'") as info:
            call()
        for name in HVP_METHODS:
            assert repr(name) in str(info.value)
    assert prob.calls == 0  # checked before anything was evaluated


def test_unknown_hessian_and_derivatives_methods_name_the_accepted_values() -> None:
    prob, _, _ = quadratic()
    obj = prob.tzfast()
    with pytest.raises(ValueError, match="hessian_method 'jax'") as info:
        obj.hessian("jax", 1e-3, True)  # type: ignore[arg-type]
    for name in HESSIAN_METHODS:
        assert repr(name) in str(info.value)
    for call in (lambda: obj.derivatives(2, True, "func"), lambda: obj.derivatives_at(prob.x(), 2, "func")):  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="method 'func'") as info:
            call()
        for name in DERIVATIVES_METHODS:
            assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="order"):
        obj.derivatives(-1, True)
    assert prob.calls == 0


def test_bad_hutchinson_arguments() -> None:
    prob, _, _ = quadratic()
    obj = prob.tzfast()
    vectors = [[torch.ones_like(p) for p in prob.params]] * 2
    with pytest.raises(RuntimeError, match="n_samples"):
        obj.hutchinson_hessian(None, True, 3, vectors, "autograd", 1e-3, None)
    with pytest.raises(ValueError, match="distribution 'cauchy'.*'rademacher'"):
        obj.hutchinson_hessian(None, True, 3, "cauchy", "autograd", 1e-3, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_samples"):
        obj.hutchinson_hessian(None, True, None, "normal", "autograd", 1e-3, None)


def test_missing_closure_is_a_runtime_error_naming_the_closure() -> None:
    params = [torch.ones(3, dtype=DT, requires_grad=True)]
    obj = tz.core.Objective(params, None)
    z = [torch.ones(3, dtype=DT)]
    calls: list[Callable[[], Any]] = [
        lambda: obj.hessian("batched_autograd", 1e-3, True),
        lambda: obj.hessian("fd", 1e-3, True),
        lambda: obj.derivatives(2, True),
        lambda: obj.derivatives_at(torch.zeros(3, dtype=DT), 2),
        lambda: obj.hutchinson_hessian(None, True, 2, "normal", "batched_autograd", 1e-3, None),
        lambda: obj.list_Hvp_function("autograd", 1e-3, True),
        lambda: obj.tensor_Hvp_function("batched_autograd", 1e-3, True),
        lambda: obj.tensor_Hvp_function("fd_central", 1e-3, True),
    ]
    for method in HVP_METHODS:
        calls.append(lambda m=method: obj.hessian_vector_product(z, None, True, m, 1e-3))
        calls.append(lambda m=method: obj.hessian_matrix_product(torch.eye(3, dtype=DT), None, True, m, 1e-3))
    for call in calls:
        with pytest.raises(RuntimeError, match="needs a closure"):
            call()
    assert all(torch.equal(p, torch.ones(3, dtype=DT)) for p in params)


def test_thoad_missing_raises_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "thoad", None)  # makes `import thoad` fail even where it is installed
    prob, _, _ = quadratic()
    with pytest.raises(ImportError, match="thoad is not installed"):
        prob.tzfast().hessian("thoad", 1e-3, True)
    with pytest.raises(ImportError, match="thoad is not installed"):
        prob.tzfast().derivatives(3, True, "thoad")
    assert prob.calls == 0


class _FakeThoadController:
    """Mimics ``thoad.Controller.fetch_hgrad``: blocks of shape ``(1, *p_i.shape, *p_j.shape, ...)``."""

    def __init__(self, f: torch.Tensor, params: list[torch.Tensor], order: int):
        self.params = params
        self.numels = [p.numel() for p in params]
        T = torch.cat([g.reshape(-1) for g in torch.autograd.grad(f, params, create_graph=True)])
        self.tensors = {1: T.detach()}
        for o in range(2, order + 1):
            rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(t, params, retain_graph=True,
                                                                          create_graph=True)])
                    for t in T.reshape(-1)]
            T = torch.stack(rows).reshape(*T.shape, -1)
            self.tensors[o] = T.detach()
        self.cleared = False

    def fetch_hgrad(self, variables: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, Any]:
        ids = [next(i for i, p in enumerate(self.params) if p is v) for v in variables]
        offsets = [sum(self.numels[:i]) for i in range(len(self.params) + 1)]
        block = self.tensors[len(ids)][tuple(slice(offsets[i], offsets[i + 1]) for i in ids)]
        return block.reshape(1, *[s for i in ids for s in self.params[i].shape]), None

    def clear(self) -> None:
        self.cleared = True


def test_thoad_results_are_assembled_per_parameter_block(monkeypatch: pytest.MonkeyPatch) -> None:
    prob, A, c, x = cubic()
    fake = types.ModuleType("thoad")
    fake.backward = lambda f, order, crossings=False: _FakeThoadController(f, prob.params, order)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "thoad", fake)
    f, g, H = prob.tzfast().hessian("thoad", 1e-3, True)
    assert g is not None
    torch.testing.assert_close(flat(g), A @ x + 3 * c * x ** 2, **AUTOGRAD_EXACT)
    torch.testing.assert_close(H, A + torch.diag(6 * c * x), **AUTOGRAD_EXACT)
    expected = prob.tzfast().derivatives(3, True, "batched_autograd")
    for ta, tb in zip(prob.tzfast().derivatives(3, True, "thoad"), expected, strict=True):
        torch.testing.assert_close(ta.reshape(tb.shape), tb, **AUTOGRAD_EXACT)


# ----------------------------------------------------------------------------- bitwise restoration
def _fd_operations(prob: Problem) -> dict[str, Callable[[Any], Any]]:
    n = prob.n
    z = unflat(torch.linspace(-1, 2, n, dtype=DT), prob.params)
    Z = torch.randn(n, 3, generator=torch.Generator().manual_seed(9), dtype=DT)
    ops: dict[str, Callable[[Any], Any]] = {
        "derivatives_at": lambda o: o.derivatives_at(torch.linspace(-1, 1, n, dtype=DT), 2),
        "list_Hvp_function_fd": lambda o: o.list_Hvp_function("fd_central", 1e-3, True)[1](z),
        "tensor_Hvp_function_fd": lambda o: o.tensor_Hvp_function("fd_forward", 1e-3, True)[2](Z),
        "hutchinson_fd": lambda o: o.hutchinson_hessian(None, True, 3, "normal", "fd_central", 1e-3, None),
    }
    for m in ("fd_forward", "fd_central", "forward", "central"):
        ops[f"hvp_{m}"] = lambda o, m=m: o.hessian_vector_product(z, None, True, m, 1e-3)
        ops[f"hmp_{m}"] = lambda o, m=m: o.hessian_matrix_product(Z, None, True, m, 1e-3)
    for m in ("gfd_forward", "gfd_central", "fd", "fd_full", "func", "functional_revrev", "functional_fwdrev"):
        ops[f"hessian_{m}"] = lambda o, m=m: o.hessian(m, 1e-3, True)
    return ops


FD_OPERATIONS = sorted(_fd_operations(cubic()[0]))


def test_naive_step_and_unstep_would_not_restore_these_parameters() -> None:
    """Guards the tests below: on this problem, ``x + s - s`` (how torchzero undoes a step) is
    not ``x`` bitwise, so a restoration by arithmetic would be caught."""
    prob = cubic()[0]
    x = prob.x()
    z = torch.linspace(-1, 2, prob.n, dtype=DT)
    s = z / torch.linalg.vector_norm(z) * 1e-3
    assert not torch.equal(x + s - s - s + s, x)
    before = bits(prob.params)
    prob.torchzero().hessian_vector_product(unflat(z, prob.params), None, True, "fd_central", 1e-3)
    assert not all(torch.equal(p.detach().view(torch.int64), b) for p, b in zip(prob.params, before, strict=True))


@pytest.mark.parametrize("op", FD_OPERATIONS)
def test_parameters_restored_bitwise_after(op: str) -> None:
    prob = cubic()[0]
    before = bits(prob.params)
    _fd_operations(prob)[op](prob.tzfast())
    assert prob.calls > 0
    assert_bitwise(prob.params, before)
    assert all(p.grad is None for p in prob.params)


@pytest.mark.parametrize("op", FD_OPERATIONS)
def test_parameters_restored_bitwise_when_the_closure_raises(op: str) -> None:
    """The closure raises on its first, then on its second evaluation inside the operation
    (the gradient at x0 is cached beforehand, so most of these are at perturbed points)."""
    def fresh() -> tuple[Problem, Any]:
        prob = cubic()[0]
        obj = prob.tzfast()
        obj.get_grads()
        prob.calls = 0
        return prob, obj

    prob, obj = fresh()
    _fd_operations(prob)[op](obj)
    evaluations = prob.calls
    for fail_at in range(1, min(evaluations, 2) + 1):
        prob, obj = fresh()
        before = bits(prob.params)
        prob.raise_on_call = fail_at
        with pytest.raises(ArithmeticError, match="on purpose"):
            _fd_operations(prob)[op](obj)
        assert_bitwise(prob.params, before)
