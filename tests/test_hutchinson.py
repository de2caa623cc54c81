"""AdaHessian, SophiaH, ESGD and RandomHvp: torchzero parity (same draws), estimator accuracy,
worked examples EX-09/EX-16/EX-17 and bad input."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchzero

import tzfast as tz
from tzfast.modules.second_order.hutchinson import _block_average

from conftest import assert_traj_close, flat, make_problem, trajectory

pytestmark = pytest.mark.usefixtures("single_thread")

# Draw-reproducible chains: seed=None draws from torch's default generator (make_problem seeds it).
PARITY: dict[str, Callable[[Any], list]] = {
    "adahessian": lambda m: [m.AdaHessian(), m.LR(0.1)],
    "adahessian_fd_central": lambda m: [m.AdaHessian(hvp_method="fd_central", n_samples=3, update_freq=2), m.LR(0.1)],
    "adahessian_fd_forward_seed": lambda m: [m.AdaHessian(hvp_method="fd_forward", seed=3, beta1=0.5), m.LR(0.1)],
    "adahessian_power_nodebias": lambda m: [m.AdaHessian(hessian_power=0.5, debias=False, zHz=False), m.LR(0.1)],
    "sophiah": lambda m: [m.SophiaH(update_freq=3), m.LR(0.1)],
    "sophiah_seed_scale_clip": lambda m: [m.SophiaH(update_freq=1, seed=1, precond_scale=2, clip=0.5), m.LR(0.1)],
    "esgd": lambda m: [m.ESGD(), m.LR(0.1)],
    "esgd_beta": lambda m: [m.ESGD(beta=0.9, n_samples=2, zHz=True), m.LR(0.1)],
    "randomhvp": lambda m: [m.RandomHvp(n_samples=2, zHz=True), m.LR(0.01)],
    "randomhvp_rademacher_seed": lambda m: [m.RandomHvp(distribution="rademacher", seed=5), m.LR(0.01)],
}


class _Counter:
    def __init__(self) -> None:
        self.n = 0


def _counted_trajectory(lib: Any, make: Callable[[Any], list], steps: int) -> tuple[torch.Tensor, int]:
    model, x, y = make_problem(0, torch.float64)
    opt = lib.Optimizer(model.parameters(), *make(lib.m))
    count = _Counter()

    def closure(backward: bool = True) -> torch.Tensor:
        count.n += 1
        loss = torch.nn.functional.mse_loss(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(flat(model.parameters()))
    return torch.stack(out), count.n


@pytest.mark.parametrize("name", list(PARITY))
def test_hutchinson_modules_match_torchzero_trajectory(name: str) -> None:
    """Same random vectors in the same order: float64 trajectories agree bit for bit (rtol 1e-12)."""
    ours, n_ours = _counted_trajectory(tz, PARITY[name], 20)
    ref, n_ref = _counted_trajectory(torchzero, PARITY[name], 20)
    assert_traj_close(ours, ref, rtol=1e-12, atol=1e-14)
    assert n_ours <= n_ref


def test_hutchinson_diagonal_converges_to_true_diagonal_over_seeds() -> None:
    """Mean of RandomHvp(zHz=True) over 4000 Rademacher seeds is diag(A) within 5 standard errors."""
    torch.manual_seed(0)
    n = 6
    B = torch.randn(n, n, dtype=torch.float64)
    A = B @ B.T + torch.eye(n, dtype=torch.float64)
    x = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    m = tz.m.RandomHvp(zHz=True, distribution="rademacher", n_samples=4000, hvp_method="batched_autograd", seed=1)
    opt = tz.Optimizer([x], m)

    def closure(backward: bool = True) -> torch.Tensor:
        loss = 0.5 * x @ A @ x + x.sum()
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    est = closure_hvp_estimate(opt, x, closure)
    # Rademacher: Var(z_i (Az)_i) = sum_{j != i} A_ij^2
    off = (A ** 2).sum(1) - A.diagonal() ** 2
    stderr = (off / 4000).sqrt()
    assert ((est - A.diagonal()).abs() < 5 * stderr).all(), (est, A.diagonal())
    # and with Gaussian z (Var = A_ii^2 + sum_j A_ij^2)
    m2 = tz.m.RandomHvp(zHz=True, distribution="normal", n_samples=4000, hvp_method="batched_autograd", seed=2)
    opt2 = tz.Optimizer([x], m2)
    est2 = closure_hvp_estimate(opt2, x, closure)
    stderr2 = (((A ** 2).sum(1) + A.diagonal() ** 2) / 4000).sqrt()
    assert ((est2 - A.diagonal()).abs() < 5 * stderr2).all()


def closure_hvp_estimate(opt: tz.Optimizer, x: torch.Tensor, closure: Callable) -> torch.Tensor:
    """RandomHvp's output: the step is x <- x - D with no LR, so D = x_before - x_after."""
    before = x.detach().clone()
    opt.step(closure)
    d = before - x.detach()
    with torch.no_grad():
        x.copy_(before)
    return d


