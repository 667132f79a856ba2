"""CPU attention: ``attention_sync`` of this checkout against ``attention_cpu.py`` at ``--base``
(default ``HEAD``), interleaved: prefill from an empty cache (default), or decode and chunked
prefill at long context (``--pasts``).

Usage::

    python bench/cpu_attention.py                     # writes bench/cpu_attention.json
    python bench/cpu_attention.py --rounds 3 --shapes 12x12x64 --seq 512 --out /tmp/x.json

Shapes are ``HxKVHxD`` (query heads x key/value heads x head_dim), batch 1, ``--seq`` query rows
on as many keys (a prefill from an empty cache), causal, float32, compiled as the prefill entry
compiles them (symbolic sequence length, ``mcpu`` of this host). FLOPs are the useful ones:
``4 * d * h * S * (S + 1) / 2`` (q.k and p.v over the keys the causal mask leaves).

``--variants 8x32,4x64`` times the new kernel at other block sizes (query rows x keys per tile)
as well, named ``new_8x32`` etc.

Long context (``--pasts``)::

    python bench/cpu_attention.py --pasts 512,2048,8192,32768 --shapes 32x8x128,12x12x64 \
        --out bench/cpu_attention_long.json

per shape and past ``P``: a decode step (1 query row on ``P + 1`` keys: ms, and GB/s of K and V
read against the host's read bandwidth, ``host_read_gb_s`` of ``bench/decode_profile.py``) and a
prefill chunk (``--seq`` rows on ``P + seq`` keys: ms and GFLOP/s), old and new interleaved, with
each kernel's workspace bytes at that size (its ``alloc_buffer`` shapes evaluated). Outputs are
checked against each other (and against the reference up to 8K keys).

Each round runs every kernel once in turn (interleaved A/B), each sample being the best of
``--inner`` calls, timed as wall time and as process CPU time (``time.process_time``: it leaves
out the time the threads waited for the 2 shared cores; TVM's idle workers spin, which it counts,
so it is conservative). The JSON holds every sample, the load average per round, the best and
median GFLOP/s per clock, and new/old ratios of the bests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _common import ROOT, cpu_name, git, load_average, module_at

sys.path.insert(0, str(ROOT))


def _old_module(base: str):
    return module_at(
        base,
        "llmc/backends/kernels/attention_cpu.py",
        f"bench/cpu_attention.py: no llmc/backends/kernels/attention_cpu.py at {base}",
    )


def _time(fn, inner: int) -> tuple[float, float]:
    wall, cpu = [], []
    for _ in range(inner):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="12x12x64,32x8x64")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--inner", type=int, default=3)
    ap.add_argument(
        "--base",
        default="HEAD",
        help="git revision of the old kernel (default HEAD: a clone may have no main branch)",
    )
    ap.add_argument(
        "--variants",
        default="",
        help="extra block sizes of the new kernel, ROWSxKEY_TILE,... (timed as new_ROWSxKEY_TILE)",
    )
    ap.add_argument(
        "--pasts", default="", help="long-context mode: past lengths, e.g. 512,2048,8192,32768"
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "cpu_attention.json"))
    args = ap.parse_args(argv)
    if args.pasts:
        return long_context(args)

    import torch
    import tvm

    from llmc.backends.cpu.pipeline import host_cpu
    from llmc.backends.kernels import attention_cpu as new
    from llmc.ir.ops import AttentionAttrs, _attention_ref

    old = _old_module(args.base)
    target = tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})
    s = args.seq
    res: dict = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "base": args.base,
        "cpu": cpu_name(),
        "mcpu": host_cpu(),
        "seq": s,
        "shapes": {},
    }
    for shape in args.shapes.split(","):
        h, kvh, d = (int(x) for x in shape.split("x"))
        scale = d**-0.5
        flops = 4.0 * d * h * s * (s + 1) / 2
        gen = torch.Generator().manual_seed(0)
        q = torch.randn(1, h, s, d, generator=gen)
        k = torch.randn(1, kvh, s, d, generator=gen)
        v = torch.randn(1, kvh, s, d, generator=gen)
        want = _attention_ref([q, k, v], AttentionAttrs(causal=True, scale=scale), None)
        args_tvm = [tvm.runtime.tensor(x.numpy()) for x in (q, k, v)]
        fns = {}
        kernels = [("old", old, {}), ("new", new, {})]
        for var in filter(None, args.variants.split(",")):
            rows, tile = (int(x) for x in var.split("x"))
            kernels.append((f"new_{var}", new, {"rows": rows, "key_tile": tile}))
        for name, mod, kw in kernels:
            f = mod.attention_sync(h, kvh, d, "float32", scale, True, 0, **kw)
            fn = tvm.compile(tvm.IRModule({"main": f}), target=target)["main"]
            o = tvm.runtime.tensor(np.zeros((1, h, s, d), "float32"))
            fn(*args_tvm, s, o)
            err = float((torch.from_numpy(o.numpy()) - want).abs().max())
            if err > 1e-4:
                raise SystemExit(f"bench/cpu_attention.py: {name} kernel off by {err} at {shape}")
            fns[name] = lambda fn=fn, o=o, a=args_tvm: fn(*a, s, o)
        samples: dict = {n: {"wall_s": [], "cpu_s": []} for n in fns}
        loads = []
        for _ in range(args.rounds):
            loads.append(load_average())
            for n, fn in fns.items():
                w, c = _time(fn, args.inner)
                samples[n]["wall_s"].append(w)
                samples[n]["cpu_s"].append(c)
        row: dict = {"h": h, "kvh": kvh, "d": d, "gflop": flops / 1e9, "load_avg": loads}
        for n, smp in samples.items():
            row[n] = {
                **smp,
                "gflops_wall_best": flops / min(smp["wall_s"]) / 1e9,
                "gflops_wall_median": flops / statistics.median(smp["wall_s"]) / 1e9,
                "gflops_cpu_best": flops / min(smp["cpu_s"]) / 1e9,
                "gflops_cpu_median": flops / statistics.median(smp["cpu_s"]) / 1e9,
            }
        row["speedup_wall_best"] = min(samples["old"]["wall_s"]) / min(samples["new"]["wall_s"])
        row["speedup_cpu_best"] = min(samples["old"]["cpu_s"]) / min(samples["new"]["cpu_s"])
        res["shapes"][shape] = row
        for n in fns:
            if n.startswith("new_"):
                print(
                    f"  {n}: {row[n]['gflops_cpu_best']:.1f} GFLOP/s cpu, {row[n]['gflops_wall_best']:.1f} wall"
                )
        print(
            f"{shape} S={s}: old {row['old']['gflops_wall_best']:.1f} GFLOP/s wall "
            f"({row['old']['gflops_cpu_best']:.1f} cpu), new {row['new']['gflops_wall_best']:.1f} "
            f"wall ({row['new']['gflops_cpu_best']:.1f} cpu); x{row['speedup_wall_best']:.2f} wall, "
            f"x{row['speedup_cpu_best']:.2f} cpu; load {loads[0]} .. {loads[-1]}"
        )
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


def workspace_bytes(func, **sizes: int) -> int:
    """Bytes of the function-level ``alloc_buffer``s of a kernel (the per-call workspace; the
    per-task ``sblock_alloc_buffer`` locals are excluded) with its size variables (``B``, ``S``,
    ``TT``, ``CAP``) bound to ``sizes``."""
    import re
    import types

    env = {"T": types.SimpleNamespace(int64=int), **sizes}
    total = 0
    for line in func.script().splitlines():
        mt = re.search(r"(?<!sblock_)alloc_buffer\(\(", line)
        if mt:
            depth, end = 1, mt.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(line[end], 0)
                end += 1
            n = 1
            for dim in eval(f"({line[mt.end() : end - 1]})", env):  # noqa: S307 (our TIR)
                n *= int(dim)
            total += n * 4  # every workspace here is float32
    return total


def long_context(args) -> None:
    import os

    import torch
    import tvm

    sys.path.insert(0, str(ROOT / "bench"))
    from decode_profile import host_read_gb_s

    from llmc.backends.cpu.pipeline import host_cpu
    from llmc.backends.kernels import attention_cpu as new
    from llmc.ir.ops import AttentionAttrs, _attention_ref

    threads = int(os.environ.get("TVM_NUM_THREADS") or os.cpu_count() or 1)
    old = _old_module(args.base)
    target = tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})
    s = args.seq
    res: dict = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "base": args.base,
        "cpu": cpu_name(),
        "mcpu": host_cpu(),
        "threads": threads,
        "host_read_gb_s": host_read_gb_s(threads),
        "seq": s,
        "shapes": {},
    }
    print(f"host read bandwidth {res['host_read_gb_s']:.1f} GB/s ({threads} threads)")
    for shape in args.shapes.split(","):
        h, kvh, d = (int(x) for x in shape.split("x"))
        scale = d**-0.5
        fns = {
            n: (
                f := m.attention_sync(h, kvh, d, "float32", scale, True, 0),
                tvm.compile(tvm.IRModule({"main": f}), target=target)["main"],
            )
            for n, m in (("old", old), ("new", new))
        }
        rows: dict = {}
        for past in (int(p) for p in args.pasts.split(",")):
            for kind, sq in (("decode", 1), ("prefill", s)):
                tt = past + sq
                gen = torch.Generator().manual_seed(past + sq)
                q = torch.randn(1, h, sq, d, generator=gen)
                k = torch.randn(1, kvh, tt, d, generator=gen)
                v = torch.randn(1, kvh, tt, d, generator=gen)
                a = [tvm.runtime.tensor(x.numpy()) for x in (q, k, v)]
                outs, calls = {}, {}
                for n, (_f, fn) in fns.items():
                    o = tvm.runtime.tensor(np.zeros((1, h, sq, d), "float32"))
                    fn(*a, tt, o)
                    outs[n] = torch.from_numpy(o.numpy())
                    calls[n] = lambda fn=fn, o=o, a=a, tt=tt: fn(*a, tt, o)
                err = float((outs["new"] - outs["old"]).abs().max())
                if tt <= 8192:
                    attrs = AttentionAttrs(causal=True, scale=scale)
                    want = _attention_ref([q, k, v], attrs, None)
                    err = max(err, float((outs["new"] - want).abs().max()))
                if err > 1e-4:
                    raise SystemExit(f"bench/cpu_attention.py: off by {err} at {shape} {kind} {tt}")
                big = kind == "prefill" and tt > 8192
                rounds, inner = (2, 1) if big else (args.rounds, args.inner)
                if kind == "decode":
                    inner = max(inner, 10)
                samples: dict = {n: {"wall_s": [], "cpu_s": []} for n in fns}
                loads = []
                for _ in range(rounds):
                    loads.append(load_average())
                    for n, fn in calls.items():
                        w, c = _time(fn, inner)
                        samples[n]["wall_s"].append(w)
                        samples[n]["cpu_s"].append(c)
                kv_bytes = 2 * kvh * tt * d * 4
                flops = 4.0 * d * h * sum(past + i + 1 for i in range(sq))
                row: dict = {"keys": tt, "rows": sq, "load_avg": loads, "kv_bytes": kv_bytes}
                for n, smp in samples.items():
                    bw = min(smp["wall_s"])
                    row[n] = {
                        **smp,
                        "ms_wall_best": bw * 1e3,
                        "ms_wall_median": statistics.median(smp["wall_s"]) * 1e3,
                        "ms_cpu_best": min(smp["cpu_s"]) * 1e3,
                        "workspace_bytes": workspace_bytes(fns[n][0], B=1, S=sq, TT=tt, CAP=tt),
                    }
                    if kind == "decode":
                        row[n]["kv_gb_s_wall_best"] = kv_bytes / bw / 1e9
                        row[n]["kv_read_fraction"] = kv_bytes / bw / 1e9 / res["host_read_gb_s"]
                    else:
                        row[n]["gflops_wall_best"] = flops / bw / 1e9
                        row[n]["gflops_cpu_best"] = flops / min(smp["cpu_s"]) / 1e9
                row["speedup_wall_best"] = row["old"]["ms_wall_best"] / row["new"]["ms_wall_best"]
                rows[f"{kind}_{past}"] = row
                unit = "kv_gb_s_wall_best" if kind == "decode" else "gflops_wall_best"
                what = "GB/s" if kind == "decode" else "GFLOP/s"
                print(
                    f"{shape} {kind} past={past}: old {row['old']['ms_wall_best']:.2f} ms "
                    f"({row['old'][unit]:.1f} {what}, ws {row['old']['workspace_bytes'] / 1e6:.1f} MB), new "
                    f"{row['new']['ms_wall_best']:.2f} ms ({row['new'][unit]:.1f} {what}, ws "
                    f"{row['new']['workspace_bytes'] / 1e6:.2f} MB); x{row['speedup_wall_best']:.2f}"
                    f"; load {loads[0]} .. {loads[-1]}",
                    flush=True,
                )
        res["shapes"][shape] = rows
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
