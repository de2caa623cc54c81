"""B3 Newton-Schulz: tzfast's native NS op vs an eager fp32 NS, as a fraction of in-process sgemm.

Matrices (fp32, Gaussian, batched by shape as ``Orthogonalize`` batches them): the GPT-2-small
matrix set — attention QKV ``768x2304``, attention out ``768x768``, MLP in ``768x3072`` and MLP out
``3072x768`` — and ``1024x4096``. Schedules: Keller Jordan's ``quintic`` (5 steps) and
``polar_express`` (10 steps, safety factor 1.01), each with its own normalisation.

Variants, timed interleaved per (shape, schedule) with ``common.time_interleaved``:

* ``eager fp32``: the textbook loop written here (``X = G / ||G||``, transpose if tall, then per
  step ``A = X X^T; B = b A + c A A; X = a X + B X``), the fair CPU peer;
* ``tzfast auto``: ``tzfast.ops.newton_schulz(G, schedule)`` — the op picks the plain or the Gram
  iteration by shape (Gram when ``max(m, n) >= 2 min(m, n)``);
* ``tzfast plain`` / ``tzfast Gram``: the variant auto did not pick, forced with ``gram=0/1``
  (the one auto picks is the same code path: its output is checked bit-identical to auto's);
* ``sgemm``: ``torch.mm`` of fp32 ``[r, r] @ [r, c]`` (``r = min(m, n)``, ``c = max(m, n)``, the
  iteration's dominant GEMM shape), the in-process throughput reference.

FLOPs are counted for what each variant does, per matrix (``r <= c``): plain step
``2 r^2 c`` (``A``) ``+ 2 r^3`` (``A A``) ``+ 2 r^2 c`` (``B X``); Gram variant ``4 r^2 c`` (the first
Gram matrix and the final ``Q X``) ``+ 2 r^3 (4 steps - 3)`` (the ``r x r`` recursions). **GFLOP/s**
uses those counts; **effective GFLOP/s** = the plain-variant count / time (what the time is worth
against the textbook algorithm; for the Gram variant it can exceed sgemm).

The **orthogonality error** ``max |sigma_i - 1|`` (singular values of the result in float64) is
printed beside every time. The quintic does not converge to 1 by design (its singular values land
in about [0.68, 1.13]), so its error is ~0.3 for every implementation, and ~1 on the square shape
(a square Gaussian matrix has singular values near 0 that neither schedule lifts to 1); the bar is
"equal or better", within ``ERR_SLACK`` = 1e-3 (the float32 singular-value tolerance of the NS tests:
the Gram variant's fp32 rounding puts Polar Express's error at ~1e-5 where the plain loop's is ~1e-7).

Correctness before timing: each tzfast variant's singular values equal the eager reference's within
``SV_TOL`` (1e-3 in float32, the bound of the NS tests) and the outputs agree within ``OUT_RTOL``
relative (max abs difference / max abs value).

bf16 peers (``torch.optim.Muon``, torchzero 0.4.4 ``Orthogonalize``): both run NS in bfloat16,
which this CPU emulates (seconds per matrix), so they are timed **once** (1 repetition, no warm-up)
on the small set ``512x512, 512x2048, 2048x512`` named in issue 5, beside the eager fp32 quintic and
tzfast on the same set (timed normally). Muon runs its quintic, torchzero its per-step
``newtonschulz`` schedule; their outputs are compared with tzfast fp32 on the same schedule at a
bf16 tolerance.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import common
from .common import Context, Variant, fmt_float, fmt_ratio, fmt_us, log, markdown_table

__all__ = ["ID", "TITLE", "bar_results", "plot", "render_markdown", "run"]

ID = "B3"
TITLE = "B3 Newton-Schulz"

JUDGE_THREADS = 2
BAR_SGEMM = 0.85
BAR_RECT = 1.3
BAR_SQUARE = 1.0
ERR_SLACK = 1e-3  # "equal" orthogonality error: within this (float32 singular-value tolerance)
SV_TOL = 1e-3
OUT_RTOL = 1e-2
PEER_REL_TOL = 0.1  # bf16 peers vs tzfast fp32, same schedule: relative Frobenius difference
SEED = 0

SCHEDULE_NAMES = ("quintic", "polar_express")


@dataclass(frozen=True)
class Shape:
    key: str
    label: str
    m: int
    n: int
    batch: int

    @property
    def r(self) -> int:
        return min(self.m, self.n)

    @property
    def c(self) -> int:
        return max(self.m, self.n)

    @property
    def square(self) -> bool:
        return self.m == self.n


def shapes(quick: bool) -> list[Shape]:
    """GPT-2-small's attention/MLP shapes and 1024x4096.

    Full size uses one matrix per shape: a 12-matrix batch (one per layer) of 768x3072 takes ~7 s per
    NS on one thread here, and five variants x (5 repetitions + warm-up + check) x two schedules
    x two thread counts would take over an hour; the op's cost per matrix is batch-independent at
    these sizes (one batched GEMM per product). ``--quick`` uses batches of 2 small matrices.
    """
    if quick:
        return [
            Shape("sq", "64x64 (quick)", 64, 64, 2),
            Shape("wide", "64x256 (quick)", 64, 256, 2),
            Shape("tall", "256x64 (quick)", 256, 64, 2),
            Shape("qkv", "64x192 (quick)", 64, 192, 2),
        ]
    return [
        Shape("attn_out", "768x768 (attn out)", 768, 768, 1),
        Shape("attn_qkv", "768x2304 (attn QKV)", 768, 2304, 1),
        Shape("mlp_in", "768x3072 (MLP in)", 768, 3072, 1),
        Shape("mlp_out", "3072x768 (MLP out)", 3072, 768, 1),
        Shape("big", "1024x4096", 1024, 4096, 1),
    ]


def peer_shapes(quick: bool) -> list[tuple[int, int]]:
    if quick:
        return [(32, 32), (32, 128), (128, 32)]
    return [(512, 512), (512, 2048), (2048, 512)]


# --------------------------------------------------------------------------- the math


def plain_flops(r: int, c: int, steps: int) -> float:
    return float(steps * (4 * r * r * c + 2 * r**3))


def gram_flops(r: int, c: int, steps: int) -> float:
    return float(4 * r * r * c + 2 * r**3 * (4 * steps - 3))


def eager_ns(G: Any, coeffs: Sequence[tuple[float, float, float]], norm_scale: float, eps: float) -> Any:
    """The textbook NS loop, fp32, eager (what a user writes; batched over leading dims)."""
    import torch

    X = G / (torch.linalg.vector_norm(G, dim=(-2, -1), keepdim=True) * norm_scale + eps)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    for a, b, c in coeffs:
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.mT
    return X


def ortho_error(X: Any) -> float:
    """max |sigma - 1| over every matrix of the batch (singular values in float64)."""
    import torch

    s = torch.linalg.svdvals(X.double())
    return float((s - 1).abs().max())


def _svals(X: Any) -> Any:
    import torch

    return torch.linalg.svdvals(X.double())


# --------------------------------------------------------------------------- one case


def _stats_cells(st: common.TimingStats) -> dict[str, Any]:
    return {"t_min_us": st.min_us, "t_med_us": st.median_us, "reps": st.reps, "inner": st.inner, "note": st.note,
            "times_us": [t * 1e6 for t in st.times_s]}


def run_case(ctx: Context, shape: Shape, sched_name: str, tz_ok: bool, tz_reason: str) -> dict[str, Any]:
    import torch

    from tzfast.ops import newton_schulz as nsmod  # noqa: PLC0415 - tz_ok was checked by the caller

    sched = nsmod.schedule(sched_name)
    steps = len(sched.coeffs)
    r, c, B = shape.r, shape.c, shape.batch
    gen = torch.Generator().manual_seed(SEED + 7919 * r + c)
    G = torch.randn(B, shape.m, shape.n, generator=gen)
    auto_gram = c >= 2 * r and steps >= 2  # the op's rule for float32
    other_gram = 0 if auto_gram else 1
    case: dict[str, Any] = {
        "kind": "ns",
        "shape": shape.key,
        "label": shape.label,
        "m": shape.m,
        "n": shape.n,
        "batch": B,
        "square": shape.square,
        "schedule": sched_name,
        "steps": steps,
        "auto_variant": "Gram" if auto_gram else "plain",
        "rows": [],
    }
    log(f"B3 {shape.label} x{B} {sched_name} threads={ctx.threads}")

    def ref_step() -> Any:
        return eager_ns(G, sched.coeffs, sched.norm_scale, sched.eps)

    a_mm = torch.randn(r, r, generator=gen)
    b_mm = torch.randn(r, c, generator=gen)
    o_mm = torch.empty(r, c)

    def mm_step() -> None:
        torch.mm(a_mm, b_mm, out=o_mm)

    flops_plain = plain_flops(r, c, steps) * B
    flops_gram = gram_flops(r, c, steps) * B

    # correctness first (also the first warm-up of every variant)
    ref_out = ref_step()
    ref_sv = _svals(ref_out)
    ref_err = float((ref_sv - 1).abs().max())
    ref_scale = float(ref_out.abs().max())
    variants = [Variant("eager", "ref", lambda: ref_step())]
    rows: list[dict[str, Any]] = [
        {"key": "eager", "variant": "eager fp32 (textbook loop)", "role": "ref", "status": "ok", "reason": "",
         "flops": flops_plain, "ortho_err": ref_err, "gram": None}
    ]
    tz_specs = [("auto", -1, "Gram" if auto_gram else "plain"),
                ("other", other_gram, "Gram" if other_gram == 1 else "plain")]
    auto_out = None
    for key, g, kind in tz_specs:
        name = f"tzfast auto ({kind})" if key == "auto" else f"tzfast {kind} (forced)"
        row: dict[str, Any] = {"key": key, "variant": name, "role": "tzfast", "gram": kind == "Gram",
                               "flops": flops_gram if kind == "Gram" else flops_plain, "reason": ""}
        rows.append(row)
        if not tz_ok:
            row.update(status="unavailable", reason=tz_reason)
            continue

        def tz_step(g: int = g) -> Any:
            return nsmod.newton_schulz(G, sched_name, gram=g)

        try:
            out = tz_step()
        except Exception as exc:  # noqa: BLE001
            row.update(status="error", reason=f"{type(exc).__name__}: {exc}")
            continue
        sv = _svals(out)
        sv_diff = float((sv - ref_sv).abs().max())
        out_rel = float((out - ref_out).abs().max()) / ref_scale
        err = float((sv - 1).abs().max())
        row.update(ortho_err=err, sv_max_diff=sv_diff, out_max_rel_diff=out_rel)
        ok = math.isfinite(err) and sv_diff <= SV_TOL and out_rel <= OUT_RTOL
        detail = f"singular values vs eager max diff {sv_diff:.1e} (tol {SV_TOL:g}), output max rel diff " \
                 f"{out_rel:.1e} (tol {OUT_RTOL:g})"
        if key == "auto":
            auto_out = out
        else:
            # the variant auto picked is the same code path: bit-identical output
            chosen = nsmod.newton_schulz(G, sched_name, gram=1 if auto_gram else 0)
            same = auto_out is not None and torch.equal(chosen, auto_out)
            rows[-2]["auto_bitwise_equal_forced"] = same
            if not same:
                rows[-2].update(status="check failed", reason="auto output differs from the forced "
                                f"{'Gram' if auto_gram else 'plain'} variant's")
            del chosen
        row["check"] = {"passed": ok, "detail": detail}
        if ok:
            row["status"] = row.get("status", "ok")
            variants.append(Variant(key, "tzfast", tz_step))
        else:
            row.update(status="check failed", reason=detail)
        del out
    rows.append({"key": "sgemm", "variant": f"sgemm torch.mm [{r},{r}]@[{r},{c}]", "role": "ref", "status": "ok",
                 "reason": "", "flops": 2.0 * r * r * c, "gram": None})
    variants.append(Variant("sgemm", "ref", mm_step))
    del ref_out, auto_out
    gc.collect()

    stats = common.time_interleaved(variants, reps=ctx.reps, warmup=1, min_rep_s=ctx.min_rep_s,
                                    max_variant_s=ctx.max_variant_s)
    for row in rows:
        st = stats.get(row["key"])
        if st is None:
            continue
        row.update(_stats_cells(st))
        row["gflops_med"] = row["flops"] / (st.median_s * 1e9)
        row["gflops_best"] = row["flops"] / (st.min_s * 1e9)
        row["eff_gflops_med"] = flops_plain / (st.median_s * 1e9) if row["key"] != "sgemm" else row["gflops_med"]
    by = {r_["key"]: r_ for r_ in rows}
    sg = by["sgemm"]
    case["sgemm_gflops_med"] = sg["gflops_med"]
    case["sgemm_gflops_best"] = sg["gflops_best"]
    eager = by["eager"]
    for row in rows:
        if "t_med_us" not in row or row["key"] == "sgemm":
            continue
        row["frac_sgemm_med"] = row["gflops_med"] / sg["gflops_med"]
        row["frac_sgemm_best"] = row["gflops_best"] / sg["gflops_best"]
        if row["role"] == "tzfast":
            row["speedup_med"] = eager["t_med_us"] / row["t_med_us"]
            row["speedup_min"] = eager["t_min_us"] / row["t_min_us"]
    case["rows"] = rows
    a = by.get("auto", {})
    log(f"   sgemm {fmt_float(sg['gflops_med'], 1)} GF/s; eager {fmt_us(eager['t_med_us'] / 1e3)} ms "
        f"({fmt_float(eager.get('frac_sgemm_med'), 2)} of sgemm, err {eager['ortho_err']:.3g}); "
        f"tzfast auto {fmt_us(a.get('t_med_us', 0) / 1e3)} ms ({fmt_float(a.get('frac_sgemm_med'), 2)} of sgemm, "
        f"{fmt_ratio(a.get('speedup_med'))} eager, err {a.get('ortho_err', float('nan')):.3g})")
    return case


# --------------------------------------------------------------------------- bf16 peers


def run_peers(ctx: Context, tz_ok: bool, tz_reason: str) -> dict[str, Any]:
    """The small set: eager fp32 quintic and tzfast timed normally; Muon and torchzero (bf16) once."""
    import torch

    sizes = peer_shapes(ctx.quick)
    gen = torch.Generator().manual_seed(SEED + 1)
    Gs = [torch.randn(m, n, generator=gen) for m, n in sizes]
    label = ", ".join(f"{m}x{n}" for m, n in sizes)
    case: dict[str, Any] = {"kind": "peers", "shape": "small set", "label": label, "sizes": sizes, "rows": []}
    log(f"B3 bf16 peers on {label} threads={ctx.threads}")
    rows: list[dict[str, Any]] = case["rows"]
    from tzfast.ops import newton_schulz as nsmod  # noqa: PLC0415

    qs = nsmod.schedule("quintic")

    # fp32 rows, timed normally: eager quintic over the set, tzfast quintic/ns5 over the set (by shape,
    # one matrix per shape here)
    def eager_set() -> list[Any]:
        return [eager_ns(G, qs.coeffs, qs.norm_scale, qs.eps) for G in Gs]

    def tz_set(sched: str) -> Callable[[], list[Any]]:
        return lambda: [nsmod.newton_schulz(G, sched) for G in Gs]

    tz_q_out = tz_set("quintic")() if tz_ok else None
    tz_ns5_out = tz_set("ns5")() if tz_ok else None
    eager_out = eager_set()
    variants = [Variant("eager", "ref", lambda: eager_set())]
    rows.append({"key": "eager", "variant": "eager fp32 quintic", "role": "ref", "schedule": "quintic",
                 "dtype": "float32", "status": "ok", "reason": "",
                 "ortho_err": max(ortho_error(X) for X in eager_out)})
    for key, sched, outs in (("tz_quintic", "quintic", tz_q_out), ("tz_ns5", "ns5", tz_ns5_out)):
        row = {"key": key, "variant": f"tzfast {sched} (auto)", "role": "tzfast", "schedule": sched,
               "dtype": "float32", "reason": ""}
        rows.append(row)
        if outs is None:
            row.update(status="unavailable", reason=tz_reason)
            continue
        row["ortho_err"] = max(ortho_error(X) for X in outs)
        row["status"] = "ok"
        variants.append(Variant(key, "tzfast", tz_set(sched)))
    stats = common.time_interleaved(variants, reps=ctx.reps, warmup=1, min_rep_s=ctx.min_rep_s,
                                    max_variant_s=ctx.max_variant_s)
    for row in rows:
        if row["key"] in stats:
            row.update(_stats_cells(stats[row["key"]]))

    # bf16 peers: one step each, timed once
    def muon_once() -> tuple[float, list[Any]]:
        params = [torch.zeros(m, n, requires_grad=True) for m, n in sizes]
        for p, G in zip(params, Gs, strict=True):
            p.grad = G.clone()
        opt = torch.optim.Muon(params, lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False)
        t0 = time.perf_counter()
        opt.step()
        dt = time.perf_counter() - t0
        # p = -lr * sqrt(max(1, m/n)) * NS(grad) (torch.optim.Muon's default adjust_lr_fn)
        outs = [-p.detach() / math.sqrt(max(1.0, p.shape[0] / p.shape[1])) for p in params]
        return dt, outs

    def torchzero_once() -> tuple[float, list[Any]]:
        import torchzero as tzo

        params = [torch.zeros(m, n, requires_grad=True) for m, n in sizes]
        for p, G in zip(params, Gs, strict=True):
            p.grad = G.clone()
        opt = tzo.Optimizer(params, tzo.m.Orthogonalize(), tzo.m.LR(1.0))
        t0 = time.perf_counter()
        opt.step()
        dt = time.perf_counter() - t0
        return dt, [-p.detach() for p in params]

    peers: list[tuple[str, str, str, Callable[[], tuple[float, list[Any]]], Any]] = []
    if hasattr(torch.optim, "Muon"):
        peers.append(("muon", "torch.optim.Muon (bf16 quintic)", "quintic", muon_once, tz_q_out))
    else:
        rows.append({"key": "muon", "variant": "torch.optim.Muon", "role": "peer", "status": "unavailable",
                     "reason": f"torch {torch.__version__} has no torch.optim.Muon"})
    try:
        import torchzero  # noqa: F401

        peers.append(("torchzero", "torchzero Orthogonalize (bf16 newtonschulz)", "ns5", torchzero_once, tz_ns5_out))
    except ImportError:
        rows.append({"key": "torchzero", "variant": "torchzero Orthogonalize", "role": "peer",
                     "status": "unavailable", "reason": "torchzero is not installed"})
    for key, name, sched, fn, tz_outs in peers:
        row = {"key": key, "variant": name, "role": "peer", "schedule": sched, "dtype": "bfloat16 (emulated)",
               "reason": ""}
        rows.append(row)
        try:
            dt, outs = fn()
        except Exception as exc:  # noqa: BLE001
            row.update(status="error", reason=f"{type(exc).__name__}: {exc}")
            continue
        row["ortho_err"] = max(ortho_error(X) for X in outs)
        row.update(t_min_us=dt * 1e6, t_med_us=dt * 1e6, reps=1, inner=1, note="timed once (1 repetition, cold)")
        if tz_outs is not None:
            rel = max(float(torch.linalg.matrix_norm(X - Y) / torch.linalg.matrix_norm(Y))
                      for X, Y in zip(outs, tz_outs, strict=True))
            row["rel_diff_vs_tzfast"] = rel
            row["check"] = {"passed": rel <= PEER_REL_TOL, "detail": f"relative Frobenius difference vs tzfast fp32 "
                                                                     f"{sched}: {rel:.2e} (tol {PEER_REL_TOL:g})"}
            row["status"] = "ok" if rel <= PEER_REL_TOL else "check failed"
            if row["status"] != "ok":
                row["reason"] = row["check"]["detail"]
        else:
            row["status"] = "ok"
        log(f"   {name}: {dt:.2f} s (err {row['ortho_err']:.3g})")
        gc.collect()
    ref = next(r for r in rows if r["key"] == "eager")
    tzq = next((r for r in rows if r["key"] == "tz_quintic" and "t_med_us" in r), None)
    for row in rows:
        if "t_med_us" in row and row["key"] != "eager":
            row["vs_eager"] = row["t_med_us"] / ref["t_med_us"]
            if tzq is not None and row["key"] != "tz_quintic":
                row["vs_tzfast"] = row["t_med_us"] / tzq["t_med_us"]
    return case


# --------------------------------------------------------------------------- entry point


def run(ctx: Context) -> dict[str, Any]:
    try:
        from tzfast.ops.newton_schulz import _native_ok, newton_schulz  # noqa: F401

        tz_ok, tz_reason = True, ""
        native = bool(_native_ok())
    except Exception as exc:  # noqa: BLE001
        tz_ok, tz_reason, native = False, f"import tzfast.ops.newton_schulz failed: {type(exc).__name__}: {exc}", False
    result: dict[str, Any] = {
        "id": ID,
        "title": TITLE,
        "native": native,
        "bars": {"sgemm": BAR_SGEMM, "rect": BAR_RECT, "square": BAR_SQUARE, "err_slack": ERR_SLACK},
        "check": {"sv_tol": SV_TOL, "out_rtol": OUT_RTOL, "peer_rel_tol": PEER_REL_TOL},
        "shapes": [s.__dict__ for s in shapes(ctx.quick)],
        "cases": [],
        "notes": [] if tz_ok else [f"tzfast unavailable: {tz_reason}"],
    }
    if tz_ok and not native:
        result["notes"].append("tzfast native extension not loaded: the op ran its pure-torch twin")
    if not tz_ok:
        return result
    for sched in SCHEDULE_NAMES:
        for shape in shapes(ctx.quick):
            result["cases"].append(run_case(ctx, shape, sched, tz_ok, tz_reason))
            gc.collect()
    result["cases"].append(run_peers(ctx, tz_ok, tz_reason))
    return result


# --------------------------------------------------------------------------- report


def _ns_cases(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in res["cases"] if c["kind"] == "ns"]


def _row(case: dict[str, Any], key: str) -> dict[str, Any] | None:
    return next((r for r in case["rows"] if r["key"] == key), None)


def _bar_values(res: dict[str, Any]) -> dict[str, Any]:
    frac, rect, sq, err_ok, err_worst = [], [], [], [], []
    for case in _ns_cases(res):
        a, e = _row(case, "auto"), _row(case, "eager")
        if a is None or e is None or "t_med_us" not in a:
            frac.append((case, None))
            continue
        frac.append((case, a["frac_sgemm_med"]))
        if case["schedule"] == "quintic":
            (sq if case["square"] else rect).append((case, a["speedup_med"]))
        d = a["ortho_err"] - e["ortho_err"]
        err_ok.append(d <= ERR_SLACK)
        err_worst.append((case, d))
    return {"frac": frac, "rect": rect, "sq": sq, "err_ok": err_ok, "err_worst": err_worst}


def _worst(pairs: list[tuple[dict[str, Any], float | None]]) -> tuple[float | None, str]:
    vals = [(v, c) for c, v in pairs]
    if not vals or any(v is None for v, _ in vals):
        return None, "—"
    v, c = min(vals, key=lambda t: t[0])
    return v, f"{c['label']} {c['schedule']}"


def bar_results(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 5's bars, judged at JUDGE_THREADS threads (median), worst case over shapes."""
    valid = [r for r in runs if r.get("result") and _ns_cases(r["result"])]
    if not valid:
        return []
    judge = next((r for r in valid if r["threads"] == JUDGE_THREADS), max(valid, key=lambda r: r["threads"]))
    others = [r for r in valid if r is not judge]
    out = []
    specs = [
        ("frac", f"tzfast NS (auto) GFLOP/s >= {BAR_SGEMM:.0%} of in-process sgemm, every shape and schedule",
         BAR_SGEMM, lambda v: f"{v:.0%}"),
        ("rect", f"tzfast NS (auto) >= {BAR_RECT:g}x the eager fp32 quintic, rectangular shapes", BAR_RECT,
         fmt_ratio),
        ("sq", f"tzfast NS (auto) >= {BAR_SQUARE:g}x the eager fp32 quintic, square shapes", BAR_SQUARE, fmt_ratio),
    ]
    for key, text, bar, fmt in specs:
        v, where = _worst(_bar_values(judge["result"])[key])
        oth = {}
        for r in others:
            ov, ow = _worst(_bar_values(r["result"])[key])
            oth[r["threads"]] = "—" if ov is None else f"worst {fmt(ov)} ({ow})"
        out.append({"bar": text, "value": v, "value_txt": "—" if v is None else f"worst {fmt(v)} ({where})",
                    "others": oth, "met": v is not None and v >= bar, "threads": judge["threads"]})
    bv = _bar_values(judge["result"])
    worst_d = max((d for _, d in bv["err_worst"]), default=None)
    out.append({
        "bar": f"orthogonality error max|sigma - 1| of tzfast <= the eager reference's (+{ERR_SLACK:g}), every case",
        "value": worst_d,
        "value_txt": "—" if worst_d is None else f"{sum(bv['err_ok'])}/{len(bv['err_ok'])} cases; worst "
                                                 f"difference {worst_d:+.1e}",
        "others": {r["threads"]: f"{sum(_bar_values(r['result'])['err_ok'])}/"
                                 f"{len(_bar_values(r['result'])['err_ok'])} cases" for r in others},
        "met": bool(bv["err_ok"]) and all(bv["err_ok"]),
        "threads": judge["threads"],
    })
    return out


