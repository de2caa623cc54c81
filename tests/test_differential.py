"""Differential tests: tzfast trajectories equal torchzero 0.4.4's on the same problem and chain.

Every case builds the same chain from ``tz.m`` and from ``torchzero.m`` with the same explicit
arguments and runs 20 steps on ``OddNet`` (a 3-D, a 0-d and a 1-element parameter beside an
MLP with odd sizes), once with a closure and once with ``loss.backward(); opt.step()``; the
parameters after every step must agree within rtol 1e-5 (float32).

Spec-only parameters (``target``, Adam's ``pow``) and the deliberate deviations from
torchzero 0.4.4 are tested against references written here.
"""
from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchzero as tzo
from conftest import assert_traj_close, flat, make_closure, make_problem, train, trajectory

import tzfast as tz

pytestmark = pytest.mark.usefixtures("single_thread")

# parameters are O(0.1..1) in float32: atol is a few ulp of 1.0, rtol is the 1e-5
RTOL, ATOL = 1e-5, 1e-6

CASES: dict[str, Any] = {
    # ------------------------------------------------------------------ Adam, LR, StepSize
    "adam": lambda m: [m.Adam(), m.LR(1e-2)],
    "adam_amsgrad": lambda m: [m.Adam(amsgrad=True), m.LR(1e-2)],
    "adam_betas_eps": lambda m: [m.Adam(beta1=0.8, beta2=0.95, eps=1e-3), m.LR(2e-2)],
    "adam_alpha": lambda m: [m.Adam(alpha=0.5), m.LR(1e-2)],
    "adam_amsgrad_alpha_betas": lambda m: [m.Adam(0.5, 0.9, 1e-6, amsgrad=True, alpha=3.0), m.LR(1e-2)],
    "adam_no_debias": lambda m: [m.Adam(debias=False), m.LR(1e-3)],
    # betas below 0.5: lerp weights above 0.5 take torch's other lerp branch
    "adam_small_betas": lambda m: [m.Adam(0.3, 0.4, eps=1e-4), m.LR(1e-2)],
    "adam_beta1_zero_amsgrad": lambda m: [m.Adam(0.0, 0.6, eps=1e-4, amsgrad=True), m.LR(1e-2)],
    "adam_no_lr": lambda m: [m.Adam(alpha=1e-2)],
    "adam_mul_negate_div": lambda m: [m.Adam(), m.Mul(2.0), m.Negate(), m.Negate(), m.Div(4.0), m.LR(1e-2)],
    "lr_only": lambda m: [m.LR(0.1)],
    "lr_one": lambda m: [m.LR(1.0), m.Mul(0.05)],
    "step_size": lambda m: [m.StepSize(0.1)],
    "step_size_key": lambda m: [m.Adam(), m.StepSize(1e-2, key="my_step")],
    "lr_twice": lambda m: [m.LR(0.5), m.Adam(), m.StepSize(0.02)],
    # ------------------------------------------------------------------ momentum
    "heavyball": lambda m: [m.HeavyBall(0.9), m.LR(1e-2)],
    "heavyball_dampening": lambda m: [m.HeavyBall(0.8, dampening=0.3), m.LR(1e-2)],
    "heavyball_lerp": lambda m: [m.HeavyBall(0.9, lerp=True), m.LR(1e-1)],
    "heavyball_zeros_debias": lambda m: [m.HeavyBall(0.9, ema_init="zeros", debias=True), m.LR(1e-2)],
    "nag": lambda m: [m.NAG(0.9), m.LR(1e-2)],
    "nag_dampening": lambda m: [m.NAG(0.8, dampening=0.4), m.LR(1e-2)],
    "nag_lerp": lambda m: [m.NAG(0.9, lerp=True), m.LR(5e-2)],
    "nag_lerp_dampening": lambda m: [m.NAG(0.7, dampening=0.2, lerp=True), m.LR(5e-2)],
    "ema": lambda m: [m.EMA(0.9), m.LR(1e-1)],
    "ema_dampening": lambda m: [m.EMA(0.9, dampening=0.25), m.LR(1e-1)],
    "ema_no_lerp": lambda m: [m.EMA(0.9, lerp=False), m.LR(1e-2)],
    "ema_init_update": lambda m: [m.EMA(0.9, ema_init="update"), m.LR(1e-1)],
    "ema_debias": lambda m: [m.EMA(0.9, debias=True), m.LR(1e-2)],
    "ema_all_options": lambda m: [m.EMA(0.8, dampening=0.1, debias=True, lerp=False, ema_init="update"), m.LR(1e-2)],
    "ema_then_adam": lambda m: [m.EMA(0.5), m.Adam(), m.LR(1e-2)],
    "ema_small_momentum": lambda m: [m.EMA(0.2, dampening=0.5), m.LR(1e-1)],
    "nag_lerp_small_momentum": lambda m: [m.NAG(0.3, lerp=True), m.LR(5e-2)],
    "emasq_small_beta_pow3": lambda m: [m.DivModules(m.Identity(), [m.EMASquared(0.3, pow=3), m.Add(0.1)]),
                                        m.LR(1e-2)],
    # ------------------------------------------------------------------ higher level ops
    "emasq_sqrt_debias2": lambda m: [m.EMASquared(), m.Sqrt(), m.Debias2(), m.LR(1e-3)],
    "emasq_denominator": lambda m: [m.DivModules(m.Identity(), [m.EMASquared(0.99), m.Sqrt(), m.Add(1e-3)]),
                                    m.LR(1e-2)],
    "emasq_amsgrad": lambda m: [m.DivModules(m.Identity(), [m.EMASquared(0.9, amsgrad=True), m.Sqrt(),
                                                           m.Add(1e-3)]), m.LR(1e-2)],
    # |x|**pow of small gradients is tiny: a larger eps keeps the step (and the float32 rounding
    # of the trajectory) bounded, so a difference of formulas cannot hide in chaos
    "emasq_pow1": lambda m: [m.DivModules(m.Identity(), [m.EMASquared(0.95, pow=1), m.Add(0.1)]), m.LR(1e-2)],
    "emasq_pow3": lambda m: [m.DivModules(m.Identity(), [m.EMASquared(0.95, pow=3), m.Add(0.1)]), m.LR(1e-2)],
    "emasq_pow4_amsgrad": lambda m: [m.DivModules(m.Identity(), [m.EMASquared(0.95, amsgrad=True, pow=4),
                                                                m.Add(0.1)]), m.LR(1e-2)],
    "sqrt_emasq": lambda m: [m.DivModules(m.Identity(), [m.SqrtEMASquared(0.99), m.Add(1e-3)]), m.LR(1e-2)],
    "sqrt_emasq_debiased": lambda m: [m.DivModules(m.Identity(), [m.SqrtEMASquared(0.99, debiased=True),
                                                                 m.Add(1e-3)]), m.LR(1e-2)],
    "sqrt_emasq_amsgrad_debiased": lambda m: [m.DivModules(m.Identity(), [m.SqrtEMASquared(0.9, amsgrad=True,
                                                                                          debiased=True),
                                                                         m.Add(1e-3)]), m.LR(1e-2)],
    "sqrt_emasq_pow3_debiased": lambda m: [m.DivModules(m.Identity(), [m.SqrtEMASquared(0.9, debiased=True, pow=3),
                                                                      m.Add(1e-3)]), m.LR(1e-2)],
    "debias_beta1": lambda m: [m.EMA(0.9), m.Debias(beta1=0.9), m.LR(1e-2)],
    "debias_beta2": lambda m: [m.Adam(debias=False), m.Debias(beta2=0.999), m.LR(1e-2)],
    "debias_both_alpha_pow": lambda m: [m.EMA(0.9), m.Debias(beta1=0.9, beta2=0.99, alpha=0.5, pow=3), m.LR(1e-2)],
    "debias_none": lambda m: [m.Debias(alpha=0.3), m.LR(1e-1)],
    "debias2": lambda m: [m.EMA(0.9), m.Debias2(0.99), m.LR(1e-2)],
    "debias2_pow3": lambda m: [m.EMA(0.9), m.Debias2(0.9, pow=3), m.LR(1e-2)],
    "adam_from_parts": lambda m: [m.DivModules([m.EMA(0.9), m.Debias(beta1=0.9)],
                                               [m.SqrtEMASquared(0.999, debiased=True), m.Add(1e-8)]), m.LR(1e-2)],
    "divmodules_other_first": lambda m: [m.DivModules([m.EMA(0.9)], [m.SqrtEMASquared(0.99), m.Add(1e-4)],
                                                      other_first=True), m.LR(1e-2)],
    "divmodules_number_input": lambda m: [m.Sign(), m.DivModules(2.0, [m.Abs(), m.Add(1.0)]), m.LR(1e-2)],
    # ------------------------------------------------------------------ weight decay
    "wd_ord2_before_adam": lambda m: [m.WeightDecay(0.1), m.Adam(), m.LR(1e-2)],
    "wd_ord1": lambda m: [m.Adam(), m.WeightDecay(0.1, ord=1), m.LR(1e-2)],
    "wd_ord3": lambda m: [m.Adam(), m.WeightDecay(0.5, ord=3), m.LR(1e-2)],
    "wd_ord4": lambda m: [m.Adam(), m.WeightDecay(0.5, ord=4), m.LR(1e-2)],
    "wd_after_lr": lambda m: [m.Adam(), m.LR(1e-2), m.WeightDecay(1e-2)],
    # ------------------------------------------------------------------ clipping / normalisation
    "clipvalue": lambda m: [m.ClipValue(0.01), m.LR(1e-1)],
    "clipvalue_after_adam": lambda m: [m.Adam(), m.ClipValue(0.5), m.LR(1e-2)],
    "clipnorm_before_adam": lambda m: [m.ClipNorm(0.1), m.Adam(), m.LR(1e-2)],
    "clipnorm_after_adam": lambda m: [m.Adam(), m.ClipNorm(0.1), m.LR(1e-2)],
    "clipnorm_ord1": lambda m: [m.ClipNorm(0.05, ord=1), m.LR(1e-1)],
    "clipnorm_inf": lambda m: [m.ClipNorm(0.01, ord=math.inf), m.LR(1e-1)],
    "clipnorm_mad": lambda m: [m.ClipNorm(0.005, ord="mad"), m.LR(1e-1)],
    "clipnorm_std": lambda m: [m.ClipNorm(0.005, ord="std", min_size=2), m.LR(1e-1)],  # std of 1 element is NaN
    "clipnorm_global": lambda m: [m.ClipNorm(0.05, dim="global"), m.LR(1e-1)],
    "clipnorm_global_ord1": lambda m: [m.ClipNorm(0.1, ord=1, dim="global"), m.LR(1e-1)],
    "clipnorm_global_inf": lambda m: [m.ClipNorm(0.01, ord=math.inf, dim="global"), m.LR(1e-1)],
    "clipnorm_global_mad": lambda m: [m.ClipNorm(0.005, ord="mad", dim="global"), m.LR(1e-1)],
    "clipnorm_global_std": lambda m: [m.ClipNorm(0.005, ord="std", dim="global"), m.LR(1e-1)],
    "clipnorm_dim0": lambda m: [m.ClipNorm(0.02, dim=0), m.LR(1e-1)],
    "clipnorm_dim01": lambda m: [m.ClipNorm(0.02, dim=(0, 1)), m.LR(1e-1)],
    "clipnorm_dim0_inverse": lambda m: [m.ClipNorm(0.02, dim=0, inverse_dims=True), m.LR(1e-1)],
    "clipnorm_dim1_inverse_min_size": lambda m: [m.ClipNorm(0.02, dim=[1], inverse_dims=True, min_size=3),
                                                 m.LR(1e-1)],
    "clipnorm_min_size": lambda m: [m.ClipNorm(0.02, min_size=8), m.LR(1e-1)],
    "clipnorm_large_no_op": lambda m: [m.ClipNorm(1e6), m.LR(1e-1)],
    "clipnorm_var": lambda m: [m.ClipNorm(1e-5, ord="var", min_size=2), m.LR(1e-1)],
    "clipnorm_sum": lambda m: [m.ClipNorm(0.01, ord="sum"), m.LR(1e-1)],
    "clipnorm_l3": lambda m: [m.ClipNorm(0.01, ord="l3"), m.LR(1e-1)],
    "clipnorm_ord3_number": lambda m: [m.ClipNorm(0.01, ord=3), m.LR(1e-1)],
    "clipnorm_linf_name": lambda m: [m.ClipNorm(0.005, ord="linf", dim=1), m.LR(1e-1)],
    "clipnorm_dim_minus1": lambda m: [m.ClipNorm(0.01, dim=-1), m.LR(1e-1)],
    "clipnorm_dim_minus1_inverse": lambda m: [m.ClipNorm(0.01, dim=-1, inverse_dims=True), m.LR(1e-1)],
    "clipnorm_global_var": lambda m: [m.ClipNorm(1e-5, ord="var", dim="global"), m.LR(1e-1)],
    "clipnorm_global_sum": lambda m: [m.ClipNorm(0.01, ord="sum", dim="global"), m.LR(1e-1)],
    "clipnorm_global_ord3": lambda m: [m.ClipNorm(0.01, ord=3, dim="global"), m.LR(1e-1)],
    "clipnorm_global_ord4": lambda m: [m.ClipNorm(0.01, ord=4, dim="global"), m.LR(1e-1)],
    "normalize": lambda m: [m.Normalize(), m.LR(1e-2)],
    "normalize_value": lambda m: [m.Adam(), m.Normalize(0.5), m.LR(1e-2)],
    "normalize_ord1": lambda m: [m.Normalize(0.1, ord=1), m.LR(1e-2)],
    "normalize_inf": lambda m: [m.Normalize(0.1, ord=math.inf), m.LR(1e-2)],
    "normalize_mad": lambda m: [m.Normalize(0.1, ord="mad"), m.LR(1e-2)],
    "normalize_std": lambda m: [m.Normalize(0.1, ord="std", min_size=2), m.LR(1e-2)],
    "normalize_global": lambda m: [m.Normalize(1, dim="global"), m.LR(1e-2)],
    "normalize_global_ord1": lambda m: [m.Normalize(1, ord=1, dim="global"), m.LR(1e-2)],
    "normalize_global_inf": lambda m: [m.Normalize(0.1, ord=math.inf, dim="global"), m.LR(1e-2)],
    "normalize_global_mad": lambda m: [m.Normalize(0.1, ord="mad", dim="global"), m.LR(1e-2)],
    "normalize_global_std": lambda m: [m.Normalize(0.1, ord="std", dim="global"), m.LR(1e-2)],
    "normalize_dim0": lambda m: [m.Normalize(0.1, dim=0), m.LR(1e-2)],
    "normalize_dim01": lambda m: [m.Normalize(0.1, dim=(0, 1)), m.LR(1e-2)],
    "normalize_dim0_inverse": lambda m: [m.Normalize(0.1, dim=0, inverse_dims=True), m.LR(1e-2)],
    "normalize_min_size": lambda m: [m.Normalize(0.1, min_size=8), m.LR(1e-2)],
    "normalize_dim1_min_size": lambda m: [m.Normalize(0.1, dim=1, min_size=4), m.LR(1e-2)],
    "normalize_dim_none_inverse": lambda m: [m.Normalize(0.1, inverse_dims=True), m.LR(1e-2)],
    "normalize_var": lambda m: [m.Normalize(1e-4, ord="var", min_size=2), m.LR(1e-2)],
    "normalize_l4_dim0": lambda m: [m.Normalize(0.1, ord="l4", dim=0), m.LR(1e-2)],
    "normalize_global_var": lambda m: [m.Normalize(1e-4, ord="var", dim="global"), m.LR(1e-2)],
    "normalize_global_l3": lambda m: [m.Normalize(0.1, ord="l3", dim="global"), m.LR(1e-2)],
    # ------------------------------------------------------------------ arithmetic
    "sign": lambda m: [m.Sign(), m.LR(1e-3)],
    "abs_sqrt_times_input": lambda m: [m.Mul([m.Abs(), m.Sqrt()]), m.LR(1e-2)],
    "abs": lambda m: [m.Adam(), m.Abs(), m.Mul(m.Sign()), m.LR(1e-2)],
    "add_number": lambda m: [m.Add(0.01), m.LR(1e-1)],
    "add_number_alpha": lambda m: [m.Add(0.01, alpha=-2.0), m.LR(1e-1)],
    "add_module": lambda m: [m.Adam(), m.Add(m.Grad(), alpha=0.5), m.LR(1e-2)],
    "add_chain_operand": lambda m: [m.Add([m.EMA(0.9), m.Mul(2.0)]), m.LR(1e-2)],
    "sub_number": lambda m: [m.Sub(0.01), m.LR(1e-1)],
    "sub_number_alpha": lambda m: [m.Sub(0.01, alpha=0.5), m.LR(1e-1)],
    "sub_module": lambda m: [m.Adam(), m.Sub(m.Params(), alpha=-0.01), m.LR(1e-2)],
    "sub_module_alpha": lambda m: [m.Sub(m.HeavyBall(0.5), alpha=0.5), m.LR(1e-1)],
    "mul_number": lambda m: [m.Mul(0.5), m.LR(1e-1)],
    "mul_module": lambda m: [m.Mul([m.Abs(), m.Add(1.0)]), m.LR(1e-2)],
    "div_number": lambda m: [m.Div(3.0), m.LR(1e-1)],
    "div_module": lambda m: [m.Div([m.Abs(), m.Add(1.0)]), m.LR(1e-1)],
    "negate_twice": lambda m: [m.Negate(), m.Negate(), m.LR(1e-1)],
    # ------------------------------------------------------------------ utility
    "grad_after_adam": lambda m: [m.Adam(), m.Grad(), m.LR(1e-1)],
    "params_sub": lambda m: [m.Grad(), m.Sub(m.Params(), alpha=-1e-2), m.LR(1e-1)],
    "clone_then_adam": lambda m: [m.Clone(), m.Adam(), m.Clone(), m.LR(1e-2)],
    "identity_noop": lambda m: [m.Identity(), m.Adam(), m.Noop(), m.Identity(1, 2, key=3), m.LR(1e-2)],
}


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
@pytest.mark.parametrize("name", list(CASES))
def test_trajectory_matches_torchzero(name: str, closure: bool) -> None:
    make = CASES[name]
    expected = trajectory(tzo, make, closure=closure)
    actual = trajectory(tz, make, closure=closure)
    assert_traj_close(actual, expected, rtol=RTOL, atol=ATOL)


