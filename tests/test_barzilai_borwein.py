"""Barzilai-Borwein step sizes: formulas, trajectories against torchzero 0.4.4, MGH convergence,
closure counts, the fused end-of-chain step, state and bad input.

Tolerances (float64): on the convex quadratic, rtol 1e-10 over 30 steps. On ``OddNet`` rtol
1e-9 over 20 steps (12 for ``type='long'``): the two libraries sum ``s^T y`` in different
orders (one dot product over a flat buffer here, a sum of per-tensor sums there) and compute
``alpha`` in double here, in the tensor dtype there; a Barzilai-Borwein step amplifies those
last-bit differences (the long step by about 10x every two steps on this non-convex problem).
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchzero as tzo
from conftest import assert_traj_close, flat, make_problem, train, trajectory

import tzfast as tz
from bench import mgh
from tzfast.modules.step_size.barzilai_borwein import bb_long, bb_short, bb_step, epsilon_step_size

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


# ---------------------------------------------------------------------------------------- problems
class Quadratic:
    """``0.5 x'Ax - b'x`` over a 3x4 matrix and a 5-vector (n = 17), eigenvalues 0.5..10."""

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


def run_quadratic(lib: Any, make: Callable[[Any], list], steps: int) -> tuple[torch.Tensor, int, Any]:
    prob = Quadratic()
    ps = prob.params()
    opt = lib.Optimizer(ps, *make(lib.m))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = prob.f(ps)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(flat(ps))
    return torch.stack(out), opt.num_evaluations, opt


# ---------------------------------------------------------------------------------------- formulas
def test_formulas_short_long_geom_and_their_fallbacks() -> None:
    eps = 1e-300
    assert bb_short(2.0, 4.0, 3.0, eps) == 0.5
    assert bb_long(2.0, 4.0, 3.0, eps) == 1.5
    assert bb_step("geom", 2.0, 4.0, 3.0, eps) == math.sqrt(0.75)
    # short falls back on long when y'y vanishes; long on short when s'y < eps
    assert bb_short(2.0, 0.0, 3.0, eps) == 1.5
    assert bb_long(-1.0, 4.0, 3.0, eps) == -0.25
    assert bb_short(-1.0, 0.0, 3.0, eps) is None
    assert bb_long(-1.0, 0.0, 3.0, eps) is None
    # geom needs both; geom-fallback takes whichever exists
    assert bb_step("geom", 2.0, 0.0, 3.0, eps) == math.sqrt(1.5 * 1.5)
    assert bb_step("geom", 0.0, 0.0, 3.0, eps) is None
    assert bb_step("geom-fallback", 0.0, 0.0, 3.0, eps) is None


def test_epsilon_step_size_caps_the_largest_entry() -> None:
    t = [torch.tensor([0.5, -0.25]), torch.tensor([0.1])]
    assert epsilon_step_size(t, 1e-3) == pytest.approx(1e-3 / 0.5)
    assert epsilon_step_size([torch.tensor([4.0])], 1e-3) == 1e-3
    assert epsilon_step_size([torch.tensor([1e-9])], 1e-7) == 1.0


@pytest.mark.parametrize("type", ["short", "long", "geom"])
def test_second_step_uses_the_analytic_step_of_the_quadratic(type: str) -> None:
    """On ``0.5 x'Ax - b'x``, ``y = A s``: the stored alpha is the formula on the actual ``s``."""
    prob = Quadratic()
    ps = prob.params()
    bb = tz.m.BarzilaiBorwein(type, alpha_0=0.05)
    opt = tz.Optimizer(ps, bb)

    def closure(backward: bool = True) -> torch.Tensor:
        loss = prob.f(ps)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    x0 = flat(ps)
    opt.step(closure)
    x1 = flat(ps)
    opt.step(closure)
    s = x1 - x0
    y = (prob.A @ x1 - prob.b) - (prob.A @ x0 - prob.b)
    short, long = float(s @ y / (y @ y)), float(s @ s / (s @ y))
    expected = {"short": short, "long": long, "geom": math.sqrt(short * long)}[type]
    assert bb.global_state["alpha"] == pytest.approx(expected, rel=1e-12)
    # and the second step moved by alpha times the gradient at x1
    g1 = prob.A @ x1 - prob.b
    torch.testing.assert_close(flat(ps), x1 - expected * g1, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("scale", [1.0, 0.01], ids=["max_g_above_1", "max_g_below_1"])
def test_first_step_follows_the_alpha_0_rule(scale: float) -> None:
    """Step 1 has no curvature pair: the update is multiplied by ``alpha_0`` when ``max|g| >= 1``,
    by ``alpha_0 / max|g|`` (largest entry of the step = ``alpha_0``) when it is below 1."""
    x = torch.tensor([3.0, -2.0, 0.5], dtype=F64, requires_grad=True)
    opt = tz.Optimizer([x], tz.m.BarzilaiBorwein(alpha_0=1e-3))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = 0.5 * scale * (x**2).sum()
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    x0 = x.detach().clone()
    g0 = scale * x0
    opt.step(closure)
    gmax = float(g0.abs().max())
    expected = x0 - (1e-3 if gmax >= 1 else 1e-3 / gmax) * g0
    torch.testing.assert_close(x.detach(), expected, rtol=1e-15, atol=0)


# ---------------------------------------------------------------------------------------- differential
QUADRATIC_CASES: dict[str, Callable[[Any], list]] = {
    "geom": lambda m: [m.BarzilaiBorwein()],
    "short": lambda m: [m.BarzilaiBorwein("short")],
    "long": lambda m: [m.BarzilaiBorwein("long")],
    "geom_fallback_alpha_0": lambda m: [m.BarzilaiBorwein("geom-fallback", alpha_0=1e-3)],
    "short_then_lr": lambda m: [m.BarzilaiBorwein("short"), m.LR(0.7)],
    "stab": lambda m: [m.BBStab()],
    "stab_long_c": lambda m: [m.BBStab(c=0.5, type="long", inf_iters=2)],
    "stab_short_delta": lambda m: [m.BBStab(delta=0.05, type="short")],
    "stab_inner": lambda m: [m.BBStab(inner=m.Mul(2.0), alpha_0=1e-2)],
}


@pytest.mark.parametrize("name", list(QUADRATIC_CASES))
def test_quadratic_trajectory_matches_torchzero(name: str) -> None:
    make = QUADRATIC_CASES[name]
    ours, n_ours, _ = run_quadratic(tz, make, 30)
    theirs, n_theirs, _ = run_quadratic(tzo, make, 30)
    assert_traj_close(ours, theirs, rtol=1e-10, atol=1e-13)
    assert n_ours <= n_theirs


ODDNET_CASES: dict[str, Callable[[Any], list]] = {
    "geom": lambda m: [m.BarzilaiBorwein()],
    "long": lambda m: [m.BarzilaiBorwein("long")],
    "geom_fallback": lambda m: [m.BarzilaiBorwein("geom-fallback", alpha_0=1e-4)],
    "use_update": lambda m: [m.HeavyBall(0.5), m.BarzilaiBorwein(use_grad=False)],
    "inner": lambda m: [m.BarzilaiBorwein(inner=m.HeavyBall(0.5))],
    "then_lr": lambda m: [m.BarzilaiBorwein(), m.LR(0.5)],
    "then_lr_mul": lambda m: [m.BarzilaiBorwein(), m.LR(0.5), m.Mul(0.5)],
    "not_last": lambda m: [m.BarzilaiBorwein(), m.ClipValue(0.05)],
    "stab": lambda m: [m.BBStab()],
    "stab_long": lambda m: [m.BBStab(type="long", inf_iters=1, c=0.5)],
    "stab_use_update": lambda m: [m.Adam(), m.BBStab(use_grad=False)],
}


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
@pytest.mark.parametrize("name", list(ODDNET_CASES))
def test_oddnet_trajectory_matches_torchzero(name: str, closure: bool) -> None:
    make = ODDNET_CASES[name]
    steps = 12 if name == "long" else 20
    ours = trajectory(tz, make, steps=steps, closure=closure, dtype=F64)
    theirs = trajectory(tzo, make, steps=steps, closure=closure, dtype=F64)
    assert_traj_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_float32_trajectory_matches_torchzero() -> None:
    """float32: ``s^T y`` of nearby gradients cancels, so the two libraries' dot products (flat
    BLAS here, per-tensor sums there) give step sizes that differ in the 4th digit after a few
    steps; rtol 1e-5 holds for the first 5 steps."""
    make = ODDNET_CASES["geom"]
    assert_traj_close(trajectory(tz, make, steps=5), trajectory(tzo, make, steps=5), rtol=1e-5, atol=1e-6)


def test_fused_end_of_chain_step_equals_the_unfused_chain() -> None:
    """``BarzilaiBorwein(), LR`` at the end of the chain updates the parameters in one pass; a
    trailing ``Clone`` (not a multiplier) disables that, and the results agree."""
    fused = trajectory(tz, lambda m: [m.BBStab(), m.LR(0.5)], steps=20, dtype=F64)
    unfused = trajectory(tz, lambda m: [m.BBStab(), m.LR(0.5), m.Clone()], steps=20, dtype=F64)
    assert_traj_close(fused, unfused, rtol=1e-12, atol=1e-14)


def test_per_group_lr_after_bb_matches_torchzero() -> None:
    def run(lib: Any) -> torch.Tensor:
        model, x, y = make_problem(0, F64)
        groups = [{"params": list(model.fc1.parameters()), "lr": 0.3}, {"params": [p for n, p in
                  model.named_parameters() if not n.startswith("fc1")]}]
        opt = lib.Optimizer(groups, lib.m.BarzilaiBorwein(), lib.m.LR(0.6))
        return train(opt, model, x, y, 20, True)

    assert_traj_close(run(tz), run(tzo), rtol=1e-9, atol=1e-12)


def test_reset_for_online_matches_torchzero() -> None:
    """After ``reset_for_online`` the next step keeps the old step size and starts a new pair."""
    def run(lib: Any) -> torch.Tensor:
        model, x, y = make_problem(0, F64)
        bb = lib.m.BBStab()
        opt = lib.Optimizer(model.parameters(), bb)
        return train(opt, model, x, y, 15, True, after_step=lambda i: bb.reset_for_online() if i == 6 else None)

    assert_traj_close(run(tz), run(tzo), rtol=1e-9, atol=1e-12)


def test_get_H_is_identity_over_alpha() -> None:
    for lib in (tz, tzo):
        _, _, opt = run_quadratic(lib, lambda m: [m.BarzilaiBorwein()], 5)
        bb = opt.modules[0]
        alpha = float(bb.global_state["alpha"])
        v = torch.linspace(-1, 1, Quadratic.n, dtype=F64)
        obj = tz.Objective(params=[p for g in opt.param_groups for p in g["params"]])
        torch.testing.assert_close(bb.get_H(obj).matvec(v), v / alpha, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------- fallback
def test_fallback_is_used_where_the_step_is_undefined() -> None:
    """On a concave function ``s'y < 0``: ``'short'`` gives no usable step, so ``fallback`` is the
    step size from the second step on (the first step keeps the ``alpha_0`` rule)."""
    x = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    opt = tz.Optimizer([x], tz.m.BarzilaiBorwein("short", fallback=0.01))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = -(x**2).sum()
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    opt.step(closure)
    for _ in range(3):
        before = x.detach().clone()
        opt.step(closure)
        torch.testing.assert_close(x.detach(), before - 0.01 * (-2 * before), rtol=1e-14, atol=0)


# ---------------------------------------------------------------------------------------- convergence
# the problem, the budget and the final gap f - fmin; measured: BB / BBStab need 19..440 steps
MGH = {
    "beale": 200,
    "helical_valley": 400,
    "variably_dimensioned": 100,
    "broyden_tridiagonal": 100,
    "powell_singular": 1000,
    "penalty_1": 200,
}


@pytest.mark.parametrize("module", ["BarzilaiBorwein", "BBStab"])
@pytest.mark.parametrize("name", list(MGH))
def test_converges_on_mgh_problem(name: str, module: str) -> None:
    prob = mgh.PROBLEMS[name]
    x = prob.x0(F64).requires_grad_()
    opt = tz.Optimizer([x], getattr(tz.m, module)())
    closure = mgh.closure_for(prob, x)
    f0 = float(prob.f(x.detach()))
    for _ in range(MGH[name]):
        opt.step(closure)
        if float(prob.f(x.detach())) - prob.fmin <= 1e-8 * max(1.0, prob.fmin):
            break
    gap = float(prob.f(x.detach())) - prob.fmin
    assert gap <= 1e-8 * max(1.0, prob.fmin), f"{module} on {name}: f - fmin = {gap:.3e} (f0 = {f0:.3e})"
    assert opt.num_evaluations == opt.current_step  # one closure call per step


def test_restart_on_stuck_bb_converges_on_rosenbrock() -> None:
    """torchzero's own recipe (``_minimize``): ``RestartOnStuck(BarzilaiBorwein())``."""
    prob = mgh.PROBLEMS["rosenbrock"]
    x = prob.x0(F64).requires_grad_()
    opt = tz.Optimizer([x], tz.m.RestartOnStuck(tz.m.BarzilaiBorwein()))
    closure = mgh.closure_for(prob, x)
    for _ in range(300):
        opt.step(closure)
    assert float(prob.f(x.detach())) < 1e-10


