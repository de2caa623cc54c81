"""Gradient approximators (issue 3): estimates against analytic gradients, FDM against torchzero
0.4.4, randomized estimators against torchzero in distribution, reproducibility across parameter
splits and thread counts, ``pre_generate``, the fused restore+update step, restoring the
parameters, and bad input.

Statistical tests use a fixed set of seeds (so they are deterministic) and a tolerance of 5
standard errors of the mean, estimated from the spread of independent replicates.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchzero as tzo
from conftest import assert_traj_close, trajectory

import tzfast as tz
from tzfast.core import Module, Objective

pytestmark = pytest.mark.usefixtures("single_thread")

RANDOMIZED = ["RandomizedFDM", "SPSA", "RDSA", "GaussianSmoothing", "MeZO", "SPSA1", "ForwardGradient"]


# ---------------------------------------------------------------------- a quadratic with a known gradient
def _quadratic(dim: int = 6, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    m = torch.randn(dim, dim, generator=g, dtype=dtype)
    a = m @ m.T / dim + torch.eye(dim, dtype=dtype)
    b = torch.randn(dim, generator=g, dtype=dtype)
    x0 = torch.randn(dim, generator=g, dtype=dtype)
    return a, b, x0


A, B, X0 = _quadratic()
G0 = A @ (X0 - B)  # the gradient at X0


def f_quad(x: torch.Tensor) -> torch.Tensor:
    d = x - B.to(x.dtype)
    return 0.5 * d @ (A.to(x.dtype) @ d)


F0 = f_quad(X0)


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params])


def _closure(opt: torch.optim.Optimizer, params: list[torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]
             ) -> Callable[..., torch.Tensor]:
    def closure(backward: bool = True) -> torch.Tensor:
        loss = fn(_flat(params))
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    return closure


def first_updates(lib: Any, make: Callable[[Any, int], Any], reps: int, shift: bool = False,
                  vary_step: bool = False) -> torch.Tensor:
    """``x0 - x1`` after one step of ``make(lib.m, r), LR(1)`` for ``r < reps`` (one row each)."""
    fn = (lambda x: f_quad(x) - F0) if shift else f_quad
    rows = []
    for r in range(reps):
        torch.manual_seed(1000 + r)
        x = X0.clone().requires_grad_()
        opt = lib.Optimizer([x], make(lib.m, r), lib.m.LR(1.0))
        if vary_step:
            opt.current_step = r
        opt.step(_closure(opt, [x], fn))
        rows.append(X0 - x.detach())
    return torch.stack(rows)


def assert_mean_close(samples: torch.Tensor, expected: torch.Tensor, k: float = 5.0) -> None:
    """The replicate mean is within ``k`` standard errors of ``expected`` in every coordinate."""
    mean = samples.mean(0)
    se = samples.std(0) / samples.shape[0] ** 0.5
    err = (mean - expected).abs()
    assert (err <= k * se + 1e-9).all(), f"mean {mean} vs expected {expected}: |err|/se = {err / se}"


def assert_means_agree(a: torch.Tensor, b: torch.Tensor, k: float = 5.0) -> None:
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    err = (a.mean(0) - b.mean(0)).abs()
    assert (err <= k * se + 1e-9).all(), f"means {a.mean(0)} vs {b.mean(0)}: |diff|/se = {err / se}"


# ---------------------------------------------------------------------- estimators against the analytic gradient
ESTIMATORS: dict[str, tuple[Callable[[Any, int], Any], torch.Tensor | float]] = {
    # name: (factory(m, replicate), expected mean of the first update with LR(1))
    "spsa": (lambda m, r: m.SPSA(n_samples=40, seed=r), 1.0),
    "rdsa": (lambda m, r: m.RDSA(n_samples=40, seed=r), 1.0),
    "gaussian_smoothing": (lambda m, r: m.GaussianSmoothing(n_samples=40, seed=r), 1.0),
    "rfdm_forward_uniform": (lambda m, r: m.RandomizedFDM(n_samples=40, formula="forward", distribution="uniform",
                                                          seed=r), 1.0),
    "rfdm_backward3_normal": (lambda m, r: m.RandomizedFDM(n_samples=40, formula="backward3", distribution="normal",
                                                           seed=r), 1.0),
    "rfdm_central4_sphere": (lambda m, r: m.RandomizedFDM(n_samples=40, formula="central4", distribution="sphere",
                                                          seed=r), 1.0),
    "rfdm_forward4": (lambda m, r: m.RandomizedFDM(n_samples=40, formula="forward4", seed=r), 1.0),
    "rfdm_forward5_h": (lambda m, r: m.RandomizedFDM(h=1e-2, n_samples=40, formula="forward5", seed=r), 1.0),
    "rfdm_forward3_no_pregen": (lambda m, r: m.RandomizedFDM(n_samples=40, formula="forward3", pre_generate=False,
                                                             seed=r), 1.0),
    "forward_gradient_autograd": (lambda m, r: m.ForwardGradient(n_samples=40, seed=r), 1.0),
    "forward_gradient_forward": (lambda m, r: m.ForwardGradient(n_samples=40, jvp_method="forward", seed=r), 1.0),
    "forward_gradient_central_rademacher": (lambda m, r: m.ForwardGradient(n_samples=40, jvp_method="central",
                                                                           distribution="rademacher", seed=r), 1.0),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_estimator_mean_matches_analytic_gradient(name: str, fuse: bool) -> None:
    make, scale = ESTIMATORS[name]

    def make_fused(m: Any, r: int) -> Any:
        mod = make(m, r)
        mod.fuse = fuse
        return mod

    assert_mean_close(first_updates(tz, make_fused, reps=24), G0 * scale)


def test_mezo_mean_matches_analytic_gradient() -> None:
    """MeZO's directions come from the step number: replicates are different steps."""
    assert_mean_close(first_updates(tz, lambda m, r: m.MeZO(n_samples=40), reps=24, vary_step=True), G0)


