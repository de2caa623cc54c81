"""Newton-Schulz orthogonalization (``tzfast.ops.newton_schulz``, ``torch.ops.tzfast.newton_schulz``).

* against a plain eager implementation of the same schedule written here (singular values and
  entries within 1e-3 in float32, 1e-6 in float64), for every schedule, plain and Gram variants,
  square / tall / wide / 3-D / 4-D inputs;
* against the SVD polar factor: ``U^T X V`` is diagonal (the iteration keeps the singular
  vectors), every singular value in [0.3, 1.7] for the quintic schedules and within 0.1 of 1 for
  Polar Express on Gaussian inputs;
* batched == per-matrix (bit for bit), Gram == plain within tolerance, native == twin;
* zero matrices give zeros, bad input raises with the argument named, opcheck.
"""
from __future__ import annotations

import os

import pytest
import torch

from tzfast import _native
from tzfast.ops import newton_schulz as NS

NO_EXT = os.environ.get("TZFAST_NO_EXTENSION", "").strip() not in ("", "0") or not _native.HAS_EXTENSION
needs_native = pytest.mark.skipif(NO_EXT, reason="TZFAST_NO_EXTENSION is set or the extension did not load")

SHAPES = {"square": (48, 48), "wide": (24, 80), "tall": (80, 24), "batched3d": (3, 20, 36), "conv4d": (2, 3, 16, 24)}
ALL_SCHEDULES = ("quintic", "newtonschulz", "polar_express")


def eager_ns(G: torch.Tensor, coeffs, norm_scale: float = 1.0, eps: float = 0.0) -> torch.Tensor:
    """Textbook NS on the last two dims: wide orientation, Frobenius normalisation, then
    A = X X^T, B = b A + c A A, X = a X + B X per step."""
    X = G.mT if G.shape[-2] > G.shape[-1] else G
    nrm = X.norm(dim=(-2, -1), keepdim=True)
    X = X / (nrm * norm_scale + eps).clamp_min(2 * torch.finfo(X.dtype).tiny)
    for a, b, c in coeffs:
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if G.shape[-2] > G.shape[-1] else X


def _sched(name: str):
    s = NS.SCHEDULES[name]
    return s.coeffs, s.norm_scale, s.eps


@pytest.mark.parametrize("gram", [0, 1])
@pytest.mark.parametrize("name", ALL_SCHEDULES)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.float64, 1e-6)])
def test_matches_eager_same_schedule(shape: str, name: str, gram: int, dtype: torch.dtype, tol: float) -> None:
    g = torch.Generator().manual_seed(hash((shape, name)) % 1000)
    G = torch.randn(SHAPES[shape], generator=g, dtype=dtype)
    coeffs, scale, eps = _sched(name)
    X = NS.newton_schulz(G, name, gram=gram)
    ref = eager_ns(G, coeffs, scale, eps)
    assert X.shape == G.shape and X.dtype == dtype
    torch.testing.assert_close(torch.linalg.svdvals(X), torch.linalg.svdvals(ref), rtol=0, atol=tol)
    torch.testing.assert_close(X, ref, rtol=0, atol=tol)


