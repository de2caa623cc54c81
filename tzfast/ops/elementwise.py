"""Native elementwise ops: Python wrappers, fake kernels and pure-torch reference twins.

The math and the argument conventions are those of ``docs/native-ops.md``. For each op
``<op>_`` this module has

* ``<op>_``: the wrapper with the schema's signature. It calls ``torch.ops.tzfast.<op>_``
  when the native extension is loaded and the reference twin otherwise; nothing else (it is
  on the hot path).
* a fake kernel, registered with :func:`torch.library.register_fake`, so ``torch.compile``
  traces the op; the ops return nothing, so it only validates the call.
* ``<op>_reference_``: the pure-torch twin, same signature, same checks, same math. It
  evaluates every expression in the order the native kernels do (both use the formulas of
  ``csrc/include/tzfast/elementwise.h``, and the native build forbids fused multiply-add), so
  native and twin agree bitwise wherever only ``+ - * /`` and a correctly rounded ``sqrt``
  are involved (torch's CPU sqrt is within 1 ulp, see ``_sqrt``; ``pow`` is libm's natively
  and torch's here). Half types compute in float32 and are rounded once when stored, as
  natively.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._native import HAS_EXTENSION

__all__ = [
    "UNARY_OPS",
    "adam_",
    "adam_reference_",
    "ema_",
    "ema_reference_",
    "ema_sq_",
    "ema_sq_reference_",
    "nag_",
    "nag_reference_",
    "unary_",
    "unary_reference_",
    "weight_decay_",
    "weight_decay_reference_",
]

#: Op codes of :func:`unary_`.
UNARY_OPS = {"affine": 0, "abs": 1, "sign": 2, "sqrt": 3, "clamp": 4}
_UNARY_CODES_TEXT = "0 (affine), 1 (abs), 2 (sign), 3 (sqrt), 4 (clamp)"
_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# c10's names, as TORCH_CHECK prints them
_DTYPE_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
                torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
                torch.uint8: "Byte", torch.bool: "Bool", torch.complex64: "ComplexFloat",
                torch.complex128: "ComplexDouble"}


# ----------------------------------------------------------------------------- checks
def _dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _sizes(t: Tensor) -> str:
    return str(list(t.shape))


def _check_call(op: str, tensors: Sequence[Tensor], out: Sequence[Tensor], params: Sequence[Tensor] | None,
                states: Sequence[tuple[str, Tensor | None]], *, check_overlap: bool = True) -> int:
    """The checks of the native ``prepare_call`` (same conditions, same messages); returns the
    total numel of ``tensors``. Raises RuntimeError, as TORCH_CHECK does."""
    n = len(tensors)
    if len(out) != n:
        raise RuntimeError(f"tzfast::{op}: expected out to be a list of {n} tensors (one per entry of tensors) "
                           f"but got {len(out)}")
    if params is not None and len(params) != n:
        raise RuntimeError(f"tzfast::{op}: expected params to be a list of {n} tensors (one per entry of tensors) "
                           f"but got {len(params)}")
    ref: Tensor | None = None
    ref_name = ""
    if n > 0:
        ref, ref_name = tensors[0], "tensors[0]"
    else:
        for name, s in states:
            if s is not None:
                ref, ref_name = s, name
                break
    if ref is None:
        return 0
    if ref.dtype not in _FLOATING:
        raise RuntimeError(f"tzfast::{op}: expected a floating dtype (Float, Double, Half or BFloat16) but "
                           f"{ref_name} has dtype {_dtype_name(ref.dtype)}")

    def like(name: str, t: Tensor) -> None:
        if t.dtype != ref.dtype:
            raise RuntimeError(f"tzfast::{op}: expected {name} to have dtype {_dtype_name(ref.dtype)} (the dtype of "
                               f"{ref_name}) but got {_dtype_name(t.dtype)}")
        if t.device != ref.device:
            raise RuntimeError(f"tzfast::{op}: expected {name} on device {ref.device} (the device of {ref_name}) "
                               f"but got {t.device}")

    total = 0
    for i in range(n):
        x, o = tensors[i], out[i]
        like(f"tensors[{i}]", x)
        like(f"out[{i}]", o)
        if o.shape != x.shape:
            raise RuntimeError(f"tzfast::{op}: expected out[{i}] to have the sizes of tensors[{i}], {_sizes(x)}, "
                               f"but got {_sizes(o)}")
        if params is not None:
            p = params[i]
            like(f"params[{i}]", p)
            if p.shape != x.shape:
                raise RuntimeError(f"tzfast::{op}: expected params[{i}] to have the sizes of tensors[{i}], "
                                   f"{_sizes(x)}, but got {_sizes(p)}")
        total += x.numel()
    present: list[tuple[str, Tensor]] = []
    for name, s in states:
        if s is None:
            continue
        like(name, s)
        if s.dim() != 1:
            raise RuntimeError(f"tzfast::{op}: expected {name} to be a 1-D flat buffer but got a {s.dim()}-D tensor "
                               f"with sizes {_sizes(s)}")
        if s.numel() != total:
            raise RuntimeError(f"tzfast::{op}: expected {name} to have {total} elements (the total numel of tensors) "
                               f"but got {s.numel()}")
        if not s.is_contiguous():
            raise RuntimeError(f"tzfast::{op}: expected {name} to be contiguous but it has strides {list(s.stride())}")
        if check_overlap:
            for other_name, other in present:
                if _share_memory(s, other):
                    raise RuntimeError(f"tzfast::{op}: expected {name} and {other_name} to be separate buffers but "
                                       "they share memory")
        present.append((name, s))
    return total


def _share_memory(a: Tensor, b: Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0 or a.device.type == "meta" or a.device != b.device:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def _check_unary_op(op: int) -> None:
    if not 0 <= op < 5:
        raise RuntimeError(f"tzfast::unary_: unknown op code {op}; accepted codes: {_UNARY_CODES_TEXT}")


# ----------------------------------------------------------------------------- reference math
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _flat(tensors: Sequence[Tensor], like: Tensor) -> Tensor:
    """All of ``tensors`` as one flat vector in the compute dtype (a copy)."""
    cdt = _compute_dtype(like.dtype)
    if len(tensors) == 0:
        return torch.empty(0, dtype=cdt, device=like.device)
    return torch.cat([t.reshape(-1) for t in tensors]).to(cdt)


def _load(state: Tensor) -> Tensor:
    return state.to(_compute_dtype(state.dtype))


def _sqrt(t: Tensor) -> Tensor:
    """Square root of the twins. torch's CPU sqrt (MKL VML) is within 1 ulp but not always
    correctly rounded, while the native kernels use the IEEE (correctly rounded) sqrt; the
    tests swap in a correctly rounded one to compare bitwise."""
    return t.sqrt()


def _lerp(a: Tensor, b: Tensor, w: float) -> Tensor:
    """torch's two-sided lerp: ``w < 0.5 ? a + w*(b - a) : b - (b - a)*(1 - w)``."""
    d = b - a
    if w < 0.5:
        return a + d * w
    return b - d * (1.0 - w)


