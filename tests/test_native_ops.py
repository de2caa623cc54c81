"""The native elementwise ops (docs/native-ops.md) against their pure-torch reference twins.

* native == twin for every op and every mode flag, exactly (NaN where NaN) on float32 and
  float64 wherever the math is + - * / sqrt, within a few ulp where pow() is involved;
* odd shapes (0-d, 1-element, empty, many tensors, tensors spanning several chunks),
  non-contiguous inputs and outputs, in place (``out is tensors``), accumulate on and off;
* the baseline and the AVX2 kernels agree exactly (a subprocess with TZFAST_SIMD=baseline);
* float16 / bfloat16 against the twin;
* torch.library.opcheck for each op;
* bad input: each failure is a RuntimeError naming the op, the expected and the actual value;
* TZFAST_NO_EXTENSION=1 runs the twins, with one warning, and gives the same results.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tzfast.ops as ops
from tzfast import _native
from tzfast.ops import elementwise as E

ROOT = Path(__file__).resolve().parents[1]
NO_EXT_REQUESTED = os.environ.get("TZFAST_NO_EXTENSION", "").strip() not in ("", "0")

pytestmark = pytest.mark.skipif(NO_EXT_REQUESTED, reason="TZFAST_NO_EXTENSION is set: no native ops to compare")


def _ieee_sqrt(t: torch.Tensor) -> torch.Tensor:
    """Correctly rounded sqrt (numpy's, the hardware instruction); torch's CPU sqrt goes
    through MKL VML and is off by one ulp for some inputs."""
    with np.errstate(invalid="ignore"):
        return torch.from_numpy(np.sqrt(t.detach().cpu().numpy())).to(t.device)


@pytest.fixture(autouse=True)
def _twins_use_ieee_sqrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The twins in this process compute sqrt correctly rounded, like the native kernels, so
    the two can be compared bitwise. (The NO_EXTENSION subprocess keeps torch's sqrt.)"""
    monkeypatch.setattr(E, "_sqrt", _ieee_sqrt)


def test_twin_sqrt_hook_is_within_one_ulp_of_ieee() -> None:
    x = torch.rand(10_000, dtype=torch.float32) * 100
    a, b = torch.Tensor.sqrt(x), _ieee_sqrt(x)
    assert (a.view(torch.int32) - b.view(torch.int32)).abs().max() <= 1


def test_extension_is_loaded() -> None:
    assert _native.HAS_EXTENSION, f"tzfast._C failed to load: {_native.LOAD_ERROR}"
    info = ops.build_info()
    assert info["extension"] is True
    assert "baseline" in info["simd_compiled"]
    assert info["simd_selected"] in info["simd_compiled"]
    assert info["cuda_enabled"] is False or info["cuda_archs"]
    for key in ("version", "compiler", "flags"):
        assert isinstance(info[key], str)
    assert "-ffp-contract=off" in info["flags"]


# ----------------------------------------------------------------------------- call model
OPS = ("adam_", "ema_", "nag_", "ema_sq_", "unary_", "weight_decay_")


def native(op: str) -> Callable[..., None]:
    return getattr(torch.ops.tzfast, op).default  # type: ignore[no-any-return]


def reference(op: str) -> Callable[..., None]:
    return getattr(E, op[:-1] + "_reference_")  # type: ignore[no-any-return]


@dataclass
class Config:
    """One op with its scalar arguments; `exact` is False where pow() (libm vs torch) is used."""

    op: str
    scalars: tuple[Any, ...]
    amsgrad: bool = False
    exact: bool = True

    @property
    def id(self) -> str:
        s = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self.scalars)
        return f"{self.op}[{s}{',ams' if self.amsgrad else ''}]"


def _configs() -> list[Config]:
    cs: list[Config] = []
    for pw, ams, beta1, acc in itertools.product((2.0, 1.0, 3.0, 0.5), (False, True), (0.9, 0.3), (False, True)):
        # 1 - beta1 = 0.1 and 0.7: both sides of the two-sided lerp
        cs.append(Config("adam_", (beta1, 0.999, 1e-8, 0.01, pw, -0.5, acc), ams, pw in (1.0, 2.0)))
    for lerp, damp, mom, acc in itertools.product((False, True), (0.0, 0.3), (0.9, 0.2), (False, True)):
        cs.append(Config("ema_", (mom, damp, lerp, 0.75, acc)))
        cs.append(Config("nag_", (mom, damp, lerp, 0.75, acc)))
    for pw, ams, root, beta, acc in itertools.product((2.0, 1.0, 3.0), (False, True), (False, True), (0.99, 0.3),
                                                      (False, True)):
        cs.append(Config("ema_sq_", (beta, pw, root, 1.5, acc), ams, pw in (1.0, 2.0)))
    for code, acc in itertools.product(range(5), (False, True)):
        a, b = (-0.5, 0.75) if code == 4 else (1.5, -0.25)
        cs.append(Config("unary_", (code, a, b, 2.0, acc)))
    for order, acc in itertools.product((1, 2, 3, 0, 5, -1), (False, True)):
        cs.append(Config("weight_decay_", (0.1, order, -1.0, acc)))
    return cs


