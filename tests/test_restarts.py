"""Restart strategies: trajectories against torchzero 0.4.4 (the restarts must actually fire:
every case counts the resets of the wrapped module in both libraries), schedules, the
``modules=None`` post-step reset, closure counts, state and bad input.

``PowellRestart``: torchzero 0.4.4 never refreshes ``g_prev`` after a (re)start, so its first
criterion compares with the gradient of the restart step; tzfast compares consecutive
gradients (Powell's criterion, and the spec's ``g^T g_{k+1}``). It is compared with torchzero's
class with that one line added (:class:`_PowellRefreshed`), and with ``cond1=None`` with
torchzero as published; :func:`test_torchzero_powell_keeps_the_restart_gradient` pins the
difference. Likewise ``PolakRibiere`` (see tests/test_conjugate_gradient.py).

Tolerances (float64, ``OddNet``): rtol 1e-9 over 20-30 steps; with a line search the two
libraries' dot products sum in different orders and the searches amplify last-bit
differences, still well inside 1e-9 over these runs.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchzero as tzo
from conftest import assert_traj_close, flat, make_closure, make_problem, train

import tzfast as tz

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


class _PowellRefreshed(tzo.m.PowellRestart):
    """torchzero's PowellRestart with ``g_prev`` set to the current gradient after each check."""

    def should_reset(self, objective):  # type: ignore[no-untyped-def]
        reset = super().should_reset(objective)
        if not reset:
            for p, g in zip(objective.params, objective.get_grads(), strict=True):
                self.state[p]["g_prev"].copy_(g)
        return reset


def _polak_ribiere(lib: Any, **kw: Any) -> Any:
    """PolakRibiere; torchzero's with ``g_prev`` refreshed (as in tests/test_conjugate_gradient.py)."""
    if lib is tz:
        return tz.m.PolakRibiere(**kw)

    class Fixed(tzo.m.PolakRibiere):
        def multi_tensor_apply(self, tensors, params, grads, loss, states, settings):  # type: ignore[no-untyped-def]
            g = [t.clone() for t in tensors]
            out = super().multi_tensor_apply(tensors, params, grads, loss, states, settings)
            for st, gi in zip(states, g, strict=True):
                if "g_prev" in st:
                    st["g_prev"].copy_(gi)
            return out

    return Fixed(**kw)


def _count_resets(module: Any) -> list[int]:
    """Counts calls of ``module.reset`` (patched on the instance)."""
    calls = [0]
    orig = module.reset

    def reset() -> None:
        calls[0] += 1
        orig()

    module.reset = reset
    return calls


def run(lib: Any, make: Callable[[Any], tuple[list, Any]], steps: int, closure: bool = True
        ) -> tuple[torch.Tensor, int, int]:
    """``make(lib)`` returns (modules, the module whose resets are counted)."""
    model, x, y = make_problem(0, F64)
    modules, probe = make(lib)
    calls = _count_resets(probe)
    opt = lib.Optimizer(model.parameters(), *modules)
    traj = train(opt, model, x, y, steps, closure)
    return traj, opt.num_evaluations, calls[0]


def _with(probe: Any, wrap: Callable[[Any], list]) -> tuple[list, Any]:
    return wrap(probe), probe


