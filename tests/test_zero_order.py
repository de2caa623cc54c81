"""``tz.zero_order`` and ``ZeroOrderGradientModule`` (seed 003, INVENTORY section 6).

The estimators are checked against the documented formulas: exactly, with a deterministic noise
sequence, and in expectation, where the mean of many estimates must equal the gradient of the
Gaussian-smoothed objective (for a quadratic, the true gradient) within a stated statistical
tolerance. TorchOpt's own ``'forward'`` estimator (baseline overwritten, sigma multiplied
instead of divided) is reimplemented here only to show that ours differs from it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import tzfast as tz
from tzfast.zero_order import ZeroOrderGradientModule, zero_order

# a quadratic f(t) = 1/2 t^T A t - b^T t + c: its smoothed gradient E_z[grad f(t + sigma z)] is A t - b
A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 1.5]], dtype=torch.float64)
B = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
THETA = torch.tensor([0.3, -0.7, 0.2], dtype=torch.float64)
SMOOTHED_GRAD = A @ THETA - B


def quadratic(t: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
    return 0.5 * t @ A @ t - B @ t + shift


class _Cycle:
    """A deterministic 'distribution': hands out the given noise tensors in turn."""

    def __init__(self, noises: list[torch.Tensor]):
        self.noises = noises
        self.i = 0

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        z = self.noises[self.i % len(self.noises)]
        self.i += 1
        assert z.shape == sample_shape
        return z


def _distributions() -> Iterator[tuple[str, Callable[[], Any]]]:
    yield "torch.distributions.Normal", lambda: torch.distributions.Normal(loc=0.0, scale=1.0)
    yield "function", lambda: (lambda sample_shape=torch.Size(): torch.randn(sample_shape))  # noqa: B008
    yield "object with sample", lambda: type("D", (), {"sample": lambda self, sample_shape=torch.Size():  # noqa: B008
                                                       torch.randn(sample_shape)})()


DISTRIBUTIONS = dict(_distributions())


def _mean_and_se(estimates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return estimates.mean(0), estimates.std(0) / math.sqrt(estimates.shape[0])


# --------------------------------------------------------------------------- formulas, exactly
@pytest.mark.parametrize("method", ["naive", "forward", "antithetic"])
def test_estimate_is_the_documented_formula_for_a_given_noise_sequence(method: str) -> None:
    torch.manual_seed(0)
    zs = [torch.randn(3, dtype=torch.float64) for _ in range(4)]
    sigma, n = 0.3, 4
    theta = THETA.clone().requires_grad_()

    @zero_order(_Cycle(zs), method=method, num_samples=n, sigma=sigma)
    def f(t: torch.Tensor) -> torch.Tensor:
        return quadratic(t, shift=2.0)

    loss = f(theta)
    assert loss.item() == pytest.approx(quadratic(THETA, 2.0).item())
    (g,) = torch.autograd.grad(loss, theta)

    f0 = quadratic(THETA, 2.0)
    if method == "naive":
        expected = sum(quadratic(THETA + sigma * z, 2.0) * z for z in zs) / (n * sigma)
    elif method == "forward":
        expected = sum((quadratic(THETA + sigma * z, 2.0) - f0) * z for z in zs) / (n * sigma)
    else:
        expected = sum((quadratic(THETA + sigma * z, 2.0) - quadratic(THETA - sigma * z, 2.0)) * z
                       for z in zs) / (2 * n * sigma)
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-12)


def _torchopt_forward_estimate(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
                               zs: list[torch.Tensor], sigma: float) -> torch.Tensor:
    """TorchOpt 0.7.3's 'forward' backward, written out: it overwrites the baseline and multiplies by sigma."""
    output = f(theta)
    g = torch.zeros_like(theta)
    for z in zs:
        output = f(theta + sigma * z) - output
        g += output / (1.0 / sigma) * z
    return g / len(zs)


def test_forward_method_does_not_reproduce_the_torchopt_bug() -> None:
    torch.manual_seed(1)
    zs = [torch.randn(3, dtype=torch.float64) for _ in range(3)]
    sigma = 0.1
    theta = THETA.clone().requires_grad_()
    f = zero_order(_Cycle(zs), method="forward", num_samples=3, sigma=sigma)(quadratic)
    (ours,) = torch.autograd.grad(f(theta), theta)
    documented = sum((quadratic(THETA + sigma * z) - quadratic(THETA)) * z for z in zs) / (3 * sigma)
    buggy = _torchopt_forward_estimate(quadratic, THETA, zs, sigma)
    torch.testing.assert_close(ours, documented, rtol=1e-12, atol=1e-12)
    assert (ours - buggy).abs().max() > 0.5  # TorchOpt's value is ~sigma^2 times too small and biased


