"""Shared pieces of the benchmark harness: machine description, in-process reference
figures, interleaved timing, the correctness check, and report helpers.

Every benchmark module (``bench/bN_*.py``) builds on these; see ``bench/run.py`` for the
registry and the module interface.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily: the parent process of bench.run never needs it
    import torch

__all__ = [
    "AXPY_BYTES_PER_ELEMENT",
    "CheckResult",
    "Context",
    "TimingStats",
    "Variant",
    "axpy_reference",
    "compare_updates",
    "cpu_description",
    "fmt_count",
    "fmt_float",
    "fmt_ratio",
    "fmt_us",
    "load_tzfast",
    "log",
    "machine_info",
    "make_axpy",
    "machine_line",
    "markdown_table",
    "note_lines",
    "successful_runs",
    "time_interleaved",
    "tzfast_description",
]

AXPY_BYTES_PER_ELEMENT = 12  # a.add_(b, alpha=s): read a, read b, write a (fp32)


_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress messages go to stderr (stdout stays clean), stamped with seconds since start."""
    print(f"[bench {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- machine


def cpu_description() -> dict[str, Any]:
    """CPU model, logical CPU count and the SIMD flags that matter for our kernels."""
    model = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("unknown", "", "x86_64"):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    interesting = ["avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_tile", "neon", "asimd"]
    return {
        "model": model,
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "simd_flags": [f for f in interesting if f in flags],
    }


def load_tzfast(*module_names: str) -> tuple[Any | None, str]:
    """Import tzfast and check that ``tz.Optimizer`` and ``tz.m.<name>`` exist.

    Returns ``(tzfast_module, "")`` or ``(None, reason)``.
    """
    try:
        import tzfast as tz
    except Exception as exc:  # noqa: BLE001 - any import failure means "unavailable"
        return None, f"import tzfast failed: {type(exc).__name__}: {exc}"
    missing = []
    if not hasattr(tz, "Optimizer"):
        missing.append("tz.Optimizer")
    m = getattr(tz, "m", None)
    for name in module_names:
        if m is None or not hasattr(m, name):
            missing.append(f"tz.m.{name}")
    if missing:
        return None, "tzfast lacks " + ", ".join(missing)
    return tz, ""


def tzfast_description() -> dict[str, Any]:
    """tzfast version and native build info, as far as they are importable."""
    info: dict[str, Any] = {"importable": False, "version": None, "build_info": None}
    try:
        import tzfast
    except Exception as exc:  # noqa: BLE001
        info["error"] = f"{type(exc).__name__}: {exc}"
        return info
    info["importable"] = True
    info["version"] = getattr(tzfast, "__version__", None)
    try:
        from tzfast import _native

        build_info = _native.build_info()
        info["build_info"] = build_info if isinstance(build_info, (dict, str, int, float)) else repr(build_info)
    except Exception as exc:  # noqa: BLE001
        info["build_info_error"] = f"{type(exc).__name__}: {exc}"
    return info


def make_axpy(numel: int, seed: int = 1234) -> tuple[Callable[[], None], int]:
    """An in-place fp32 axpy ``a.add_(b, alpha=s)`` on fresh ``numel``-element tensors.

    Returns ``(step, bytes_per_step)``; the sign of ``s`` alternates so ``a`` stays bounded
    however many steps run. Benchmarks time it interleaved with their variants to get a
    bandwidth reference taken under the same conditions.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(numel, generator=gen)
    b = torch.randn(numel, generator=gen)
    sign = [1.0]

    def step() -> None:
        sign[0] = -sign[0]
        a.add_(b, alpha=1e-3 * sign[0])

    return step, AXPY_BYTES_PER_ELEMENT * numel


def axpy_reference(numel: int, reps: int, min_rep_s: float) -> dict[str, Any]:
    """In-place axpy ``a.add_(b, alpha=s)`` in fp32: the machine line's bandwidth reference."""
    step, bytes_moved = make_axpy(numel)
    stats = time_interleaved([Variant("axpy", "ref", step)], reps=reps, warmup=3, min_rep_s=min_rep_s)["axpy"]
    del step
    gc.collect()
    return {
        "op": "a.add_(b, alpha=s), fp32, in place",
        "numel": numel,
        "working_set_MB": 2 * 4 * numel / 1e6,
        "bytes_per_element": AXPY_BYTES_PER_ELEMENT,
        "t_min_us": stats.min_us,
        "t_med_us": stats.median_us,
        "gbps_best": bytes_moved / stats.min_s / 1e9,
        "gbps_med": bytes_moved / stats.median_s / 1e9,
        "reps": stats.reps,
        "inner": stats.inner,
    }


def machine_info(threads: int, axpy: dict[str, Any] | None) -> dict[str, Any]:
    import torch

    cpu_capability = None
    try:
        cpu_capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        pass
    return {
        "cpu": cpu_description(),
        "threads": threads,
        "torch_num_threads": torch.get_num_threads(),
        "OMP_PROC_BIND": os.environ.get("OMP_PROC_BIND"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cpu_capability": cpu_capability,
        "tzfast": tzfast_description(),
        "axpy": axpy,
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def machine_line(machine: dict[str, Any]) -> str:
    cpu = machine["cpu"]
    tzd = machine["tzfast"]
    if tzd.get("importable"):
        tz_txt = f"tzfast {tzd.get('version') or '(no __version__)'}"
        if tzd.get("build_info") is not None:
            tz_txt += f", build_info {tzd['build_info']}"
        elif tzd.get("build_info_error"):
            tz_txt += f", build_info unavailable ({tzd['build_info_error']})"
    else:
        tz_txt = f"tzfast not importable ({tzd.get('error', '?')})"
    parts = [
        f"CPU {cpu['model']} ({cpu['logical_cpus']} logical CPUs; "
        f"{' '.join(cpu['simd_flags']) or 'no listed SIMD flags'})",
        f"threads {machine['threads']} (torch.get_num_threads()={machine['torch_num_threads']}, "
        f"OMP_PROC_BIND={machine['OMP_PROC_BIND']})",
        f"torch {machine['torch']} (cpu capability {machine['torch_cpu_capability']})",
        tz_txt,
    ]
    ax = machine.get("axpy")
    if ax:
        parts.append(
            f"axpy `a.add_(b, alpha=s)` fp32, {ax['numel'] / 2**20:.0f} Mi elements "
            f"({ax['working_set_MB']:.0f} MB working set, 12 B/element): "
            f"{ax['gbps_med']:.1f} GB/s median, {ax['gbps_best']:.1f} GB/s best"
        )
    if machine.get("loadavg_1m") is not None:
        txt = f"load average {machine['loadavg_1m']:.2f} at start"
        if machine.get("loadavg_1m_end") is not None:
            txt += f", {machine['loadavg_1m_end']:.2f} at end"
        parts.append(txt)
    return "Machine: " + " · ".join(parts)


# --------------------------------------------------------------------------- timing


@dataclass
class Variant:
    """One thing to time: ``step()`` runs one optimizer step (or one reference op)."""

    name: str
    role: str  # "tzfast", "peer" or "ref"
    step: Callable[[], None]
    max_reps: int | None = None


@dataclass
class TimingStats:
    times_s: list[float]  # seconds per step, one entry per repetition
    inner: int  # steps per repetition (the repetition time is divided by this)
    note: str = ""

    @property
    def reps(self) -> int:
        return len(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_us(self) -> float:
        return self.min_s * 1e6

    @property
    def median_us(self) -> float:
        return self.median_s * 1e6


def time_interleaved(
    variants: Sequence[Variant],
    reps: int,
    warmup: int = 2,
    min_rep_s: float = 0.05,
    max_variant_s: float = 60.0,
    min_reps_when_slow: int = 3,
    slow_step_s: float = 0.25,
    reps_when_slow_step: int = 5,
) -> dict[str, TimingStats]:
    """Time ``variants`` interleaved (A B C, C B A, A B C, ...) after a warm-up.

    Each repetition runs ``inner`` steps back to back (``inner`` is chosen from the
    warm-up so a repetition lasts at least ``min_rep_s``) and records the time per step.
    A variant whose repetitions would take longer than ``max_variant_s`` in total gets
    ``min_reps_when_slow`` repetitions instead, and one whose step takes longer than
    ``slow_step_s`` gets at most ``reps_when_slow_step`` (the rulebook's minimum of 5);
    both say so in the variant's note. The direction of
    each round alternates so no variant always runs right after the same neighbour.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    estimates: dict[str, float] = {}
    for _ in range(max(1, warmup)):
        for v in variants:
            t0 = time.perf_counter()
            v.step()
            estimates[v.name] = time.perf_counter() - t0  # keep the last warm-up step

    plan: dict[str, tuple[int, int]] = {}
    notes: dict[str, str] = {}
    for v in variants:
        est = max(estimates[v.name], 1e-7)
        inner = max(1, min(10_000, math.ceil(min_rep_s / est)))
        n = reps if v.max_reps is None else min(reps, v.max_reps)
        if est > slow_step_s and n > reps_when_slow_step:
            notes[v.name] = f"{reps_when_slow_step} repetitions instead of {n}: ~{est:.2f} s per step"
            n = reps_when_slow_step
        if n > min_reps_when_slow and est * inner * n > max_variant_s:
            notes[v.name] = (
                f"{min_reps_when_slow} repetitions instead of {n}: {n} would take "
                f"~{est * inner * n:.0f} s (> {max_variant_s:.0f} s)"
            )
            n = min_reps_when_slow
        plan[v.name] = (inner, n)

    times: dict[str, list[float]] = {v.name: [] for v in variants}
    rounds = max(n for _, n in plan.values())
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for v in order:
                inner, n = plan[v.name]
                if r >= n:
                    continue
                t0 = time.perf_counter_ns()
                for _ in range(inner):
                    v.step()
                dt = (time.perf_counter_ns() - t0) * 1e-9
                times[v.name].append(dt / inner)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {v.name: TimingStats(times[v.name], plan[v.name][0], notes.get(v.name, "")) for v in variants}


# --------------------------------------------------------------------------- correctness


@dataclass
class CheckResult:
    """Outcome of comparing one variant's updates with the reference's."""

    against: str
    passed: bool = True
    steps_checked: int = 0
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0  # max |d - d_ref| / max |d_ref|, over the checked steps
    bad_elements: int = 0
    allowed_bad_elements: int = 0
    numel: int = 0
    detail: str = ""
    errors: list[str] = field(default_factory=list)

    def merge_step(self, other: CheckResult) -> None:
        self.steps_checked += 1
        self.max_abs_diff = max(self.max_abs_diff, other.max_abs_diff)
        self.max_rel_diff = max(self.max_rel_diff, other.max_rel_diff)
        self.bad_elements = max(self.bad_elements, other.bad_elements)
        self.allowed_bad_elements = other.allowed_bad_elements
        self.numel = other.numel
        if not other.passed:
            self.passed = False
            self.errors.append(other.detail)

    def summary(self) -> str:
        if self.passed:
            txt = f"pass (max rel {self.max_rel_diff:.1e}"
            if self.bad_elements:
                txt += f", {self.bad_elements} tolerated outliers"
            return txt + ")"
        return f"FAIL in {len(self.errors)} of {self.steps_checked} steps: {self.errors[0] if self.errors else '?'}"

    def to_json(self) -> dict[str, Any]:
        return {
            "against": self.against,
            "passed": self.passed,
            "steps_checked": self.steps_checked,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "bad_elements": self.bad_elements,
            "allowed_bad_elements": self.allowed_bad_elements,
            "numel": self.numel,
            "errors": self.errors,
        }


_CHUNK = 1 << 20  # elements per slice in compare_updates: scratch stays small and reused


def compare_updates(
    against: str,
    ref_delta: Sequence[torch.Tensor],
    delta: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    rtol: float,
    allowed_bad_fraction: float = 0.0,
) -> CheckResult:
    """Elementwise check of one step's update ``delta`` against ``ref_delta``.

    An element passes when
    ``|d - d_ref| <= rtol * (|d_ref| + max|d_ref|) + 2 * ulp32(|p|)``:
    relative to the element, with a floor of ``rtol`` times the update's scale (so elements
    whose update is ~0 are not held to an impossible relative bar), plus two float32 ulps of
    the parameter because the update is read back as the difference of two float32
    parameter vectors. NaN or inf anywhere fails. ``allowed_bad_fraction`` tolerates that
    fraction of outliers (used for sign-based rules, where a tie at ~0 may round either way).

    Works through the tensors in slices of ``_CHUNK`` elements with reused scratch buffers:
    fresh multi-megabyte allocations are page-faulted on every use and slow on these VMs.
    """
    import torch

    res = CheckResult(against=against)
    if len(ref_delta) != len(delta) or len(delta) != len(params):
        res.passed = False
        res.detail = f"{len(delta)} tensors vs {len(ref_delta)} in the reference"
        return res
    scale = 0.0
    for d in ref_delta:
        if d.numel():
            lo, hi = d.aminmax()
            scale = max(scale, abs(float(lo)), abs(float(hi)))
    if math.isnan(scale):
        scale = math.inf
    eps32 = float(torch.finfo(torch.float32).eps)
    size = min(_CHUNK, max((d.numel() for d in delta), default=0))
    diff_buf = torch.empty(size, dtype=torch.float32)
    tol_buf = torch.empty(size, dtype=torch.float32)
    tmp_buf = torch.empty(size, dtype=torch.float32)
    ok_buf = torch.empty(size, dtype=torch.bool)
    numel = bad = nonfinite = 0
    max_abs = 0.0
    with torch.no_grad():
        for dr, d, p in zip(ref_delta, delta, params, strict=True):
            if dr.shape != d.shape or p.shape != d.shape:
                res.passed = False
                res.detail = f"shape {tuple(d.shape)} vs {tuple(dr.shape)} in the reference"
                return res
            n = d.numel()
            numel += n
            d1, r1, p1 = d.reshape(-1), dr.reshape(-1), p.detach().reshape(-1)
            for s in range(0, n, size):
                e = min(n, s + size)
                m = e - s
                diff, tol, tmp, ok = diff_buf[:m], tol_buf[:m], tmp_buf[:m], ok_buf[:m]
                torch.sub(d1[s:e].float(), r1[s:e].float(), out=diff)
                diff.abs_()
                torch.abs(r1[s:e].float(), out=tol)
                tol.add_(scale).mul_(rtol)
                torch.abs(p1[s:e].float(), out=tmp)
                tol.add_(tmp, alpha=2 * eps32)
                torch.le(diff, tol, out=ok)  # NaN compares false: counted as outside
                bad += m - int(ok.sum())
                cmax = float(diff.max())
                if not math.isfinite(cmax):
                    nonfinite += m - int(torch.isfinite(diff).sum())
                    cmax = math.inf
                max_abs = max(max_abs, cmax)
    allowed = int(allowed_bad_fraction * numel)
    res.numel = numel
    res.max_abs_diff = max_abs
    res.max_rel_diff = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    res.bad_elements = bad
    res.allowed_bad_elements = allowed
    if nonfinite or bad > allowed or not math.isfinite(scale) or (scale == 0.0 and max_abs > 0):
        res.passed = False
        res.detail = (
            f"{bad} of {numel} elements outside tolerance (allowed {allowed}), "
            f"{nonfinite} non-finite, max |diff| {max_abs:.3e}, update scale {scale:.3e}"
        )
    return res


# --------------------------------------------------------------------------- context


@dataclass
class Context:
    """What a benchmark's ``run`` receives inside a worker process."""

    quick: bool
    reps: int
    threads: int
    machine: dict[str, Any]
    min_rep_s: float
    max_variant_s: float = 60.0
    notes: list[str] = field(default_factory=list)

    @property
    def axpy_gbps_med(self) -> float | None:
        ax = self.machine.get("axpy")
        return None if not ax else float(ax["gbps_med"])

    @property
    def axpy_gbps_best(self) -> float | None:
        ax = self.machine.get("axpy")
        return None if not ax else float(ax["gbps_best"])


# --------------------------------------------------------------------------- report helpers


def fmt_us(x: float | None) -> str:
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_count(n: int) -> str:
    """64 Mi, 1.5 Mi, 4 Ki or 1,000: element counts as people write them."""
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:,}"


def fmt_float(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def note_lines(notes: Sequence[str]) -> list[str]:
    """Notes under a table: one bullet each, then a blank line (nothing when there are none)."""
    return [f"- {n}" for n in notes] + ([""] if notes else [])


def successful_runs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-thread-count runs whose worker produced a result (what the plots draw)."""
    return [r for r in runs if r.get("result")]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
