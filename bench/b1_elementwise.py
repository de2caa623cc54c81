"""B1 elementwise step: Adam+LR, HeavyBall+LR, NAG+LR and Lion+LR, optimizer step only.

Shapes: (a) 64 Mi fp32 params in 8 tensors (bandwidth regime), (b) 2,000 tensors x 4,096
(per-tensor overhead regime). Gradients are set once before timing; a timed step is
``opt.step()`` with no closure.

Correctness first: every variant takes ``CHECK_STEPS`` steps from the same parameters with
the same per-step random gradients; the update of each step (read back as ``p_k - p_{k-1}``)
must match the reference's (tzfast; torchzero while tzfast is unavailable) within
``common.compare_updates``'s tolerance at ``RTOL``. Only variants that pass are timed.
Those check steps are also the state the timing starts from ("a few steps in").
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import common
from .common import CheckResult, Context, Variant, fmt_float, fmt_ratio, fmt_us, log, markdown_table

if TYPE_CHECKING:
    pass

__all__ = ["ID", "TITLE", "plot", "render_markdown", "run"]

ID = "B1"
TITLE = "B1 elementwise step"

LR = 1e-2
PARAM_SCALE = 1e-2  # params start as PARAM_SCALE * N(0, 1): small, so float32 read-back of updates is exact enough
CHECK_STEPS = 3
RTOL = 1e-5
SEED = 0
AXPY_ROW = "axpy reference"
AXPY_MIN_NUMEL = 32 * 2**20  # 2 x 128 MiB: the rulebook's >= 256 MB working set for bandwidth figures

BYTE_MODELS = {
    28: "Adam: read p, g, m, v + write p, m, v = 7 x 4 B",
    20: "momentum / Lion: read p, g, buf + write p, buf = 5 x 4 B",
}


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Shape:
    key: str
    desc: str
    tensor_shape: tuple[int, ...]
    count: int

    @property
    def numel(self) -> int:
        return self.count * math.prod(self.tensor_shape)


def shapes(quick: bool) -> list[Shape]:
    if quick:
        return [
            Shape("a", "1 Mi params in 8 tensors (quick)", (256, 512), 8),
            Shape("b", "50 tensors x 1,024 (quick)", (32, 32), 50),
        ]
    return [
        Shape("a", "64 Mi params in 8 tensors", (2048, 4096), 8),
        Shape("b", "2,000 tensors x 4,096", (64, 64), 2000),
    ]


OptimizerFactory = Callable[[list[Any], float], Any]


@dataclass
class Peer:
    name: str  # row label
    kind: str  # "foreach", "fused", "torchzero", "foreach-hand": used for the ratio columns
    build: OptimizerFactory
    prime: Callable[[Any, list[Any]], None] | None = None  # called once, after the first grads are set


@dataclass
class Chain:
    name: str
    tz_modules: tuple[str, ...]
    bytes_per_param: int
    build_chain: Callable[[Any, list[Any], float], Any]  # (namespace tzfast|torchzero, params, lr)
    peers: list[Peer]
    equivalence: str
    optional: bool = False  # skipped (with a note) when tzfast lacks its modules
    allowed_bad_fraction: float = 0.0
    # check gradients get magnitude |z| + grad_floor (sign kept); 0 = plain N(0, 1)
    grad_floor: float = 0.0
    notes: list[str] = field(default_factory=list)


def _prime_sgd_buffer_with_first_grad(opt: Any, params: list[Any]) -> None:
    # torchzero HeavyBall(ema_init='update') starts its buffer at the first update, so its
    # first step uses (1 + momentum) * g1; torch SGD's lazily created buffer starts at g1.
    # Pre-setting torch's buffer to g1 makes both run the same recurrence from step 1 on.
    for p in params:
        opt.state[p]["momentum_buffer"] = p.grad.detach().clone()


class ForeachLion:
    """Lion written with torch._foreach ops (torch.optim has no Lion): the fair eager peer."""

    def __init__(self, params: list[Any], lr: float, beta1: float = 0.9, beta2: float = 0.99) -> None:
        import torch

        self.params = list(params)
        self.lr, self.beta1, self.beta2 = lr, beta1, beta2
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    def step(self) -> None:
        import torch

        with torch.no_grad():
            grads = [p.grad for p in self.params]
            update = torch._foreach_lerp(self.exp_avg, grads, 1 - self.beta1)
            torch._foreach_sign_(update)
            torch._foreach_lerp_(self.exp_avg, grads, 1 - self.beta2)
            torch._foreach_add_(self.params, update, alpha=-self.lr)


def chains() -> list[Chain]:
    import torch

    def adam(kw: dict[str, Any]) -> OptimizerFactory:
        return lambda ps, lr: torch.optim.Adam(ps, lr=lr, betas=(0.9, 0.999), eps=1e-8, **kw)

    def sgd(nesterov: bool, kw: dict[str, Any]) -> OptimizerFactory:
        return lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9, dampening=0, nesterov=nesterov, **kw)

    def sgd_peers(nesterov: bool, prime: Any) -> list[Peer]:
        peers = [Peer("torch SGD foreach", "foreach", sgd(nesterov, {"foreach": True}), prime)]
        peers.append(Peer("torch SGD fused", "fused", sgd(nesterov, {"fused": True}), prime))
        return peers

    return [
        Chain(
            name="Adam+LR",
            tz_modules=("Adam", "LR"),
            bytes_per_param=28,
            build_chain=lambda ns, ps, lr: ns.Optimizer(ps, ns.m.Adam(), ns.m.LR(lr)),
            peers=[
                Peer("torch Adam foreach", "foreach", adam({"foreach": True})),
                Peer("torch Adam fused", "fused", adam({"fused": True})),
            ],
            equivalence=(
                "`torch.optim.Adam(lr, betas=(0.9, 0.999), eps=1e-8)` == `Adam() + LR(lr)` up to "
                "where eps enters: torch adds eps to sqrt(v)/sqrt(1-b2^t), torchzero adds it to sqrt(v) "
                "and folds sqrt(1-b2^t) into the step size (relative effect ~eps/sqrt(v), far below "
                "the tolerance for these gradients: the check draws |g| = |z| + 0.5, so sqrt(v) >= 0.5 "
                "and the eps term is < 1e-7 relative; eps placement itself is the differential tests' job)."
            ),
            grad_floor=0.5,
        ),
        Chain(
            name="HeavyBall+LR",
            tz_modules=("HeavyBall", "LR"),
            bytes_per_param=20,
            build_chain=lambda ns, ps, lr: ns.Optimizer(ps, ns.m.HeavyBall(0.9), ns.m.LR(lr)),
            peers=sgd_peers(False, _prime_sgd_buffer_with_first_grad),
            equivalence=(
                "`torch.optim.SGD(lr, momentum=0.9, dampening=0, nesterov=False)` with "
                "`state[p]['momentum_buffer']` pre-set to the first gradient == "
                "`HeavyBall(0.9, dampening=0, lerp=False, ema_init='update') + LR(lr)`: both run "
                "buf <- 0.9 buf + g, p <- p - lr buf. torchzero's ema_init='update' makes the first "
                "buffer 1.9 g1 where torch's default starts at g1; without the pre-set buffer the "
                "trajectories differ from step 1 (checked: foreach bit-exact over 4 steps, fused within 1 ulp)."
            ),
        ),
        Chain(
            name="NAG+LR",
            tz_modules=("NAG", "LR"),
            bytes_per_param=20,
            build_chain=lambda ns, ps, lr: ns.Optimizer(ps, ns.m.NAG(0.9), ns.m.LR(lr)),
            peers=sgd_peers(True, None),
            equivalence=(
                "`torch.optim.SGD(lr, momentum=0.9, dampening=0, nesterov=True)` == "
                "`NAG(0.9, dampening=0, lerp=False) + LR(lr)`: torchzero's velocity v = 0.9 * torch's "
                "momentum_buffer, so its update g + v is torch's g + 0.9 buf (both start from zero state)."
            ),
            optional=True,
        ),
        Chain(
            name="Lion+LR",
            tz_modules=("Lion", "LR"),
            bytes_per_param=20,
            build_chain=lambda ns, ps, lr: ns.Optimizer(ps, ns.m.Lion(), ns.m.LR(lr)),
            peers=[Peer("torch foreach Lion (hand-written)", "foreach", lambda ps, lr: ForeachLion(ps, lr))],
            equivalence=(
                "torch.optim has no Lion: the peer is Lion(beta1=0.9, beta2=0.99) written with four "
                "`torch._foreach_*` ops (lerp, sign, lerp, add). No fused peer exists on CPU."
            ),
            optional=True,
            # sign(lerp(m, g, 0.1)) may round to the other sign where the lerp is ~0
            allowed_bad_fraction=1e-6,
        ),
    ]


# --------------------------------------------------------------------------- one case


@dataclass
class _Live:
    """A variant under test: its own params, grads and optimizer."""

    name: str
    role: str  # "tzfast" | "peer"
    kind: str  # "tzfast" | "foreach" | "fused" | "torchzero" | ...
    params: list[Any]
    grads: list[Any]
    opt: Any
    prime: Callable[[Any, list[Any]], None] | None = None
    check: CheckResult | None = None
    error: str = ""


def _make_live(
    name: str, role: str, kind: str, init: Sequence[Any], build: OptimizerFactory, prime: Any = None
) -> _Live:
    import torch

    params = [t.clone().requires_grad_(True) for t in init]
    grads = [torch.zeros_like(t) for t in init]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt = build(params, LR)
    return _Live(name, role, kind, params, grads, opt, prime)


def _row(chain: Chain, shape: Shape, name: str, role: str, kind: str, status: str, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "chain": chain.name,
        "shape": shape.key,
        "shape_desc": shape.desc,
        "numel": shape.numel,
        "n_tensors": shape.count,
        "bytes_per_param": chain.bytes_per_param,
        "variant": name,
        "role": role,
        "kind": kind,
        "status": status,
        "reason": "",
        "check": None,
        "reps": 0,
        "inner": 0,
        "timing_note": "",
        "t_min_us": None,
        "t_med_us": None,
        "gbps_med": None,
        "gbps_best": None,
        "frac_axpy_med": None,
        "frac_axpy_best": None,
        "speedup_med": None,
        "speedup_min": None,
    }
    row.update(extra)
    return row


def run_case(
    ctx: Context,
    chain: Chain,
    shape: Shape,
    init: Sequence[Any],
    grad_steps: Sequence[Sequence[Any]],
    scratch: tuple[list[Any], list[Any]],
    axpy: tuple[Callable[[], None], int, int],
    tz: Any | None,
    tz_reason: str,
) -> dict[str, Any]:
    import torch
    import torchzero

    log(f"B1 {chain.name} shape ({shape.key}) threads={ctx.threads}: building variants")
    lives: list[_Live] = []
    rows_unavailable: list[dict[str, Any]] = []
    notes: list[str] = []
    if tz is not None:
        try:
            lives.append(_make_live("tzfast", "tzfast", "tzfast", init, lambda ps, lr: chain.build_chain(tz, ps, lr)))
        except Exception as exc:  # noqa: BLE001
            tz, tz_reason = None, f"building tz.Optimizer failed: {type(exc).__name__}: {exc}"
    if tz is None:
        rows_unavailable.append(_row(chain, shape, "tzfast", "tzfast", "tzfast", "unavailable", reason=tz_reason))
    lives.append(
        _make_live("torchzero", "peer", "torchzero", init, lambda ps, lr: chain.build_chain(torchzero, ps, lr))
    )
    for peer in chain.peers:
        try:
            lives.append(_make_live(peer.name, "peer", peer.kind, init, peer.build, peer.prime))
        except Exception as exc:  # noqa: BLE001
            rows_unavailable.append(
                _row(chain, shape, peer.name, "peer", peer.kind, "unavailable", reason=f"{type(exc).__name__}: {exc}")
            )

    # ---- correctness: CHECK_STEPS steps from the same state with the same gradients
    ref = lives[0]  # tzfast when available, else torchzero
    for live in lives[1:]:
        live.check = CheckResult(against=ref.name)
    # two persistent buffer sets: `work` snapshots params before a step and then holds that
    # step's update; `ref_delta` keeps the reference's update while the others step
    work, ref_delta = scratch
    for k, gsrc in enumerate(grad_steps):
        for live in lives:
            if live.error:
                continue
            with torch.no_grad():
                for g, src in zip(live.grads, gsrc, strict=True):
                    if chain.grad_floor:
                        torch.abs(src, out=g)
                        g.add_(chain.grad_floor).copysign_(src)
                    else:
                        g.copy_(src)
                for w, p in zip(work, live.params, strict=True):
                    w.copy_(p)
            try:
                if k == 0 and live.prime is not None:
                    live.prime(live.opt, live.params)
                live.opt.step()
            except Exception as exc:  # noqa: BLE001
                live.error = f"step raised {type(exc).__name__}: {exc}"
                log(f"  {live.name}: {live.error}")
                if live is ref:
                    break
                continue
            with torch.no_grad():
                for w, p in zip(work, live.params, strict=True):
                    torch.sub(p.detach(), w, out=w)
            if live is ref:
                work, ref_delta = ref_delta, work
                continue
            assert live.check is not None
            step_res = common.compare_updates(ref.name, ref_delta, work, live.params, RTOL, chain.allowed_bad_fraction)
            step_res.detail = f"step {k + 1}: {step_res.detail}"
            live.check.merge_step(step_res)
        if ref.error:
            break

    if ref.error and ref.role == "tzfast":
        # tzfast broke: say so and fall back to peers-only against torchzero
        reason = f"tzfast {ref.error}"
        del lives
        gc.collect()
        res = run_case(ctx, chain, shape, init, grad_steps, scratch, axpy, None, reason)
        res["rows"][0]["status"] = "error"
        return res

    checks_ok: dict[str, bool] = {}
    for live in lives:
        if live.error:
            checks_ok[live.name] = False
        elif live is ref:
            checks_ok[live.name] = True  # judged below (tzfast) or the oracle itself (torchzero)
        else:
            assert live.check is not None
            if live.check.steps_checked < len(grad_steps) and live.check.passed:
                live.check.passed = False  # a check that did not run is no pass
                live.check.errors.append(f"only {live.check.steps_checked} of {len(grad_steps)} steps compared")
            checks_ok[live.name] = live.check.passed
            if not live.check.passed:
                log(f"  CHECK FAILED {live.name} vs {ref.name}: {live.check.summary()}")
    tz_check: CheckResult | None = None
    if ref.role == "tzfast":
        tzo = next((lv for lv in lives if lv.kind == "torchzero"), None)
        tz_check = tzo.check if tzo is not None and not tzo.error else None
        checks_ok["tzfast"] = bool(tz_check and tz_check.passed)
        if tz_check is None:
            notes.append("tzfast could not be checked against torchzero (torchzero failed); tzfast not reported")

    # ---- timing, interleaved, only what passed its check, plus the axpy bandwidth reference
    timed = [lv for lv in lives if checks_ok.get(lv.name) and not lv.error]
    axpy_step, axpy_bytes, axpy_numel = axpy
    variants = [Variant(lv.name, lv.role, lv.opt.step) for lv in timed]
    variants.append(Variant(AXPY_ROW, "ref", axpy_step))
    stats = common.time_interleaved(
        variants, reps=ctx.reps, warmup=1, min_rep_s=ctx.min_rep_s, max_variant_s=ctx.max_variant_s
    )
    ax_st = stats[AXPY_ROW]
    ax_med = axpy_bytes / ax_st.median_s / 1e9
    ax_best = axpy_bytes / ax_st.min_s / 1e9

    bytes_per_step = chain.bytes_per_param * shape.numel
    rows: list[dict[str, Any]] = []
    for live in lives:
        if live.error:
            rows.append(_row(chain, shape, live.name, live.role, live.kind, "error", reason=live.error))
            continue
        if live is ref and ref.role == "tzfast":
            check_json = dict(tz_check.to_json(), against="torchzero") if tz_check else None
        elif live is ref:
            check_json = {
                "against": "self",
                "passed": True,
                "reference": True,
                "note": "oracle (tzfast unavailable): peers are checked against it",
            }
        else:
            assert live.check is not None
            check_json = live.check.to_json()
        if not checks_ok[live.name]:
            errs = (check_json or {}).get("errors", [])
            reason = (
                f"{errs[0]} ({len(errs)} of {CHECK_STEPS} steps failed)"
                if errs
                else "not checked (its reference failed)"
            )
            rows.append(
                _row(chain, shape, live.name, live.role, live.kind, "check failed", reason=reason, check=check_json)
            )
            continue
        st = stats[live.name]
        gbps_med = bytes_per_step / st.median_s / 1e9
        gbps_best = bytes_per_step / st.min_s / 1e9
        rows.append(
            _row(
                chain,
                shape,
                live.name,
                live.role,
                live.kind,
                "ok",
                check=check_json,
                reps=st.reps,
                inner=st.inner,
                timing_note=st.note,
                t_min_us=st.min_us,
                t_med_us=st.median_us,
                gbps_med=gbps_med,
                gbps_best=gbps_best,
                frac_axpy_med=gbps_med / ax_med,
                frac_axpy_best=gbps_best / ax_best,
                times_us=[t * 1e6 for t in st.times_s],
            )
        )
    rows.append(
        _row(
            chain,
            shape,
            f"{AXPY_ROW} ({common.fmt_count(axpy_numel)} elements)",
            "ref",
            "axpy",
            "ok",
            numel=axpy_numel,
            bytes_per_param=common.AXPY_BYTES_PER_ELEMENT,
            n_tensors=1,
            reps=ax_st.reps,
            inner=ax_st.inner,
            timing_note=ax_st.note,
            t_min_us=ax_st.min_us,
            t_med_us=ax_st.median_us,
            gbps_med=ax_med,
            gbps_best=ax_best,
            frac_axpy_med=1.0,
            frac_axpy_best=1.0,
            times_us=[t * 1e6 for t in ax_st.times_s],
        )
    )
    tz_row = next((r for r in rows if r["role"] == "tzfast" and r["status"] == "ok"), None)
    if tz_row is not None:
        for r in rows:
            if r["role"] == "peer" and r["status"] == "ok":
                r["speedup_med"] = r["t_med_us"] / tz_row["t_med_us"]
                r["speedup_min"] = r["t_min_us"] / tz_row["t_min_us"]
    all_rows = rows_unavailable[:1] + rows + rows_unavailable[1:] if tz is None else rows + rows_unavailable
    for r in all_rows:
        if r["status"] == "ok":
            log(
                f"  {r['variant']:<36} median {fmt_us(r['t_med_us'])} us  min {fmt_us(r['t_min_us'])} us"
                f"  {fmt_float(r['gbps_med'], 1)} GB/s  speedup {fmt_ratio(r['speedup_med'])}"
            )
        else:
            log(f"  {r['variant']:<36} {r['status']}: {r['reason']}")
    del lives, variants, timed
    gc.collect()
    return {
        "chain": chain.name,
        "shape": shape.key,
        "rows": all_rows,
        "notes": notes,
        "reference": ref.name if not ref.error else None,
        "axpy": {"numel": axpy_numel, "gbps_med": ax_med, "gbps_best": ax_best},
    }


# --------------------------------------------------------------------------- entry points


def run(ctx: Context) -> dict[str, Any]:
    import torch

    result: dict[str, Any] = {
        "id": ID,
        "title": TITLE,
        "lr": LR,
        "check": {
            "steps": CHECK_STEPS,
            "rtol": RTOL,
            "rule": "|d - d_ref| <= rtol*(|d_ref| + max|d_ref|) + 2 ulp32(|p|) elementwise, for the update "
            "d = p_k - p_(k-1) of each of the first CHECK_STEPS steps from identical params "
            f"(PARAM_SCALE*N(0,1), PARAM_SCALE={PARAM_SCALE}) with identical N(0,1) gradients",
        },
        "byte_models": {str(k): v for k, v in BYTE_MODELS.items()},
        "chains": {},
        "cases": [],
        "notes": [],
    }
    chain_list = chains()
    tz_by_chain: dict[str, tuple[Any, str]] = {c.name: common.load_tzfast(*c.tz_modules) for c in chain_list}
    for c in chain_list:
        result["chains"][c.name] = {
            "equivalence": c.equivalence,
            "bytes_per_param": c.bytes_per_param,
            "allowed_bad_fraction": c.allowed_bad_fraction,
        }
    for shape in shapes(ctx.quick):
        gen = torch.Generator().manual_seed(SEED)
        init = [torch.randn(shape.tensor_shape, generator=gen).mul_(PARAM_SCALE) for _ in range(shape.count)]
        grad_steps = [
            [torch.randn(shape.tensor_shape, generator=gen) for _ in range(shape.count)] for _ in range(CHECK_STEPS)
        ]
        scratch = ([torch.empty_like(t) for t in init], [torch.empty_like(t) for t in init])
        axpy_numel = max(shape.numel, 2**20 if ctx.quick else AXPY_MIN_NUMEL)
        axpy_step, axpy_bytes = common.make_axpy(axpy_numel)
        axpy = (axpy_step, axpy_bytes, axpy_numel)
        for chain in chain_list:
            tz, reason = tz_by_chain[chain.name]
            if chain.optional and tz is None:
                note = f"{chain.name} skipped on shape ({shape.key}): {reason}"
                if note not in result["notes"]:
                    result["notes"].append(note)
                    log(note)
                continue
            result["cases"].append(run_case(ctx, chain, shape, init, grad_steps, scratch, axpy, tz, reason))
        del init, grad_steps, scratch, axpy, axpy_step
        gc.collect()
    return result


# --------------------------------------------------------------------------- report

_PEER_COLS = [("foreach", "vs torch foreach"), ("fused", "vs torch fused"), ("torchzero", "vs torchzero")]


def _check_cell(row: dict[str, Any]) -> str:
    chk = row.get("check")
    if not chk:
        return "—"
    if chk.get("reference"):
        return "oracle"
    if chk.get("passed"):
        txt = f"pass {chk['max_rel_diff']:.0e}"
        if chk.get("bad_elements"):
            txt += f" ({chk['bad_elements']} sign ties)"
        return txt
    return "FAIL"


def render_markdown(runs: Sequence[dict[str, Any]]) -> str:
    """``runs``: one entry per thread count: ``{"threads", "machine", "result"}``."""
    out: list[str] = [f"## {TITLE}", ""]
    first = next((r["result"] for r in runs if r.get("result")), None)
    if first is None:
        return "\n".join(out + ["No results.", ""])
    out += [
        "Optimizer step only (`opt.step()`, no closure, gradients set once beforehand), fp32, lr "
        f"{first['lr']}. Time per step: min and median over repetitions, variants interleaved. "
        "GB/s = bytes per param x params / time (byte model: "
        + "; ".join(f"{k} B/param = {v}" for k, v in first["byte_models"].items())
        + "); GB/s / axpy divides by the GB/s of an in-place axpy `a.add_(b, alpha=s)` (12 B/element, "
        "working set >= 256 MB outside --quick) timed interleaved with the variants of the same case "
        "(the `axpy reference` row), median by median; the machine line's axpy is the start-of-process figure. "
        "**speedup** = peer time / tzfast time (> 1: tzfast faster), median (min in brackets).",
        "",
        f"Correctness check before timing: {first['check']['rule']}; rtol {first['check']['rtol']}. "
        "A variant that fails is not timed.",
        "",
        "Equivalences checked:",
        "",
    ]
    out += [f"- **{name}**: {c['equivalence']}" for name, c in first["chains"].items()]
    out.append("")
    for n in first.get("notes", []):
        out.append(f"- note: {n}")
    if first.get("notes"):
        out.append("")

    # headline: tzfast vs each peer, one line per (chain, shape, threads)
    summary_rows = []
    for run_ in runs:
        res = run_.get("result")
        if not res:
            continue
        for case in res["cases"]:
            rows = case["rows"]
            tz_row = next((r for r in rows if r["role"] == "tzfast"), None)
            if tz_row is None:
                continue
            cells: list[str] = [case["chain"], f"({case['shape']})", str(run_["threads"])]
            if tz_row["status"] == "ok":
                cells += [
                    fmt_us(tz_row["t_med_us"]),
                    fmt_float(tz_row["gbps_med"], 1),
                    fmt_float(tz_row["frac_axpy_med"]),
                ]
            else:
                cells += [tz_row["status"], "—", "—"]
            for kind, _ in _PEER_COLS:
                peer = next((r for r in rows if r["role"] == "peer" and r["kind"] == kind), None)
                if peer is None:
                    cells.append("n/a")
                elif peer["speedup_med"] is None:
                    cells.append(peer["status"] if peer["status"] != "ok" else "—")
                else:
                    cells.append(f"{fmt_ratio(peer['speedup_med'])} ({fmt_ratio(peer['speedup_min'])})")
            summary_rows.append(cells)
    if summary_rows:
        out += ["### Summary: tzfast speedup (median, min in brackets)", ""]
        out.append(
            markdown_table(
                ["chain", "shape", "threads", "tzfast us/step (median)", "tzfast GB/s", "tzfast GB/s / axpy"]
                + [h for _, h in _PEER_COLS],
                summary_rows,
            )
        )
        out += ["", "Lion's foreach column is the hand-written torch._foreach Lion.", ""]

    headers = [
        "chain",
        "shape",
        "variant",
        "check",
        "reps",
        "us/step min",
        "us/step median",
        "GB/s (median)",
        "GB/s / axpy",
        "tzfast speedup",
    ]
    for run_ in runs:
        res = run_.get("result")
        out += [f"### {run_['threads']} thread(s)", "", common.machine_line(run_["machine"]), ""]
        if not res:
            out += [f"Worker failed: {run_.get('error', 'unknown error')}", ""]
            continue
        table_rows = []
        problems: list[str] = []
        for case in res["cases"]:
            for r in case["rows"]:
                shape_cell = f"({r['shape']}) {r['shape_desc']}"
                if r["status"] == "ok":
                    reps = f"{r['reps']}x{r['inner']}" if r["inner"] > 1 else str(r["reps"])
                    spd = (
                        "—"
                        if r["speedup_med"] is None
                        else f"{fmt_ratio(r['speedup_med'])} ({fmt_ratio(r['speedup_min'])})"
                    )
                    table_rows.append(
                        [
                            r["chain"],
                            shape_cell,
                            r["variant"],
                            _check_cell(r),
                            reps,
                            fmt_us(r["t_min_us"]),
                            fmt_us(r["t_med_us"]),
                            fmt_float(r["gbps_med"], 1),
                            fmt_float(r["frac_axpy_med"]),
                            spd,
                        ]
                    )
                    if r["timing_note"]:
                        problems.append(f"{r['chain']} ({r['shape']}) {r['variant']}: {r['timing_note']}")
                else:
                    table_rows.append(
                        [r["chain"], shape_cell, r["variant"], _check_cell(r), "—", "—", "—", "—", "—", r["status"]]
                    )
                    problems.append(f"{r['chain']} ({r['shape']}) {r['variant']}: {r['status']}: {r['reason']}")
            problems += case.get("notes", [])
        out.append(markdown_table(headers, table_rows))
        out.append("")
        out += [f"- {p}" for p in problems]
        if problems:
            out.append("")
        out.append("reps column: repetitions x steps per repetition.")
        out.append("")
    return "\n".join(out)


def plot(runs: Sequence[dict[str, Any]], out_dir: Any, plt: Any) -> list[str]:
    """Two figures: GB/s / axpy per variant, and tzfast's speedup over each peer."""
    import os

    valid = common.successful_runs(runs)
    if not valid:
        return []
    shape_keys = sorted({c["shape"] for r in valid for c in r["result"]["cases"]})
    if not shape_keys:
        return []
    paths = []

    fig, axes = plt.subplots(
        len(valid), len(shape_keys), figsize=(6.5 * len(shape_keys), 3.6 * len(valid)), squeeze=False
    )
    for i, run_ in enumerate(valid):
        for j, skey in enumerate(shape_keys):
            ax = axes[i][j]
            cases = [c for c in run_["result"]["cases"] if c["shape"] == skey]
            chains_ = [c["chain"] for c in cases]
            variants: list[str] = []
            for c in cases:
                for r in c["rows"]:
                    if r["role"] == "ref":
                        continue
                    label = r["kind"] if r["role"] == "peer" else "tzfast"
                    if label not in variants:
                        variants.append(label)
            width = 0.8 / max(1, len(variants))
            for vi, label in enumerate(variants):
                xs, ys = [], []
                for ci, c in enumerate(cases):
                    r = next(
                        (
                            r
                            for r in c["rows"]
                            if r["role"] != "ref" and (r["kind"] if r["role"] == "peer" else "tzfast") == label
                        ),
                        None,
                    )
                    if r is not None and r["frac_axpy_med"] is not None:
                        xs.append(ci + (vi - (len(variants) - 1) / 2) * width)
                        ys.append(r["frac_axpy_med"])
                ax.bar(xs, ys, width, label=label)
            ax.set_xticks(range(len(chains_)), chains_)
            ax.axhline(1.0, color="k", lw=0.8, ls=":")
            if skey == "a":
                ax.axhline(0.9, color="r", lw=0.8, ls="--")
            desc = cases[0]["rows"][0]["shape_desc"] if cases and cases[0]["rows"] else ""
            ax.set_title(f"({skey}) {desc}, {run_['threads']} thread(s)", fontsize=9)
            ax.set_ylabel("GB/s / axpy GB/s")
            ax.legend(fontsize=7)
    fig.suptitle("B1 elementwise step: achieved bandwidth / in-process axpy (median)", fontsize=10)
    fig.tight_layout()
    p = os.path.join(str(out_dir), "B1_bandwidth.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    n_labels = max(
        1,
        sum(1 for r in valid[0]["result"]["cases"] for row in r["rows"] if row["role"] == "peer")
        // max(1, len(shape_keys)),
    )
    fig, axes = plt.subplots(1, len(shape_keys), figsize=(6.5 * len(shape_keys), 1.2 + 0.45 * n_labels), squeeze=False)
    for j, skey in enumerate(shape_keys):
        ax = axes[0][j]
        labels: list[str] = []
        series: dict[str, dict[str, float]] = {}
        for run_ in valid:
            for c in run_["result"]["cases"]:
                if c["shape"] != skey:
                    continue
                for r in c["rows"]:
                    if r["role"] == "peer" and r["speedup_med"] is not None:
                        lab = f"{c['chain']} vs {r['kind']}"
                        if lab not in labels:
                            labels.append(lab)
                        series.setdefault(f"{run_['threads']} thread(s)", {})[lab] = r["speedup_med"]
        if not labels:
            ax.set_title(f"({skey}): no tzfast speedups (tzfast unavailable or unchecked)", fontsize=9)
            ax.set_axis_off()
            continue
        height = 0.8 / max(1, len(series))
        for si, (name, vals) in enumerate(series.items()):
            ys = [li + (si - (len(series) - 1) / 2) * height for li, lab in enumerate(labels) if lab in vals]
            xs = [vals[lab] for lab in labels if lab in vals]
            ax.barh(ys, xs, height, label=name)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _pos: f"{v:g}x"))
        ax.set_xlabel("peer time / tzfast time (median; > 1: tzfast faster)")
        ax.set_title(f"({skey}) tzfast speedup", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = os.path.join(str(out_dir), "B1_speedup.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
