"""Nonlinear conjugate gradients: formulas, trajectories against torchzero 0.4.4, restarts,
convergence on Moré-Garbow-Hillstrom problems and bad input.

torchzero 0.4.4 never refreshes ``g_prev`` after the first step of a cycle (its ``apply`` updates
``d_prev`` only), so every method but Fletcher-Reeves uses the *first* gradient of the cycle as
"the previous gradient". tzfast uses the previous gradient (the textbook formulas). The
differential tests therefore compare with torchzero's classes with one line added (``g_prev``
set to the current input after each direction, :func:`_fixed`); Fletcher-Reeves and
``ProjectedGradientMethod`` (which do not read ``g_prev``) are compared with torchzero as
published, and :func:`test_torchzero_keeps_the_first_gradient` pins the difference.

Tolerances (float64): a fixed step on a convex quadratic, rtol 1e-12 over 25 steps; with
``StrongWolfe(c2=0.1, a_init="first-order")`` rtol 1e-9 over 12 steps (the two libraries' dot
products sum in different orders, and line-search trajectories on curved problems amplify
those last-bit differences by about 10x per step after ~15 steps).
"""
from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torchzero as tzo
from torchzero.utils import TensorList

import tzfast as tz
from tzfast.core.functional import step_tensors
from tzfast.modules.conjugate_gradient import ConjugateGradientBase

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # bench/ is a package of the checkout, not installed
    sys.path.insert(0, _ROOT)
mgh = importlib.import_module("bench.mgh")

pytestmark = pytest.mark.usefixtures("single_thread")

CG = ["PolakRibiere", "FletcherReeves", "HestenesStiefel", "DaiYuan", "LiuStorey", "ConjugateDescent", "HagerZhang",
      "DYHS"]
ALL = [*CG, "ProjectedGradientMethod"]
NO_G_PREV = ("FletcherReeves", "ProjectedGradientMethod")  # torchzero's bug does not reach these
F64 = torch.float64


def _fixed(cls: type) -> type:
    """torchzero's class with the two fixes tzfast makes: ``g_prev`` refreshed after each direction,
    and the first step's history (``g_prev``, ``d_prev``, ``initialize``) taken after ``inner``."""

    class Fixed(cls):  # type: ignore[valid-type, misc]
        def multi_tensor_apply(self, tensors, params, grads, loss, states, settings):  # type: ignore[no-untyped-def]
            first = self.global_state.get("stage") == "first apply"
            if first:
                for st, t in zip(states, tensors):
                    st["g_prev"].copy_(t)
                    st["d_prev"].copy_(t)
                self.initialize(TensorList(params), TensorList(tensors))
            g = [t.clone() for t in tensors]
            out = super().multi_tensor_apply(tensors, params, grads, loss, states, settings)
            if not first:
                for st, gi in zip(states, g):
                    if "g_prev" in st:  # absent after a restart
                        st["g_prev"].copy_(gi)
            return out

    Fixed.__name__ = cls.__name__
    return Fixed


def _cls(lib: Any, name: str, fixed: bool = True) -> Any:
    c = getattr(lib.m, name)
    if lib is tzo and fixed and name not in NO_G_PREV:
        c = _fixed(c)
    return c


# ---------------------------------------------------------------------------------------- problems


