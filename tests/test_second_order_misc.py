"""NaturalGradient (EX-33..EX-35), ImprovedNewton, InverseFreeNewton, the multipoint methods,
MatrixMomentum and HpuEstimate: torchzero parity, analytic checks and bad input."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchzero
from conftest import assert_traj_close, flat, make_problem

import tzfast as tz

pytestmark = pytest.mark.usefixtures("single_thread")


def _convex_problem() -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """L2-regularised logistic regression on 6 weights: the Hessian is positive definite everywhere."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 6, generator=g, dtype=torch.float64)
    y = torch.sign(torch.randn(30, generator=g, dtype=torch.float64))
    w0 = torch.randn(6, generator=g, dtype=torch.float64)

    def f(w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(-y * (X @ w)).mean() + 0.05 * (w ** 2).sum() + 0.1 * (w ** 4).sum()

    return w0, f


def _run(lib: Any, make: Callable[[Any], list], steps: int, problem: str = "convex"
         ) -> tuple[torch.Tensor, int]:
    if problem == "convex":
        w0, f = _convex_problem()
        w = w0.clone().requires_grad_(True)
        params: list[torch.Tensor] = [w]

        def loss_fn() -> torch.Tensor:
            return f(w)
    else:
        model, x, y = make_problem(0, torch.float64)
        params = list(model.parameters())

        def loss_fn() -> torch.Tensor:
            return torch.nn.functional.mse_loss(model(x), y)

    opt = lib.Optimizer(params, *make(lib.m))
    calls = [0]

    def closure(backward: bool = True) -> torch.Tensor:
        calls[0] += 1
        loss = loss_fn()
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(flat(params))
    return torch.stack(out), calls[0]


PARITY: dict[str, tuple[Callable[[Any], list], str]] = {
    "inm": (lambda m: [m.ImprovedNewton(), m.LR(0.5)], "convex"),
    "inm_damping_inverse": (lambda m: [m.ImprovedNewton(damping=1e-2, update_freq=2, precompute_inverse=True),
                                       m.LR(0.5)], "oddnet"),
    "inm_lstsq_autograd": (lambda m: [m.ImprovedNewton(use_lstsq=True, hessian_method="autograd"), m.LR(0.5)],
                           "convex"),
    "ifn": (lambda m: [m.InverseFreeNewton(), m.LR(0.5)], "convex"),
    "ifn_oddnet": (lambda m: [m.InverseFreeNewton(update_freq=2), m.LR(0.5)], "oddnet"),
    "sixth3p": (lambda m: [m.SixthOrder3P(), m.LR(0.5)], "convex"),
    "sixth3pm2": (lambda m: [m.SixthOrder3PM2(), m.LR(0.5)], "convex"),
    "sixth5p": (lambda m: [m.SixthOrder5P(), m.LR(0.5)], "convex"),
    "twopoint": (lambda m: [m.TwoPointNewton(derivatives_method="autograd"), m.LR(0.5)], "convex"),
    "hpu": (lambda m: [m.HpuEstimate(), m.LR(0.01)], "oddnet"),
}


@pytest.mark.parametrize("name", list(PARITY))
def test_matches_torchzero_trajectory(name: str) -> None:
    """float64, same problem and chain: agreement to rtol 1e-10 (LU/Cholesky of the same matrices)."""
    make, problem = PARITY[name]
    ours, n_ours = _run(tz, make, 8, problem)
    ref, n_ref = _run(torchzero, make, 8, problem)
    assert_traj_close(ours, ref, rtol=1e-10, atol=1e-12)
    assert n_ours <= n_ref


@pytest.mark.parametrize("make", [lambda m: m.SixthOrder3P(), lambda m: m.SixthOrder3PM2(),
                                  lambda m: m.SixthOrder5P(), lambda m: m.TwoPointNewton(),
                                  lambda m: m.ImprovedNewton(), lambda m: m.InverseFreeNewton()])
def test_newton_variants_converge_on_convex_problem(make: Callable[[Any], Any]) -> None:
    w0, f = _convex_problem()
    w = w0.clone().requires_grad_(True)
    opt = tz.Optimizer([w], make(tz.m))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = f(w)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(25):
        opt.step(closure)
    grad = torch.autograd.grad(f(w), w)[0]
    assert grad.norm() < 1e-8


# ---------------------------------------------------------------------- NaturalGradient
def _ngd_problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    X = torch.randn(64, 20)
    y = torch.randn(64, 10)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ELU(), torch.nn.Linear(64, 10))
    return model, X, y