# name -> (make(lib) -> (modules, probe), steps, least number of resets expected)
CASES: dict[str, tuple[Callable[[Any], tuple[list, Any]], int, int]] = {
    "every_adam": (lambda lib: _with(lib.m.Adam(), lambda a: [lib.m.RestartEvery(a, steps=3), lib.m.LR(1e-2)]), 20, 6),
    "every_chain": (lambda lib: _with(lib.m.HeavyBall(0.9), lambda h: [lib.m.RestartEvery([h, lib.m.Mul(2.0)], steps=4),
                                                                      lib.m.LR(1e-2)]), 20, 5),
    "every_none": (lambda lib: _with(lib.m.Adam(), lambda a: [a, lib.m.RestartEvery(None, steps=4), lib.m.LR(1e-2)]),
                   20, 5),
    "every_bfgs": (lambda lib: _with(lib.m.BFGS(), lambda b: [lib.m.RestartEvery(b, steps=4), lib.m.Backtracking()]),
                   20, 5),
    "every_none_bfgs": (lambda lib: _with(lib.m.BFGS(), lambda b: [b, lib.m.RestartEvery(None, steps=5),
                                                                   lib.m.Backtracking()]), 20, 4),
    "every_pr": (lambda lib: _with(_polak_ribiere(lib), lambda c: [lib.m.RestartEvery(c, steps=5),
                                                                   lib.m.Backtracking()]), 20, 4),
    "stuck_adam": (lambda lib: _with(lib.m.Adam(), lambda a: [lib.m.RestartOnStuck(a, tol=0.05, n_tol=2),
                                                              lib.m.LR(1e-2)]), 20, 3),
    "stuck_none": (lambda lib: _with(lib.m.Adam(), lambda a: [a, lib.m.RestartOnStuck(None, tol=0.05, n_tol=3),
                                                              lib.m.LR(1e-2)]), 20, 3),
    "stuck_bb": (lambda lib: _with(lib.m.BarzilaiBorwein(), lambda b: [lib.m.RestartOnStuck(b)]), 20, 0),
    "powell_fr_cond2_only": (lambda lib: _with(lib.m.FletcherReeves(), lambda c: [
        lib.m.PowellRestart(c, cond1=None), lib.m.Backtracking()]), 25, 0),
    "powell_fr": (lambda lib: _with(lib.m.FletcherReeves(), lambda c: [
        (lib.m.PowellRestart if lib is tz else _PowellRefreshed)(c), lib.m.Backtracking()]), 25, 3),
    "powell_fr_cond1": (lambda lib: _with(lib.m.FletcherReeves(), lambda c: [
        (lib.m.PowellRestart if lib is tz else _PowellRefreshed)(c, cond1=0.5, cond2=None), lib.m.Backtracking()]),
        25, 2),
    "powell_pr": (lambda lib: _with(_polak_ribiere(lib), lambda c: [
        (lib.m.PowellRestart if lib is tz else _PowellRefreshed)(c), lib.m.Backtracking()]), 25, 3),
    "birgin_martinez_fr": (lambda lib: _with(lib.m.FletcherReeves(), lambda c: [
        lib.m.BirginMartinezRestart(c, cond=0.5), lib.m.Backtracking()]), 25, 3),
    "birgin_martinez_default": (lambda lib: _with(lib.m.FletcherReeves(), lambda c: [
        lib.m.BirginMartinezRestart(c), lib.m.Backtracking()]), 25, 0),
    "birgin_martinez_ascent": (lambda lib: _with(lib.m.Negate(), lambda c: [
        lib.m.BirginMartinezRestart(c), lib.m.LR(0.1)]), 10, 10),
}


@pytest.mark.parametrize("name", list(CASES))
def test_trajectory_and_resets_match_torchzero(name: str) -> None:
    make, steps, least = CASES[name]
    ours, n_ours, r_ours = run(tz, make, steps)
    theirs, n_theirs, r_theirs = run(tzo, make, steps)
    assert_traj_close(ours, theirs, rtol=1e-9, atol=1e-12)
    assert r_ours == r_theirs, f"resets: ours {r_ours}, torchzero {r_theirs}"
    assert r_ours >= least
    assert n_ours <= n_theirs


@pytest.mark.parametrize("name", ["every_adam", "every_none", "stuck_adam"])
def test_without_closure_matches_torchzero(name: str) -> None:
    make, steps, _ = CASES[name]
    assert_traj_close(run(tz, make, steps, closure=False)[0], run(tzo, make, steps, closure=False)[0],
                      rtol=1e-9, atol=1e-12)