def _is_even_integer(p: float) -> bool:
    return float(p).is_integer() and float(p) % 2 == 0


def _powabs(x: Tensor, p: float) -> Tensor:
    if p == 2:
        return x * x
    if p == 1:
        return x.abs()
    y = x.pow(p)
    return y if _is_even_integer(p) else y.abs()


def _root(d: Tensor, p: float) -> Tensor:
    if p == 2:
        return _sqrt(d)
    if p == 1:
        return d.abs()
    return d.pow(1.0 / p)


def _second_moment(v: Tensor, x: Tensor, beta: float, p: float) -> Tensor:
    if p == 2:
        return v * beta + (x * (1.0 - beta)) * x
    return _lerp(v, _powabs(x, p), 1.0 - beta)


def _sign(x: Tensor) -> Tensor:
    """sign with NaN kept (torch.sign maps NaN to 0)."""
    return torch.where(torch.isnan(x), x, x.sign())


def _ipow(x: Tensor, e: int) -> Tensor:
    """x**e for an integer e by repeated squaring, as the native kernels compute it."""
    n = abs(e)
    r: Tensor | None = None
    base = x
    while n:
        if n & 1:
            r = base if r is None else r * base
        n >>= 1
        if n:
            base = base * base
    if r is None:
        r = torch.ones_like(x)
    return 1.0 / r if e < 0 else r


