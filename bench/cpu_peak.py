"""This host's peak vector throughput: f32 FMA and int8 ``vpdpbusd``, measured.

Usage::

    python bench/cpu_peak.py                 # writes bench/cpu_peak.json
    python bench/cpu_peak.py --record        # also stores the peak in llmc's host-spec record

A C microbenchmark (compiled here with ``cc -O2 -mavx512f -mavx512vnni -mfma -fopenmp``): 12
independent accumulator chains of ``vfmadd231ps`` (zmm and ymm) or ``vpdpbusd`` (zmm) per
thread, on 1..N threads; each figure is the best of ``--repeats`` runs. Two clocks: wall time,
and process CPU time (``CLOCK_PROCESS_CPUTIME_ID``, scaled by the threads), which leaves out the
time the threads were descheduled: on a machine shared by other users only the CPU-time rate
measures the core. ``--record`` writes the CPU-time per-core rates into the record
``llmc.targets.host`` reads (``$LLMC_CACHE_DIR/host-spec-*.json``, key ``peak``), so the ``cpu``
target's roofline uses the measured peak instead of cpuinfo-clock x FLOP/cycle.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import ROOT, cpu_name, git, load_average

SRC = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <omp.h>
static int cputime;
static double now(void) {
  struct timespec t;
  clock_gettime(cputime ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
#define N 12
__attribute__((noinline)) float fma512(long iters) {
  __m512 a[N], b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
  for (int i = 0; i < N; i++) a[i] = _mm512_set1_ps((float)i);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
    for (int i = 0; i < N; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
  }
  __m512 s = a[0];
  for (int i = 1; i < N; i++) s = _mm512_add_ps(s, a[i]);
  return _mm512_reduce_add_ps(s);
}
__attribute__((noinline)) float fma256(long iters) {
  __m256 a[N], b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-7f);
  for (int i = 0; i < N; i++) a[i] = _mm256_set1_ps((float)i);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
    for (int i = 0; i < N; i++) a[i] = _mm256_fmadd_ps(a[i], b, c);
  }
  __m256 s = a[0];
  for (int i = 1; i < N; i++) s = _mm256_add_ps(s, a[i]);
  float o[8];
  _mm256_storeu_ps(o, s);
  return o[0];
}
__attribute__((noinline)) float dp512(long iters) {
  __m512i a[N], b = _mm512_set1_epi8(1), c = _mm512_set1_epi8(2);
  for (int i = 0; i < N; i++) a[i] = _mm512_set1_epi32(i);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
    for (int i = 0; i < N; i++) a[i] = _mm512_dpbusd_epi32(a[i], b, c);
  }
  __m512i s = a[0];
  for (int i = 1; i < N; i++) s = _mm512_add_epi32(s, a[i]);
  return (float)_mm512_reduce_add_epi32(s);
}
#ifdef __AVX512BF16__
/* vdpbf16ps: 16 lanes x 2 bf16 multiply-adds into f32 */
__attribute__((noinline)) float bf16dp512(long iters) {
  __m512 a[N];
  __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3380);
  for (int i = 0; i < N; i++) a[i] = _mm512_set1_ps((float)i);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
    for (int i = 0; i < N; i++) a[i] = _mm512_dpbf16_ps(a[i], b, c);
  }
  __m512 s = a[0];
  for (int i = 1; i < N; i++) s = _mm512_add_ps(s, a[i]);
  return _mm512_reduce_add_ps(s);
}
#endif
#ifdef __AMX_INT8__
/* AMX: 4 independent 16x16 accumulator tiles (tmm0-3) fed by 16x64-byte tiles (tmm4-7) */
typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} tilecfg;
static void tiles(void) {
  tilecfg c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int i = 0; i < 8; i++) { c.colsb[i] = 64; c.rows[i] = 16; }
  _tile_loadconfig(&c);
}
static int8_t tbuf[16 * 64] __attribute__((aligned(64)));
__attribute__((noinline)) float amx_i8(long iters) {
  int32_t out[16 * 16] __attribute__((aligned(64)));
  tiles();
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  _tile_loadd(4, tbuf, 64); _tile_loadd(5, tbuf, 64);
  _tile_loadd(6, tbuf, 64); _tile_loadd(7, tbuf, 64);
  for (long it = 0; it < iters; it++) {
    _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  _tile_release();
  return (float)out[0];
}
__attribute__((noinline)) float amx_bf16(long iters) {
  float out[16 * 16] __attribute__((aligned(64)));
  tiles();
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  _tile_loadd(4, tbuf, 64); _tile_loadd(5, tbuf, 64);
  _tile_loadd(6, tbuf, 64); _tile_loadd(7, tbuf, 64);
  for (long it = 0; it < iters; it++) {
    _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  _tile_release();
  return out[0];
}
#endif
typedef float (*kern)(long);
int main(int argc, char **argv) {
  long iters = atol(argv[1]);
  int reps = atoi(argv[2]), maxth = atoi(argv[3]);
  const char *names[7];
  kern fns[7];
  double per_iter[7], scale[7];
  int nk = 0;
#define ADD(nm, f, ops, sc) names[nk] = nm, fns[nk] = f, per_iter[nk] = ops, scale[nk++] = sc
  ADD("f32_fma_zmm", fma512, N * 16 * 2.0, 1);
  ADD("f32_fma_ymm", fma256, N * 8 * 2.0, 1);
  ADD("i8_vpdpbusd_zmm", dp512, N * 64 * 2.0, 1);
#ifdef __AVX512BF16__
  ADD("bf16_vdpbf16ps_zmm", bf16dp512, N * 32 * 2.0, 1);
#endif
#ifdef __AMX_INT8__
  /* the kernel asks Linux for the AMX tile state first (arch_prctl ARCH_REQ_XCOMP_PERM,
     XFEATURE_XTILEDATA = 18); without it the first tile instruction faults */
  if (syscall(SYS_arch_prctl, 0x1023, 18) == 0) {
    for (int i = 0; i < 16 * 64; i++) tbuf[i] = (int8_t)(i & 7);
    /* one tile op: 16 x 16 outputs x 64 int8 (32 bf16) multiply-adds; fewer trips (16x slower) */
    ADD("i8_amx_tdpbusd", amx_i8, 4 * 16 * 16 * 64 * 2.0, 1.0 / 8);
    ADD("bf16_amx_tdpbf16ps", amx_bf16, 4 * 16 * 16 * 32 * 2.0, 1.0 / 8);
  } else {
    printf("{\"kernel\": \"amx\", \"error\": \"arch_prctl(ARCH_REQ_XCOMP_PERM) refused\"}\n");
  }
#endif
  for (cputime = 0; cputime < 2; cputime++)
    for (int k = 0; k < nk; k++)
      for (int th = 1; th <= maxth; th++) {
        long n = (long)(iters * scale[k]);
        double best = 1e30;
        volatile double sink = 0;
        for (int r = 0; r < reps; r++) {
          double t0 = now();
#pragma omp parallel num_threads(th) reduction(+ : sink)
          { sink += fns[k](n); }
          double t = now() - t0;
          if (t < best) best = t;
        }
        double ops = per_iter[k] * n * th / best * (cputime ? th : 1);
        printf("{\"kernel\": \"%s\", \"clock\": \"%s\", \"threads\": %d, \"ops_per_s\": %.4g}\n",
               names[k], cputime ? "cpu" : "wall", th, ops);
      }
  return 0;
}
"""