def test_batched_autograd_equals_looped_hutchinson() -> None:
    """n_samples probes: one vectorised backward equals the loop of products (same seeded draws)."""
    a = trajectory(tz, lambda m: [m.AdaHessian(n_samples=4, seed=0, hvp_method="batched_autograd"), m.LR(0.1)],
                   steps=5, dtype=torch.float64)
    b = trajectory(tz, lambda m: [m.AdaHessian(n_samples=4, seed=0, hvp_method="autograd"), m.LR(0.1)],
                   steps=5, dtype=torch.float64)
    assert_traj_close(a, b, rtol=1e-10, atol=1e-12)


def test_block_average_groups_consecutive_rows() -> None:
    x = torch.arange(1.0, 8.0).repeat_interleave(2).view(7, 2) * torch.tensor([1.0, -1.0])
    out = _block_average(x, block_size=3, enable=True)
    # blocks rows 0-2 (|x| = 1,2,3 -> 2), rows 3-5 (4,5,6 -> 5), remainder row 6 (7)
    assert torch.equal(out[:, 0], torch.tensor([2.0, 2, 2, 5, 5, 5, 7]))
    conv = torch.randn(4, 3, 2, 2)
    avg = _block_average(conv, None, True)
    assert avg.shape == (4, 3, 1, 1)
    torch.testing.assert_close(avg, conv.abs().mean((2, 3), keepdim=True))
    assert _block_average(conv, None, False) is conv