CONFIGS = _configs()
ODD_SHAPES: list[tuple[int, ...]] = [(), (1,), (0,), (3, 5), (17,), (2, 3, 4), (1, 0, 2), (33,)]


@dataclass
class Call:
    op: str
    tensors: list[torch.Tensor]
    params: list[torch.Tensor] | None
    states: list[torch.Tensor | None]
    out: list[torch.Tensor]
    scalars: tuple[Any, ...]
    keep: list[torch.Tensor] = field(default_factory=list)  # bases of views

    def args(self) -> tuple[Any, ...]:
        head: list[Any] = [self.tensors]
        if self.params is not None:
            head.append(self.params)
        return (*head, *self.states, self.out, *self.scalars)

    def results(self) -> list[torch.Tensor]:
        return [s for s in self.states if s is not None] + list(self.out)


def _noncontig(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous tensor equal to t (a strided slice of a larger buffer)."""
    if t.dim() == 0:
        return t.clone()
    big = torch.empty(*t.shape[:-1], t.shape[-1] * 2 + 1, dtype=t.dtype)
    big.fill_(float("nan"))
    v = big[..., 1::2]
    v.copy_(t)
    return v


def make_call(cfg: Config, shapes: Sequence[tuple[int, ...]], dtype: torch.dtype, *, seed: int = 0,
              noncontig_in: bool = False, noncontig_out: bool = False, inplace: bool = False,
              specials: bool = False) -> Call:
    """A fresh call; the same arguments give bitwise the same call."""
    g = torch.Generator().manual_seed(seed)

    def randn(shape: tuple[int, ...]) -> torch.Tensor:
        t = torch.randn(shape, generator=g, dtype=torch.float64) * 2
        if t.numel() > 3:
            t.view(-1)[::5] = 0.0  # exact zeros (sign, abs, sqrt, ipow edge)
        if specials and t.numel() > 4:
            vals = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-30], dtype=torch.float64)
            k = min(5, t.numel())
            t.view(-1)[1:1 + k] = vals[:k]
        return t.to(dtype)

    tensors = [randn(s) for s in shapes]
    total = sum(t.numel() for t in tensors)
    params = [randn(s) for s in shapes] if cfg.op == "weight_decay_" else None
    if noncontig_in:
        tensors = [_noncontig(t) for t in tensors]
        if params is not None:
            params = [_noncontig(p) for p in params]
    out = [randn(s) for s in shapes]  # drawn in every mode, so the states below are the same
    if inplace:
        out = tensors
    elif noncontig_out:
        out = [_noncontig(o) for o in out]
    m = randn((total,))
    v = randn((total,)).abs()
    vmax = randn((total,)).abs()
    states: list[torch.Tensor | None]
    if cfg.op == "adam_":
        states = [m, v, vmax if cfg.amsgrad else None]
    elif cfg.op in ("ema_", "nag_"):
        states = [m]
    elif cfg.op == "ema_sq_":
        states = [v, vmax if cfg.amsgrad else None]
    else:
        states = []
    return Call(cfg.op, tensors, params, states, out, cfg.scalars)


def assert_exact(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Same dtype, shape and values; NaN exactly where NaN (a NaN's sign and payload are not
    specified by IEEE 754 when both operands are NaN)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
    assert torch.equal(nan_a, nan_e), f"{what}: NaN positions differ"
    a, e = actual[~nan_a], expected[~nan_e]
    if not torch.equal(a, e):
        diff = (a.double() - e.double()).abs()
        i = int(torch.nan_to_num(diff, nan=float("inf")).argmax())
        raise AssertionError(f"{what}: {int((a != e).sum())} of {a.numel()} values differ; worst at {i}: "
                             f"{a[i].item()!r} vs {e[i].item()!r}")


def assert_results(actual: Call, expected: Call, exact: bool, dtype: torch.dtype) -> None:
    for k, (a, e) in enumerate(zip(actual.results(), expected.results(), strict=True)):
        if exact:
            assert_exact(a, e, f"result {k}")
        else:
            # pow(): libm natively, torch (Sleef/MKL) in the twin; values are O(1), and an
            # accumulated out may cancel, hence the absolute term
            tol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
            torch.testing.assert_close(a, e, rtol=tol, atol=tol, equal_nan=True, msg=f"result {k}")


def run_both(cfg: Config, shapes: Sequence[tuple[int, ...]], dtype: torch.dtype, **kw: Any) -> tuple[Call, Call]:
    got = make_call(cfg, shapes, dtype, **kw)
    want = make_call(cfg, shapes, dtype, **kw)
    native(cfg.op)(*got.args())
    reference(cfg.op)(*want.args())
    return got, want


# ----------------------------------------------------------------------------- native == twin
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.id)
def test_native_matches_reference_on_odd_shapes(cfg: Config, dtype: torch.dtype) -> None:
    got, want = run_both(cfg, ODD_SHAPES, dtype, seed=1)
    assert_results(got, want, cfg.exact, dtype)


# pow(-inf, 0.5) is +inf in C (native) but NaN in torch, which takes an exponent of 0.5 as sqrt
@pytest.mark.parametrize("cfg", [c for c in CONFIGS if not (c.op == "adam_" and c.scalars[4] == 0.5)],
                         ids=lambda c: c.id)
def test_native_matches_reference_with_nan_inf_zero(cfg: Config) -> None:
    got, want = run_both(cfg, [(40,), (7, 3)], torch.float32, seed=2, specials=True)
    assert_results(got, want, cfg.exact, torch.float32)


@pytest.mark.parametrize("mode", ["noncontig_in", "noncontig_out", "noncontig_both", "inplace",
                                  "inplace_noncontig"])
@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c.exact and c.scalars[-1]], ids=lambda c: c.id)
def test_native_matches_reference_noncontiguous_and_inplace(cfg: Config, mode: str) -> None:
    kw = {
        "noncontig_in": dict(noncontig_in=True),
        "noncontig_out": dict(noncontig_out=True),
        "noncontig_both": dict(noncontig_in=True, noncontig_out=True),
        "inplace": dict(inplace=True),
        "inplace_noncontig": dict(inplace=True, noncontig_in=True),
    }[mode]
    shapes = [(4, 6), (), (9,), (2, 0), (3, 1, 5)]
    got, want = run_both(cfg, shapes, torch.float64, seed=3, **kw)
    assert_results(got, want, True, torch.float64)
    if not mode.startswith("inplace"):
        # the same numbers as an ordinary contiguous call (in place is covered below)
        plain = make_call(cfg, shapes, torch.float64, seed=3)
        native(cfg.op)(*plain.args())
        for k, (a, e) in enumerate(zip(got.results(), plain.results(), strict=True)):
            assert_exact(a, e, f"result {k}")


def test_inplace_equals_out_of_place_with_out_equal_to_input() -> None:
    """out is tensors: the result equals writing into a separate out that started as x."""
    for cfg in (c for c in CONFIGS if c.exact):
        a = make_call(cfg, [(5, 7), (3,)], torch.float32, seed=4, inplace=True)
        b = make_call(cfg, [(5, 7), (3,)], torch.float32, seed=4)
        b.out = [t.clone() for t in b.tensors]
        native(cfg.op)(*a.args())
        native(cfg.op)(*b.args())
        for k, (x, y) in enumerate(zip(a.results(), b.results(), strict=True)):
            assert_exact(x, y, f"{cfg.id} result {k}")


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c.exact and c.scalars[-1]][::3], ids=lambda c: c.id)
def test_native_matches_reference_many_tensors_and_chunks(cfg: Config) -> None:
    g = torch.Generator().manual_seed(5)
    small = [tuple(int(s) for s in torch.randint(0, 6, (int(torch.randint(0, 3, (1,), generator=g)),),
                                                 generator=g)) for _ in range(300)]
    big = [(70_001,), (3,), (140_003,), (0,), (65_536,), (2, 65_537)]  # cross chunk borders, run in parallel
    got, want = run_both(cfg, small + big, torch.float32, seed=6)
    assert_results(got, want, True, torch.float32)


def _cpu_ticks_per_thread() -> dict[str, int]:
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2,
                    reason="needs Linux /proc and two CPUs")
def test_large_calls_run_on_several_threads() -> None:
    """The chunk loop really runs in parallel (at::parallel_for needs -fopenmp, or it is serial)."""
    n = 4 * 1024 * 1024
    g, p = torch.randn(n), torch.randn(n)
    m, v = torch.zeros(n), torch.zeros(n)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        before = _cpu_ticks_per_thread()
        busy: set[str] = set()
        for _ in range(20):  # pow=3 calls libm per element: about 0.1 s of CPU per call
            ops.adam_([g], m, v, None, [p], 0.9, 0.999, 1e-8, 1e-3, 3.0, -1e-3, True)
            after = _cpu_ticks_per_thread()
            busy = {t for t, k in after.items() if k > before.get(t, 0)}
            if len(busy) >= 2:
                break
    finally:
        torch.set_num_threads(old)
    assert len(busy) >= 2, f"only {len(busy)} thread(s) did work"


@pytest.mark.parametrize("op", OPS)
def test_empty_lists(op: str) -> None:
    cfg = next(c for c in CONFIGS if c.op == op)
    for impl in (native(op), reference(op)):
        call = make_call(cfg, [], torch.float32)
        impl(*call.args())
        assert all(s is None or s.numel() == 0 for s in call.states)


def test_zero_dim_and_single_element() -> None:
    for cfg in CONFIGS:
        got, want = run_both(cfg, [(), (1,), ()], torch.float64, seed=7)
        assert_results(got, want, cfg.exact, torch.float64)


def test_accumulate_false_never_reads_out() -> None:
    """With accumulate=False the old out is never read: NaN garbage in out does not leak."""
    for cfg in (c for c in CONFIGS if not c.scalars[-1]):
        a = make_call(cfg, [(9,), (2, 2)], torch.float32, seed=8)
        b = make_call(cfg, [(9,), (2, 2)], torch.float32, seed=8)
        for o in a.out:
            o.fill_(float("nan"))
        native(cfg.op)(*a.args())
        native(cfg.op)(*b.args())
        for k, (x, y) in enumerate(zip(a.results(), b.results(), strict=True)):
            assert_exact(x, y, f"{cfg.id} result {k}")


def test_adam_matches_hand_computed_step() -> None:
    """One Adam step from zero state, against the formula written out in float64."""
    x = torch.tensor([0.5, -2.0, 0.0, 3.0], dtype=torch.float64)
    m, v = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    p = torch.ones(4, dtype=torch.float64)
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.1
    step_size = lr / (1 - b1)  # bias corrections for step 1, sqrt(1 - b2) folded as below
    ops.adam_([x], m, v, None, [p], b1, b2, eps * (1 - b2) ** 0.5, step_size * (1 - b2) ** 0.5, 2.0, -1.0, True)
    m_ref = 0.1 * x
    v_ref = 0.001 * x * x
    u = (m_ref / (1 - b1)) / ((v_ref / (1 - b2)).sqrt() + eps)
    torch.testing.assert_close(m, m_ref, rtol=1e-15, atol=0)
    torch.testing.assert_close(v, v_ref, rtol=1e-15, atol=0)
    torch.testing.assert_close(p, 1 - lr * u, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- half types
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("cfg", CONFIGS[::2], ids=lambda c: c.id)
def test_half_types_match_reference(cfg: Config, dtype: torch.dtype) -> None:
    got, want = run_both(cfg, ODD_SHAPES, dtype, seed=9)
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    for k, (a, e) in enumerate(zip(got.results(), want.results(), strict=True)):
        assert a.dtype == dtype
        torch.testing.assert_close(a, e, rtol=tol, atol=tol, equal_nan=True, msg=f"result {k}")
    if cfg.exact:
        # both compute in float32 and round once when storing: the same bits
        for k, (a, e) in enumerate(zip(got.results(), want.results(), strict=True)):
            assert_exact(a, e, f"result {k}")


# ----------------------------------------------------------------------------- SIMD levels
_SIMD_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    import test_native_ops as t
    import tzfast.ops as ops
    out = {{"info": ops.build_info(), "results": {{}}}}
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for cfg in t.CONFIGS:
            call = t.make_call(cfg, t.ODD_SHAPES + [(1031,)], dtype, seed=11, specials=True)
            t.native(cfg.op)(*call.args())
            out["results"][(cfg.id, str(dtype))] = call.results()
    torch.save(out, sys.argv[1])
""")


