"""Smoothing (seed 001, INVENTORY section 4): LaplacianSmoothing, GradientSampling, Reformulation.

LaplacianSmoothing is deterministic: trajectories equal torchzero 0.4.4's within rtol 1e-5.
GradientSampling is random (tzfast draws its perturbations from its own counter-based engine),
so it is compared with torchzero in distribution — the mean update over many independent steps
against the analytic expectation and against torchzero's mean — and exactly in its
deterministic settings (no perturbed point: ``n=1`` with ``include_x0``; ``sigma`` tiny).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchzero as tzo
from conftest import make_problem

import tzfast as tz
from tzfast.core.objective import Objective

ISSUE_8 = "Control-flow, closure-modifying and projection modules"  # title of issue 8 (termination criteria)


def _laplacian_trajectory(lib: Any, kwargs: dict[str, Any], steps: int = 8, dtype: torch.dtype = torch.float32,
                          groups: bool = False) -> list[torch.Tensor]:
    model, x, y = make_problem(0, dtype)
    params: Any = model.parameters()
    if groups:
        ps = list(model.parameters())
        params = [{"params": ps[:3], "sigma": 0.3}, {"params": ps[3:]}]
    opt = lib.Optimizer(params, lib.m.LaplacianSmoothing(**kwargs), lib.m.LR(0.1))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = F.mse_loss(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(torch.cat([p.detach().ravel().clone() for p in model.parameters()]))
    return out


# --------------------------------------------------------------------------- LaplacianSmoothing
@pytest.mark.parametrize("kwargs", [{}, dict(sigma=0.5, layerwise=False), dict(min_numel=1), dict(sigma=3.0),
                                    dict(sigma=2.0, layerwise=False, min_numel=100)],
                         ids=["defaults", "global", "min_numel1", "sigma3", "global_sigma2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_laplacian_smoothing_trajectory_matches_torchzero(kwargs: dict[str, Any], dtype: torch.dtype,
                                                          single_thread: None) -> None:
    ours = _laplacian_trajectory(tz, kwargs, dtype=dtype)
    theirs = _laplacian_trajectory(tzo, kwargs, dtype=dtype)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 if dtype == torch.float32 else 1e-12)


def test_laplacian_smoothing_per_group_sigma_matches_torchzero(single_thread: None) -> None:
    ours, theirs = _laplacian_trajectory(tz, {}, groups=True), _laplacian_trajectory(tzo, {}, groups=True)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10])
def test_laplacian_smoothing_solves_the_periodic_laplacian_system(n: int) -> None:
    # (I - sigma L) u = g with L the circulant [1, -2, 1] matrix (torchzero's v for n = 2: [-2, 1])
    sigma = 0.7
    g = torch.randn(n, dtype=torch.float64)
    v = torch.zeros(n, dtype=torch.float64)
    if n > 1:
        v[0], v[1], v[-1] = -2, 1, 1
    L = torch.stack([torch.roll(v, i) for i in range(n)], 1)
    u = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - sigma * L, g)
    out = tz.m.LaplacianSmoothing(sigma=sigma, min_numel=0).multi_tensor_apply(
        [g], [g], None, None, [{}], [dict(sigma=sigma, layerwise=True, min_numel=0)])
    torch.testing.assert_close(out[0], u)


def test_laplacian_smoothing_denominators_are_cached_and_shared() -> None:
    a, b, c = (torch.nn.Parameter(torch.randn(6, 5)) for _ in range(3))
    small = torch.nn.Parameter(torch.randn(3))
    mod = tz.m.LaplacianSmoothing(sigma=0.5)
    opt = tz.Optimizer([a, b, c, small], mod, tz.m.LR(0.1))
    for p in (a, b, c, small):
        p.grad = torch.randn_like(p)
    opt.step()
    d = mod.state[a]["denominator"]
    assert d is mod.state[b]["denominator"] is mod.state[c]["denominator"]  # one per (numel, sigma)
    assert "denominator" not in mod.state[small]  # numel 3 <= min_numel 4: unchanged
    opt.step()
    assert mod.state[a]["denominator"] is d
    mod.set_param_groups([{"params": [c], "sigma": 2.0}])
    opt.step()
    assert mod.state[c]["denominator"] is not d and mod.state[a]["denominator"] is d


def test_laplacian_smoothing_target_grad_smooths_the_gradient() -> None:
    p = torch.nn.Parameter(torch.randn(10))
    g = torch.randn(10)
    opt = tz.Optimizer([p], tz.m.LaplacianSmoothing(target="grad"), tz.m.LR(1.0))
    p.grad = g.clone()
    before = p.detach().clone()
    opt.step()
    d = tz.modules.smoothing.laplacian.laplacian_denominator(10, 1.0, torch.float32)
    expected = tz.modules.smoothing.laplacian.laplacian_smooth(g, d)
    torch.testing.assert_close(before - p.detach(), expected)


def test_ex08_laplacian_smoothing_gradient_descent_with_modular() -> None:
    """EX-08: ``tz.Modular(model.parameters(), tz.m.LaplacianSmoothing(), tz.m.LR(1e-2))``.

    Problem: ``nn.Linear(16, 1)`` on 64 noisy linear targets (MSE ~15 at the start, ~0.01 at the
    optimum); 400 LSGD steps must reach an MSE below 0.5.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    y = x @ torch.randn(16, 1, generator=g) + 0.1 * torch.randn(64, 1, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 1)
    opt = tz.Modular(model.parameters(), tz.m.LaplacianSmoothing(), tz.m.LR(1e-2))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = F.mse_loss(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    first = float(opt.step(closure).detach())
    for _ in range(399):
        opt.step(closure)
    final = F.mse_loss(model(x), y).item()
    assert first > 10 and final < 0.5, (first, final)


# --------------------------------------------------------------------------- GradientSampling: helpers
X0 = torch.tensor([0.5, -1.0, 1.5, 0.8])


def quartic_closure(x: torch.Tensor) -> Callable[..., torch.Tensor]:
    """f(x) = sum(x^4) / 4: grad x^3, and E_z[grad f(x + sigma z)] = x^3 + 3 sigma^2 E[z^2] x."""
    def closure(backward: bool = True) -> torch.Tensor:
        loss = (x ** 4).sum() / 4
        if backward:
            x.grad = None
            loss.backward()
        return loss
    return closure


def sampled_updates(lib: Any, steps: int, modules_form: bool = True, x0: torch.Tensor = X0,
                    **kwargs: Any) -> torch.Tensor:
    """The update of ``steps`` independent steps of GradientSampling on the quartic (``fixed=False``)."""
    x = x0.clone().requires_grad_()
    if modules_form:
        opt = lib.Optimizer([x], lib.m.GradientSampling([lib.m.LR(1.0)], fixed=False, **kwargs))
    else:
        opt = lib.Optimizer([x], lib.m.GradientSampling(fixed=False, **kwargs), lib.m.LR(1.0))
    closure = quartic_closure(x)
    ups = []
    for _ in range(steps):
        opt.step(closure)
        with torch.no_grad():
            ups.append(x0 - x)
            x.copy_(x0)
    return torch.stack(ups)


def assert_mean_close(u: torch.Tensor, expected: torch.Tensor, k: float = 5.0) -> None:
    mean, se = u.mean(0), u.std(0) / math.sqrt(u.shape[0])
    assert ((mean - expected).abs() <= k * se + 1e-6).all(), f"mean={mean}, expected={expected}, se={se}"


def assert_same_mean(u: torch.Tensor, v: torch.Tensor, k: float = 5.0) -> None:
    se = (u.var(0) / u.shape[0] + v.var(0) / v.shape[0]).sqrt()
    diff = (u.mean(0) - v.mean(0)).abs()
    assert (diff <= k * se + 1e-6).all(), f"tzfast mean={u.mean(0)}, torchzero mean={v.mean(0)}, se={se}"


# --------------------------------------------------------------------------- GradientSampling: distribution
# E[z_i^2] of torchzero's unscaled samples: N(0,1) -> 1, U(-1,1) -> 1/3, +-1 -> 1, unit sphere -> 1/d
_SECOND_MOMENT = {"gaussian": 1.0, "normal": 1.0, "uniform": 1 / 3, "rademacher": 1.0, "sphere": 1 / 4}


@pytest.mark.parametrize("distribution", ["gaussian", "uniform", "rademacher", "sphere"])
def test_mean_aggregate_equals_smoothed_gradient_and_torchzero(distribution: str) -> None:
    torch.manual_seed(0)
    sigma = 0.5
    kw = dict(sigma=sigma, n=8, include_x0=False, distribution=distribution)
    expected = X0 ** 3 + 3 * sigma ** 2 * _SECOND_MOMENT[distribution] * X0
    ours = sampled_updates(tz, 300, modules_form=False, **kw)
    theirs = sampled_updates(tzo, 300, **kw)
    assert_mean_close(ours, expected)
    assert_mean_close(theirs, expected)
    assert_same_mean(ours, theirs)


def test_sphere_perturbations_have_unit_norm_and_uniform_uses_unit_interval() -> None:
    x = X0.clone().requires_grad_()
    points: list[torch.Tensor] = []

    def closure(backward: bool = True) -> torch.Tensor:
        points.append(x.detach().clone())
        return (x ** 2).sum()

    for dist, check in (("sphere", lambda d: torch.allclose(d.norm(), torch.tensor(0.3))),
                        ("uniform", lambda d: bool((d.abs() <= 0.3).all())),
                        ("rademacher", lambda d: torch.allclose(d.abs(), torch.full_like(d, 0.3)))):
        points.clear()
        gs = tz.m.GradientSampling(sigma=0.3, n=6, include_x0=False, distribution=dist, seed=1)
        obj = Objective([x], closure=closure)
        gs.pre_step(obj)
        gs.closure(False, closure, [x], obj)
        assert len(points) == 6
        assert all(check(p - X0) for p in points), dist
        torch.testing.assert_close(x.detach(), X0, rtol=0, atol=0)


@pytest.mark.parametrize("aggregate", ["max", "min", "min-norm", "min-value"])
@pytest.mark.parametrize("include_x0", [True, False])
def test_aggregates_match_torchzero_in_distribution(aggregate: str, include_x0: bool) -> None:
    if aggregate == "min-value":
        pytest.skip("torchzero 0.4.4's 'min-value' never replaces the gradient (its clamp runs first); "
                    "tzfast returns the gradient of the least value: see test_min_value_returns_gradient_of_best_point")
    torch.manual_seed(1)
    kw = dict(sigma=0.4, n=5, include_x0=include_x0, aggregate=aggregate)
    assert_same_mean(sampled_updates(tz, 250, **kw), sampled_updates(tzo, 250, **kw))


def test_min_value_returns_gradient_of_best_point() -> None:
    x = X0.clone().requires_grad_()
    evaluated: list[tuple[torch.Tensor, torch.Tensor]] = []
    base = quartic_closure(x)

    def closure(backward: bool = True) -> torch.Tensor:
        loss = base(backward)
        evaluated.append((loss.detach().clone(), x.grad.clone() if backward else torch.empty(0)))
        return loss

    gs = tz.m.GradientSampling(sigma=0.5, n=6, aggregate="min-value", seed=3)
    obj = Objective([x], closure=closure)
    gs.pre_step(obj)
    loss, grads = gs.closure(True, closure, [x], obj)
    best = min(evaluated, key=lambda e: e[0].item())
    assert loss.item() == best[0].item()
    torch.testing.assert_close(grads[0], best[1])


def test_min_max_keep_the_magnitude_extremes_with_the_first_samples_sign() -> None:
    x = torch.zeros(3, requires_grad=True)
    grads = iter([torch.tensor([1.0, -2.0, 3.0]), torch.tensor([-4.0, 0.5, -1.0]), torch.tensor([2.0, 3.0, -0.5])])

    def closure(backward: bool = True) -> torch.Tensor:
        if backward:
            x.grad = next(grads)
        return torch.tensor(1.0)

    for aggregate, expected in (("min", [1.0, -0.5, 0.5]), ("max", [4.0, -3.0, 3.0])):
        grads = iter([torch.tensor([1.0, -2.0, 3.0]), torch.tensor([-4.0, 0.5, -1.0]), torch.tensor([2.0, 3.0, -0.5])])
        gs = tz.m.GradientSampling(n=3, include_x0=False, aggregate=aggregate, seed=0)
        obj = Objective([x], closure=closure)
        gs.pre_step(obj)
        _, g = gs.closure(True, closure, [x], obj)
        torch.testing.assert_close(g[0], torch.tensor(expected))


# --------------------------------------------------------------------------- GradientSampling: deterministic
def _gs_trajectory(lib: Any, steps: int = 6, **kwargs: Any) -> list[torch.Tensor]:
    model, x, y = make_problem(1)
    opt = lib.Optimizer(model.parameters(), lib.m.GradientSampling([lib.m.Adam(), lib.m.LR(1e-2)], **kwargs))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = F.mse_loss(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(torch.cat([p.detach().ravel().clone() for p in model.parameters()]))
    return out


@pytest.mark.parametrize("kwargs", [dict(n=1), dict(n=1, sigma_strategy="value"), dict(n=4, sigma=1e-7),
                                    dict(n=3, sigma=1e-7, aggregate="max")],
                         ids=["n1", "n1_value_strategy", "sigma_tiny", "sigma_tiny_max"])
def test_deterministic_settings_match_torchzero_trajectory(kwargs: dict[str, Any], single_thread: None) -> None:
    for a, b in zip(_gs_trajectory(tz, **kwargs), _gs_trajectory(tzo, **kwargs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_modules_none_with_include_x0_uses_the_modified_gradient() -> None:
    # torchzero 0.4.4 recurses forever here (its x0 evaluation calls the modified closure)
    x = X0.clone().requires_grad_()
    opt = tz.Optimizer([x], tz.m.GradientSampling(n=1), tz.m.LR(0.1))
    opt.step(quartic_closure(x))
    torch.testing.assert_close(x.detach(), X0 - 0.1 * X0 ** 3)


@pytest.mark.parametrize("strategy,point,expected", [("value", "minimum", "sigma_nminus"),
                                                     ("value", "slope", "sigma_nplus"),
                                                     ("grad-norm", "minimum", "sigma_nminus"),
                                                     ("grad-norm", "slope", "sigma_nplus")])
def test_sigma_strategies_adapt_sigma(strategy: str, point: str, expected: str) -> None:
    # at the minimum of sum(x^2) no perturbation lowers the value or the gradient norm; on a slope
    # about half of 20 perturbations do (target 1: fails with probability 2^-20)
    x = (torch.zeros(4) if point == "minimum" else torch.full((4,), 3.0)).requires_grad_()

    def closure(backward: bool = True) -> torch.Tensor:
        loss = (x ** 2).sum()
        if backward:
            x.grad = None
            loss.backward()
        return loss

    gs = tz.m.GradientSampling([tz.m.LR(0.0)], sigma=0.5, n=21, sigma_strategy=strategy, sigma_target=1, seed=0)
    opt = tz.Optimizer([x], gs)
    opt.step(closure)
    factor = {"sigma_nplus": 4 / 3, "sigma_nminus": 2 / 3}[expected]
    assert gs.state[x]["sigma"] == pytest.approx(0.5 * factor)


def test_sigma_target_float_is_a_fraction_of_finite_evaluations() -> None:
    # on a slope about half of the perturbations are good: target 0.9 * 21 -> 18 fails, 0.2 -> 4 passes
    for target, factor in ((0.9, 2 / 3), (0.2, 4 / 3)):
        x = torch.full((4,), 3.0, requires_grad=True)
        gs = tz.m.GradientSampling([tz.m.LR(0.0)], sigma=0.5, n=21, sigma_strategy="value", sigma_target=target,
                                   seed=0)
        tz.Optimizer([x], gs).step(quartic_closure(x))
        assert gs.state[x]["sigma"] == pytest.approx(0.5 * factor)


def test_value_strategy_sigma_state_matches_torchzero() -> None:
    # n=1 with include_x0: no perturbed point is better, so sigma shrinks by sigma_nminus per closure call
    sigmas = []
    for lib in (tz, tzo):
        x = X0.clone().requires_grad_()
        gs = lib.m.GradientSampling([lib.m.LR(0.1)], n=1, sigma=0.8, sigma_strategy="value")
        opt = lib.Optimizer([x], gs)
        for _ in range(3):
            opt.step(quartic_closure(x))
        sigmas.append(gs.state[x]["sigma"])
    assert sigmas[0] == pytest.approx(sigmas[1]) == pytest.approx(0.8 * (2 / 3) ** 3)


def test_per_group_sigma_scales_each_parameters_perturbation() -> None:
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    points: list[tuple[torch.Tensor, torch.Tensor]] = []

    def closure(backward: bool = True) -> torch.Tensor:
        points.append((a.detach().clone(), b.detach().clone()))
        return (a ** 2).sum() + (b ** 2).sum()

    gs = tz.m.GradientSampling(n=4, include_x0=False, distribution="rademacher", sigma=0.5, seed=0)
    opt = tz.Optimizer([{"params": [a]}, {"params": [b], "sigma": 0.1}], gs, tz.m.LR(0.0))
    opt.step(closure)
    assert len(points) == 4
    for pa, pb in points:
        torch.testing.assert_close(pa.abs(), torch.full((3,), 0.5))
        torch.testing.assert_close(pb.abs(), torch.full((2,), 0.1))


def test_perturbations_are_kept_as_keys_not_tensors() -> None:
    x = torch.zeros(1000, requires_grad=True)
    gs = tz.m.GradientSampling(n=100, sigma=0.1)
    opt = tz.Optimizer([x], gs, tz.m.LR(0.1))
    opt.step(quartic_closure(x))
    stored = [v for v in gs.global_state.values() if isinstance(v, torch.Tensor)]
    stored += [v for st in gs.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    assert stored == []  # torchzero keeps 99 parameter-sized perturbations here
    assert isinstance(gs.global_state["key"], int)


# --------------------------------------------------------------------------- GradientSampling: randomness
def _recorded_points(**kwargs: Any) -> tuple[list[list[torch.Tensor]], Any]:
    """Points evaluated at each of 3 steps (closure called twice per step by a probing module)."""
    x = X0.clone().requires_grad_()
    steps: list[list[torch.Tensor]] = []

    def closure(backward: bool = True) -> torch.Tensor:
        steps[-1].append(x.detach().clone())
        return (x ** 2).sum()

    class CallTwice(tz.Module):
        def step(self, objective: Objective) -> Objective:
            assert objective.closure is not None
            objective.closure(False)
            objective.closure(False)
            objective.updates = [torch.zeros_like(p) for p in objective.params]
            return objective

    gs = tz.m.GradientSampling([CallTwice()], n=3, include_x0=False, **kwargs)
    opt = tz.Optimizer([x], gs)
    for _ in range(3):
        steps.append([])
        opt.step(closure)
    return steps, gs


def test_pre_generate_and_fixed_control_when_perturbations_change() -> None:
    torch.manual_seed(0)
    steps, _ = _recorded_points()  # pre_generate, fixed: the same 3 points in every call and step
    assert all(torch.equal(a, b) for s in steps for a, b in zip(s[:3], s[3:], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(steps[0], steps[2], strict=True))

    steps, _ = _recorded_points(fixed=False)  # same within a step, new each step
    assert all(torch.equal(a, b) for s in steps for a, b in zip(s[:3], s[3:], strict=True))
    assert not torch.equal(steps[0][0], steps[1][0])

    steps, _ = _recorded_points(pre_generate=False)  # new at every call
    assert not torch.equal(steps[0][0], steps[0][3])


def test_seed_reproduces_and_none_follows_torch_manual_seed() -> None:
    a, _ = _recorded_points(seed=5, fixed=False)
    b, _ = _recorded_points(seed=5, fixed=False)
    c, _ = _recorded_points(seed=6, fixed=False)
    assert all(torch.equal(p, q) for s, t in zip(a, b, strict=True) for p, q in zip(s, t, strict=True))
    assert not torch.equal(a[0][0], c[0][0])
    torch.manual_seed(11)
    d, _ = _recorded_points(fixed=False)
    torch.manual_seed(11)
    e, _ = _recorded_points(fixed=False)
    assert all(torch.equal(p, q) for s, t in zip(d, e, strict=True) for p, q in zip(s, t, strict=True))


# --------------------------------------------------------------------------- termination
class _TerminateAtSteps(tz.Module):
    """A minimal criterion: terminates at the given (0-based) steps."""

    def __init__(self, steps: tuple[int, ...]):
        super().__init__()
        self.steps = steps
        self.calls = 0

    def should_terminate(self, objective: Objective) -> bool:
        self.calls += 1
        return (self.calls - 1) in self.steps

    def apply(self, objective: Objective) -> Objective:
        return objective


def test_termination_decays_sigma_redraws_fixed_perturbations_and_resets_other_modules() -> None:
    x = X0.clone().requires_grad_()
    points: list[torch.Tensor] = []

    def closure(backward: bool = True) -> torch.Tensor:
        points.append(x.detach().clone())
        return quartic_closure(x)(backward)

    gs = tz.m.GradientSampling(n=2, include_x0=False, sigma=0.5, termination=_TerminateAtSteps((1,)), decay=0.5,
                               seed=0)
    momentum = tz.m.HeavyBall(0.9) if hasattr(tz.m, "HeavyBall") else tz.m.EMA(0.9)
    opt = tz.Optimizer([x], gs, momentum, tz.m.LR(0.0))
    opt.step(closure)
    first = points[-1] - X0
    assert momentum.state[x] or momentum.global_state  # momentum has state after a step
    opt.step(closure)  # terminates: sigma 0.25, new perturbations, momentum reset after the step
    second = points[-1] - X0
    assert gs.state[x]["sigma"] == pytest.approx(0.25)
    assert not torch.allclose(second, 0.5 * first)  # redrawn, not the old direction at half sigma
    assert not momentum.state and not any(not k.startswith("generator") for k in momentum.global_state)
    opt.step(closure)
    torch.testing.assert_close(points[-1] - X0, second)  # fixed again after the redraw


def test_termination_sequence_means_any() -> None:
    gs = tz.m.GradientSampling(n=1, termination=[_TerminateAtSteps(()), _TerminateAtSteps((0,))], decay=0.5)
    x = X0.clone().requires_grad_()
    tz.Optimizer([x], gs, tz.m.LR(0.0)).step(quartic_closure(x))
    assert gs.state[x]["sigma"] == pytest.approx(0.5)


@pytest.mark.skipif(not hasattr(tz.m, "TerminateAfterNSteps"), reason=ISSUE_8)
def test_termination_with_spec_criterion_module() -> None:
    gs = tz.m.GradientSampling(n=1, termination=tz.m.TerminateAfterNSteps(2), decay=0.5)
    x = X0.clone().requires_grad_()
    opt = tz.Optimizer([x], gs, tz.m.LR(0.0))
    for _ in range(4):
        opt.step(quartic_closure(x))
    assert gs.state[x]["sigma"] < 1.0


# --------------------------------------------------------------------------- Reformulation base
class _Squared(tz.core.Reformulation):
    """Optimizes f(x)^2 (its gradient is 2 f grad f)."""

    def __init__(self, modules: Any = None):
        super().__init__({}, modules)
        self.pre_steps = 0

    def pre_step(self, objective: Objective) -> None:
        self.pre_steps += 1

    def closure(self, backward: bool, closure: Callable, params: list[torch.Tensor],
                objective: Objective) -> tuple[Any, list[torch.Tensor] | None]:
        loss = objective.get_loss(backward=backward)
        grads = [2 * loss * g for g in objective.get_grads()] if backward else None
        return loss ** 2, grads


@pytest.mark.parametrize("form", ["modules", "none"])
def test_reformulation_update_is_the_modified_gradient(form: str) -> None:
    x = X0.clone().requires_grad_()
    ref = _Squared([tz.m.LR(0.01)]) if form == "modules" else _Squared()
    chain = [ref] if form == "modules" else [ref, tz.m.LR(0.01)]
    opt = tz.Optimizer([x], *chain)
    f0 = (X0 ** 4).sum() / 4
    ret = opt.step(quartic_closure(x))
    torch.testing.assert_close(x.detach(), X0 - 0.01 * 2 * f0 * X0 ** 3)
    assert ref.pre_steps == 1
    torch.testing.assert_close(ret, f0)  # the step returns the original closure's first value


def test_reformulation_evaluates_the_original_function_where_it_is_called() -> None:
    x = X0.clone().requires_grad_()
    seen: list[float] = []

    class Probe(tz.Module):
        def step(self, objective: Objective) -> Objective:
            assert objective.closure is not None
            seen.append(float(objective.closure(False)))
            with torch.no_grad():
                x.add_(1.0)
            seen.append(float(objective.closure(False)))
            with torch.no_grad():
                x.sub_(1.0)
            seen.append(float(objective.closure(False)))
            objective.updates = [torch.zeros_like(x)]
            return objective

    tz.Optimizer([x], _Squared([Probe()])).step(quartic_closure(x))
    f = lambda v: float(((v ** 4).sum() / 4) ** 2)  # noqa: E731
    assert seen == pytest.approx([f(X0), f(X0 + 1), f(X0)])


def test_reformulation_requires_closure_and_step_with_modules() -> None:
    x = X0.clone().requires_grad_()
    x.grad = torch.ones_like(x)
    with pytest.raises(RuntimeError, match="requires a closure"):
        tz.Optimizer([x], tz.m.GradientSampling(n=2), tz.m.LR(0.1)).step()
    with pytest.raises(RuntimeError, match="only supports `step`"):
        _Squared([tz.m.LR(1.0)]).update(Objective([x], closure=quartic_closure(x)))


# --------------------------------------------------------------------------- bad input
def test_unknown_aggregate_lists_the_accepted_ones() -> None:
    accepted = r"\('mean', 'max', 'min', 'min-norm', 'min-value'\)"
    with pytest.raises(ValueError, match=r"`aggregate` must be one of " + accepted):
        tz.m.GradientSampling(aggregate="median")  # type: ignore[arg-type]


def test_unknown_distribution_lists_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"`distribution` must be one of \('gaussian', 'normal', 'rademacher'"):
        tz.m.GradientSampling(distribution="cauchy")  # type: ignore[arg-type]


def test_unknown_sigma_strategy_lists_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"`sigma_strategy` must be one of \(None, 'grad-norm', 'value'\)"):
        tz.m.GradientSampling(sigma_strategy="loss")  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [0, -1])
def test_n_below_one_is_rejected(n: int) -> None:
    with pytest.raises(ValueError, match="`n` must be >= 1"):
        tz.m.GradientSampling(n=n)


@pytest.mark.parametrize("sigma", [0.0, -0.5, math.nan])
def test_non_positive_sigma_is_rejected(sigma: float) -> None:
    with pytest.raises(ValueError, match="`sigma` must be a positive finite number"):
        tz.m.GradientSampling(sigma=sigma)


def test_termination_of_wrong_type_is_rejected() -> None:
    with pytest.raises(TypeError, match="termination criterion module"):
        tz.m.GradientSampling(termination=tz.m.LR(1.0))


@pytest.mark.parametrize("pre_generate", [True, False])
def test_closure_raising_mid_sampling_restores_parameters(pre_generate: bool) -> None:
    x = X0.clone().requires_grad_()
    calls = 0

    def closure(backward: bool = True) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ArithmeticError("boom")
        return quartic_closure(x)(backward)

    opt = tz.Optimizer([x], tz.m.GradientSampling(n=5, pre_generate=pre_generate), tz.m.LR(0.1))
    with pytest.raises(ArithmeticError, match="boom"):
        opt.step(closure)
    torch.testing.assert_close(x.detach(), X0, rtol=0, atol=0)


def test_non_finite_values_are_skipped_and_all_non_finite_gives_inf() -> None:
    x = X0.clone().requires_grad_()
    gs = tz.m.GradientSampling(n=4, include_x0=True, seed=0)
    values = iter([1.0, math.nan, 3.0, math.inf])

    def closure(backward: bool = True) -> torch.Tensor:
        v = next(values)
        x.grad = torch.full_like(x, v)
        return torch.tensor(v)

    obj = Objective([x], closure=closure)
    gs.pre_step(obj)
    loss, grads = gs.closure(True, closure, [x], obj)
    assert loss.item() == pytest.approx(2.0)
    torch.testing.assert_close(grads[0], torch.full_like(x, 2.0))

    values = iter([math.nan] * 4)
    obj = Objective([x], closure=closure)
    loss, grads = gs.closure(True, closure, [x], obj)
    assert math.isinf(loss.item()) and torch.isinf(grads[0]).all()