PROBE_SRC = r"""
/* the same-moment probe (bench/cpu_prefill_gemm.py --probe): kind 0 = f32 FMA zmm, 1 = vpdpbusd
   zmm, 2 = AMX tdpbusd tiles (built with AMX; the process must hold the tile state: returns -1
   otherwise), on `threads` OpenMP threads; the rate per thread's CPU second, times the threads
   (the units of the stored peak: a per-core CPU-time rate x threads) */
double probe(int kind, long iters, int threads) {
  double ops = 0, cpu = 0;
#ifndef __AMX_INT8__
  if (kind == 2) return -1;
#endif
#pragma omp parallel num_threads(threads) reduction(+ : ops, cpu)
  {
    struct timespec a, b;
    volatile float r = 0;
    double per = 0;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    if (kind == 0) r = fma512(iters), per = N * 16 * 2.0 * iters;
    if (kind == 1) r = dp512(iters), per = N * 64 * 2.0 * iters;
#ifdef __AMX_INT8__
    /* one trip: 4 tile products of 16 x 16 x 64; 1/8 of the trips (cpu_peak's main) */
    if (kind == 2) r = amx_i8(iters / 8), per = 4 * 16 * 16 * 64 * 2.0 * (iters / 8);
#endif
    (void)r;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    ops += per;
    cpu += (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
  }
  return ops / cpu * threads;
}
"""