def _store_out(out: Sequence[Tensor], u: Tensor, out_scale: float, accumulate: bool) -> None:
    """The epilogue: ``out = out_scale*u`` or ``out = out + out_scale*u``, segment by segment."""
    su = u * out_scale
    off = 0
    for o in out:
        k = o.numel()
        seg = su[off:off + k].view(o.shape)
        off += k
        if accumulate:
            o.copy_(o.to(su.dtype) + seg)
        else:
            o.copy_(seg)


# ----------------------------------------------------------------------------- reference twins
def adam_reference_(tensors: Sequence[Tensor], exp_avg: Tensor, exp_avg_sq: Tensor, max_exp_avg_sq: Tensor | None,
                    out: Sequence[Tensor], beta1: float, beta2: float, eps: float, step_size: float, pow: float,
                    out_scale: float, accumulate: bool) -> None:
    """Pure-torch twin of :func:`adam_`."""
    _check_call("adam_", tensors, out, None,
                (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq), ("max_exp_avg_sq", max_exp_avg_sq)))
    if len(tensors) == 0:
        return
    x = _flat(tensors, tensors[0])
    m = _lerp(_load(exp_avg), x, 1.0 - beta1)
    v = _second_moment(_load(exp_avg_sq), x, beta2, pow)
    d = v
    if max_exp_avg_sq is not None:
        d = torch.maximum(_load(max_exp_avg_sq), v)
        max_exp_avg_sq.copy_(d)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    u = (m * step_size) / (_root(d, pow) + eps)
    _store_out(out, u, out_scale, accumulate)


def ema_reference_(tensors: Sequence[Tensor], exp_avg: Tensor, out: Sequence[Tensor], momentum: float,
                   dampening: float, lerp: bool, out_scale: float, accumulate: bool) -> None:
    """Pure-torch twin of :func:`ema_`."""
    _check_call("ema_", tensors, out, None, (("exp_avg", exp_avg),))
    if len(tensors) == 0:
        return
    x = _flat(tensors, tensors[0])
    xd = x * (1.0 - dampening) if dampening != 0 else x
    m0 = _load(exp_avg)
    m = _lerp(m0, xd, 1.0 - momentum) if lerp else m0 * momentum + xd
    exp_avg.copy_(m)
    _store_out(out, m, out_scale, accumulate)


def nag_reference_(tensors: Sequence[Tensor], velocity: Tensor, out: Sequence[Tensor], momentum: float,
                   dampening: float, lerp: bool, out_scale: float, accumulate: bool) -> None:
    """Pure-torch twin of :func:`nag_`."""
    _check_call("nag_", tensors, out, None, (("velocity", velocity),))
    if len(tensors) == 0:
        return
    x = _flat(tensors, tensors[0])
    v0 = _load(velocity)
    vel = _lerp(v0, x, 1.0 - momentum) if lerp else (v0 + x) * momentum
    velocity.copy_(vel)
    u = x + vel * (1.0 - dampening)
    _store_out(out, u, out_scale, accumulate)


