"""Core behaviours of ``tz.Optimizer``, ``Module`` and ``Objective``, checked against torchzero
0.4.4 where it defines the behaviour."""
from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchzero as tzo
from conftest import assert_traj_close, flat, make_closure, make_problem, train, trajectory

import tzfast as tz

pytestmark = pytest.mark.usefixtures("single_thread")

RTOL, ATOL = 1e-5, 1e-6


# ---------------------------------------------------------------------- names
def test_modular_is_optimizer_and_var_is_objective() -> None:
    assert tz.Modular is tz.Optimizer
    assert tz.Var is tz.Objective
    assert issubclass(tz.Optimizer, torch.optim.Optimizer)


def test_nested_lists_are_chains() -> None:
    flat_run = trajectory(tz, lambda m: [m.Adam(), m.Clone(), m.HeavyBall(0.5), m.LR(1e-2)])
    nested = trajectory(tz, lambda m: [[m.Adam(), [m.Clone()]], ([m.HeavyBall(0.5)], m.LR(1e-2))])
    one_list = trajectory(tz, lambda m: [[m.Adam(), m.Clone(), m.HeavyBall(0.5), m.LR(1e-2)]])
    assert torch.equal(nested, flat_run)
    assert torch.equal(one_list, flat_run)
    expected = trajectory(tzo, lambda m: [m.Adam(), m.Clone(), m.HeavyBall(0.5), m.LR(1e-2)])
    assert_traj_close(nested, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("make", [
    lambda m: [tz.Chain(m.Adam(), [m.Clone(), m.HeavyBall(0.5)]), m.LR(1e-2)],
    lambda m: [tz.Chain(m.Adam(), m.Clone(), m.HeavyBall(0.5)), m.Mul(2.0), m.LR(5e-3)],
    lambda m: [m.Adam(), tz.Chain(m.HeavyBall(0.5)), m.LR(1e-2)],
    lambda m: [tz.Chain(m.Adam(), m.Clone(), m.HeavyBall(0.5), m.LR(1e-2))],
], ids=["chain_then_lr", "chain_then_mul_lr", "single_module_chain", "whole_chain"])
def test_chain_module_equals_the_same_modules_inline(make: Callable[[Any], list]) -> None:
    """An explicit ``tz.Chain`` followed by more modules steps exactly like the flat chain."""
    flat_run = trajectory(tz, lambda m: [m.Adam(), m.Clone(), m.HeavyBall(0.5), m.LR(1e-2)])
    assert torch.equal(trajectory(tz, make), flat_run)


def test_nested_list_module_argument_is_a_chain() -> None:
    """A list passed where a module is accepted (an operand) is a Chain, as in torchzero."""
    make = lambda m: [m.Add([m.EMA(0.9), [m.Mul(2.0)]], alpha=0.5), m.LR(1e-2)]  # noqa: E731
    assert_traj_close(trajectory(tz, make), trajectory(tzo, make), rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------- step protocol
def _probe_classes(lib: Any) -> tuple[type, type]:
    class EvaluateTwice(lib.core.Module):
        """Evaluates the closure twice without backward, then lets the gradient be computed."""

        def __init__(self) -> None:
            super().__init__({})

        def apply(self, objective: Any) -> Any:
            objective.closure(False)
            objective.closure(False)
            return objective

    class Record(lib.core.Module):
        def __init__(self) -> None:
            super().__init__({})
            self.seen: list[dict[str, Any]] = []

        def apply(self, objective: Any) -> Any:
            self.seen.append(dict(loss=objective.loss, step=objective.current_step, model=objective.model,
                                  storage=dict(objective.storage)))
            return objective

    return EvaluateTwice, Record


@pytest.mark.parametrize("lib", [tz, tzo], ids=["tzfast", "torchzero"])
def test_step_returns_first_closure_evaluation_and_counts_evaluations(lib: Any) -> None:
    evaluate_twice, _ = _probe_classes(lib)
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = lib.Optimizer([p], evaluate_twice(), lib.m.LR(0.1))
    values: list[torch.Tensor] = []

    def closure(backward: bool = True) -> torch.Tensor:
        loss = (p**2).sum() + len(values)  # a different value at every call
        if backward:
            opt.zero_grad()
            loss.backward()
        values.append(loss.detach())
        return loss

    for i in range(3):
        ret = opt.step(closure)
        assert ret.item() == values[3 * i].item()
        assert ret.item() != values[3 * i + 2].item()
    assert opt.num_evaluations == 9
    assert opt.current_step == 3


def test_step_protocol_matches_torchzero() -> None:
    """Same returned losses, evaluation counts and step counts as torchzero with the same closure."""
    results = []
    for lib in (tz, tzo):
        evaluate_twice, _ = _probe_classes(lib)
        model, x, y = make_problem(0)
        opt = lib.Optimizer(model.parameters(), evaluate_twice(), lib.m.Adam(), lib.m.LR(1e-2))
        cl = make_closure(opt, model, x, y)
        losses = [opt.step(cl).item() for _ in range(5)]
        results.append((losses, opt.num_evaluations, opt.current_step))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=RTOL, atol=0.0)
    assert results[0][1:] == results[1][1:] == (15, 5)


@pytest.mark.parametrize("lib", [tz, tzo], ids=["tzfast", "torchzero"])
def test_step_with_loss_keyword_without_closure(lib: Any) -> None:
    _, record = _probe_classes(lib)
    model, x, y = make_problem(0)
    rec = record()
    opt = lib.Optimizer(model.parameters(), rec, lib.m.LR(0.1))
    cl = make_closure(opt, model, x, y)
    loss = cl()
    assert opt.step(loss=loss) is None  # no closure evaluation: nothing to return
    assert rec.seen[0]["loss"] is loss
    assert opt.num_evaluations == 0


@pytest.mark.parametrize("lib", [tz, tzo], ids=["tzfast", "torchzero"])
def test_current_step_and_step_keyword_arguments_reach_the_objective(lib: Any) -> None:
    _, record = _probe_classes(lib)
    model, x, y = make_problem(0)
    rec = record()
    opt = lib.Optimizer(model.parameters(), rec, lib.m.LR(0.1))
    cl = make_closure(opt, model, x, y)
    for i in range(4):
        assert opt.current_step == i
        opt.step(cl, full_closure="anything", i=i)
    assert opt.current_step == 4
    assert [s["step"] for s in rec.seen] == [0, 1, 2, 3]
    assert [s["storage"] for s in rec.seen] == [{"full_closure": "anything", "i": i} for i in range(4)]


def test_flat_modules_lists_every_module_depth_first_like_torchzero() -> None:
    def build(lib: Any) -> Any:
        m = lib.m
        p = [torch.zeros(3, requires_grad=True)]
        return lib.Optimizer(p, m.Adam(), m.DivModules([m.EMA(0.9), m.Debias(beta1=0.9)],
                                                      [m.SqrtEMASquared(0.999), m.Add(1e-8)]),
                             m.Add(m.Grad()), m.Mul([m.Abs(), m.Sqrt()]), m.LR(1e-2))

    ours, theirs = build(tz), build(tzo)
    names = [type(m).__name__ for m in ours.flat_modules]
    assert names == [type(m).__name__ for m in theirs.flat_modules]
    assert names[:4] == ["Adam", "DivModules", "Chain", "EMA"]
    assert [type(m).__name__ for m in ours.modules] == ["Adam", "DivModules", "Add", "Mul", "LR"]
    assert len(ours.flat_modules) == len(set(map(id, ours.flat_modules)))


def test_optimizer_defaults_collect_module_defaults() -> None:
    opt = tz.Optimizer([torch.zeros(2, requires_grad=True)], tz.m.Adam(beta1=0.5), tz.m.LR(0.02))
    assert opt.defaults["lr"] == 0.02 and opt.defaults["beta1"] == 0.5
    assert opt.param_groups[0]["lr"] == 0.02


def _flag_setter(lib: Any) -> type:
    class SetFlags(lib.core.Module):
        def __init__(self, terminate_at: int) -> None:
            super().__init__({"terminate_at": terminate_at})

        def apply(self, objective: Any) -> Any:
            objective.attrs["seen_step"] = objective.current_step
            if objective.current_step == self.defaults["terminate_at"]:
                objective.should_terminate = True
            return objective

    return SetFlags


@pytest.mark.parametrize("lib", [tz, tzo], ids=["tzfast", "torchzero"])
def test_attrs_and_should_terminate_set_by_a_module_reach_the_optimizer(lib: Any) -> None:
    model, x, y = make_problem(0)
    opt = lib.Optimizer(model.parameters(), _flag_setter(lib)(2), lib.m.LR(0.1))
    cl = make_closure(opt, model, x, y)
    flags = []
    for _ in range(4):
        opt.step(cl)
        flags.append((opt.attrs["seen_step"], opt.should_terminate))
    assert flags == [(0, False), (1, False), (2, True), (3, True)]


@pytest.mark.parametrize("lib", [tz, tzo], ids=["tzfast", "torchzero"])
def test_model_attribute_is_the_module_passed_as_params(lib: Any) -> None:
    _, record = _probe_classes(lib)
    model, x, y = make_problem(0)
    rec = record()
    opt = lib.Optimizer(model, rec, lib.m.Adam(), lib.m.LR(1e-2))
    assert opt.model is model
    opt.step(make_closure(opt, model, x, y))
    assert rec.seen[0]["model"] is model
    assert lib.Optimizer(model.parameters(), lib.m.LR(0.1)).model is None


def test_nn_module_as_params_gives_the_same_run_as_its_parameters() -> None:
    model, x, y = make_problem(0)
    a = train(tz.Optimizer(model, tz.m.Adam(), tz.m.LR(1e-2)), model, x, y, 10, True)
    b = trajectory(tz, lambda m: [m.Adam(), m.LR(1e-2)], steps=10)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------- param groups and settings
def _grouped(lib: Any, model: torch.nn.Module, modules: list) -> Any:
    groups = [
        {"params": [model.cube, model.fc1.weight], "lr": 0.05, "beta1": 0.5},
        {"params": [model.fc1.bias, model.fc2.weight, model.gain]},
        {"params": [model.fc2.bias, model.fc3.weight, model.fc3.bias, model.shift], "lr": 0.001, "eps": 1e-3},
    ]
    return lib.Optimizer(groups, *modules)


@pytest.mark.parametrize("chain", ["adam_lr", "adam_lr_mul", "heavyball_stepsize_lr"])
@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
def test_param_groups_with_per_group_settings_match_torchzero(chain: str, closure: bool) -> None:
    chains: dict[str, Callable[[Any], list]] = {
        "adam_lr": lambda m: [m.Adam(), m.LR(1e-2)],
        "adam_lr_mul": lambda m: [m.Adam(), m.LR(1e-2), m.Mul(0.5)],
        "heavyball_stepsize_lr": lambda m: [m.HeavyBall(0.9), m.StepSize(0.5), m.LR(1e-2)],
    }
    runs = []
    for lib in (tz, tzo):
        model, x, y = make_problem(0)
        opt = _grouped(lib, model, chains[chain](lib.m))
        runs.append(train(opt, model, x, y, 20, closure))
    assert_traj_close(runs[0], runs[1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("lib", [tz, tzo], ids=["tzfast", "torchzero"])
def test_set_param_groups_priority_module_over_group_over_default(lib: Any) -> None:
    model, x, y = make_problem(0)
    lr = lib.m.LR(0.01)
    lr.set_param_groups([{"params": [model.fc1.weight], "lr": 0.5}])
    groups = [{"params": [model.fc1.weight, model.fc1.bias], "lr": 0.1},
              {"params": [p for n, p in model.named_parameters() if not n.startswith("fc1.")]}]
    opt = lib.Optimizer(groups, lib.m.Sign(), lr)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step(make_closure(opt, model, x, y))
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert lr.settings[model.fc1.weight]["lr"] == 0.5
    assert lr.settings[model.fc1.bias]["lr"] == 0.1
    assert lr.settings[model.fc2.weight]["lr"] == 0.01
    for n, p in model.named_parameters():
        step = 0.5 if n == "fc1.weight" else 0.1 if n == "fc1.bias" else 0.01
        torch.testing.assert_close(p.detach(), before[n] - step * grads[n].sign(), rtol=0, atol=1e-7)


def test_scheduler_does_not_override_module_local_lr() -> None:
    model, x, y = make_problem(0)
    lr = tz.m.LR(0.01)
    lr.set_param_groups([{"params": [model.fc1.weight], "lr": 0.5}])
    opt = tz.Optimizer(model.parameters(), tz.m.Sign(), lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    opt.step(make_closure(opt, model, x, y))
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    assert lr.settings[model.fc1.weight]["lr"] == 0.5
    assert lr.settings[model.fc2.weight]["lr"] == pytest.approx(0.001)


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "step_lr": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5),
    "lambda_lr": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i)),
    "lambda_lr_per_group": lambda opt: torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda i: 0.9**i, lambda i: 1.0 + 0.1 * i, lambda i: 1.0]),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