def test_restarts_change_the_trajectory() -> None:
    """The cases above would also pass if no reset did anything: a restarted Adam must differ."""
    restarted = run(tz, CASES["every_adam"][0], 10)[0]
    plain = run(tz, lambda lib: _with(lib.m.Adam(), lambda a: [a, lib.m.LR(1e-2)]), 10)[0]
    assert torch.equal(restarted[:2], plain[:2])
    assert not torch.allclose(restarted[2:], plain[2:])


def test_birgin_martinez_replaces_an_ascent_direction_by_the_gradient() -> None:
    """``Negate`` points uphill: every step is reset and becomes gradient descent."""
    ours = run(tz, CASES["birgin_martinez_ascent"][0], 10)[0]
    plain = run(tz, lambda lib: _with(lib.m.Identity(), lambda i: [i, lib.m.LR(0.1)]), 10)[0]
    assert torch.equal(ours, plain)


def test_birgin_martinez_wraps_a_chain() -> None:
    """The wrapped modules are stepped (torchzero calls ``update`` then ``apply``, which a chain of
    two modules, or ``Mul``, does not support): ``[HeavyBall, Mul(-1)]`` is reset every step."""
    ours, _, resets = run(tz, lambda lib: _with(lib.m.HeavyBall(0.9), lambda h: [
        lib.m.BirginMartinezRestart([h, lib.m.Mul(-1.0)]), lib.m.LR(0.1)]), 6)
    plain = run(tz, lambda lib: _with(lib.m.Identity(), lambda i: [i, lib.m.LR(0.1)]), 6)[0]
    assert torch.equal(ours, plain) and resets == 6


def test_powell_first_criterion_compares_consecutive_gradients() -> None:
    """Powell's test: restart when ``|g_{k-1}^T g_k| >= 0.2 ||g_k||^2``, checked here on a fixed
    sequence of gradients (the update enters as the gradient, so ``cond2`` never fires)."""
    x = torch.zeros(2, dtype=F64, requires_grad=True)
    probe = tz.m.Identity()
    calls = _count_resets(probe)
    opt = tz.Optimizer([x], tz.m.PowellRestart(probe), tz.m.LR(0.0))
    grads = [[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.05]]
    # step 1 stores g; 2: |g1.g2| = 0 -> no; 3: |g2.g3| = 1 >= 0.2*1.01 -> reset; 4: first after the
    # reset, not checked; 5: |g4.g5| = 0 -> no; 6: |g5.g6| = 0.05 < 0.2*1.0025 -> no
    expected = [0, 0, 1, 1, 1, 1]
    for g, e in zip(grads, expected, strict=True):
        x.grad = torch.tensor(g, dtype=F64)
        opt.step()
        assert calls[0] == e