def _ms(x: float | None) -> str:
    return "—" if x is None else fmt_us(x / 1e3)


def render_markdown(runs: Sequence[dict[str, Any]]) -> str:
    out: list[str] = [f"## {TITLE}", ""]
    first = next((r["result"] for r in runs if r.get("result")), None)
    if first is None:
        return "\n".join(out + ["No results.", ""] + [f"- {r.get('error')}" for r in runs if r.get("error")])
    sh = ", ".join(f"{s['label']} x{s['batch']}" for s in first["shapes"])
    out += [
        f"fp32 Gaussian matrices, {sh} (full size: one matrix per shape, see the module docstring); "
        "schedules `quintic` (5 steps) and `polar_express` (10 steps). Per (shape, schedule), timed interleaved "
        "after warm-up: the **eager fp32** textbook NS loop written in the benchmark, **tzfast auto** "
        "(`tzfast.ops.newton_schulz`, plain or Gram iteration chosen by shape), the other tzfast variant forced, "
        "and **sgemm** = `torch.mm` fp32 `[r, r] @ [r, c]` in the same process. Times are milliseconds per "
        "NS call on the batch, median (min); **GFLOP/s** counts the FLOPs each variant does (plain: "
        "steps x (4 r^2 c + 2 r^3); Gram: 4 r^2 c + 2 r^3 (4 steps - 3)); **eff.** = plain-variant FLOPs / time; "
        "**of sgemm** = GFLOP/s / sgemm GFLOP/s (median); **vs eager** = eager time / time (median, min in "
        "brackets); **err** = max |sigma - 1| of the result (float64 SVD). The quintic converges to singular "
        "values in ~[0.7, 1.2] by design: its err is ~0.3 for every implementation; a square Gaussian matrix has "
        "singular values near 0 that neither schedule lifts to 1 in its steps, so its err stays large (~1 quintic, "
        "~0.8 Polar Express) for every implementation.",
        "",
        f"Correctness before timing: singular values equal the eager reference's within {first['check']['sv_tol']:g} "
        f"and outputs within {first['check']['out_rtol']:g} relative to max |output|; the auto row is checked "
        "bit-identical to the forced variant it picks. A variant that fails is not timed.",
        "",
    ]
    if not first.get("native", True):
        out += ["**Note: the tzfast native extension was not loaded; the op ran its pure-torch twin.**", ""]
    bars = bar_results(runs)
    if bars:
        out += ["### Bars (issue 5)", ""]
        out.append(markdown_table(
            ["bar", "value (judged)", "other thread counts", "status"],
            [[b["bar"], f"{b['value_txt']} ({b['threads']} threads)",
              ", ".join(f"{t} thread(s): {v}" for t, v in b["others"].items()) or "—",
              "**met**" if b["met"] else "**not met**"] for b in bars]))
        out.append("")
    for run_ in runs:
        res = run_.get("result")
        out += [f"### {run_['threads']} thread(s)", "", common.machine_line(run_["machine"]) if run_.get("machine")
                else "", ""]
        if not res:
            out += [f"Worker failed: {run_.get('error', 'unknown error')}", ""]
            continue
        rows = []
        notes = []
        for case in _ns_cases(res):
            for r in case["rows"]:
                if r["key"] == "sgemm":
                    continue
                if "t_med_us" not in r:
                    rows.append([case["label"], case["schedule"], r["variant"], *["—"] * 6,
                                 f"{r['status']}: {r.get('reason', '')}"])
                    continue
                rows.append([
                    case["label"], case["schedule"], r["variant"],
                    f"{_ms(r['t_med_us'])} ({_ms(r['t_min_us'])})",
                    f"{r['gflops_med']:.1f} (eff. {r['eff_gflops_med']:.1f})",
                    f"{r['frac_sgemm_med']:.0%}",
                    "—" if r["role"] == "ref" else f"{fmt_ratio(r['speedup_med'])} ({fmt_ratio(r['speedup_min'])})",
                    f"{r['ortho_err']:.3g}",
                    fmt_float(case["sgemm_gflops_med"], 1),
                    ("pass" if r.get("check", {}).get("passed") else r["status"]) if r["role"] == "tzfast" else "ref",
                ])
                if r.get("note"):
                    notes.append(f"{case['label']} {case['schedule']} {r['variant']}: {r['note']}")
        out.append(markdown_table(
            ["shape", "schedule", "variant", "ms median (min)", "GFLOP/s", "of sgemm", "vs eager", "err",
             "sgemm GFLOP/s", "check"], rows))
        out.append("")
        peers = next((c for c in res["cases"] if c["kind"] == "peers"), None)
        if peers:
            out += [f"bf16 peers on the small set ({peers['label']}, one matrix each; the peers timed once):", ""]
            prow = []
            for r in peers["rows"]:
                if "t_med_us" not in r:
                    prow.append([r["variant"], r.get("dtype", "—"), "—", "—", "—", "—",
                                 f"{r['status']}: {r.get('reason', '')}"])
                    continue
                prow.append([
                    r["variant"], r["dtype"],
                    _ms(r["t_med_us"]) + ("" if r["reps"] == 1 else f" ({_ms(r['t_min_us'])})"),
                    f"{r['reps']}", fmt_ratio(r.get("vs_eager")) if r["key"] != "eager" else "1.00x",
                    f"{r['ortho_err']:.3g}",
                    (r["check"]["detail"] if r.get("check") else r["status"]),
                ])
            out.append(markdown_table(["variant", "dtype", "ms per set, median (min)", "reps", "time / eager fp32",
                                       "err", "check"], prow))
            out.append("")
        out += common.note_lines(notes)
    return "\n".join(out)