@pytest.mark.parametrize("name,lo,hi", [("quintic", 0.3, 1.7), ("newtonschulz", 0.3, 1.7), ("ns5", 0.3, 1.7),
                                        ("polar_express", 0.9, 1.1)])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_against_svd_polar_factor(name: str, lo: float, hi: float, shape: str) -> None:
    G = torch.randn(SHAPES[shape], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    X = NS.newton_schulz(G, name)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    D = U.mT @ X @ Vh.mT  # diagonal when X = U f(S) V^T
    d = D.diagonal(dim1=-2, dim2=-1)
    off = D - torch.diag_embed(d)
    assert off.abs().max() < 1e-8, "NS changed the singular vectors"
    assert d.min() >= lo and d.max() <= hi, (d.min().item(), d.max().item())
    sv = torch.linalg.svdvals(X.float())
    assert sv.min() >= lo and sv.max() <= hi
    # closer to the polar factor than the normalised input
    polar = U @ Vh
    Gn = G / G.norm(dim=(-2, -1), keepdim=True)
    assert (X - polar).norm() < (Gn - polar).norm()


@pytest.mark.parametrize("name", ALL_SCHEDULES)
@pytest.mark.parametrize("gram", [0, 1])
def test_batched_equals_per_matrix(name: str, gram: int) -> None:
    G = torch.randn(5, 32, 72, generator=torch.Generator().manual_seed(2))
    X = NS.newton_schulz(G, name, gram=gram)
    for i in range(G.shape[0]):
        assert torch.equal(X[i], NS.newton_schulz(G[i], name, gram=gram)), i


@pytest.mark.parametrize("name", ALL_SCHEDULES)
@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (4, 40, 200), (48, 48)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-10)])
def test_gram_equals_plain(name: str, shape: tuple[int, ...], dtype: torch.dtype, tol: float) -> None:
    G = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    plain = NS.newton_schulz(G, name, gram=0)
    gram = NS.newton_schulz(G, name, gram=1)
    torch.testing.assert_close(gram, plain, rtol=0, atol=tol)


def test_auto_variant_is_plain_or_gram_by_shape() -> None:
    # by shape: Gram at aspect >= 2, plain otherwise (the twin mirrors the native choice)
    wide = torch.randn(2, 16, 64, dtype=torch.float64)
    square = torch.randn(2, 32, 32, dtype=torch.float64)
    assert torch.equal(NS.newton_schulz_reference(wide, NS.QUINTIC_COEFFS),
                       NS.newton_schulz_reference(wide, NS.QUINTIC_COEFFS, gram=1))
    assert torch.equal(NS.newton_schulz_reference(square, NS.QUINTIC_COEFFS),
                       NS.newton_schulz_reference(square, NS.QUINTIC_COEFFS, gram=0))


@needs_native
@pytest.mark.parametrize("gram", [-1, 0, 1])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_equals_twin(shape: str, gram: int, dtype: torch.dtype) -> None:
    G = torch.randn(SHAPES[shape], generator=torch.Generator().manual_seed(4), dtype=dtype)
    for name in ALL_SCHEDULES:
        s = NS.SCHEDULES[name]
        nat = torch.ops.tzfast.newton_schulz(G, NS._flat_coeffs(s.coeffs), s.norm_scale, s.eps, gram, None)
        ref = NS.newton_schulz_reference(G, s.coeffs, s.norm_scale, s.eps, gram)
        torch.testing.assert_close(nat, ref, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)


def test_non_contiguous_and_inplace() -> None:
    G = torch.randn(40, 24, dtype=torch.float64)
    base = NS.newton_schulz(G.T.contiguous(), "quintic")
    torch.testing.assert_close(NS.newton_schulz(G.T, "quintic"), base, rtol=0, atol=1e-12)
    H = torch.randn(3, 24, 40, dtype=torch.float64)
    ref = NS.newton_schulz(H, "polar_express")
    out = NS.newton_schulz_(H, "polar_express")
    assert out is H
    torch.testing.assert_close(H, ref, rtol=0, atol=0)
    # in place into a non-contiguous view
    W = torch.randn(40, 24, dtype=torch.float64)
    expected = NS.newton_schulz(W.T.contiguous(), "quintic")
    NS.newton_schulz_(W.T, "quintic")
    torch.testing.assert_close(W.T, expected, rtol=0, atol=1e-12)


def test_compute_dtype_and_result_dtype() -> None:
    G = torch.randn(32, 64, dtype=torch.float64)
    X = NS.newton_schulz(G, "quintic", dtype=torch.float32)
    assert X.dtype == torch.float64
    torch.testing.assert_close(X, NS.newton_schulz(G.float(), "quintic").double(), rtol=0, atol=1e-6)
    Xb = NS.newton_schulz(G.float(), "newtonschulz", dtype=torch.bfloat16)  # bf16 arithmetic, fp32 result
    assert Xb.dtype == torch.float32
    sv = torch.linalg.svdvals(Xb)
    assert sv.min() > 0.3 and sv.max() < 1.7
    assert NS.default_compute_dtype(torch.zeros(2, 2, dtype=torch.bfloat16)) == torch.float32
    assert NS.default_compute_dtype(torch.zeros(2, 2, dtype=torch.float64)) == torch.float64