def test_sophiah_debias_divides_by_bias_corrections() -> None:
    """debias=True: update = clip((m / (1 - b1^t)) / max(h / (1 - b2^k), eps)) — checked on step 1."""
    x = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    A = torch.tensor([[2.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    opt = tz.Optimizer([x], tz.m.SophiaH(update_freq=1, debias=True, clip=100.0, distribution="rademacher"))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = 0.5 * x @ A @ x
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    x0 = x.detach().clone()
    opt.step(closure)
    # diagonal A: z*Hz = z^2 A_ii = A_ii exactly for Rademacher z; debiased m = g, h = diag(A): step = g / diag = x
    torch.testing.assert_close(x0 - x.detach(), x0, rtol=1e-12, atol=1e-14)


def test_esgd_denominator_is_root_mean_square_of_hz() -> None:
    """After k products, denom = sqrt(sum Hz^2 / k) + damping (torchzero divides by k twice)."""
    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    diag = torch.tensor([1.0, 3.0, 10.0], dtype=torch.float64)
    m = tz.m.ESGD(update_freq=1, distribution="rademacher", damping=0.0)
    opt = tz.Optimizer([x], m)

    def closure(backward: bool = True) -> torch.Tensor:
        loss = 0.5 * (diag * x ** 2).sum()
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(4):
        g = diag * x.detach()
        x0 = x.detach().clone()
        opt.step(closure)
        # Rademacher z, diagonal H: Hz^2 = diag^2 each time, so the RMS is diag
        torch.testing.assert_close(x0 - x.detach(), g / diag, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------- worked examples
def _train_mlp(make: Callable[[Any], list], steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    X = torch.randn(64, 8)
    y = torch.sin(X[:, :1]) + 0.1 * X[:, 1:2]
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = tz.Optimizer(model.parameters(), *make(tz.m))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(model(X), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    first = float(closure(False).detach())
    for _ in range(steps):
        opt.step(closure)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return first, float(closure(False).detach())


@pytest.mark.parametrize("name, make", [
    ("EX-09", lambda m: [m.AdaHessian(beta1=0, inner=m.NAG(0.9)), m.LR(0.1)]),
    ("EX-16", lambda m: [m.ESGD(), m.LR(0.1)]),
    ("EX-17", lambda m: [m.ESGD(inner=m.NAG(0.9)), m.LR(0.1)]),
    ("SophiaH-NAG", lambda m: [m.SophiaH(beta1=0, inner=m.NAG(0.96)), m.LR(0.1)]),
])
def test_worked_examples_reduce_loss(name: str, make: Callable[[Any], list]) -> None:
    first, last = _train_mlp(make, 60)
    assert last < 0.5 * first, (name, first, last)


def test_ex17_as_written_rejects_beta1() -> None:
    with pytest.raises(TypeError, match="beta1"):
        tz.m.ESGD(beta1=0, inner=tz.m.NAG(0.9))  # type: ignore[call-arg]


def test_adahessian_inner_equals_inner_module_placed_before() -> None:
    """AdaHessian(inner=NAG) == NAG followed by AdaHessian (the momentum reads NAG's output)."""
    a = trajectory(tz, lambda m: [m.AdaHessian(beta1=0.3, inner=m.NAG(0.9)), m.LR(0.1)], steps=10,
                   dtype=torch.float64)
    b = trajectory(tz, lambda m: [m.NAG(0.9), m.AdaHessian(beta1=0.3), m.LR(0.1)], steps=10, dtype=torch.float64)
    assert_traj_close(a, b, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make", [
    lambda m: m.AdaHessian(), lambda m: m.SophiaH(), lambda m: m.ESGD(), lambda m: m.RandomHvp(),
    lambda m: m.AdaHessian(hvp_method="fd_central"),
])
def test_without_closure_raises_and_leaves_parameters(make: Callable[[Any], Any]) -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    module = make(tz.m)
    opt = tz.Optimizer([x], module, tz.m.LR(0.1))
    (x ** 2).sum().backward()
    with pytest.raises(RuntimeError, match=f"{type(module).__name__} needs a closure"):
        opt.step()
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("method", ["autograd", "batched_autograd", "fd_forward", "fd_central"])
def test_non_scalar_loss_raises_value_error_and_leaves_parameters(method: str) -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = tz.Optimizer([x], tz.m.AdaHessian(hvp_method=method, n_samples=2), tz.m.LR(0.1))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = x ** 2  # (2,), not a scalar
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    with pytest.raises(ValueError, match="scalar loss"):
        opt.step(closure)
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(hvp_method="exact"), "hvp_method"), (dict(distribution="cauchy"), "distribution"),
    (dict(n_samples=0), "n_samples"), (dict(update_freq=0), "update_freq"), (dict(n_samples=1.5), "n_samples"),
])
def test_bad_arguments_name_the_argument(kwargs: dict, match: str) -> None:
    for cls in (tz.m.AdaHessian, tz.m.SophiaH, tz.m.ESGD, tz.m.RandomHvp):
        with pytest.raises((ValueError, TypeError), match=match):
            cls(**kwargs)


@pytest.mark.parametrize("make", [lambda m: m.AdaHessian(), lambda m: m.SophiaH(update_freq=1),
                                  lambda m: m.ESGD(update_freq=1)])
def test_indefinite_and_singular_hessians_never_give_nan(make: Callable[[Any], Any]) -> None:
    x = torch.tensor([0.5, -0.5, 0.0], dtype=torch.float64, requires_grad=True)
    opt = tz.Optimizer([x], make(tz.m), tz.m.LR(0.1))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = x[0] ** 2 - x[1] ** 2 + 0.0 * x[2]  # indefinite, and singular in x[2]
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(10):
        opt.step(closure)
    assert torch.isfinite(x).all()