def test_mezo_mean_gaussian_uniform() -> None:
    for dist in ("gaussian", "uniform"):
        ups = first_updates(tz, lambda m, r, d=dist: m.MeZO(n_samples=40, distribution=d), reps=24, vary_step=True)
        assert_mean_close(ups, G0)


def test_spsa1_mean_is_h_times_gradient() -> None:
    """One-measurement SPSA: E[u (f(x + h u) + eps)] = h grad f(x) when f(x) = 0 (shifted quadratic)."""
    h = 0.1
    ups = first_updates(tz, lambda m, r: m.SPSA1(h=h, n_samples=40, seed=r), reps=24, shift=True)
    assert_mean_close(ups, h * G0)


# ---------------------------------------------------------------------- same distribution as torchzero
AGAINST_TORCHZERO: dict[str, dict[str, Any]] = {
    "spsa": dict(make=lambda m, r: m.SPSA(n_samples=30, seed=r)),
    "rdsa": dict(make=lambda m, r: m.RDSA(n_samples=30, seed=r)),
    "gaussian_smoothing": dict(make=lambda m, r: m.GaussianSmoothing(n_samples=30, seed=r)),
    "rfdm_forward3_uniform": dict(make=lambda m, r: m.RandomizedFDM(n_samples=30, formula="forward3",
                                                                    distribution="uniform", seed=r)),
    "rfdm_central_sphere": dict(make=lambda m, r: m.RandomizedFDM(n_samples=30, distribution="sphere", seed=r)),
    "mezo": dict(make=lambda m, r: m.MeZO(n_samples=30), vary_step=True),
    "mezo_gaussian_forward": dict(make=lambda m, r: m.MeZO(n_samples=30, distribution="gaussian", formula="forward2"),
                                  vary_step=True),
    "forward_gradient": dict(make=lambda m, r: m.ForwardGradient(n_samples=30, seed=r)),
    "forward_gradient_central": dict(make=lambda m, r: m.ForwardGradient(n_samples=30, jvp_method="central", seed=r)),
    "spsa1": dict(make=lambda m, r: m.SPSA1(h=0.1, n_samples=30, seed=r), shift=True),
}


@pytest.mark.parametrize("name", list(AGAINST_TORCHZERO))
def test_expected_first_update_matches_torchzero(name: str) -> None:
    case = AGAINST_TORCHZERO[name]
    kw = {k: v for k, v in case.items() if k != "make"}
    ours = first_updates(tz, case["make"], reps=24, **kw)
    theirs = first_updates(tzo, case["make"], reps=24, **kw)
    assert_means_agree(ours, theirs)
    # same spread too: the per-replicate variance agrees within a factor (chi-square, 23 dof)
    ratio = ours.var(0).sum() / theirs.var(0).sum()
    assert 0.4 < ratio < 2.5, f"variance ratio {ratio}"