def test_gradient_is_scaled_by_the_incoming_gradient() -> None:
    zs = [torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)]
    theta = THETA.clone().requires_grad_()
    f = zero_order(_Cycle(zs), method="antithetic", sigma=0.2)(quadratic)
    (g1,) = torch.autograd.grad(f(theta), theta)
    (g3,) = torch.autograd.grad(3.0 * f(theta), theta)
    torch.testing.assert_close(g3, 3.0 * g1)


# --------------------------------------------------------------------------- in expectation
# K independent estimates (each averaging num_samples draws): their mean must be within
# 5 standard errors of the smoothed gradient (a false failure has probability < 1e-5 per entry).
@pytest.mark.parametrize("method", ["naive", "forward", "antithetic"])
@pytest.mark.parametrize("distribution", [*DISTRIBUTIONS, "gaussian", "rademacher", "uniform", "sphere"])
def test_mean_estimate_equals_smoothed_gradient_of_quadratic(method: str, distribution: str) -> None:
    torch.manual_seed(2)
    dist = DISTRIBUTIONS[distribution]() if distribution in DISTRIBUTIONS else distribution
    sigma, k = 0.5, 400
    f = zero_order(dist, method=method, num_samples=25, sigma=sigma)(lambda t: quadratic(t, shift=0.5))
    estimates = []
    for _ in range(k):
        theta = THETA.clone().requires_grad_()
        estimates.append(torch.autograd.grad(f(theta), theta)[0])
    mean, se = _mean_and_se(torch.stack(estimates))
    assert (se < 0.15).all(), f"tolerance too loose to mean anything: se={se}"
    assert ((mean - SMOOTHED_GRAD).abs() <= 5 * se).all(), f"mean={mean}, expected={SMOOTHED_GRAD}, se={se}"


def test_smoothed_gradient_of_a_non_quadratic_matches_its_closed_form() -> None:
    # f(t) = sum(t^4): E[grad f(t + sigma z)] = 4 (t^3 + 3 sigma^2 t) for z ~ N(0, I)
    torch.manual_seed(3)
    sigma = 0.4
    f = zero_order("gaussian", method="antithetic", num_samples=50, sigma=sigma)(lambda t: (t ** 4).sum())
    estimates = []
    for _ in range(400):
        theta = THETA.clone().requires_grad_()
        estimates.append(torch.autograd.grad(f(theta), theta)[0])
    mean, se = _mean_and_se(torch.stack(estimates))
    expected = 4 * (THETA ** 3 + 3 * sigma ** 2 * THETA)
    assert ((mean - expected).abs() <= 5 * se).all(), f"mean={mean}, expected={expected}, se={se}"


# --------------------------------------------------------------------------- arguments
def test_several_argnums_and_pytrees_get_gradients_and_data_does_not() -> None:
    za = torch.tensor([0.5, -1.0], dtype=torch.float64)
    zw = torch.tensor([[1.0, 0.0], [0.5, -0.5]], dtype=torch.float64)
    zb = torch.tensor(0.25, dtype=torch.float64)
    noises = {(2,): za, (2, 2): zw, (): zb}

    def sample(sample_shape: torch.Size) -> torch.Tensor:
        return noises[tuple(sample_shape)]

    def f(a: torch.Tensor, data: torch.Tensor, params: dict[str, Any], scale: float = 1.0) -> torch.Tensor:
        w, b = params["w"], params["b"]
        return scale * (((data @ w) * a).sum() + b * a.sum() + params["n"])

    a = torch.tensor([0.1, 0.2], dtype=torch.float64, requires_grad=True)
    data = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    params = {"w": torch.randn(2, 2, dtype=torch.float64, requires_grad=True),
              "b": torch.tensor(0.3, dtype=torch.float64, requires_grad=True), "n": 7}
    sigma = 0.1
    zf = zero_order(sample, method="forward", argnums=(0, 2), num_samples=1, sigma=sigma)(f)
    loss = zf(a, data, params, scale=2.0)
    assert loss.item() == pytest.approx(f(a, data, params, 2.0).item())
    ga, gw, gb, gdata = torch.autograd.grad(loss, [a, params["w"], params["b"], data], allow_unused=True)
    assert gdata is None

    with torch.no_grad():
        pert = {"w": params["w"] + sigma * zw, "b": params["b"] + sigma * zb, "n": 7}
        c = (f(a + sigma * za, data, pert, 2.0) - f(a, data, params, 2.0)) / sigma
    torch.testing.assert_close(ga, c * za)
    torch.testing.assert_close(gw, c * zw)
    torch.testing.assert_close(gb, c * zb)


