"""Run the tzfast benchmark suite: ``python -m bench.run [--quick] [--only B1 ...]``.

Each thread count runs in a fresh worker subprocess (``OMP_PROC_BIND=true`` and
``OMP_NUM_THREADS`` must be in the environment before torch starts its thread pool; the
worker then calls ``torch.set_num_threads``). The parent never imports torch: it collects
the workers' JSON and writes ``report.md``, one ``<ID>.md`` per benchmark, ``results.json``
and the PNG plots into ``--out`` (default ``bench/results/``, git-ignored).

Adding a benchmark: write ``bench/bN_name.py`` with ``ID``, ``TITLE``,
``run(ctx: Context) -> dict`` (JSON-able; rows in ``result["cases"][i]["rows"]`` with a
``status`` field are scanned for failures), ``render_markdown(runs) -> str`` and optionally
``plot(runs, out_dir, plt) -> list[str]``, then add one line to ``REGISTRY``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import common

__all__ = ["REGISTRY", "main"]

# benchmark id -> module; B2..B8 each add one line here
REGISTRY: dict[str, str] = {
    "B1": "bench.b1_elementwise",
    "B2": "bench.b2_zo_step",
    "B3": "bench.b3_newton_schulz",
    "B4": "bench.b4_lbfgs_direction",
    "B5": "bench.b5_lbfgs_end_to_end",
    "B7": "bench.b7_zo_functions",
}

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results"
SCHEMA = "tzfast-bench/1"


@dataclass(frozen=True)
class Sizes:
    reps: int  # repetitions per variant
    min_rep_s: float  # a repetition runs enough steps to last at least this long
    max_variant_s: float  # past this much timing, a variant gets 3 repetitions
    axpy_numel: int  # elements of the machine line's axpy (64 Mi: 512 MB working set)


FULL = Sizes(reps=7, min_rep_s=0.05, max_variant_s=60.0, axpy_numel=64 * 2**20)
QUICK = Sizes(reps=3, min_rep_s=0.002, max_variant_s=10.0, axpy_numel=2**20)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny sizes and 3 repetitions: checks the harness works, never a speed"
    )
    ap.add_argument(
        "--only",
        nargs="+",
        metavar="ID",
        choices=sorted(REGISTRY),
        help=f"benchmarks to run (default: all of {', '.join(sorted(REGISTRY))})",
    )
    ap.add_argument(
        "--threads",
        nargs="+",
        type=int,
        default=[1, 2],
        metavar="N",
        help="thread counts, each in a fresh subprocess (default: 1 2)",
    )
    ap.add_argument(
        "--reps",
        type=int,
        default=None,
        help=f"repetitions per variant (default {FULL.reps}, quick {QUICK.reps}; the rules ask for >= 5)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default bench/results/)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument("--_worker", dest="worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_worker-out", dest="worker_out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if any(t < 1 for t in args.threads):
        ap.error("--threads must be >= 1")
    if args.reps is not None and args.reps < 1:
        ap.error("--reps must be >= 1")
    return args


# --------------------------------------------------------------------------- worker


def _settle_imports() -> None:
    """Import what the benchmarks touch lazily, then ``gc.freeze()`` it all.

    torch.optim pulls in torch._dynamo on first use: hundreds of thousands of objects that a
    later ``gc.collect()`` (between cases, to return a case's gigabyte) would walk each time.
    """
    import gc

    import torch

    for mod in ("torchzero", "tzfast"):
        try:
            importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - availability is reported by the benchmarks
            pass
    p = torch.zeros(1, requires_grad=True)
    p.grad = torch.zeros(1)
    torch.optim.Adam([p], lr=0.1, foreach=True).step()
    gc.collect()
    gc.freeze()


def _worker(args: argparse.Namespace) -> int:
    import torch

    threads = args.threads[0]
    torch.set_num_threads(threads)
    _settle_imports()
    sizes = QUICK if args.quick else FULL
    reps = args.reps or sizes.reps
    ids = args.only or sorted(REGISTRY)
    common.log(f"worker: threads={threads} quick={args.quick} reps={reps} benchmarks={ids}")
    axpy = common.axpy_reference(sizes.axpy_numel, reps=max(reps, 5), min_rep_s=sizes.min_rep_s)
    machine = common.machine_info(threads, axpy)
    common.log(common.machine_line(machine))
    out: dict[str, Any] = {"threads": threads, "machine": machine, "benchmarks": {}, "errors": {}}
    for bid in ids:
        ctx = common.Context(
            quick=args.quick,
            reps=reps,
            threads=threads,
            machine=machine,
            min_rep_s=sizes.min_rep_s,
            max_variant_s=sizes.max_variant_s,
        )
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(REGISTRY[bid])
            out["benchmarks"][bid] = mod.run(ctx)
        except Exception:  # noqa: BLE001 - report, keep going with the next benchmark
            tb = traceback.format_exc()
            common.log(f"{bid} failed:\n{tb}")
            out["errors"][bid] = tb
        common.log(f"{bid} done in {time.perf_counter() - t0:.1f} s")
    if hasattr(os, "getloadavg"):
        machine["loadavg_1m_end"] = os.getloadavg()[0]
    assert args.worker_out is not None
    args.worker_out.write_text(json.dumps(out, indent=1, default=str))
    return 0


# --------------------------------------------------------------------------- parent


def _spawn_worker(args: argparse.Namespace, threads: int, tmpdir: Path) -> dict[str, Any]:
    out_file = tmpdir / f"worker_threads{threads}.json"
    cmd = [sys.executable, "-m", "bench.run", "--_worker", "--_worker-out", str(out_file), "--threads", str(threads)]
    if args.quick:
        cmd.append("--quick")
    if args.only:
        cmd += ["--only", *args.only]
    if args.reps:
        cmd += ["--reps", str(args.reps)]
    env = dict(os.environ)
    env["OMP_PROC_BIND"] = "true"
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    common.log(f"starting worker: threads={threads}")
    proc = subprocess.run(cmd, cwd=str(REPO_ROOT), env=env)  # stderr passes through: progress
    if proc.returncode != 0 or not out_file.exists():
        return {
            "threads": threads,
            "machine": None,
            "benchmarks": {},
            "errors": {"worker": f"worker exited with {proc.returncode}"},
        }
    data: dict[str, Any] = json.loads(out_file.read_text())
    return data


def _failures(bid: str, result: dict[str, Any], threads: int) -> list[str]:
    found = []
    for case in result.get("cases", []):
        for row in case.get("rows", []):
            if row.get("status") in ("check failed", "error"):
                found.append(
                    f"{bid} threads={threads} {row.get('chain', '')} ({row.get('shape', '')}) "
                    f"{row.get('variant', '')}: {row['status']}: {row.get('reason', '')}"
                )
    return found


def _main_parent(args: argparse.Namespace) -> int:
    ids = args.only or sorted(REGISTRY)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tzfast-bench-") as td:
        workers = [_spawn_worker(args, t, Path(td)) for t in args.threads]

    failures: list[str] = []
    errors: list[str] = []
    for w in workers:
        for key, msg in w.get("errors", {}).items():
            errors.append(f"threads={w['threads']} {key}: {msg.strip().splitlines()[-1] if msg.strip() else msg}")
        for bid, res in w.get("benchmarks", {}).items():
            failures += _failures(bid, res, w["threads"])

    plt: Any
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plot_note = ""
    except ImportError:
        plt = None
        plot_note = "matplotlib is not installed: PNG plots skipped (install matplotlib to get them)"
        common.log(plot_note)
    if args.no_plots:
        plt, plot_note = None, "plots skipped (--no-plots)"

    sections: list[str] = []
    plots: list[str] = []
    for bid in ids:
        mod = importlib.import_module(REGISTRY[bid])
        runs = [
            {
                "threads": w["threads"],
                "machine": w.get("machine"),
                "result": w["benchmarks"].get(bid),
                "error": w.get("errors", {}).get(bid) or w.get("errors", {}).get("worker"),
            }
            for w in workers
            if w.get("machine")
        ]
        md = mod.render_markdown(runs) if runs else f"## {bid}\n\nNo worker produced results.\n"
        (out_dir / f"{bid}.md").write_text(md + "\n")
        sections.append(md)
        if plt is not None and runs and hasattr(mod, "plot"):
            try:
                plots += mod.plot(runs, out_dir, plt)
            except Exception:  # noqa: BLE001 - a broken plot must not lose the numbers
                tb = traceback.format_exc()
                errors.append(f"{bid} plot failed: {tb.strip().splitlines()[-1]}")
                common.log(tb)

    elapsed = time.time() - started
    header = [
        "# tzfast benchmarks" + (" (--quick: harness check only, not a speed)" if args.quick else ""),
        "",
        f"Command: `python -m bench.run {' '.join(sys.argv[1:])}`".rstrip() + f" · {elapsed:.0f} s · "
        f"{_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        "",
    ]
    if plot_note:
        header += [f"Note: {plot_note}.", ""]
    if args.reps is not None and args.reps < 5 and not args.quick:
        header += [f"Note: --reps {args.reps} is below the rulebook's minimum of 5 repetitions.", ""]
    if errors or failures:
        header += ["**Problems:**", ""] + [f"- {e}" for e in errors + failures] + [""]
    report = "\n".join(header + sections)
    (out_dir / "report.md").write_text(report + "\n")

    summary = {
        "schema": SCHEMA,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "quick": args.quick,
        "threads": args.threads,
        "benchmarks": ids,
        "elapsed_s": elapsed,
        "runs": workers,
        "plots": [os.path.basename(p) for p in plots],
        "plot_note": plot_note,
        "errors": errors,
        "check_failures": failures,
        "checks_passed": not failures,
        "ok": not errors and not failures,
    }
    (out_dir / "results.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(report)
    common.log(
        f"wrote {out_dir / 'report.md'}, {out_dir / 'results.json'}" + (f", {len(plots)} plot(s)" if plots else "")
    )
    if errors:
        return 1
    if failures:
        return 3
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return _worker(args)
    return _main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
