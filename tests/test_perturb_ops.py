"""The perturbation engine (docs/perturbation.md): accumulate_directions_ and direction_sq_norm.

* Philox4x32-10 against the Random123 known-answer vectors: the native header function, the
  pure-torch twin, and the counter layout of the op itself;
* native == twin bit for bit, every distribution and dtype, odd shapes, accumulate on and off;
* one direction whatever the split into tensors (0-d, 1-element, odd sizes, non-contiguous),
  the chunking into calls, the thread count and the SIMD level (subprocesses);
* direction_sq_norm: the sum of squares of the generated vector, the twin's bits, thread-count
  independent;
* the distributions with fixed seeds on 2^20 samples (mean, variance, kurtosis, Rademacher
  balance, Kolmogorov-Smirnov distance, sphere norm), and no correlation between directions;
* torch.library.opcheck, and every bad input (error type and message, native and twin);
* TZFAST_NO_EXTENSION=1 runs the twins and gives the same bits.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from tzfast import _native
from tzfast.ops import perturb as P

ROOT = Path(__file__).resolve().parents[1]
NO_EXT_REQUESTED = os.environ.get("TZFAST_NO_EXTENSION", "").strip() not in ("", "0")
needs_native = pytest.mark.skipif(NO_EXT_REQUESTED or not _native.HAS_EXTENSION,
                                  reason="TZFAST_NO_EXTENSION is set or the extension did not load: no native ops")

DISTS = {"gaussian": 0, "rademacher": 1, "uniform": 2, "sphere": 3}
DTYPES = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}
KATS = [  # Random123 kat_vectors: philox4x32 10 <counter> <key> -> <output>
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def native_acc() -> Callable[..., None]:
    return torch.ops.tzfast.accumulate_directions_.default  # type: ignore[no-any-return]


def direct_acc() -> Callable[..., None]:
    """tzfast._C's dispatcher-free binding of the CPU kernel (what the estimators call on the CPU)."""
    return _native._C._accumulate_directions_cpu  # type: ignore[union-attr,no-any-return]


IMPLS: dict[str, Callable[[], Callable[..., Any]]] = {
    "native": native_acc,
    "direct": direct_acc,
    "reference": lambda: P.accumulate_directions_reference_,
}


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, what
    if not torch.equal(a, b):
        bad = (a != b).reshape(-1)
        i = int(bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {a.numel()} values differ; first at {i}: "
                             f"{a.reshape(-1)[i].item()!r} vs {b.reshape(-1)[i].item()!r}")


