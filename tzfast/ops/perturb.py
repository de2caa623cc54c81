"""The perturbation engine's ops: Python wrappers, fake kernels and pure-torch reference twins.

The math is ``docs/perturbation.md``: element ``i`` of direction ``(seed, sample)`` is a pure
function of the two and of ``i``, the global element index, drawn from Philox4x32-10 and turned
into a value by float32 arithmetic (``csrc/include/tzfast/random.h``).

* :func:`accumulate_directions_` — ``out[j][e] = (accumulate ? out[j][e] : 0) + out_scale *
  sum_k coeffs[k] * z(seed, samples[k], offsets[j] + e)``, all directions in one pass, none stored.
* :func:`direction_sq_norm` — ``sum_{i < numel} z(seed, sample, i)^2`` in float64 (to scale a
  ``'sphere'`` direction to norm ``sqrt(numel)``).

Each has a wrapper with the schema's signature (native when the extension is loaded, the twin
otherwise), a fake kernel for ``torch.compile``, and a twin ``<op>_reference_`` /
``<op>_reference`` that computes the same bits with torch integer and float32 ops: Philox's
32-bit products are split into 16-bit halves in int64 tensors, and every float32 operation of
the header is done by one torch op in the same order (torch's CPU kernels do not fuse a multiply
and an add); the square root is taken in float64 and rounded, which is correctly rounded like
the native ``sqrt``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._native import HAS_EXTENSION, _C

__all__ = [
    "DISTRIBUTIONS",
    "accumulate_directions_",
    "accumulate_directions_for",
    "accumulate_directions_reference_",
    "direction_sq_norm",
    "direction_sq_norm_reference",
    "direction_values_reference",
    "distribution_code",
    "philox4x32_10_reference",
    "sphere_scale",
]

#: Distribution codes of the ``dist`` argument. ``'sphere'`` draws the Gaussian values; the
#: caller scales direction ``k`` by :func:`sphere_scale` (folded into ``coeffs``).
DISTRIBUTIONS: dict[str, int] = {"gaussian": 0, "normal": 0, "rademacher": 1, "uniform": 2, "sphere": 3}
_CODES_TEXT = "0 (gaussian, normal), 1 (rademacher), 2 (uniform), 3 (sphere)"
_GAUSSIAN, _RADEMACHER, _UNIFORM, _SPHERE = 0, 1, 2, 3
_MAX_SAMPLE = 0xFFFFFFFF
_INT64_MAX = (1 << 63) - 1
_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_DTYPE_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
                torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
                torch.uint8: "Byte", torch.bool: "Bool", torch.complex64: "ComplexFloat",
                torch.complex128: "ComplexDouble"}


def distribution_code(name: str) -> int:
    """The ``dist`` code of a distribution name (see :data:`DISTRIBUTIONS`).

    Raises:
        ValueError: for any other name, listing the accepted ones.
    """
    code = DISTRIBUTIONS.get(name) if isinstance(name, str) else None
    if code is None:
        raise ValueError(f"unknown distribution {name!r}; accepted: {', '.join(repr(n) for n in DISTRIBUTIONS)}")
    return code


# ----------------------------------------------------------------------------- checks
def _dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _check_distribution(op: str, dist: int) -> None:
    if not 0 <= dist < 4:
        raise RuntimeError(f"tzfast::{op}: unknown distribution code {dist}; accepted codes: {_CODES_TEXT}")


def _check_sample(op: str, name: str, sample: int) -> None:
    if not 0 <= sample <= _MAX_SAMPLE:
        raise RuntimeError(f"tzfast::{op}: expected {name} in [0, {_MAX_SAMPLE}] (a 32-bit counter word) but got "
                           f"{sample}")


def _check_directions(out: Sequence[Tensor], offsets: Sequence[int], samples: Sequence[int],
                      coeffs: Sequence[float], dist: int) -> None:
    """The checks of the native ``prepare_directions`` (same order, same messages); RuntimeError
    like TORCH_CHECK."""
    op = "accumulate_directions_"
    _check_distribution(op, dist)
    if len(samples) != len(coeffs):
        raise RuntimeError(f"tzfast::{op}: expected samples and coeffs to have the same length but got "
                           f"{len(samples)} samples and {len(coeffs)} coeffs")
    if len(samples) == 0:
        raise RuntimeError(f"tzfast::{op}: expected at least one direction (samples and coeffs of length >= 1) "
                           "but got 0")
    for k, s in enumerate(samples):
        _check_sample(op, f"samples[{k}]", s)
    if len(offsets) != len(out):
        raise RuntimeError(f"tzfast::{op}: expected offsets to be a list of {len(out)} offsets (one per entry of "
                           f"out) but got {len(offsets)}")
    if len(out) == 0:
        return
    ref = out[0]
    if ref.dtype not in _FLOATING:
        raise RuntimeError(f"tzfast::{op}: expected a floating dtype (Float, Double, Half or BFloat16) but out[0] has "
                           f"dtype {_dtype_name(ref.dtype)}")
    for j, o in enumerate(out):
        if o.dtype != ref.dtype:
            raise RuntimeError(f"tzfast::{op}: expected out[{j}] to have dtype {_dtype_name(ref.dtype)} (the dtype of "
                               f"out[0]) but got {_dtype_name(o.dtype)}")
        if o.device != ref.device:
            raise RuntimeError(f"tzfast::{op}: expected out[{j}] on device {ref.device} (the device of out[0]) but got "
                               f"{o.device}")
        if offsets[j] < 0:
            raise RuntimeError(f"tzfast::{op}: expected offsets[{j}] >= 0 but got {offsets[j]}")
        if offsets[j] > _INT64_MAX - o.numel():
            raise RuntimeError(f"tzfast::{op}: expected offsets[{j}] + numel(out[{j}]) <= 2^63 - 1 but got "
                               f"{offsets[j]} + {o.numel()}")
        if any(st == 0 and sz > 1 for st, sz in zip(o.stride(), o.shape, strict=True)):
            raise RuntimeError(f"tzfast::{op}: expected out[{j}] to have no internal overlap (each element its own "
                               f"memory) but it has strides {list(o.stride())}")


def _check_sq_norm(sample: int, dist: int, numel: int) -> None:
    op = "direction_sq_norm"
    _check_distribution(op, dist)
    _check_sample(op, "sample", sample)
    if numel < 0:
        raise RuntimeError(f"tzfast::{op}: expected numel >= 0 but got {numel}")


# ----------------------------------------------------------------------------- Philox (int64 tensors)
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF


def _mulhilo(a: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """High and low 32 bits of ``a * m`` (``a``: int64 tensor of values in [0, 2^32)), without
    leaving int64: ``a = ah*2^16 + al``, both partial products < 2^48."""
    th = (a >> 16) * m
    tl = (a & 0xFFFF) * m
    hi = (th + (tl >> 16)) >> 16
    lo = (((th & 0xFFFF) << 16) + tl) & _MASK
    return hi, lo


def philox4x32_10_reference(counter: Sequence[Tensor | int],
                            key: Sequence[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32-10 of ``counter`` (four int64 tensors or ints, values in [0, 2^32), broadcast
    together) under ``key`` (two ints): the four output words as int64 tensors."""
    xs = torch.broadcast_tensors(*(torch.as_tensor(c, dtype=torch.int64) for c in counter))
    x0, x1, x2, x3 = (x & _MASK for x in xs)
    k0, k1 = int(key[0]) & _MASK, int(key[1]) & _MASK
    for r in range(10):
        hi0, lo0 = _mulhilo(x0, _M0)
        hi1, lo1 = _mulhilo(x2, _M1)
        x0, x1, x2, x3 = hi1 ^ x1 ^ ((k0 + r * _W0) & _MASK), lo1, hi0 ^ x3 ^ ((k1 + r * _W1) & _MASK), lo0
    return x0, x1, x2, x3


