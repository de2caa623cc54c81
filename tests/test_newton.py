"""Newton, NewtonCG, NewtonCGSteihaug, NystromPCG, NystromSketchAndSolve and SubspaceNewton.

Differential tests run the same chain with tzfast and torchzero 0.4.4 in float64 on Rosenbrock,
a quadratic with a known matrix and a small MLP (conftest's ``OddNet``) and compare every iterate
and the number of closure evaluations (ours <= torchzero's). The randomized modules draw their
sketches as torchzero does (same generator, same order), so seeded runs are compared too.
The HVP engine is checked against exact products (``scipy.optimize.rosen_hess_prod`` and
``A v``), finite differences within their order, and batched == looped.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch
import torchzero as tzo
from scipy.optimize import rosen_hess_prod
from tests.conftest import assert_traj_close, trajectory

import tzfast as tz

pytestmark = pytest.mark.usefixtures("single_thread")

D64 = torch.float64
A_QUAD = torch.tensor([[4.0, 1.0, 0.5, 0.0], [1.0, 3.0, 0.2, 0.1], [0.5, 0.2, 2.0, 0.3], [0.0, 0.1, 0.3, 1.5]],
                      dtype=D64)
B_QUAD = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=D64)


def rosen(x: torch.Tensor) -> torch.Tensor:
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def quad(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x @ A_QUAD @ x - B_QUAD @ x


def run(lib: Any, make: Callable[[Any], Sequence[Any]], steps: int, fn: Callable = rosen,
        x0: Sequence[float] = (-1.1, 2.5), seed: int = 0) -> tuple[torch.Tensor, int]:
    """Iterates of ``lib.Optimizer([x], *make(lib.m))`` on ``fn`` and the number of closure calls."""
    torch.manual_seed(seed)
    x = torch.nn.Parameter(torch.tensor(x0, dtype=D64))
    opt = lib.Optimizer([x], *make(lib.m))
    calls = [0]

    def closure(backward: bool = True) -> torch.Tensor:
        calls[0] += 1
        loss = fn(x)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(x.detach().clone())
    return torch.stack(out), calls[0]


def compare(make: Callable[[Any], Sequence[Any]], steps: int = 25, rtol: float = 1e-12, atol: float = 1e-12,
            make_tzo: Callable[[Any], Sequence[Any]] | None = None, **kw: Any) -> torch.Tensor:
    ours, n_ours = run(tz, make, steps, **kw)
    ref, n_ref = run(tzo, make_tzo or make, steps, **kw)
    assert_traj_close(ours, ref, rtol=rtol, atol=atol)
    assert n_ours <= n_ref
    return ours


# ----------------------------------------------------------------------------- Newton
NEWTON_CASES = {
    "default": dict(),
    "autograd": dict(hessian_method="autograd"),
    "func": dict(hessian_method="func"),
    "functional_revrev": dict(hessian_method="functional_revrev"),
    "functional_fwdrev": dict(hessian_method="functional_fwdrev"),
    "gfd_forward": dict(hessian_method="gfd_forward"),
    "gfd_central": dict(hessian_method="gfd_central", h=1e-4),
    "fd": dict(hessian_method="fd"),
    "fd_full": dict(hessian_method="fd_full"),
    "damping": dict(damping=1.0),
    "eigval_fn": dict(eigval_fn=lambda L: L.abs().clip(min=1e-4)),
    "eigv_tol_truncate": dict(eigv_tol=1e-6, truncate=2, eigval_fn=torch.abs),
    "precompute_inverse": dict(precompute_inverse=True),
    "use_lstsq": dict(use_lstsq=True),
    "update_freq": dict(update_freq=3),
}


@pytest.mark.parametrize("case", list(NEWTON_CASES))
def test_newton_matches_torchzero_on_rosenbrock(case: str) -> None:
    kw = NEWTON_CASES[case]
    # looser for the finite-difference Hessians: the methods agree, the parameter restore differs
    # (we copy the saved values back, torchzero adds and subtracts the step: last-bit drift)
    rtol = 1e-7 if kw.get("hessian_method", "").startswith(("gfd", "fd")) else 1e-12
    compare(lambda m: [m.Newton(**kw), m.Backtracking()], rtol=rtol, atol=rtol)


def test_newton_matches_torchzero_on_mlp() -> None:
    ours = trajectory(tz, lambda m: [m.Newton(damping=0.1, eigval_fn=lambda L: L.abs()), m.Backtracking()],
                      steps=6, dtype=D64)
    ref = trajectory(tzo, lambda m: [m.Newton(damping=0.1, eigval_fn=lambda L: L.abs()), m.Backtracking()],
                     steps=6, dtype=D64)
    # the MLP's Hessian is ill-conditioned: last-bit differences (one flat vector here, per-tensor
    # sums there) grow to ~1e-8 relative over 6 steps
    assert_traj_close(ours, ref, rtol=1e-6, atol=1e-9)


def test_newton_one_step_solves_quadratic() -> None:
    x, _ = run(tz, lambda m: [m.Newton()], 1, fn=quad, x0=(0.0, 0.0, 0.0, 0.0))
    torch.testing.assert_close(x[0], torch.linalg.solve(A_QUAD, B_QUAD), rtol=1e-12, atol=1e-12)


def test_ex36_nonconvex_newton_converges_on_rosenbrock() -> None:
    x, _ = run(tz, lambda m: [m.Newton(eigval_fn=lambda L: L.abs().clip(min=1e-4)), m.Backtracking()], 60)
    torch.testing.assert_close(x[-1], torch.ones(2, dtype=D64), rtol=0, atol=1e-8)


def test_newton_thoad_raises_not_installed() -> None:
    try:
        import thoad  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("thoad is installed here")
    with pytest.raises(ImportError, match="thoad is not installed"):
        run(tz, lambda m: [m.Newton(hessian_method="thoad")], 1)


@pytest.mark.parametrize("kw", [dict(), dict(precompute_inverse=True), dict(eigval_fn=torch.abs)])
def test_newton_get_H_is_the_hessian(kw: dict) -> None:
    x = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=D64))
    mod = tz.m.Newton(damping=0.5, **kw)
    obj = tz.core.Objective([x], lambda backward=True: _loss_backward(quad(x), x, backward))
    mod.update(obj)
    H = mod.get_H(obj)
    v = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=D64)
    expected = A_QUAD + 0.5 * torch.eye(4, dtype=D64)
    torch.testing.assert_close(H.matvec(v), expected @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(H.solve(v), torch.linalg.solve(expected, v), rtol=1e-10, atol=1e-12)


def _loss_backward(loss: torch.Tensor, x: torch.Tensor, backward: bool) -> torch.Tensor:
    if backward:
        x.grad = None
        loss.backward()
    return loss


# ----------------------------------------------------------------------------- Newton-CG
NEWTON_CG_CASES = {
    "default": (dict(), None),
    "batched_autograd": (dict(hvp_method="batched_autograd"), None),
    "fd_forward": (dict(hvp_method="fd_forward"), None),
    "forward_alias": (dict(hvp_method="forward"), dict(hvp_method="fd_forward")),
    "central_alias": (dict(hvp_method="central"), dict(hvp_method="fd_central")),
    "truncated_warm": (dict(maxiter=1, warm_start=True, warm_beta=0.5), None),
    "warm_start": (dict(maxiter=2, warm_start=True), None),
    "minres": (dict(solver="minres"), None),
    "npc_terminate": (dict(npc_terminate=True, miniter=0, tol=1e-4), None),
}


@pytest.mark.parametrize("case", list(NEWTON_CG_CASES))
def test_newton_cg_matches_torchzero_on_rosenbrock(case: str) -> None:
    ours, theirs = NEWTON_CG_CASES[case]
    theirs = ours if theirs is None else theirs
    # 20 steps: closer to the minimum, CG's absolute tolerance (1e-8) meets last-bit differences
    # and the number of CG iterations (hence closure calls) may differ by one either way
    compare(lambda m: [m.NewtonCG(**ours), m.Backtracking()], steps=20,
            make_tzo=lambda m: [m.NewtonCG(**theirs), m.Backtracking()], rtol=1e-10, atol=1e-12)


def test_newton_cg_matches_torchzero_on_mlp() -> None:
    ours = trajectory(tz, lambda m: [m.NewtonCG(maxiter=10), m.Backtracking()], steps=8, dtype=D64)
    ref = trajectory(tzo, lambda m: [m.NewtonCG(maxiter=10), m.Backtracking()], steps=8, dtype=D64)
    # truncated CG on an ill-conditioned Hessian: dot products over one flat vector (here) and
    # sums of per-tensor dots (torchzero) differ in the last bits, CG amplifies that to ~1e-7
    assert_traj_close(ours, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kw", [dict(), dict(hvp_method="fd_forward", nplus=2.0, init=0.1, max_history=2),
                                dict(solver="minres"), dict(maxiter=1, miniter=0), dict(boundary_tol=None)])
def test_newton_cg_steihaug_matches_torchzero_on_rosenbrock(kw: dict) -> None:
    compare(lambda m: [m.NewtonCGSteihaug(**kw)], steps=30, rtol=1e-9, atol=1e-12)


def test_newton_cg_steihaug_autograd_rejects_and_retries() -> None:
    # torchzero 0.4.4 raises "modified by an inplace operation" here (second attempt of a step)
    x, _ = run(tz, lambda m: [m.NewtonCGSteihaug(hvp_method="autograd")], 60)
    ref, _ = run(tz, lambda m: [m.NewtonCGSteihaug(hvp_method="fd_central")], 60)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x[-1], torch.ones(2, dtype=D64), rtol=0, atol=1e-6)
    torch.testing.assert_close(x[-1], ref[-1], rtol=0, atol=1e-6)


def test_newton_cg_quadratic_exact_in_n_steps_of_cg() -> None:
    x, _ = run(tz, lambda m: [m.NewtonCG(tol=1e-14)], 1, fn=quad, x0=(0.0, 0.0, 0.0, 0.0))
    torch.testing.assert_close(x[0], torch.linalg.solve(A_QUAD + 1e-8 * torch.eye(4, dtype=D64), B_QUAD),
                               rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- Nyström
@pytest.mark.parametrize("kw", [dict(rank=4, seed=1), dict(rank=2, seed=1, reg=1e-3), dict(rank=3, reg=None),
                                dict(rank=4, hvp_method="autograd", seed=2), dict(rank=4, hvp_method="fd_central"),
                                dict(rank=4, seed=1, damping=0.1, rdamping=0.0)])
def test_nystrom_sketch_and_solve_matches_torchzero_on_quadratic(kw: dict) -> None:
    rtol = 1e-7 if kw.get("hvp_method", "").startswith("fd") else 1e-10
    compare(lambda m: [m.NystromSketchAndSolve(**kw), m.LR(0.5)], steps=10, fn=quad, x0=(1.0, -1.0, 2.0, 0.5),
            rtol=rtol, atol=rtol)


@pytest.mark.parametrize("kw", [dict(rank=4, seed=1), dict(rank=2, seed=1), dict(rank=1, hvp_method="autograd"),
                                dict(rank=2, seed=3, update_freq=3), dict(rank=2, hvp_method="fd_central")])
def test_nystrom_pcg_iterates_are_regularized_newton_steps(kw: dict) -> None:
    # Not compared with torchzero: 0.4.4 builds its preconditioner from mismatched sketches (the raw
    # Gaussian matrix with the product of the orthogonalized one), and with maxiter=n its PCG stops
    # short of the solution (errors up to 0.2 on this problem). Ours must take the exact step
    # x <- x - 0.5 (A + reg I)^-1 (A x - b) every time.
    x, calls = run(tz, lambda m: [m.NystromPCG(**kw), m.LR(0.5)], 8, fn=quad, x0=(1.0, -1.0, 2.0, 0.5))
    M = A_QUAD + 1e-6 * torch.eye(4, dtype=D64)
    cur = torch.tensor([1.0, -1.0, 2.0, 0.5], dtype=D64)
    tol = 1e-6 if kw.get("hvp_method") == "fd_central" else 1e-9
    for i in range(8):
        cur = cur - 0.5 * torch.linalg.solve(M, A_QUAD @ cur - B_QUAD)
        torch.testing.assert_close(x[i], cur, rtol=tol, atol=tol, msg=lambda m, i=i: f"step {i + 1}: {m}")
    _, calls_ref = run(tzo, lambda m: [m.NystromPCG(**kw), m.LR(0.5)], 8, fn=quad, x0=(1.0, -1.0, 2.0, 0.5))
    assert calls <= calls_ref


def test_nystrom_full_rank_solves_quadratic_in_one_step() -> None:
    for make in (lambda m: [m.NystromSketchAndSolve(rank=4, reg=None, seed=0)],
                 lambda m: [m.NystromPCG(rank=2, reg=0.0, seed=0)]):
        x, _ = run(tz, make, 1, fn=quad, x0=(0.0, 0.0, 0.0, 0.0))
        torch.testing.assert_close(x[0], torch.linalg.solve(A_QUAD, B_QUAD), rtol=1e-8, atol=1e-8)


def test_nystrom_sketch_uses_one_batched_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    real = torch.autograd.grad

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(bool(kwargs.get("is_grads_batched", False)))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    run(tz, lambda m: [m.NystromSketchAndSolve(rank=4, seed=0)], 1, fn=quad, x0=(1.0, -1.0, 2.0, 0.5))
    assert calls.count(True) == 1  # the 4 products: one vectorised pass, not a loop


def test_nystrom_get_H_matches_approximation() -> None:
    x = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=D64))
    mod = tz.m.NystromSketchAndSolve(rank=4, seed=0)
    obj = tz.core.Objective([x], lambda backward=True: _loss_backward(quad(x), x, backward))
    assert mod.get_H(obj).solve(B_QUAD).equal(B_QUAD)  # identity before the first update
    mod.update(obj)
    torch.testing.assert_close(mod.get_H(obj).to_tensor(), A_QUAD, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- SubspaceNewton
@pytest.mark.parametrize("sketch_type", ["orthonormal", "common_directions", "mixed", "rademacher", "rows", "topk"])
def test_subspace_newton_matches_torchzero_on_rosenbrock(sketch_type: str) -> None:
    compare(lambda m: [m.SubspaceNewton(sketch_size=2, sketch_type=sketch_type, seed=3), m.Backtracking()], steps=30)


@pytest.mark.parametrize("kw", [dict(sketch_size=1, sketch_type="rows", seed=3, hvp_method="fd_forward"),
                                dict(sketch_size=2, eigval_fn=torch.abs, damping=1e-3),
                                dict(sketch_size=2, hvp_method="autograd", precompute_inverse=True),
                                dict(sketch_size=2, use_lstsq=True, update_freq=2)])
def test_subspace_newton_options_match_torchzero(kw: dict) -> None:
    compare(lambda m: [m.SubspaceNewton(**kw), m.Backtracking()], steps=30, rtol=1e-10, atol=1e-12)


def test_subspace_newton_matches_torchzero_on_mlp() -> None:
    make = lambda m: [m.SubspaceNewton(sketch_size=8, sketch_type="orthonormal", seed=0, damping=1e-2,  # noqa: E731
                                       eigval_fn=torch.abs), m.Backtracking()]
    # ill-conditioned sketched Hessian: last-bit differences grow to ~1e-9 relative in 6 steps
    assert_traj_close(trajectory(tz, make, steps=6, dtype=D64), trajectory(tzo, make, steps=6, dtype=D64),
                      rtol=1e-7, atol=1e-9)


def test_subspace_newton_H_tfm_replaces_the_solve() -> None:
    x, _ = run(tz, lambda m: [m.SubspaceNewton(sketch_size=4, sketch_type="orthonormal", seed=0,
                                                H_tfm=lambda H, g: (torch.linalg.inv(H), True))],
               1, fn=quad, x0=(0.0, 0.0, 0.0, 0.0))
    torch.testing.assert_close(x[0], torch.linalg.solve(A_QUAD, B_QUAD), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- the HVP engine
def _objective(fn: Callable, x0: Sequence[float]) -> tuple[torch.nn.Parameter, Any]:
    x = torch.nn.Parameter(torch.tensor(x0, dtype=D64))
    return x, tz.core.Objective([x], lambda backward=True: _loss_backward(fn(x), x, backward))


@pytest.mark.parametrize("method,tol", [("batched_autograd", 1e-12), ("autograd", 1e-12), ("fd_forward", 1e-1),
                                        ("forward", 1e-1), ("fd_central", 1e-3), ("central", 1e-3)])
def test_every_hvp_method_against_rosen_hess_prod(method: str, tol: float) -> None:
    x0, v = [-1.1, 2.5], np.array([0.3, -0.7])
    x, obj = _objective(rosen, x0)
    Hv, _ = obj.hessian_vector_product([torch.tensor(v)], rgrad=None, at_x0=True, hvp_method=method, h=1e-4)
    torch.testing.assert_close(Hv[0], torch.tensor(rosen_hess_prod(np.array(x0), v)), rtol=tol, atol=tol)
    assert x.detach().tolist() == x0  # restored bitwise


@pytest.mark.parametrize("method", ["batched_autograd", "autograd", "fd_forward", "fd_central"])
def test_every_hvp_method_exact_on_quadratic_and_batched_equals_looped(method: str) -> None:
    _, obj = _objective(quad, [0.1, 0.2, -0.3, 0.4])
    V = torch.randn(4, 3, dtype=D64, generator=torch.Generator().manual_seed(0))
    HV, _ = obj.hessian_matrix_product(V, rgrad=None, at_x0=True, hvp_method=method, h=1e-3, retain_graph=True)
    torch.testing.assert_close(HV, A_QUAD @ V, rtol=1e-8, atol=1e-8)  # FD of a linear gradient is exact
    cols = [obj.hessian_vector_product([V[:, i]], rgrad=None, at_x0=True, hvp_method=method, h=1e-3,
                                       retain_graph=True)[0][0]
            for i in range(3)]
    torch.testing.assert_close(HV, torch.stack(cols, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method,order", [("fd_forward", 1), ("fd_central", 2)])
def test_fd_hvp_error_shrinks_with_its_order(method: str, order: int) -> None:
    x0, v = np.array([-1.1, 2.5]), np.array([0.3, -0.7])
    exact = rosen_hess_prod(x0, v)
    errors = []
    for h in (1e-2, 1e-3):
        _, obj = _objective(rosen, list(x0))
        Hv, _ = obj.hessian_vector_product([torch.tensor(v)], rgrad=None, at_x0=True, hvp_method=method, h=h)
        errors.append(float(np.linalg.norm(Hv[0].numpy() - exact)))
    ratio = errors[0] / errors[1]
    assert 10 ** order * 0.5 < ratio < 10 ** order * 2


# ----------------------------------------------------------------------------- bad input
ALL_MODULES = {
    "Newton": lambda: tz.m.Newton(), "NewtonCG": lambda: tz.m.NewtonCG(),
    "NewtonCGSteihaug": lambda: tz.m.NewtonCGSteihaug(), "NystromPCG": lambda: tz.m.NystromPCG(rank=2),
    "NystromSketchAndSolve": lambda: tz.m.NystromSketchAndSolve(rank=2),
    "SubspaceNewton": lambda: tz.m.SubspaceNewton(sketch_size=2),
}


@pytest.mark.parametrize("name", list(ALL_MODULES))
def test_second_order_module_without_closure_raises_and_leaves_params(name: str) -> None:
    x = torch.nn.Parameter(torch.tensor([-1.1, 2.5], dtype=D64))
    opt = tz.Optimizer([x], ALL_MODULES[name](), tz.m.LR(0.1))
    rosen(x).backward()
    with pytest.raises(RuntimeError, match=f"{name} needs a closure"):
        opt.step()
    assert x.detach().tolist() == [-1.1, 2.5]


@pytest.mark.parametrize("name", list(ALL_MODULES))
def test_closure_without_backward_argument_raises_type_error(name: str) -> None:
    x = torch.nn.Parameter(torch.tensor([-1.1, 2.5], dtype=D64))
    opt = tz.Optimizer([x], ALL_MODULES[name](), tz.m.LR(0.1))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = rosen(x)
        loss.backward()
        return loss

    with pytest.raises(TypeError, match=r"closure must accept a `backward` argument"):
        opt.step(closure)
    assert x.detach().tolist() == [-1.1, 2.5]


@pytest.mark.parametrize("make", [lambda: tz.m.Newton(), lambda: tz.m.Newton(precompute_inverse=True),
                                  lambda: tz.m.Newton(use_lstsq=True), lambda: tz.m.Newton(eigval_fn=torch.abs),
                                  lambda: tz.m.NewtonCG(), lambda: tz.m.NewtonCGSteihaug(),
                                  lambda: tz.m.NystromSketchAndSolve(rank=2, seed=0),
                                  lambda: tz.m.NystromPCG(rank=2, seed=0),
                                  lambda: tz.m.SubspaceNewton(sketch_size=2)],
                         ids=["newton", "newton_inv", "newton_lstsq", "newton_eig_abs", "newton_cg", "steihaug",
                              "nystrom_ss", "nystrom_pcg", "subspace"])
@pytest.mark.parametrize("fn", [lambda x: (x[0] + x[1]) ** 2 + 0 * x[2],  # singular (rank 1), zero direction
                                lambda x: x[0] ** 2 - x[1] ** 2 + x[2] ** 2 + x[0] * x[2],  # indefinite saddle
                                lambda x: 0 * x.sum()],  # zero Hessian and gradient
                         ids=["singular", "indefinite", "zero"])
def test_singular_or_indefinite_hessian_never_gives_nan(make: Callable, fn: Callable) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, _ = run(tz, lambda m: [make(), m.LR(0.1)], 3, fn=fn, x0=(0.5, -0.3, 0.2))
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("make,match", [
    (lambda: tz.m.Newton(hessian_method="exact"), "hessian_method"),
    (lambda: tz.m.NewtonCG(hvp_method="backward"), "hvp_method"),
    (lambda: tz.m.NewtonCG(solver="gmres"), "solver"),
    (lambda: tz.m.NystromSketchAndSolve(rank=0), "rank"),
    (lambda: tz.m.NystromPCG(orthogonalize_method="gram"), "orthogonalize_method"),
    (lambda: tz.m.SubspaceNewton(sketch_type="gaussian"), "sketch_type"),
    (lambda: tz.m.NewtonCGSteihaug(h=0.0), "h"),
])
def test_bad_arguments_raise_value_error_naming_them(make: Callable, match: str) -> None:
    with pytest.raises(ValueError, match=f"`{match}`"):
        make()


def test_bad_argument_types_raise_type_error() -> None:
    with pytest.raises(TypeError, match="`update_freq`"):
        tz.m.Newton(update_freq=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`eigval_fn`"):
        tz.m.Newton(eigval_fn=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`seed`"):
        tz.m.NystromPCG(seed="0")  # type: ignore[arg-type]
