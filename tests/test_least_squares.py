"""GaussNewton and SumOfSquares (seed 004): vector-valued closures, trajectories against
torchzero 0.4.4 in float64, EX-23, the ``AtA`` operator and bad input."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import torchzero as tzo
from torch import nn

import tzfast as tz
from tzfast.modules.least_squares.gauss_newton import AtA

pytestmark = pytest.mark.usefixtures("single_thread")


def rosen_residuals(X: torch.Tensor) -> torch.Tensor:
    return torch.stack([1 - X[0], 100 * (X[1] - X[0] ** 2)])


def run_rosenbrock(lib: Any, make: Callable[[Any], Sequence[Any]], steps: int = 10
                   ) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """EX-23's setup: iterates, the values ``step`` returned and the closure evaluations."""
    X = torch.tensor([-1.1, 2.5], dtype=torch.float64, requires_grad=True)
    opt = lib.Optimizer([X], *make(lib.m))

    def closure(backward: bool = True) -> torch.Tensor:
        return rosen_residuals(X)

    xs, rets = [], []
    for _ in range(steps):
        rets.append(opt.step(closure))
        xs.append(X.detach().clone())
    return torch.stack(xs), rets, opt.num_evaluations


def make_net(seed: int = 0, n_samples: int = 64, n_in: int = 20, hidden: int = 64, n_out: int = 10
             ) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n_samples, n_in, generator=g, dtype=torch.float64)
    y = torch.randn(n_samples, n_out, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(n_in, hidden), nn.ELU(), nn.Linear(hidden, n_out)).double()
    return model, X, y


def run_net(lib: Any, make: Callable[[Any], Sequence[Any]], steps: int, per_sample: bool = False,
            **net: int) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """EX-24's setup: the closure returns ``(y_hat - y).pow(2).mean(0)`` (or every residual)."""
    model, X, y = make_net(**net)
    opt = lib.Optimizer(model.parameters(), *make(lib.m))

    def closure(backward: bool = True) -> torch.Tensor:
        d = model(X) - y
        return d.ravel() if per_sample else d.pow(2).mean(0)

    xs, rets = [], []
    for _ in range(steps):
        rets.append(opt.step(closure).detach())
        xs.append(torch.cat([p.detach().ravel() for p in model.parameters()]))
    return torch.stack(xs), rets, opt.num_evaluations


# ---------------------------------------------------------------------- EX-23
def test_ex23_gauss_newton_backtracking_matches_torchzero_and_converges() -> None:
    make = lambda m: [m.GaussNewton(), m.Backtracking()]  # noqa: E731
    ours, rets, n_ours = run_rosenbrock(tz, make)
    theirs, rets_tz, n_tz = run_rosenbrock(tzo, make)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    assert n_ours <= n_tz
    # step returns the residual vector (the closure's first value), as in the seed
    assert rets[0].shape == (2,)
    torch.testing.assert_close(rets[0].detach(), rosen_residuals(torch.tensor([-1.1, 2.5], dtype=torch.float64)))
    torch.testing.assert_close(torch.stack([r.detach() for r in rets]), torch.stack([r.detach() for r in rets_tz]))
    torch.testing.assert_close(ours[-1], torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kwargs", [{}, {"batched": False}, {"update_freq": 3}, {"reg": 0.0}, {"reg": 1e-2}],
                         ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults")
def test_gauss_newton_more_residuals_than_params_matches_torchzero(kwargs: dict) -> None:
    make = lambda m: [m.GaussNewton(**kwargs), m.LR(0.5)]  # noqa: E731
    net = dict(n_samples=16, n_in=3, hidden=4, n_out=2)  # 32 residuals, 26 parameters
    ours, _, n_ours = run_net(tz, make, steps=8, per_sample=True, **net)
    theirs, _, n_tz = run_net(tzo, make, steps=8, per_sample=True, **net)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-11)
    assert n_ours <= n_tz


