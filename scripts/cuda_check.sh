#!/usr/bin/env bash
# Full CUDA build check, run by hand (`make cuda-check`); too heavy for CI.
#
# What it does, idempotently (a second run reuses the venv, the mirror and the build dir):
#   1. .venv-cuda: python3.11 venv with torch==2.14.1 (CUDA 13.0, matching nvcc) and the test
#      dependencies, installed under a constraint that pins torch, so nothing (torchzero
#      included) can swap it for another build;
#   2. mirrors the source tree (git's tracked + untracked-not-ignored files) into
#      build-cuda/tree and builds the extension there with TZFAST_CUDA=1 into the CMake build
#      dir build-cuda/cmake. The CUDA-enabled _C*.so therefore lands in
#      build-cuda/tree/tzfast/, never in ./tzfast/: the main .venv's CPU extension is never
#      touched, whether this script succeeds, fails or is interrupted;
#   3. imports it with .venv-cuda's torch, prints build_info() and requires CUDA enabled with
#      archs 80 and 90, and requires a CUDA kernel registered for every tzfast op that has one
#      (elementwise, perturbation, L-BFGS, Newton-Schulz);
#   4. runs the CPU test suite (python -m pytest -q tests) on that build;
#   5. when (and only when) a GPU is visible, runs each op on CUDA against the CPU kernel;
#   6. writes a one-line result to docs/cuda-check-last.txt.
#
# Environment: PYTHON (default python3.11), CUDA_HOME (default: /usr/local/cuda, else the
# toolkit of the nvcc on PATH), PYTEST_ARGS (extra pytest arguments), JOBS (parallel build
# jobs, default nproc).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3.11}"
TORCH_PIN="torch==2.14.1"
VENV="$ROOT/.venv-cuda"
OUT="$ROOT/build-cuda"
TREE="$OUT/tree"
BUILD="$OUT/cmake"
RESULT="$ROOT/docs/cuda-check-last.txt"
ARCHS="80;90"   # cmake/cuda.cmake's default TZFAST_CUDA_ARCHS; build_info() must report both

log() { printf '\n=== cuda-check: %s\n' "$*"; }
die() { printf '\ncuda-check: FAILED: %s\n' "$*" >&2; exit 1; }

# --- CUDA toolkit ---------------------------------------------------------------------------
if [[ -z "${CUDA_HOME:-}" ]]; then
  if [[ -x /usr/local/cuda/bin/nvcc ]]; then
    CUDA_HOME=/usr/local/cuda
  elif command -v nvcc >/dev/null; then
    # nvcc on PATH may be a wrapper script; the real one reports its toolkit as TOP.
    top="$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n1)"
    [[ -n "$top" ]] && CUDA_HOME="$(cd "$top" && pwd)"
  fi
fi
[[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]] ||
  die "no CUDA toolkit found (set CUDA_HOME to the directory holding bin/nvcc)"
export CUDA_HOME CUDA_PATH="$CUDA_HOME" CUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME"
export PATH="$CUDA_HOME/bin:$PATH"
NVCC_VERSION="$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\), V\([0-9.]*\).*/\2/p')"
log "CUDA toolkit $CUDA_HOME (nvcc $NVCC_VERSION)"

# --- 1. the venv ----------------------------------------------------------------------------
CONSTRAINTS="$OUT/constraints.txt"
mkdir -p "$OUT"
echo "$TORCH_PIN" > "$CONSTRAINTS"
PY="$VENV/bin/python"
if [[ ! -x "$PY" ]]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
have_torch="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [[ "$have_torch" != 2.14.1* ]]; then
  log "installing $TORCH_PIN into .venv-cuda (from the local wheel store; a few minutes)"
  "$PY" -m pip install -q -c "$CONSTRAINTS" "$TORCH_PIN"
fi
if ! "$PY" -c 'import cmake, ninja, pybind11, setuptools, wheel, numpy, pytest, scipy, torchzero' 2>/dev/null; then
  log "installing build and test dependencies"
  "$PY" -m pip install -q -c "$CONSTRAINTS" cmake ninja pybind11 setuptools wheel numpy pytest \
    scipy torchzero==0.4.4
