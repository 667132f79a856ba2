"""Interleaved A/B of the int4 VNNI decode kernels: another checkout's ``cpu_vnni.py`` (OLD)
against this one's (NEW), at the peers model's decode shapes (``bench/cpu_peers.py``: hidden 768,
FFN 2048, vocabulary 32000), int4 group 32, f16 scales, ``act_bits=8``.

Usage::

    TVM_NUM_THREADS=1 python bench/cpu_vnni_ab.py --old /work/main/llmc/backends/kernels/cpu_vnni.py
    python bench/cpu_vnni_ab.py --old OLD.py --rounds 15 -o bench/cpu_vnni_ab.json

Per shape (q/k/v grouped, o, gate/up grouped, down, the LM head): OLD is ``act_int8`` (TE) then
OLD's ``q4_vnni``; NEW is ``act_int8`` then NEW's ``q4_vnni`` (``new``) and, where
``cpu_vnni.fused_a8`` allows, NEW's ``q4_vnni`` quantizing the row itself (``new_fused``, one
call). Each round times every variant in turn (CPU time of the calling thread over enough calls
for ~2 ms; with ``TVM_NUM_THREADS=1`` that is all the work); the report gives medians over
rounds, whether the results equal OLD's bit for bit (fused: the largest difference relative to
the largest output), the machine, load average, command and commit. Weights stay in L2 for the
small shapes (the kernels' compute), the head's 13.8 MB does not (L3).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _common import ROOT, cpu_name, git, load_average

sys.path.insert(0, str(ROOT))

SHAPES = [
    (768, (768, 768, 768)),
    (768, (768,)),
    (768, (2048, 2048)),
    (2048, (768,)),
    (768, (32000,)),
]
SMOKE = [(256, (128, 128))]  # --smoke: one small grouped shape (checks the script runs)
G, AG, SDT = 32, 32, "float16"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location("cpu_vnni_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cpu_vnni_old"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="the OLD checkout's cpu_vnni.py")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("-o", "--out", type=Path)
    ap.add_argument("--smoke", action="store_true", help=f"only {SMOKE}: checks the script runs")
    a = ap.parse_args(argv)
    import tvm

    from llmc.backends.cpu.pipeline import host_cpu
    from llmc.backends.kernels import cpu_vnni as new

    old = _load(a.old)
    tgt = tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})
    load0, res = load_average(), {}
    for k, ns in SMOKE if a.smoke else SHAPES:
        row = _one_shape(k, ns, old, new, tgt, a.rounds)
        res[f"k{k}_n{'_'.join(map(str, ns))}"] = row
        line = "  ".join(f"{m} {v['us']:.1f} us" for m, v in row.items())
        print(
            f"K={k} N={ns}: {line}  (old/new {row['old']['us'] / row['new']['us']:.2f}x)",
            flush=True,
        )
    doc = {
        "machine": cpu_name(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "threads": os.environ.get("TVM_NUM_THREADS"),
        "load_average": [load0, load_average()],
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "old": str(a.old),
        "format": f"int4 group {G}, {SDT} scales, act_bits=8 (act_group {AG}), symmetric",
        "results": res,
    }
    if a.out:
        a.out.write_text(json.dumps(doc, indent=1) + "\n")


def _one_shape(k: int, ns: tuple[int, ...], old, new, tgt, rounds: int) -> dict:
    """Median CPU us per call of each variant at one shape, and their agreement with OLD."""
    import tvm
    from tvm import te

    rng = np.random.default_rng(k + sum(ns))

    def arr(x):
        return tvm.runtime.tensor(x, tvm.cpu())

    nd = ns if len(ns) > 1 else ns[0]
    kp, ab = new.padded_k(k, G), new.int8_block(k, G, AG)
    xt = te.placeholder((1, k), "float32", name="x")
    prep = tvm.compile(te.create_prim_func([xt, *new.act_int8(xt, kp, ab, AG, G)]), target=tgt)
    x = arr(rng.standard_normal((1, k)).astype("float32"))
    act = [arr(np.zeros((1, 1, kp), "int8")), arr(np.zeros((1, kp // ab, 1), "float32"))]
    act.append(arr(np.zeros((1, k // G), "float32")))
    w = []
    for n in ns:
        p = (n + 63) // 64
        w += [arr(rng.integers(0, 256, (p, kp // 8, 64, 4), dtype=np.uint8))]
        w += [arr((rng.random((p, k // G, 64)) * 0.01).astype(SDT))]
        w += [arr(np.full((1, 1, 64), 8.0, SDT))]
    outs = {m: [arr(np.zeros((1, n), "float32")) for n in ns] for m in ("old", "new", "new_fused")}

    def _once(r) -> float:
        c = time.thread_time()
        r()
        return time.thread_time() - c

    def unfused(mod, o):
        f = tvm.compile(mod.q4_vnni(k, nd, G, 1, SDT, 1, ab, True), target=tgt)
        return lambda: (prep(x, *act), f(*act, *w, *o))

    runs = {"old": unfused(old, outs["old"]), "new": unfused(new, outs["new"])}
    if new.fused_a8(k, G, AG, ab):
        fused = tvm.compile(new.q4_vnni(k, nd, G, 1, SDT, 1, ab, True, AG), target=tgt)
        runs["new_fused"] = lambda: fused(x, *w, *outs["new_fused"])
    for r in runs.values():
        r()
    ref = [o.numpy() for o in outs["old"]]
    # enough calls for ~2 ms of each variant per sample (the slowest call, best of 3, sets it)
    one = max(min(_once(r) for _ in range(3)) for r in runs.values())
    reps = max(1, int(2e-3 / max(one, 1e-7)))
    t: dict[str, list[float]] = {m: [] for m in runs}
    for _ in range(rounds):
        for m, r in runs.items():
            c = time.thread_time()
            for _ in range(reps):
                r()
            t[m].append((time.thread_time() - c) / reps * 1e6)
    row = {m: {"us": statistics.median(v), "min_us": min(v), "samples_us": v} for m, v in t.items()}
    row["new"]["bitexact"] = all(np.array_equal(o.numpy(), e) for o, e in zip(outs["new"], ref))
    if "new_fused" in row:
        scale = max(float(np.abs(e).max()) for e in ref)
        diff = max(float(np.abs(o.numpy() - e).max()) for o, e in zip(outs["new_fused"], ref))
        row["new_fused"]["max_rel_diff"] = diff / scale
    return row


if __name__ == "__main__":
    main()
