#!/usr/bin/env bash
# Install the toolchain that cross-compiles llmc models for AMD GPUs on a machine without ROCm.
#
#   tools/setup_toolchain.sh            (run by `make toolchain`, `make demo`, `make test`)
#
# TVM's rocm target needs two things besides itself (see llmc/backends/toolchain.py):
#   * the ROCm device libraries (LLVM bitcode: ocml.bc, oclc_*.bc) under $ROCM_PATH/amdgcn/bitcode.
#     Debian's `rocm-device-libs` package installs them under /usr/lib/<multiarch>/amdgcn/bitcode;
#   * an `ld.lld` that links AMDGPU code-object v6 (TVM 0.27 uses LLVM 22). Debian 12's lld-16
#     refuses v6 ("unknown abi version"); the `ziglang` PyPI package carries LLD 22.
# and, to inspect what was built, an llvm-objdump that knows gfx942 (Debian's llvm-19).
# Result, in <repo>/.toolchain (git-ignored):
#   .toolchain/rocm/amdgcn/bitcode -> /usr/lib/x86_64-linux-gnu/amdgcn/bitcode
#   .toolchain/bin/ld.lld           wrapper: <venv python> -m ziglang ld.lld "$@"
#   .toolchain/bin/ld.lld-<major>   the same (TVM looks for ld.lld-<its LLVM major> first)
#
# Environment: PYTHON (default <repo>/.venv/bin/python), ZIGLANG_VERSION (default below).
# Idempotent: a second run does nothing but check. Without root or apt-get the Debian packages
# are skipped with a message (ROCm targets then report what is missing when used).
set -euo pipefail

ZIGLANG_VERSION="${ZIGLANG_VERSION:-0.17.1}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
TC="$ROOT/.toolchain"

log() { printf 'setup_toolchain: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

case "$PYTHON" in /*) ;; *) PYTHON="$(pwd)/$PYTHON" ;; esac
[ -x "$PYTHON" ] || die "no Python at $PYTHON (create the venv first: make venv)"

# ------------------------------------------------------------------ (a) ROCm device libraries
bitcode_dirs() {
    if [ -n "${ROCM_PATH:-}" ]; then echo "$ROCM_PATH/amdgcn/bitcode"; fi
    local ma
    ma="$(gcc -print-multiarch 2>/dev/null || true)"
    if [ -n "$ma" ]; then echo "/usr/lib/$ma/amdgcn/bitcode"; fi
    echo /usr/lib/x86_64-linux-gnu/amdgcn/bitcode
    echo /usr/lib/aarch64-linux-gnu/amdgcn/bitcode
    echo /opt/rocm/amdgcn/bitcode
}

find_bitcode() {
    local d
    while read -r d; do
        if [ -f "$d/ocml.bc" ]; then
            (cd "$d" && pwd -P)
            return 0
        fi
    done < <(bitcode_dirs)
    return 1
}

# llvm-objdump that knows gfx942 (LLVM >= 17) for disassembling code objects (tests, inspection);
# Debian 12's default llvm is 14, which knows gfx90a but not gfx942.
have_objdump() {
    local t v
    for t in $(compgen -c llvm-objdump | sort -u); do
        v="$("$t" --version 2>/dev/null | sed -n 's/.*LLVM version \([0-9][0-9]*\)\..*/\1/p' | head -n1)"
        if [ -n "$v" ] && [ "$v" -ge 17 ]; then return 0; fi
    done
    return 1
}

BITCODE="$(find_bitcode || true)"
APT_PACKAGES=()
[ -n "$BITCODE" ] || APT_PACKAGES+=(rocm-device-libs)
have_objdump || APT_PACKAGES+=(llvm-19)
if [ "${#APT_PACKAGES[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "SKIP ${APT_PACKAGES[*]}: missing and apt-get is unavailable; install the ROCm device"
        log "     libraries and set ROCM_PATH (rocm targets disabled until then)"
    elif [ "$(id -u)" != 0 ]; then
        log "SKIP ${APT_PACKAGES[*]}: missing and not root; run:"
        log "     sudo apt-get install ${APT_PACKAGES[*]}   (rocm targets disabled until then)"
    else
        log "installing Debian packages: ${APT_PACKAGES[*]} (apt-get update first)"
        export DEBIAN_FRONTEND=noninteractive
        apt_opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0 -q)
        apt-get "${apt_opts[@]}" update </dev/null >/dev/null ||
            die "apt-get update failed"
        apt-get "${apt_opts[@]}" install -y --no-install-recommends "${APT_PACKAGES[@]}" \
            </dev/null >/dev/null || die "apt-get install ${APT_PACKAGES[*]} failed"
        BITCODE="$(find_bitcode || true)"
        [ -n "$BITCODE" ] || die "rocm-device-libs installed but no amdgcn/bitcode/ocml.bc found"
    fi
fi

# ------------------------------------------------------------------ (b) LLD 22 from ziglang
have_zig="$("$PYTHON" - <<'EOF' 2>/dev/null || true
import importlib.metadata as m
try:
    print(m.version("ziglang"))
except m.PackageNotFoundError:
    pass
EOF
)"
if [ "$have_zig" != "$ZIGLANG_VERSION" ]; then
    log "installing ziglang==$ZIGLANG_VERSION (LLD for AMDGPU) into $(dirname "$(dirname "$PYTHON")")"
    "$PYTHON" -m pip install -q --disable-pip-version-check "ziglang==$ZIGLANG_VERSION" </dev/null ||
        die "pip install ziglang==$ZIGLANG_VERSION failed"
fi

# ------------------------------------------------------------------ (c) .toolchain/
mkdir -p "$TC/bin" "$TC/rocm/amdgcn"
if [ -n "$BITCODE" ]; then
    ln -sfn "$BITCODE" "$TC/rocm/amdgcn/bitcode"
else
    rm -f "$TC/rocm/amdgcn/bitcode"
fi

write_wrapper() { # write_wrapper PATH: replace only when the content changes (keeps it idempotent)
    local tmp="$1.tmp.$$"
    printf '#!/bin/sh\n# LLD from the ziglang package (llmc tools/setup_toolchain.sh)\nexec "%s" -m ziglang ld.lld "$@"\n' \
        "$PYTHON" >"$tmp"
    chmod 755 "$tmp"
    if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}
write_wrapper "$TC/bin/ld.lld"

version="$("$TC/bin/ld.lld" --version </dev/null 2>&1 || true)"
major="$(printf '%s\n' "$version" | sed -n 's/^LLD \([0-9][0-9]*\)\..*/\1/p' | head -n1)"
[ -n "$major" ] || die "$TC/bin/ld.lld does not run: $version"
[ "$major" -ge 19 ] || die "$TC/bin/ld.lld is LLD $major; AMDGPU code-object v6 needs LLD >= 19"
for f in "$TC"/bin/ld.lld-*; do # drop wrappers left by another ziglang version
    [ -e "$f" ] && [ "$f" != "$TC/bin/ld.lld-$major" ] && rm -f "$f"
done
write_wrapper "$TC/bin/ld.lld-$major"

if [ -n "$BITCODE" ]; then
    log "ok: ROCM_PATH=$TC/rocm (bitcode: $BITCODE), ld.lld: LLD $major (ziglang $ZIGLANG_VERSION)"
else
    log "partial: ld.lld: LLD $major (ziglang $ZIGLANG_VERSION); ROCm device libraries missing"
fi
