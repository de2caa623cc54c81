"""The Moré-Garbow-Hillstrom test set (bench/mgh.py) against the paper's sizes, minima and
the standard starting values.

* sizes: n and m as the paper defines them (fixed problems) or as functions of n;
* minima: f(xmin) equals the published fmin to the paper's six significant digits (relative
  5e-6, half a unit in the sixth digit), exactly-known zero minima to 1e-20, closed-form
  minima (linear functions) to 1e-12 relative; the autograd gradient at xmin is below 1e-8 of
  its norm at x0;
* f(x0): hand-derived closed forms (exact up to float64 rounding, relative 1e-13), and for
  the data-fitting problems the six-digit f(x0) values tabulated with the set (relative 5e-6).
"""
from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # bench/ is a package of the checkout, not installed
    sys.path.insert(0, _ROOT)
mgh = importlib.import_module("bench.mgh")
PROBLEMS, Problem, closure_for = mgh.PROBLEMS, mgh.Problem, mgh.closure_for

SIX_DIGITS = 5e-6  # half a unit in the sixth significant digit, relative

# (n, m) of every problem at its default size; the fixed ones are the paper's.
SIZES = {
    "rosenbrock": (2, 2), "freudenstein_roth": (2, 2), "powell_badly_scaled": (2, 2), "brown_badly_scaled": (2, 3),
    "beale": (2, 3), "jennrich_sampson": (2, 10), "helical_valley": (3, 3), "bard": (3, 15), "gaussian": (3, 15),
    "meyer": (3, 16), "gulf_research": (3, 99), "box_3d": (3, 10), "powell_singular": (4, 4), "wood": (4, 6),
    "kowalik_osborne": (4, 11), "brown_dennis": (4, 20), "osborne_1": (5, 33), "biggs_exp6": (6, 13),
    "osborne_2": (11, 65), "watson": (6, 31), "extended_rosenbrock": (1000, 1000),
    "extended_powell_singular": (20, 20), "penalty_1": (10, 11), "penalty_2": (10, 20),
    "variably_dimensioned": (10, 12), "trigonometric": (10, 10), "brown_almost_linear": (10, 10),
    "discrete_boundary_value": (10, 10), "discrete_integral_equation": (10, 10), "broyden_tridiagonal": (10, 10),
    "broyden_banded": (10, 10), "linear_full_rank": (10, 20), "linear_rank_1": (10, 20),
    "linear_rank_1_zero": (10, 20), "chebyquad": (8, 8),
}

# sizes the paper publishes a minimum for, beyond the defaults
EXTRA = [mgh.watson(9), mgh.watson(12), mgh.penalty_1(4), mgh.penalty_2(4), mgh.chebyquad(10)]
WITH_XMIN = [p for p in list(PROBLEMS.values()) + EXTRA if p.xmin is not None]