fi
read -r TORCH_VERSION TORCH_CUDA < <("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')
[[ "$TORCH_VERSION" == 2.14.1* && "$TORCH_CUDA" != None ]] ||
  die ".venv-cuda has torch $TORCH_VERSION (CUDA $TORCH_CUDA); expected 2.14.1 with CUDA"
log "torch $TORCH_VERSION (CUDA $TORCH_CUDA) in $VENV"
export PATH="$VENV/bin:$PATH"   # its cmake and ninja

# --- 2. mirror the tree and build -----------------------------------------------------------
log "mirroring sources into ${TREE#"$ROOT"/}"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard > "$OUT/sources.lst"
"$PY" - "$ROOT" "$TREE" "$OUT/sources.lst" <<'PY'
# Copies changed files (content compared by size and mtime, mtimes kept so CMake and ninja
# rebuild only what changed) and deletes mirrored files that left the source list.
import os, shutil, sys
root, tree, listing = sys.argv[1], sys.argv[2], sys.argv[3]
with open(listing, "rb") as fh:
    files = [f for f in fh.read().decode().split("\0") if f]
manifest = os.path.join(tree, ".cuda-check-manifest")
old = set()
if os.path.exists(manifest):
    with open(manifest) as fh:
        old = set(fh.read().split("\0")) - {""}
copied = 0
for rel in files:
    src, dst = os.path.join(root, rel), os.path.join(tree, rel)
    if not os.path.isfile(src) or os.path.islink(src):
        continue
    st = os.stat(src)
    try:
        dt = os.stat(dst)
        if dt.st_size == st.st_size and int(dt.st_mtime) == int(st.st_mtime):
            continue
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy2(src, dst)
    copied += 1
removed = 0
for rel in sorted(old - set(files)):
    path = os.path.join(tree, rel)
    if os.path.isfile(path):
        os.remove(path)
        removed += 1
os.makedirs(tree, exist_ok=True)
with open(manifest, "w") as fh:
    fh.write("\0".join(files))
print(f"{len(files)} files, {copied} copied, {removed} removed")
PY
# shared/ sits beside the checkout; give the mirror the same neighbour.
if [[ -d "$ROOT/../shared" && ! -e "$OUT/shared" ]]; then
  ln -s "$(cd "$ROOT/../shared" && pwd)" "$OUT/shared"
fi

log "building the CUDA extension (TZFAST_CUDA=1, sm {$ARCHS}) in ${BUILD#"$ROOT"/}"
# TORCH_CUDA_ARCH_LIST only keeps find_package(Torch) from guessing archs with no GPU to ask;
# cmake/cuda.cmake drops its flags and sets the kernels' archs itself.
export TZFAST_CUDA=1 TZFAST_BUILD_DIR="$BUILD" TORCH_CUDA_ARCH_LIST="8.0;9.0"
export CMAKE_BUILD_PARALLEL_LEVEL="${JOBS:-$(nproc)}"
# ${TORCH_LIBRARIES} of a CUDA torch names libnvrtc, which a toolkit without the runtime
# compiler libraries (like this machine's) lacks; a NOTFOUND entry there stops CMake's generate
# step. The torch wheel's own nvidia packages ship it (as libnvrtc.so.N only), so offer
# find_library an unversioned link to that copy.
if ! compgen -G "$CUDA_HOME/lib*/libnvrtc.so" >/dev/null; then
  NVRTC="$("$PY" -c 'import glob, os, torch
sp = os.path.dirname(os.path.dirname(torch.__file__))
hits = sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib", "libnvrtc.so.[0-9]*")))
print(hits[0] if hits else "")')"
  if [[ -n "$NVRTC" ]]; then
    mkdir -p "$OUT/libs"
    ln -sfn "$NVRTC" "$OUT/libs/libnvrtc.so"
    export CMAKE_LIBRARY_PATH="$OUT/libs${CMAKE_LIBRARY_PATH:+:$CMAKE_LIBRARY_PATH}"
  fi
fi
# A configure that once ran without that link cached CUDA_NVRTC_LIB as NOTFOUND; start over.
if grep -qs '^CUDA_NVRTC_LIB:FILEPATH=.*NOTFOUND' "$BUILD/CMakeCache.txt"; then
  rm -f "$BUILD/CMakeCache.txt"
fi
(cd "$TREE" && "$PY" setup.py -q build_ext --inplace) || die "the CUDA build failed"
SO="$(ls "$TREE"/tzfast/_C*.so 2>/dev/null | head -n1)"
[[ -n "$SO" ]] || die "no tzfast/_C*.so in the mirror after the build"
log "built ${SO#"$ROOT"/}"

# --- 3. import, build_info, registrations ---------------------------------------------------
log "import, build_info() and CUDA registrations"
(cd "$TREE" && "$PY" - <<'PY') || die "import / build_info / registration check failed"
import torch
import tzfast._C as C

ops = ["adam_", "ema_", "nag_", "ema_sq_", "unary_", "weight_decay_", "accumulate_directions_",
       "lbfgs_pair_", "lbfgs_direction_", "newton_schulz", "newton_schulz_"]
info = C.build_info()
print("build_info():", info)
info = dict(info) if not isinstance(info, dict) else info
enabled = info.get("cuda_enabled", info.get("cuda"))
archs = info.get("cuda_archs", info.get("archs"))
archs_text = ",".join(str(a) for a in archs) if isinstance(archs, (list, tuple)) else str(archs)
found = [a for a in archs_text.replace(";", ",").replace(" ", "").split(",") if a]
assert enabled is True, f"build_info() does not say cuda_enabled True: {info}"
assert "80" in found and "90" in found, f"build_info() archs {archs!r} lack 80 and 90"
missing = [op for op in ops
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"tzfast::{op}", "CUDA")]
assert not missing, f"no CUDA kernel registered for: {missing}"
dump = torch._C._dispatch_dump("tzfast::adam_")
print("\n".join(line for line in dump.splitlines() if line.startswith(("name:", "schema:", "CPU", "CUDA"))))
print(f"CUDA kernels registered for all {len(ops)} ops: {', '.join(ops)}")
PY