def test_lr_scheduler_through_lr_module_matches_torchzero(name: str, closure: bool) -> None:
    runs, lrs = [], []
    for lib in (tz, tzo):
        model, x, y = make_problem(0)
        opt = _grouped(lib, model, [lib.m.Adam(), lib.m.LR(1e-2)])
        sched = SCHEDULERS[name](opt)
        seen: list[list[float]] = []

        def after(_: int, sched: Any = sched, opt: Any = opt, seen: list = seen) -> None:
            sched.step()
            seen.append([g["lr"] for g in opt.param_groups])

        runs.append(train(opt, model, x, y, 20, closure, after_step=after))
        lrs.append(seen)
    assert lrs[0] == lrs[1]
    assert_traj_close(runs[0], runs[1], rtol=RTOL, atol=ATOL)
    model, x, y = make_problem(0)
    unscheduled = train(_grouped(tz, model, [tz.m.Adam(), tz.m.LR(1e-2)]), model, x, y, 20, closure)
    assert not torch.allclose(unscheduled, runs[0]), "the scheduler had no effect: the test proves nothing"


@pytest.mark.parametrize("chain", ["adam", "heavyball_wd"])
@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
def test_add_param_group_mid_run_matches_torchzero_and_keeps_old_state(chain: str, closure: bool) -> None:
    chains: dict[str, Callable[[Any], list]] = {
        "adam": lambda m: [m.Adam(amsgrad=True), m.LR(1e-2)],
        "heavyball_wd": lambda m: [m.WeightDecay(0.1), m.HeavyBall(0.9), m.LR(1e-2)],
    }
    runs = []
    for lib in (tz, tzo):
        model, x, y = make_problem(0)
        first = [model.cube, model.fc1.weight, model.fc1.bias, model.gain]
        later = [p for p in model.parameters() if all(p is not q for q in first)]
        modules = chains[chain](lib.m)
        opt = lib.Optimizer(first, *modules)
        part1 = train(opt, model, x, y, 5, closure)
        state_before = {k: v.clone() for k, v in modules[0 if chain == "adam" else 1].state[model.cube].items()
                        if isinstance(v, torch.Tensor)}
        opt.add_param_group({"params": later, "lr": 3e-3})
        assert len(opt.param_groups) == 2
        state_after = modules[0 if chain == "adam" else 1].state[model.cube]
        for k, v in state_before.items():
            assert torch.equal(state_after[k], v), f"{k} was lost by add_param_group"
        part2 = train(opt, model, x, y, 10, closure)
        runs.append(torch.cat([part1, part2]))
    assert_traj_close(runs[0], runs[1], rtol=RTOL, atol=ATOL)
    n_later = sum(p.numel() for p in later)
    assert not torch.equal(runs[0][4, -n_later:], runs[0][-1, -n_later:]), "added parameters were not optimized"


