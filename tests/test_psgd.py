"""PSGD preconditioners: trajectories equal torchzero 0.4.4's, analytic fits, examples, errors, state.

PSGD draws its random vectors (Hessian-vector probes, damping noise, subspace-iteration starts,
update/balance coin flips) from torch's default generator; tzfast draws the same numbers in the
same order, so with the same seed the trajectories agree to rounding (float64; the dense and
low-rank modules bit for bit, the Kronecker ones within a few ulp because the contractions are
ordered differently).

torchzero's Kronecker modules contract with ``opt_einsum``, which this environment lacks; when it
is missing, a small stand-in that runs the same contraction strings through ``torch.einsum`` is
installed below (it was checked against the real package: identical trajectories).
"""
from __future__ import annotations

import io
import string
import sys
import types
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_traj_close, flat, make_problem, trajectory
from torch import nn

import tzfast as tz
from tzfast.modules.psgd import _ops

pytestmark = pytest.mark.usefixtures("single_thread")


def _install_opt_einsum_stand_in() -> None:
    try:
        import opt_einsum  # noqa: F401
        return
    except ImportError:
        pass
    mod = types.ModuleType("opt_einsum")
    base = string.ascii_lowercase + string.ascii_uppercase

    def get_symbol(i: int) -> str:
        return base[i] if i < 52 else chr(i + 140)

    def contract_expression(subscripts: str, *shapes: Any) -> Any:
        letters = iter(string.ascii_letters)
        mapping: dict[str, str] = {}
        expr = "".join(c if c in ",->" else mapping.setdefault(c, next(letters)) for c in subscripts)
        return lambda *operands: torch.einsum(expr, *operands)

    mod.get_symbol = get_symbol  # type: ignore[attr-defined]
    mod.contract_expression = contract_expression  # type: ignore[attr-defined]
    sys.modules["opt_einsum"] = mod


_install_opt_einsum_stand_in()
import torchzero as tzo  # noqa: E402

# float64: the dense and LRA modules agree bitwise; the Kronecker contractions differ in order (~1e-14)
RTOL, ATOL = 1e-10, 1e-12
STEPS = 12