def test_torchzero_powell_keeps_the_restart_gradient() -> None:
    """Pins the deliberate difference: torchzero 0.4.4 compares with the gradient of the last
    (re)start, so on the sequence above it misses the non-conjugate pair at step 3 (g_prev is
    still g1 = [1, 0], and |g1.g3| = 0.1 < 0.2*1.01) and resets at step 4 (|g1.g4| = 1)."""
    x = torch.zeros(2, dtype=F64, requires_grad=True)
    probe = tzo.m.Identity()
    calls = _count_resets(probe)
    opt = tzo.Optimizer([x], tzo.m.PowellRestart(probe), tzo.m.LR(0.0))
    grads = [[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [1.0, 0.0]]
    seen = []
    for g in grads:
        x.grad = torch.tensor(g, dtype=F64)
        opt.step()
        seen.append(calls[0])
    assert seen == [0, 0, 0, 1]


def test_powell_second_criterion_as_documented() -> None:
    """Reset when ``(-1 - cond2)||g||^2 < d^T g < (-1 + cond2)||g||^2`` for the incoming update d."""
    x = torch.zeros(3, dtype=F64, requires_grad=True)
    probe = tz.m.Identity()
    calls = _count_resets(probe)
    opt = tz.Optimizer([x], tz.m.Mul(-0.9), tz.m.PowellRestart(probe, cond1=None), tz.m.LR(0.0))
    for i in range(4):
        x.grad = torch.tensor([1.0, 2.0, 3.0], dtype=F64) * (i + 1)
        opt.step()
    # step 1 initialises; d = -0.9 g on steps 2-4: -1.2 < -0.9 < -0.8 -> reset, then 3 is the first
    # after the reset (not checked), 4 resets again
    assert calls[0] == 2


def test_restart_every_schedule_and_ndim() -> None:
    x = torch.zeros(4, requires_grad=True)
    probe = tz.m.HeavyBall()
    calls = _count_resets(probe)
    opt = tz.Optimizer([x], tz.m.RestartEvery(probe, steps="ndim"), tz.m.LR(0.1))
    seen = []
    for _ in range(9):
        x.grad = torch.ones(4)
        opt.step()
        seen.append(calls[0])
    assert seen == [0, 0, 0, 1, 1, 1, 1, 2, 2]


def test_modules_none_resets_every_other_top_level_module_after_the_update() -> None:
    """The update of the resetting step is applied with the old state; the modules are reset after."""
    x = torch.zeros(2, requires_grad=True)
    hb = tz.m.HeavyBall(0.5)
    every = tz.m.RestartEvery(None, steps=2)
    calls_hb, calls_every = _count_resets(hb), _count_resets(every)
    opt = tz.Optimizer([x], hb, every, tz.m.LR(1.0))
    steps = []
    for _ in range(4):
        before = x.detach().clone()
        x.grad = torch.ones(2)
        opt.step()
        steps.append(float((before - x.detach())[0]))
    # heavy ball (0.5) on a constant gradient: 1.5, 1.75, (reset after step 2) 1.5, 1.75
    assert steps == [1.5, 1.75, 1.5, 1.75]
    assert calls_hb[0] == 2 and calls_every[0] == 0


def test_restart_on_stuck_counts_consecutive_stuck_steps() -> None:
    x = torch.zeros(2, requires_grad=True)
    probe = tz.m.Identity()
    calls = _count_resets(probe)
    opt = tz.Optimizer([x], tz.m.RestartOnStuck(probe, n_tol=3), tz.m.LR(0.0))  # never moves
    seen = []
    for _ in range(9):
        x.grad = torch.ones(2)
        opt.step()
        seen.append(calls[0])
    # the first step only records x; stuck steps 2, 3, 4 -> reset; then the count starts over
    assert seen == [0, 0, 0, 1, 1, 1, 1, 2, 2]


def test_custom_strategy_from_the_base_class() -> None:
    class RestartOnIncrease(tz.m.RestartStrategyBase):
        def should_reset(self, objective: Any) -> bool:
            loss = float(objective.get_loss(backward=True))
            prev = self.global_state.get("prev", float("inf"))
            self.global_state["prev"] = loss
            return loss > prev

    model, x, y = make_problem(0, F64)
    adam = tz.m.Adam()
    calls = _count_resets(adam)
    opt = tz.Optimizer(model.parameters(), RestartOnIncrease(modules=adam), tz.m.LR(0.3))  # large lr: the loss goes up
    losses = []
    closure = make_closure(opt, model, x, y)
    for _ in range(15):
        losses.append(float(opt.step(closure).detach()))
    increases = sum(b > a for a, b in zip(losses, losses[1:], strict=False))
    assert increases > 0 and calls[0] == increases
    assert opt.num_evaluations == 15  # the loss is evaluated once per step


def test_base_class_is_abstract() -> None:
    with pytest.raises(TypeError, match="should_reset"):
        tz.m.RestartStrategyBase()  # type: ignore[abstract]


# ---------------------------------------------------------------------------------------- state
def _save_load(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf)


STATE_CHAINS: dict[str, Callable[[Any], list]] = {
    "every_adam": lambda m: [m.RestartEvery(m.Adam(), steps=3), m.LR(1e-2)],
    "stuck_bb": lambda m: [m.RestartOnStuck(m.BarzilaiBorwein(), tol=1e-3, n_tol=2)],
    "powell_fr": lambda m: [m.PowellRestart(m.FletcherReeves()), m.Backtracking()],
}


@pytest.mark.parametrize("name", list(STATE_CHAINS))
def test_state_dict_round_trip_mid_run_reproduces_uninterrupted_run(name: str) -> None:
    make = STATE_CHAINS[name]
    model, x, y = make_problem(0, F64)
    opt = tz.Optimizer(model.parameters(), *make(tz.m))
    uninterrupted = train(opt, model, x, y, 14, True)

    model, x, y = make_problem(0, F64)
    opt = tz.Optimizer(model.parameters(), *make(tz.m))
    first = train(opt, model, x, y, 7, True)
    sd = _save_load(opt.state_dict())
    model2, _, _ = make_problem(0, F64)
    with torch.no_grad():
        for p, q in zip(model2.parameters(), model.parameters(), strict=True):
            p.copy_(q)
    opt2 = tz.Optimizer(model2.parameters(), *make(tz.m))
    opt2.load_state_dict(sd)
    second = train(opt2, model2, x, y, 7, True)
    assert torch.equal(torch.cat([first, second]), uninterrupted)
    assert not torch.equal(flat(model2.parameters()), first[-1])


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("make", "exc", "match"), [
    (lambda: tz.m.RestartEvery(tz.m.Adam(), steps=0), ValueError, r"RestartEvery: `steps` must be an int >= 1, got 0"),
    (lambda: tz.m.RestartEvery(tz.m.Adam(), steps="n"), ValueError, r"RestartEvery: `steps` must be an int >= 1 or "
                                                                     r"'ndim', got 'n'"),
    (lambda: tz.m.RestartEvery(tz.m.Adam(), steps=2.0), TypeError, r"RestartEvery: `steps` .* got float"),
    (lambda: tz.m.RestartEvery("adam", steps=2), TypeError, r"RestartEvery: `modules` must be a Module, .* got str"),
    (lambda: tz.m.RestartOnStuck(tz.m.Adam(), tol=-1.0), ValueError, r"RestartOnStuck: `tol` .* got -1.0"),
    (lambda: tz.m.RestartOnStuck(tz.m.Adam(), n_tol=0), ValueError, r"RestartOnStuck: `n_tol` must be an int >= 1"),
    (lambda: tz.m.RestartOnStuck(tz.m.Adam(), n_tol=True), TypeError, r"RestartOnStuck: `n_tol` .* got bool"),
    (lambda: tz.m.PowellRestart(tz.m.Adam(), cond1="0.2"), TypeError, r"PowellRestart: `cond1` .* got str"),
    (lambda: tz.m.PowellRestart(tz.m.Adam(), cond2=float("nan")), ValueError, r"PowellRestart: `cond2` .* got nan"),
    (lambda: tz.m.PowellRestart([1, 2]), TypeError, r"PowellRestart: `modules` must be"),
    (lambda: tz.m.BirginMartinezRestart(None), TypeError, r"BirginMartinezRestart: `module` must be a Module"),
    (lambda: tz.m.BirginMartinezRestart(tz.m.Adam(), cond=None), TypeError, r"BirginMartinezRestart: `cond` .* "
                                                                               r"got NoneType"),
])
def test_bad_arguments_raise_naming_the_argument(make: Callable[[], Any], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        make()


def test_restart_needing_gradients_without_closure_or_grads_leaves_parameters() -> None:
    x = torch.ones(3, requires_grad=True)
    opt = tz.Optimizer([x], tz.m.PowellRestart(tz.m.Adam()), tz.m.LR(0.1))
    opt.step()  # no closure: gradients are p.grad (None -> zeros), a zero step
    assert torch.equal(x.detach(), torch.ones(3))