# ---------------------------------------------------------------------- copy and pickle
@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("chain", ["adam_amsgrad", "nag_clip", "ema_debias_groups"])
def test_copied_optimizer_mid_run_continues_identically(how: str, chain: str, closure: bool) -> None:
    chains: dict[str, Callable[[Any], list]] = {
        "adam_amsgrad": lambda m: [m.Adam(amsgrad=True), m.LR(1e-2)],
        "nag_clip": lambda m: [m.NAG(0.9), m.ClipNorm(0.1), m.LR(1e-2)],
        "ema_debias_groups": lambda m: [m.EMA(0.9, debias=True), m.Debias2(0.99), m.LR(1e-2)],
    }
    model, x, y = make_problem(0)
    if chain == "ema_debias_groups":
        opt = _grouped(tz, model, chains[chain](tz.m))
    else:
        opt = tz.Optimizer(model.parameters(), *chains[chain](tz.m))
    train(opt, model, x, y, 5, closure)
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    assert all(p is not q for p, q in zip(model.parameters(), model2.parameters(), strict=True))
    assert {id(p) for p in model2.parameters()} == {id(p) for g in opt2.param_groups for p in g["params"]}

    frozen = flat(model.parameters())
    copied = train(opt2, model2, x, y, 10, closure)
    assert torch.equal(flat(model.parameters()), frozen), "stepping the copy moved the original parameters"
    original = train(opt, model, x, y, 10, closure)
    assert torch.equal(copied, original)