def test_negative_argnums_and_int_argnums() -> None:
    z = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    x = THETA.clone().requires_grad_()
    f1 = zero_order(_Cycle([z]), argnums=-1, sigma=0.1)(lambda data, t: quadratic(t))
    f2 = zero_order(_Cycle([z]), argnums=1, sigma=0.1)(lambda data, t: quadratic(t))
    g1 = torch.autograd.grad(f1(None, x), x)[0]
    g2 = torch.autograd.grad(f2(None, x), x)[0]
    torch.testing.assert_close(g1, g2)


def test_engine_distributions_are_reproducible_with_manual_seed() -> None:
    f = zero_order("rademacher", method="antithetic", num_samples=4, sigma=0.1)(quadratic)
    grads = []
    for _ in range(2):
        torch.manual_seed(5)
        x = THETA.clone().requires_grad_()
        grads.append(torch.autograd.grad(f(x), x)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    x = THETA.clone().requires_grad_()
    assert not torch.equal(torch.autograd.grad(f(x), x)[0], grads[0])


def test_float32_parameters_get_float32_gradients() -> None:
    x = THETA.float().requires_grad_()
    for dist in ("gaussian", torch.distributions.Normal(0.0, 1.0)):
        f = zero_order(dist, num_samples=3)(lambda t: (t ** 2).sum())
        (g,) = torch.autograd.grad(f(x), x)
        assert g.dtype == torch.float32 and g.shape == x.shape


# --------------------------------------------------------------------------- the class form
class _Regression(ZeroOrderGradientModule, method="antithetic", num_samples=64, sigma=0.01):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 1)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return ((self.fc(x) - y) ** 2).mean()

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        return torch.randn(sample_shape)


def test_module_gradients_estimate_the_true_gradient() -> None:
    torch.manual_seed(6)
    net = _Regression()
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    ref = torch.nn.Linear(3, 1)
    ref.load_state_dict(net.fc.state_dict())
    true = torch.autograd.grad(((ref(x) - y) ** 2).mean(), list(ref.parameters()))
    estimates = [torch.cat([g.ravel() for g in torch.autograd.grad(net((x, y)), list(net.parameters()))])
                 for _ in range(100)]
    mean, se = _mean_and_se(torch.stack(estimates))
    expected = torch.cat([g.ravel() for g in true])  # quadratic in the parameters: smoothed grad == grad
    assert ((mean - expected).abs() <= 5 * se + 1e-4).all()
    # the parameters are untouched by the estimate
    torch.testing.assert_close(net.fc.weight, ref.weight, rtol=0, atol=0)


def test_module_subclass_inherits_and_overrides_settings() -> None:
    class Child(_Regression):
        pass

    class Naive(_Regression, method="naive", num_samples=3):
        pass

    assert Child.__zero_order_settings__ == dict(method="antithetic", num_samples=64, sigma=0.01)
    assert Naive.__zero_order_settings__ == dict(method="naive", num_samples=3, sigma=0.01)
    net = Naive()
    loss = net((torch.randn(4, 3), torch.randn(4, 1)))
    assert all(g.shape == p.shape for g, p in zip(torch.autograd.grad(loss, list(net.parameters())),
                                                  net.parameters(), strict=True))


def test_module_forward_value_is_the_plain_forward() -> None:
    net = _Regression()
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    torch.testing.assert_close(net((x, y)), ((net.fc(x) - y) ** 2).mean().detach())


# --------------------------------------------------------------------------- worked examples (seed 003)
class _Distribution:
    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        return torch.randn(sample_shape)


def _distribution_fn(sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
    return torch.randn(sample_shape)


def _regression_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares, 4 features + bias, optimum (loss 0) at distance ~0.12 from zero.

    The naive estimator's noise is ~ f / (sigma sqrt(n)) per coordinate against a gradient
    ~ f / distance, so with the examples' sigma = 0.01 and n = 100 it is useful within ~0.1 of
    the optimum; the problem is scaled accordingly (initial loss 0.0135).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=g)
    w_true = 0.05 * torch.tensor([[1.0], [-2.0], [0.5], [0.0]])
    return x, x @ w_true + 0.02


