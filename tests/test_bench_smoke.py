"""Smoke test of the benchmark harness: ``python -m bench.run --quick`` runs end to end.

It checks the harness works (reports written, correctness checks pass), never a speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _tzfast_core_importable() -> bool:
    try:
        import tzfast

        tzfast.m.Adam  # noqa: B018 - the attribute access is the check
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench_quick")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, out


def _b1_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for run in data["runs"]:
        for case in run["benchmarks"]["B1"]["cases"]:
            rows += [dict(r, threads=run["threads"]) for r in case["rows"]]
    return rows


def test_quick_run_writes_markdown_json_and_passes_checks(quick_run: tuple[Any, Path]) -> None:
    proc, out = quick_run
    assert proc.returncode == 0, f"bench.run --quick failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    assert (out / "report.md").is_file()
    assert (out / "B1.md").is_file()
    assert "B1 elementwise step" in (out / "report.md").read_text()

    data = json.loads((out / "results.json").read_text())
    for key in ("schema", "quick", "threads", "runs", "checks_passed", "check_failures", "errors", "ok"):
        assert key in data, key
    assert data["quick"] is True
    assert data["checks_passed"] is True and data["check_failures"] == []
    assert data["errors"] == [] and data["ok"] is True
    assert sorted(run["threads"] for run in data["runs"]) == [1, 2]

    for run in data["runs"]:
        machine = run["machine"]
        assert machine["cpu"]["model"]
        assert machine["torch"] and machine["torch_num_threads"] == run["threads"]
        assert machine["OMP_PROC_BIND"] == "true"
        assert machine["axpy"]["gbps_med"] > 0 and machine["axpy"]["bytes_per_element"] == 12
        b1 = run["benchmarks"]["B1"]
        assert b1["check"]["rtol"] <= 1e-5
        assert {"Adam+LR", "HeavyBall+LR"} <= {c["chain"] for c in b1["cases"]}
        assert {c["shape"] for c in b1["cases"]} == {"a", "b"}
        for case in b1["cases"]:
            ref = [r for r in case["rows"] if r["role"] == "ref"]
            assert len(ref) == 1 and ref[0]["kind"] == "axpy" and ref[0]["gbps_med"] > 0
            assert case["axpy"]["gbps_med"] == ref[0]["gbps_med"]

    rows = _b1_rows(data)
    peers = [r for r in rows if r["role"] == "peer"]
    assert peers and all(r["status"] == "ok" for r in peers), [r for r in peers if r["status"] != "ok"]
    for r in peers:
        assert r["check"]["passed"] is True
        assert r["reps"] >= 1 and r["t_min_us"] > 0 and r["t_med_us"] >= r["t_min_us"]
        assert r["gbps_med"] > 0 and r["frac_axpy_med"] > 0
    kinds = {(r["chain"], r["kind"]) for r in peers}
    for kind in ("torchzero", "foreach", "fused"):
        assert ("Adam+LR", kind) in kinds
        assert ("HeavyBall+LR", kind) in kinds

    if data["plot_note"] == "":
        assert data["plots"], "matplotlib is importable but no plot was written"
        for name in data["plots"]:
            assert (out / name).is_file()


def test_quick_run_reports_checked_tzfast_rows(quick_run: tuple[Any, Path]) -> None:
    if not _tzfast_core_importable():
        pytest.skip("tzfast core not yet importable")
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = _b1_rows(json.loads((out / "results.json").read_text()))
    tz_rows = [r for r in rows if r["role"] == "tzfast"]
    assert tz_rows
    by_chain = {(r["chain"], r["shape"], r["threads"]): r for r in tz_rows}
    for chain in ("Adam+LR", "HeavyBall+LR"):
        for shape in ("a", "b"):
            for threads in (1, 2):
                r = by_chain[(chain, shape, threads)]
                assert r["status"] == "ok", r
                assert r["check"]["passed"] is True and r["check"]["against"] == "torchzero"
                assert r["t_med_us"] > 0
    for r in rows:
        if r["role"] == "peer" and r["status"] == "ok":
            assert r["check"]["against"] == "tzfast"
            assert r["speedup_med"] is not None and r["speedup_med"] > 0