def _simd_results(tmp_path: Path, level: str) -> dict[str, Any]:
    path = tmp_path / f"{level}.pt"
    env = dict(os.environ, TZFAST_SIMD=level)
    env.pop("TZFAST_NO_EXTENSION", None)
    script = _SIMD_SCRIPT.format(tests=str(Path(__file__).parent))
    subprocess.run([sys.executable, "-c", script, str(path)], env=env, check=True, cwd=str(ROOT))
    return torch.load(path, weights_only=False)  # type: ignore[no-any-return]


def test_simd_levels_give_identical_results(tmp_path: Path) -> None:
    base = _simd_results(tmp_path, "baseline")
    auto = _simd_results(tmp_path, "auto")
    assert base["info"]["simd_selected"] == "baseline"
    if auto["info"]["simd_selected"] == "baseline":
        pytest.skip("this CPU runs only the baseline kernels: nothing to compare")
    assert base["results"].keys() == auto["results"].keys()
    for key, b_res in base["results"].items():
        for k, (a, b) in enumerate(zip(auto["results"][key], b_res, strict=True)):
            assert_exact(a, b, f"{key} result {k} ({auto['info']['simd_selected']} vs baseline)")


# ----------------------------------------------------------------------------- opcheck
def _opcheck_args(op: str) -> tuple[Any, ...]:
    cfg = next(c for c in CONFIGS if c.op == op and (c.amsgrad or op not in ("adam_", "ema_sq_")))
    call = make_call(cfg, [(3, 4), (), (5,)], torch.float32, seed=12)
    return call.args()


