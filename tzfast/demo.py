"""The main job: train a small model built here with a few chains and print a table.

Run with ``python -m tzfast.demo`` (``make demo``). Each chain runs in a fresh subprocess so
that its peak memory (``ru_maxrss``) is its own; the table shows the final training loss, the
median optimizer-step time and the process's peak resident memory.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

CHAINS: dict[str, tuple[str, Callable[[Any, Any], Any]]] = {}
ZEROTH_ORDER: set[str] = set()  # chains stepped with a forward-only closure (no backward pass)


def _chain(name: str, desc: str, zo: bool = False) -> Callable[[Callable[[Any, Any], Any]], Callable[[Any, Any], Any]]:
    def deco(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        CHAINS[name] = (desc, fn)
        if zo:
            ZEROTH_ORDER.add(name)
        return fn

    return deco


@_chain("tzfast-adam", "tz.m.Adam() + tz.m.LR(1e-3)")
def _adam(tz: Any, params: Any) -> Any:
    return tz.Optimizer(params, tz.m.Adam(), tz.m.LR(1e-3))


@_chain("tzfast-heavyball", "tz.m.HeavyBall(0.9) + tz.m.LR(1e-3)")
def _hb(tz: Any, params: Any) -> Any:
    return tz.Optimizer(params, tz.m.HeavyBall(0.9), tz.m.LR(1e-3))


@_chain("tzfast-adamw-clip", "ClipNorm(1) + Adam + WeightDecay(1e-2) + LR(1e-3)")
def _adamw(tz: Any, params: Any) -> Any:
    return tz.Optimizer(params, tz.m.ClipNorm(1.0), tz.m.Adam(), tz.m.WeightDecay(1e-2), tz.m.LR(1e-3))


@_chain("tzfast-mezo", "tz.m.MeZO() + tz.m.LR(1e-2) (zeroth order, forward passes only)", zo=True)
def _mezo(tz: Any, params: Any) -> Any:
    return tz.Optimizer(params, tz.m.MeZO(), tz.m.LR(1e-2))


@_chain("torch-adam", "torch.optim.Adam(lr=1e-3) (reference)")
def _torch_adam(tz: Any, params: Any) -> Any:
    return torch.optim.Adam(params, lr=1e-3)


def _model(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.GELU(), torch.nn.Linear(width, width),
                               torch.nn.GELU(), torch.nn.Linear(width, 1))


def run_one(name: str, steps: int, width: int) -> dict[str, Any]:
    import tzfast as tz

    torch.manual_seed(0)
    teacher = _model(32)
    X = torch.randn(2048, 64)
    with torch.no_grad():
        y = teacher(X)
    model = _model(width)
    opt = CHAINS[name][1](tz, model.parameters())
    times = []
    loss = torch.tensor(float("nan"))
    for i in range(steps):
        idx = torch.randint(0, X.shape[0], (256,))
        xb, yb = X[idx], y[idx]
        if name in ZEROTH_ORDER:
            def closure(backward: bool = True) -> torch.Tensor:
                with torch.no_grad():
                    return torch.nn.functional.mse_loss(model(xb), yb)

            t0 = time.perf_counter()
            loss = opt.step(closure)
            times.append(time.perf_counter() - t0)  # includes the closure's forward passes
            continue
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        final = torch.nn.functional.mse_loss(model(X), y).item()
    times.sort()
    return {"name": name, "final_loss": final, "step_ms": 1e3 * times[len(times) // 2],
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "params": sum(p.numel() for p in model.parameters())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tzfast.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per chain (default 300)")
    ap.add_argument("--width", type=int, default=512, help="hidden width of the trained MLP (default 512)")
    ap.add_argument("--only", nargs="*", choices=sorted(CHAINS), help="run only these chains")
    ap.add_argument("--one", choices=sorted(CHAINS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.width < 1:
        ap.error("--steps and --width must be positive")
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.width)))
        return 0

    import tzfast
    from tzfast._native import build_info

    info = build_info()
    print(f"tzfast {tzfast.__version__} | torch {torch.__version__} | {platform.processor() or platform.machine()} | "
          f"threads {torch.get_num_threads()} | SIMD {info.get('simd_selected')} | extension "
          f"{'yes' if info.get('extension', True) else 'no (reference twins)'}")
    rows = []
    for name in args.only or list(CHAINS):
        out = subprocess.run([sys.executable, "-m", "tzfast.demo", "--one", name, "--steps", str(args.steps),
                              "--width", str(args.width)], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\nMLP 64-{args.width}-{args.width}-1 ({rows[0]['params']:,} params), teacher-student regression, "
          f"{args.steps} steps, batch 256\n")
    print("Step time is the optimizer step; for the zeroth-order chain it includes the closure's forward passes.\n")
    print("| chain | final loss | step time (median) | peak memory (process) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {CHAINS[r['name']][0]} | {r['final_loss']:.4g} | {r['step_ms']:.3f} ms | {r['peak_mb']:.0f} MB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