# ---------------------------------------------------------------------------------------- state
def _save_load(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("make", [lambda m: [m.BarzilaiBorwein("long")], lambda m: [m.BBStab(), m.LR(0.5)]],
                         ids=["bb_long", "bbstab_lr"])
def test_state_dict_round_trip_mid_run_reproduces_uninterrupted_run(make: Callable[[Any], list]) -> None:
    model, x, y = make_problem(0, F64)
    opt = tz.Optimizer(model.parameters(), *make(tz.m))
    uninterrupted = train(opt, model, x, y, 16, True)

    model, x, y = make_problem(0, F64)
    opt = tz.Optimizer(model.parameters(), *make(tz.m))
    first = train(opt, model, x, y, 8, True)
    sd = _save_load(opt.state_dict())
    model2, _, _ = make_problem(0, F64)
    with torch.no_grad():
        for p, q in zip(model2.parameters(), model.parameters(), strict=True):
            p.copy_(q)
    opt2 = tz.Optimizer(model2.parameters(), *make(tz.m))
    opt2.load_state_dict(sd)
    second = train(opt2, model2, x, y, 8, True)
    assert torch.equal(torch.cat([first, second]), uninterrupted)


def test_state_keeps_torchzero_names_and_shapes() -> None:
    model, x, y = make_problem(0, F64)
    bb = tz.m.BBStab()
    opt = tz.Optimizer(model.parameters(), bb)
    train(opt, model, x, y, 5, True)
    before = [p.detach().clone() for p in model.parameters()]
    train(opt, model, x, y, 1, True)
    for p, b in zip(model.parameters(), before, strict=True):
        assert set(bb.state[p]) == {"prev_p", "prev_g"}
        assert bb.state[p]["prev_p"].shape == p.shape
        assert torch.equal(bb.state[p]["prev_p"], b)  # the point of the last step
        assert torch.equal(bb.state[p]["prev_g"], p.grad)
    assert {"step", "alpha", "niters", "s_norm_min"} <= set(bb.global_state)


def test_reset_restarts_from_the_first_step() -> None:
    def run(reset: bool) -> torch.Tensor:
        prob = Quadratic()
        ps = prob.params()
        bb = tz.m.BarzilaiBorwein()
        opt = tz.Optimizer(ps, bb)

        def closure(backward: bool = True) -> torch.Tensor:
            loss = prob.f(ps)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss

        for _ in range(5):
            opt.step(closure)
        if reset:
            bb.reset()
            with torch.no_grad():
                for p, q in zip(ps, Quadratic().params(), strict=True):
                    p.copy_(q)
        for _ in range(5):
            opt.step(closure)
        return flat(ps)

    fresh, _, _ = run_quadratic(tz, lambda m: [m.BarzilaiBorwein()], 5)
    torch.testing.assert_close(run(True), fresh[-1], rtol=0, atol=0)
    assert not torch.equal(run(False), fresh[-1])


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("make", "exc", "match"), [
    (lambda: tz.m.BarzilaiBorwein("middle"), ValueError, r"BarzilaiBorwein: `type` must be one of .*'middle'"),
    (lambda: tz.m.BarzilaiBorwein(alpha_0=0.0), ValueError, r"BarzilaiBorwein: `alpha_0` must be a finite number > 0"),
    (lambda: tz.m.BarzilaiBorwein(alpha_0="1e-7"), TypeError, r"BarzilaiBorwein: `alpha_0` .* got str"),
    (lambda: tz.m.BarzilaiBorwein(use_grad=1), TypeError, r"BarzilaiBorwein: `use_grad` must be a bool, got int"),
    (lambda: tz.m.BarzilaiBorwein(fallback=-1.0), ValueError, r"BarzilaiBorwein: `fallback` .* or None, got -1.0"),
    (lambda: tz.m.BBStab(c=0), ValueError, r"BBStab: `c` must be a finite number > 0, got 0"),
    (lambda: tz.m.BBStab(delta=math.inf), ValueError, r"BBStab: `delta` .* got inf"),
    (lambda: tz.m.BBStab(type=None), ValueError, r"BBStab: `type` must be one of"),
    (lambda: tz.m.BBStab(inf_iters=0), ValueError, r"BBStab: `inf_iters` must be an int >= 1, got 0"),
    (lambda: tz.m.BBStab(inf_iters=2.5), TypeError, r"BBStab: `inf_iters` must be an int >= 1, got float"),
    (lambda: tz.m.BBStab(alpha_0=-1), ValueError, r"BBStab: `alpha_0`"),
])
def test_bad_arguments_raise_naming_the_argument(make: Callable[[], Any], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        make()
