#!/usr/bin/env bash
# Build .gpu/ (git-ignored), the files bench/gpu_check.sh needs on a lent GPU machine with no
# internet: the llama2-7b CUDA artifacts cross-compiled for sm_90 (fp16, W4A16 and fp16 with the
# tensor-core prefill GEMM; no weights:
# the check draws them on the GPU), the apache-tvm-ffi wheel for the device's Python 3.12, and the
# tvm package without its compiler. Refuses (exit 1, .gpu/ untouched) when the folder plus the
# repository would exceed the device tool's 64 MiB. See docs/backends.md, "GPU check".
#
#   tools/prepare_gpu_check.sh            # PY=python to use another interpreter
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
GPU=${GPU_DIR:-$ROOT/.gpu}
TMP="$GPU.tmp.$$"
trap 'rm -rf "$TMP"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

mkdir -p "$TMP/wheels" "$TMP/artifacts"
# the three `llmc compile`s in one process: the compiler's imports (~5 s of CPU) once, not thrice
"$PY" - "$TMP/artifacts" >/dev/null <<'EOF'
import os, sys
from llmc.cli import main
out = sys.argv[1]
for name, extra in (("f16", []), ("w4a16", ["--passes", "rtn:bits=4:group=128"]), ("f16-tc", [])):
    if name == "f16-tc":
        os.environ["LLMC_CUDA_TENSOR_CORES"] = "1"  # read at lowering
    rc = main(["compile", "llama2-7b", "--target", "h100", *extra, "-o", f"{out}/llama2-7b-{name}"])
    if rc:
        sys.exit(rc)
EOF
FFI=$("$PY" -c 'import importlib.metadata as m; print(m.version("apache-tvm-ffi"))')
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$TMP/wheels" "apache-tvm-ffi==$FFI"
"$PY" bench/gpu_support.py pack-tvm "$TMP/tvm-runtime.tar.gz" >/dev/null
"$PY" bench/gpu_support.py finish "$TMP"
rm -rf "$GPU"
mv "$TMP" "$GPU"
echo "prepared $GPU"
