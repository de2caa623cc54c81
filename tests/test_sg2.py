"""SG2 (2SPSA Hessian): trajectories against torchzero 0.4.4 with the same random draws, the
Hessian estimate against the true Hessian (one draw exactly, the mean over seeds in
expectation), the evaluation points, seeding, restoring the parameters, state and bad input.

Randomness: SG2 draws its perturbations exactly as torchzero 0.4.4 does (``torch.bernoulli`` of
0.5 per parameter, in order, from the module's ``torch.Generator`` seeded with ``seed``, or from
torch's global generator when ``seed=None``), so trajectories are compared directly (float64,
rtol 1e-12; closure counts equal).

Deliberate differences, pinned below: torchzero 0.4.4 re-points each parameter's storage to
its saved copy (``set_``) after the first sample, so every later sample of a step evaluates
``x + c`` and ``x`` (a one-sided difference: those samples estimate half the Hessian; the first
step's default of 10 samples gives 0.55 times the Hessian in expectation). tzfast evaluates
``x + c`` and ``x - c`` for every sample and restores the parameters in place. The comparisons
with torchzero therefore use one sample per step. torchzero also calls the closure under
``torch.no_grad``, so its closures enable gradients themselves (:func:`closure_for` does, for
both libraries); tzfast evaluates it under ``torch.enable_grad``.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchzero as tzo
from conftest import assert_traj_close, flat

import tzfast as tz

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
N = 9


def _hessian() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(N, N, generator=g, dtype=F64)
    return A @ A.T / N + torch.eye(N, dtype=F64)


A = _hessian()
B = torch.linspace(-1.0, 1.0, N, dtype=F64)


def make_params() -> list[torch.Tensor]:
    """A 2x3 matrix, a 0-d and a 2-element tensor (n = 9): draws run over odd shapes in order."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, generator=g, dtype=F64)
    return [x[:6].reshape(2, 3).clone().requires_grad_(), x[6].clone().requires_grad_(),
            x[7:].clone().requires_grad_()]


def f(ps: list[torch.Tensor], quartic: float) -> torch.Tensor:
    x = torch.cat([p.reshape(-1) for p in ps])
    return 0.5 * x @ A @ x - B @ x + quartic * (x**4).sum()


def closure_for(opt: Any, ps: list[torch.Tensor], quartic: float = 0.01, enable_grad: bool = True,
                log: list | None = None) -> Callable:
    def closure(backward: bool = True) -> torch.Tensor:
        if log is not None:
            log.append(flat(ps))
        with torch.set_grad_enabled(enable_grad or torch.is_grad_enabled()):
            loss = f(ps, quartic)
            if backward:
                opt.zero_grad()
                loss.backward()
        return loss

    return closure


def run(lib: Any, make: Callable[[Any], list], steps: int = 15, seed: int = 0, quartic: float = 0.01,
        enable_grad: bool = True) -> tuple[torch.Tensor, int, Any]:
    ps = make_params()
    opt = lib.Optimizer(ps, *make(lib.m))
    closure = closure_for(opt, ps, quartic, enable_grad)
    torch.manual_seed(seed)
    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(flat(ps))
    return torch.stack(out), opt.num_evaluations, opt