def test_sphere_directions_have_norm_sqrt_n() -> None:
    """Forward differences of ``|x|^2/2`` at 0 along ``h u``: ``g = u h |u|^2 / 2``, so ``|g| = h |u|^3 / 2``."""
    n, h = 37, 1e-2
    x = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    mod = tz.m.RandomizedFDM(h=h, formula="forward", distribution="sphere", seed=3, target="grad")
    opt = tz.Optimizer([x], mod, tz.m.LR(1.0))
    opt.step(_closure(opt, [x], lambda v: 0.5 * (v @ v)))
    g = -x.detach()
    norm_u = (2 * g.norm() / h) ** (1 / 3)
    torch.testing.assert_close(norm_u, torch.tensor(n**0.5, dtype=torch.float64), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------- FDM
FDM_FORMULAS = ["central", "central2", "central3", "forward", "forward2", "backward", "backward2", "forward3",
                "backward3", "central4"]


@pytest.mark.parametrize("formula", FDM_FORMULAS)
def test_fdm_matches_torchzero_trajectory(formula: str) -> None:
    make = lambda m: [m.FDM(formula=formula), m.LR(1e-1)]  # noqa: E731
    assert_traj_close(trajectory(tz, make, steps=4), trajectory(tzo, make, steps=4), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", ["grad", "update"])
def test_fdm_targets_and_momentum_match_torchzero(target: str) -> None:
    make = lambda m: [m.FDM(h=1e-2, formula="forward", target=target), m.HeavyBall(0.9), m.LR(1e-1)]  # noqa: E731
    assert_traj_close(trajectory(tz, make, steps=4), trajectory(tzo, make, steps=4), rtol=1e-5, atol=1e-6)


def test_fdm_aliases_equal_their_formula() -> None:
    for alias, name in (("fd_central", "central"), ("fd_forward", "forward"), ("fd_backward", "backward")):
        make_a = lambda m, a=alias: [m.FDM(formula=a), m.LR(1e-1)]  # noqa: E731
        make_n = lambda m, n=name: [m.FDM(formula=n), m.LR(1e-1)]  # noqa: E731
        assert torch.equal(trajectory(tz, make_a, steps=2), trajectory(tz, make_n, steps=2))


ORDERS = {"forward": 1, "backward": 1, "central": 2, "forward3": 2, "backward3": 2, "central4": 4, "forward4": 3,
          "forward5": 4}


def _smooth(x: torch.Tensor) -> torch.Tensor:
    return (torch.exp(0.7 * x) + torch.sin(1.3 * x) + 0.2 * x**3).sum()


def _smooth_grad(x: torch.Tensor) -> torch.Tensor:
    return 0.7 * torch.exp(0.7 * x) + 1.3 * torch.cos(1.3 * x) + 0.6 * x**2


@pytest.mark.parametrize("formula", list(ORDERS))
def test_fdm_formula_reaches_its_order_of_accuracy(formula: str) -> None:
    """Halving ``h`` divides the error by about ``2**order`` (float64, error far above rounding)."""
    x = torch.tensor([0.3, -0.8, 1.1], dtype=torch.float64, requires_grad=True)
    errs = []
    for h in (0.04, 0.02):
        mod = tz.m.FDM(h=h, formula=formula)
        grads, _, _ = mod.approximate(lambda backward=True: _smooth(x), [x], None)
        errs.append((grads[0] - _smooth_grad(x.detach())).abs().max().item())
    ratio = errs[0] / errs[1]
    order = ORDERS[formula]
    assert 2**order * 0.8 < ratio < 2**order * 1.25, f"{formula}: error ratio {ratio}, expected ~{2**order}"


def test_fdm_evaluates_f0_once_per_estimate() -> None:
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    calls = []

    def closure(backward: bool = True) -> torch.Tensor:
        calls.append(x.detach().clone())
        return _smooth(x)

    tz.m.FDM(formula="forward3").approximate(closure, [x], None)
    assert len(calls) == 1 + 2 * 5  # f(x) once, then two points per coordinate
    calls.clear()
    tz.m.FDM(formula="central").approximate(closure, [x], None)
    assert len(calls) == 2 * 5


def test_fdm_non_contiguous_parameter() -> None:
    base = torch.randn(4, 3, dtype=torch.float64)
    x = base.T.detach().requires_grad_()  # a column-major (non-contiguous) leaf
    assert not x.is_contiguous()
    grads, _, _ = tz.m.FDM(formula="central4", h=1e-2).approximate(lambda backward=True: _smooth(x), [x], None)
    torch.testing.assert_close(grads[0], _smooth_grad(x.detach()), rtol=1e-7, atol=1e-8)


# ---------------------------------------------------------------------- reproducibility
def _split(v: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    out, i = [], 0
    for s in shapes:
        n = int(torch.tensor(s).prod().item()) if s else 1
        out.append(v[i:i + n].reshape(s).clone().requires_grad_())
        i += n
    assert i == v.numel()
    return out


SPLITS = {"one": [(30,)], "odd": [(2, 3), (7,), (), (1,), (3, 5)]}
SEEDED: dict[str, Callable[[], Any]] = {
    "spsa": lambda: tz.m.SPSA(n_samples=3, seed=11),
    "rdsa_forward3": lambda: tz.m.RDSA(n_samples=2, formula="forward3", seed=12),
    "gaussian_smoothing_sphere": lambda: tz.m.GaussianSmoothing(n_samples=4, distribution="sphere", seed=13),
    "mezo": lambda: tz.m.MeZO(n_samples=2),
    "spsa1": lambda: tz.m.SPSA1(n_samples=2, seed=14),
    "forward_gradient_central": lambda: tz.m.ForwardGradient(n_samples=2, jvp_method="central", seed=15),
    "forward_gradient_autograd": lambda: tz.m.ForwardGradient(n_samples=2, seed=16),
}


def _run_split(make: Callable[[], Any], shapes: list[tuple[int, ...]], steps: int = 4,
               tail: Callable[[], list[Any]] = lambda: [tz.m.LR(1e-2)], dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    v = torch.randn(30, generator=g).to(dtype)
    w = torch.randn(30, generator=g).to(dtype)
    params = _split(v, shapes)
    opt = tz.Optimizer(params, make(), *tail())
    closure = _closure(opt, params, lambda x: ((x - w) ** 2 * (1 + w.abs())).sum())
    for _ in range(steps):
        opt.step(closure)
    return _flat([p.detach() for p in params])


@pytest.mark.parametrize("name", list(SEEDED))
def test_same_seed_same_trajectory_whatever_the_parameter_split(name: str) -> None:
    one = _run_split(SEEDED[name], SPLITS["one"])
    odd = _run_split(SEEDED[name], SPLITS["odd"])
    assert torch.equal(one, odd)
    assert not torch.equal(one, _run_split(lambda: tz.m.SPSA(n_samples=3, seed=99), SPLITS["one"]))


def test_seed_none_follows_torch_manual_seed() -> None:
    torch.manual_seed(7)
    a = _run_split(lambda: tz.m.SPSA(), SPLITS["one"])
    torch.manual_seed(7)
    b = _run_split(lambda: tz.m.SPSA(), SPLITS["one"])
    torch.manual_seed(8)
    c = _run_split(lambda: tz.m.SPSA(), SPLITS["one"])
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generator_seed_gives_reproducible_keys() -> None:
    a = _run_split(lambda: tz.m.SPSA(seed=torch.Generator().manual_seed(3)), SPLITS["one"])
    b = _run_split(lambda: tz.m.SPSA(seed=torch.Generator().manual_seed(3)), SPLITS["odd"])
    assert torch.equal(a, b)


_THREAD_SCRIPT = textwrap.dedent("""
    import hashlib, sys, torch, tzfast as tz
    torch.set_num_threads(int(sys.argv[1]))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400_003, generator=g).requires_grad_()
    w = torch.randn(400_003, generator=g)
    out = []
    for make in (lambda: tz.m.MeZO(n_samples=3), lambda: tz.m.GaussianSmoothing(n_samples=4, seed=1),
                 lambda: tz.m.SPSA(seed=2, fuse=False)):
        p = x.detach().clone().requires_grad_()
        opt = tz.Optimizer([p], make(), tz.m.LR(1e-3))
        def closure(backward=True):
            # a small strided sample: the loss itself does not depend on the thread count
            s = p[::997].double()
            return ((s - w[::997].double()) ** 2).sum()
        for _ in range(3):
            opt.step(closure)
        out.append(hashlib.sha256(p.detach().numpy().tobytes()).hexdigest())
    print(" ".join(out))
""")


def test_same_trajectory_with_one_and_two_threads(tmp_path: Any) -> None:
    script = tmp_path / "threads.py"
    script.write_text(_THREAD_SCRIPT)
    # import the tzfast under test (this checkout), not whatever an installed site-packages holds
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    outs = [subprocess.run([sys.executable, str(script), str(n)], capture_output=True, text=True, env=env,
                           check=True, timeout=120).stdout.strip() for n in (1, 2)]
    assert outs[0] == outs[1] and len(outs[0].split()) == 3


# ---------------------------------------------------------------------- pre_generate
class _TwoGradients(Module):
    """Evaluates the (approximating) closure with backward twice at the same point."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def step(self, objective: Objective) -> Objective:
        assert objective.closure is not None
        for _ in range(2):
            objective.closure(True)
            self.seen.append(_flat([p.grad.clone() for p in objective.params]))
        objective.updates = [torch.zeros_like(p) for p in objective.params]
        return objective


@pytest.mark.parametrize("make", [lambda pg: tz.m.SPSA(seed=1, pre_generate=pg),
                                  lambda pg: tz.m.ForwardGradient(jvp_method="central", seed=1, pre_generate=pg),
                                  lambda pg: tz.m.SPSA1(seed=1, pre_generate=pg)], ids=["spsa", "fg", "spsa1"])
@pytest.mark.parametrize("pre_generate", [True, False])
def test_pre_generate_keeps_the_directions_within_a_step(make: Callable[[bool], Any], pre_generate: bool) -> None:
    x = X0.clone().requires_grad_()
    probe = _TwoGradients()
    opt = tz.Optimizer([x], make(pre_generate), probe)
    closure = _closure(opt, [x], f_quad)
    for _ in range(2):
        opt.step(closure)
    s = probe.seen

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        # the second estimate is at x moved out and back: equal up to that rounding, amplified by 1/h
        return torch.allclose(a, b, rtol=1e-7, atol=1e-7)

    assert same(s[0], s[1]) is pre_generate and same(s[2], s[3]) is pre_generate
    assert not same(s[0], s[2])  # a new step, new directions


def test_mezo_regenerates_the_same_directions_within_a_step() -> None:
    w = torch.linspace(-1, 1, 30, dtype=torch.float64)

    def run(step: int) -> list[torch.Tensor]:
        x = torch.zeros(30, dtype=torch.float64, requires_grad=True)
        probe = _TwoGradients()
        opt = tz.Optimizer([x], tz.m.MeZO(), probe)
        opt.current_step = step
        closure = _closure(opt, [x], lambda v: ((v - w) ** 2).sum())
        opt.step(closure)
        opt.step(closure)
        return probe.seen

    close = lambda a, b: torch.allclose(a, b, rtol=1e-7, atol=1e-7)  # noqa: E731
    seen = run(0)
    assert close(seen[0], seen[1]) and not close(seen[0], seen[2])
    # the directions are a function of the step number only
    assert close(run(1)[0], seen[2])


# ---------------------------------------------------------------------- fused and unfused
TAILS: dict[str, Callable[[], list[Any]]] = {
    "lr": lambda: [tz.m.LR(3e-2)],
    "mul_negate_div": lambda: [tz.m.Mul(2.0), tz.m.Negate(), tz.m.Negate(), tz.m.Div(4.0), tz.m.StepSize(0.05)],
}


@pytest.mark.parametrize("tail", list(TAILS))
@pytest.mark.parametrize("name", list(SEEDED))
def test_fused_equals_unfused(name: str, tail: str) -> None:
    def make(fuse: bool) -> Callable[[], Any]:
        def f() -> Any:
            m = SEEDED[name]()
            m.fuse = fuse
            return m
        return f

    # float64: a finite-difference quotient amplifies a rounding difference in x by 1/h
    fused = _run_split(make(True), SPLITS["odd"], tail=TAILS[tail], dtype=torch.float64)
    unfused = _run_split(make(False), SPLITS["odd"], tail=TAILS[tail], dtype=torch.float64)
    torch.testing.assert_close(fused, unfused, rtol=1e-9, atol=1e-10)


def _run_groups(fuse: bool, tail: list[Any]) -> torch.Tensor:
    """Two param groups with their own ``h`` and ``lr``, float64."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    groups = [{"params": [a], "h": 1e-3, "lr": 0.01}, {"params": [b], "h": 3e-2, "lr": 0.02}]
    opt = tz.Optimizer(groups, tz.m.RandomizedFDM(n_samples=3, formula="forward3", seed=9, fuse=fuse), *tail)
    closure = _closure(opt, [a, b], lambda v: (v**2 * torch.linspace(0.5, 1.5, 19, dtype=v.dtype)).sum())
    for _ in range(4):
        opt.step(closure)
    return _flat([a.detach(), b.detach()])


@pytest.mark.parametrize("tail", [lambda: [tz.m.LR(1.0)], lambda: [tz.m.Debias(0.9, 0.999), tz.m.LR(1.0)]],
                         ids=["lr", "debias_lr"])
def test_fused_equals_unfused_with_per_group_h_and_lr(tail: Callable[[], list[Any]]) -> None:
    fused, unfused = _run_groups(True, tail()), _run_groups(False, tail())
    torch.testing.assert_close(fused, unfused, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("target", ["closure", "grad", "update"])
def test_fused_step_leaves_grad_unset_and_unfused_sets_it(target: str) -> None:
    for fuse in (True, False):
        x = X0.clone().requires_grad_()
        opt = tz.Optimizer([x], tz.m.SPSA(seed=0, target=target, fuse=fuse), tz.m.LR(0.1))
        opt.step(_closure(opt, [x], f_quad))
        if fuse or target != "closure":
            assert x.grad is None
        else:
            assert x.grad is not None and x.grad.abs().sum() > 0


def test_fused_spsa_evaluates_twice_unfused_three_times_like_torchzero() -> None:
    counts = {}
    for lib, fuse in ((tz, True), (tz, False), (tzo, None)):
        x = X0.clone().requires_grad_()
        mod = lib.m.SPSA(seed=0) if fuse is None else lib.m.SPSA(seed=0, fuse=fuse)
        opt = lib.Optimizer([x], mod, lib.m.LR(0.1))
        first = opt.step(_closure(opt, [x], f_quad))
        counts[(lib.__name__, fuse)] = opt.num_evaluations
        assert first is not None and first != F0  # the first evaluation is at x + h u
    assert counts == {("tzfast", True): 2, ("tzfast", False): 3, ("torchzero", None): 3}


def test_not_fused_when_followed_by_a_stateful_module() -> None:
    x = X0.clone().requires_grad_()
    opt = tz.Optimizer([x], tz.m.SPSA(seed=0), tz.m.HeavyBall(0.9), tz.m.LR(0.1))
    opt.step(_closure(opt, [x], f_quad))
    assert x.grad is not None  # the estimate was materialised into p.grad (target='closure')


def _big_allocations(fn: Callable[[], None], nbytes: int) -> list[int]:
    """Sizes of the CPU allocations of at least ``nbytes`` made while ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage >= nbytes]


@pytest.mark.skipif(not tz.ops.HAS_EXTENSION, reason="the reference twins allocate; the native engine does not")
@pytest.mark.parametrize("name", ["mezo", "spsa_gaussian_n4", "gaussian_smoothing_sphere", "forward_gradient_central"])
def test_fused_step_allocates_nothing_model_sized(name: str) -> None:
    makers = {
        "mezo": lambda fuse: tz.m.MeZO(fuse=fuse),
        "spsa_gaussian_n4": lambda fuse: tz.m.SPSA(n_samples=4, distribution="gaussian", seed=0, fuse=fuse),
        "gaussian_smoothing_sphere": lambda fuse: tz.m.GaussianSmoothing(n_samples=3, distribution="sphere", seed=0,
                                                                         fuse=fuse),
        "forward_gradient_central": lambda fuse: tz.m.ForwardGradient(jvp_method="central", seed=0, fuse=fuse),
    }
    n = 1 << 20
    w = torch.randn(n)
    sizes = {}
    for fuse in (True, False):
        x = torch.zeros(n, requires_grad=True)
        opt = tz.Optimizer([x], makers[name](fuse), tz.m.LR(1e-3))

        def closure(backward: bool = True, x: torch.Tensor = x) -> torch.Tensor:
            return torch.dot(x, w) + torch.dot(x, x)  # allocates nothing of the model's size

        opt.step(closure)  # warm-up (layout, caches)
        sizes[fuse] = _big_allocations(lambda opt=opt, closure=closure: opt.step(closure), n * 4 // 2)
    assert sizes[True] == [], f"fused step allocated {sizes[True]} bytes"
    assert len(sizes[False]) >= 1  # the measurement sees the unfused step's gradient


# ---------------------------------------------------------------------- restoring the parameters
def _drift_bound(x: torch.Tensor, h: float, moves: int) -> float:
    """Subtracting what was added leaves ``x`` within a few rounding errors of ``|x| + |h u|``."""
    eps = torch.finfo(x.dtype).eps
    return moves * eps * (x.abs().max().item() + 4 * h)


APPROXIMATORS: dict[str, Callable[[], Any]] = {
    "fdm_central4": lambda: tz.m.FDM(formula="central4"),
    "spsa": lambda: tz.m.SPSA(n_samples=3, seed=0),
    "rdsa_central4": lambda: tz.m.RDSA(n_samples=2, formula="central4", seed=0),
    "gaussian_smoothing": lambda: tz.m.GaussianSmoothing(n_samples=5, seed=0),
    "mezo": lambda: tz.m.MeZO(n_samples=2),
    "spsa1": lambda: tz.m.SPSA1(n_samples=2, seed=0),
    "forward_gradient_forward": lambda: tz.m.ForwardGradient(n_samples=2, jvp_method="forward", seed=0),
    "forward_gradient_autograd": lambda: tz.m.ForwardGradient(n_samples=2, seed=0),
}


@pytest.mark.parametrize("name", list(APPROXIMATORS))
def test_parameters_restored_after_estimate(name: str) -> None:
    params = _split(torch.randn(30, dtype=torch.float32), SPLITS["odd"])
    before = [p.detach().clone() for p in params]
    grads, _, _ = APPROXIMATORS[name]().approximate(lambda backward=True: (_flat(params) ** 2).sum(), params, None)
    assert all(g.shape == p.shape for g, p in zip(grads, params, strict=True))
    for p, b in zip(params, before, strict=True):
        assert (p.detach() - b).abs().max().item() <= _drift_bound(b, 1e-3, 12)


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("name", list(APPROXIMATORS))
def test_parameters_restored_when_the_closure_raises(name: str, fuse: bool) -> None:
    params = _split(torch.randn(30, dtype=torch.float32), SPLITS["odd"])
    before = [p.detach().clone() for p in params]
    mod = APPROXIMATORS[name]()
    if hasattr(mod, "fuse"):
        mod.fuse = fuse
    opt = tz.Optimizer(params, mod, tz.m.LR(0.1))
    calls = []

    def closure(backward: bool = True) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise ZeroDivisionError("closure failed on purpose")
        return (_flat(params) ** 2).sum()

    with pytest.raises(ZeroDivisionError, match="on purpose"):
        opt.step(closure)
    for p, b in zip(params, before, strict=True):
        assert (p.detach() - b).abs().max().item() <= _drift_bound(b, 1e-3, 12)


# ---------------------------------------------------------------------- GradApproximator subclasses
class UserSPSA(tz.m.GradApproximator):
    """The GradApproximator docstring's example (INVENTORY §3.9), written as a user would."""

    def __init__(self, h: float = 1e-3, target: str = "closure") -> None:
        super().__init__(dict(h=h), target=target)  # type: ignore[arg-type]
        self.pre_steps = 0
        self.approximations = 0

    def pre_step(self, objective: Objective) -> None:
        self.pre_steps += 1

    @torch.no_grad()
    def approximate(self, closure: Callable, params: list[torch.Tensor], loss: Any) -> Any:
        self.approximations += 1
        perturbation = [(torch.randint(0, 2, p.shape) * 2 - 1).to(p) * self.settings[p]["h"] for p in params]
        torch._foreach_add_(params, perturbation)
        loss_plus = closure(False)
        torch._foreach_sub_(params, perturbation)
        torch._foreach_sub_(params, perturbation)
        loss_minus = closure(False)
        torch._foreach_add_(params, perturbation)
        grads = []
        for p, pert in zip(params, perturbation, strict=True):
            h = self.settings[p]["h"]
            grads.append(pert * ((loss_plus - loss_minus) / (2 * h**2)))
        return grads, None, loss_plus


@pytest.mark.parametrize("target", ["closure", "grad", "update"])
def test_user_subclass_matches_builtin_spsa_in_mean_and_runs_each_target(target: str) -> None:
    ups = first_updates(tz, lambda m, r: UserSPSA(target=target), reps=40)
    assert_mean_close(ups, G0)


def test_pre_step_once_per_step_approximate_per_gradient_request() -> None:
    x = X0.clone().requires_grad_()
    mod = UserSPSA()
    opt = tz.Optimizer([x], mod, _TwoGradients())
    opt.step(_closure(opt, [x], f_quad))
    assert (mod.pre_steps, mod.approximations) == (1, 2)


def test_return_approx_loss_returns_the_nearby_loss_without_another_evaluation() -> None:
    for flag, evals in ((True, 2), (False, 3)):
        x = X0.clone().requires_grad_()
        opt = tz.Optimizer([x], tz.m.SPSA(seed=0, return_approx_loss=flag, fuse=False), tz.m.HeavyBall(0.5),
                           tz.m.LR(0.1))
        opt.step(_closure(opt, [x], f_quad))
        assert opt.num_evaluations == evals


def test_vector_closure_values_are_averaged() -> None:
    """A per-sample (vector) closure gives the estimate of its mean."""
    x = X0.clone().requires_grad_()
    y = X0.clone().requires_grad_()
    opt_v = tz.Optimizer([x], tz.m.RDSA(n_samples=3, seed=4), tz.m.LR(1.0))
    opt_s = tz.Optimizer([y], tz.m.RDSA(n_samples=3, seed=4), tz.m.LR(1.0))
    opt_v.step(lambda backward=True: torch.stack([f_quad(x), 3 * f_quad(x)]))
    opt_s.step(lambda backward=True: 2 * f_quad(y))
    torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make", [lambda: tz.m.RandomizedFDM(distribution="cauchy"),
                                  lambda: tz.m.MeZO(distribution="cauchy"),
                                  lambda: tz.m.ForwardGradient(distribution="cauchy")])
def test_unknown_distribution_lists_the_accepted_ones(make: Callable[[], Any]) -> None:
    with pytest.raises(ValueError, match=r"unknown distribution 'cauchy'; expected one of .*'gaussian'.*'rademacher'"):
        make()


@pytest.mark.parametrize("cls", ["FDM", "RandomizedFDM", "SPSA", "RDSA", "GaussianSmoothing", "MeZO"])
def test_unknown_formula_lists_the_accepted_ones(cls: str) -> None:
    with pytest.raises(ValueError, match=rf"{cls}: unknown formula 'central5'.*'central'.*'fd_central'.*'forward5'"):
        getattr(tz.m, cls)(formula="central5")


@pytest.mark.parametrize("cls", ["RandomizedFDM", "SPSA", "RDSA", "GaussianSmoothing", "MeZO", "SPSA1",
                                 "ForwardGradient"])
def test_n_samples_below_one_raises(cls: str) -> None:
    with pytest.raises(ValueError, match=rf"{cls}: `n_samples` must be >= 1, got 0"):
        getattr(tz.m, cls)(n_samples=0)
    with pytest.raises(TypeError, match="`n_samples` must be an int"):
        getattr(tz.m, cls)(n_samples=2.0)


@pytest.mark.parametrize("cls", ["FDM", *RANDOMIZED])
@pytest.mark.parametrize("h", [0.0, -1e-3])
def test_non_positive_h_raises(cls: str, h: float) -> None:
    with pytest.raises(ValueError, match=rf"{cls}: `h` must be > 0, got {h}"):
        getattr(tz.m, cls)(h=h)


def test_non_positive_h_from_param_groups_raises_before_moving_anything() -> None:
    x = X0.clone().requires_grad_()
    opt = tz.Optimizer([{"params": [x], "h": -1.0}], tz.m.SPSA(seed=0), tz.m.LR(0.1))
    with pytest.raises(ValueError, match=r"SPSA: `h` must be > 0, got -1.0"):
        opt.step(_closure(opt, [x], f_quad))
    assert torch.equal(x.detach(), X0)


@pytest.mark.parametrize("cls", ["FDM", *RANDOMIZED])
def test_missing_closure_raises_naming_the_module(cls: str) -> None:
    x = X0.clone().requires_grad_()
    opt = tz.Optimizer([x], getattr(tz.m, cls)(), tz.m.LR(0.1))
    with pytest.raises(RuntimeError, match=rf"{cls}: gradient approximation requires closure"):
        opt.step()
    assert torch.equal(x.detach(), X0)


def test_non_callable_closure_raises() -> None:
    x = X0.clone().requires_grad_()
    opt = tz.Optimizer([x], tz.m.SPSA(), tz.m.LR(0.1))
    with pytest.raises(TypeError, match="closure"):
        opt.step(3)  # type: ignore[arg-type]
    obj = Objective([x], closure=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"SPSA: the closure must be callable, got int"):
        tz.m.SPSA().update(obj)


@pytest.mark.parametrize("cls", ["FDM", *RANDOMIZED])
def test_unknown_target_lists_the_accepted_ones(cls: str) -> None:
    with pytest.raises(ValueError, match=rf"{cls}: unknown target 'params'; expected one of 'update', 'grad', "
                                         r"'closure'"):
        getattr(tz.m, cls)(target="params")


def test_bad_seed_and_jvp_method() -> None:
    with pytest.raises(TypeError, match=r"SPSA: `seed` must be an int, a torch.Generator or None, got str"):
        tz.m.SPSA(seed="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown jvp_method 'reverse'; expected one of 'autograd', 'forward'"):
        tz.m.ForwardGradient(jvp_method="reverse")  # type: ignore[arg-type]


def test_modules_are_exported_like_torchzero() -> None:
    for name in ["GradApproximator", "GradTarget", "FDM", "RandomizedFDM", "SPSA", "RDSA", "GaussianSmoothing",
                 "MeZO", "ForwardGradient", "SPSA1"]:
        assert hasattr(tz.m, name) and hasattr(tzo.m, name)
    assert tz.m.MeZO.__doc__ is not None and "fuse=False" in tz.m.MeZO.__doc__


@pytest.mark.parametrize("pdtype,ldtype", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                           (torch.float32, torch.float64), (torch.float64, torch.float32)])
@pytest.mark.parametrize("formula", ["central", "forward", "central4", "forward5"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_fdm_numpy_path_equals_tensor_path_bitwise(monkeypatch: pytest.MonkeyPatch, pdtype: torch.dtype,
                                                   ldtype: torch.dtype, formula: str, per_sample: bool) -> None:
    """The CPU fast path (NumPy scalar moves and quotients) gives the same bits as the 0-d tensor path,
    for every dtype pairing of parameter and loss and for per-sample (vector) closure values."""
    from tzfast.modules.grad_approximation import fdm

    def run() -> torch.Tensor:
        torch.manual_seed(0)
        a = torch.randn(3, 4, dtype=pdtype).requires_grad_()
        b = torch.randn(4, 3, dtype=pdtype).T.detach().requires_grad_()  # non-contiguous

        def closure(backward: bool = True) -> torch.Tensor:
            v = torch.cat([(a.exp() * 0.3).reshape(-1), torch.sin(b).reshape(-1) * 1.7]).to(ldtype)
            return v if per_sample else v.sum()

        grads, _, _ = tz.m.FDM(h=1e-2, formula=formula).approximate(closure, [a, b], None)
        return torch.cat([g.reshape(-1).double() for g in grads] + [a.detach().reshape(-1).double(),
                                                                       b.detach().reshape(-1).double()])

    fast = run()
    monkeypatch.setattr(fdm, "_NUMPY_DTYPES", ())
    slow = run()
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("make", [
    lambda m: [m.SPSA(seed=3), m.LR(1e-2)],
    lambda m: [m.RDSA(seed=3), m.LR(1e-2)],
    lambda m: [m.MeZO(), m.LR(1e-2)],
    lambda m: [m.RandomizedFDM(n_samples=3, formula="forward3", seed=3), m.LR(1e-2)],
    lambda m: [m.RandomizedFDM(n_samples=2, formula="central4", distribution="uniform", seed=3), m.LR(1e-2)],
    lambda m: [m.SPSA(seed=3, fuse=False), m.LR(1e-2)],
], ids=["spsa", "rdsa", "mezo", "forward3x3", "central4x2", "unfused"])
def test_written_out_walks_equal_the_general_walk_bitwise(monkeypatch: pytest.MonkeyPatch, make: Any) -> None:
    """The one-segment walk and the one-central-direction step make the same engine calls with the
    same coefficients as the general (per-segment) walk: the same trajectory, bit for bit."""
    from tzfast.modules.grad_approximation import seeded

    fast = trajectory(tz, make, steps=5)
    monkeypatch.setattr(seeded, "_FAST_PATHS", False)
    general = trajectory(tz, make, steps=5)
    assert torch.equal(fast, general)


def test_fused_step_sees_a_learning_rate_written_between_steps() -> None:
    """The fused step caches its tail multipliers per settings version: a scheduler's write to the
    group's ``lr`` takes effect on the next step (here lr 0 freezes the parameters)."""
    x = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 6, dtype=torch.float64))
    opt = tz.Optimizer([x], tz.m.SPSA(seed=1), tz.m.LR(1e-1))

    def closure(backward: bool = True) -> torch.Tensor:
        return (x ** 2).sum()

    opt.step(closure)
    moved = x.detach().clone()
    opt.step(closure)
    assert not torch.equal(x.detach(), moved)
    opt.param_groups[0]["lr"] = 0.0
    frozen = x.detach().clone()
    opt.step(closure)
    assert torch.equal(x.detach(), frozen)
    opt.param_groups[0]["lr"] = 1e-1
    opt.step(closure)
    assert not torch.equal(x.detach(), frozen)