def test_ex33_natural_gradient_with_loss_vector_and_no_closure() -> None:
    model, X, y = _ngd_problem()
    opt = tz.Optimizer(model.parameters(), tz.m.NaturalGradient(), tz.m.LR(3e-2))
    first = None
    for _ in range(100):
        losses = (model(X) - y).pow(2).mean(0)
        first = float(losses.detach().mean()) if first is None else first
        opt.step(loss=losses)
    last = float((model(X) - y).pow(2).mean(0).mean().detach())
    assert last < 0.8 * first


def test_ex34_natural_gradient_closure_returns_vector_and_step_returns_it() -> None:
    model, X, y = _ngd_problem()
    opt = tz.Optimizer(model.parameters(), tz.m.NaturalGradient(), tz.m.LR(3e-2))

    def closure(backward: bool = True) -> torch.Tensor:
        return (model(X) - y).pow(2).mean(0)

    losses = opt.step(closure)
    assert losses.shape == (10,)
    first = float(losses.detach().mean())
    for _ in range(99):
        losses = opt.step(closure)
    assert float(losses.detach().mean()) < 0.8 * first


def test_ex35_natural_gradient_sqrt_gn_grad_rosenbrock() -> None:
    def rosenbrock(X: torch.Tensor) -> torch.Tensor:
        x1, x2 = X
        return torch.stack([(1 - x1).abs(), (10 * (x2 - x1 ** 2).abs())])

    X = torch.tensor([-1.1, 2.5], requires_grad=True)
    opt = tz.Optimizer([X], tz.m.NaturalGradient(sqrt=True, gn_grad=True), tz.m.LR(0.05))
    first = float(rosenbrock(X).detach().mean())
    for _ in range(200):
        losses = rosenbrock(X)
        opt.step(loss=losses)
    assert torch.isfinite(X).all()
    assert float(rosenbrock(X).detach().mean()) < 0.1 * first


@pytest.mark.parametrize("kwargs", [dict(), dict(sqrt=True), dict(gn_grad=True), dict(sqrt=True, gn_grad=True),
                                    dict(batched=False, reg=1e-3)])
def test_natural_gradient_matches_torchzero(kwargs: dict) -> None:
    def run(lib: Any) -> torch.Tensor:
        model, X, y = _ngd_problem()
        model = model.double()
        opt = lib.Optimizer(model.parameters(), lib.m.NaturalGradient(**kwargs), lib.m.LR(3e-2))
        out = []
        for _ in range(5):
            opt.step(loss=(model(X.double()) - y.double()).pow(2).mean(0))
            out.append(flat(model.parameters()))
        return torch.stack(out)

    assert_traj_close(run(tz), run(torchzero), rtol=1e-9, atol=1e-11)


def test_natural_gradient_without_loss_or_closure_raises() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = tz.Optimizer([x], tz.m.NaturalGradient(), tz.m.LR(0.1))
    with pytest.raises(RuntimeError, match="NaturalGradient needs a closure or `step\\(loss=...\\)`"):
        opt.step()
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0]))


def test_natural_gradient_detached_loss_raises_value_error() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = tz.Optimizer([x], tz.m.NaturalGradient(), tz.m.LR(0.1))
    with pytest.raises(ValueError, match="requires_grad"):
        opt.step(loss=(x ** 2).detach())
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0]))