@pytest.mark.parametrize("kwargs", [{}, {"batched": False}, {"update_freq": 2}],
                         ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults")
def test_gauss_newton_fewer_residuals_than_params_matches_torchzero(kwargs: dict) -> None:
    # the minimum-norm J^T (J J^T + reg I)^-1 r branch
    make = lambda m: [m.GaussNewton(**kwargs), m.LR(0.5)]  # noqa: E731
    net = dict(n_samples=8, n_in=3, hidden=4, n_out=2)
    ours, _, _ = run_net(tz, make, steps=6, **net)
    theirs, _, _ = run_net(tzo, make, steps=6, **net)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-11)


def test_gauss_newton_inner_matches_torchzero() -> None:
    make = lambda m: [m.GaussNewton(inner=m.Mul(0.5)), m.Backtracking()]  # noqa: E731
    ours, _, n_ours = run_rosenbrock(tz, make)
    theirs, _, n_tz = run_rosenbrock(tzo, make)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    assert n_ours <= n_tz


def test_gauss_newton_step_is_the_least_squares_solution() -> None:
    # linear residuals r = A x - b: one GN step with LR(1) and reg=0 lands on lstsq's solution
    g = torch.Generator().manual_seed(3)
    A = torch.randn(12, 5, generator=g, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    x = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = tz.Optimizer([x], tz.m.GaussNewton(reg=0.0), tz.m.LR(1.0))
    opt.step(lambda backward=True: A @ x - b)
    torch.testing.assert_close(x.detach(), torch.linalg.lstsq(A, b).solution, rtol=1e-10, atol=1e-12)


def test_gauss_newton_sets_sum_of_squares_loss_grad_and_closure() -> None:
    X = torch.tensor([-1.1, 2.5], dtype=torch.float64, requires_grad=True)
    seen: dict[str, Any] = {}

    class Spy(tz.core.Module):
        def apply(self, objective: tz.core.Objective) -> tz.core.Objective:
            seen["loss"] = objective.loss
            seen["grads"] = [g.clone() for g in objective.grads]
            seen["closure_value"] = objective.closure(False)
            seen["closure_backward"] = objective.closure(True)
            seen["x_grad"] = X.grad.clone()
            return objective

    opt = tz.Optimizer([X], tz.m.GaussNewton(), Spy(), tz.m.LR(0.0))
    opt.step(lambda backward=True: rosen_residuals(X))
    r = rosen_residuals(X.detach())
    f = r.pow(2).sum()
    J = torch.tensor([[-1.0, 0.0], [-200 * -1.1, 100.0]], dtype=torch.float64)
    torch.testing.assert_close(seen["loss"], f)
    torch.testing.assert_close(seen["grads"][0], J.T @ r)
    torch.testing.assert_close(seen["closure_value"].detach(), f)
    torch.testing.assert_close(seen["closure_backward"].detach(), f)
    torch.testing.assert_close(seen["x_grad"], 2 * J.T @ r)


# ---------------------------------------------------------------------- SumOfSquares
@pytest.mark.parametrize("chain", ["lbfgs_backtracking", "sgd"])
def test_sum_of_squares_matches_torchzero(chain: str) -> None:
    def make(m: Any) -> list:
        if chain == "sgd":
            return [m.SumOfSquares(), m.LR(1e-5)]
        return [m.SumOfSquares(), m.LBFGS(), m.Backtracking()]

    ours, rets, n_ours = run_rosenbrock(tz, make, steps=15)
    theirs, _, n_tz = run_rosenbrock(tzo, make, steps=15)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert n_ours <= n_tz
    assert rets[0].shape == (2,)


def test_sum_of_squares_squares_a_given_loss() -> None:
    X = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    seen = {}

    class Spy(tz.core.Module):
        def apply(self, objective: tz.core.Objective) -> tz.core.Objective:
            seen["loss"] = objective.loss
            objective.updates = [torch.zeros_like(X)]
            return objective

    opt = tz.Optimizer([X], tz.m.SumOfSquares(), Spy())
    opt.step(lambda backward=True: X * 3, loss=torch.tensor([3.0, 4.0], dtype=torch.float64))
    assert float(seen["loss"]) == 25.0


# ---------------------------------------------------------------------- AtA operator
@pytest.mark.parametrize("shape", [(3, 7), (7, 3)])
def test_ata_operator_agrees_with_the_dense_matrix(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    J = torch.randn(*shape, generator=g, dtype=torch.float64)
    b = torch.randn(shape[1], generator=g, dtype=torch.float64)
    dense = J.T @ J
    op = AtA(J)
    torch.testing.assert_close(op.matvec(b), dense @ b)
    torch.testing.assert_close(op.diagonal(), dense.diagonal())
    torch.testing.assert_close(op.to_tensor(), dense)
    for lam in (1e-3, 0.5, torch.tensor(2.0, dtype=torch.float64)):
        expected = torch.linalg.solve(dense + lam * torch.eye(shape[1], dtype=torch.float64), b)
        torch.testing.assert_close(op.solve_plus_diag(b, lam), expected, rtol=1e-9, atol=1e-11)
    d = torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.1
    torch.testing.assert_close(op.solve_plus_diag(b, d), torch.linalg.solve(dense + torch.diag(d), b))
    if shape[0] < shape[1]:  # the minimum-norm solution in the row space
        x = op.solve(b)
        torch.testing.assert_close(x, torch.linalg.pinv(dense) @ b, rtol=1e-8, atol=1e-10)
    else:
        torch.testing.assert_close(op.solve(b), torch.linalg.solve(dense, b))


def test_gauss_newton_get_h_is_jtj() -> None:
    X = torch.tensor([-1.1, 2.5], dtype=torch.float64, requires_grad=True)
    gn = tz.m.GaussNewton()
    opt = tz.Optimizer([X], gn, tz.m.LR(0.0))
    opt.step(lambda backward=True: rosen_residuals(X))
    J = torch.tensor([[-1.0, 0.0], [220.0, 100.0]], dtype=torch.float64)
    H = gn.get_H(None)
    torch.testing.assert_close(H.to_tensor(), J.T @ J)


# ---------------------------------------------------------------------- bad input
def test_gauss_newton_without_closure_raises_naming_module() -> None:
    X = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = tz.Optimizer([X], tz.m.GaussNewton(), tz.m.LR(0.1))
    X.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="GaussNewton needs a closure"):
        opt.step()
    assert X.detach().tolist() == [1.0, 2.0]


def test_gauss_newton_closure_returning_a_number_raises_type_error() -> None:
    X = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = tz.Optimizer([X], tz.m.GaussNewton(), tz.m.LR(0.1))
    with pytest.raises(TypeError, match="GaussNewton: the closure must return a tensor of residuals, got float"):
        opt.step(lambda backward=True: 3.0)
    assert X.detach().tolist() == [1.0, 2.0]


def test_gauss_newton_single_residual_warns_and_stays_finite() -> None:
    X = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    opt = tz.Optimizer([X], tz.m.GaussNewton(), tz.m.Backtracking())
    with pytest.warns(UserWarning, match="single residual"):
        opt.step(lambda backward=True: (X ** 2).sum() - 1)
    assert torch.isfinite(X).all()


def test_gauss_newton_rank_deficient_jacobian_gives_finite_step() -> None:
    X = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = tz.Optimizer([X], tz.m.GaussNewton(reg=0.0), tz.m.LR(1.0))
    for _ in range(3):  # 4 residuals that depend only on X[0] + X[1]: J^T J is singular
        opt.step(lambda backward=True: torch.stack([X[0] + X[1] - k for k in range(4)]))
        assert torch.isfinite(X).all()


def test_gauss_newton_rejects_bad_update_freq() -> None:
    with pytest.raises(ValueError, match="update_freq"):
        tz.m.GaussNewton(update_freq=0)