@pytest.mark.parametrize("form", ["class with sample", "function", "torch.distributions.Normal"])
def test_ex61_functional_api_trains_a_linear_model(form: str) -> None:
    """EX-61: @zero_order(distribution=..., method='naive', argnums=0, num_samples=100, sigma=0.01).

    Problem: ``_regression_data``; 200 steps of gradient descent (``tz.m.LR(0.1)``) on the
    zero-order gradients must take the loss from 0.0135 to below 1e-4.
    """
    torch.manual_seed(7)
    distribution = {"class with sample": _Distribution(), "function": _distribution_fn,
                    "torch.distributions.Normal": torch.distributions.Normal(loc=0, scale=1)}[form]

    @tz.zero_order(distribution=distribution, method="naive", argnums=0, num_samples=100, sigma=0.01)
    def forward(params: tuple[torch.Tensor, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        w, b = params
        x, y = data
        return ((x @ w + b - y) ** 2).mean()

    x, y = _regression_data(0)
    params = (torch.zeros(4, 1, requires_grad=True), torch.zeros(1, requires_grad=True))
    opt = tz.Optimizer(list(params), tz.m.LR(0.1))
    first = None
    for _ in range(200):
        loss = forward(params, (x, y))
        first = loss.item() if first is None else first
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
    final = ((x @ params[0] + params[1] - y) ** 2).mean().item()
    assert first > 1e-2 and final < 1e-4, (first, final)


def test_ex62_module_api_trains_a_linear_model() -> None:
    """EX-62: class Net(ZeroOrderGradientModule, method='naive', num_samples=100, sigma=0.01).

    Same problem as EX-61 (the seed's ``Net(data)`` typo is ``net(data)``): 200 steps of
    ``torch.optim.SGD(lr=0.1)`` must take the loss from 0.0135 to below 1e-4.
    """
    torch.manual_seed(8)

    class Net(ZeroOrderGradientModule, method="naive", num_samples=100, sigma=0.01):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(dim, 1)
            torch.nn.init.zeros_(self.fc.weight)
            torch.nn.init.zeros_(self.fc.bias)

        def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, y = batch
            return ((self.fc(x) - y) ** 2).mean()

        def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
            return torch.randn(sample_shape)

    net = Net(4)
    data = _regression_data(0)
    assert net(data).item() > 1e-2
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(200):
        loss = net(data)
        grads = torch.autograd.grad(loss, net.parameters())
        for p, g in zip(net.parameters(), grads, strict=True):
            p.grad = g
        opt.step()
    assert net(data).item() < 1e-4


# --------------------------------------------------------------------------- bad input
def test_unknown_method_lists_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"`method` must be one of \('naive', 'forward', 'antithetic'\)"):
        zero_order("gaussian", method="central")


def test_unknown_distribution_name_lists_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"`distribution` must be one of \('gaussian', 'normal', 'rademacher'"):
        zero_order("cauchy")


def test_distribution_of_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="sample\\(sample_shape\\)"):
        zero_order(3.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_samples", [0, -3])
def test_num_samples_below_one_is_rejected(num_samples: int) -> None:
    with pytest.raises(ValueError, match="`num_samples` must be >= 1"):
        zero_order("gaussian", num_samples=num_samples)
    with pytest.raises(ValueError, match="`num_samples` must be >= 1"):
        type("Net", (ZeroOrderGradientModule,), {}, num_samples=num_samples)


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.inf, math.nan])
def test_non_positive_sigma_is_rejected(sigma: float) -> None:
    with pytest.raises(ValueError, match="`sigma` must be a positive finite number"):
        zero_order("gaussian", sigma=sigma)


def test_bad_argnums() -> None:
    with pytest.raises(TypeError, match="argnums"):
        zero_order("gaussian", argnums="0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="repeated"):
        zero_order("gaussian", argnums=(0, 0))
    f = zero_order("gaussian", argnums=(0, 3))(lambda a, b: (a * b).sum())
    with pytest.raises(ValueError, match="out of range for a call with 2 positional"):
        f(torch.ones(2, requires_grad=True), torch.ones(2))


def test_non_scalar_output_is_rejected() -> None:
    f = zero_order("gaussian")(lambda t: t * 2)
    with pytest.raises(ValueError, match="scalar \\(0-d\\) tensor, got shape \\(3,\\)"):
        f(THETA.clone().requires_grad_())
    g = zero_order("gaussian")(lambda t: 1.0)
    with pytest.raises(TypeError, match="must return a scalar tensor, got float"):
        g(THETA.clone().requires_grad_())


def test_sample_of_the_wrong_shape_is_rejected_at_backward() -> None:
    f = zero_order(torch.distributions.Normal(torch.zeros(2), 1.0))(quadratic)
    x = THETA.clone().requires_grad_()
    with pytest.raises(ValueError, match="sample of shape \\(3, 2\\) for a parameter of shape \\(3,\\)"):
        torch.autograd.grad(f(x), x)


def test_module_without_parameters_or_sample_raises() -> None:
    class Empty(ZeroOrderGradientModule):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum()

    with pytest.raises(RuntimeError, match="needs parameters"):
        Empty()(torch.ones(2))

    class NoSample(ZeroOrderGradientModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.w * x).sum()

    net = NoSample()
    with pytest.raises(NotImplementedError, match="must implement `sample"):
        torch.autograd.grad(net(torch.ones(2)), list(net.parameters()))


def test_unknown_method_in_class_keywords() -> None:
    with pytest.raises(ValueError, match="`method` must be one of"):
        type("Net", (ZeroOrderGradientModule,), {}, method="backward")