@pytest.mark.parametrize("op", OPS)
def test_opcheck(op: str) -> None:
    torch.library.opcheck(native(op), _opcheck_args(op))


# ----------------------------------------------------------------------------- bad input
IMPLS = {"native": native, "reference": reference}


def _bad(op: str, **changes: Any) -> tuple[Any, ...]:
    cfg = next(c for c in CONFIGS if c.op == op and (c.amsgrad or op not in ("adam_", "ema_sq_")))
    call = make_call(cfg, [(3, 4), (5,)], torch.float32, seed=13)
    for k, v in changes.items():
        setattr(call, k, v(call) if callable(v) else v)
    return call.args()


def _expect(impl: Callable[..., None], args: tuple[Any, ...], *fragments: str) -> None:
    with pytest.raises(RuntimeError) as info:
        impl(*args)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_bad_out_list_length(op: str, impl: str) -> None:
    _expect(IMPLS[impl](op), _bad(op, out=lambda c: c.out[:1]),
            f"tzfast::{op}", "expected out to be a list of 2 tensors", "but got 1")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_bad_out_sizes(op: str, impl: str) -> None:
    _expect(IMPLS[impl](op), _bad(op, out=lambda c: [c.out[0], torch.zeros(6)]),
            f"tzfast::{op}", "out[1]", "[5]", "but got [6]")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_bad_dtype_mismatch(op: str, impl: str) -> None:
    _expect(IMPLS[impl](op), _bad(op, out=lambda c: [c.out[0], c.out[1].double()]),
            f"tzfast::{op}", "expected out[1] to have dtype Float", "but got Double")
    _expect(IMPLS[impl](op), _bad(op, tensors=lambda c: [c.tensors[0], c.tensors[1].bfloat16()]),
            f"tzfast::{op}", "expected tensors[1] to have dtype Float", "but got BFloat16")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_bad_device_mismatch(op: str, impl: str) -> None:
    # with any tensor on `meta` the dispatcher picks the fake kernel, which checks the same
    _expect(IMPLS[impl](op), _bad(op, out=lambda c: [c.out[0], c.out[1].to("meta")]),
            f"tzfast::{op}", "expected out[1] on device cpu", "but got meta")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_bad_unsupported_dtype(op: str, impl: str) -> None:
    _expect(IMPLS[impl](op), _bad(op, tensors=lambda c: [t.to(torch.int64) for t in c.tensors],
                                  out=lambda c: [t.to(torch.int64) for t in c.out]),
            f"tzfast::{op}", "expected a floating dtype", "Long")