class Quadratic:
    """``0.5 x'Ax - b'x`` over two parameters (a 3x4 matrix and a 5-vector; n = 17), cond(A) ~ 20."""

    n = 17

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(self.n, self.n, generator=g, dtype=F64))
        self.A = q @ torch.diag(torch.linspace(0.5, 10.0, self.n, dtype=F64)) @ q.T
        self.b = torch.randn(self.n, generator=g, dtype=F64)

    def params(self) -> list[torch.Tensor]:
        x0 = torch.linspace(-1.0, 1.0, self.n, dtype=F64)
        return [x0[:12].reshape(3, 4).clone().requires_grad_(), x0[12:].clone().requires_grad_()]

    def f(self, ps: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([p.reshape(-1) for p in ps])
        return 0.5 * x @ self.A @ x - self.b @ x


def rosenbrock(ps: list[torch.Tensor]) -> torch.Tensor:
    x = ps[0]
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def _run(lib: Any, make: Callable[[Any], list], f: Callable[[list[torch.Tensor]], torch.Tensor],
         params: list[torch.Tensor], steps: int) -> tuple[torch.Tensor, list[int]]:
    """Flat parameters after each step and closure calls per step."""
    opt = lib.Optimizer(params, *make(lib))
    calls = [0]

    def closure(backward: bool = True) -> torch.Tensor:
        calls[0] += 1
        loss = f(params)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    traj, per_step = [], []
    for _ in range(steps):
        c0 = calls[0]
        opt.step(closure)
        per_step.append(calls[0] - c0)
        traj.append(torch.cat([p.detach().reshape(-1) for p in params]))
    return torch.stack(traj), per_step


def _compare(make_ours: Callable[[Any], list], make_theirs: Callable[[Any], list], f: Callable, params: Callable,
             steps: int, rtol: float) -> None:
    ours, calls_ours = _run(tz, make_ours, f, params(), steps)
    theirs, calls_theirs = _run(tzo, make_theirs, f, params(), steps)
    assert torch.isfinite(theirs).all()
    for i, (a, e) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, e, rtol=rtol, atol=rtol, msg=lambda m, i=i: f"step {i + 1}: {m}")
    assert calls_ours == calls_theirs
    assert sum(calls_ours) <= sum(calls_theirs)


# ---------------------------------------------------------------------------------------- formulas


def _textbook_beta(name: str, g: torch.Tensor, g_prev: torch.Tensor, d_prev: torch.Tensor) -> float:
    """beta in the textbook convention (direction p = -g + beta p_prev, here p_prev = -d_prev)."""
    p = -d_prev
    y = g - g_prev
    if name == "PolakRibiere":
        return float(max(0.0, g @ y / (g_prev @ g_prev)))  # PRP+ (clip_beta=True by default)
    if name == "FletcherReeves":
        return float(g @ g / (g_prev @ g_prev))
    if name == "HestenesStiefel":
        return float(g @ y / (p @ y))
    if name == "DaiYuan":
        return float(g @ g / (p @ y))
    if name == "LiuStorey":
        return float(g @ y / -(p @ g_prev))
    if name == "ConjugateDescent":
        return float(g @ g / -(p @ g_prev))
    if name == "HagerZhang":
        return float((y - 2 * p * (y @ y) / (p @ y)) @ g / (p @ y))
    if name == "DYHS":
        return float(max(0.0, min(g @ g / (p @ y), g @ y / (p @ y))))
    raise AssertionError(name)


@pytest.mark.parametrize("name", CG)
def test_directions_follow_the_textbook_formulas(name: str) -> None:
    gs = [torch.tensor(v, dtype=F64) for v in ([1.0, -2.0, 0.5], [0.3, -0.4, 0.9], [-0.2, 0.1, 0.25],
                                               [0.05, 0.2, -0.1])]
    module = getattr(tz.m, name)()
    param = torch.zeros(3, dtype=F64, requires_grad=True)
    out = step_tensors(module, [gs[0].clone()], params=[param])[0]
    torch.testing.assert_close(out, gs[0], rtol=0, atol=0)  # first step: steepest descent
    d_prev, g_prev = gs[0], gs[0]
    for g in gs[1:]:  # the previous *gradient* enters every formula (torchzero keeps the first one)
        beta = _textbook_beta(name, g, g_prev, d_prev)
        expected = g + beta * d_prev
        out = step_tensors(module, [g.clone()], params=[param])[0]
        torch.testing.assert_close(out, expected, rtol=1e-14, atol=1e-15)
        d_prev, g_prev = expected, g


def test_polak_ribiere_clip_beta() -> None:
    g0, g1 = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.5, 0.0], dtype=F64)  # beta = -0.25
    param = torch.zeros(2, dtype=F64, requires_grad=True)
    for clip, expected in ((True, g1), (False, g1 - 0.25 * g0)):
        module = tz.m.PolakRibiere(clip_beta=clip)
        step_tensors(module, [g0.clone()], params=[param])
        out = step_tensors(module, [g1.clone()], params=[param])[0]
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-16)
    module = tz.m.HestenesStiefel(clip_beta=True)  # clip_beta on a method whose default is False
    step_tensors(module, [g0.clone()], params=[param])
    # HS: -g'y / d'y = -(0.5 * -0.5) / (1 * -0.5) = -0.5 < 0 -> 0
    torch.testing.assert_close(step_tensors(module, [g1.clone()], params=[param])[0], g1, rtol=0, atol=0)


