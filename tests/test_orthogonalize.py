"""Orthogonalization modules: ``Orthogonalize``, ``orthogonalize_grads_``, ``MuonAdjustLR``,
``DualNormCorrection``, ``OrthoGrad``, ``orthograd_``.

Differential tests against torchzero 0.4.4 on a small model with 2-D weights of several shapes
(transposed pairs, repeated shapes), a 3-D and a 4-D (conv) weight, biases and a ``[1, n]`` head:

* torchzero runs ``newtonschulz``/``ns5`` in bfloat16. Two comparisons: (1) exact-arithmetic
  parity — torchzero's NS function is replaced, for the test, by a float64 eager NS with its
  own schedule (``eager_tz_ns`` below), so everything around it (layout, channel_first, opt-out,
  adjust_lr, dual-norm correction, skipping) is compared at float64 tolerance 1e-9; (2) against
  unmodified torchzero, at the tolerance bfloat16 implies (8-bit mantissa, ~4e-3 relative per
  entry of the update; with lr 1e-2 over 5 steps that is atol 1e-3 on the parameters).
* ``polar_express``: torchzero computes in the input dtype but returns float32, so float64
  trajectories agree to float32 rounding (atol 1e-6).
* ``svd``, ``qr``: float64, tolerance 1e-9. ``eigh``: torchzero returns ``Q Q^T`` (the identity)
  for square matrices and fails on rectangular ones; ours is the polar factor from the Gram
  eigendecomposition, tested equal to ``svd``, and to torchzero's identity on SPD input.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import importlib

import pytest
import torch
import torch.nn.functional as F
import torchzero as tzo
from torch import nn

import tzfast as tz
from tzfast.modules.orthogonalization import batching
from tzfast.ops import newton_schulz as NS

# the module (torchzero.linalg re-exports a function of the same name)
tz_orth = importlib.import_module("torchzero.linalg.orthogonalize")


class MatNet(nn.Module):
    """Weights: [12, 6], [6, 12] (transpose pair), two [8, 8], a 3-D [4, 3, 2], a conv [4, 2, 3, 3],
    biases, and a [1, 8] head (skipped: a dim of size 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(6, 12)        # weight [12, 6]
        self.down = nn.Linear(12, 6, bias=False)  # weight [6, 12]
        self.sq1 = nn.Linear(6, 8)        # weight [8, 6]
        self.sq2 = nn.Linear(8, 8)
        self.sq3 = nn.Linear(8, 8)
        self.cube = nn.Parameter(torch.randn(4, 3, 2) * 0.3)
        self.conv = nn.Conv2d(2, 4, 3)    # weight [4, 2, 3, 3]
        self.head = nn.Linear(8, 1)       # weight [1, 8]

    def forward(self, x: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.up(x))
        h = torch.tanh(self.down(h))
        h = torch.tanh(self.sq1(h))
        h = torch.tanh(self.sq2(h))
        h = torch.tanh(self.sq3(h))
        c = torch.tanh(self.conv(img)).mean(dim=(1, 2, 3)).unsqueeze(1)
        cube = torch.tanh(x[:, :2] @ self.cube.reshape(12, 2).T).mean(1, keepdim=True)
        return self.head(h) + c + cube


def make(seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[MatNet, tuple[torch.Tensor, ...], torch.Tensor]:
    torch.manual_seed(seed)
    model = MatNet().to(dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 6, generator=g).to(dtype)
    img = torch.randn(16, 2, 5, 5, generator=g).to(dtype)
    y = torch.sin(x.sum(1, keepdim=True)).to(dtype)
    return model, (x, img), y


def run(lib: Any, make_modules: Callable[[Any], Sequence[Any]], steps: int = 6, groups: Callable | None = None,
        dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, int, list[float]]:
    """Flat parameters after each step, the number of closure calls and the losses."""
    model, inputs, y = make(0, dtype)
    params = groups(model) if groups is not None else model.parameters()
    opt = lib.Optimizer(params, *make_modules(lib.m))
    calls = [0]

    def closure(backward: bool = True) -> torch.Tensor:
        calls[0] += 1
        loss = F.mse_loss(model(*inputs), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    traj, losses = [], []
    for _ in range(steps):
        losses.append(float(opt.step(closure).detach()))
        traj.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return torch.stack(traj), calls[0], losses


def eager_tz_ns(G: torch.Tensor, coeffs: Any = NS.TORCHZERO_NS5_COEFFS) -> torch.Tensor:
    """Float64 stand-in for torchzero's bf16 NS (same schedule and normalisation, written here)."""
    X = G.double()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp_min(2 * torch.finfo(X.dtype).tiny)
    for a, b, c in coeffs:
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    if tall:
        X = X.mT
    return X.to(G.dtype)


@pytest.fixture
def tz_float64_ns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tz_orth, "zeropower_via_newtonschulz5", eager_tz_ns)


def _opt_out_groups(model: MatNet) -> list[dict[str, Any]]:
    return [{"params": [model.sq2.weight], "orthogonalize": False},
            {"params": [p for n, p in model.named_parameters() if n != "sq2.weight"]}]


CASES = {
    "default": dict(),
    "ns5": dict(method="ns5"),
    "adjust_lr": dict(adjust_lr=True),
    "dual_norm": dict(dual_norm_correction=True),
    "channel_last": dict(channel_first=False),
    "all": dict(adjust_lr=True, dual_norm_correction=True, channel_first=False),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("opt_out", [False, True])
def test_matches_torchzero_exact_arithmetic(tz_float64_ns: None, case: str, opt_out: bool) -> None:
    kw = CASES[case]

    def chain(m: Any) -> list[Any]:
        return [m.HeavyBall(0.9), m.Orthogonalize(**kw), m.LR(1e-2)]

    groups = _opt_out_groups if opt_out else None
    ours, our_calls, _ = run(tz, chain, groups=groups)
    ref, ref_calls, _ = run(tzo, chain, groups=groups)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-11)
    assert our_calls <= ref_calls


@pytest.mark.parametrize("method", ["svd", "qr"])
@pytest.mark.parametrize("channel_first", [True, False])
def test_matches_torchzero_svd_qr(method: str, channel_first: bool) -> None:
    def chain(m: Any) -> list[Any]:
        return [m.Orthogonalize(method=method, channel_first=channel_first), m.LR(1e-2)]

    ours, our_calls, _ = run(tz, chain)
    ref, ref_calls, _ = run(tzo, chain)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-11)
    assert our_calls <= ref_calls


def test_matches_torchzero_polar_express() -> None:
    # torchzero's msign returns float32 whatever the input dtype: agreement to float32 rounding
    def chain(m: Any) -> list[Any]:
        return [m.NAG(0.9), m.Orthogonalize(method="polar_express"), m.LR(1e-2)]

    ours, _, _ = run(tz, chain)
    ref, _, _ = run(tzo, chain)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("compute_dtype", [None, torch.bfloat16])
def test_matches_unmodified_torchzero_at_bf16_tolerance(compute_dtype: torch.dtype | None) -> None:
    # torchzero runs NS in bfloat16 (8-bit mantissa): on Gaussian matrices its output is within
    # ~5% (relative Frobenius) of exact-arithmetic NS (measured max 4.8% for 4x2, 3% for 8x8), so
    # one step is compared per tensor at 6%. (On a trained model's nearly rank-deficient
    # gradients bf16 noise along the tiny singular directions is amplified by the iteration's
    # slope at 0, ~a^5, so trajectories cannot be compared entry-wise; the exact-arithmetic test
    # above covers the trajectories.)
    g = torch.Generator().manual_seed(5)
    shapes = [(12, 6), (6, 12), (8, 8), (8, 8), (4, 3, 2), (4, 2, 3, 3), (7,), (1, 8)]
    grads = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]

    def step(lib: Any, **kw: Any) -> list[torch.Tensor]:
        ps = [nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in shapes]
        for p, gr in zip(ps, grads):
            p.grad = gr.clone()
        lib.Optimizer(ps, lib.m.Orthogonalize(**kw), lib.m.LR(1.0)).step()
        return [-p.detach() for p in ps]

    ours = step(tz, **({} if compute_dtype is None else {"compute_dtype": compute_dtype}))
    ref = step(tzo)
    for o, r, gr in zip(ours, ref, grads):
        assert ((o - r).norm() / r.norm()) < 0.06
        if gr.ndim < 2 or gr.shape[0] == 1:
            assert torch.equal(o, gr) and torch.equal(r, gr)


