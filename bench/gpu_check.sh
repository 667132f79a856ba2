#!/usr/bin/env bash
# The GPU check, one command on a fresh Linux machine with one H100/H200-class GPU, this
# repository and its prepared folder .gpu/ (tools/prepare_gpu_check.sh, run where pip and nvcc
# work); no internet needed. It
#   1. installs the TVM runtime offline into a scratch folder (the apache-tvm-ffi wheel for the
#      machine's Python 3.12 and the compiler-less tvm package of .gpu/), using the machine's own
#      torch (with CUDA), transformers and pytest;
#   2. runs the tests marked gpu (tests/backends/test_gpu_artifacts.py: the artifacts against
#      transformers on the same random weights);
#   3. runs bench/gpu_check.py: copy bandwidth, then Llama-2-7B-shape decode for llmc fp16 and
#      W4A16 and transformers eager and torch.compile, and writes bench/gpu.json (also to $OUT
#      when that is set, as on the device tool).
# Extra arguments go to bench/gpu_check.py (e.g. --repeat 5). Exit status: non-zero when the
# set-up, a gpu test or a measurement failed. See docs/backends.md, "GPU check".
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-python3}
GPU=${GPU_DIR:-$ROOT/.gpu}
SITE=${LLMC_GPU_SITE:-/tmp/llmc-gpu-site}
RESULT=${RESULT:-$ROOT/bench/gpu.json}

die() { echo "gpu_check: error: $*" >&2; exit 1; }
[ -f "$GPU/prepared.json" ] || die "$GPU: not prepared; run tools/prepare_gpu_check.sh first"
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' ||
  die "$PY is Python $("$PY" -V 2>&1); the prepared wheels are for 3.12 (set PY=)"
"$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' ||
  die "torch in $PY sees no CUDA device"

t0=$(date +%s)
rm -rf "$SITE" && mkdir -p "$SITE" || die "cannot create $SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
  "$GPU"/wheels/*.whl || die "offline install of $GPU/wheels failed"
tar -xzf "$GPU/tvm-runtime.tar.gz" -C "$SITE" || die "cannot unpack $GPU/tvm-runtime.tar.gz"
export PYTHONPATH="$ROOT:$SITE" LLMC_TVM_RUNTIME_ONLY=1 LLMC_GPU_DIR="$GPU" PYTHONUNBUFFERED=1
echo "gpu_check: set up in $(($(date +%s) - t0)) s ($SITE)"

JUNIT="$SITE/pytest-gpu.xml"
"$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml "$JUNIT" tests/backends/test_gpu_artifacts.py
PYTEST_RC=$?
echo "gpu_check: pytest -m gpu exit $PYTEST_RC after $(($(date +%s) - t0)) s"

"$PY" bench/gpu_check.py --gpu-dir "$GPU" --out "$RESULT" --pytest-junit "$JUNIT" \
  --pytest-rc "$PYTEST_RC" "$@"
BENCH_RC=$?
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] && [ -f "$RESULT" ]; then
  cp "$RESULT" "$OUT/gpu.json"
  cp "$JUNIT" "$OUT/pytest-gpu.xml" 2>/dev/null || true
fi
echo "gpu_check: done in $(($(date +%s) - t0)) s (pytest exit $PYTEST_RC, bench exit $BENCH_RC)"
[ "$PYTEST_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