# ---------------------------------------------------------------------------------------- differential
CASES: dict[str, Callable[[Any], list]] = {
    "seeded": lambda m: [m.SG2(n_first_step_samples=1, seed=3, start_step=5, damping=5.0), m.LR(0.5)],
    "global_rng_beta": lambda m: [m.SG2(n_first_step_samples=1, start_step=3, beta=0.9, damping=10.0), m.LR(0.5)],
    "newton_from_start": lambda m: [m.SG2(n_first_step_samples=1, start_step=0, damping=3.0, seed=1), m.LR(0.5)],
    "update_freq": lambda m: [m.SG2(n_first_step_samples=1, seed=5, update_freq=2, start_step=2, damping=5.0),
                              m.LR(0.5)],
    "trace_phase": lambda m: [m.SG2(n_first_step_samples=1, seed=5, start_step=100), m.LR(0.5)],
    "h_inner": lambda m: [m.SG2(n_first_step_samples=1, seed=2, h=0.1, damping=5.0, start_step=2,
                                inner=m.Mul(0.5)), m.LR(0.5)],
    # rank-2 Hessian (one sample, no damping): the minimum-norm least-squares step, as torchzero's lstsq
    "singular_hessian": lambda m: [m.SG2(n_first_step_samples=1, seed=3, start_step=0, damping=0.0), m.LR(0.01)],
    "after_heavyball": lambda m: [m.HeavyBall(0.5), m.SG2(n_first_step_samples=1, seed=4, damping=5.0, start_step=1),
                                  m.LR(0.3)],
}


@pytest.mark.parametrize("name", list(CASES))
def test_trajectory_matches_torchzero(name: str) -> None:
    # a rank-deficient least-squares step (SVD here, complete orthogonal factorisation there) and
    # the ill-conditioned averages that follow it are sensitive to rounding: rtol 1e-10 over 6 steps
    steps, rtol = (6, 1e-10) if name == "singular_hessian" else (15, 1e-12)
    ours, n_ours, _ = run(tz, CASES[name], steps=steps)
    theirs, n_theirs, _ = run(tzo, CASES[name], steps=steps)
    assert_traj_close(ours, theirs, rtol=rtol, atol=rtol * 1e-2)
    assert n_ours <= n_theirs
    assert n_ours == steps * 3 or name == "update_freq"  # 2 per sample + 1 at x0


def test_plain_closure_works_here_and_not_in_torchzero() -> None:
    """A closure that does not enable gradients itself: tzfast gives the same trajectory;
    torchzero 0.4.4 calls it under ``no_grad`` and ``backward`` fails."""
    make = CASES["seeded"]
    plain, _, _ = run(tz, make, steps=5, enable_grad=False)
    assert torch.equal(plain, run(tz, make, steps=5)[0])
    with pytest.raises(RuntimeError, match="does not require grad"):
        run(tzo, make, steps=1, enable_grad=False)


# ---------------------------------------------------------------------------------------- the estimate
def _draws(seed: int, n: int, h: float) -> list[torch.Tensor]:
    """The perturbations SG2 draws from a fresh generator seeded with ``seed`` (flat)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        c = [torch.bernoulli(torch.full_like(p, 0.5), generator=g) * 2 - 1 for p in make_params()]
        out.append(torch.cat([t.reshape(-1) for t in c]) * h)
    return out


@pytest.mark.parametrize("h", [0.01, 0.5])
def test_one_step_estimate_on_a_quadratic_is_the_formula(h: float) -> None:
    """On ``0.5 x'Ax - b'x``: ``dg = 2 A c``, so the estimate is ``mean sym((1 / c') (A c')^T)`` with
    ``c' = c / h`` (independent of h), plus damping on the diagonal."""
    sg2 = tz.m.SG2(n_first_step_samples=3, seed=7, h=h, damping=0.25)
    ps = make_params()
    opt = tz.Optimizer(ps, sg2, tz.m.LR(0.1))
    opt.step(closure_for(opt, ps, quartic=0.0))
    expected = torch.zeros(N, N, dtype=F64)
    for c in _draws(7, 3, h):
        M = torch.outer(0.5 / c, 2 * A @ c)
        expected += 0.5 * (M + M.T) / 3
    expected += 0.25 * torch.eye(N, dtype=F64)
    torch.testing.assert_close(sg2.global_state["H"], expected, rtol=1e-9, atol=1e-9)
    assert torch.equal(sg2.global_state["H"], sg2.global_state["H"].T)


def _first_step_H(lib: Any, seed: int, samples: int) -> torch.Tensor:
    ps = make_params()
    sg2 = lib.m.SG2(n_first_step_samples=samples, seed=seed, damping=0.0)
    opt = lib.Optimizer(ps, sg2, lib.m.LR(0.0))
    opt.step(closure_for(opt, ps, quartic=0.0))
    return sg2.global_state["H"]


