"""Interleaved A/B of the bare decode VM call of two CPU artifacts, in one process.

Usage::

    python bench/decode_ab.py OLD NEW [NAME=ART ...] --rounds 9 --calls 40 --json bench/x.json

Each artifact is loaded with this checkout's runner (an artifact of an older backend ABI is
loaded anyway: the bare call passes what its manifest lists, so it runs as its own checkout would
call it), prefills ``--past`` tokens, then the rounds alternate: per round, ``--calls`` bare calls
of each artifact's decode function on its own cache (the same position every call), timed in
thread CPU time (``time.thread_time``) and wall time. With ``TVM_NUM_THREADS=1`` the thread CPU
time is the whole call's and the load of a shared machine hits both sides alike within a round.
Reported: per artifact the median over rounds of each round's median call, the per-round
difference to the first artifact, and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, bare_decode_call, finish, load_average, record

sys.path.insert(0, str(ROOT))


def _load(art: Path) -> Any:
    import llmc.runtime.tvm_runner as tr

    manifest = json.loads((art / "manifest.json").read_text())
    abi = manifest.get("backend", {}).get("abi")
    saved = tr.BACKEND_ABI
    tr.BACKEND_ABI = abi  # an older artifact: its manifest says what its entries take
    try:
        return tr.load(art)
    finally:
        tr.BACKEND_ABI = saved


def _bare_call(lm: Any, past: int) -> Any:
    prompt = [(i * 7 + 3) % min(lm.vocab_size, 256) for i in range(past)]
    lm.prefill(prompt)
    lm.decode(5)
    return bare_decode_call(lm, lm._rt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="+", help="ART or NAME=ART; the first is the baseline")
    ap.add_argument("--past", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args(argv)
    named = []
    for i, spec in enumerate(a.artifacts):
        name, _, path = spec.rpartition("=")
        named.append((name or f"art{i}", Path(path)))
    calls = {name: _bare_call(_load(path), a.past) for name, path in named}
    for fn in calls.values():  # warm-up
        for _ in range(5):
            fn()
    load_before = load_average()
    cpu: dict[str, list[float]] = {n: [] for n in calls}
    wall: dict[str, list[float]] = {n: [] for n in calls}
    for r in range(a.rounds):
        order = list(calls) if r % 2 == 0 else list(reversed(calls))
        for name in order:
            fn = calls[name]
            c, w = [], []
            for _ in range(a.calls):
                t0, w0 = time.thread_time(), time.perf_counter()
                fn()
                c.append(time.thread_time() - t0)
                w.append(time.perf_counter() - w0)
            cpu[name].append(1e3 * statistics.median(c))
            wall[name].append(1e3 * statistics.median(w))
    base = named[0][0]
    argv = sys.argv[1:] if argv is None else argv
    threads = os.environ.get("TVM_NUM_THREADS", "default")
    res: dict[str, Any] = {**record("decode_ab.py", argv, threads, load_before), "past": a.past}
    res["results"] = {}
    for name, path in named:
        diffs = [x - b for x, b in zip(cpu[name], cpu[base], strict=True)]
        res["results"][name] = {
            "artifact": str(path),
            "cpu_ms": round(statistics.median(cpu[name]), 4),
            "wall_ms": round(statistics.median(wall[name]), 4),
            "cpu_ms_rounds": [round(x, 4) for x in cpu[name]],
            "cpu_ms_minus_baseline_rounds": [round(x, 4) for x in diffs],
            "cpu_ms_minus_baseline_median": round(statistics.median(diffs), 4),
        }
        print(
            f"{name}: bare decode call CPU {res['results'][name]['cpu_ms']} ms "
            f"(wall {res['results'][name]['wall_ms']}), vs {base}: "
            f"{res['results'][name]['cpu_ms_minus_baseline_median']:+.4f} ms median of rounds"
        )
    return finish(res, a.json)


if __name__ == "__main__":
    raise SystemExit(main())