def ema_sq_reference_(tensors: Sequence[Tensor], exp_avg_sq: Tensor, max_exp_avg_sq: Tensor | None,
                      out: Sequence[Tensor], beta: float, pow: float, take_root: bool, out_scale: float,
                      accumulate: bool) -> None:
    """Pure-torch twin of :func:`ema_sq_`."""
    _check_call("ema_sq_", tensors, out, None, (("exp_avg_sq", exp_avg_sq), ("max_exp_avg_sq", max_exp_avg_sq)))
    if len(tensors) == 0:
        return
    x = _flat(tensors, tensors[0])
    v = _second_moment(_load(exp_avg_sq), x, beta, pow)
    d = v
    if max_exp_avg_sq is not None:
        d = torch.maximum(_load(max_exp_avg_sq), v)
        max_exp_avg_sq.copy_(d)
    exp_avg_sq.copy_(v)
    u = _root(d, pow) if take_root else d
    _store_out(out, u, out_scale, accumulate)


def unary_reference_(tensors: Sequence[Tensor], out: Sequence[Tensor], op: int, a: float, b: float,
                     out_scale: float, accumulate: bool) -> None:
    """Pure-torch twin of :func:`unary_`."""
    _check_unary_op(op)
    _check_call("unary_", tensors, out, None, ())
    if len(tensors) == 0:
        return
    x = _flat(tensors, tensors[0])
    if op == 0:
        u = x * a + b
    elif op == 1:
        u = x.abs()
    elif op == 2:
        u = _sign(x)
    elif op == 3:
        u = _sqrt(x)
    else:
        u = x.clamp(min=a, max=b)
    _store_out(out, u, out_scale, accumulate)


def weight_decay_reference_(tensors: Sequence[Tensor], params: Sequence[Tensor], out: Sequence[Tensor],
                            weight_decay: float, ord: int, out_scale: float, accumulate: bool) -> None:
    """Pure-torch twin of :func:`weight_decay_`."""
    _check_call("weight_decay_", tensors, out, params, ())
    if len(tensors) == 0:
        return
    x = _flat(tensors, tensors[0])
    p = _flat(params, tensors[0])
    if ord == 1:
        u = x + _sign(p) * weight_decay
    elif ord == 2:
        u = x + p * weight_decay
    else:
        u = x + _ipow(p, ord - 1) * weight_decay
    _store_out(out, u, out_scale, accumulate)


# ----------------------------------------------------------------------------- native + fakes
if HAS_EXTENSION:
    _adam = torch.ops.tzfast.adam_.default
    _ema = torch.ops.tzfast.ema_.default
    _nag = torch.ops.tzfast.nag_.default
    _ema_sq = torch.ops.tzfast.ema_sq_.default
    _unary = torch.ops.tzfast.unary_.default
    _weight_decay = torch.ops.tzfast.weight_decay_.default

    @torch.library.register_fake("tzfast::adam_")
    def _adam_fake(tensors: list[Tensor], exp_avg: Tensor, exp_avg_sq: Tensor, max_exp_avg_sq: Tensor | None,
                   out: list[Tensor], *args: Any) -> None:
        _check_call("adam_", tensors, out, None,
                    (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq), ("max_exp_avg_sq", max_exp_avg_sq)),
                    check_overlap=False)

    @torch.library.register_fake("tzfast::ema_")
    def _ema_fake(tensors: list[Tensor], exp_avg: Tensor, out: list[Tensor], *args: Any) -> None:
        _check_call("ema_", tensors, out, None, (("exp_avg", exp_avg),), check_overlap=False)

    @torch.library.register_fake("tzfast::nag_")
    def _nag_fake(tensors: list[Tensor], velocity: Tensor, out: list[Tensor], *args: Any) -> None:
        _check_call("nag_", tensors, out, None, (("velocity", velocity),), check_overlap=False)

    @torch.library.register_fake("tzfast::ema_sq_")
    def _ema_sq_fake(tensors: list[Tensor], exp_avg_sq: Tensor, max_exp_avg_sq: Tensor | None, out: list[Tensor],
                     *args: Any) -> None:
        _check_call("ema_sq_", tensors, out, None,
                    (("exp_avg_sq", exp_avg_sq), ("max_exp_avg_sq", max_exp_avg_sq)), check_overlap=False)

    @torch.library.register_fake("tzfast::unary_")
    def _unary_fake(tensors: list[Tensor], out: list[Tensor], op: int, *args: Any) -> None:
        _check_unary_op(op)
        _check_call("unary_", tensors, out, None, (), check_overlap=False)

    @torch.library.register_fake("tzfast::weight_decay_")
    def _weight_decay_fake(tensors: list[Tensor], params: list[Tensor], out: list[Tensor], *args: Any) -> None:
        _check_call("weight_decay_", tensors, out, params, (), check_overlap=False)