def _key(seed: int) -> tuple[int, int]:
    s = int(seed) & ((1 << 64) - 1)
    return s & _MASK, s >> 32


# ----------------------------------------------------------------------------- float32 math (random.h)
def _c(x: str) -> Tensor:
    """A float32 constant from its exact hex literal (the header's)."""
    v = float.fromhex(x)
    t = torch.tensor(v, dtype=torch.float32)
    assert float(t) == v, x
    return t


_LOG_P0, _LOG_P1, _LOG_P2 = _c("0x1.55557ap-1"), _c("0x1.995eb6p-2"), _c("0x1.31e34cp-2")
_LN2_HI, _LN2_LO = _c("0x1.62e4p-1"), _c("0x1.7f7d1cp-20")
_SIN = [_c("0x1.921fb6p+2"), _c("-0x1.4abbbap+5"), _c("0x1.465ec6p+6"), _c("-0x1.2d9bb8p+6")]
_COS = [_c("-0x1.3bd3ccp+4"), _c("0x1.03c1dep+6"), _c("-0x1.55c664p+6"), _c("0x1.d9f7bcp+5")]
_SQRT3 = _c("0x1.bb67aep+0")
_ONE, _TWO, _MINUS_TWO = _c("0x1p+0"), _c("0x1p+1"), _c("-0x1p+1")
_TWO_M24, _TWO_M23 = _c("0x1p-24"), _c("0x1p-23")
_SQRT2_BITS = 0x3FB504F3