def test_eigh_is_the_polar_factor() -> None:
    G = torch.randn(3, 7, 11, dtype=torch.float64)
    configs = [batching.Config(True, m, False, False, 1.0, None) for m in ("eigh", "svd")]
    e = batching.run_plan(batching.build_plan([G], configs[:1]), [G], configs[:1])[0]
    s = batching.run_plan(batching.build_plan([G], configs[1:]), [G], configs[1:])[0]
    torch.testing.assert_close(e, s, rtol=0, atol=1e-10)
    # on a symmetric positive definite matrix the polar factor is the identity, as torchzero's eigh gives
    A = torch.randn(6, 6, dtype=torch.float64)
    S = A @ A.T + 6 * torch.eye(6, dtype=torch.float64)
    out = batching.run_plan(batching.build_plan([S], configs[:1]), [S], configs[:1])[0]
    torch.testing.assert_close(out, tz_orth.zeropower_via_eigh(S), rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["newtonschulz", "ns5", "svd", "eigh", "polar_express"])
def test_orthogonalize_trains(method: str) -> None:
    # ('qr' is not a descent direction in general: its Q is not aligned with the gradient)
    _, _, losses = run(tz, lambda m: [m.HeavyBall(0.9), m.Orthogonalize(method=method), m.LR(2e-2)], steps=30)
    assert losses[-1] < 0.7 * losses[0]


