"""State: a ``state_dict`` round trip in the middle of a run reproduces the uninterrupted run.

The state is saved with ``torch.save`` to a BytesIO, loaded with ``torch.load`` into a freshly
built optimizer over fresh copies of the parameters, and the run goes on; every later step must
be bitwise equal to the run that was never interrupted.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import flat, make_closure, make_problem, train

import tzfast as tz

pytestmark = pytest.mark.usefixtures("single_thread")

CHAINS: dict[str, Callable[[Any], list]] = {
    "adam_amsgrad": lambda m: [m.Adam(amsgrad=True), m.LR(1e-2)],
    "adam_pow3": lambda m: [m.Adam(0.8, 0.95, pow=3, alpha=0.5), m.LR(1e-2)],
    "heavyball": lambda m: [m.HeavyBall(0.9), m.LR(1e-2)],
    "nag": lambda m: [m.NAG(0.9, dampening=0.1), m.LR(1e-2)],
    "nag_lerp": lambda m: [m.NAG(0.9, lerp=True), m.LR(1e-2)],
    "ema_debias": lambda m: [m.EMA(0.9, debias=True, ema_init="update"), m.LR(1e-2)],
    "sqrt_emasq": lambda m: [m.DivModules(m.Identity(), [m.SqrtEMASquared(0.99, amsgrad=True, debiased=True),
                                                         m.Add(1e-3)]), m.LR(1e-2)],
    "emasq_debias2": lambda m: [m.DivModules(m.Identity(), [m.EMASquared(0.99), m.Sqrt(), m.Debias2(0.99),
                                                            m.Add(1e-3)]), m.LR(1e-2)],
    "debias": lambda m: [m.EMA(0.9), m.Debias(beta1=0.9, beta2=0.99), m.LR(1e-2)],
    "adam_from_parts": lambda m: [m.DivModules([m.EMA(0.9), m.Debias(beta1=0.9)],
                                               [m.SqrtEMASquared(0.999, debiased=True), m.Add(1e-8)]), m.LR(1e-2)],
    "wd_adam_clipnorm": lambda m: [m.WeightDecay(0.1), m.Adam(), m.ClipNorm(0.1, dim="global"), m.LR(1e-2)],
    "target_grad": lambda m: [m.Mul(2.0), m.EMA(0.9, target="grad"), m.Add(m.Grad()), m.LR(1e-2)],
    "adam_not_fused": lambda m: [m.Adam(), m.LR(1e-2), m.Clone()],
}


def _save_load(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf)


def _fresh_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A newly built model holding copies of ``model``'s current parameter values."""
    fresh, _, _ = make_problem(99)
    with torch.no_grad():
        for p, q in zip(fresh.parameters(), model.parameters(), strict=True):
            p.copy_(q)
    return fresh


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
@pytest.mark.parametrize("name", list(CHAINS))
def test_state_dict_round_trip_mid_run_reproduces_uninterrupted_run(name: str, closure: bool) -> None:
    make = CHAINS[name]
    model, x, y = make_problem(0)
    opt = tz.Optimizer(model.parameters(), *make(tz.m))
    uninterrupted = train(opt, model, x, y, 20, closure)

    model, x, y = make_problem(0)
    opt = tz.Optimizer(model.parameters(), *make(tz.m))
    first = train(opt, model, x, y, 10, closure)
    sd = _save_load(opt.state_dict())

    model2 = _fresh_copy(model)
    opt2 = tz.Optimizer(model2.parameters(), *make(tz.m))
    opt2.load_state_dict(sd)
    second = train(opt2, model2, x, y, 10, closure)
    assert torch.equal(torch.cat([first, second]), uninterrupted)


def test_load_state_dict_into_same_optimizer_rewinds_the_run() -> None:
    """Loading an earlier state (and parameters) into the live optimizer replays the same steps."""
    model, x, y = make_problem(0)
    opt = tz.Optimizer(model.parameters(), tz.m.Adam(amsgrad=True), tz.m.HeavyBall(0.5), tz.m.LR(1e-2))
    train(opt, model, x, y, 5, True)
    sd = _save_load(opt.state_dict())
    params_at_5 = [p.detach().clone() for p in model.parameters()]
    once = train(opt, model, x, y, 5, True)
    opt.load_state_dict(sd)
    with torch.no_grad():
        for p, q in zip(model.parameters(), params_at_5, strict=True):
            p.copy_(q)
    again = train(opt, model, x, y, 5, True)
    assert torch.equal(again, once)