def build_probe(tmp: Path):
    """The probe of :data:`PROBE_SRC` (with the peak kernels of :data:`SRC`, AMX where the CPU
    has it) as a ``ctypes`` library built in ``tmp``; ``probe(kind, iters, threads)`` returns ops
    per second (-1: no such kernel in this build)."""
    import ctypes

    c, so = tmp / "probe.c", tmp / "probe.so"
    c.write_text(SRC.replace("int main(", "int peak_main(") + PROBE_SRC)
    flags = [*cc_flags(cpu_flags()), "-shared", "-fPIC"]
    subprocess.run(["cc", *flags, str(c), "-o", str(so)], check=True, capture_output=True)
    lib = ctypes.CDLL(str(so))
    lib.probe.restype = ctypes.c_double
    lib.probe.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_int]
    return lib


def cpu_flags() -> set[str]:
    """The flags of /proc/cpuinfo (empty when unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cc_flags(flags: set[str]) -> list[str]:
    """The compiler flags: AVX-512 + VNNI always (the probe's baseline), ``avx512_bf16`` and AMX
    (int8, bf16) where the CPU has them."""
    out = ["-O2", "-mavx512f", "-mavx512vnni", "-mfma", "-fopenmp"]
    if "avx512_bf16" in flags:
        out.append("-mavx512bf16")
    if {"amx_tile", "amx_int8", "amx_bf16"} <= flags:
        out += ["-mamx-tile", "-mamx-int8", "-mamx-bf16"]
    return out


def table_row(res: dict[str, Any], flags: set[str]) -> dict[str, Any]:
    """This run's row of ``llmc/targets/data/cpu_peaks.json`` (``llmc.targets.host``'s key)."""
    from llmc.targets.host import peak_key

    pk = res["peak"]
    row = {
        **peak_key(res["machine"]["cpu"], flags, res["machine"]["cores"]),
        "f32_per_core": pk["f32_per_core"],
        "i8_per_core": pk["i8_per_core"],
        "bf16_per_core": pk.get("bf16_per_core"),
        "amx": pk["amx"],
        "measured": res["date"],
        "command": res["command"],
        "load_average": res["load_average"],
        "commit": res["llmc_commit"],
        "clock": pk["clock"],
    }
    return row


def write_table(row: dict[str, Any], path: Path) -> None:
    """Put ``row`` in the table at ``path``, replacing the row of the same key."""
    doc = json.loads(path.read_text()) if path.exists() else {"peaks": []}
    key = ("cpu", "isa", "cores")
    doc["peaks"] = [r for r in doc["peaks"] if any(r.get(k) != row[k] for k in key)] + [row]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--iters", type=int, default=20_000_000, help="loop trips per run")
    ap.add_argument("--record", action="store_true", help="store the peak in the host record")
    ap.add_argument(
        "--table",
        action="store_true",
        help="write this CPU's row into llmc/targets/data/cpu_peaks.json (commit it)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "cpu_peak.json"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    flags = cpu_flags()
    with tempfile.TemporaryDirectory() as tmp:
        c, exe = Path(tmp) / "peak.c", Path(tmp) / "peak"
        c.write_text(SRC)
        ccf = cc_flags(flags)
        r = subprocess.run(["cc", *ccf, str(c), "-o", str(exe)], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"bench/cpu_peak.py: cc failed: {r.stderr.strip()[:300]}", file=sys.stderr)
            return 1
        before = load_average()
        cmd = [str(exe), str(args.iters), str(args.repeats), str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        after = load_average()
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    errors = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    th = args.threads

    def per_core(kernel: str) -> float | None:
        """The best CPU-time rate over the thread counts, divided by the threads."""
        got = [
            r["ops_per_s"] / r["threads"]
            for r in rows
            if r["kernel"] == kernel and r["clock"] == "cpu"
        ]
        return max(got) if got else None

    f32 = per_core("f32_fma_zmm")
    i8 = per_core("i8_vpdpbusd_zmm")
    assert f32 is not None and i8 is not None
    if not {"amx_tile", "amx_int8"} <= flags:
        amx: dict[str, Any] | str = "not present (no amx_int8 in /proc/cpuinfo)"
    elif errors:
        amx = f"not probed ({errors[0]['error']})"
    else:
        amx = {
            "i8_per_core": per_core("i8_amx_tdpbusd"),
            "bf16_per_core": per_core("bf16_amx_tdpbf16ps"),
            "how": "4 independent tdpbusd / tdpbf16ps on 16x64-byte tiles",
        }
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    command = " ".join(["python bench/cpu_peak.py", *(sys.argv[1:] if argv is None else argv)])
    res = {
        "benchmark": "host peak: independent vfmadd231ps / vpdpbusd / vdpbf16ps chains and AMX "
        "tile products (C, OpenMP)",
        "command": command,
        "date": stamp,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "isa": sorted(
            flags
            & {
                "avx2",
                "fma",
                "avx512f",
                "avx512_vnni",
                "avx512_bf16",
                "amx_tile",
                "amx_int8",
                "amx_bf16",
            }
        ),
        "cc_flags": ccf,
        "llmc_commit": git("rev-parse", "HEAD").strip(),
        "load_average": {"before": before, "after": after},
        "settings": {"threads": th, "repeats": args.repeats, "iters": args.iters},
        "rows": rows,
        "peak": {
            "f32_per_core": f32,
            "i8_per_core": i8,
            "bf16_per_core": per_core("bf16_vdpbf16ps_zmm"),
            "amx": amx,
            "threads": th,
            "f32": f32 * th,
            "i8": i8 * th,
            "clock": "CPU time (descheduled time left out)",
        },
    }
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["peak"], indent=1))
    if args.table:
        from llmc.targets.host import PEAKS_FILE

        write_table(table_row(res, flags), PEAKS_FILE)
        print(f"row written to {PEAKS_FILE}")
    if args.record:
        from llmc.targets import get_target, resolve_spec
        from llmc.targets.host import record_path

        resolve_spec(get_target("cpu"))  # measures the bandwidth and writes the record if new
        path = record_path()
        if path is None or not path.exists():
            print(
                "bench/cpu_peak.py: no host-spec record to update (LLMC_CACHE_DIR?)",
                file=sys.stderr,
            )
            return 1
        rec = json.loads(path.read_text())
        rec["peak"] = {
            "f32_per_core": f32,
            "i8_per_core": i8,
            "amx": amx,
            "measured": stamp,
            "command": "bench/cpu_peak.py (CPU time, best of runs)",
        }
        path.write_text(json.dumps(rec, indent=2) + "\n")
        print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