def test_grouping_is_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from tzfast.modules.orthogonalization import orthogonalize as mod

    calls = [0]
    real = mod.build_plan

    def counting(*a: Any) -> Any:
        calls[0] += 1
        return real(*a)

    monkeypatch.setattr(mod, "build_plan", counting)
    run(tz, lambda m: [m.Orthogonalize(), m.LR(1e-2)], steps=4)
    assert calls[0] == 1
    # the [12, 6] and [6, 12] weights share one batch, the two [8, 8] weights another
    model = make()[0]
    ts = list(model.parameters())
    cfg = batching.Config(True, "newtonschulz", True, False, 1.0, None)
    plan = batching.build_plan(ts, [cfg] * len(ts))
    sizes = sorted((b.r, b.c, b.total) for b in plan.batches)
    assert (6, 12, 2) in sizes and (8, 8, 2) in sizes and (2, 4, 9) in sizes  # conv: 9 [4, 2] matrices


def test_skips_1d_size1_and_opted_out() -> None:
    model, inputs, y = make()
    opt = tz.Optimizer(_opt_out_groups(model), tz.m.Orthogonalize(), tz.m.LR(1.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = F.mse_loss(model(*inputs), y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        if p.ndim < 2 or n in ("head.weight", "sq2.weight"):  # passed through unchanged
            torch.testing.assert_close(p.detach(), before[n] - grads[n], rtol=0, atol=0)
        else:
            assert not torch.allclose(p.detach(), before[n] - grads[n])


def test_chain_equals_monolith_adjust_lr_and_dual_norm() -> None:
    a, _, _ = run(tz, lambda m: [m.Orthogonalize(adjust_lr=True), m.LR(1e-2)])
    b, _, _ = run(tz, lambda m: [m.Orthogonalize(), m.MuonAdjustLR(), m.LR(1e-2)])
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    c, _, _ = run(tz, lambda m: [m.Orthogonalize(dual_norm_correction=True), m.LR(1e-2)])
    d, _, _ = run(tz, lambda m: [m.Orthogonalize(), m.DualNormCorrection(), m.LR(1e-2)])
    torch.testing.assert_close(c, d, rtol=1e-12, atol=1e-14)


def test_muon_adjust_lr_values() -> None:
    W, b, h = torch.randn(4, 16), torch.randn(16), torch.randn(1, 5)
    ps = [nn.Parameter(t.clone()) for t in (W, b, h)]
    for p in ps:
        p.grad = torch.ones_like(p)
    opt = tz.Optimizer(ps, tz.m.MuonAdjustLR(alpha=0.5), tz.m.LR(1.0))
    opt.step()
    torch.testing.assert_close(W - ps[0].detach(), torch.full_like(W, 0.5 * 0.2 * 4.0))
    torch.testing.assert_close(b - ps[1].detach(), torch.ones_like(b))
    torch.testing.assert_close(h - ps[2].detach(), torch.ones_like(h))


@pytest.mark.parametrize("renormalize", [True, False])
def test_orthograd_matches_torchzero(renormalize: bool) -> None:
    def chain(m: Any) -> list[Any]:
        return [m.OrthoGrad(renormalize=renormalize), m.LR(5e-2)]

    ours, oc, _ = run(tz, chain, steps=8)
    ref, rc, _ = run(tzo, chain, steps=8)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-13)
    assert oc <= rc


def _grads_pair(seed: int) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 9), (9, 5), (7,), (3, 4, 2), (1, 6), (4, 4)]
    vals = [(torch.randn(s, generator=g, dtype=torch.float64), torch.randn(s, generator=g, dtype=torch.float64))
            for s in shapes]
    out = []
    for _ in range(2):
        ps = [nn.Parameter(v.clone()) for v, _ in vals]
        for p, (_, gr) in zip(ps, vals):
            p.grad = gr.clone()
        out.append(ps)
    return out[0], out[1]