# ---------------------------------------------------------------------- MatrixMomentum
def test_matrix_momentum_follows_its_recursion_on_a_quadratic() -> None:
    """x_{k+1} = x_k + s_k - lr g_k - mu A s_k, s_k = x_k - x_{k-1}; first step lr g scaled small."""
    A = torch.tensor([[3.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)
    x = torch.tensor([2.0, -3.0], dtype=torch.float64, requires_grad=True)
    lr, mu = 0.1, 0.2
    opt = tz.Optimizer([x], tz.m.MatrixMomentum(mu=mu, lr=lr))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = 0.5 * x @ A @ x - b @ x
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    ref_prev = x.detach().clone()
    g = A @ ref_prev - b
    d = lr * g
    scale = min(1.0, max(1e-7 / d.abs().max().item(), 1 / d.abs().sum().item()))
    ref = ref_prev - d * scale
    opt.step(closure)
    torch.testing.assert_close(x.detach(), ref, rtol=1e-12, atol=1e-14)
    for _ in range(150):
        s = ref - ref_prev
        g = A @ ref - b
        ref_prev, ref = ref, ref + s - lr * g - mu * (A @ s)
        opt.step(closure)
        torch.testing.assert_close(x.detach(), ref, rtol=1e-10, atol=1e-12)
    assert (A @ x.detach() - b).norm() < 1e-3


def test_matrix_momentum_adaptive_reduces_loss_and_stays_finite() -> None:
    A = torch.diag(torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64))
    x = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = tz.Optimizer([x], tz.m.MatrixMomentum(lr=1e-3, adaptive=True))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = 0.5 * x @ A @ x
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    first = float(closure(False).detach())
    for _ in range(50):
        opt.step(closure)
    assert torch.isfinite(x).all() and float(closure(False).detach()) < first


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make", [lambda m: m.ImprovedNewton(), lambda m: m.InverseFreeNewton(),
                                  lambda m: m.SixthOrder3P(), lambda m: m.TwoPointNewton(),
                                  lambda m: m.MatrixMomentum(lr=0.1)])
def test_without_closure_raises_and_leaves_parameters(make: Callable[[Any], Any]) -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    module = make(tz.m)
    opt = tz.Optimizer([x], module)
    (x ** 2).sum().backward()
    with pytest.raises(RuntimeError, match=f"{type(module).__name__} needs a closure"):
        opt.step()
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("make", [lambda m: m.ImprovedNewton(), lambda m: m.InverseFreeNewton(),
                                  lambda m: m.SixthOrder5P(), lambda m: m.TwoPointNewton()])
def test_non_scalar_loss_raises_value_error(make: Callable[[Any], Any]) -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    module = make(tz.m)
    opt = tz.Optimizer([x], module)

    def closure(backward: bool = True) -> torch.Tensor:
        loss = x ** 2
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    with pytest.raises(ValueError, match="scalar loss"):
        opt.step(closure)
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("make", [
    lambda m: m.ImprovedNewton(), lambda m: m.ImprovedNewton(eigval_fn=lambda L: L.abs().clip(min=1e-4)),
    lambda m: m.ImprovedNewton(precompute_inverse=True), lambda m: m.InverseFreeNewton(),
    lambda m: m.SixthOrder3P(), lambda m: m.SixthOrder3PM2(), lambda m: m.SixthOrder5P(),
    lambda m: m.TwoPointNewton(), lambda m: m.MatrixMomentum(lr=0.1),
])
def test_singular_indefinite_hessian_never_gives_nan(make: Callable[[Any], Any]) -> None:
    x = torch.tensor([0.5, -0.5, 0.3], dtype=torch.float64, requires_grad=True)
    module = make(tz.m)
    chain = [module] if isinstance(module, tz.m.MatrixMomentum) else [module, tz.m.LR(0.1)]
    opt = tz.Optimizer([x], *chain)

    def closure(backward: bool = True) -> torch.Tensor:
        loss = x[0] ** 2 - x[1] ** 2 + 0.0 * x[2] + x[2]  # indefinite; zero curvature in x[2]
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("cls, kwargs, match", [
    ("ImprovedNewton", dict(hessian_method="exact"), "hessian_method"),
    ("InverseFreeNewton", dict(update_freq=0), "update_freq"),
    ("SixthOrder3P", dict(derivatives_method="fd"), "derivatives_method"),
    ("MatrixMomentum", dict(hvp_method="exact"), "hvp_method"),
    ("NaturalGradient", dict(reg=-1.0), "reg"),
])
def test_bad_arguments_name_the_argument(cls: str, kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        getattr(tz.m, cls)(**kwargs)