@pytest.mark.parametrize("name", CG)
def test_zero_denominator_gives_steepest_descent(name: str) -> None:
    param = torch.zeros(3, dtype=F64, requires_grad=True)
    module = getattr(tz.m, name)()
    step_tensors(module, [torch.zeros(3, dtype=F64)], params=[param])  # g_prev = d_prev = 0
    g = torch.tensor([0.3, -0.1, 2.0], dtype=F64)
    out = step_tensors(module, [g.clone()], params=[param])[0]
    torch.testing.assert_close(out, g, rtol=0, atol=0)


def test_custom_beta_on_the_base_class() -> None:
    class Half(ConjugateGradientBase):
        def get_beta(self, p, g, g_prev, d_prev):  # type: ignore[no-untyped-def]
            assert g.ndim == 1 and g_prev.shape == g.shape == d_prev.shape
            return 0.5

    param = torch.zeros(2, 2, dtype=F64, requires_grad=True)
    m = Half(restart_interval=None)
    g0, g1 = torch.ones(2, 2, dtype=F64), torch.full((2, 2), 3.0, dtype=F64)
    step_tensors(m, [g0.clone()], params=[param])
    out = step_tensors(m, [g1.clone()], params=[param])[0]
    assert out.shape == (2, 2)
    torch.testing.assert_close(out, g1 + 0.5 * g0, rtol=0, atol=0)


def test_torchzero_keeps_the_first_gradient() -> None:
    """Pins the deliberate difference: identical for two steps, then torchzero's g_prev is stale."""
    quad = Quadratic()

    def make(lib: Any) -> list:
        return [_cls(lib, "PolakRibiere", fixed=False)(clip_beta=False, restart_interval=None), lib.m.LR(0.05)]

    ours, _ = _run(tz, make, quad.f, quad.params(), 3)
    theirs, _ = _run(tzo, make, quad.f, quad.params(), 3)
    torch.testing.assert_close(ours[:2], theirs[:2], rtol=1e-13, atol=1e-13)
    assert (ours[2] - theirs[2]).abs().max() > 1e-6


# ---------------------------------------------------------------------------------------- differential


@pytest.mark.parametrize("name", ALL)
def test_fixed_step_trajectory_matches_torchzero(name: str) -> None:
    quad = Quadratic()

    def make(lib: Any) -> list:
        return [_cls(lib, name)(), lib.m.LR(0.02)]

    _compare(make, make, quad.f, quad.params, 25, rtol=1e-12)  # 25 steps > n + 1: one 'auto' restart
    _, calls = _run(tz, make, quad.f, quad.params(), 5)
    assert calls == [1] * 5  # the module itself never calls the closure


@pytest.mark.parametrize("name", ["PolakRibiere", "DaiYuan", "FletcherReeves"])
def test_single_parameter_fixed_step_matches_torchzero(name: str) -> None:
    """One parameter: the flat vector is a view of the update, which LR then scales in place."""

    def make(lib: Any) -> list:
        return [_cls(lib, name)(), lib.m.LR(2e-4)]

    def rosen_params() -> list[torch.Tensor]:
        return [torch.tensor([-1.2, 1.0, -1.2, 1.0], dtype=F64, requires_grad=True)]

    _compare(make, make, rosenbrock, rosen_params, 15, rtol=1e-12)


def test_state_is_not_aliased_to_the_output() -> None:
    """A later module that scales the update in place leaves the module's history alone."""
    from tzfast.core.module import Module

    class HalveInPlace(Module):
        def apply(self, objective: Any) -> Any:
            for u in objective.get_updates():
                u.mul_(0.5)
            return objective

    for params in (lambda: [torch.tensor([-1.2, 1.0, -1.2, 1.0], dtype=F64, requires_grad=True)], Quadratic().params):
        f = rosenbrock if len(params()) == 1 else Quadratic().f
        a, _ = _run(tz, lambda lib: [lib.m.DaiYuan(), HalveInPlace(), lib.m.LR(2e-4)], f, params(), 10)
        b, _ = _run(tz, lambda lib: [lib.m.DaiYuan(), lib.m.LR(1e-4)], f, params(), 10)
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # halving is exact, and 2e-4 / 2 == 1e-4 in binary