def test_state_dict_restores_param_group_settings_changed_mid_run() -> None:
    """As in torch.optim, a group's hyper-parameters (here an lr a scheduler lowered) are restored."""
    def build(model: torch.nn.Module) -> tz.Optimizer:
        groups = [{"params": [model.cube, model.gain], "lr": 0.05},
                  {"params": [p for n, p in model.named_parameters() if n not in ("cube", "gain")]}]
        return tz.Optimizer(groups, tz.m.Adam(), tz.m.LR(1e-2))

    model, x, y = make_problem(0)
    opt = build(model)

    def lower_lr(i: int) -> None:
        if i == 4:
            opt.param_groups[0]["lr"] = 0.001
            opt.param_groups[1]["lr"] = 0.002

    uninterrupted = train(opt, model, x, y, 12, True, after_step=lower_lr)

    model, x, y = make_problem(0)
    opt = build(model)
    first = train(opt, model, x, y, 6, True, after_step=lower_lr)
    sd = _save_load(opt.state_dict())
    model2 = _fresh_copy(model)
    opt2 = build(model2)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.001 and opt2.param_groups[1]["lr"] == 0.002
    second = train(opt2, model2, x, y, 6, True)
    assert torch.equal(torch.cat([first, second]), uninterrupted)


def test_state_dict_restores_module_local_settings() -> None:
    """Settings given by ``module.set_param_groups`` travel in the state dict."""
    def build(model: torch.nn.Module, local: bool) -> tz.Optimizer:
        adam = tz.m.Adam()
        if local:
            adam.set_param_groups([{"params": [model.fc1.weight], "beta1": 0.5, "eps": 1e-3}])
        return tz.Optimizer(model.parameters(), adam, tz.m.LR(1e-2))

    model, x, y = make_problem(0)
    uninterrupted = train(build(model, True), model, x, y, 10, True)

    model, x, y = make_problem(0)
    opt = build(model, True)
    first = train(opt, model, x, y, 5, True)
    sd = _save_load(opt.state_dict())
    model2 = _fresh_copy(model)
    opt2 = build(model2, False)
    opt2.load_state_dict(sd)
    assert opt2.flat_modules[0].settings[model2.fc1.weight]["beta1"] == 0.5
    assert opt2.flat_modules[0].settings[model2.fc2.weight]["beta1"] == 0.9
    second = train(opt2, model2, x, y, 5, True)
    assert torch.equal(torch.cat([first, second]), uninterrupted)