def test_orthograd_functional_matches_torchzero() -> None:
    a, b = _grads_pair(0)
    a[2].grad = None
    b[2].grad = None
    tz.m.orthograd_(a)
    tzo.m.orthograd_(b)
    for p, q in zip(a, b):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["newtonschulz", "svd", "qr"])
@pytest.mark.parametrize("dual_norm", [False, True])
def test_orthogonalize_grads_matches_torchzero(tz_float64_ns: None, method: str, dual_norm: bool) -> None:
    a, b = _grads_pair(1)
    if dual_norm:  # torchzero 0.4.4 corrects >2-D gradients over the wrong dims; compare the matrices
        a, b = [p for p in a if p.ndim <= 2], [p for p in b if p.ndim <= 2]
    tz.m.orthogonalize_grads_(a, dual_norm_correction=dual_norm, method=method)
    tzo.m.orthogonalize_grads_(b, dual_norm_correction=dual_norm, method=method)
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-11)


def test_orthogonalize_grads_dual_norm_3d_per_matrix() -> None:
    G = torch.randn(4, 3, 2, dtype=torch.float64)
    p = nn.Parameter(torch.zeros_like(G))
    p.grad = G.clone()
    tz.m.orthogonalize_grads_([p], dual_norm_correction=True, method="svd")
    for k in range(2):
        X = tz_orth.zeropower_via_svd(G[:, :, k])
        torch.testing.assert_close(p.grad[:, :, k], (G[:, :, k] * X).sum() * X, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- bad input
def test_unknown_method_lists_accepted() -> None:
    msg = r"Orthogonalize: `method` must be one of \('newtonschulz', 'ns5', 'polar_express', 'svd', 'qr', 'eigh'\), got 'ns7'"
    with pytest.raises(ValueError, match=msg):
        tz.m.Orthogonalize(method="ns7")
    with pytest.raises(ValueError, match=r"orthogonalize_grads_: `method` must be one of .* got 'lu'"):
        tz.m.orthogonalize_grads_([], method="lu")
    # a per-parameter override is checked when used, before any parameter changes
    model, inputs, y = make()
    opt = tz.Optimizer([{"params": [model.sq2.weight], "method": "bogus"},
                        {"params": [p for n, p in model.named_parameters() if n != "sq2.weight"]}],
                       tz.m.Orthogonalize(), tz.m.LR(1e-2))
    before = [p.detach().clone() for p in model.parameters()]
    F.mse_loss(model(*inputs), y).backward()
    with pytest.raises(ValueError, match="got 'bogus'"):
        opt.step()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p.detach(), q)
    assert tz.m.Orthogonalize(method="SVD").defaults["method"] == "svd"  # lower-cased as torchzero does