@pytest.mark.parametrize("name", ALL)
def test_strong_wolfe_trajectory_matches_torchzero(name: str) -> None:
    quad = Quadratic()

    def make(lib: Any) -> list:
        return [_cls(lib, name)(), lib.m.StrongWolfe(c2=0.1, a_init="first-order")]

    _compare(make, make, quad.f, quad.params, 12, rtol=1e-9)

    def rosen_params() -> list[torch.Tensor]:
        return [torch.tensor([-1.2, 1.0, -1.2, 1.0], dtype=F64, requires_grad=True)]

    _compare(make, make, rosenbrock, rosen_params, 12, rtol=1e-9)


@pytest.mark.parametrize("name", NO_G_PREV)
def test_methods_without_g_prev_are_compared_with_published_torchzero(name: str) -> None:
    # the differential tests above use torchzero's own class for these two
    assert _cls(tzo, name) is getattr(tzo.m, name)


@pytest.mark.parametrize("restart_interval", [None, 1, 2, 5, "auto"])
@pytest.mark.parametrize("name", ["PolakRibiere", "HagerZhang"])
def test_restart_options_match_torchzero(name: str, restart_interval: Any) -> None:
    quad = Quadratic()

    def make(lib: Any) -> list:
        return [_cls(lib, name)(restart_interval=restart_interval), lib.m.LR(0.02)]

    _compare(make, make, quad.f, quad.params, 20, rtol=1e-12)


@pytest.mark.parametrize("clip_beta", [True, False])
def test_clip_beta_matches_torchzero(clip_beta: bool) -> None:
    def make(lib: Any) -> list:
        return [_cls(lib, "LiuStorey")(clip_beta=clip_beta), lib.m.StrongWolfe(c2=0.1, a_init="first-order")]

    def rosen_params() -> list[torch.Tensor]:
        return [torch.tensor([-1.2, 1.0], dtype=F64, requires_grad=True)]

    _compare(make, make, rosenbrock, rosen_params, 12, rtol=1e-9)


@pytest.mark.parametrize("name", ["PolakRibiere", "FletcherReeves"])
def test_inner_matches_torchzero(name: str) -> None:
    quad = Quadratic()

    def make(lib: Any) -> list:
        cls = _fixed(tzo.m.FletcherReeves) if lib is tzo and name == "FletcherReeves" else _cls(lib, name)
        return [cls(inner=[lib.m.Mul(3.0), lib.m.Div(2.0)]), lib.m.LR(0.02)]

    _compare(make, make, quad.f, quad.params, 20, rtol=1e-12)


def test_inner_first_step_history_is_taken_after_inner() -> None:
    """With ``inner=Mul(3)`` the history scales with the input: the directions are 3x those of
    the same method without ``inner`` (torchzero 0.4.4 stores the first step's history before
    ``inner`` and would break this)."""
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(5, generator=g, dtype=F64) for _ in range(4)]
    param = torch.zeros(5, dtype=F64, requires_grad=True)
    for name in CG:
        plain, scaled = getattr(tz.m, name)(), getattr(tz.m, name)(inner=tz.m.Mul(3.0))
        for gi in grads:
            a = step_tensors(plain, [gi.clone()], params=[param])[0]
            b = step_tensors(scaled, [gi.clone()], params=[param])[0]
            torch.testing.assert_close(b, 3 * a, rtol=1e-13, atol=1e-14, msg=name)


