"""Where a decode step of a compiled CPU artifact spends its time, kernel by kernel.

Usage::

    python bench/decode_profile.py OUT                  # OUT: an `llmc compile ... --target cpu` dir
    python bench/decode_profile.py OUT --past 188 --steps 20 --json /tmp/p.json

Prefills a ``--past``-token prompt, decodes a few warm-up tokens, then times ``--steps`` decode
calls with the TVM VM's instrument hook (called before and after every kernel and VM builtin).
Per kernel it reports ms per decode step, calls per step and the bytes of its arguments per
second (kernels only; whole buffers, so an in-place write into the KV cache over-counts; for a
GEMV it is the weight stream: compare with the host's read bandwidth, measured
here as ``torch.sum`` over a 512 MiB float32 tensor with the same thread count). The hook itself
costs a few microseconds per call, so the per-kernel sum exceeds the uninstrumented step, which is
also printed (median of ``--steps`` calls without the hook), with the minor page faults per step
(fresh memory the step touched: an allocated-per-step KV cache shows here).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, cpu_name, git

sys.path.insert(0, str(ROOT))


def host_read_gb_s(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(128 * 1024 * 1024)  # 512 MiB, touched
    a.sum()
    best = min(_timed(a.sum) for _ in range(5))
    return a.numel() * 4 / best / 1e9


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _nbytes(x: Any) -> int:
    try:
        n = 1
        for d in x.shape:
            n *= int(d)
        return n * (int(x.dtype.bits) * int(x.dtype.lanes) // 8)
    except (AttributeError, TypeError):
        return 0


def profile(artifact: Path, past: int, steps: int) -> dict[str, Any]:
    from llmc.runtime.tvm_runner import load

    lm = load(artifact)
    vocab = min(lm.vocab_size, 256)
    lm.prefill([(i * 7 + 3) % vocab for i in range(past)])
    for _ in range(5):
        lm.decode(5)
    import resource

    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    plain = [_timed(lambda: lm.decode(5)) for _ in range(steps)]
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / steps

    tot: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter[str] = collections.Counter()
    moved: dict[str, int] = collections.defaultdict(int)
    start = [0.0]

    def hook(func: Any, sym: str, before: bool, ret: Any, *args: Any) -> int:
        if before:
            start[0] = time.perf_counter()
        else:
            tot[sym] += time.perf_counter() - start[0]
            calls[sym] += 1
            moved[sym] += sum(_nbytes(a) for a in args)
        return 0

    lm.vm.set_instrument(hook)
    for _ in range(steps):
        lm.decode(5)
    not_kernels = set(lm.backend["functions"]) | set(lm.backend.get("layer_functions", {}))
    rows = []
    for sym, t in sorted(tot.items(), key=lambda kv: -kv[1]):
        kernel = not sym.startswith("vm.builtin.") and sym not in not_kernels
        rows.append(
            {
                "name": sym,
                "ms_per_step": round(1e3 * t / steps, 4),
                "calls_per_step": calls[sym] // steps,
                "arg_gb_per_s": round(moved[sym] / t / 1e9, 2) if kernel and t > 0 else None,
            }
        )
    return {
        "artifact": str(artifact),
        "past": past,
        "steps": steps,
        "decode_ms_uninstrumented_median": round(1e3 * statistics.median(plain), 3),
        "instrumented_sum_ms": round(1e3 * sum(tot.values()) / steps, 3),
        "minor_page_faults_per_step": round(faults, 1),
        "kernels": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--past", type=int, default=188, help="prompt tokens before the timed steps")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    res = profile(a.artifact, a.past, a.steps)
    res["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    res["command"] = "python bench/decode_profile.py " + " ".join(
        shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv)
    )
    res["host_read_gb_s"] = round(host_read_gb_s(a.threads), 1)
    res["machine"] = {"cpu": cpu_name(), "threads": a.threads}
    res["llmc_commit"] = git("rev-parse", "HEAD")
    print(
        f"decode step {res['decode_ms_uninstrumented_median']} ms (median, no hook); "
        f"instrumented sum {res['instrumented_sum_ms']} ms; host read {res['host_read_gb_s']} GB/s; "
        f"{res['minor_page_faults_per_step']} page faults per step"
    )
    for r in res["kernels"][: a.top]:
        bw = f"{r['arg_gb_per_s']:7.1f} GB/s" if r["arg_gb_per_s"] is not None else " " * 12
        print(f"{r['ms_per_step']:9.3f} ms {r['calls_per_step']:4d} calls {bw}  {r['name']}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