def _noncontig(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous tensor equal to t (every other column of a wider buffer)."""
    if t.dim() == 0:
        return t.clone()
    big = torch.full((*t.shape[:-1], t.shape[-1] * 2 + 1), float("nan"), dtype=t.dtype)
    v = big[..., 1::2]
    v.copy_(t)
    return v


def _tensors(shapes: Sequence[tuple[int, ...]], dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def _offsets(shapes: Sequence[tuple[int, ...]], start: int = 0) -> list[int]:
    offs, pos = [], start
    for s in shapes:
        offs.append(pos)
        pos += math.prod(s)
    return offs


def _flat(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts]) if ts else torch.empty(0)


def direction(dist: int, seed: int, sample: int, n: int, start: int = 0) -> torch.Tensor:
    """n values of one direction from the native op (float32)."""
    z = torch.zeros(n)
    native_acc()([z], [start], seed, [sample], [1.0], dist, 1.0, False)
    return z


# ----------------------------------------------------------------------------- Philox
@pytest.mark.parametrize("ctr,key,want", KATS, ids=["zeros", "ones", "pi"])
def test_philox_known_answers_twin(ctr: tuple[int, ...], key: tuple[int, int], want: tuple[int, ...]) -> None:
    got = tuple(int(x) for x in P.philox4x32_10_reference(ctr, key))
    assert got == want


@needs_native
@pytest.mark.parametrize("ctr,key,want", KATS, ids=["zeros", "ones", "pi"])
def test_philox_known_answers_native(ctr: tuple[int, ...], key: tuple[int, int], want: tuple[int, ...]) -> None:
    assert tuple(_native._C._philox4x32_10(*ctr, *key)) == want  # type: ignore[union-attr]


def test_twin_philox_many_counters_match_scalar_formula() -> None:
    """The tensor Philox on many counters at once equals the one-counter version (broadcasting,
    the 16-bit split of the products)."""
    g = torch.Generator().manual_seed(0)
    c = torch.randint(0, 1 << 32, (4, 64), generator=g, dtype=torch.int64)
    k0, k1 = 0x89ABCDEF, 0x01234567
    many = torch.stack(P.philox4x32_10_reference(tuple(c), (k0, k1)))
    for j in range(0, 64, 9):
        one = torch.stack(P.philox4x32_10_reference(tuple(int(x) for x in c[:, j]), (k0, k1)))
        assert torch.equal(many[:, j], one)


@pytest.mark.parametrize("impl", IMPLS)
def test_op_counter_layout_is_the_known_answer(impl: str) -> None:
    """Seed 0, sample 0: elements 0..127 of the Rademacher direction are the 128 bits of block 0,
    i.e. Philox4x32-10 of counter (0, 0, 0, 0) under key (0, 0): bit b of word q is element
    32q + b, and a set bit is -1."""
    if impl == "native" and (NO_EXT_REQUESTED or not _native.HAS_EXTENSION):
        pytest.skip("no native ops")
    z = torch.zeros(128)
    IMPLS[impl]()([z], [0], 0, [0], [1.0], 1, 1.0, False)
    bits = (z < 0).to(torch.int64).view(4, 32)
    words = (bits << torch.arange(32)).sum(1)
    assert tuple(int(w) for w in words) == KATS[0][2]
    # the Gaussian block 0 of seed 0 is Box-Muller on the same four words
    g = torch.zeros(4)
    IMPLS[impl]()([g], [0], 0, [0], [1.0], 0, 1.0, False)
    w = torch.tensor(KATS[0][2], dtype=torch.float64)
    u = (2 * torch.floor(w / 512) + 1) / 2**24
    r1, r2 = (-2 * u[0].log()).sqrt(), (-2 * u[2].log()).sqrt()
    want = torch.stack([r1 * torch.cos(2 * math.pi * u[1]), r1 * torch.sin(2 * math.pi * u[1]),
                        r2 * torch.cos(2 * math.pi * u[3]), r2 * torch.sin(2 * math.pi * u[3])])
    torch.testing.assert_close(g.double(), want, rtol=5e-7, atol=1e-7)


# ----------------------------------------------------------------------------- native == twin
SHAPES = [(), (1,), (3, 5), (0,), (17,), (2, 3, 4), (1031,), (4099,)]


@needs_native
@pytest.mark.parametrize("accumulate", [True, False], ids=["acc", "set"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("dist", DISTS.values(), ids=DISTS.keys())
def test_native_matches_reference_bitwise(dist: int, dtype: torch.dtype, accumulate: bool) -> None:
    offsets = [7, 0, 1000, 5, 123456789, 2**34 - 5, 3, 2**39 - 70]  # gaps, overlaps, high counter words
    samples, coeffs = [0, 5, 2**32 - 1], [0.5, -1.25, 3e-3]
    got = _tensors(SHAPES, dtype, seed=1)
    want = _tensors(SHAPES, dtype, seed=1)
    native_acc()(got, offsets, -987654321, samples, coeffs, dist, -0.75, accumulate)
    P.accumulate_directions_reference_(want, offsets, -987654321, samples, coeffs, dist, -0.75, accumulate)
    for j, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_same_bits(a, b, f"tensor {j}")


@needs_native
@pytest.mark.parametrize("dist", DISTS.values(), ids=DISTS.keys())
def test_native_matches_reference_many_directions(dist: int) -> None:
    """More directions than the kernel handles per group (16), weights of both signs and zero."""
    samples = list(range(0, 40, 2))
    coeffs = [(-1) ** k * (k + 1) * 0.01 if k % 7 else 0.0 for k in range(20)]
    got, want = _tensors([(3000,), (5,)], torch.float32, 2), _tensors([(3000,), (5,)], torch.float32, 2)
    native_acc()(got, [100, 4000], 42, samples, coeffs, dist, 1.0, True)
    P.accumulate_directions_reference_(want, [100, 4000], 42, samples, coeffs, dist, 1.0, True)
    for a, b in zip(got, want, strict=True):
        assert_same_bits(a, b)


def test_reference_is_the_documented_formula() -> None:
    """out = out + C(out_scale*c_0) z_0 + C(out_scale*c_1) z_1 (left to right, float32), with
    z from direction_values_reference."""
    out = _tensors([(50,)], torch.float32, 3)
    expect = out[0].clone()
    P.accumulate_directions_reference_(out, [10], 9, [1, 2], [0.3, -0.7], 0, 2.0, True)
    z1 = P.direction_values_reference(9, 1, 0, 10, 50)
    z2 = P.direction_values_reference(9, 2, 0, 10, 50)
    w1, w2 = torch.tensor(2.0 * 0.3).float(), torch.tensor(2.0 * -0.7).float()
    assert_same_bits(out[0], expect + (w1 * z1 + w2 * z2))


# ----------------------------------------------------------------------------- invariance
@needs_native
@pytest.mark.parametrize("dist", DISTS.values(), ids=DISTS.keys())
def test_same_vector_whatever_the_split_into_tensors(dist: int) -> None:
    """A vector of 9000 elements written as one tensor, or as 0-d, 1-element, odd-sized and
    non-contiguous tensors at the matching offsets, is the same vector."""
    shapes = [(), (1,), (3, 5), (0,), (7, 1, 3), (1,), (130,), (),
              (2, 2000), (4,), (9000 - 1 - 1 - 15 - 21 - 1 - 130 - 1 - 4000 - 4 - 3,)]
    n = sum(math.prod(s) for s in shapes)
    assert n == 9000 - 3
    start = 12345
    whole = _tensors([(n,)], torch.float32, 4)[0]
    native_acc()([whole], [start], 77, [3, 4], [1.0, 0.5], dist, 1.0, True)
    parts = [t for t in _tensors([(n,)], torch.float32, 4)[0].split([math.prod(s) for s in shapes])]
    parts = [p.reshape(s) for p, s in zip(parts, shapes, strict=True)]
    parts = [_noncontig(p) if j % 2 and p.dim() > 0 and p.numel() > 0 else p.clone() for j, p in enumerate(parts)]
    assert any(not p.is_contiguous() for p in parts)
    native_acc()(parts, _offsets(shapes, start), 77, [3, 4], [1.0, 0.5], dist, 1.0, True)
    assert_same_bits(_flat(parts), whole)


@needs_native
@pytest.mark.parametrize("dist", DISTS.values(), ids=DISTS.keys())
def test_same_vector_whatever_the_chunking_into_calls(dist: int) -> None:
    """One call over 200k elements equals calls over slices (any cut points) and equals the
    directions applied one call at a time (sum order kept by writing the running sum)."""
    n, start = 200_003, 999
    whole = direction(dist, 5, 8, n, start)
    pieces = torch.zeros(n)
    cuts = [0, 1, 130, 4096, 65_537, 65_538, 131_071, n]
    for a, b in zip(cuts, cuts[1:], strict=False):
        native_acc()([pieces[a:b]], [start + a], 5, [8], [1.0], dist, 1.0, False)
    assert_same_bits(pieces, whole)


@needs_native
def test_same_values_on_every_level_and_thread_count(tmp_path: Path) -> None:
    """Subprocesses: baseline SIMD level with 1 thread, the default level with 1 and 2 threads."""
    script = textwrap.dedent("""
        import sys, torch
        torch.set_num_threads(int(sys.argv[2]))
        import tzfast.ops as ops
        from tzfast.ops import perturb as P
        res = {"info": ops.build_info(), "threads": torch.get_num_threads()}
        shapes = [(300_001,), (3, 7), (), (70_000,)]
        offs = [0, 300_001, 5, 2**33 + 3]
        for dist in range(4):
            for dtype in (torch.float32, torch.float64, torch.float16):
                g = torch.Generator().manual_seed(dist)
                out = [torch.randn(s, generator=g).to(dtype) for s in shapes]
                P.accumulate_directions_(out, offs, 1234567, [0, 1, 17], [1.0, -0.5, 0.25], dist, 0.1, True)
                res[(dist, str(dtype))] = out
            res[("sq", dist)] = P.direction_sq_norm(99, 3, dist, 1_000_003)
        torch.save(res, sys.argv[1])
    """)

    def run(level: str, threads: int) -> dict[Any, Any]:
        path = tmp_path / f"{level}-{threads}.pt"
        env = dict(os.environ, TZFAST_SIMD=level, OMP_NUM_THREADS=str(threads))
        env.pop("TZFAST_NO_EXTENSION", None)
        subprocess.run([sys.executable, "-c", script, str(path), str(threads)], env=env, check=True, cwd=str(ROOT))
        return torch.load(path, weights_only=False)  # type: ignore[no-any-return]

    base1 = run("baseline", 1)
    auto1 = run("auto", 1)
    auto2 = run("auto", 2)
    assert base1["info"]["simd_selected"] == "baseline" and base1["threads"] == 1
    assert auto2["threads"] == 2
    for other in (auto1, auto2):
        for key, val in base1.items():
            if key in ("info", "threads"):
                continue
            if isinstance(val, list):
                for j, (a, b) in enumerate(zip(other[key], val, strict=True)):
                    assert_same_bits(a, b, f"{key} tensor {j} ({other['info']['simd_selected']}, {other['threads']} "
                                            "threads vs baseline, 1 thread)")
            else:
                assert_same_bits(other[key], val, str(key))


@needs_native
def test_large_calls_use_several_threads() -> None:
    if not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2:
        pytest.skip("needs Linux /proc and two CPUs")

    def ticks() -> dict[str, int]:
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[tid] = int(fields[11]) + int(fields[12])
        return out

    p = torch.zeros(1 << 21)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        before, busy = ticks(), set()
        for _ in range(40):  # about 20 ms of CPU per call
            native_acc()([p], [0], 1, list(range(8)), [1e-3] * 8, 0, 1.0, True)
            after = ticks()
            busy = {t for t, k in after.items() if k > before.get(t, 0)}
            if len(busy) >= 2:
                break
    finally:
        torch.set_num_threads(old)
    assert len(busy) >= 2, f"only {len(busy)} thread(s) did work"


@needs_native
def test_accumulate_false_never_reads_out() -> None:
    for dist in DISTS.values():
        a = [torch.full((5, 9), float("nan")), _noncontig(torch.full((4, 3), float("nan")))]
        b = [torch.zeros(5, 9), torch.zeros(4, 3)]
        native_acc()(a, [0, 45], 3, [1, 2], [1.0, 2.0], dist, 1.0, False)
        native_acc()(b, [0, 45], 3, [1, 2], [1.0, 2.0], dist, 1.0, False)
        for x, y in zip(a, b, strict=True):
            assert_same_bits(x, y)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_lists_and_empty_tensors(impl: str) -> None:
    if impl == "native" and (NO_EXT_REQUESTED or not _native.HAS_EXTENSION):
        pytest.skip("no native ops")
    f = IMPLS[impl]()
    f([], [], 1, [0], [1.0], 0, 1.0, True)
    e = torch.zeros(0, 3)
    f([e], [5], 1, [0], [1.0], 0, 1.0, True)
    assert e.shape == (0, 3)


@needs_native
def test_perturb_then_restore_returns_close_to_the_start() -> None:
    """p + h z - h z: the spec's restore by subtraction (the drift is rounding only)."""
    p0 = _tensors([(10_000,)], torch.float32, 5)[0]
    p = p0.clone()
    native_acc()([p], [0], 11, [0], [1e-3], 0, 1.0, True)
    assert not torch.equal(p, p0)
    native_acc()([p], [0], 11, [0], [-1e-3], 0, 1.0, True)
    assert (p - p0).abs().max() <= 4 * torch.finfo(torch.float32).eps * p0.abs().max()


# ----------------------------------------------------------------------------- direction_sq_norm
@pytest.mark.parametrize("dist", DISTS.values(), ids=DISTS.keys())
def test_sq_norm_is_the_sum_of_squares(dist: int) -> None:
    n = 100_003
    z = P.direction_values_reference(2024, 6, dist, 0, n).double()
    want = float((z * z).sum())
    got = P.direction_sq_norm(2024, 6, dist, n)
    assert got.dtype == torch.float64 and got.shape == ()
    assert math.isclose(float(got), want, rel_tol=1e-12)
    assert_same_bits(got, P.direction_sq_norm_reference(2024, 6, dist, n))
    if dist == 1:
        assert float(got) == n


def test_sq_norm_small_and_empty() -> None:
    assert float(P.direction_sq_norm(1, 0, 0, 0)) == 0.0
    z = P.direction_values_reference(1, 0, 0, 0, 3).double()
    assert float(P.direction_sq_norm(1, 0, 0, 3)) == float((z[0] ** 2 + z[1] ** 2) + z[2] ** 2)


# ----------------------------------------------------------------------------- distributions
N_STAT = 1 << 20


def _moments(z: torch.Tensor) -> tuple[float, float, float]:
    z = z.double()
    m = float(z.mean())
    c = z - m
    v = float((c * c).mean())
    k = float((c**4).mean()) / v**2
    return m, v, k


@needs_native
@pytest.mark.parametrize("dist,kurtosis", [(0, 3.0), (1, 1.0), (2, 1.8)], ids=["gaussian", "rademacher", "uniform"])
def test_distribution_moments(dist: int, kurtosis: float) -> None:
    """Mean 0, variance 1 and the kurtosis of each distribution, three seeds of 2^20 values.
    Tolerances are 5 standard errors: mean 5/sqrt(n), variance 5 sqrt((k - 1)/n) (+ 25/n for the
    centring), kurtosis 5 sqrt(24/n) (Gaussian) / 5 sqrt(1/n)."""
    n = N_STAT
    for seed in (0, 1, 2**40 + 7):
        m, v, k = _moments(direction(dist, seed, 3, n))
        assert abs(m) < 5 / math.sqrt(n), (seed, m)
        assert abs(v - 1) < 5 * math.sqrt((kurtosis - 1) / n) + 25 / n, (seed, v)  # + m^2 (centred)
        assert abs(k - kurtosis) < (5 * math.sqrt(24 / n) if dist == 0 else 5 / math.sqrt(n)) + 1e-9, (seed, k)


@needs_native
def test_rademacher_balance_and_values() -> None:
    z = direction(1, 31, 0, N_STAT)
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    plus = float((z > 0).double().mean())
    assert abs(plus - 0.5) < 5 * 0.5 / math.sqrt(N_STAT)
    # each bit position of a word is balanced too (no stuck bits)
    frac = (z.view(-1, 32) > 0).double().mean(0)
    assert float((frac - 0.5).abs().max()) < 5 * 0.5 / math.sqrt(N_STAT / 32)


@needs_native
@pytest.mark.parametrize("dist", [0, 2], ids=["gaussian", "uniform"])
def test_kolmogorov_smirnov_distance(dist: int) -> None:
    """The empirical CDF of 2^20 values is within 1.63/sqrt(n) of N(0,1) / U(-sqrt 3, sqrt 3)
    (the 1% critical value), and every lane of a Philox block looks alike."""
    z = direction(dist, 8, 1, N_STAT).double()
    zs, _ = z.sort()
    if dist == 0:
        cdf = 0.5 * (1 + torch.erf(zs / math.sqrt(2)))
    else:
        cdf = ((zs + math.sqrt(3)) / (2 * math.sqrt(3))).clamp(0, 1)
    i = torch.arange(1, N_STAT + 1, dtype=torch.float64)
    d = float(torch.maximum(i / N_STAT - cdf, cdf - (i - 1) / N_STAT).max())
    assert d < 1.63 / math.sqrt(N_STAT), d
    for lane in range(4):
        _m, v, _k = _moments(z.view(-1, 4)[:, lane])
        assert abs(v - 1) < 0.02, (lane, v)
    if dist == 0:
        assert float(z.abs().max()) < math.sqrt(2 * 24 * math.log(2)) + 1e-3  # u1 >= 2^-24


@needs_native
def test_sphere_direction_has_norm_sqrt_n() -> None:
    n = 300_007
    for sample in (0, 1, 2):
        scale = P.sphere_scale(55, sample, n)
        z = direction(3, 55, sample, n) * 0.0
        native_acc()([z], [0], 55, [sample], [scale], 3, 1.0, False)
        assert math.isclose(float(z.double().norm()), math.sqrt(n), rel_tol=1e-6)
        # and it is the Gaussian direction, rescaled
        g = direction(0, 55, sample, n)
        torch.testing.assert_close(z, g * scale, rtol=1e-6, atol=0)


@needs_native
def test_distinct_seeds_and_samples_are_uncorrelated() -> None:
    """Correlations between directions of nearby (seed, sample) pairs, and between neighbouring
    elements of one direction, are within 5/sqrt(n) of zero."""
    n = N_STAT
    for dist in (0, 1, 2):
        base = direction(dist, 100, 0, n).double()
        others = [direction(dist, 100, 1, n), direction(dist, 101, 0, n), direction(dist, 100 + 2**32, 0, n),
                  direction(dist, 100, 0, n, start=1), direction(dist, 100, 0, n, start=n)]
        for j, o in enumerate(others):
            r = float(torch.corrcoef(torch.stack([base, o.double()]))[0, 1])
            assert abs(r) < 5 / math.sqrt(n), (dist, j, r)


# ----------------------------------------------------------------------------- opcheck
@needs_native
@pytest.mark.parametrize("dist", DISTS.values(), ids=DISTS.keys())
def test_opcheck_accumulate_directions(dist: int) -> None:
    out = [torch.randn(3, 4), torch.randn(()), torch.randn(5)]
    torch.library.opcheck(torch.ops.tzfast.accumulate_directions_.default,
                          (out, [0, 12, 100], 3, [0, 1], [1.0, -0.5], dist, 0.1, True))


@needs_native
def test_opcheck_direction_sq_norm() -> None:
    torch.library.opcheck(torch.ops.tzfast.direction_sq_norm.default, (3, 1, 0, 1000))


@needs_native
def test_ops_compile_without_graph_breaks() -> None:
    def step(p: torch.Tensor) -> torch.Tensor:
        torch.ops.tzfast.accumulate_directions_([p], [0], 5, [0, 1], [1e-3, -1e-3], 0, 1.0, True)
        return p * 2 + torch.ops.tzfast.direction_sq_norm(5, 0, 0, 10)

    p1, p2 = torch.randn(10), None
    p2 = p1.clone()
    want = step(p1)
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(p2)
    assert_same_bits(got, want)
    assert_same_bits(p2, p1)


# ----------------------------------------------------------------------------- bad input
def _expect(f: Callable[..., Any], args: tuple[Any, ...], *fragments: str) -> None:
    with pytest.raises(RuntimeError) as info:
        f(*args)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"


def _args(**changes: Any) -> tuple[Any, ...]:
    a: dict[str, Any] = dict(out=[torch.zeros(3, 4), torch.zeros(5)], offsets=[0, 12], seed=1, samples=[0, 1],
                             coeffs=[1.0, 2.0], dist=0, out_scale=1.0, accumulate=True)
    a.update(changes)
    return tuple(a.values())


BAD_CALLS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "unknown dist": (dict(dist=4), ("unknown distribution code 4", "0 (gaussian, normal)", "1 (rademacher)",
                                    "2 (uniform)", "3 (sphere)")),
    "negative dist": (dict(dist=-1), ("unknown distribution code -1",)),
    "length mismatch": (dict(coeffs=[1.0]), ("expected samples and coeffs to have the same length",
                                             "2 samples and 1 coeffs")),
    "no directions": (dict(samples=[], coeffs=[]), ("expected at least one direction", "but got 0")),
    "negative sample": (dict(samples=[0, -1]), ("expected samples[1] in [0, 4294967295]", "but got -1")),
    "sample too large": (dict(samples=[2**32, 0]), ("expected samples[0] in [0, 4294967295]", "but got 4294967296")),
    "offsets length": (dict(offsets=[0]), ("expected offsets to be a list of 2 offsets", "but got 1")),
    "negative offset": (dict(offsets=[0, -5]), ("expected offsets[1] >= 0 but got -5",)),
    "offset overflow": (dict(offsets=[2**63 - 5, 0]), ("expected offsets[0] + numel(out[0]) <= 2^63 - 1",)),
    "integer dtype": (dict(out=[torch.zeros(3, dtype=torch.int64), torch.zeros(5, dtype=torch.int64)]),
                      ("expected a floating dtype", "out[0] has dtype Long")),
    "dtype mismatch": (dict(out=[torch.zeros(3), torch.zeros(5, dtype=torch.float64)]),
                       ("expected out[1] to have dtype Float", "but got Double")),
    "device mismatch": (dict(out=[torch.zeros(3), torch.zeros(5, device="meta")]),
                        ("expected out[1] on device cpu", "but got meta")),
    "internal overlap": (dict(out=[torch.zeros(4).expand(3, 4), torch.zeros(5)]),
                         ("expected out[0] to have no internal overlap",)),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_accumulate_directions_call(case: str, impl: str) -> None:
    if impl in ("native", "direct") and (NO_EXT_REQUESTED or not _native.HAS_EXTENSION):
        pytest.skip("no native ops")
    changes, fragments = BAD_CALLS[case]
    _expect(IMPLS[impl](), _args(**changes), "tzfast::accumulate_directions_", *fragments)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_bad_direction_sq_norm_call(impl: str) -> None:
    if impl == "native" and (NO_EXT_REQUESTED or not _native.HAS_EXTENSION):
        pytest.skip("no native ops")
    f = torch.ops.tzfast.direction_sq_norm.default if impl == "native" else P.direction_sq_norm_reference
    _expect(f, (1, 0, 0, -1), "tzfast::direction_sq_norm", "expected numel >= 0 but got -1")
    _expect(f, (1, 0, 9, 10), "tzfast::direction_sq_norm", "unknown distribution code 9", "3 (sphere)")
    _expect(f, (1, -2, 0, 10), "tzfast::direction_sq_norm", "expected sample in [0, 4294967295]", "but got -2")


def test_distribution_code() -> None:
    names = ("gaussian", "normal", "rademacher", "uniform", "sphere")
    assert [P.distribution_code(n) for n in names] == [0, 0, 1, 2, 3]
    for bad in ("Gaussian", "bernoulli", 0, None):
        with pytest.raises(ValueError) as info:
            P.distribution_code(bad)  # type: ignore[arg-type]
        assert "'gaussian', 'normal', 'rademacher', 'uniform', 'sphere'" in str(info.value)


# ----------------------------------------------------------------------------- no extension
@needs_native
def test_no_extension_env_gives_the_same_bits(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys, warnings, torch
        warnings.simplefilter("ignore")
        from tzfast import _native
        from tzfast.ops import perturb as P
        assert not _native.HAS_EXTENSION
        out = {}
        for dist in range(4):
            t = [torch.linspace(-1, 1, 1001).reshape(7, 143), torch.ones(())]
            P.accumulate_directions_(t, [3, 5000], -5, [2, 9], [0.25, -2.0], dist, 0.5, True)
            out[dist] = t
            out[("sq", dist)] = P.direction_sq_norm(-5, 9, dist, 5003)
        torch.save(out, sys.argv[1])
    """)
    path = tmp_path / "noext.pt"
    env = dict(os.environ, TZFAST_NO_EXTENSION="1")
    subprocess.run([sys.executable, "-c", script, str(path)], env=env, check=True, cwd=str(ROOT))
    twin = torch.load(path, weights_only=False)
    for dist in range(4):
        t = [torch.linspace(-1, 1, 1001).reshape(7, 143), torch.ones(())]
        P.accumulate_directions_(t, [3, 5000], -5, [2, 9], [0.25, -2.0], dist, 0.5, True)
        for a, b in zip(t, twin[dist], strict=True):
            assert_same_bits(a, b, f"dist {dist}")
        assert_same_bits(P.direction_sq_norm(-5, 9, dist, 5003), twin[("sq", dist)])


@needs_native
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("dist", DISTS.values(), ids=DISTS.keys())
def test_direct_call_matches_op_bitwise_and_bumps_versions(dist: int, dtype: torch.dtype) -> None:
    offsets = [7, 0, 1000, 5, 123456789, 2**34 - 5, 3, 2**39 - 70]
    got = _tensors(SHAPES, dtype, seed=2)
    want = _tensors(SHAPES, dtype, seed=2)
    versions = [t._version for t in got]
    direct_acc()(got, offsets, 42, [3, 1], [0.25, -2.0], dist, 1.5, True)
    native_acc()(want, offsets, 42, [3, 1], [0.25, -2.0], dist, 1.5, True)
    for j, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_same_bits(a, b, f"tensor {j}")
        assert a._version > versions[j], f"tensor {j}: version counter not bumped"


@needs_native
def test_direct_call_rejects_a_non_cpu_tensor() -> None:
    with pytest.raises(RuntimeError, match=r"expected out\[0\] to be a CPU tensor but got a tensor on meta"):
        direct_acc()([torch.zeros(3, device="meta")], [0], 1, [0], [1.0], 0, 1.0, True)


def test_accumulate_directions_for_picks_the_direct_call_on_cpu_only() -> None:
    if _native.HAS_EXTENSION:
        assert P.accumulate_directions_for(torch.device("cpu")) is direct_acc()
    assert P.accumulate_directions_for(torch.device("meta")) is not getattr(_native._C, "_accumulate_directions_cpu", 0)