def test_conjugate_descent_with_scipy_minimize_scalar() -> None:
    """The prose pairing (``ScipyMinimizeScalar(maxiter=8)``) with ConjugateDescent: same path as
    torchzero and convergence on the quadratic."""

    quad = Quadratic()

    def make(lib: Any) -> list:
        return [_cls(lib, "ConjugateDescent")(), lib.m.ScipyMinimizeScalar(maxiter=8)]

    # Brent stopped after 8 iterations returns a step size known only to its tolerance: the
    # last-bit differences of the directions (2e-15 at step 2) move it by up to ~1e-6 relative
    # (the line search alone, without CG, gives identical trajectories)
    _compare(make, make, quad.f, quad.params, 8, rtol=1e-5)
    params = quad.params()
    _run(tz, make, quad.f, params, 30)
    x = torch.cat([p.detach().reshape(-1) for p in params])
    torch.testing.assert_close(x, torch.linalg.solve(quad.A, quad.b), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------- restarts


@pytest.mark.parametrize(("restart_interval", "steepest"), [(3, {0, 3, 6, 9}), ("auto", {0, 5}), (1, {0, 2, 4, 6, 8}),
                                                            (None, {0})])
def test_restart_schedule(restart_interval: Any, steepest: set[int]) -> None:
    """Steps whose direction is the gradient itself (n = 4, so 'auto' is 5)."""
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(4, generator=g, dtype=F64) for _ in range(10)]
    param = torch.zeros(4, dtype=F64, requires_grad=True)
    module = tz.m.FletcherReeves(restart_interval=restart_interval)
    found = set()
    for i, gi in enumerate(grads):
        out = step_tensors(module, [gi.clone()], params=[param])[0]
        if torch.equal(out, gi):
            found.add(i)
    assert found == steepest


def test_reset_and_online_reset() -> None:
    param = torch.zeros(3, dtype=F64, requires_grad=True)
    g0, g1 = torch.tensor([1.0, 2.0, 3.0], dtype=F64), torch.tensor([0.5, -1.0, 0.2], dtype=F64)
    module = tz.m.DaiYuan(restart_interval=None)
    step_tensors(module, [g0.clone()], params=[param])
    assert not torch.equal(step_tensors(module, [g1.clone()], params=[param])[0], g1)
    assert module.global_state["step"] == 1
    module.reset_for_online()  # as torchzero: the next step starts a cycle and the counter steps back
    assert module.global_state["step"] == 0 and "stage" not in module.global_state
    torch.testing.assert_close(step_tensors(module, [g1.clone()], params=[param])[0], g1, rtol=0, atol=0)
    module.reset()
    assert module.global_state == {}
    torch.testing.assert_close(step_tensors(module, [g0.clone()], params=[param])[0], g0, rtol=0, atol=0)


def test_state_dict_round_trip_continues_the_same_path() -> None:
    quad = Quadratic()
    params = quad.params()
    opt = tz.Optimizer(params, tz.m.HagerZhang(restart_interval=None), tz.m.LR(0.02))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = quad.f(params)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(4):
        opt.step(closure)
    saved_params = [p.detach().clone() for p in params]
    state = copy.deepcopy(opt.state_dict())
    for _ in range(3):
        opt.step(closure)
    expected = torch.cat([p.detach().reshape(-1) for p in params])

    params2 = [p.clone().requires_grad_() for p in saved_params]
    opt2 = tz.Optimizer(params2, tz.m.HagerZhang(restart_interval=None), tz.m.LR(0.02))
    opt2.load_state_dict(state)

    def closure2(backward: bool = True) -> torch.Tensor:
        loss = quad.f(params2)
        if backward:
            opt2.zero_grad()
            loss.backward()
        return loss

    for _ in range(3):
        opt2.step(closure2)
    torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in params2]), expected, rtol=1e-14, atol=0)


def test_float32_and_several_parameters() -> None:
    params = [torch.tensor([[-1.2]], requires_grad=True), torch.tensor([1.0], requires_grad=True)]

    def f(ps: list[torch.Tensor]) -> torch.Tensor:
        return rosenbrock([torch.cat([p.reshape(-1) for p in ps])])

    def make(lib: Any) -> list:
        return [_cls(lib, "PolakRibiere")(), lib.m.StrongWolfe(c2=0.1, a_init="first-order")]

    traj, _ = _run(tz, make, f, params, 40)
    assert traj.dtype == torch.float32 and params[0].shape == (1, 1)
    assert float(f(params).detach()) < 1e-6


# ---------------------------------------------------------------------------------------- convergence

CONVERGENCE_PROBLEMS = ["rosenbrock", "beale", "helical_valley", "broyden_tridiagonal"]
FTOL = 1e-10  # f - fmin, all four minima are 0