def test_loaded_state_is_visible_and_live_under_module_state() -> None:
    """After loading, ``module.state[p]`` holds the saved values and the next step updates them."""
    model, x, y = make_problem(0)
    opt = tz.Optimizer(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    train(opt, model, x, y, 3, True)
    sd = _save_load(opt.state_dict())
    saved = opt.flat_modules[0].state[model.fc1.weight]["exp_avg"].clone()

    model2 = _fresh_copy(model)
    opt2 = tz.Optimizer(model2.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    opt2.load_state_dict(sd)
    st = opt2.flat_modules[0].state[model2.fc1.weight]
    assert torch.equal(st["exp_avg"], saved)
    train(opt2, model2, x, y, 1, True)
    live = opt2.flat_modules[0].state[model2.fc1.weight]["exp_avg"]
    assert live.shape == model2.fc1.weight.shape
    assert not torch.equal(live, saved)
    # the value the next step uses is the one the user sees
    train(opt, model, x, y, 1, True)
    assert torch.equal(live, opt.flat_modules[0].state[model.fc1.weight]["exp_avg"])


def test_state_dict_is_portable_and_references_parameters_by_index() -> None:
    """No parameter tensor is stored: loading works in a fresh process over new tensors."""
    model, x, y = make_problem(0)
    opt = tz.Optimizer(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    train(opt, model, x, y, 2, True)
    sd = opt.state_dict()
    param_ids = {id(p) for p in model.parameters()}

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            assert id(obj) not in param_ids
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(sd)
    assert [g["params"] for g in sd["param_groups"]] == [list(range(len(list(model.parameters()))))]


def test_load_state_dict_with_other_modules_raises() -> None:
    model, x, y = make_problem(0)
    opt = tz.Optimizer(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    train(opt, model, x, y, 1, True)
    sd = opt.state_dict()
    other = tz.Optimizer(model.parameters(), tz.m.HeavyBall(), tz.m.LR(1e-2))
    with pytest.raises(ValueError, match="module mismatch"):
        other.load_state_dict(sd)
    fewer = tz.Optimizer(list(model.parameters())[:3], tz.m.Adam(), tz.m.LR(1e-2))
    with pytest.raises(ValueError, match="param groups do not match"):
        fewer.load_state_dict(sd)


def test_state_dict_round_trip_with_closure_free_loss_argument() -> None:
    """``step(loss=...)`` runs survive a round trip as well (the loss is not state)."""
    model, x, y = make_problem(0)
    opt = tz.Optimizer(model.parameters(), tz.m.NAG(0.9), tz.m.LR(1e-2))
    cl = make_closure(opt, model, x, y)
    ref = []
    for _ in range(6):
        loss = cl()
        opt.step(loss=loss)
        ref.append(flat(model.parameters()))

    model, x, y = make_problem(0)
    opt = tz.Optimizer(model.parameters(), tz.m.NAG(0.9), tz.m.LR(1e-2))
    cl = make_closure(opt, model, x, y)
    out = []
    for _ in range(3):
        opt.step(loss=cl())
        out.append(flat(model.parameters()))
    sd = _save_load(opt.state_dict())
    model2 = _fresh_copy(model)
    opt2 = tz.Optimizer(model2.parameters(), tz.m.NAG(0.9), tz.m.LR(1e-2))
    opt2.load_state_dict(sd)
    cl2 = make_closure(opt2, model2, x, y)
    for _ in range(3):
        opt2.step(loss=cl2())
        out.append(flat(model2.parameters()))
    assert torch.equal(torch.stack(out), torch.stack(ref))


def test_round_trip_with_lr_scheduler_checkpoint_reproduces_run() -> None:
    """The usual checkpoint: optimizer and scheduler state saved together mid-run."""
    def build(model: torch.nn.Module) -> tuple[tz.Optimizer, Any]:
        opt = tz.Optimizer(model.parameters(), tz.m.Adam(amsgrad=True), tz.m.LR(2e-2))
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)

    model, x, y = make_problem(0)
    opt, sched = build(model)
    uninterrupted = train(opt, model, x, y, 14, True, after_step=lambda i: sched.step())

    model, x, y = make_problem(0)
    opt, sched = build(model)
    first = train(opt, model, x, y, 7, True, after_step=lambda i: sched.step())
    ckpt = _save_load({"opt": opt.state_dict(), "sched": sched.state_dict()})
    model2 = _fresh_copy(model)
    opt2, sched2 = build(model2)
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] != 2e-2
    second = train(opt2, model2, x, y, 7, True, after_step=lambda i: sched2.step())
    assert torch.equal(torch.cat([first, second]), uninterrupted)


def test_round_trip_after_add_param_group_reproduces_run() -> None:
    def first_params(model: torch.nn.Module) -> list[torch.Tensor]:
        return [model.cube, model.fc1.weight, model.fc1.bias]

    def rest(model: torch.nn.Module) -> list[torch.Tensor]:
        return [p for n, p in model.named_parameters() if n not in ("cube", "fc1.weight", "fc1.bias")]

    def run(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, split_at: int | None) -> torch.Tensor:
        opt = tz.Optimizer(first_params(model), tz.m.HeavyBall(0.9), tz.m.Adam(), tz.m.LR(1e-2))
        a = train(opt, model, x, y, 3, True)
        opt.add_param_group({"params": rest(model), "lr": 5e-3})
        if split_at is None:
            return torch.cat([a, train(opt, model, x, y, 8, True)])
        b = train(opt, model, x, y, split_at, True)
        sd = _save_load(opt.state_dict())
        model2 = _fresh_copy(model)
        opt2 = tz.Optimizer([{"params": first_params(model2)}, {"params": rest(model2), "lr": 5e-3}],
                            tz.m.HeavyBall(0.9), tz.m.Adam(), tz.m.LR(1e-2))
        opt2.load_state_dict(sd)
        return torch.cat([a, b, train(opt2, model2, x, y, 8 - split_at, True)])

    model, x, y = make_problem(0)
    uninterrupted = run(model, x, y, None)
    model, x, y = make_problem(0)
    assert torch.equal(run(model, x, y, 3), uninterrupted)


def test_round_trip_of_mixed_float32_float64_state_reproduces_run() -> None:
    def build_model() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
        model, x, y = make_problem(0)
        model.fc2.double()
        model.fc3.double()
        return model, x, y

    def loss_train(opt: tz.Optimizer, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   steps: int) -> torch.Tensor:
        def cl(backward: bool = True) -> torch.Tensor:
            h = torch.tanh(model.fc1(x)).double()
            out = model.fc3(torch.tanh(model.fc2(h))) * model.gain + model.shift
            loss = ((out - y.double()) ** 2).mean() + (model.cube**2).sum()
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss

        out = []
        for _ in range(steps):
            opt.step(cl)
            out.append(flat(p.double() for p in model.parameters()))
        return torch.stack(out)

    def build(model: torch.nn.Module) -> tz.Optimizer:
        return tz.Optimizer(model.parameters(), tz.m.Adam(amsgrad=True), tz.m.NAG(0.5), tz.m.LR(1e-2))

    model, x, y = build_model()
    uninterrupted = loss_train(build(model), model, x, y, 10)
    model, x, y = build_model()
    opt = build(model)
    first = loss_train(opt, model, x, y, 5)
    sd = _save_load(opt.state_dict())
    model2, _, _ = build_model()
    with torch.no_grad():
        for p, q in zip(model2.parameters(), model.parameters(), strict=True):
            p.copy_(q)
    opt2 = build(model2)
    opt2.load_state_dict(sd)
    adam2 = opt2.flat_modules[0]
    assert adam2.state[model2.fc2.weight]["exp_avg"].dtype == torch.float64
    assert adam2.state[model2.fc1.weight]["exp_avg"].dtype == torch.float32
    second = loss_train(opt2, model2, x, y, 5)
    assert torch.equal(torch.cat([first, second]), uninterrupted)


def test_state_dict_of_unstepped_optimizer_round_trips() -> None:
    model, x, y = make_problem(0)
    expected = train(tz.Optimizer(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2)), model, x, y, 5, True)
    model, x, y = make_problem(0)
    sd = _save_load(tz.Optimizer(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2)).state_dict())
    opt = tz.Optimizer(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    opt.load_state_dict(sd)
    assert torch.equal(train(opt, model, x, y, 5, True), expected)


def test_state_dict_with_generators_loads_with_weights_only(tmp_path: Any) -> None:
    """Generators (a module's seeded one, a ``seed=torch.Generator`` setting) are saved as their
    state tensors: the checkpoint loads with ``torch.load(weights_only=True)`` and the restored
    optimizer continues the same run with its own generator."""
    import tzfast as tz

    def make(params: Any) -> Any:
        return tz.Optimizer(params, tz.m.RandomizedFDM(n_samples=2, seed=torch.Generator().manual_seed(5),
                                                       fuse=False), tz.m.LR(1e-2))

    def run(x: torch.Tensor, opt: Any, steps: int) -> None:
        def closure(backward: bool = True) -> torch.Tensor:
            return (x ** 2).sum()
        for _ in range(steps):
            opt.step(closure)

    x = torch.nn.Parameter(torch.linspace(-1, 1, 7, dtype=torch.float64))
    opt = make([x])
    run(x, opt, 3)
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    saved_x = x.detach().clone()
    run(x, opt, 4)
    x2 = torch.nn.Parameter(saved_x.clone())
    opt2 = make([x2])
    opt2.load_state_dict(torch.load(path, weights_only=True))
    run(x2, opt2, 4)
    assert torch.equal(x2.detach(), x.detach())