def plot(runs: Sequence[dict[str, Any]], out_dir: Any, plt: Any) -> list[str]:
    """Fraction of sgemm per case and variant, one panel per thread count."""
    import os

    valid = [r for r in runs if r.get("result") and _ns_cases(r["result"])]
    if not valid:
        return []
    fig, axes = plt.subplots(1, len(valid), figsize=(7 * len(valid), 5.5), squeeze=False)
    for i, run_ in enumerate(valid):
        ax = axes[0][i]
        cases = _ns_cases(run_["result"])
        labels = [f"{c['label']} {c['schedule']}" for c in cases]
        ys = list(range(len(cases)))
        for j, (key, name) in enumerate((("eager", "eager fp32"), ("auto", "tzfast auto"),
                                         ("other", "tzfast other variant"))):
            vals = []
            for c in cases:
                r = _row(c, key)
                vals.append(r.get("frac_sgemm_med", 0.0) if r else 0.0)
            ax.barh([y + (j - 1) * 0.27 for y in ys], vals, 0.27, label=name)
        ax.axvline(BAR_SGEMM, color="k", ls="--", lw=0.8, label=f"bar {BAR_SGEMM:.0%}")
        ax.set_yticks(ys, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("GFLOP/s (FLOPs done) / in-process sgemm GFLOP/s (median)")
        ax.set_title(f"B3 Newton-Schulz, {run_['threads']} thread(s)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = os.path.join(str(out_dir), "B3_ns.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]