CASES: dict[str, Any] = {
    "dense": lambda m: [m.PSGDDenseNewton(), m.LR(1e-2)],
    "dense_init_scale_clip": lambda m: [m.PSGDDenseNewton(init_scale=0.5, grad_clip_max_norm=0.05), m.LR(1e-1)],
    "dense_qeq": lambda m: [m.PSGDDenseNewton(dQ="QEQ"), m.LR(1e-2)],
    "dense_qep": lambda m: [m.PSGDDenseNewton(dQ="QEP"), m.LR(1e-2)],
    "dense_eq": lambda m: [m.PSGDDenseNewton(dQ="EQ"), m.LR(1e-2)],
    "dense_quad": lambda m: [m.PSGDDenseNewton(dQ="QUAD", lr_preconditioner=0.3, betaL=0.5), m.LR(1e-2)],
    "dense_quad4p": lambda m: [m.PSGDDenseNewton(dQ="QUAD4P"), m.LR(1e-2)],
    "dense_q0p5_alias_damping": lambda m: [m.PSGDDenseNewton(dQ="Q0p5EQ1p5", damping=1e-3), m.LR(1e-2)],
    "dense_fd_central": lambda m: [m.PSGDDenseNewton(hvp_method="fd_central", h=1e-4), m.LR(1e-2)],
    "dense_fd_forward_rademacher": lambda m: [m.PSGDDenseNewton(hvp_method="fd_forward", distribution="rademacher"),
                                              m.LR(1e-2)],
    "dense_update_probability": lambda m: [m.PSGDDenseNewton(update_probability=0.4), m.LR(1e-2)],
    "kron_newton": lambda m: [m.PSGDKronNewton(), m.LR(1e-2)],
    "kron_newton_q0p5_balance": lambda m: [m.PSGDKronNewton(dQ="Q0p5EQ1p5", init_scale=1.0, balance_probability=0.5),
                                           m.LR(1e-2)],
    "kron_newton_quad4p_clip": lambda m: [m.PSGDKronNewton(dQ="QUAD4P", grad_clip_max_amp=0.3), m.LR(1e-2)],
    "kron_newton_small_dims": lambda m: [m.PSGDKronNewton(max_dim=4, max_skew=2.0, update_probability=0.5),
                                         m.LR(1e-2)],
    "kron_whiten": lambda m: [m.PSGDKronWhiten(), m.LR(1e-2)],
    "kron_whiten_qeq": lambda m: [m.PSGDKronWhiten(dQ="QEQ", balance_probability=0.5), m.LR(1e-2)],
    "kron_whiten_qep": lambda m: [m.PSGDKronWhiten(dQ="QEP"), m.LR(1e-2)],
    "kron_whiten_eq": lambda m: [m.PSGDKronWhiten(dQ="EQ"), m.LR(1e-2)],
    "kron_whiten_quad_clip": lambda m: [m.PSGDKronWhiten(dQ="QUAD", grad_clip_max_amp=0.5), m.LR(1e-2)],
    "kron_whiten_quad4p": lambda m: [m.PSGDKronWhiten(dQ="QUAD4P", init_scale=0.3), m.LR(1e-2)],
    "kron_whiten_after_ema": lambda m: [m.EMA(0.9), m.PSGDKronWhiten(update_probability=0.5), m.LR(1e-2)],
    "lra_newton": lambda m: [m.PSGDLRANewton(rank=3), m.LR(1e-2)],
    "lra_newton_init_clip_prob": lambda m: [m.PSGDLRANewton(init_scale=0.3, grad_clip_max_norm=0.05,
                                                            update_probability=0.5, hvp_method="batched_autograd"),
                                            m.LR(1e-1)],
    "lra_whiten": lambda m: [m.PSGDLRAWhiten(rank=3), m.LR(1e-2)],
    "lra_whiten_tensorwise_clip": lambda m: [m.PSGDLRAWhiten(rank=2, concat_params=False, grad_clip_max_amp=0.1),
                                             m.LR(1e-2)],
    "lra_whiten_inner": lambda m: [m.PSGDLRAWhiten(init_scale=1.0, inner=m.EMA(0.9)), m.LR(1e-2)],
}
NO_CLOSURE = ["kron_whiten", "kron_whiten_after_ema", "lra_whiten", "lra_whiten_tensorwise_clip"]


