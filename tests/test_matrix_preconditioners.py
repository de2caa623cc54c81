"""Matrix preconditioners: Shampoo, SOAP, SOAPBasis, GGT, GGTBasis, FullMatrixAdagrad.

Differential tests run the same chain from ``tz.m`` and from ``torchzero.m`` (0.4.4) for 12 steps
in float64 on a small net with a 4-D conv-like weight, two Linear layers and a 0-d gain; the
parameters after every step must agree. Tolerances: the decompositions (eigh, QR) are computed
from matrices that are equal only up to rounding (our Gram matrices come from one matrix-vector
product per step or a rank-1 ``addr_``; theirs from a full product or an outer product), and
the eigenvectors feed later steps, so differences of 1e-16 grow to about 1e-10 over 12 steps on
the worst-conditioned cases (zero-initialised accumulators with a 1e-6 regulariser): rtol 1e-8.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchzero as tzo
from torch import nn

import tzfast as tz

pytestmark = pytest.mark.usefixtures("single_thread")

RTOL, ATOL = 1e-8, 1e-11
ISSUE7 = "The elementwise catalogue, with chains fused into one pass"


class Net(nn.Module):
    """A 4-D (conv-like) weight, two Linear layers and a 0-d gain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Parameter(torch.randn(3, 2, 2, 2) * 0.3)
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 2)
        self.scale = nn.Parameter(torch.tensor(1.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = torch.tanh(x[:, :8] @ self.conv.reshape(3, 8).T)
        h = torch.tanh(self.fc1(torch.cat([x[:, :3], c], 1)))
        return self.fc2(h) * self.scale


def problem(seed: int = 0) -> tuple[Net, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Net().double()
    x = torch.randn(16, 8, generator=g).double()
    y = torch.randn(16, 2, generator=g).double()
    return model, x, y


def run(opt: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
        counter: list[int] | None = None) -> tuple[torch.Tensor, list[float]]:
    out, losses = [], []

    def closure(backward: bool = True) -> torch.Tensor:
        if counter is not None:
            counter[0] += 1
        loss = F.mse_loss(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(steps):
        losses.append(float(opt.step(closure).detach()))
        out.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return torch.stack(out), losses


def trajectory(lib: Any, make: Callable[[Any], list], steps: int = 12) -> tuple[torch.Tensor, int]:
    model, x, y = problem()
    opt = lib.Optimizer(model.parameters(), *make(lib.m))
    counter = [0]
    traj, _ = run(opt, model, x, y, steps, counter)
    return traj, counter[0]


CASES: dict[str, Callable[[Any], list]] = {
    "shampoo": lambda m: [m.Shampoo(), m.LR(1e-2)],
    "shampoo_freq1_beta_maxdim": lambda m: [m.Shampoo(precond_freq=1, beta=0.9, max_dim=12), m.LR(1e-2)],
    "shampoo_no_merge_power": lambda m: [m.Shampoo(precond_freq=2, merge_small=False, matrix_power=-0.5), m.LR(1e-2)],
    "shampoo_svd_reg": lambda m: [m.Shampoo(precond_freq=3, reg=1e-4, matrix_power_method="svd"), m.LR(1e-2)],
    "shampoo_eigh": lambda m: [m.Shampoo(precond_freq=2, matrix_power_method="eigh"), m.LR(1e-2)],
    # torchzero 0.4.4 drops `inner`'s output when merge_small=True; with merge_small=False it uses it
    "shampoo_inner_ex54_no_merge": lambda m: [m.Shampoo(beta=0.999, merge_small=False, inner=m.EMA(0.9)),
                                              m.Debias(0.9, 0.999), m.LR(1e-3)],
    "shampoo_no_debias": lambda m: [m.Shampoo(beta=0.95, beta_debias=False, precond_freq=1), m.LR(1e-2)],
    "fma": lambda m: [m.FullMatrixAdagrad(), m.LR(1e-2)],
    "fma_ex18": lambda m: [m.FullMatrixAdagrad(beta=0.999, inner=m.EMA(0.9)), m.Debias(0.9, 0.999), m.LR(1e-2)],
    "fma_per_param_zeros": lambda m: [m.FullMatrixAdagrad(concat_params=False, precond_freq=3, init="zeros",
                                                          reg=1e-6), m.LR(1e-2)],
    "fma_ggt_init_power": lambda m: [m.FullMatrixAdagrad(init="GGT", matrix_power=-1.0, reg=1e-3, beta=0.9,
                                                         beta_debias=False), m.LR(1e-3)],
    "fma_accumulator_tfm": lambda m: [m.FullMatrixAdagrad(accumulator_tfm=m.Mul(2.0)), m.LR(1e-2)],
    "soap": lambda m: [m.SOAP(precond_freq=3), m.LR(1e-2)],
    "soap_defaults": lambda m: [m.SOAP(), m.LR(1e-2)],
    "soap_merge_unprojected_ema": lambda m: [m.SOAP(precond_freq=2, merge_small=True, max_dim=7,
                                                    proj_exp_avg=False), m.LR(1e-2)],
    "soap_inner_no_1d": lambda m: [m.SOAP(precond_freq=2, precondition_1d=False, inner=m.EMA(0.5)), m.LR(1e-2)],
    "soap_sum_nodebias_alpha": lambda m: [m.SOAP(0.9, 0.99, shampoo_beta=None, debias=False, alpha=0.5,
                                                 eps=1e-6), m.LR(1e-2)],
    "soapbasis_adam": lambda m: [m.SOAPBasis(m.Adam(0.9, 0.95), precond_freq=2), m.LR(1e-2)],
    "soapbasis_chain_inner": lambda m: [m.SOAPBasis([m.EMA(0.9), m.Adam(0.95, 0.95, amsgrad=True)], precond_freq=3,
                                                    merge_small=False, inner=m.EMA(0.5)), m.LR(1e-2)],
    "ggt": lambda m: [m.GGT(history_size=5), m.LR(1e-2)],
    "ggt_ex19": lambda m: [m.GGT(inner=m.EMA()), m.Debias(0.9, 0.999), m.LR(0.01)],
    "ggt_per_param_rdamping_truncate": lambda m: [m.GGT(history_size=4, update_freq=2, concat_params=False,
                                                        rdamping=0.1, truncate=3), m.LR(1e-2)],
    "ggt_power_tol": lambda m: [m.GGT(history_size=3, eig_tol=1e-3, damping=1e-2, matrix_power=-1.0), m.LR(1e-3)],
    "ggtbasis_adam": lambda m: [m.GGTBasis(m.Adam(0.9, 0.95), history_size=6), m.LR(1e-2)],
    "ggtbasis_ex21": lambda m: [m.GGTBasis([m.FullMatrixAdagrad(beta=0.99, inner=m.EMA(0.9, debias=True))],
                                           history_size=5), m.LR(1e-3)],
    "ggtbasis_ema_inner_freq": lambda m: [m.GGTBasis(m.EMA(0.8), history_size=4, update_freq=2, inner=m.EMA(0.5),
                                                     approx_sq_reproject=True), m.LR(1e-2)],
}


@pytest.mark.parametrize("name", list(CASES))
def test_trajectory_matches_torchzero(name: str) -> None:
    ours, n_ours = trajectory(tz, CASES[name])
    theirs, n_theirs = trajectory(tzo, CASES[name])
    assert torch.isfinite(theirs).all()
    assert (theirs[-1] - theirs[0]).abs().max() > 1e-6, "the reference did not move: the case tests nothing"
    for i, (a, e) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL, msg=lambda msg, i=i: f"step {i + 1}: {msg}")
    assert n_ours <= n_theirs


def test_ggt_basis_optimizer_object_matches_torchzero() -> None:
    """``basis_optimizer`` takes torchzero's low-rank-eigenbasis optimizer objects (plain Python)."""
    ours, _ = trajectory(tz, lambda m: [m.GGT(history_size=4, basis_optimizer=tzo.m.lre.EMA(0.8)), m.LR(1e-2)])
    theirs, _ = trajectory(tzo, lambda m: [m.GGT(history_size=4, basis_optimizer=tzo.m.lre.EMA(0.8)), m.LR(1e-2)])
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------- deliberate differences
def test_shampoo_inner_is_used_with_merge_small() -> None:
    """torchzero 0.4.4 preconditions the raw update when merge_small=True and ignores ``inner``; ours
    preconditions ``inner``'s output, so with merging or without the result is the same here (Net's
    shapes have no dims to merge for ``max_dim=2``)."""
    merged, _ = trajectory(tz, lambda m: [m.Shampoo(beta=0.999, max_dim=2, inner=m.EMA(0.9)), m.LR(1e-3)])
    plain, _ = trajectory(tz, lambda m: [m.Shampoo(beta=0.999, max_dim=2, merge_small=False, inner=m.EMA(0.9)),
                                         m.LR(1e-3)])
    no_inner, _ = trajectory(tz, lambda m: [m.Shampoo(beta=0.999, max_dim=2), m.LR(1e-3)])
    torch.testing.assert_close(merged, plain, rtol=0, atol=0)
    assert not torch.allclose(merged, no_inner)


def test_shampoo_dim_without_factor_and_single_element_param() -> None:
    """A dim of size >= max_dim gets no factor (torchzero 0.4.4 fails there); a tensor with no
    preconditioned dim gets diagonal Adagrad (torchzero leaves a 1-element tensor unpreconditioned)."""
    w = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    opt = tz.Optimizer([w, b], tz.m.Shampoo(merge_small=False, max_dim=6, precond_freq=1), tz.m.LR(1.0))
    loss = (w**2).sum() + 3 * (b**2).sum()
    loss.backward()
    gw, gb = w.grad.clone(), b.grad.clone()
    w0, b0 = w.detach().clone(), b.detach().clone()
    opt.step()
    A = torch.eye(4, dtype=torch.float64) + gw @ gw.T
    L, Q = torch.linalg.eigh(A + 1e-12 * torch.eye(4, dtype=torch.float64))
    P = Q @ torch.diag(L ** -0.25) @ Q.T
    torch.testing.assert_close(w0 - w.detach(), P @ gw, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(b0 - b.detach(), gb / (gb.abs() + 1e-8), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------- worked examples
def _reduces_loss(make: Callable[[Any], list], steps: int = 30) -> None:
    model, x, _ = problem(1)
    y = torch.stack([torch.sin(x[:, :4].sum(1)), torch.cos(x[:, 4:].sum(1))], 1)  # a learnable target
    opt = tz.Optimizer(model.parameters(), *make(tz.m))
    _, losses = run(opt, model, x, y, steps)
    assert all(torch.isfinite(torch.tensor(losses)))
    # the documented learning rates are small, so the decrease over a short run is small but strict
    assert losses[-1] < 0.998 * losses[0], losses


def _need(*names: str) -> None:
    for n in names:
        if not hasattr(tz.m, n):
            pytest.skip(ISSUE7)


def _laprop(m: Any) -> tuple:
    return (m.RMSprop(0.95), m.Debias(beta1=None, beta2=0.95), m.EMA(0.95), m.Debias(beta1=0.95, beta2=None))


EXAMPLES: dict[str, tuple[tuple[str, ...], Callable[[Any], list]]] = {
    "EX-18": ((), lambda m: [m.FullMatrixAdagrad(beta=0.999, inner=m.EMA(0.9)), m.Debias(0.9, 0.999), m.LR(1e-2)]),
    "EX-19": ((), lambda m: [m.GGT(inner=m.EMA()), m.Debias(0.9, 0.999), m.LR(0.01)]),
    "EX-20": (("ClipNormByEMA",), lambda m: [m.GGT(inner=m.EMA()), m.Debias(0.9, 0.999),
                                             m.ClipNormByEMA(max_ema_growth=1.2), m.LR(0.01)]),
    "EX-21": ((), lambda m: [m.GGTBasis([m.FullMatrixAdagrad(beta=0.99, inner=m.EMA(0.9, debias=True))]),
                             m.LR(1e-3)]),
    "EX-22": (("RMSprop",), lambda m: [m.GGTBasis(_laprop(m)), m.LR(1e-3)]),
    "EX-45": (("NormalizeByEMA",), lambda m: [m.SOAP(), m.NormalizeByEMA(max_ema_growth=1.2), m.LR(1e-2)]),
    "EX-46": (("MARSCorrection",), lambda m: [m.SOAPBasis([m.MARSCorrection(0.95), m.Adam(0.95, 0.95, amsgrad=True)]),
                                              m.LR(1e-3)]),
    "EX-47": (("RMSprop",), lambda m: [m.SOAPBasis(_laprop(m)), m.LR(1e-3)]),
    "EX-54": ((), lambda m: [m.Shampoo(beta=0.999, inner=m.EMA(0.9)), m.Debias(0.9, 0.999), m.LR(1e-3)]),
}
# the documentation's learning rates are small: the runs with 1e-3 get more steps
EXAMPLE_STEPS = {"EX-21": 80, "EX-22": 80, "EX-46": 80, "EX-47": 80, "EX-54": 80}


@pytest.mark.parametrize("ex", list(EXAMPLES))
def test_worked_example_reduces_loss(ex: str) -> None:
    needs, make = EXAMPLES[ex]
    _need(*needs)
    _reduces_loss(make, EXAMPLE_STEPS.get(ex, 30))


# ---------------------------------------------------------------------------------------- state dict
STATE_CASES = ["shampoo_freq1_beta_maxdim", "fma_ex18", "soap", "soapbasis_adam", "ggt_ex19", "ggtbasis_ex21"]


@pytest.mark.parametrize("name", STATE_CASES)
def test_state_dict_round_trip_continues_the_run(name: str) -> None:
    make = CASES[name]
    model, x, y = problem()
    full, _ = run(tz.Optimizer(model.parameters(), *make(tz.m)), model, x, y, 10)

    model, x, y = problem()
    opt = tz.Optimizer(model.parameters(), *make(tz.m))
    first, _ = run(opt, model, x, y, 5)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    model2, _, _ = problem(7)
    with torch.no_grad():
        for p, q in zip(model2.parameters(), model.parameters(), strict=True):
            p.copy_(q)
    opt2 = tz.Optimizer(model2.parameters(), *make(tz.m))
    opt2.load_state_dict(torch.load(buf, weights_only=False))
    second, _ = run(opt2, model2, x, y, 5)
    torch.testing.assert_close(torch.cat([first, second]), full, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- bad input
BAD: list[tuple[Callable[[], Any], type, str]] = [
    (lambda: tz.m.Shampoo(precond_freq=0), ValueError, "precond_freq"),
    (lambda: tz.m.Shampoo(precond_freq=2.5), TypeError, "precond_freq"),
    (lambda: tz.m.Shampoo(matrix_power_method="cholesky"), ValueError, "matrix_power_method"),
    (lambda: tz.m.Shampoo(beta=1.5), ValueError, "beta"),
    (lambda: tz.m.Shampoo(max_dim=0), ValueError, "max_dim"),
    (lambda: tz.m.Shampoo(reg=-1.0), ValueError, "reg"),
    (lambda: tz.m.SOAP(beta1=2.0), ValueError, "beta1"),
    (lambda: tz.m.SOAP(eps="small"), TypeError, "eps"),
    (lambda: tz.m.SOAP(shampoo_beta=-0.1), ValueError, "shampoo_beta"),
    (lambda: tz.m.SOAPBasis(None), TypeError, "basis_opt"),
    (lambda: tz.m.SOAPBasis(tz.m.Adam(), precond_freq=0), ValueError, "precond_freq"),
    (lambda: tz.m.GGT(history_size=0), ValueError, "history_size"),
    (lambda: tz.m.GGT(truncate=0), ValueError, "truncate"),
    (lambda: tz.m.GGT(basis_optimizer="adam"), TypeError, "basis_optimizer"),
    (lambda: tz.m.GGTBasis(None), TypeError, "basis_opt"),
    (lambda: tz.m.GGTBasis(tz.m.Adam(), update_freq=0), ValueError, "update_freq"),
    (lambda: tz.m.FullMatrixAdagrad(init="eye"), ValueError, "init"),
    (lambda: tz.m.FullMatrixAdagrad(matrix_power=None), TypeError, "matrix_power"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_arguments_name_the_argument(i: int) -> None:
    make, exc, arg = BAD[i]
    with pytest.raises(exc, match=f"`{arg}`"):
        make()


def test_zero_gradient_gives_finite_updates() -> None:
    """A zero gradient (a rank-0 window, an all-zero factor) leaves no NaN in the parameters."""
    for make in (lambda m: [m.Shampoo(precond_freq=1)], lambda m: [m.SOAP()], lambda m: [m.GGT()],
                 lambda m: [m.FullMatrixAdagrad()], lambda m: [m.GGTBasis(m.Adam())]):
        w = torch.ones(3, 4, dtype=torch.float64, requires_grad=True)
        opt = tz.Optimizer([w], *make(tz.m), tz.m.LR(0.1))
        for _ in range(3):
            w.grad = torch.zeros_like(w)
            opt.step()
        assert torch.isfinite(w).all()