def test_mean_estimate_over_seeds_is_the_true_hessian() -> None:
    """Mean of 300 first-step estimates (10 samples each) vs ``A``: every entry within 5
    standard errors (the standard error from the spread of the 300 estimates). torchzero
    0.4.4's mean is 0.55 A (one central and nine one-sided samples, see the module docstring)."""
    seeds = 300
    ours = torch.stack([_first_step_H(tz, s, 10) for s in range(seeds)])
    mean, se = ours.mean(0), ours.std(0) / seeds**0.5
    assert ((mean - A).abs() <= 5 * se + 1e-12).all()
    assert (0.45 * A.diagonal() > 5 * se.diagonal()).all()  # the test can tell A from 0.55 A

    theirs = torch.stack([_first_step_H(tzo, s, 10) for s in range(seeds)])
    t_mean, t_se = theirs.mean(0), theirs.std(0) / seeds**0.5
    assert ((t_mean - 0.55 * A).abs() <= 5 * t_se + 1e-12).all()
    assert ((t_mean - A).abs() > 5 * t_se).any()


def test_every_sample_is_a_central_difference_and_parameters_keep_their_storage() -> None:
    ps = make_params()
    ptrs = [p.data_ptr() for p in ps]
    x0 = flat(ps)
    log: list[torch.Tensor] = []
    opt = tz.Optimizer(ps, tz.m.SG2(n_first_step_samples=4, seed=0, h=0.01), tz.m.LR(0.0))
    opt.step(closure_for(opt, ps, log=log))
    assert len(log) == 9  # 4 samples x 2, then the gradient at x0
    for plus, minus in zip(log[0:8:2], log[1:8:2], strict=True):
        torch.testing.assert_close(plus - x0, -(minus - x0), rtol=0, atol=1e-15)
        torch.testing.assert_close((plus - x0).abs(), torch.full((N,), 0.01, dtype=F64), rtol=1e-12, atol=0)
    assert torch.equal(log[8], x0) and torch.equal(flat(ps), x0)
    assert [p.data_ptr() for p in ps] == ptrs


def test_torchzero_later_samples_are_one_sided() -> None:
    """Pins torchzero 0.4.4's behaviour: after the first sample, the "minus" point is ``x0``."""
    ps = make_params()
    x0 = flat(ps)
    log: list[torch.Tensor] = []
    opt = tzo.Optimizer(ps, tzo.m.SG2(n_first_step_samples=3, seed=0), tzo.m.LR(0.0))
    opt.step(closure_for(opt, ps, log=log))
    assert not torch.allclose(log[1], x0)
    torch.testing.assert_close(log[3], x0, rtol=0, atol=1e-15)
    torch.testing.assert_close(log[5], x0, rtol=0, atol=1e-15)