@pytest.mark.parametrize("name", list(CASES))
def test_psgd_matches_torchzero(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchzero warns about on-the-fly initial scales
        expected = trajectory(tzo, CASES[name], steps=STEPS, dtype=torch.float64)
    actual = trajectory(tz, CASES[name], steps=STEPS, dtype=torch.float64)
    assert (expected[-1] - expected[0]).abs().max() > 1e-3, "the test problem does not move"
    assert_traj_close(actual, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", NO_CLOSURE)
def test_whitening_psgd_matches_torchzero_without_closure(name: str) -> None:
    expected = trajectory(tzo, CASES[name], steps=STEPS, dtype=torch.float64, closure=False)
    actual = trajectory(tz, CASES[name], steps=STEPS, dtype=torch.float64, closure=False)
    assert_traj_close(actual, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("dQ", ["QEP", "EQ", "QEQ", "QUAD"])
def test_kron_newton_geometries_match_torchzero_rules(dQ: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchzero 0.4.4's PSGDKronNewton pairs these four names with the wrong update rules (QEP runs
    QUAD's, EQ QEP's, QEQ EQ's, QUAD QEQ's; three of them then fail to unpack their expressions).
    We run the rule each name stands for; the oracle is torchzero's module with the names re-paired."""
    from torchzero.modules.adaptive.psgd import psgd, psgd_kron_newton as kn

    monkeypatch.setattr(kn, "update_precond_kron_newton_quad", psgd.update_precond_kron_newton_qep)  # used for QEP
    monkeypatch.setattr(kn, "update_precond_kron_newton_qep", psgd.update_precond_kron_newton_eq)  # used for EQ
    monkeypatch.setattr(kn, "update_precond_kron_newton_eq", psgd.update_precond_kron_newton_qeq)  # used for QEQ
    monkeypatch.setattr(kn, "update_precond_kron_newton_qeq", psgd.update_precond_kron_newton_quad)  # for QUAD

    def make(m: Any) -> list:
        return [m.PSGDKronNewton(dQ=dQ, balance_probability=0.3), m.LR(1e-2)]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = trajectory(tzo, make, steps=STEPS, dtype=torch.float64)
    assert_traj_close(trajectory(tz, make, steps=STEPS, dtype=torch.float64), expected, rtol=RTOL, atol=ATOL)


def _count_closures(lib: Any, make: Any, steps: int = 4) -> int:
    model, x, y = make_problem(0, torch.float64)
    opt = lib.Optimizer(model.parameters(), *make(lib.m))
    calls = 0

    def closure(backward: bool = True) -> torch.Tensor:
        nonlocal calls
        calls += 1
        loss = F.mse_loss(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return calls


@pytest.mark.parametrize("name", ["dense", "dense_fd_central", "dense_fd_forward_rademacher", "kron_newton",
                                  "lra_newton", "kron_whiten", "lra_whiten"])
def test_psgd_closure_calls_at_most_torchzero(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _count_closures(tzo, CASES[name])
    ours = _count_closures(tz, CASES[name])
    assert ours <= theirs


def test_aliases_are_the_same_classes() -> None:
    assert tz.m.DenseNewton is tz.m.PSGDDenseNewton
    assert tz.m.KronNewton is tz.m.PSGDKronNewton
    assert tz.m.KronWhiten is tz.m.PSGDKronWhiten
    assert tz.m.family_of("PSGDLRAWhiten") == "psgd"


# ----------------------------------------------------------------------------- analytic behaviour
def test_dense_newton_preconditioner_fits_inverse_hessian() -> None:
    """On a fixed quadratic (parameters held still by LR(0)), P = Q^T Q converges to H^{-1}."""
    torch.manual_seed(0)
    n = 5
    M = torch.randn(n, n, dtype=torch.float64)
    H = M @ M.T + n * torch.eye(n, dtype=torch.float64)
    x = torch.randn(n, dtype=torch.float64, requires_grad=True)
    module = tz.m.PSGDDenseNewton(lr_preconditioner=0.2)
    opt = tz.Optimizer([x], module, tz.m.LR(0.0))

    def closure(backward: bool = True) -> torch.Tensor:
        loss = 0.5 * x @ H @ x
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(1500):
        opt.step(closure)
    Q = module.global_state["Q"]
    err = torch.linalg.matrix_norm(Q.T @ Q @ H - torch.eye(n, dtype=torch.float64), ord=2)
    assert err < 0.1


def test_kron_whiten_diagonal_factor_whitens_gradients() -> None:
    """A vector parameter gets a diagonal factor; for gradients g ~ N(0, diag(s^2)), P -> diag(1/s)."""
    torch.manual_seed(0)
    s = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    module = tz.m.PSGDKronWhiten(lr_preconditioner=0.05, betaL=0.99)
    opt = tz.Optimizer([x], module, tz.m.LR(0.0))
    gen = torch.Generator().manual_seed(1)
    for _ in range(3000):
        x.grad = s * torch.randn(4, dtype=torch.float64, generator=gen)
        opt.step()
    q = module.state[x]["Q0"]
    assert module.state[x]["num_factors"] == 1 and q.ndim == 1
    torch.testing.assert_close(q * q * s, torch.ones(4, dtype=torch.float64), rtol=0.25, atol=0)


def test_spd_norm_lower_bound_brackets_spectral_norm() -> None:
    torch.manual_seed(0)
    for n in (3, 20, 64):
        M = torch.randn(n, n, dtype=torch.float64)
        A = M @ M.T
        true = torch.linalg.matrix_norm(A, ord=2)
        est = _ops.spd_norm_lower_bound(A)
        assert est <= true * (1 + 1e-12)
        assert est >= 0.9 * true


def test_procrustes_step_moves_towards_symmetric() -> None:
    torch.manual_seed(0)
    Q = torch.eye(6, dtype=torch.float64) + 0.2 * torch.randn(6, 6, dtype=torch.float64)
    before = torch.linalg.matrix_norm(Q - Q.T)
    for _ in range(20):
        _ops.procrustes_step_(Q)
    assert torch.linalg.matrix_norm(Q - Q.T) < 0.1 * before


def test_kron_factor_shapes_follow_max_dim_and_max_skew() -> None:
    assert _ops.kron_factor_shapes((), 10_000, 1.0) == [()]
    assert _ops.kron_factor_shapes((7, 5), 10_000, 1.0) == [(7,), (5, 5)]  # 49 > 35: diagonal
    assert _ops.kron_factor_shapes((6, 6), 10_000, 1.0) == [(6, 6), (6, 6)]
    assert _ops.kron_factor_shapes((6, 6), 5, 1.0) == [(6,), (6,)]
    assert _ops.kron_factor_shapes((8,), 10_000, 1.0) == [(8,)]


# ----------------------------------------------------------------------------- worked examples
class _SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, 8)
        self.l2 = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(x)))


def _run_example(lib: Any, make: Any, steps: int = 40) -> tuple[list[float], torch.Tensor]:
    torch.manual_seed(0)
    model = _SmallNet()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, :1] * x[:, 1:2]).sin()
    opt = lib.Optimizer(model.parameters(), *make(lib.m))
    losses = []

    def closure(backward: bool = True) -> torch.Tensor:
        loss = F.mse_loss(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(steps):
        losses.append(float(opt.step(closure).detach()))
    return losses, flat(model.parameters())


EXAMPLES = {
    "EX-39": lambda m: [m.DenseNewton(inner=m.EMA(0.9)), m.LR(1e-3)],
    "EX-40": lambda m: [m.KronNewton(inner=m.EMA(0.9)), m.LR(1e-3)],
    "EX-41": lambda m: [m.KronWhiten(inner=m.EMA(0.9)), m.LR(1e-3)],
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_worked_example_reduces_loss_and_matches_torchzero(name: str) -> None:
    # torchzero's documentation names the classes PSGD*; the short names are aliases here
    def theirs(m: Any) -> list:
        alias = {"EX-39": m.PSGDDenseNewton, "EX-40": m.PSGDKronNewton, "EX-41": m.PSGDKronWhiten}[name]
        return [alias(inner=m.EMA(0.9)), m.LR(1e-3)]

    losses, params = _run_example(tz, EXAMPLES[name], steps=60)
    assert losses[-1] < 0.98 * losses[0]  # LR(1e-3) with normalised PSGD steps: slow but steady
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, expected = _run_example(tzo, theirs, steps=60)
    torch.testing.assert_close(params, expected, rtol=1e-4, atol=1e-6)  # float32 model


# ----------------------------------------------------------------------------- state
@pytest.mark.parametrize("name", ["dense", "kron_newton", "kron_whiten", "lra_newton", "lra_whiten",
                                  "lra_whiten_inner"])
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    model, x, y = make_problem(0, torch.float64)
    opt = tz.Optimizer(model.parameters(), *CASES[name](tz.m))

    def closure_for(o: Any, mdl: nn.Module) -> Any:
        def closure(backward: bool = True) -> torch.Tensor:
            loss = F.mse_loss(mdl(x), y)
            if backward:
                o.zero_grad()
                loss.backward()
            return loss
        return closure

    for _ in range(4):
        opt.step(closure_for(opt, model))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    for _ in range(4):
        opt.step(closure_for(opt, model))
    expected = flat(model.parameters())

    model2, _, _ = make_problem(0, torch.float64)
    model2.load_state_dict(snapshot)
    opt2 = tz.Optimizer(model2.parameters(), *CASES[name](tz.m))
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    torch.set_rng_state(rng)
    for _ in range(4):
        opt2.step(closure_for(opt2, model2))
    torch.testing.assert_close(flat(model2.parameters()), expected, rtol=0, atol=0)


def test_loaded_state_is_not_shared_with_the_source() -> None:
    model, x, y = make_problem(0, torch.float64)
    opt = tz.Optimizer(model.parameters(), tz.m.PSGDDenseNewton(), tz.m.LR(1e-2))
    opt.step(lambda backward=True: F.mse_loss(model(x), y) if not backward else _backward(opt, model, x, y))
    opt2 = tz.Optimizer(model.parameters(), tz.m.PSGDDenseNewton(), tz.m.LR(1e-2))
    opt2.load_state_dict(opt.state_dict())
    assert opt2.flat_modules[0].global_state["Q"].data_ptr() != opt.flat_modules[0].global_state["Q"].data_ptr()


def _backward(opt: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = F.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    return loss


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, arg", [
    (lambda: tz.m.PSGDDenseNewton(dQ="QQ"), "dQ"),
    (lambda: tz.m.PSGDKronNewton(dQ="bad"), "dQ"),
    (lambda: tz.m.PSGDKronWhiten(dQ="quad"), "dQ"),
    (lambda: tz.m.PSGDDenseNewton(hvp_method="exact"), "hvp_method"),
    (lambda: tz.m.PSGDLRANewton(distribution="cauchy"), "distribution"),
    (lambda: tz.m.PSGDKronNewton(update_probability=1.5), "update_probability"),
    (lambda: tz.m.PSGDLRAWhiten(rank=-1), "rank"),
    (lambda: tz.m.PSGDLRANewton(rank=2.5), "rank"),
    (lambda: tz.m.PSGDKronWhiten(max_skew=-1), "max_skew"),
    (lambda: tz.m.PSGDKronNewton(balance_probability=2), "balance_probability"),
    (lambda: tz.m.PSGDDenseNewton(init_scale=0), "init_scale"),
    (lambda: tz.m.PSGDDenseNewton(betaL=1.0), "betaL"),
    (lambda: tz.m.PSGDLRAWhiten(lr_preconditioner=-0.1), "lr_preconditioner"),
    (lambda: tz.m.PSGDKronWhiten(grad_clip_max_amp=0), "grad_clip_max_amp"),
    (lambda: tz.m.PSGDLRAWhiten(grad_clip_max_amp=1.0, grad_clip_max_norm=2.0), "grad_clip_max_norm"),
    (lambda: tz.m.PSGDDenseNewton(h=0), "`h`"),
])
def test_bad_arguments_name_the_argument(make: Any, arg: str) -> None:
    with pytest.raises((ValueError, TypeError), match=arg):
        make()


def test_lra_whiten_accepts_documented_grad_clip_max_norm() -> None:
    m = tz.m.PSGDLRAWhiten(grad_clip_max_norm=0.5)
    assert m.defaults["grad_clip_max_amp"] == 0.5


def test_quad4p_in_half_precision_names_dq() -> None:
    x = torch.randn(3, 3, dtype=torch.float16, requires_grad=True)
    opt = tz.Optimizer([x], tz.m.PSGDKronWhiten(dQ="QUAD4P"), tz.m.LR(1e-2))
    x.grad = torch.randn(3, 3, dtype=torch.float16)
    before = x.detach().clone()
    with pytest.raises(ValueError, match="dQ"):
        opt.step()
    assert torch.equal(x.detach(), before)


@pytest.mark.parametrize("make", [lambda m: m.PSGDDenseNewton(), lambda m: m.PSGDKronNewton(),
                                  lambda m: m.PSGDLRANewton()])
def test_newton_variants_without_closure_say_so(make: Any) -> None:
    model, x, y = make_problem(0, torch.float64)
    opt = tz.Optimizer(model.parameters(), make(tz.m), tz.m.LR(1e-2))
    F.mse_loss(model(x), y).backward()
    before = flat(model.parameters())
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    assert torch.equal(flat(model.parameters()), before)


def test_zero_gradient_gives_finite_update() -> None:
    x = torch.ones(3, 4, dtype=torch.float64, requires_grad=True)
    for module in (tz.m.PSGDKronWhiten(), tz.m.PSGDLRAWhiten()):
        opt = tz.Optimizer([x], module, tz.m.LR(1e-2))
        for _ in range(3):
            x.grad = torch.zeros_like(x)
            opt.step()
        assert torch.isfinite(x.detach()).all()