def test_normalize_dim_none_mixed_ndim_uses_each_tensors_own_dims() -> None:
    """A later tensor with more dims than the first is normalized over all its dims.

    torchzero 0.4.4 reuses the first tensor's dim list (a deliberate deviation, see the spec
    notes), so the reference is written here: every tensor gets norm 0.5.
    """
    torch.manual_seed(1)
    a = torch.randn(4, requires_grad=True)
    b = torch.randn(2, 3, 4, requires_grad=True)
    c = torch.randn(3, 5, requires_grad=True)
    params = [a, b, c]
    grads = [torch.randn_like(p) for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    before = [p.detach().clone() for p in params]
    opt = tz.Optimizer(params, tz.m.Normalize(0.5), tz.m.LR(1.0))
    opt.step()
    for p, p0, g in zip(params, before, grads, strict=True):
        expected = p0 - g * (0.5 / torch.linalg.vector_norm(g))
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


def test_clipnorm_dim_none_mixed_ndim_uses_each_tensors_own_dims() -> None:
    torch.manual_seed(2)
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(2, 3, 4, requires_grad=True)
    params = [a, b]
    grads = [torch.randn_like(p) * 10 for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    before = [p.detach().clone() for p in params]
    tz.Optimizer(params, tz.m.ClipNorm(0.25), tz.m.LR(1.0)).step()
    for p, p0, g in zip(params, before, grads, strict=True):
        expected = p0 - g * min(1.0, 0.25 / torch.linalg.vector_norm(g).item())
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("ord", [2, 1, "mad"])
def test_normalize_global_leaves_all_zero_update_unchanged(ord: Any) -> None:
    """torchzero 0.4.4 divides by a zero norm here and produces NaN; tzfast leaves zeros alone."""
    p = torch.randn(3, 4, requires_grad=True)
    q = torch.randn(5, requires_grad=True)
    before = [p.detach().clone(), q.detach().clone()]
    opt = tz.Optimizer([p, q], tz.m.Normalize(1.0, ord=ord, dim="global"), tz.m.LR(0.1))
    p.grad = torch.zeros_like(p)
    q.grad = torch.zeros_like(q)
    opt.step()
    assert torch.equal(p.detach(), before[0])
    assert torch.equal(q.detach(), before[1])


# ---------------------------------------------------------------------- the functions
FUNCTION_CASES: dict[str, Any] = {
    "clip_grad_value": lambda m, ps: m.clip_grad_value_(ps, 0.02),
    "clip_grad_norm": lambda m, ps: m.clip_grad_norm_(ps, 0.05),
    "clip_grad_norm_ord1_min_norm": lambda m, ps: m.clip_grad_norm_(ps, 0.5, ord=1, min_norm=0.2),
    "clip_grad_norm_global_inf": lambda m, ps: m.clip_grad_norm_(ps, 0.01, ord=math.inf, dim="global"),
    "clip_grad_norm_dim0_inverse": lambda m, ps: m.clip_grad_norm_(ps, 0.02, dim=0, inverse_dims=True, min_size=1),
    "clip_grad_norm_mad_min_size": lambda m, ps: m.clip_grad_norm_(ps, 0.003, ord="mad", min_size=5),
    "clip_grad_norm_min_only": lambda m, ps: m.clip_grad_norm_(ps, None, min_norm=1.0),
    "normalize_grads": lambda m, ps: m.normalize_grads_(ps, 0.1),
    "normalize_grads_global_std": lambda m, ps: m.normalize_grads_(ps, 0.05, ord="std", dim="global"),
    "normalize_grads_dim1": lambda m, ps: m.normalize_grads_(ps, 0.05, dim=1),
}


def _function_trajectory(lib: Any, fn: Any, closure: bool) -> torch.Tensor:
    model, x, y = make_problem(3)
    opt = lib.Optimizer(model.parameters(), lib.m.LR(0.1))
    params = list(model.parameters())
    inner = make_closure(opt, model, x, y)

    def clipping_closure(backward: bool = True) -> torch.Tensor:
        loss = inner(backward)
        if backward:
            fn(lib.m, params)
        return loss

    out = []
    for _ in range(20):
        if closure:
            opt.step(clipping_closure)
        else:
            clipping_closure()
            opt.step()
        out.append(flat(params))
    return torch.stack(out)


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
@pytest.mark.parametrize("name", list(FUNCTION_CASES))
def test_gradient_function_matches_torchzero(name: str, closure: bool) -> None:
    fn = FUNCTION_CASES[name]
    expected = _function_trajectory(tzo, fn, closure)
    actual = _function_trajectory(tz, fn, closure)
    assert_traj_close(actual, expected, rtol=RTOL, atol=ATOL)


def test_gradient_functions_skip_parameters_without_grad() -> None:
    a = torch.randn(4, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    a.grad = torch.full((4,), 3.0)
    tz.m.clip_grad_norm_([a, b], 1.0)
    tz.m.clip_grad_value_([a, b], 0.1)
    tz.m.normalize_grads_([a, b], 1.0)
    assert b.grad is None
    torch.testing.assert_close(a.grad, torch.full((4,), 0.5))


# ---------------------------------------------------------------------- spec-only parameters
def _manual_adam(pow: float, alpha: float, debias: bool, amsgrad: bool = False, beta1: float = 0.9,
                 beta2: float = 0.99, eps: float = 1e-8, lr: float = 1e-2, closure: bool = True) -> torch.Tensor:
    """Adam with the spec's ``pow`` and ``alpha`` written out with torch ops (float64)."""
    model, x, y = make_problem(0, torch.float64)
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    vmax = [torch.zeros_like(p) for p in params]
    out = []
    for t in range(1, 21):
        for p in params:
            p.grad = None
        F.mse_loss(model(x), y).backward()
        with torch.no_grad():
            for i, p in enumerate(params):
                g = p.grad
                m[i].lerp_(g, 1 - beta1)
                v[i].lerp_(g.abs() ** pow, 1 - beta2)
                d = v[i]
                if amsgrad:
                    torch.maximum(vmax[i], v[i], out=vmax[i])
                    d = vmax[i]
                step_size = alpha
                if debias:
                    step_size = alpha * (1 - beta2**t) ** (1 / pow) / (1 - beta1**t)
                p.sub_(lr * (m[i] * step_size) / (d ** (1 / pow) + eps))
        out.append(flat(params))
    return torch.stack(out)


@pytest.mark.parametrize("pow", [1, 3, 4])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_pow_matches_written_out_reference(pow: float, amsgrad: bool) -> None:
    expected = _manual_adam(pow, alpha=1.0, debias=True, amsgrad=amsgrad)
    actual = trajectory(tz, lambda m: [m.Adam(beta2=0.99, amsgrad=amsgrad, pow=pow), m.LR(1e-2)],
                        dtype=torch.float64)
    assert_traj_close(actual, expected, rtol=1e-9, atol=1e-12)


def test_adam_pow2_reference_agrees_with_torchzero() -> None:
    """Sanity check of the written-out reference: with pow=2 it is torchzero's Adam."""
    expected = trajectory(tzo, lambda m: [m.Adam(beta2=0.99), m.LR(1e-2)], dtype=torch.float64)
    assert_traj_close(_manual_adam(2, alpha=1.0, debias=True), expected, rtol=1e-9, atol=1e-12)


def test_adam_alpha_applies_without_debias() -> None:
    """Deliberate deviation: torchzero 0.4.4 ignores ``alpha`` when ``debias=False``."""
    expected = _manual_adam(2, alpha=0.25, debias=False)
    actual = trajectory(tz, lambda m: [m.Adam(beta2=0.99, alpha=0.25, debias=False), m.LR(1e-2)],
                        dtype=torch.float64)
    assert_traj_close(actual, expected, rtol=1e-9, atol=1e-12)


# target='grad': the module transforms the gradient and leaves the update alone. tzfast
# ``[Mul(2), X(target='grad'), Add(Grad())]`` gives ``2*g + X(g)``, which torchzero builds as
# ``[Mul(2), Add([Grad(), X])]``.
TARGET_GRAD_CASES: dict[str, Any] = {
    "ema": lambda m, **k: m.EMA(0.9, debias=True, **k),
    "heavyball": lambda m, **k: m.HeavyBall(0.8, **k),
    "nag": lambda m, **k: m.NAG(0.9, dampening=0.1, **k),
    "debias": lambda m, **k: m.Debias(beta1=0.9, **k),
    "debias2": lambda m, **k: m.Debias2(0.99, **k),
    "weight_decay": lambda m, **k: m.WeightDecay(0.3, ord=1, **k),
    "clipvalue": lambda m, **k: m.ClipValue(0.01, **k),
    "clipnorm": lambda m, **k: m.ClipNorm(0.05, **k),
    "clipnorm_global": lambda m, **k: m.ClipNorm(0.05, dim="global", **k),
    "normalize": lambda m, **k: m.Normalize(0.1, dim=0, **k),
}


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
@pytest.mark.parametrize("name", list(TARGET_GRAD_CASES))
def test_target_grad_transforms_gradient_not_update(name: str, closure: bool) -> None:
    make = TARGET_GRAD_CASES[name]
    expected = trajectory(tzo, lambda m: [m.Mul(2.0), m.Add([m.Grad(), make(m)]), m.LR(1e-2)], closure=closure)
    actual = trajectory(tz, lambda m: [m.Mul(2.0), make(m, target="grad"), m.Add(m.Grad()), m.LR(1e-2)],
                        closure=closure)
    assert_traj_close(actual, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", list(TARGET_GRAD_CASES))
def test_target_closure_transforms_gradients_the_closure_computes(name: str) -> None:
    """``target='closure'`` first in a chain gives the module's output as the gradient."""
    make = TARGET_GRAD_CASES[name]
    expected = trajectory(tzo, lambda m: [make(m), m.Adam(), m.LR(1e-2)])
    actual = trajectory(tz, lambda m: [make(m, target="closure"), m.Adam(), m.LR(1e-2)])
    assert_traj_close(actual, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
def test_target_update_difference_is_update_minus_transform(closure: bool) -> None:
    expected = trajectory(tzo, lambda m: [m.Adam(), m.Sub(m.ClipValue(0.5)), m.LR(1e-1)], closure=closure)
    actual = trajectory(tz, lambda m: [m.Adam(), m.ClipValue(0.5, target="update_difference"), m.LR(1e-1)],
                        closure=closure)
    assert_traj_close(actual, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
def test_target_params_difference_is_params_minus_transformed_params(closure: bool) -> None:
    expected = trajectory(tzo, lambda m: [m.Params(), m.Sub(m.EMA(0.5)), m.LR(0.3)], closure=closure)
    actual = trajectory(tz, lambda m: [m.EMA(0.5, target="params_difference"), m.LR(0.3)], closure=closure)
    assert_traj_close(actual, expected, rtol=RTOL, atol=ATOL)


def test_target_params_direct_transforms_parameters_in_place() -> None:
    """``ClipValue(v, target='params_direct')`` clamps the parameters, then the chain goes on.

    Without a closure the gradient was computed before the clamp, so the reference clamps the
    parameters after ``backward`` and before torchzero's Adam step.
    """
    model, x, y = make_problem(0)
    ref = tzo.Optimizer(model.parameters(), tzo.m.Adam(), tzo.m.LR(5e-2))

    cl = make_closure(ref, model, x, y)
    expected = []
    for _ in range(20):
        cl()
        with torch.no_grad():
            for p in model.parameters():
                p.clamp_(-0.3, 0.3)
        ref.step()
        expected.append(flat(model.parameters()))

    model, x, y = make_problem(0)
    opt = tz.Optimizer(model.parameters(), tz.m.ClipValue(0.3, target="params_direct"), tz.m.Adam(), tz.m.LR(5e-2))
    actual = train(opt, model, x, y, 20, closure=False)
    assert_traj_close(actual, torch.stack(expected), rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------- settings per group, unused parameters
@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
@pytest.mark.parametrize("chain", ["normalize_value", "clipnorm_global_max", "clipvalue_debias"])
def test_per_group_settings_of_norm_modules_match_torchzero(chain: str, closure: bool) -> None:
    chains: dict[str, Any] = {
        "normalize_value": lambda m: [m.Normalize(0.1, dim=0), m.LR(1e-2)],
        "clipnorm_global_max": lambda m: [m.Adam(), m.ClipNorm(0.1, dim="global"), m.LR(1e-2)],
        "clipvalue_debias": lambda m: [m.ClipValue(0.01), m.EMA(0.9), m.Debias(beta1=0.9), m.LR(1e-1)],
    }
    runs = []
    for lib in (tz, tzo):
        model, x, y = make_problem(0)
        groups = [{"params": [model.cube, model.fc2.weight], "norm_value": 0.5, "max_norm": 0.01, "value": 0.002,
                   "beta1": 0.5},
                  {"params": [p for n, p in model.named_parameters() if n not in ("cube", "fc2.weight")]}]
        opt = lib.Optimizer(groups, *chains[chain](lib.m))
        runs.append(train(opt, model, x, y, 20, closure))
    assert_traj_close(runs[0], runs[1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("closure", [True, False], ids=["closure", "no_closure"])
@pytest.mark.parametrize("chain", ["adam", "wd_heavyball", "normalize_global"])
def test_parameter_without_gradient_is_treated_as_zero_gradient_like_torchzero(chain: str, closure: bool) -> None:
    """A parameter the loss does not use has ``grad=None``: its update is computed from zeros."""
    chains: dict[str, Any] = {
        "adam": lambda m: [m.Adam(), m.LR(1e-2)],
        "wd_heavyball": lambda m: [m.WeightDecay(0.1), m.HeavyBall(0.9), m.LR(1e-2)],
        "normalize_global": lambda m: [m.WeightDecay(0.1), m.Normalize(0.1, dim="global"), m.LR(1e-2)],
    }
    runs = []
    for lib in (tz, tzo):
        model, x, y = make_problem(0)
        unused = torch.nn.Parameter(torch.linspace(-1, 1, 6).reshape(2, 3))
        opt = lib.Optimizer([*model.parameters(), unused], *chains[chain](lib.m))
        traj = train(opt, model, x, y, 10, closure)
        runs.append((traj, unused.detach().clone()))
        assert unused.grad is None
    assert_traj_close(runs[0][0], runs[1][0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=RTOL, atol=ATOL)
