"""``Split`` and ``Graft``: trajectories equal torchzero 0.4.4's; examples; filters; errors; state."""
from __future__ import annotations

import io
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchzero as tzo
from conftest import assert_traj_close, flat, make_problem, trajectory
from torch import nn

import tzfast as tz

pytestmark = pytest.mark.usefixtures("single_thread")

RTOL, ATOL = 1e-10, 1e-12  # float64
STEPS = 15


def _graft(m: Any) -> Any:
    return getattr(m, "GraftModules", None) or m.Graft  # torchzero 0.4.4 has only `Graft`


CASES: dict[str, Any] = {
    # EX-37 with modules that exist: Muon's Orthogonalize replaced by LR-scaled heavy ball
    "split_ex37_like": lambda m: [m.Split(filter=lambda t: t.ndim >= 2, true=[m.HeavyBall(), m.LR(1e-2)],
                                          false=m.Adam()), m.LR(1e-2)],
    # EX-38 with the filter positional
    "split_ex38_like": lambda m: [m.NAG(0.95), m.Split(lambda p: p.ndim >= 2, true=m.Adam(),
                                                       false=[m.Adam(0.9, 0.95), m.Mul(1 / 66)]), m.LR(1e-2)],
    "split_true_only": lambda m: [m.Split(lambda p: p.ndim >= 2, true=m.Adam(), false=None), m.LR(1e-2)],
    "split_false_only": lambda m: [m.Split(lambda p: p.ndim >= 2, true=None, false=[m.HeavyBall(0.8)]), m.LR(1e-2)],
    "split_all_true": lambda m: [m.Split(lambda p: True, true=[m.Adam(), m.Mul(0.5)], false=m.HeavyBall()),
                                 m.LR(1e-2)],
    "split_closure_module": lambda m: [m.Split(lambda p: p.ndim >= 2, true=m.PSGDDenseNewton(), false=m.Adam()),
                                       m.LR(1e-2)],
    "graft": lambda m: [_graft(m)(direction=m.HeavyBall(), magnitude=m.Adam()), m.LR(1e-2)],
    "graft_global_strength": lambda m: [m.Graft(m.Adam(), m.HeavyBall(), tensorwise=False, strength=0.7),
                                        m.LR(1e-2)],
    "graft_l1_chain": lambda m: [m.Graft(m.Adam(), [m.HeavyBall(), m.Mul(2.0)], ord=1, strength=0.5), m.LR(1e-2)],
    "graft_mad_eps": lambda m: [m.Graft(m.Adam(), m.HeavyBall(), ord="mad", eps=1e-3), m.LR(1e-2)],
    "graft_linf_global": lambda m: [m.Graft(m.NAG(0.9), m.Adam(), tensorwise=False, ord="linf"), m.LR(1e-2)],
}


NEEDS_CLOSURE = {"split_closure_module"}  # PSGDDenseNewton evaluates Hessian-vector products


@pytest.mark.parametrize("name, closure", [(n, c) for n in CASES for c in (True, False)
                                           if c or n not in NEEDS_CLOSURE])
