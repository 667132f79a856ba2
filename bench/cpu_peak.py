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

from _common import ROOT, cpu_name, git, load_average

SRC = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
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
__attribute__((noinline)) int dp512(long iters) {
  __m512i a[N], b = _mm512_set1_epi8(1), c = _mm512_set1_epi8(2);
  for (int i = 0; i < N; i++) a[i] = _mm512_set1_epi32(i);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
    for (int i = 0; i < N; i++) a[i] = _mm512_dpbusd_epi32(a[i], b, c);
  }
  __m512i s = a[0];
  for (int i = 1; i < N; i++) s = _mm512_add_epi32(s, a[i]);
  return _mm512_reduce_add_epi32(s);
}
int main(int argc, char **argv) {
  long iters = atol(argv[1]);
  int reps = atoi(argv[2]), maxth = atoi(argv[3]);
  const char *names[3] = {"f32_fma_zmm", "f32_fma_ymm", "i8_vpdpbusd_zmm"};
  double per_iter[3] = {N * 16 * 2.0, N * 8 * 2.0, N * 64 * 2.0};
  for (cputime = 0; cputime < 2; cputime++)
    for (int k = 0; k < 3; k++)
      for (int th = 1; th <= maxth; th++) {
        double best = 1e30;
        volatile double sink = 0;
        for (int r = 0; r < reps; r++) {
          double t0 = now();
#pragma omp parallel num_threads(th) reduction(+ : sink)
          { sink += k == 0 ? fma512(iters) : k == 1 ? fma256(iters) : dp512(iters); }
          double t = now() - t0;
          if (t < best) best = t;
        }
        double ops = per_iter[k] * iters * th / best * (cputime ? th : 1);
        printf("{\"kernel\": \"%s\", \"clock\": \"%s\", \"threads\": %d, \"ops_per_s\": %.4g}\n",
               names[k], cputime ? "cpu" : "wall", th, ops);
      }
  return 0;
}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--iters", type=int, default=20_000_000, help="loop trips per run")
    ap.add_argument("--record", action="store_true", help="store the peak in the host record")
    ap.add_argument("--out", default=str(ROOT / "bench" / "cpu_peak.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        c, exe = Path(tmp) / "peak.c", Path(tmp) / "peak"
        c.write_text(SRC)
        flags = ["-O2", "-mavx512f", "-mavx512vnni", "-mfma", "-fopenmp"]
        r = subprocess.run(["cc", *flags, str(c), "-o", str(exe)], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"bench/cpu_peak.py: cc failed: {r.stderr.strip()[:300]}", file=sys.stderr)
            return 1
        before = load_average()
        cmd = [str(exe), str(args.iters), str(args.repeats), str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        after = load_average()
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]

    def rate(kernel: str, clock: str, th: int) -> float:
        return next(
            r["ops_per_s"]
            for r in rows
            if r["kernel"] == kernel and r["clock"] == clock and r["threads"] == th
        )

    th = args.threads
    # per core: the best CPU-time rate over the thread counts, divided by the threads
    f32 = max(rate("f32_fma_zmm", "cpu", t) / t for t in range(1, th + 1))
    i8 = max(rate("i8_vpdpbusd_zmm", "cpu", t) / t for t in range(1, th + 1))
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    command = " ".join(["python bench/cpu_peak.py", *(sys.argv[1:] if argv is None else argv)])
    res = {
        "benchmark": "host peak: independent vfmadd231ps / vpdpbusd chains (C, OpenMP)",
        "command": command,
        "date": stamp,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "llmc_commit": git("rev-parse", "HEAD").strip(),
        "load_average": {"before": before, "after": after},
        "settings": {"threads": th, "repeats": args.repeats, "iters": args.iters},
        "rows": rows,
        "peak": {
            "f32_per_core": f32,
            "i8_per_core": i8,
            "threads": th,
            "f32": f32 * th,
            "i8": i8 * th,
            "clock": "CPU time (descheduled time left out)",
        },
    }
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["peak"], indent=1))
    if args.record:
        sys.path.insert(0, str(ROOT))
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
            "measured": stamp,
            "command": "bench/cpu_peak.py (CPU time, best of runs)",
        }
        path.write_text(json.dumps(rec, indent=2) + "\n")
        print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