@pytest.mark.parametrize("fn", [NS.newton_schulz, NS.newton_schulz_reference])
@pytest.mark.parametrize("gram", [0, 1])
def test_zero_matrices_give_zeros(fn, gram: int) -> None:
    G = torch.randn(3, 8, 20)
    G[1] = 0
    coeffs = NS.QUINTIC_COEFFS if fn is NS.newton_schulz_reference else "quintic"
    X = fn(G, coeffs, gram=gram)
    assert torch.isfinite(X).all()
    assert torch.equal(X[1], torch.zeros(8, 20))
    assert X[0].abs().max() > 0.1
    for name in ALL_SCHEDULES:
        Z = NS.newton_schulz(torch.zeros(4, 6, dtype=torch.float64), name, gram=gram)
        assert torch.equal(Z, torch.zeros(4, 6, dtype=torch.float64))


def test_empty_input() -> None:
    X = NS.newton_schulz(torch.randn(0, 4, 5), "quintic")
    assert X.shape == (0, 4, 5)


@pytest.mark.parametrize("impl", ["native", "twin"])
def test_bad_input(impl: str) -> None:
    if impl == "native" and NO_EXT:
        pytest.skip("no native extension")

    def call(G, coeffs=NS.QUINTIC_COEFFS, norm_scale=1.0, eps=0.0, gram=-1, dtype=None):
        if impl == "native":
            return torch.ops.tzfast.newton_schulz(G, NS._flat_coeffs(coeffs), norm_scale, eps, gram, dtype)
        return NS.newton_schulz_reference(G, coeffs, norm_scale, eps, gram, dtype)

    with pytest.raises(RuntimeError, match=r"expected G to have at least 2 dimensions .* got shape \[5\]"):
        call(torch.randn(5))
    with pytest.raises(RuntimeError, match="expected G to be Float, Double, Half or BFloat16 but got"):
        call(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match=r"expected coeffs to hold \(a, b, c\) per step .* got 4 numbers"):
        call(torch.randn(3, 3), [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(RuntimeError, match="expected norm_scale > 0 but got -1"):
        call(torch.randn(3, 3), norm_scale=-1.0)
    with pytest.raises(RuntimeError, match="expected eps >= 0 but got -1"):
        call(torch.randn(3, 3), eps=-1.0)
    with pytest.raises(RuntimeError, match=r"expected gram to be -1 \(by shape\), 0 \(plain\) or 1 \(Gram\) but got 2"):
        call(torch.randn(3, 3), gram=2)


def test_unknown_schedule_lists_accepted() -> None:
    with pytest.raises(ValueError, match=r"unknown schedule 'ns7'; accepted: 'quintic', 'newtonschulz', 'ns5', "
                                         r"'polar_express'"):
        NS.newton_schulz(torch.randn(3, 3), "ns7")


def test_polar_express_schedule_matches_paper_table() -> None:
    s = NS.polar_express_schedule()
    assert len(s) == 10
    a, b, c = NS.POLAR_EXPRESS_COEFFS[0]
    assert s[0] == pytest.approx((a / 1.01, b / 1.01**3, c / 1.01**5), rel=1e-15)
    assert s[7] == s[8] == s[9] == (1.875, -1.25, 0.375)
    # every polynomial of the table maps 1 near 1 (a + b + c ~ 1 for the converged ones)
    assert sum(NS.POLAR_EXPRESS_COEFFS[-1]) == pytest.approx(1.0)


@needs_native
def test_opcheck() -> None:
    G = torch.randn(2, 6, 10)
    flat = NS._flat_coeffs(NS.QUINTIC_COEFFS)
    torch.library.opcheck(torch.ops.tzfast.newton_schulz.default, (G, flat, 1.0, 0.0, -1, None),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.tzfast.newton_schulz_.default, (G.clone(), flat, 1.0, 0.0, 1, None),
                          test_utils=("test_schema", "test_faketensor"))