def test_h_follows_param_groups() -> None:
    ps = make_params()
    log: list[torch.Tensor] = []
    opt = tz.Optimizer([{"params": ps[:2], "h": 0.5}, {"params": ps[2:]}], tz.m.SG2(n_first_step_samples=1, seed=0),
                       tz.m.LR(0.0))
    x0 = flat(ps)
    opt.step(closure_for(opt, ps, log=log))
    d = (log[0] - x0).abs()
    torch.testing.assert_close(d[:7], torch.full((7,), 0.5, dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(d[7:], torch.full((2,), 0.01, dtype=F64), rtol=1e-12, atol=0)


def test_converges_on_a_quadratic_with_backtracking() -> None:
    """``SG2(), Backtracking()`` (the documentation's example): the running mean of estimates
    approaches A and the Newton steps reach the minimum."""
    for make in (lambda m: [m.SG2(seed=0), m.Backtracking()],
                 lambda m: [m.SG2(n_samples=4, start_step=2, seed=0), m.Backtracking()]):
        ps = make_params()
        opt = tz.Optimizer(ps, *make(tz.m))
        closure = closure_for(opt, ps, quartic=0.0)
        for _ in range(60):
            opt.step(closure)
        xmin = torch.linalg.solve(A, B)
        torch.testing.assert_close(flat(ps), xmin, rtol=0, atol=1e-6)


def test_2spsa_chain_counts_evaluations_like_torchzero() -> None:
    """``SPSA(), SG2(), LR`` (2SPSA): SG2's gradients at ``x ± c`` are SPSA estimates from the
    replaced closure. The random directions differ between the libraries, the evaluation counts
    do not."""
    counts = []
    for lib in (tz, tzo):
        ps = make_params()
        opt = lib.Optimizer(ps, lib.m.SPSA(), lib.m.SG2(), lib.m.LR(1e-2))
        closure = closure_for(opt, ps, quartic=0.0)
        torch.manual_seed(0)
        for _ in range(5):
            opt.step(closure)
        assert torch.isfinite(flat(ps)).all()
        counts.append(opt.num_evaluations)
    assert counts[0] <= counts[1]


def test_levenberg_marquardt_example() -> None:
    ps = make_params()
    opt = tz.Optimizer(ps, tz.m.LevenbergMarquardt(tz.m.SG2(beta=0.75, n_samples=4)))
    closure = closure_for(opt, ps, quartic=0.0)
    f0 = float(closure(False))
    for _ in range(30):
        opt.step(closure)
    assert float(closure(False)) < f0


def test_get_H_is_the_estimate() -> None:
    sg2 = tz.m.SG2(seed=0)
    assert sg2.get_H() is None
    ps = make_params()
    opt = tz.Optimizer(ps, sg2, tz.m.LR(0.0))
    opt.step(closure_for(opt, ps))
    assert sg2.get_H().to_tensor() is sg2.global_state["H"]


# ---------------------------------------------------------------------------------------- seeding
def test_seed_reproduces_and_distinguishes_runs() -> None:
    def make(seed: int) -> Callable[[Any], list]:
        return lambda m: [m.SG2(n_first_step_samples=2, seed=seed, damping=5.0, start_step=2), m.LR(0.3)]

    a, _, _ = run(tz, make(1), steps=6, seed=10)
    b, _, _ = run(tz, make(1), steps=6, seed=20)  # the global seed does not matter
    c, _, _ = run(tz, make(2), steps=6, seed=10)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_no_seed_follows_torch_manual_seed() -> None:
    make = lambda m: [m.SG2(n_first_step_samples=2, damping=5.0, start_step=2), m.LR(0.3)]  # noqa: E731
    a, _, _ = run(tz, make, steps=6, seed=10)
    b, _, _ = run(tz, make, steps=6, seed=10)
    c, _, _ = run(tz, make, steps=6, seed=11)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_reset_keeps_the_generator() -> None:
    """``reset`` clears the Hessian and the step count but not the random stream (spec: reset
    keeps the RNG), so the estimate after a reset uses new draws (torchzero 0.4.4 re-seeds)."""
    ps = make_params()
    sg2 = tz.m.SG2(n_first_step_samples=1, seed=0, damping=0.0)
    opt = tz.Optimizer(ps, sg2, tz.m.LR(0.0))
    closure = closure_for(opt, ps, quartic=0.0)
    opt.step(closure)
    first = sg2.global_state["H"].clone()
    sg2.reset()
    assert "H" not in sg2.global_state
    opt.step(closure)
    assert sg2.global_state["step"] == 0 and not torch.equal(sg2.global_state["H"], first)


# ---------------------------------------------------------------------------------------- failures
def test_exception_in_closure_restores_parameters_bitwise() -> None:
    ps = make_params()
    before = [p.detach().clone() for p in ps]
    ptrs = [p.data_ptr() for p in ps]
    opt = tz.Optimizer(ps, tz.m.SG2(seed=0), tz.m.LR(0.1))
    calls = [0]
    inner = closure_for(opt, ps)

    def closure(backward: bool = True) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 4:  # at x - c of the second sample
            raise ValueError("closure failed")
        return inner(backward)

    with pytest.raises(ValueError, match="closure failed"):
        opt.step(closure)
    for p, b in zip(ps, before, strict=True):
        assert torch.equal(p.detach(), b)
    assert [p.data_ptr() for p in ps] == ptrs


def test_without_closure_raises_naming_sg2() -> None:
    ps = make_params()
    opt = tz.Optimizer(ps, tz.m.SG2(), tz.m.LR(0.1))
    for p in ps:
        p.grad = torch.ones_like(p)
    before = flat(ps)
    with pytest.raises(RuntimeError, match="SG2 needs a closure"):
        opt.step()
    assert torch.equal(flat(ps), before)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    (dict(n_samples=0), ValueError, r"SG2: `n_samples` must be an int >= 1, got 0"),
    (dict(n_samples=2.0), TypeError, r"SG2: `n_samples` must be an int >= 1, got float"),
    (dict(n_first_step_samples=0), ValueError, r"SG2: `n_first_step_samples` must be an int >= 1"),
    (dict(start_step=-1), ValueError, r"SG2: `start_step` must be an int >= 0, got -1"),
    (dict(beta=1.5), ValueError, r"SG2: `beta` must be a finite number in \[0.0, 1.0\] or None, got 1.5"),
    (dict(beta="0.9"), TypeError, r"SG2: `beta` .* got str"),
    (dict(damping=-1e-4), ValueError, r"SG2: `damping` must be a finite number >= 0.0, got -0.0001"),
    (dict(h=0.0), ValueError, r"SG2: `h` must be a finite number > 0.0, got 0.0"),
    (dict(h=float("nan")), ValueError, r"SG2: `h` .* got nan"),
    (dict(seed=1.5), TypeError, r"SG2: `seed` must be an int or None, got float"),
    (dict(update_freq=0), ValueError, r"SG2: `update_freq` must be an int >= 1, got 0"),
])
def test_bad_arguments_raise_naming_the_argument(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        tz.m.SG2(**kwargs)


# ---------------------------------------------------------------------------------------- state
def test_state_dict_round_trip_with_seed_reproduces_uninterrupted_run() -> None:
    """The generator's state travels as a tensor (``torch.load``'s default ``weights_only`` loads it)."""
    make = CASES["seeded"]
    whole, _, _ = run(tz, make, steps=12)

    ps = make_params()
    opt = tz.Optimizer(ps, *make(tz.m))
    closure = closure_for(opt, ps)
    first = []
    for _ in range(6):
        opt.step(closure)
        first.append(flat(ps))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)

    ps2 = make_params()
    with torch.no_grad():
        for p, q in zip(ps2, ps, strict=True):
            p.copy_(q)
    opt2 = tz.Optimizer(ps2, *make(tz.m))
    opt2.load_state_dict(sd)
    closure2 = closure_for(opt2, ps2)
    second = []
    for _ in range(6):
        opt2.step(closure2)
        second.append(flat(ps2))
    assert torch.equal(torch.stack(first + second), whole)


def test_solve_is_lu_or_the_minimum_norm_least_squares_solution() -> None:
    from tzfast.modules.quasi_newton.sg2 import _solve

    b = torch.linspace(-1.0, 2.0, N, dtype=F64)
    torch.testing.assert_close(_solve(A, b), torch.linalg.solve(A, b), rtol=1e-12, atol=0)
    u, v = torch.linspace(1.0, 2.0, N, dtype=F64), torch.linspace(-1.0, 0.5, N, dtype=F64)
    H = torch.outer(u, v) + torch.outer(v, u)  # rank 2
    torch.testing.assert_close(_solve(H, b), torch.linalg.pinv(H) @ b, rtol=1e-9, atol=1e-12)