STATEFUL = ("adam_", "ema_", "nag_", "ema_sq_")
STATE_NAME = {"adam_": "exp_avg", "ema_": "exp_avg", "nag_": "velocity", "ema_sq_": "exp_avg_sq"}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", STATEFUL)
def test_bad_state_length(op: str, impl: str) -> None:
    _expect(IMPLS[impl](op), _bad(op, states=lambda c: [c.states[0][:-1], *c.states[1:]]),
            f"tzfast::{op}", f"expected {STATE_NAME[op]} to have 17 elements", "but got 16")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", STATEFUL)
def test_bad_state_shape_and_layout(op: str, impl: str) -> None:
    _expect(IMPLS[impl](op), _bad(op, states=lambda c: [torch.zeros(17, 1), *c.states[1:]]),
            f"tzfast::{op}", f"expected {STATE_NAME[op]} to be a 1-D flat buffer", "2-D")
    _expect(IMPLS[impl](op), _bad(op, states=lambda c: [torch.zeros(34)[::2], *c.states[1:]]),
            f"tzfast::{op}", f"expected {STATE_NAME[op]} to be contiguous")
    _expect(IMPLS[impl](op), _bad(op, states=lambda c: [c.states[0].double(), *c.states[1:]]),
            f"tzfast::{op}", f"expected {STATE_NAME[op]} to have dtype Float", "but got Double")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", ["adam_", "ema_sq_"])