def test_matches_torchzero(name: str, closure: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multiple learning rate modules" in EX-37
        expected = trajectory(tzo, CASES[name], steps=STEPS, dtype=torch.float64, closure=closure)
        actual = trajectory(tz, CASES[name], steps=STEPS, dtype=torch.float64, closure=closure)
    assert (expected[-1] - expected[0]).abs().max() > 1e-3
    assert_traj_close(actual, expected, rtol=RTOL, atol=ATOL)


def _count_closures(lib: Any, make: Any, steps: int = 3) -> int:
    model, x, y = make_problem(0, torch.float64)
    opt = lib.Optimizer(model.parameters(), *make(lib.m))
    calls = 0

    def closure(backward: bool = True) -> torch.Tensor:
        nonlocal calls
        calls += 1
        loss = F.mse_loss(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return calls


@pytest.mark.parametrize("name", ["split_ex37_like", "split_closure_module", "graft"])
def test_closure_calls_at_most_torchzero(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _count_closures(tzo, CASES[name])
        ours = _count_closures(tz, CASES[name])
    assert ours <= theirs


# ----------------------------------------------------------------------------- Split semantics
def test_split_routes_each_subset_through_its_chain() -> None:
    """true=Mul(2), false=Mul(-1), LR(1): matrices move by -2g, the rest by +g."""
    model, x, y = make_problem(0, torch.float64)
    params = list(model.parameters())
    opt = tz.Optimizer(params, tz.m.Split(lambda p: p.ndim >= 2, true=tz.m.Mul(2.0), false=tz.m.Mul(-1.0)),
                       tz.m.LR(1.0))
    before = [p.detach().clone() for p in params]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params)
    opt.step(lambda backward=True: _loss_backward(opt, model, x, y, backward))
    for p, b, g in zip(params, before, grads):
        expected = b - 2 * g if p.ndim >= 2 else b + g
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)


def _loss_backward(opt: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, backward: bool) -> torch.Tensor:
    loss = F.mse_loss(model(x), y)
    if backward:
        opt.zero_grad()
        loss.backward()
    return loss


def test_split_filter_kinds_select_the_same_parameters() -> None:
    """A generator of parameters, a list of tensors, an nn.Module and a predicate give one trajectory
    (a generator is collected once; torchzero 0.4.4 consumes it on the first step)."""
    def run(make_filter: Any) -> torch.Tensor:
        model, x, y = make_problem(0, torch.float64)
        opt = tz.Optimizer(model.parameters(), tz.m.Split(make_filter(model), true=tz.m.Adam(),
                                                          false=tz.m.HeavyBall()), tz.m.LR(1e-2))
        for _ in range(5):
            opt.step(lambda backward=True: _loss_backward(opt, model, x, y, backward))
        return flat(model.parameters())

    reference = run(lambda model: (lambda p: any(p is q for q in model.fc1.parameters())))
    for kind in (lambda model: model.fc1.parameters(), lambda model: [model.fc1.weight, model.fc1.bias],
                 lambda model: model.fc1, lambda model: [model.fc1.weight, lambda p: p is model.fc1.bias]):
        torch.testing.assert_close(run(kind), reference, rtol=0, atol=0)
    other = run(lambda model: model.fc2)
    assert not torch.equal(other, reference)


def test_split_state_dict_round_trip() -> None:
    def make() -> list:
        return [tz.m.Split(lambda p: p.ndim >= 2, true=[tz.m.HeavyBall(), tz.m.Mul(0.5)], false=tz.m.Adam()),
                tz.m.LR(1e-2)]

    model, x, y = make_problem(0, torch.float64)
    opt = tz.Optimizer(model.parameters(), *make())
    for _ in range(3):
        opt.step(lambda backward=True: _loss_backward(opt, model, x, y, backward))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        opt.step(lambda backward=True: _loss_backward(opt, model, x, y, backward))
    model2, _, _ = make_problem(0, torch.float64)
    model2.load_state_dict(snapshot)
    opt2 = tz.Optimizer(model2.parameters(), *make())
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(3):
        opt2.step(lambda backward=True: _loss_backward(opt2, model2, x, y, backward))
    torch.testing.assert_close(flat(model2.parameters()), flat(model.parameters()), rtol=0, atol=0)


def test_graft_state_dict_round_trip() -> None:
    def make() -> list:
        return [tz.m.GraftModules(direction=tz.m.HeavyBall(), magnitude=tz.m.Adam()), tz.m.LR(1e-2)]

    model, x, y = make_problem(0, torch.float64)
    opt = tz.Optimizer(model.parameters(), *make())
    for _ in range(3):
        opt.step(lambda backward=True: _loss_backward(opt, model, x, y, backward))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        opt.step(lambda backward=True: _loss_backward(opt, model, x, y, backward))
    model2, _, _ = make_problem(0, torch.float64)
    model2.load_state_dict(snapshot)
    opt2 = tz.Optimizer(model2.parameters(), *make())
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(3):
        opt2.step(lambda backward=True: _loss_backward(opt2, model2, x, y, backward))
    torch.testing.assert_close(flat(model2.parameters()), flat(model.parameters()), rtol=0, atol=0)


# ----------------------------------------------------------------------------- Graft semantics
def test_graft_takes_direction_and_magnitude_norm() -> None:
    """direction = Mul(3) of g, magnitude = Mul(-5) of g: per tensor, the update is 5 |g| g/|g| = 5 g."""
    model, x, y = make_problem(0, torch.float64)
    params = list(model.parameters())
    grads = torch.autograd.grad(F.mse_loss(model(x), y), params)
    before = [p.detach().clone() for p in params]
    opt = tz.Optimizer(params, tz.m.Graft(tz.m.Mul(3.0), tz.m.Mul(-5.0), eps=0.0), tz.m.LR(1.0))
    opt.step(lambda backward=True: _loss_backward(opt, model, x, y, backward))
    for p, b, g in zip(params, before, grads):
        torch.testing.assert_close(p.detach(), b - 5 * g, rtol=1e-12, atol=1e-14)


def test_graft_zero_direction_stays_zero() -> None:
    x = torch.ones(4, dtype=torch.float64, requires_grad=True)
    opt = tz.Optimizer([x], tz.m.Graft(tz.m.Mul(0.0), tz.m.Mul(1.0)), tz.m.LR(1.0))
    x.grad = torch.ones(4, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(x.detach(), torch.ones(4, dtype=torch.float64))


# ----------------------------------------------------------------------------- worked examples
class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Linear(8, 16)
        self.w2 = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(torch.relu(self.w1(x)))


def _losses(make: Any, steps: int = 60) -> list[float]:
    torch.manual_seed(0)
    model = _Block()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    y = x[:, :2].prod(1, keepdim=True)
    opt = tz.Optimizer(model.parameters(), *make(model))
    out = []
    for _ in range(steps):
        out.append(float(opt.step(lambda backward=True: _loss_backward(opt, model, x, y, backward)).detach()))
    return out


def test_ex25_graft_shampoo_onto_adam_reduces_loss() -> None:
    if not hasattr(tz.m, "Shampoo"):
        pytest.skip("Newton-Schulz orthogonalization (Muon) and the matrix preconditioners")
    losses = _losses(lambda model: [tz.m.GraftModules(direction=tz.m.Shampoo(), magnitude=tz.m.Adam()),
                                    tz.m.LR(1e-3)])
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.filterwarnings("ignore:multiple learning rate modules")
def test_ex37_ex38_like_split_reduces_loss() -> None:
    ex37 = _losses(lambda model: [tz.m.Split(filter=lambda t: t.ndim >= 2, true=[tz.m.HeavyBall(), tz.m.LR(1e-2)],
                                             false=tz.m.Adam()), tz.m.LR(1e-2)])
    ex38 = _losses(lambda model: [tz.m.NAG(0.95), tz.m.Split(lambda p: p.ndim >= 2, true=tz.m.Adam(),
                                                             false=[tz.m.Adam(0.9, 0.95), tz.m.Mul(1 / 66)]),
                                  tz.m.LR(1e-2)])
    assert ex37[-1] < 0.9 * ex37[0]
    assert ex38[-1] < 0.9 * ex38[0]


@pytest.mark.filterwarnings("ignore:multiple learning rate modules")
def test_ex37_ex38_with_orthogonalize() -> None:
    if not hasattr(tz.m, "Orthogonalize"):
        pytest.skip("Newton-Schulz orthogonalization (Muon) and the matrix preconditioners")
    ex37 = _losses(lambda model: [tz.m.Split(filter=lambda t: t.ndim >= 2,
                                             true=[tz.m.HeavyBall(), tz.m.Orthogonalize(), tz.m.LR(1e-2)],
                                             false=tz.m.Adam()), tz.m.LR(1e-2)])
    ex38 = _losses(lambda model: [tz.m.NAG(0.95), tz.m.Split(lambda p: p.ndim >= 2, true=tz.m.Orthogonalize(),
                                                             false=[tz.m.Adam(0.9, 0.95), tz.m.Mul(1 / 66)]),
                                  tz.m.LR(1e-2)])
    assert ex37[-1] < ex37[0]
    assert ex38[-1] < 0.9 * ex38[0]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, arg", [
    (lambda: tz.m.Split(3, true=tz.m.Adam(), false=None), "filter"),
    (lambda: tz.m.Split("weights", true=tz.m.Adam(), false=None), "filter"),
    (lambda: tz.m.Split(lambda p: True, true="adam", false=None), "true"),
    (lambda: tz.m.Split(lambda p: True, true=None, false=[tz.m.Adam(), 3]), "false"),
    (lambda: tz.m.Graft(tz.m.Adam(), tz.m.HeavyBall(), ord="l7"), "ord"),
    (lambda: tz.m.Graft(tz.m.Adam(), None), "magnitude"),
    (lambda: tz.m.Graft(1.0, tz.m.Adam()), "direction"),
    (lambda: tz.m.Graft(tz.m.Adam(), tz.m.HeavyBall(), eps=-1.0), "eps"),
    (lambda: tz.m.Graft(tz.m.Adam(), tz.m.HeavyBall(), strength="full"), "strength"),
    (lambda: tz.m.Graft(tz.m.Adam(), tz.m.HeavyBall(), tensorwise=1), "tensorwise"),
])
def test_bad_arguments_name_the_argument(make: Any, arg: str) -> None:
    with pytest.raises((ValueError, TypeError), match=arg):
        make()


def test_split_error_inside_a_chain_leaves_parameters_unchanged() -> None:
    model, x, y = make_problem(0, torch.float64)
    opt = tz.Optimizer(model.parameters(), tz.m.Split(lambda p: p.ndim >= 2, true=tz.m.PSGDDenseNewton(),
                                                      false=tz.m.Adam()), tz.m.LR(1e-2))
    F.mse_loss(model(x), y).backward()
    before = flat(model.parameters())
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    assert torch.equal(flat(model.parameters()), before)


def test_exported_names() -> None:
    assert tz.m.GraftModules is tz.m.Graft
    assert tz.m.family_of("Split") == "meta" and tz.m.family_of("GraftModules") == "meta"