# --- 4. the CPU test suite on this build ----------------------------------------------------
log "CPU test suite on the CUDA-enabled build"
PYTEST_LOG="$OUT/pytest.log"
set +e
(cd "$TREE" && "$PY" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} tests) 2>&1 | tee "$PYTEST_LOG"
PYTEST_RC=${PIPESTATUS[0]}
set -e
PYTEST_SUMMARY="$(grep -E '^[= ]*[0-9]+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed)' "$PYTEST_LOG" | tail -n1 | sed 's/=//g; s/ in [0-9.]*s.*$//; s/^ *//; s/ *$//')"
[[ $PYTEST_RC -eq 0 ]] || die "pytest exited $PYTEST_RC: $PYTEST_SUMMARY"

# --- 5. kernels on a GPU, when there is one -------------------------------------------------
log "GPU run"
GPU_RESULT="$(cd "$TREE" && "$PY" - <<'PY'
import torch
if not torch.cuda.is_available():
    print("kernels not run: no GPU visible")
    raise SystemExit(0)
import tzfast._C  # noqa: F401  (registers the ops)

ops = torch.ops.tzfast
torch.manual_seed(0)
shapes = [(3, 5), (7,), (), (0,), (2, 3, 4), (1000,)]
worst = {}

def pair(dtype):
    xs = [torch.randn(s, dtype=dtype) for s in shapes]
    return xs, [x.cuda() for x in xs]

def flat(dtype, n, positive=False):
    v = torch.rand(n, dtype=dtype) if positive else torch.randn(n, dtype=dtype)
    return v, v.cuda()

def compare(name, cpu, gpu, dtype):
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    for a, b in zip(cpu, gpu):
        d = (a.double() - b.cpu().double()).abs().max().item() if a.numel() else 0.0
        worst[name] = max(worst.get(name, 0.0), d)
        assert d <= tol * (1 + a.double().abs().max().item() if a.numel() else 1), (name, dtype, d)