def test_copied_optimizer_keeps_module_local_settings_and_scheduler_writes() -> None:
    model, x, y = make_problem(0)
    lr = tz.m.LR(0.01)
    lr.set_param_groups([{"params": [model.fc1.weight], "lr": 0.2}])
    opt = tz.Optimizer(model.parameters(), tz.m.Adam(), lr)
    train(opt, model, x, y, 2, False)
    model2, opt2 = copy.deepcopy((model, opt))
    opt2.param_groups[0]["lr"] = 0.05  # as a scheduler would
    lr2 = opt2.flat_modules[1]
    assert lr2.settings[model2.fc1.weight]["lr"] == 0.2
    assert lr2.settings[model2.fc2.weight]["lr"] == 0.05
    assert lr.settings[model.fc2.weight]["lr"] == 0.01


# ---------------------------------------------------------------------- module state
STATE_KEYS: dict[str, tuple[Callable[[Any], Any], tuple[str, ...]]] = {
    "Adam": (lambda m: m.Adam(amsgrad=True), ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")),
    "EMA": (lambda m: m.EMA(0.8), ("exp_avg",)),
    "HeavyBall": (lambda m: m.HeavyBall(0.8), ("exp_avg",)),
    "NAG": (lambda m: m.NAG(0.8), ("velocity",)),
    "EMASquared": (lambda m: m.EMASquared(0.9, amsgrad=True), ("exp_avg_sq", "max_exp_avg_sq")),
    "SqrtEMASquared": (lambda m: m.SqrtEMASquared(0.9), ("exp_avg_sq",)),
}


@pytest.mark.parametrize("name", list(STATE_KEYS))
def test_module_state_has_torchzero_names_shapes_values_and_is_live(name: str) -> None:
    make, keys = STATE_KEYS[name]
    states = []
    for lib in (tz, tzo):
        model, x, y = make_problem(0)
        module = make(lib.m)
        opt = lib.Optimizer(model.parameters(), lib.m.Mul(0.1), module, lib.m.Sign(), lib.m.LR(1e-2))
        train(opt, model, x, y, 3, True)
        states.append((model, opt, module))
    (model, opt, module), (tmodel, _, tmodule) = states
    for (n, p), tp in zip(model.named_parameters(), tmodel.parameters(), strict=True):
        for k in keys:
            v = module.state[p][k]
            assert isinstance(v, torch.Tensor) and v.shape == p.shape and v.dtype == p.dtype, (n, k)
            torch.testing.assert_close(v, tmodule.state[tp][k], rtol=RTOL, atol=1e-7, msg=f"{n}[{k}]")
    # live: a reference taken now is what the next step updates, and what the user sees next
    refs = {k: module.state[model.fc1.weight][k] for k in keys}
    values = {k: v.clone() for k, v in refs.items()}
    train(opt, model, x, y, 1, True)
    for k in keys:
        assert refs[k] is module.state[model.fc1.weight][k] or torch.equal(refs[k], module.state[model.fc1.weight][k])
        assert not torch.equal(refs[k], values[k]), f"{k} reference was not updated by the step"


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
def test_writing_into_module_state_affects_the_next_step_like_torchzero(closure: bool) -> None:
    runs = []
    for lib in (tz, tzo):
        model, x, y = make_problem(0)
        adam = lib.m.Adam()
        opt = lib.Optimizer(model.parameters(), adam, lib.m.LR(1e-2))

        def reset_momentum(i: int, adam: Any = adam, model: Any = model) -> None:
            if i == 4:
                adam.state[model.fc1.weight]["exp_avg"].zero_()
                adam.state[model.cube]["exp_avg_sq"].mul_(4.0)

        runs.append(train(opt, model, x, y, 10, closure, after_step=reset_momentum))
    assert_traj_close(runs[0], runs[1], rtol=RTOL, atol=ATOL)
    model, x, y = make_problem(0)
    untouched = train(tz.Optimizer(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2)), model, x, y, 10, closure)
    assert not torch.allclose(untouched, runs[0])