def _bits_to_f32(b: Tensor) -> Tensor:
    """int64 tensor of 32-bit patterns -> float32 with those bits."""
    return ((b ^ 0x80000000) - 0x80000000).to(torch.int32).view(torch.float32)


def _f32_to_bits(f: Tensor) -> Tensor:
    return f.view(torch.int32).to(torch.int64) & _MASK


def _odd24(x: Tensor) -> Tensor:
    return (x >> 8) | 1  # == ((x >> 9) << 1) | 1


def _log_odd24(v: Tensor) -> Tensor:
    b = _f32_to_bits(v.to(torch.float32))
    mb1 = (b & 0x007FFFFF) | 0x3F800000
    big = mb1 > _SQRT2_BITS
    mb = torch.where(big, mb1 - 0x00800000, mb1)
    k = (b >> 23) - torch.where(big, 150, 151)
    m = _bits_to_f32(mb)
    f = m - _ONE
    s = f / (f + _TWO)
    z = s * s
    p = _LOG_P0 + z * (_LOG_P1 + z * _LOG_P2)
    lnm = _TWO * s + (s * z) * p
    kf = k.to(torch.float32)
    return kf * _LN2_HI + (kf * _LN2_LO + lnm)


def _sincos_odd24(v: Tensor) -> tuple[Tensor, Tensor]:
    q = (v + (1 << 21)) >> 22
    r = v - (q << 22)
    f = r.to(torch.float32) * _TWO_M24
    z = f * f
    sr = f * (_SIN[0] + z * (_SIN[1] + z * (_SIN[2] + z * _SIN[3])))
    cr = _ONE + z * (_COS[0] + z * (_COS[1] + z * (_COS[2] + z * _COS[3])))
    swap = (q & 1) != 0
    s = torch.where(swap, cr, sr)
    c = torch.where(swap, sr, cr)
    s = torch.where((q & 2) != 0, -s, s)
    c = torch.where(((q + 1) & 2) != 0, -c, c)
    return s, c


def _sqrt_rn(x: Tensor) -> Tensor:
    return x.double().sqrt().float()


def _box_muller(xe: Tensor, xo: Tensor) -> tuple[Tensor, Tensor]:
    rad = _sqrt_rn(_MINUS_TWO * _log_odd24(_odd24(xe)))
    s, c = _sincos_odd24(_odd24(xo))
    return rad * c, rad * s


def _uniform(x: Tensor) -> Tensor:
    return ((_odd24(x) - (1 << 23)).to(torch.float32) * _TWO_M23) * _SQRT3


def _elements_per_block(dist: int) -> int:
    return 128 if dist == _RADEMACHER else 4