for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    for accumulate in (False, True):
        n = sum(torch.Size(s).numel() for s in shapes)
        xs, xg = pair(dtype)
        # adam_ (with and without amsgrad, pow 2 and 3)
        for ams in (False, True):
            for p in (2.0, 3.0):
                m, mg = flat(dtype, n); v, vg = flat(dtype, n, True); vm, vmg = flat(dtype, n, True)
                oc, og = pair(dtype)
                ops.adam_(xs, m, v, vm if ams else None, oc, 0.9, 0.999, 1e-8, 0.1, p, -1.0, accumulate)
                ops.adam_(xg, mg, vg, vmg if ams else None, og, 0.9, 0.999, 1e-8, 0.1, p, -1.0, accumulate)
                compare("adam_", oc + [m, v, vm], og + [mg, vg, vmg], dtype)
        for lerp in (False, True):
            for damp in (0.0, 0.5):
                m, mg = flat(dtype, n); oc, og = pair(dtype)
                ops.ema_(xs, m, oc, 0.9, damp, lerp, 2.0, accumulate)
                ops.ema_(xg, mg, og, 0.9, damp, lerp, 2.0, accumulate)
                compare("ema_", oc + [m], og + [mg], dtype)
                m, mg = flat(dtype, n); oc, og = pair(dtype)
                ops.nag_(xs, m, oc, 0.9, damp, lerp, 2.0, accumulate)
                ops.nag_(xg, mg, og, 0.9, damp, lerp, 2.0, accumulate)
                compare("nag_", oc + [m], og + [mg], dtype)
        for p in (2.0, 1.0, 3.0):
            for root in (False, True):
                v, vg = flat(dtype, n, True); vm, vmg = flat(dtype, n, True); oc, og = pair(dtype)
                ops.ema_sq_(xs, v, vm, oc, 0.99, p, root, 1.0, accumulate)
                ops.ema_sq_(xg, vg, vmg, og, 0.99, p, root, 1.0, accumulate)
                compare("ema_sq_", oc + [v, vm], og + [vg, vmg], dtype)
        for code in range(5):
            src = [x.abs() for x in xs] if code == 3 else xs
            oc, og = pair(dtype)
            ops.unary_(src, oc, code, -0.5, 0.5, 1.0, accumulate)
            ops.unary_([s.cuda() for s in src], og, code, -0.5, 0.5, 1.0, accumulate)
            compare("unary_", oc, og, dtype)
        for ord_ in (1, 2, 3):
            ps, pg = pair(dtype); oc, og = pair(dtype)
            ops.weight_decay_(xs, ps, oc, 0.01, ord_, 1.0, accumulate)
            ops.weight_decay_(xg, pg, og, 0.01, ord_, 1.0, accumulate)
            compare("weight_decay_", oc, og, dtype)
        # non-contiguous in and out
        big = torch.randn(8, 6, dtype=dtype); t = big.t()
        m, mg = flat(dtype, t.numel()); oc = torch.zeros(8, 6, dtype=dtype).t(); og = oc.cuda()
        ops.ema_([t], m, [oc], 0.9, 0.0, False, 1.0, accumulate)
        ops.ema_([t.cuda()], mg, [og], 0.9, 0.0, False, 1.0, accumulate)
        compare("ema_ (non-contiguous)", [oc, m], [og, mg], dtype)
        # accumulate_directions_: the same bits on both devices (shared header math, no FMA)
        for dist in range(4):
            oc, og = pair(dtype)
            offs = [0, 15, 22, 3, 5000, 2**34 - 2]
            args = (offs, -123456789, [0, 1, 7], [1.0, -0.5, 0.25], dist, 0.1, accumulate)
            ops.accumulate_directions_(oc, *args)
            ops.accumulate_directions_(og, *args)
            nc = torch.zeros(8, 6, dtype=dtype).t(); ngc = nc.cuda()
            ops.accumulate_directions_([nc], [7], *args[1:])
            ops.accumulate_directions_([ngc], [7], *args[1:])
            for a, b in zip(oc + [nc], og + [ngc]):
                assert torch.equal(a, b.cpu()), ("accumulate_directions_", dtype, dist, accumulate)
            worst["accumulate_directions_"] = 0.0
torch.cuda.synchronize()
name = torch.cuda.get_device_name()
print(f"kernels run on {name}: every op matches the CPU kernel "
      f"(max abs diff {max(worst.values()):.3g})")
PY
)" || die "GPU parity run failed: $GPU_RESULT"
echo "$GPU_RESULT"

# --- 6. the result line ---------------------------------------------------------------------
ARCHS_CSV="${ARCHS//;/,}"
LINE="$(date -u +%Y-%m-%dT%H:%MZ) PASS: torch $TORCH_VERSION (CUDA $TORCH_CUDA), nvcc $NVCC_VERSION, sm $ARCHS_CSV; built, imported, CUDA kernels registered for all 6 elementwise ops, accumulate_directions_, lbfgs_pair_, lbfgs_direction_, newton_schulz and newton_schulz_; CPU tests on that build: $PYTEST_SUMMARY; $GPU_RESULT"
echo "$LINE" > "$RESULT"
log "result (also in ${RESULT#"$ROOT"/})"
echo "$LINE"
