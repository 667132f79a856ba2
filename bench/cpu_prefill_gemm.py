"""Prefill GEMM kernels at M = 512 rows against this host's measured peak, old vs new, and
``torch.matmul`` (MKL/oneDNN, float32) in the same process as a peer.

Usage::

    python bench/cpu_prefill_gemm.py                  # writes bench/cpu_prefill_gemm.json
    python bench/cpu_prefill_gemm.py --rounds 3 --shapes 768x768 --out /tmp/x.json

Kernels (all at a symbolic row count, as the prefill entry compiles them; weights in the
artifact's layouts):

- ``f32_panel`` — :func:`llmc.backends.kernels.cpu.panel_gemm` (the prefill kernel for float
  weights, unchanged);
- ``f32_blocked`` — :func:`llmc.backends.kernels.cpu_gemm.gemm_prefill` (K-sliced 6 x 64 block),
  measured as a candidate;
- ``i8_vnni_rows`` — :func:`llmc.backends.kernels.cpu_vnni.w8a8_vnni` (W8A8, the kernel prefill
  used before: one row at a time per panel);
- ``i8_prefill`` — :func:`llmc.backends.kernels.cpu_gemm.w8a8_prefill` (W8A8, 6 x 64 int32
  register block: what the prefill entry uses now);
- ``i8_amx`` — :func:`llmc.backends.kernels.cpu_amx.w8a8_prefill_amx` (W8A8 on AMX tiles, where
  the host has ``amx_int8``: what the prefill entry uses there; also against the AMX peak);
- ``i8_amx_base`` — with ``--amx-base REV``: ``cpu_amx.py`` as it was at git revision ``REV``
  (an A/B of the AMX kernel in the same rounds, against the same probe);
- ``torch_f32`` — ``torch.matmul(x, w.T)``;
- ``torch_onednn_i8`` — oneDNN's int8 matmul through PyTorch (``torch.ops.onednn.qlinear_prepack``
  / ``qlinear_pointwise``: u8 activations with a zero point of 128, s8 weights, per-channel weight
  scales, float32 out; ``brg_matmul:..._amx`` on an AMX host, ``ONEDNN_VERBOSE=1`` shows it), the
  int8 peer, where this PyTorch build has it. Its time includes the op's call and output
  allocation, as a user of it pays them; its result is checked against the integer product.

``--artifacts NAME=DIR,...`` (``--shapes ""`` to skip the kernels) times whole-model prefill of
``--rows`` tokens instead: each artifact loaded once (``random_weights=True`` for an
architecture-only compile), one batch-1 prefill call per sample, artifacts interleaved, wall and
CPU time, tokens/s (e.g. GPT-2 small ``w8a8`` compiled by the old and the new checkout).

Each round runs every kernel of every shape once in turn (interleaved A/B/..., the shapes too, so
a burst of load from other users hits one round of each shape, not all rounds of one), each sample
being the best of
``--inner`` calls, timed two ways: wall time, and process CPU time (``time.process_time``; it
leaves out the time the threads were descheduled by other users of the machine, which is what a
shared 2-core machine mostly measures; TVM's idle workers spin, which CPU time counts, so it is
conservative). The JSON holds every sample, the load average per round, the best and median
GFLOP/s (int8: GOP/s) per clock, and each best against the peak of bench/cpu_peak.json (CPU-time
per-core rate x threads).

Same-moment peak (``--probe``, on by default): the host's speed moves from minute to minute (a
shared VM: the f32 kernel and the FMA probe both run ~1.5x faster in one phase than another), so a
fraction of a peak measured at another moment says as much about the moment as about the kernel.
Right before and after each sample, ``bench/cpu_peak.py``'s FMA (f32 kernels), ``vpdpbusd`` (int8)
chains or AMX ``tdpbusd`` tile products (``i8_amx*``, and ``torch_onednn_i8`` on an AMX host) run
on the same threads, the best of 3 runs of ~3 ms of CPU time each (as each sample is the best of
``--inner`` calls; :func:`cpu_peak.build_probe`); each sample's ``of_probe`` is its CPU-time rate
over the mean of the two probes around it, and ``median_of_probe`` / ``best_of_probe`` summarize
them. Both fractions
are written: ``of_peak_*`` against the stored peak, ``*_of_probe`` against the host at that moment.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ROOT, cpu_name, git, load_average, module_at
from cpu_peak import build_probe

sys.path.insert(0, str(ROOT))

SHAPES = "768x768,768x2304,768x3072,3072x768,2048x5632"  # K x N


def _panel(w: np.ndarray) -> np.ndarray:
    n, k = w.shape
    p = (n + 63) // 64
    wp = np.zeros((p * 64, k), w.dtype)
    wp[:n] = w
    return np.ascontiguousarray(wp.reshape(p, 64, k).transpose(0, 2, 1))


def _vnni(wq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, k = wq.shape
    p, kq = (n + 63) // 64, (k + 3) // 4
    full = np.zeros((p * 64, kq * 4), np.int8)
    full[:n, :k] = wq
    codes = np.ascontiguousarray(full.reshape(p, 64, kq, 4).transpose(0, 2, 1, 3))
    return codes, full.astype(np.int32).sum(1).astype(np.int32).reshape(p, 64)


def _bind(fn, *args):
    return lambda: fn(*args)


def _whole_model(args: argparse.Namespace, torch) -> dict:
    from llmc.runtime.tvm_runner import load

    arts = dict(a.split("=", 1) for a in args.artifacts.split(","))
    lms = {name: load(d, random_weights=True) for name, d in arts.items()}
    m = args.rows
    vocab = min([50000] + [int(lm.meta.get("vocab_size") or 50000) for lm in lms.values()])
    ids = torch.randint(0, vocab, (1, m), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(m)[None]
    samples: dict = {name: {"wall": [], "cpu": []} for name in lms}
    loads = []
    for lm in lms.values():  # warm-up
        lm.forward(ids, pos, lm.empty_past(1))
    for _ in range(args.rounds):
        for name, lm in lms.items():
            past = lm.empty_past(1)
            time.sleep(0.2)
            t0, c0 = time.perf_counter(), time.process_time()
            lm.forward(ids, pos, past)
            w, c = time.perf_counter() - t0, (time.process_time() - c0) / args.threads
            samples[name]["wall"].append(round(m / w, 1))
            samples[name]["cpu"].append(round(m / c, 1))
        loads.append(load_average())
    res: dict = {"tokens": m, "artifacts": arts, "load_average": loads, "tok_per_s": {}}
    for name, s in samples.items():
        res["tok_per_s"][name] = {
            **s,
            "best_wall": max(s["wall"]),
            "median_wall": statistics.median(s["wall"]),
            "best_cpu": max(s["cpu"]),
            "median_cpu": statistics.median(s["cpu"]),
        }
        print(f"{name}: prefill {m} tokens, best tok/s wall {max(s['wall'])} cpu {max(s['cpu'])}")
    res["kernels_cpu_ms"] = {name: _profile(lm, ids, pos) for name, lm in lms.items()}
    return res


def _profile(lm, ids, pos, calls: int = 2) -> dict[str, float]:
    """CPU ms per prefill of each kernel (the VM's instrument hook; process CPU time around each
    call, both threads), the top 12; name suffixes (``w8a8_prefill2``) are distinct shapes."""
    import collections

    cpu: dict[str, float] = collections.defaultdict(float)
    t0 = [0.0]

    def hook(func, sym: str, before: bool, ret, *args) -> int:
        if before:
            t0[0] = time.process_time()
        else:
            cpu[sym] += time.process_time() - t0[0]
        return 0

    lm.vm.set_instrument(hook)
    for _ in range(calls):
        lm.forward(ids, pos, lm.empty_past(1))
    lm.vm.set_instrument(None)
    skip = set(lm.backend["functions"]) | set(lm.backend.get("layer_functions", {}))
    ks = {k: v for k, v in cpu.items() if k not in skip and not k.startswith("vm.builtin.")}
    top = sorted(ks.items(), key=lambda kv: -kv[1])[:12]
    out = {k: round(1e3 * v / calls, 1) for k, v in top}
    out["all kernels"] = round(1e3 * sum(ks.values()) / calls, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--shapes", default=SHAPES, help="comma-separated KxN")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--inner", type=int, default=5, help="calls per sample (best taken)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--artifacts", default="", help="NAME=DIR,...: whole-model prefill")
    ap.add_argument("--peak", default=str(ROOT / "bench" / "cpu_peak.json"))
    ap.add_argument(
        "--probe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the host's peak around each sample (same-moment fraction)",
    )
    ap.add_argument(
        "--probe-iters", type=int, default=3_000_000, help="probe loop trips (~10 ms at 2 threads)"
    )
    ap.add_argument(
        "--amx-base",
        default="",
        metavar="REV",
        help="also time cpu_amx.py as it was at this git revision (i8_amx_base)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "cpu_prefill_gemm.json"))
    args = ap.parse_args(argv)
    path = "llmc/backends/kernels/cpu_amx.py"
    amx_base = (
        module_at(
            args.amx_base,
            path,
            f"bench/cpu_prefill_gemm.py: --amx-base: no {path} at {args.amx_base!r}",
        )
        if args.amx_base
        else None
    )
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import torch
    import tvm

    from llmc.backends.cpu.pipeline import host_cpu
    from llmc.backends.kernels import cpu as K
    from llmc.backends.kernels import cpu_amx as A
    from llmc.backends.kernels import cpu_gemm as G
    from llmc.backends.kernels import cpu_vnni as V
    from llmc.targets.cpu_isa import host_isa_flags, request_amx, use_amx

    # i8_amx: the AMX W8A8 prefill where the host has amx_int8 (and Linux grants the tile state)
    amx_ok = use_amx(host_isa_flags()) and request_amx() is None

    torch.set_num_threads(args.threads)
    peak = json.loads(Path(args.peak).read_text())["peak"]
    pf32 = peak["f32_per_core"] * args.threads
    pi8 = peak["i8_per_core"] * args.threads
    tgt = tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    m = args.rows
    out: dict = {
        "benchmark": "prefill GEMM kernels vs measured peak (symbolic rows, weights in artifact layouts)",
        "command": "python bench/cpu_prefill_gemm.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "llvm_mcpu": host_cpu()},
        "llmc_commit": git("rev-parse", "HEAD").strip(),
        "settings": {
            **({"amx_base": args.amx_base} if args.amx_base else {}),
            "rows": m,
            "rounds": args.rounds,
            "inner": args.inner,
            "threads": args.threads,
        },
        "peak": {"f32": pf32, "i8": pi8, "source": f"{Path(args.peak).name} (CPU time x threads)"},
        "probe": (
            {"iters": args.probe_iters, "how": "cpu_peak.PROBE_SRC around each sample, CPU time"}
            if args.probe
            else None
        ),
        "shapes": [],
    }

    def build(f):
        return tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=tgt)

    if args.artifacts:
        out["whole_model"] = _whole_model(args, torch)
    prepared = []
    for shape in filter(None, args.shapes.split(",")):
        k, n = (int(v) for v in shape.split("x"))
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((n, k)).astype(np.float32)
        xq = rng.integers(-127, 128, (m, k)).astype(np.int8)
        wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
        xs = rng.random(m).astype(np.float32)
        ws = rng.random(n).astype(np.float32)
        codes, wsum = _vnni(wq)
        wsp = _panel(ws[:, None])[:, 0, :]
        t = {a: tvm.runtime.tensor(v, dev) for a, v in dict(x=x, w=_panel(w)).items()}
        qa = [tvm.runtime.tensor(v, dev) for v in (xq, xs, codes, wsum, wsp)]
        c = tvm.runtime.tensor(np.zeros((m, n), np.float32), dev)
        f32_old = build(K.panel_gemm(k, n, 64, "float32", "float32", None))
        f32_new = build(G.gemm_prefill(k, n))
        i8_old = build(V.w8a8_vnni(k, n, None))
        i8_new = build(G.w8a8_prefill(k, n))
        i8_amx = build(A.w8a8_prefill_amx(k, n)) if amx_ok else None
        i8_amx_base = build(amx_base.w8a8_prefill_amx(k, n)) if amx_ok and amx_base else None
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        kernels = {
            "f32_panel": ("f32", _bind(f32_old, t["x"], t["w"], c)),
            "f32_blocked": ("f32", _bind(f32_new, t["x"], t["w"], c)),
            # the decode kernel quantizes float rows itself (cpu_vnni.w8a8_vnni's prologue)
            "i8_vnni_rows": ("i8-fused", _bind(i8_old, t["x"], *qa[2:], c)),
            "i8_prefill": ("i8", _bind(i8_new, *qa, c)),
            **({"i8_amx": ("i8", _bind(i8_amx, *qa, c))} if amx_ok else {}),
            **({"i8_amx_base": ("i8", _bind(i8_amx_base, *qa, c))} if i8_amx_base else {}),
            "torch_f32": ("f32", _bind(torch.matmul, xt, wt.T)),
            **_onednn_i8(torch, xq, wq, ws),
        }
        # correctness of each TVM kernel before timing
        ref = x @ w.T
        refq = (xq.astype(np.int64) @ wq.T.astype(np.int64)).astype(np.float32) * xs[:, None] * ws
        # w8a8_vnni's own quantization of x: xs = max|x| / 127 per row, codes round half to even
        xs_f = np.maximum(np.abs(x).max(1), np.float32(1e-8)) / np.float32(127)
        xq_f = np.clip(np.round(x / xs_f[:, None]), -127, 127).astype(np.int64)
        refq_f = (xq_f @ wq.T.astype(np.int64)).astype(np.float32) * xs_f[:, None] * ws
        for name, (kind, fn) in kernels.items():
            if name.startswith("torch"):
                continue
            fn()
            r = {"f32": ref, "i8": refq, "i8-fused": refq_f}[kind]
            err = float(np.abs(c.numpy() - r).max() / np.abs(r).max())
            assert err < 1e-5, (shape, name, err)
        prepared.append((k, n, kernels))
    # Rounds outermost, over every shape: a burst of load from other users of the machine
    # lowers one sample of every shape rather than every sample of one shape.
    samples = [{name: {"wall": [], "cpu": [], "probe": []} for name in ks} for _, _, ks in prepared]
    loads: list[list] = [[] for _ in prepared]
    lib = build_probe(Path(tempfile.mkdtemp(prefix="llmc-probe-"))) if args.probe else None

    def probe(name: str, kind: str) -> float:
        """The host's f32 (int8; AMX tiles for the AMX rows) CPU-time rate now, GFLOP/s (GOP/s) at
        ``--threads``: the best of 3 runs, as each kernel sample is the best of ``--inner``
        calls."""
        assert lib is not None
        # AMX kernels (and oneDNN's int8 matmul, which uses AMX where there is one) against the
        # tile probe
        amx_row = name.startswith("i8_amx") or (name == "torch_onednn_i8" and amx_ok)
        which = 0 if kind == "f32" else 2 if amx_row else 1
        trips = max(args.probe_iters // 3, 1)
        return max(lib.probe(which, trips, args.threads) for _ in range(3)) / 1e9

    for _ in range(args.rounds):
        for (k, n, kernels), smp, ld in zip(prepared, samples, loads):
            flops = 2.0 * m * k * n
            for name, (kind, fn) in kernels.items():
                before = probe(name, kind) if lib else 0.0
                fn()
                bw = bc = float("inf")
                for _ in range(args.inner):
                    t0, c0 = time.perf_counter(), time.process_time()
                    fn()
                    bw = min(bw, time.perf_counter() - t0)
                    bc = min(bc, (time.process_time() - c0) / args.threads)
                smp[name]["wall"].append(flops / bw / 1e9)
                smp[name]["cpu"].append(flops / bc / 1e9)
                time.sleep(0.2)  # let TVM's spinning workers stop before the next kernel
                if lib:
                    smp[name]["probe"].append((before + probe(name, kind)) / 2)
            ld.append(load_average())
    for (k, n, kernels), smp, ld in zip(prepared, samples, loads):
        row = {"K": k, "N": n, "M": m, "load_average": ld, "kernels": {}}
        for name, (kind, _) in kernels.items():
            pk = (pf32 if kind == "f32" else pi8) / 1e9
            s = smp[name]
            row["kernels"][name] = {
                "unit": "GFLOP/s" if kind == "f32" else "GOP/s",
                "wall": [round(v, 1) for v in s["wall"]],
                "cpu": [round(v, 1) for v in s["cpu"]],
                "best_wall": round(max(s["wall"]), 1),
                "median_wall": round(statistics.median(s["wall"]), 1),
                "best_cpu": round(max(s["cpu"]), 1),
                "median_cpu": round(statistics.median(s["cpu"]), 1),
                "of_peak_best_wall": round(max(s["wall"]) / pk, 3),
                "of_peak_best_cpu": round(max(s["cpu"]) / pk, 3),
            }
            if s["probe"]:
                frac = [c / p for c, p in zip(s["cpu"], s["probe"])]
                row["kernels"][name].update(
                    probe=[round(v, 1) for v in s["probe"]],
                    of_probe=[round(v, 3) for v in frac],
                    median_of_probe=round(statistics.median(frac), 3),
                    best_of_probe=round(max(frac), 3),
                )
        out["shapes"].append(row)
        ks = row["kernels"]
        print(
            f"K={k} N={n} load {ld[-1][0]:.2f}: "
            + "  ".join(
                f"{nm} {v['best_wall']:.0f}/{v['best_cpu']:.0f} ({v['of_peak_best_cpu']:.0%}"
                + (f", now {v['median_of_probe']:.0%})" if "median_of_probe" in v else ")")
                for nm, v in ks.items()
            ),
            flush=True,
        )
    _amx_share(out, Path(args.peak), args.threads)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


def _amx_share(out: dict, peak_file: Path, threads: int) -> None:
    """``i8_amx`` rows against the AMX tile peak too (``peak.amx.i8_per_core`` x threads, where
    ``--peak`` has it); ``of_peak_*`` stays against the ``vpdpbusd`` peak, as every int8 row."""
    amx = json.loads(peak_file.read_text())["peak"].get("amx")
    if not isinstance(amx, dict) or not amx.get("i8_per_core"):
        return
    pk = float(amx["i8_per_core"]) * threads / 1e9
    out["peak"]["i8_amx"] = pk * 1e9
    for row in out["shapes"]:
        for v in row["kernels"].values():
            if v.get("unit") == "GOP/s":
                v["of_amx_peak_best_wall"] = round(v["best_wall"] / pk, 3)
                v["of_amx_peak_best_cpu"] = round(v["best_cpu"] / pk, 3)
        for name, v in row["kernels"].items():
            if name.startswith("i8_amx"):
                print(
                    f"K={row['K']} N={row['N']}: {name} {v['of_amx_peak_best_cpu']:.0%} "
                    f"of the AMX peak, {v['of_peak_best_cpu']:.0%} of the vpdpbusd peak"
                )


def _onednn_i8(torch, xq: np.ndarray, wq: np.ndarray, ws: np.ndarray) -> dict:
    """``{"torch_onednn_i8": (kind, call)}``: oneDNN's int8 matmul (see the module docstring),
    checked against the exact integer product first; ``{}`` where PyTorch has no such op or
    oneDNN refuses it on this CPU (said on stderr)."""
    ops = getattr(torch.ops, "onednn", None)
    if ops is None or not hasattr(ops, "qlinear_prepack"):
        return {}
    m, k = xq.shape
    qx = torch.from_numpy((xq.astype(np.int16) + 128).astype(np.uint8))
    w = torch.from_numpy(wq)
    wz = torch.zeros(len(ws), dtype=torch.int64)
    unit = torch.ones(len(ws), dtype=torch.float32)
    try:
        packed = ops.qlinear_prepack(w, [m, k])  # [N, K], as nn.Linear holds it
        got = ops.qlinear_pointwise(
            qx, 1.0, 128, packed, unit, wz, None, 1.0, 0, torch.float32, "none", [], ""
        )
    except RuntimeError as e:  # no oneDNN int8 matmul for this CPU
        print(f"torch_onednn_i8 left out: {str(e).splitlines()[0]}", file=sys.stderr)
        return {}
    want = (xq.astype(np.int64) @ wq.T.astype(np.int64)).astype(np.float32)
    assert np.array_equal(got.numpy(), want), "torch_onednn_i8: not the integer product"
    wst = torch.from_numpy(ws)
    return {
        "torch_onednn_i8": (
            "i8",
            lambda: ops.qlinear_pointwise(
                qx, 0.02, 128, packed, wst, wz, None, 1.0, 0, torch.float32, "none", [], ""
            ),
        )
    }


if __name__ == "__main__":
    sys.exit(main())