# ---------------------------------------------------------------------- objective
def test_objective_old_and_new_names_are_aliases() -> None:
    class Doubler(tz.core.Module):
        def __init__(self) -> None:
            super().__init__({})

        def apply(self, var: Any) -> Any:
            grads = var.get_grad()
            assert var.grad is var.grads is grads
            var.update = [g * 2 for g in var.grad]
            assert var.updates is var.update
            assert var.get_update() is var.get_updates() is var.updates
            return var

    a = trajectory(tz, lambda m: [Doubler(), m.LR(1e-2)])
    b = trajectory(tz, lambda m: [m.Mul(2.0), m.LR(1e-2)])
    assert torch.equal(a, b)


# ---------------------------------------------------------------------- parameters
@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
def test_requires_grad_false_parameters_are_skipped(closure: bool) -> None:
    runs = []
    for lib in (tz, tzo):
        model, x, y = make_problem(0)
        model.fc2.weight.requires_grad_(False)
        frozen = model.fc2.weight.detach().clone()
        adam = lib.m.Adam()
        opt = lib.Optimizer(model.parameters(), adam, lib.m.LR(1e-2))
        runs.append(train(opt, model, x, y, 10, closure))
        assert torch.equal(model.fc2.weight, frozen)
        assert model.fc2.weight not in adam.state or not adam.state[model.fc2.weight]
    assert_traj_close(runs[0], runs[1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
def test_freezing_and_unfreezing_mid_run_matches_torchzero(closure: bool) -> None:
    runs = []
    for lib in (tz, tzo):
        model, x, y = make_problem(0)
        opt = lib.Optimizer(model.parameters(), lib.m.Adam(), lib.m.HeavyBall(0.5), lib.m.LR(1e-2))

        def toggle(i: int, model: Any = model) -> None:
            if i == 3:
                model.fc1.weight.requires_grad_(False)
                model.gain.requires_grad_(False)
            if i == 7:
                model.fc1.weight.requires_grad_(True)

        runs.append(train(opt, model, x, y, 12, closure, after_step=toggle))
    assert_traj_close(runs[0], runs[1], rtol=RTOL, atol=ATOL)


def _mixed_dtype_problem() -> tuple[list[torch.Tensor], Callable[[], torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, generator=g).requires_grad_()
    b = torch.randn(5, generator=g).double().requires_grad_()
    c = torch.tensor(0.7).requires_grad_()
    d = torch.randn(2, 2, generator=g).double().requires_grad_()
    params = [a, b, c, d]

    def loss_fn() -> torch.Tensor:
        s32 = torch.tanh(a).sum(0) * c
        s64 = torch.sin(b[:3] * 2) + d.sum()
        return ((s32.double() - s64) ** 2).sum() + (b**4).sum() * 0.1

    return params, loss_fn


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
@pytest.mark.parametrize("chain", ["adam", "nag_normalize_global", "ema_wd"])
def test_float32_and_float64_parameters_in_one_optimizer_match_torchzero(chain: str, closure: bool) -> None:
    chains: dict[str, Callable[[Any], list]] = {
        "adam": lambda m: [m.Adam(amsgrad=True), m.LR(1e-2)],
        "nag_normalize_global": lambda m: [m.NAG(0.9), m.Normalize(0.1, dim="global"), m.LR(1e-1)],
        "ema_wd": lambda m: [m.EMA(0.9, debias=True), m.WeightDecay(0.1), m.LR(1e-2)],
    }
    runs = []
    for lib in (tz, tzo):
        params, loss_fn = _mixed_dtype_problem()
        opt = lib.Optimizer(params, *chains[chain](lib.m))

        def cl(backward: bool = True, opt: Any = opt, loss_fn: Any = loss_fn) -> torch.Tensor:
            loss = loss_fn()
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss

        out = []
        for _ in range(15):
            if closure:
                opt.step(cl)
            else:
                cl()
                opt.step()
            assert [p.dtype for p in params] == [torch.float32, torch.float64, torch.float32, torch.float64]
            out.append(flat(p.double() for p in params))
        runs.append(torch.stack(out))
    assert_traj_close(runs[0], runs[1], rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------- user-defined modules
def _user_modules(lib: Any) -> tuple[type, type, type]:
    """Written as torchzero's docs show: a TensorTransform with single-tensor hooks, a Module
    with ``apply``, a TensorTransform that reads the gradient."""

    class Momentum(lib.core.TensorTransform):
        def __init__(self, momentum: float = 0.9) -> None:
            super().__init__(dict(momentum=momentum))

        def single_tensor_update(self, tensor, param, grad, loss, state, setting):  # type: ignore[no-untyped-def]
            if "buf" not in state:
                state["buf"] = torch.zeros_like(tensor)
            state["buf"].mul_(setting["momentum"]).add_(tensor)

        def single_tensor_apply(self, tensor, param, grad, loss, state, setting):  # type: ignore[no-untyped-def]
            return state["buf"].clone()

    class ScaleBySetting(lib.core.Module):
        def __init__(self, scale: float = 1.0) -> None:
            super().__init__(dict(scale=scale))

        def apply(self, objective):  # type: ignore[no-untyped-def]
            scales = self.get_settings(objective.params, "scale")
            objective.updates = [u * s for u, s in zip(objective.get_updates(), scales, strict=True)]
            return objective

    class CautiousMask(lib.core.TensorTransform):
        def __init__(self) -> None:
            super().__init__({}, uses_grad=True)

        def single_tensor_apply(self, tensor, param, grad, loss, state, setting):  # type: ignore[no-untyped-def]
            return tensor * ((tensor * grad) > 0)

    return Momentum, ScaleBySetting, CautiousMask


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
@pytest.mark.parametrize("order", ["custom_first", "custom_between", "custom_last"])
def test_user_subclasses_work_in_chains_with_native_modules(order: str, closure: bool) -> None:
    runs = []
    for lib in (tz, tzo):
        momentum, scale, cautious = _user_modules(lib)
        m = lib.m
        chains = {
            "custom_first": [momentum(0.5), scale(2.0), m.Adam(), m.LR(1e-2)],
            "custom_between": [m.Adam(), momentum(0.5), cautious(), m.HeavyBall(0.5), scale(0.5), m.LR(1e-2)],
            "custom_last": [m.WeightDecay(0.1), m.Adam(), m.LR(1e-2), cautious(), scale(0.5)],
        }
        model, x, y = make_problem(0)
        opt = lib.Optimizer(model.parameters(), *chains[order])
        runs.append(train(opt, model, x, y, 15, closure))
    assert_traj_close(runs[0], runs[1], rtol=RTOL, atol=ATOL)


def test_user_tensor_transform_sees_per_group_settings() -> None:
    momentum, scale, _ = _user_modules(tz)
    model, x, y = make_problem(0)
    mom = momentum(0.9)
    groups = [{"params": [model.cube], "momentum": 0.1, "scale": 3.0},
              {"params": [p for n, p in model.named_parameters() if n != "cube"]}]
    opt = tz.Optimizer(groups, mom, scale(1.0), tz.m.LR(1e-2))
    train(opt, model, x, y, 1, True)
    assert mom.settings[model.cube]["momentum"] == 0.1
    assert mom.settings[model.fc1.weight]["momentum"] == 0.9
    assert opt.flat_modules[1].settings[model.cube]["scale"] == 3.0


# ---------------------------------------------------------------------- settings changing mid-run
@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
def test_per_parameter_settings_of_every_module_match_torchzero(closure: bool) -> None:
    """Group keys reach every module that has them; a module-local override splits Adam's runs
    differently from LR's (so the fused Adam+LR step must resolve settings per run)."""
    runs = []
    for lib in (tz, tzo):
        m = lib.m
        model, x, y = make_problem(0)
        adam = m.Adam()
        adam.set_param_groups([{"params": [model.fc2.weight, model.shift], "beta2": 0.9, "eps": 1e-4}])
        groups = [
            {"params": [model.cube, model.fc1.weight], "weight_decay": 0.3, "momentum": 0.5, "max_norm": 0.02,
             "beta1": 0.6},
            {"params": [model.fc1.bias, model.fc2.weight, model.fc2.bias], "lr": 3e-3, "dampening": 0.2},
            {"params": [model.fc3.weight, model.fc3.bias, model.gain, model.shift], "max_norm": 1e-3,
             "lr": 2e-2},
        ]
        opt = lib.Optimizer(groups, m.WeightDecay(0.1), m.HeavyBall(0.9), m.ClipNorm(0.1), adam, m.LR(1e-2))
        runs.append(train(opt, model, x, y, 20, closure))
    assert_traj_close(runs[0], runs[1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
def test_changing_settings_mid_run_matches_torchzero(closure: bool) -> None:
    """Writes to module defaults, to module-local settings and to param groups take effect at once."""
    runs = []
    for lib in (tz, tzo):
        model, x, y = make_problem(0)
        adam, lr = lib.m.Adam(), lib.m.LR(1e-2)
        opt = lib.Optimizer(model.parameters(), adam, lib.m.HeavyBall(0.5), lr)

        def change(i: int, adam: Any = adam, lr: Any = lr, opt: Any = opt, model: Any = model) -> None:
            if i == 2:
                adam.defaults["beta1"] = 0.5
            if i == 4:
                lr.set_param_groups([{"params": [model.fc1.weight], "lr": 0.05}])
            if i == 6:
                opt.param_groups[0]["lr"] = 3e-3
            if i == 8:
                adam.defaults["amsgrad"] = True

        runs.append(train(opt, model, x, y, 12, closure, after_step=change))
    assert_traj_close(runs[0], runs[1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
def test_module_reset_mid_run_matches_torchzero(closure: bool) -> None:
    runs = []
    for lib in (tz, tzo):
        model, x, y = make_problem(0)
        # eps=1e-3: Adam's first step after a reset is g/(|g| + eps/sqrt(1 - beta2)), of order 1
        # even for a tiny g when eps is 1e-8; this problem has a gradient entry of ~3e-7 that
        # float32 cancellation knows only to ~1%, which would move the step by ~1% of lr. With
        # a larger eps such entries give steps proportional to g and the comparison is about
        # the reset itself
        modules = [lib.m.Adam(0.9, 0.99, eps=1e-3, amsgrad=True), lib.m.NAG(0.9), lib.m.LR(1e-2)]
        opt = lib.Optimizer(model.parameters(), *modules)

        def reset(i: int, modules: list = modules) -> None:
            if i == 4:
                modules[0].reset()
            if i == 7:
                modules[1].reset()

        runs.append(train(opt, model, x, y, 12, closure, after_step=reset))
    assert_traj_close(runs[0], runs[1], rtol=RTOL, atol=ATOL)


def _update_apply_wrapper(lib: Any) -> type:
    class UpdateThenApply(lib.core.Module):
        """Calls the child's ``update`` and ``apply`` separately, as Online and trust regions do."""

        def __init__(self, module: Any) -> None:
            super().__init__({})
            self.set_child("module", module)

        def apply(self, objective: Any) -> Any:
            child = self.children["module"]
            child.update(objective)
            return child.apply(objective)

    return UpdateThenApply


@pytest.mark.parametrize("name", ["adam", "adam_amsgrad", "ema_debias", "nag", "sqrt_emasq", "debias", "clipnorm"])
def test_separate_update_and_apply_equal_step_and_torchzero(name: str) -> None:
    makes: dict[str, Callable[[Any], Any]] = {
        "adam": lambda m: m.Adam(),
        "adam_amsgrad": lambda m: m.Adam(0.8, 0.9, amsgrad=True),
        "ema_debias": lambda m: m.EMA(0.9, debias=True),
        "nag": lambda m: m.NAG(0.9),
        "sqrt_emasq": lambda m: m.SqrtEMASquared(0.9, debiased=True),
        "debias": lambda m: m.Debias(beta1=0.9, beta2=0.99),
        "clipnorm": lambda m: m.ClipNorm(0.05),
    }
    make = makes[name]
    stepped = trajectory(tz, lambda m: [m.Mul(0.1), make(m), m.Sign(), m.LR(1e-2)])
    wrapped = trajectory(tz, lambda m: [m.Mul(0.1), _update_apply_wrapper(tz)(make(m)), m.Sign(), m.LR(1e-2)])
    reference = trajectory(tzo, lambda m: [m.Mul(0.1), _update_apply_wrapper(tzo)(make(m)), m.Sign(), m.LR(1e-2)])
    assert torch.equal(wrapped, stepped)
    assert_traj_close(wrapped, reference, rtol=RTOL, atol=ATOL)


def _control_flow_modules(lib: Any) -> tuple[type, type]:
    class StopAtOddSteps(lib.core.Module):
        def __init__(self) -> None:
            super().__init__({})

        def apply(self, objective: Any) -> Any:
            if objective.current_step % 2 == 1:
                objective.stop = True
            return objective

    class Hooked(lib.core.Module):
        def __init__(self) -> None:
            super().__init__({})
            self.calls: list[tuple[int, int, float]] = []

        def apply(self, objective: Any) -> Any:
            def hook(obj: Any, modules: Any) -> None:
                self.calls.append((obj.current_step, len(modules), float(obj.params[0].detach().sum())))

            objective.post_step_hooks.append(hook)
            return objective

    return StopAtOddSteps, Hooked


def test_stop_and_post_step_hooks_behave_like_torchzero() -> None:
    results = []
    for lib in (tz, tzo):
        stop, hooked = _control_flow_modules(lib)
        model, x, y = make_problem(0)
        h = hooked()
        opt = lib.Optimizer(model.parameters(), h, lib.m.Adam(), stop(), lib.m.LR(1e-2))
        traj = train(opt, model, x, y, 6, True)
        results.append((traj, h.calls))
    assert_traj_close(results[0][0], results[1][0], rtol=RTOL, atol=ATOL)
    assert [c[:2] for c in results[0][1]] == [c[:2] for c in results[1][1]] == [(i, 4) for i in range(6)]
    # hooks run after the parameters were updated
    torch.testing.assert_close(torch.tensor([c[2] for c in results[0][1]]),
                               torch.tensor([c[2] for c in results[1][1]]), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
def test_mixed_dtype_param_groups_match_torchzero(closure: bool) -> None:
    """Groups that each hold float32 and float64 parameters: settings resolve per bucket segment."""
    runs = []
    for lib in (tz, tzo):
        params, loss_fn = _mixed_dtype_problem()
        a, b, c, d = params
        groups = [{"params": [a, b], "lr": 0.03, "beta1": 0.5}, {"params": [c, d], "eps": 1e-3}]
        opt = lib.Optimizer(groups, lib.m.Adam(), lib.m.LR(1e-2))

        def cl(backward: bool = True, opt: Any = opt, loss_fn: Any = loss_fn) -> torch.Tensor:
            loss = loss_fn()
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss

        out = []
        for _ in range(15):
            if closure:
                opt.step(cl)
            else:
                cl()
                opt.step()
            out.append(flat(p.double() for p in params))
        runs.append(torch.stack(out))
    assert_traj_close(runs[0], runs[1], rtol=RTOL, atol=ATOL)


def _update_logger(lib: Any) -> type:
    class LogAppliedUpdate(lib.core.Module):
        """A post-step hook that records the update the step applied (``objective.updates``)."""

        def __init__(self) -> None:
            super().__init__({})
            self.seen: list[torch.Tensor | None] = []

        def apply(self, objective: Any) -> Any:
            def hook(obj: Any, modules: Any) -> None:
                self.seen.append(None if obj.updates is None else flat(obj.updates))

            objective.post_step_hooks.append(hook)
            return objective

    return LogAppliedUpdate


@pytest.mark.parametrize("chain", ["adam_lr", "ema_lr_mul", "adam_lr_clone"])
def test_post_step_hook_sees_the_update_that_was_applied(chain: str) -> None:
    """As in torchzero, the objective handed to hooks holds the update subtracted from the
    parameters, also when the last modules ran as one fused kernel."""
    chains: dict[str, Callable[[Any], list]] = {
        "adam_lr": lambda m: [m.Adam(), m.LR(1e-2)],
        "ema_lr_mul": lambda m: [m.EMA(0.9), m.LR(1e-2), m.Mul(0.5)],
        "adam_lr_clone": lambda m: [m.Adam(), m.LR(1e-2), m.Clone()],
    }
    model, x, y = make_problem(0)
    logger = _update_logger(tz)()
    opt = tz.Optimizer(model.parameters(), logger, *chains[chain](tz.m))
    for _ in range(3):
        before = flat(model.parameters())
        train(opt, model, x, y, 1, True)
        seen = logger.seen[-1]
        assert seen is not None, "objective.updates is None in the post-step hook"
        # before - after rounds to the parameters' ulp (|p| < 4 here): atol is a few of those
        torch.testing.assert_close(seen, before - flat(model.parameters()), rtol=1e-4, atol=5e-7)


# ---------------------------------------------------------------------- step hooks and profiler
def test_step_hooks_and_profiler_range_behave_as_in_torch_optim() -> None:
    """tzfast's step skips torch's hook wrapper when nothing is registered, so check the wrapper's
    behaviour is still there when something is: instance hooks, global hooks, the profiler range."""
    x = torch.zeros(3, requires_grad=True)
    x.grad = torch.ones(3)
    opt = tz.Optimizer([x], tz.m.LR(0.1))
    seen: list[str] = []
    h1 = opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    h2 = opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    g1 = register_optimizer_step_pre_hook(lambda o, a, k: seen.append("global-pre"))
    try:
        opt.step()
    finally:
        g1.remove()
    assert seen == ["global-pre", "pre", "post"]
    h1.remove()
    h2.remove()
    seen.clear()
    opt.step()
    assert seen == []
    assert torch.equal(x.detach(), torch.full((3,), -0.2))
    with torch.profiler.profile() as prof:
        opt.step()
    assert any(e.name.startswith("Optimizer.step#") for e in prof.events())
    assert torch.is_grad_enabled()


def test_inner_step_tensors_without_params_uses_stand_ins_of_each_shape() -> None:
    """A child stepped on bare tensors (no parameters) keeps its state per tensor shape."""
    from tzfast.core.module import Module

    class Parent(Module):
        def __init__(self) -> None:
            super().__init__({})
            self.set_child("inner", tz.m.HeavyBall(0.5))

    parent = Parent()
    ts = [torch.ones(2, 3), torch.full((4,), 2.0)]
    first = parent.inner_step_tensors("inner", ts, clone=True)
    second = parent.inner_step_tensors("inner", ts, clone=True)
    assert [t.shape for t in first] == [(2, 3), (4,)]
    # heavy-ball momentum: the second output is g + 0.5 * first
    for a, b, t in zip(first, second, ts, strict=True):
        torch.testing.assert_close(b, t + 0.5 * a)