def _block_values(dist: int, seed: int, sample: int, blocks: Tensor) -> Tensor:
    """float32 values of whole Philox blocks (int64 tensor of block indices), element order."""
    x0, x1, x2, x3 = philox4x32_10_reference((blocks & _MASK, blocks >> 32, sample, 0), _key(seed))
    if dist == _RADEMACHER:
        words = torch.stack([x0, x1, x2, x3], dim=-1)  # [nb, 4]
        bits = (words.unsqueeze(-1) >> torch.arange(32, dtype=torch.int64)) & 1  # [nb, 4, 32]
        return torch.where(bits != 0, -1.0, 1.0).to(torch.float32).reshape(-1)
    if dist == _UNIFORM:
        return torch.stack([_uniform(x0), _uniform(x1), _uniform(x2), _uniform(x3)], dim=-1).reshape(-1)
    a, b = _box_muller(x0, x1)
    c, d = _box_muller(x2, x3)
    return torch.stack([a, b, c, d], dim=-1).reshape(-1)


def _ranges_values(dist: int, seed: int, sample: int, ranges: Sequence[tuple[int, int]]) -> Tensor:
    """Direction values (float32) of the global index ranges ``[start, start + n)``, concatenated."""
    per = _elements_per_block(dist)
    spans = [(s // per, (s + n + per - 1) // per) for s, n in ranges if n > 0]
    if not spans:
        return torch.empty(0, dtype=torch.float32)
    blocks = torch.cat([torch.arange(b0, b1, dtype=torch.int64) for b0, b1 in spans])
    vals = _block_values(dist, seed, sample, blocks)
    parts = []
    pos = 0
    for (s, n), (b0, b1) in zip(((s, n) for s, n in ranges if n > 0), spans, strict=True):
        lo = pos + s - b0 * per
        parts.append(vals[lo:lo + n])
        pos += (b1 - b0) * per
    return torch.cat(parts)


def direction_values_reference(seed: int, sample: int, dist: int, start: int, n: int) -> Tensor:
    """Elements ``[start, start + n)`` of direction ``(seed, sample)`` as float32 (pure torch;
    ``'sphere'`` gives the unscaled Gaussian values)."""
    _check_distribution("direction_values_reference", dist)
    _check_sample("direction_values_reference", "sample", sample)
    return _ranges_values(dist, seed, sample, [(start, n)])


# ----------------------------------------------------------------------------- reference twins
def accumulate_directions_reference_(out: Sequence[Tensor], offsets: Sequence[int], seed: int,
                                     samples: Sequence[int], coeffs: Sequence[float], dist: int, out_scale: float,
                                     accumulate: bool) -> None:
    """Pure-torch twin of :func:`accumulate_directions_` (the same bits)."""
    _check_directions(out, offsets, samples, coeffs, dist)
    live = [(o, off) for o, off in zip(out, offsets, strict=True) if o.numel() > 0]
    if not live:
        return
    dtype = live[0][0].dtype
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    ranges = [(off, o.numel()) for o, off in live]
    acc: Tensor | None = None
    for sample, coeff in zip(samples, coeffs, strict=True):
        w = torch.tensor(out_scale * coeff, dtype=torch.float64).to(cdt)  # rounded once, like the kernels
        term = w * _ranges_values(dist, seed, sample, ranges).to(cdt)
        acc = term if acc is None else acc + term
    assert acc is not None
    pos = 0
    for o, _ in live:
        seg = acc[pos:pos + o.numel()].view(o.shape).to(o.device)
        pos += o.numel()
        o.copy_(o.to(cdt) + seg if accumulate else seg)


def direction_sq_norm_reference(seed: int, sample: int, dist: int, numel: int) -> Tensor:
    """Pure-torch twin of :func:`direction_sq_norm`: the same summation order, the same bits."""
    _check_sq_norm(sample, dist, numel)
    if dist == _RADEMACHER or numel == 0:
        return torch.tensor(float(numel), dtype=torch.float64)
    block, lanes = 4096, 8  # random.h: kSqNormBlock, kSqNormLanes
    nb = (numel + block - 1) // block
    z = _ranges_values(dist, seed, sample, [(0, numel)]).double()
    sq = torch.zeros(nb * block, dtype=torch.float64)
    sq[:numel] = z * z
    sq = sq.view(nb, block // lanes, lanes)
    s = torch.zeros(nb, lanes, dtype=torch.float64)
    for j in range(block // lanes):  # lane sums, in increasing element order
        s = s + sq[:, j, :]
    values = ((s[:, 0] + s[:, 1]) + (s[:, 2] + s[:, 3])) + ((s[:, 4] + s[:, 5]) + (s[:, 6] + s[:, 7]))
    total = 0.0
    for v in values.tolist():  # blocks in order
        total += v
    return torch.tensor(total, dtype=torch.float64)


# ----------------------------------------------------------------------------- native + fakes
_accumulate: Callable[..., None]
_sq_norm: Callable[..., Tensor]
if HAS_EXTENSION:
    _accumulate = torch.ops.tzfast.accumulate_directions_.default
    _sq_norm = torch.ops.tzfast.direction_sq_norm.default

    @torch.library.register_fake("tzfast::accumulate_directions_")
    def _accumulate_fake(out: list[Tensor], offsets: list[int], seed: int, samples: list[int], coeffs: list[float],
                         dist: int, out_scale: float, accumulate: bool) -> None:
        _check_directions(out, offsets, samples, coeffs, dist)

    @torch.library.register_fake("tzfast::direction_sq_norm")
    def _sq_norm_fake(seed: int, sample: int, dist: int, numel: int) -> Tensor:
        _check_sq_norm(sample, dist, numel)
        return torch.empty((), dtype=torch.float64)
else:
    _accumulate = accumulate_directions_reference_
    _sq_norm = direction_sq_norm_reference


# ----------------------------------------------------------------------------- wrappers
def accumulate_directions_(out: Sequence[Tensor], offsets: Sequence[int], seed: int, samples: Sequence[int],
                           coeffs: Sequence[float], dist: int, out_scale: float, accumulate: bool) -> None:
    """Adds (or writes) a combination of seeded random directions, in one pass, none stored.

    ``out[j][e] = (out[j][e] if accumulate else 0) + out_scale * sum_k coeffs[k] * z(seed, samples[k],
    offsets[j] + e)``, with ``z`` the distribution ``dist`` (see :data:`DISTRIBUTIONS`) at global element
    index ``offsets[j] + e`` (``e`` counts through ``out[j]`` row-major). ``out_scale * coeffs[k]`` is
    rounded once to the compute type (float32 for float32/float16/bfloat16, float64 for float64) and
    the directions are summed in list order. ``perturb_`` (``p += h z``) is
    ``accumulate_directions_(params, offsets, seed, [k], [h], dist, 1.0, True)``.
    """
    _accumulate(out, offsets, seed, samples, coeffs, dist, out_scale, accumulate)


_direct_accumulate: Callable[..., None] | None = getattr(_C, "_accumulate_directions_cpu", None)


def accumulate_directions_for(device: torch.device) -> Callable[..., None]:
    """The cheapest entry to :func:`accumulate_directions_` for tensors on ``device``.

    On the CPU, outside ``torch.compile`` tracing, that is ``tzfast._C``'s direct binding of the
    same kernel (no dispatcher: ~1 us a call instead of ~4 us; the same checks and bits, and
    the tensors' version counters bumped like an in-place op's); otherwise the registered op.
    Callers resolve it once per step, not once per call.
    """
    if _direct_accumulate is not None and device.type == "cpu" and not torch.compiler.is_compiling():
        return _direct_accumulate
    return _accumulate


def direction_sq_norm(seed: int, sample: int, dist: int, numel: int) -> Tensor:
    """``sum_{i < numel} z(seed, sample, i)^2`` as a float64 0-d CPU tensor, generated, not read;
    the same value for any thread count (fixed summation order, docs/perturbation.md)."""
    return _sq_norm(seed, sample, dist, numel)


def sphere_scale(seed: int, sample: int, numel: int) -> float:
    """The factor that takes the Gaussian direction ``(seed, sample)`` over ``numel`` elements to
    norm ``sqrt(numel)`` (multiply it into the coefficient of a ``'sphere'`` direction)."""
    if numel == 0:
        return 1.0
    sq = float(direction_sq_norm(seed, sample, _SPHERE, numel))
    return math.sqrt(numel / sq) if sq > 0 else 0.0