else:
    _adam = adam_reference_
    _ema = ema_reference_
    _nag = nag_reference_
    _ema_sq = ema_sq_reference_
    _unary = unary_reference_
    _weight_decay = weight_decay_reference_


# ----------------------------------------------------------------------------- wrappers
def adam_(tensors: Sequence[Tensor], exp_avg: Tensor, exp_avg_sq: Tensor, max_exp_avg_sq: Tensor | None,
          out: Sequence[Tensor], beta1: float, beta2: float, eps: float, step_size: float, pow: float,
          out_scale: float, accumulate: bool) -> None:
    """Adam's update over flat state, one call for all tensors.

    ``m = lerp(m, x, 1-beta1)``; ``v = beta2*v + (1-beta2)*x*x`` (``pow == 2``, else a lerp of
    ``|x|^pow``); with ``max_exp_avg_sq`` (AMSGrad) ``vmax = max(vmax, v)`` is used in place of
    ``v``; ``u = (m*step_size) / (root(v, pow) + eps)``. ``step_size`` carries the debiasing.
    Epilogue: ``out = out_scale*u``, or ``out += out_scale*u`` when ``accumulate``.
    """
    _adam(tensors, exp_avg, exp_avg_sq, max_exp_avg_sq, out, beta1, beta2, eps, step_size, pow, out_scale,
          accumulate)


def ema_(tensors: Sequence[Tensor], exp_avg: Tensor, out: Sequence[Tensor], momentum: float, dampening: float,
         lerp: bool, out_scale: float, accumulate: bool) -> None:
    """Exponential moving average (``lerp``) or heavy-ball momentum, ``u = m``."""
    _ema(tensors, exp_avg, out, momentum, dampening, lerp, out_scale, accumulate)


def nag_(tensors: Sequence[Tensor], velocity: Tensor, out: Sequence[Tensor], momentum: float, dampening: float,
         lerp: bool, out_scale: float, accumulate: bool) -> None:
    """Nesterov momentum: ``vel = (vel + x)*momentum`` (or a lerp), ``u = x + vel*(1 - dampening)``."""
    _nag(tensors, velocity, out, momentum, dampening, lerp, out_scale, accumulate)


def ema_sq_(tensors: Sequence[Tensor], exp_avg_sq: Tensor, max_exp_avg_sq: Tensor | None, out: Sequence[Tensor],
            beta: float, pow: float, take_root: bool, out_scale: float, accumulate: bool) -> None:
    """EMA of ``|x|^pow`` (optionally AMSGrad max), ``u`` = the average or its ``pow``-th root."""
    _ema_sq(tensors, exp_avg_sq, max_exp_avg_sq, out, beta, pow, take_root, out_scale, accumulate)


def unary_(tensors: Sequence[Tensor], out: Sequence[Tensor], op: int, a: float, b: float, out_scale: float,
           accumulate: bool) -> None:
    """Elementwise map by op code (see :data:`UNARY_OPS`): affine ``a*x + b``, abs, sign, sqrt,
    clamp to ``[a, b]``."""
    _unary(tensors, out, op, a, b, out_scale, accumulate)


def weight_decay_(tensors: Sequence[Tensor], params: Sequence[Tensor], out: Sequence[Tensor], weight_decay: float,
                  ord: int, out_scale: float, accumulate: bool) -> None:
    """``u = x + weight_decay*sign(p)`` (``ord == 1``), ``x + weight_decay*p`` (2), else
    ``x + weight_decay*p**(ord - 1)``."""
    _weight_decay(tensors, params, out, weight_decay, ord, out_scale, accumulate)
