"""Bad input: every case checks the error type and a fragment of the message, and that a step
which failed before updating anything left the parameters bitwise unchanged."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import tzfast as tz

pytestmark = pytest.mark.usefixtures("single_thread")


def _params() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, 4, generator=g).requires_grad_(), torch.randn(5, generator=g).requires_grad_()]


def _snapshot(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _assert_unchanged(params: list[torch.Tensor], before: list[torch.Tensor]) -> None:
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b), "a failing step modified the parameters"


def _closure_for(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> Callable:
    def closure(backward: bool = True) -> torch.Tensor:
        loss = sum((p**2).sum() for p in params)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    return closure


# ---------------------------------------------------------------------- closure needed
@pytest.mark.parametrize("position", ["first", "after_adam"])
def test_module_needing_closure_without_closure_raises_naming_module(position: str) -> None:
    params = _params()
    clip = tz.m.ClipNorm(1.0, target="closure")
    modules = [clip, tz.m.Adam(), tz.m.LR(0.1)] if position == "first" else [tz.m.Adam(), clip, tz.m.LR(0.1)]
    opt = tz.Optimizer(params, *modules)
    _closure_for(opt, params)()  # gradients exist: only the closure is missing
    before = _snapshot(params)
    with pytest.raises(RuntimeError, match=r"ClipNorm.*needs a closure"):
        opt.step()
    _assert_unchanged(params, before)


def test_failed_step_without_closure_can_be_retried_with_one() -> None:
    params = _params()
    opt = tz.Optimizer(params, tz.m.ClipNorm(1.0, target="closure"), tz.m.LR(0.1))
    closure = _closure_for(opt, params)
    closure()
    with pytest.raises(RuntimeError, match="ClipNorm"):
        opt.step()
    before = _snapshot(params)
    opt.step(closure)
    assert not torch.equal(params[0].detach(), before[0])


def test_exception_inside_user_closure_propagates_and_leaves_parameters() -> None:
    params = _params()
    opt = tz.Optimizer(params, tz.m.Adam(), tz.m.LR(0.1))

    def closure(backward: bool = True) -> torch.Tensor:
        raise ValueError("user closure failed")

    before = _snapshot(params)
    with pytest.raises(ValueError, match="user closure failed"):
        opt.step(closure)
    _assert_unchanged(params, before)


def test_closure_that_is_not_callable_raises_type_error() -> None:
    params = _params()
    opt = tz.Optimizer(params, tz.m.Adam(), tz.m.LR(0.1))
    before = _snapshot(params)
    with pytest.raises(TypeError, match="closure"):
        opt.step(3.0)  # type: ignore[arg-type]
    _assert_unchanged(params, before)


# ---------------------------------------------------------------------- parameters
def test_parameter_that_is_not_a_tensor_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[1\] must be a torch.Tensor, got float"):
        tz.Optimizer([torch.zeros(2, requires_grad=True), 1.5], tz.m.LR(0.1))


def test_single_tensor_instead_of_iterable_raises_type_error() -> None:
    with pytest.raises(TypeError, match="wrap it in a list"):
        tz.Optimizer(torch.zeros(2, requires_grad=True), tz.m.LR(0.1))


def test_parameter_that_is_not_a_leaf_raises_value_error() -> None:
    leaf = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"\[0\] is not a leaf tensor"):
        tz.Optimizer([leaf * 2], tz.m.LR(0.1))


def test_complex_parameter_raises_type_error_suggesting_view_as_real() -> None:
    p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(TypeError, match=r"complex.*tz\.m\.ViewAsReal"):
        tz.Optimizer([p], tz.m.Adam(), tz.m.LR(0.1))


def test_integer_parameter_raises_type_error() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        tz.Optimizer([torch.zeros(3, dtype=torch.int64)], tz.m.LR(0.1))


def test_param_group_without_params_key_raises_value_error() -> None:
    with pytest.raises(ValueError, match="no 'params' key"):
        tz.Optimizer([{"lr": 0.1}], tz.m.LR(0.1))


def test_mixing_tensors_and_param_groups_raises_type_error() -> None:
    a, b = _params()
    with pytest.raises(TypeError, match="mixes tensors and param-group dicts"):
        tz.Optimizer([a, {"params": [b]}], tz.m.LR(0.1))


# ---------------------------------------------------------------------- duplicated parameters
def test_parameter_in_two_param_groups_raises_value_error() -> None:
    a, b = _params()
    with pytest.raises(ValueError, match="more than one parameter group"):
        tz.Optimizer([{"params": [a, b]}, {"params": [a], "lr": 0.5}], tz.m.LR(0.1))


def test_parameter_twice_in_one_group_raises_value_error() -> None:
    a, b = _params()
    with pytest.raises(ValueError, match="more than one parameter group"):
        tz.Optimizer([a, b, a], tz.m.LR(0.1))


def test_add_param_group_with_existing_parameter_raises_value_error() -> None:
    a, b = _params()
    opt = tz.Optimizer([a], tz.m.LR(0.1))
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [b, a]})
    assert len(opt.param_groups) == 1


# ---------------------------------------------------------------------- sparse gradients
def _sparse_problem() -> tuple[list[torch.Tensor], nn.Module, nn.Module]:
    torch.manual_seed(0)
    emb = nn.Embedding(10, 3, sparse=True)
    lin = nn.Linear(3, 1)
    return [*emb.parameters(), *lin.parameters()], emb, lin


@pytest.mark.parametrize("closure", [False, True], ids=["no_closure", "closure"])
def test_sparse_gradient_raises_runtime_error_mentioning_sparse(closure: bool) -> None:
    params, emb, lin = _sparse_problem()
    opt = tz.Optimizer(params, tz.m.Adam(), tz.m.LR(0.1))
    idx = torch.tensor([1, 2, 5])

    def cl(backward: bool = True) -> torch.Tensor:
        loss = lin(emb(idx)).sum()
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    before = _snapshot(params)
    with pytest.raises(RuntimeError, match=r"(?i)gradient.*sparse"):
        if closure:
            opt.step(cl)
        else:
            cl()
            opt.step()
    _assert_unchanged(params, before)


# ---------------------------------------------------------------------- unknown string options
@pytest.mark.parametrize("make", [
    lambda: tz.m.EMA(ema_init="ones"),
    lambda: tz.m.HeavyBall(ema_init="ones"),
], ids=["EMA", "HeavyBall"])
def test_unknown_ema_init_raises_value_error_listing_choices(make: Callable) -> None:
    with pytest.raises(ValueError, match=r"ema_init.*'zeros'.*'update'.*'ones'"):
        make()


@pytest.mark.parametrize("make", [
    lambda: tz.m.EMA(target="updates"),
    lambda: tz.m.HeavyBall(target="updates"),
    lambda: tz.m.NAG(target="updates"),
    lambda: tz.m.ClipValue(1.0, target="updates"),
    lambda: tz.m.ClipNorm(1.0, target="updates"),
    lambda: tz.m.Normalize(1.0, target="updates"),
    lambda: tz.m.WeightDecay(0.1, target="updates"),
    lambda: tz.m.Debias(beta1=0.9, target="updates"),
    lambda: tz.m.Debias2(target="updates"),
], ids=["EMA", "HeavyBall", "NAG", "ClipValue", "ClipNorm", "Normalize", "WeightDecay", "Debias", "Debias2"])
def test_unknown_target_raises_value_error_listing_choices(make: Callable) -> None:
    with pytest.raises(ValueError, match=r"target.*'update'.*'grad'.*'closure'.*'updates'"):
        make()


@pytest.mark.parametrize("cls", ["ClipNorm", "Normalize"])
def test_unknown_norm_ord_raises_value_error_listing_choices(cls: str) -> None:
    with pytest.raises(ValueError, match=r"ord.*'mad'.*'std'.*'linf'.*'l5'"):
        getattr(tz.m, cls)(1.0, ord="l5")


@pytest.mark.parametrize("cls", ["ClipNorm", "Normalize"])
def test_unknown_norm_dim_raises_value_error_listing_choices(cls: str) -> None:
    with pytest.raises(ValueError, match=r"dim.*'global'.*'all'"):
        getattr(tz.m, cls)(1.0, dim="all")


@pytest.mark.parametrize("fn", [
    lambda ps: tz.m.clip_grad_norm_(ps, 1.0, ord="l5"),
    lambda ps: tz.m.normalize_grads_(ps, 1.0, ord="l5"),
], ids=["clip_grad_norm_", "normalize_grads_"])
def test_gradient_functions_reject_unknown_ord(fn: Callable) -> None:
    params = _params()
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=r"ord.*'mad'.*'l5'"):
        fn(params)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in params)


def test_norm_ord_of_wrong_type_raises_type_error() -> None:
    with pytest.raises(TypeError, match="ord"):
        tz.m.ClipNorm(1.0, ord=None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- modules
def test_no_modules_raises_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="Empty list of modules"):
        tz.Optimizer(_params())


@pytest.mark.parametrize("modules", [([],), ([], [[]]), ((),)], ids=["list", "nested", "tuple"])
def test_empty_nested_module_list_raises_at_construction(modules: tuple) -> None:
    """A chain with no module in it is an empty module list, caught when the optimizer is built."""
    with pytest.raises(RuntimeError, match="(?i)empty"):
        tz.Optimizer(_params(), *modules)


@pytest.mark.parametrize("bad, kind", [("LR", "str"), (tz.m.Adam, "ABCMeta"), (0.1, "float")],
                         ids=["string", "class_not_instance", "number"])
def test_chain_item_that_is_not_a_module_raises_type_error(bad: Any, kind: str) -> None:
    with pytest.raises(TypeError, match=f"expected a Module.*got {kind}"):
        tz.Optimizer(_params(), tz.m.Adam(), bad)


def test_operand_that_is_neither_number_nor_module_raises_type_error() -> None:
    with pytest.raises(TypeError, match="operand `other` must be a number or a module"):
        tz.m.Add("1e-8")  # type: ignore[arg-type]


def test_div_modules_without_any_module_operand_raises_value_error() -> None:
    with pytest.raises(ValueError, match="at least one operand must be a module"):
        tz.m.DivModules(1.0, 2.0)


def test_step_size_key_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="`key` must be a str"):
        tz.m.StepSize(0.1, key=3)  # type: ignore[arg-type]


def test_load_state_dict_of_wrong_shape_raises_value_error() -> None:
    opt = tz.Optimizer(_params(), tz.m.Adam(), tz.m.LR(0.1))
    with pytest.raises(ValueError, match="expected a dict from tz.Optimizer.state_dict"):
        opt.load_state_dict({"state": {}})