def test_bad_state_buffers_share_memory(op: str, impl: str) -> None:
    _expect(IMPLS[impl](op), _bad(op, states=lambda c: [c.states[0], c.states[1], c.states[0]]
                                  if op == "adam_" else [c.states[0], c.states[0]]),
            f"tzfast::{op}", "to be separate buffers")


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_unary_op_code(impl: str) -> None:
    for code in (5, -1, 100):
        _expect(IMPLS[impl]("unary_"), _bad("unary_", scalars=lambda c, code=code: (code, *c.scalars[1:])),
                "tzfast::unary_", f"unknown op code {code}", "0 (affine)", "4 (clamp)")


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_weight_decay_params(impl: str) -> None:
    _expect(IMPLS[impl]("weight_decay_"), _bad("weight_decay_", params=lambda c: c.params[:1]),
            "tzfast::weight_decay_", "expected params to be a list of 2 tensors", "but got 1")
    _expect(IMPLS[impl]("weight_decay_"), _bad("weight_decay_", params=lambda c: [c.params[0], torch.zeros(2, 2)]),
            "tzfast::weight_decay_", "params[1]", "but got [2, 2]")


def test_bad_out_with_internal_overlap() -> None:
    cfg = next(c for c in CONFIGS if c.op == "unary_")
    call = make_call(cfg, [(3, 4)], torch.float32)
    call.out = [torch.zeros(4).expand(3, 4)]
    _expect(native("unary_"), call.args(), "tzfast::unary_", "out[0]", "internal overlap")


def test_partially_overlapping_out_reads_input_before_writing() -> None:
    """out[i] shifted by one element against tensors[i]: the result is as if x were copied."""
    buf = torch.arange(10, dtype=torch.float32)
    x, out = buf[:9], buf[1:]
    expect = x.clone() * 2 + 1
    ops.unary_([x], [out], 0, 2.0, 1.0, 1.0, False)
    assert_exact(out, expect, "out")


# ----------------------------------------------------------------------------- no extension
_NOEXT_SCRIPT = textwrap.dedent("""
    import sys, warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import torch
        sys.path.insert(0, {tests!r})
        import test_native_ops as t
        import tzfast.ops as ops
        import tzfast._native as nat
        import tzfast.ops.elementwise  # a second import: still one warning
    msgs = [str(w.message) for w in caught if "native extension not loaded" in str(w.message)]
    assert len(msgs) == 1, msgs
    assert not nat.HAS_EXTENSION and ops.build_info()["extension"] is False
    results = {{}}
    for cfg in t.CONFIGS:
        call = t.make_call(cfg, t.ODD_SHAPES, torch.float32, seed=14)
        getattr(ops, cfg.op)(*call.args())  # the public wrappers
        results[cfg.id] = call.results()
    torch.save(results, sys.argv[1])
""")


def test_no_extension_env_runs_reference_with_one_warning(tmp_path: Path) -> None:
    path = tmp_path / "noext.pt"
    env = dict(os.environ, TZFAST_NO_EXTENSION="1")
    script = _NOEXT_SCRIPT.format(tests=str(Path(__file__).parent))
    subprocess.run([sys.executable, "-c", script, str(path)], env=env, check=True, cwd=str(ROOT))
    results = torch.load(path, weights_only=False)
    for cfg in CONFIGS:
        call = make_call(cfg, ODD_SHAPES, torch.float32, seed=14)
        getattr(ops, cfg.op)(*call.args())
        for a, e in zip(call.results(), results[cfg.id], strict=True):
            # the subprocess's twins use torch's sqrt (within 1 ulp of IEEE)
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, equal_nan=True, msg=cfg.id)