def _steps_to_converge(lib: Any, problem: Any, name: str, max_steps: int = 120) -> tuple[int | None, int]:
    x = problem.x0().requires_grad_(True)
    opt = lib.Optimizer([x], _cls(lib, name)(), lib.m.StrongWolfe(c2=0.1, a_init="first-order"))
    inner = mgh.closure_for(problem, x)
    calls = [0]

    def closure(backward: bool = True) -> torch.Tensor:
        calls[0] += 1
        return inner(backward)

    for i in range(max_steps):
        opt.step(closure)
        if float(problem.f(x.detach())) - problem.fmin <= FTOL:  # type: ignore[operator]
            return i + 1, calls[0]
    return None, calls[0]


@pytest.mark.parametrize("name", ALL)
def test_converges_on_mgh_problems_with_strong_wolfe(name: str) -> None:
    """'CG with StrongWolfe(c2=0.1, a_init="first-order")': f - fmin <= 1e-10 within 120 steps on four
    MGH problems. (Closure calls are compared step by step in the differential tests; over a whole
    run to 1e-10 the two libraries' last-bit differences grow until a line search takes one
    evaluation more or less either way, so totals are not comparable there.)"""
    for pname in CONVERGENCE_PROBLEMS:
        problem = mgh.PROBLEMS[pname]
        steps, calls = _steps_to_converge(tz, problem, name)
        assert steps is not None, f"{name} did not converge on {pname}"
        assert calls <= 6 * steps  # a few evaluations per line search


def test_ex55_polak_ribiere_strong_wolfe() -> None:
    """EX-55: ``PolakRibiere(), StrongWolfe(c2=0.1, a_init="first-order")`` minimises Rosenbrock from
    (-1.2, 1) to f < 1e-12 and lands on (1, 1)."""
    x = torch.nn.Parameter(torch.tensor([-1.2, 1.0], dtype=F64))
    opt = tz.Optimizer([x], tz.m.PolakRibiere(), tz.m.StrongWolfe(c2=0.1, a_init="first-order"))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = rosenbrock([x])
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(40):
        opt.step(closure)
    assert float(rosenbrock([x.detach()])) < 1e-12
    torch.testing.assert_close(x.detach(), torch.ones(2, dtype=F64), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", CG)
@pytest.mark.parametrize("bad", [0, -3, 1.5, "always", True])
def test_bad_restart_interval(name: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=rf"{name}: `restart_interval` must be None, 'auto' or an int >= 1, got "):
        getattr(tz.m, name)(restart_interval=bad)


@pytest.mark.parametrize("name", CG)
def test_bad_clip_beta_and_inner(name: str) -> None:
    with pytest.raises(TypeError, match=rf"{name}: `clip_beta` must be a bool, got str 'yes'"):
        getattr(tz.m, name)(clip_beta="yes")
    with pytest.raises(TypeError, match=rf"{name}: `inner` must be None, a Module or a sequence of Modules, got int"):
        getattr(tz.m, name)(inner=3)


def test_projected_gradient_bad_input() -> None:
    with pytest.raises(ValueError, match="`restart_interval` must be None, 'auto' or an int >= 1, got 0"):
        tz.m.ProjectedGradientMethod(restart_interval=0)
    with pytest.raises(ValueError, match="`init_scale` must be 'auto' or a finite number > 0, got -1"):
        tz.m.ProjectedGradientMethod(init_scale=-1)


def test_apply_before_update_raises() -> None:
    from tzfast.core.objective import Objective

    p = torch.zeros(2, requires_grad=True)
    obj = Objective([p])
    obj.updates = [torch.ones(2)]
    with pytest.raises(RuntimeError, match="PolakRibiere.apply was called before update"):
        tz.m.PolakRibiere().apply(obj)


def test_exports_mirror_torchzero() -> None:
    ours = {n for n in tz.m.__all__ if tz.m.family_of(n) == "conjugate_gradient"}
    assert ours == set(ALL)
    assert not hasattr(tzo.m, "ConguateGradientBase")  # torchzero keeps its base out of tz.m too
    assert "ConjugateGradientBase" not in tz.m.__all__