@pytest.mark.parametrize("method", batching.METHODS)
def test_zero_matrices_no_nan(method: str) -> None:
    ps = [nn.Parameter(torch.randn(5, 8)), nn.Parameter(torch.randn(3, 3, 2))]
    for p in ps:
        p.grad = torch.zeros_like(p)
    tz.m.orthogonalize_grads_(ps, method=method)
    for p in ps:
        assert torch.isfinite(p.grad).all()
        if method not in ("svd", "qr"):  # U V^T and Q of a zero matrix are some orthonormal matrix
            assert torch.equal(p.grad, torch.zeros_like(p))


def test_1d_reaching_ns_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"newton_schulz: expected G to have at least 2 dimensions"):
        NS.newton_schulz(torch.randn(7), "newtonschulz")
    p = nn.Parameter(torch.randn(7))
    p.grad = torch.randn(7)
    g = p.grad.clone()
    tz.m.orthogonalize_grads_([p])  # skipped per torchzero
    assert torch.equal(p.grad, g)


# ----------------------------------------------------------------------------- worked examples
def _split_or_skip() -> None:
    if not hasattr(tz.m, "Split"):
        pytest.skip("Newton-Schulz orthogonalization (Muon) and the matrix preconditioners")


@pytest.mark.filterwarnings("ignore:multiple learning rate modules")
def test_ex37_muon_with_adam_fallback() -> None:
    _split_or_skip()
    _, _, losses = run(tz, lambda m: [m.Split(filter=lambda t: t.ndim >= 2,
                                              true=[m.HeavyBall(), m.Orthogonalize(), m.LR(1e-2)],
                                              false=m.Adam()), m.LR(1e-2)], steps=60, dtype=torch.float32)
    # the example applies LR twice (matrices step 1e-4 per step, torchzero warns the same): slow but steady
    assert losses[-1] < 0.95 * losses[0]


@pytest.mark.filterwarnings("ignore:multiple learning rate modules")
def test_ex37_matches_torchzero(tz_float64_ns: None) -> None:
    _split_or_skip()

    def chain(m: Any) -> list[Any]:
        return [m.Split(filter=lambda t: t.ndim >= 2, true=[m.HeavyBall(), m.Orthogonalize(), m.LR(1e-2)],
                        false=m.Adam()), m.LR(1e-2)]

    ours, oc, _ = run(tz, chain, steps=6)
    ref, rc, _ = run(tzo, chain, steps=6)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-11)
    assert oc <= rc


def test_ex38_muon_split_filter_positional() -> None:
    _split_or_skip()
    _, _, losses = run(tz, lambda m: [m.NAG(0.95), m.Split(lambda p: p.ndim >= 2, true=m.Orthogonalize(),
                                                           false=[m.Adam(0.9, 0.95), m.Mul(1 / 66)]),
                                      m.LR(1e-2)], steps=40, dtype=torch.float32)
    assert losses[-1] < 0.8 * losses[0]