def _grad(p: Problem, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    closure_for(p, x)()
    assert x.grad is not None
    return x.grad


def test_every_problem_of_the_paper_is_there_in_order() -> None:
    assert list(SIZES) == list(PROBLEMS)
    assert [p.number for p in PROBLEMS.values()] == list(range(1, 36))


@pytest.mark.parametrize("name", list(SIZES))
def test_sizes_and_residual_count(name: str) -> None:
    p = PROBLEMS[name]
    assert (p.n, p.m) == SIZES[name]
    x0 = p.x0()
    assert x0.shape == (p.n,) and x0.dtype == torch.float64
    r = p.residuals(x0)
    assert r.shape == (p.m,)
    assert torch.isfinite(r).all()
    torch.testing.assert_close(p.f(x0), (r**2).sum(), rtol=1e-14, atol=0)


@pytest.mark.parametrize(("factory", "n", "m"), [
    (mgh.extended_rosenbrock, 6, 6), (mgh.extended_powell_singular, 8, 8), (mgh.penalty_1, 7, 8),
    (mgh.penalty_2, 7, 14), (mgh.variably_dimensioned, 7, 9), (mgh.trigonometric, 7, 7),
    (mgh.brown_almost_linear, 7, 7), (mgh.discrete_boundary_value, 7, 7), (mgh.discrete_integral_equation, 7, 7),
    (mgh.broyden_tridiagonal, 7, 7), (mgh.broyden_banded, 7, 7), (mgh.watson, 9, 31), (mgh.chebyquad, 7, 7),
])
def test_variable_size_residual_count(factory, n: int, m: int) -> None:
    p = factory(n)
    assert (p.n, p.m) == (n, m)
    assert p.residuals(p.x0()).shape == (m,)


@pytest.mark.parametrize(("p", "m"), [(mgh.jennrich_sampson(5), 5), (mgh.gulf_research(10), 10), (mgh.box_3d(20), 20),
                                      (mgh.brown_dennis(7), 7), (mgh.biggs_exp6(8), 8), (mgh.chebyquad(5, 9), 9),
                                      (mgh.linear_full_rank(5, 8), 8)])
def test_variable_m_residual_count(p: Problem, m: int) -> None:
    assert p.m == m and p.residuals(p.x0()).shape == (m,)


@pytest.mark.parametrize("p", WITH_XMIN, ids=lambda p: f"{p.name}{p.n}")
def test_f_at_known_minimiser_is_published_minimum(p: Problem) -> None:
    assert p.fmin is not None
    f = float(p.f(p.xmin_tensor()))
    if p.fmin == 0.0:
        assert f <= 1e-20
    elif p.number in (32, 33, 34):  # closed-form minima of the linear functions
        assert f == pytest.approx(p.fmin, rel=1e-12)
    else:
        assert f == pytest.approx(p.fmin, rel=SIX_DIGITS)


@pytest.mark.parametrize("p", WITH_XMIN, ids=lambda p: f"{p.name}{p.n}")
def test_gradient_vanishes_at_known_minimiser(p: Problem) -> None:
    g = _grad(p, p.xmin_tensor())
    g0 = _grad(p, p.x0())
    assert float(g.norm()) <= 1e-8 * float(g0.norm())


def test_published_minima_without_minimiser_are_declared() -> None:
    # minimum values the paper gives; the minimiser is not stored for trigonometric (not given)
    assert PROBLEMS["trigonometric"].fmin == 0.0 and PROBLEMS["trigonometric"].xmin is None
    assert PROBLEMS["biggs_exp6"].flocal == (5.65565e-3,)
    assert PROBLEMS["bard"].flocal == (17.4286,)
    assert PROBLEMS["kowalik_osborne"].flocal == (1.02734e-3,)
    assert PROBLEMS["freudenstein_roth"].flocal == (48.9842,)
    assert mgh.watson(7).fmin is None and mgh.penalty_1(5).fmin is None and mgh.jennrich_sampson(11).fmin is None


def test_local_minimum_of_brown_almost_linear() -> None:
    p = mgh.brown_almost_linear(10)
    x = torch.zeros(10, dtype=torch.float64)
    x[-1] = 11.0
    assert float(p.f(x)) == pytest.approx(1.0, rel=1e-15)


def test_box_3d_other_zeros() -> None:
    p = PROBLEMS["box_3d"]
    assert float(p.f(torch.tensor([10.0, 1.0, -1.0], dtype=torch.float64))) <= 1e-28
    assert float(p.f(torch.tensor([2.5, 2.5, 0.0], dtype=torch.float64))) == 0.0


def _closed_form_f0() -> dict[str, float]:
    e = math.exp
    n = 10
    return {
        "rosenbrock": 4.4**2 + 2.2**2,  # 24.2
        "freudenstein_roth": 19.5**2 + 4.5**2,  # 400.5
        "powell_badly_scaled": 1.0 + (e(-1.0) - 1e-4) ** 2,
        "brown_badly_scaled": (1.0 - 1e6) ** 2 + (1.0 - 2e-6) ** 2 + 1.0,
        "beale": 1.5**2 + 2.25**2 + 2.625**2,  # 14.203125
        "helical_valley": 2500.0,
        "powell_singular": 215.0,
        "wood": 19192.0,
        "watson": 30.0,
        "extended_rosenbrock": 12.1 * 1000,
        "extended_powell_singular": 215.0 * 5,
        "penalty_1": 1e-5 * sum((j - 1) ** 2 for j in range(1, n + 1)) + (385 - 0.25) ** 2,
        "variably_dimensioned": 3.85 + 38.5**2 + 38.5**4,
        "brown_almost_linear": 9 * 5.5**2 + (0.5**10 - 1.0) ** 2,
        "broyden_tridiagonal": 2.0**2 + 8 * 1.0 + 3.0**2,  # residuals -2, -1 (x8), -3
        "broyden_banded": 10 * 36.0,
        "linear_full_rank": 10 * 1.0 + 10 * 4.0,
        "linear_rank_1": sum((i * 55 - 1) ** 2 for i in range(1, 21)),
        "linear_rank_1_zero": 2.0 + sum(((i - 1) * 44 - 1) ** 2 for i in range(2, 20)),
    }


@pytest.mark.parametrize(("name", "value"), list(_closed_form_f0().items()))
def test_f_at_x0_closed_form(name: str, value: float) -> None:
    p = PROBLEMS[name]
    assert float(p.f(p.x0())) == pytest.approx(value, rel=1e-13)


# f(x0) as tabulated with the test set (six significant digits)
TABULATED_F0 = {
    "rosenbrock": 24.2, "beale": 14.2031, "wood": 19192.0, "powell_singular": 215.0,
    "jennrich_sampson": 4171.31, "bard": 41.6817, "gaussian": 3.88811e-6, "box_3d": 1031.15,
    "kowalik_osborne": 5.31317e-3, "brown_dennis": 7.92669e6, "osborne_1": 0.879026, "biggs_exp6": 0.779070,
    "osborne_2": 2.09342,
}


@pytest.mark.parametrize(("name", "value"), list(TABULATED_F0.items()))
def test_f_at_x0_tabulated(name: str, value: float) -> None:
    p = PROBLEMS[name]
    assert float(p.f(p.x0())) == pytest.approx(value, rel=SIX_DIGITS)


@pytest.mark.parametrize("name", [k for k in SIZES if SIZES[k][0] <= 11])
def test_autograd_gradient_matches_finite_differences(name: str) -> None:
    p = PROBLEMS[name]
    x0 = p.x0()
    # a point near x0 off any symmetry or kink (helical valley's theta jumps at x1 = 0)
    x = (x0 + 0.01 * torch.linspace(0.3, 0.7, p.n, dtype=torch.float64) * (1 + x0.abs())).requires_grad_(True)
    assert torch.autograd.gradcheck(p.residuals, (x,), eps=1e-6 * (1 + float(x0.abs().max())), atol=1e-5, rtol=1e-4)


def test_residuals_follow_dtype_and_grad_mode() -> None:
    p = PROBLEMS["bard"]
    r64 = p.residuals(p.x0())
    r32 = p.residuals(p.x0(torch.float32))
    assert r32.dtype == torch.float32 and r64.dtype == torch.float64
    torch.testing.assert_close(r32, r64.float(), rtol=1e-6, atol=1e-6)
    with torch.inference_mode():
        p.f(p.x0(torch.float32))  # data tables made here must still work with autograd later
    x = p.x0(torch.float32).requires_grad_(True)
    closure_for(p, x)()
    assert x.grad is not None and x.grad.dtype == torch.float32


def test_closure_for_computes_loss_and_fresh_gradient() -> None:
    p = PROBLEMS["rosenbrock"]
    x = p.x0().requires_grad_(True)
    closure = closure_for(p, x)
    loss = closure()
    assert float(loss.detach()) == pytest.approx(24.2, rel=1e-15)
    # f = 100 (x2 - x1^2)^2 + (1 - x1)^2
    g_exact = torch.tensor([-400 * -1.2 * (1 - 1.44) - 2 * (1 + 1.2), 200 * (1 - 1.44)], dtype=torch.float64)
    torch.testing.assert_close(x.grad, g_exact, rtol=1e-14, atol=1e-12)
    closure()  # a second call replaces the gradient, it does not accumulate
    torch.testing.assert_close(x.grad, g_exact, rtol=1e-14, atol=1e-12)
    before = x.grad.clone()
    with torch.no_grad():
        x.add_(1.0)
        loss2 = closure(False)
    assert float(loss2.detach()) == float(p.f(x.detach()))
    torch.testing.assert_close(x.grad, before, rtol=0, atol=0)  # backward=False leaves grad alone


def test_problem_is_frozen() -> None:
    p = PROBLEMS["wood"]
    with pytest.raises(AttributeError):
        p.n = 5  # type: ignore[misc]


@pytest.mark.parametrize(("call", "arg"), [
    (lambda: mgh.extended_rosenbrock(7), "n"), (lambda: mgh.extended_rosenbrock(0), "n"),
    (lambda: mgh.extended_powell_singular(6), "n"), (lambda: mgh.watson(1), "n"), (lambda: mgh.watson(32), "n"),
    (lambda: mgh.jennrich_sampson(1), "m"), (lambda: mgh.gulf_research(101), "m"),
    (lambda: mgh.linear_full_rank(5, 4), "m"), (lambda: mgh.chebyquad(5, 3), "m"),
])
def test_bad_sizes_raise_value_error_naming_the_argument(call, arg: str) -> None:
    with pytest.raises(ValueError, match=rf"^{arg} must be"):
        call()


def test_non_integer_size_raises_type_error() -> None:
    with pytest.raises(TypeError, match="^n must be an int, got float"):
        mgh.penalty_1(4.0)  # type: ignore[arg-type]


def test_wrong_shape_raises_value_error() -> None:
    p = PROBLEMS["wood"]
    with pytest.raises(ValueError, match=r"wood: x must be a 1-D tensor of 4 elements, got shape \(3,\)"):
        p.f(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must be a 1-D tensor of 4 elements for wood"):
        closure_for(p, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="no minimiser is known"):
        PROBLEMS["trigonometric"].xmin_tensor()
