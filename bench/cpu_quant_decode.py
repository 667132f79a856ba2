"""Quantized CPU decode, kernel level: the portable float panel kernels vs the AVX-512 VNNI ones.

Usage::

    TVM_NUM_THREADS=2 python bench/cpu_quant_decode.py            # writes bench/cpu_quant_decode.json
    python bench/cpu_quant_decode.py --repeats 3 --tokens 5 --out /tmp/x.json

One "token" runs every decode linear of a model once, each layer with its own weights (so the
weights stream from memory, as in decode): GPT-2 small (12 layers of qkv 768x2304, out 768x768,
fc 768x3072, proj 3072x768, plus the 768x50257 LM head) and one LLaMA-7B layer (qkv 4096x12288,
o 4096x4096, gate/up 4096x22016, down 11008x4096). Variants, each including its activation
preparation (quantization, digit split, group sums):

- ``rtn4_portable``: ``panel_gemm_q4`` (float unpack + FMA), ``rtn:bits=4:group=128``;
- ``rtn4_vnni3`` / ``rtn4_vnni1``: ``q4_vnni`` with 3 activation digits (float32-level error,
  the default) or 1 (int8 activations as llama.cpp's q8_0);
- ``rtn8_portable``: ``panel_gemm_q8`` per channel (``rtn:bits=8``);
- ``rtn8_vnni3``: ``q8w_vnni`` per channel, 3 activation digits (what ``rtn:bits=8`` and the
  8-bit LM head of ``head=true`` run on a VNNI host);
- ``w8a8_portable``: ``act_quant`` + ``int8_linear`` (plain loops, what non-VNNI hosts run);
- ``w8a8_vnni``: ``w8a8_vnni`` (the per-token quantization inside the kernel);
- ``rtn4g32_vnni3`` / ``rtn4g32_a8`` / ``rtn4g128_a8`` / ``rtn8g32_vnni3`` / ``rtn8g32_a8``: the
  weight-only VNNI kernels at group 32 (128) with float activations (3 digits) or the int8
  activations ``act_bits=8`` records (``act_int8``, blocks of 32, 1 digit), symmetric weights'
  shared offset row; ``rtn4g32_vnni3_offsets`` reads a per-group offset stream (as before);
- ``rtn4g32_vnni3_f16`` / ``rtn4g32_a8_f16`` / ``rtn8g32_vnni3_f16`` / ``rtn8g32_a8_f16``: the same
  kernels with ``scale_dtype=f16`` weights' half scales (2 bytes per group instead of 4: llama.cpp's
  q4_0/q8_0 bytes per weight).

With ``--whole-model WORK``, it also compiles GPT-2 small (``bench/cpu_decode.py``'s random-weight
checkpoint) as dense, ``rtn:bits=8``, ``rtn:bits=4:group=128`` and ``w8a8`` (the last two with the
VNNI kernels and, forced, with the portable ones) and measures decode tokens/s of a 32-token
prompt and 128 greedy tokens, interleaved, batch 1. ``--whole-models`` picks some of them, e.g.
the LM-head pairs ``rtn4_vnni,rtn4_vnni_headf32,w8a8_vnni,w8a8_vnni_headf32`` (the tied head
quantized, the passes' default, vs ``head=false``); ``--models ""`` skips the kernel level.

Variants run interleaved (A B C ... A B C ...) ``--repeats`` times, ``--tokens`` tokens each;
the JSON has every sample, the medians, the bytes each token reads, and % of the roofline
``bytes / measured read bandwidth`` (``llmc.targets.host.measure_read_bandwidth``, on the
same threads), the machine, the date, the load average before and after, and the command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, cpu_name, git, load_average

GPT2 = {"layers": 12, "linears": [(768, 2304), (768, 768), (768, 3072), (3072, 768)]}
GPT2_HEAD = (768, 50257)
LLAMA7B = {"layers": 1, "linears": [(4096, 12288), (4096, 4096), (4096, 22016), (11008, 4096)]}
SMOKE = {"layers": 1, "linears": [(256, 128)]}  # --models smoke: checks the script runs
NB = 64
G = 128


def _target():
    import tvm

    from llmc.backends.cpu.pipeline import host_cpu

    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})


class Variant:
    """One way to run a [K] x [N, K] decode linear: compiled kernels and per-layer weights."""

    def __init__(self, name: str, make: Callable[[int, int], Callable[[], Any]], nbytes) -> None:
        self.name, self.make, self.nbytes = name, make, nbytes


def _arr(a: np.ndarray):
    import tvm

    return tvm.runtime.tensor(a, tvm.cpu())


def _rng_u8(rng, shape):
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _panels(n: int) -> int:
    return (n + NB - 1) // NB


_CACHE: dict[tuple, Any] = {}


def _build(key: tuple, fn: Callable[[], Any]):
    import tvm

    target = _target()  # bench/cpu_avx2_decode.py replaces it while it runs
    key = (str(target), *key)
    if key not in _CACHE:
        _CACHE[key] = tvm.compile(fn(), target=target)
    return _CACHE[key]


def q4_portable(k: int, n: int, rng) -> Callable[[], Any]:
    from llmc.backends.kernels import cpu as ck

    f = _build(("q4p", k, n), lambda: ck.panel_gemm_q4(k, n, NB, G, "float32", "float32", 1))
    x = _arr(rng.standard_normal((1, k)).astype("float32"))
    codes = _arr(_rng_u8(rng, (_panels(n), k // 2, NB)))
    sc = _arr(rng.random((_panels(n), k // G, NB)).astype("float32") * 0.01)
    of = _arr(np.full((_panels(n), k // G, NB), 8.0, "float32"))
    out = _arr(np.zeros((1, n), "float32"))
    return lambda: f(x, codes, sc, of, out)


def q4_vnni(parts: int) -> Callable:
    def make(k: int, n: int, rng) -> Callable[[], Any]:
        from tvm import te

        from llmc.backends.kernels import cpu_vnni as V

        kp, ab = V.padded_k(k, G), V.act_block(k, G)

        def prep_fn():
            xt = te.placeholder((1, k), "float32", name="x")
            d, s = V.act_digits(xt, kp, ab, parts)
            return te.create_prim_func([xt, d, s, V.group_sums(xt, G)])

        prep = _build(("q4prep", k, parts), prep_fn)
        f = _build(("q4v", k, n, parts), lambda: V.q4_vnni(k, n, G, parts, "float32", 1))
        x = _arr(rng.standard_normal((1, k)).astype("float32"))
        xd = _arr(np.zeros((1, parts, kp), "int8"))
        xs = _arr(np.zeros((1, kp // ab, parts), "float32"))
        gs = _arr(np.zeros((1, k // G), "float32"))
        codes = _arr(_rng_u8(rng, (_panels(n), kp // 8, NB, 4)))
        sc = _arr(rng.random((_panels(n), k // G, NB)).astype("float32") * 0.01)
        of = _arr(np.full((_panels(n), k // G, NB), 8.0, "float32"))
        out = _arr(np.zeros((1, n), "float32"))

        def run():
            prep(x, xd, xs, gs)
            f(xd, xs, gs, codes, sc, of, out)

        return run

    return make


def vnni_wo(
    kind: str, group: int, act_group: int | None, shared: bool = True, sdt: str = "float32"
) -> Callable:
    """``q4_vnni``/``q8w_vnni`` at weight group ``group``: float activations (3 digits) when
    ``act_group`` is None, else int8 activations in blocks of ``act_group`` (``act_int8``, one
    digit; what ``act_bits=8`` compiles to). Activation preparation included. ``shared``: the
    symmetric weights' one offset row (what the compiler passes), else a per-group stream.
    ``sdt``: the scales' (and offsets') dtype, ``float16`` for ``scale_dtype=f16`` weights."""

    def make(k: int, n: int, rng) -> Callable[[], Any]:
        from tvm import te

        from llmc.backends.kernels import cpu_vnni as V

        g = min(group, k) or k
        kp = V.padded_k(k, g)
        if act_group is None:
            parts, ab = 3, V.act_block(k, g)
        else:
            parts, ab = 1, V.int8_block(k, g, act_group)

        def prep_fn():
            xt = te.placeholder((1, k), "float32", name="x")
            if act_group is None:
                d, s = V.act_digits(xt, kp, ab, parts)
                return te.create_prim_func([xt, d, s, V.group_sums(xt, g)])
            return te.create_prim_func([xt, *V.act_int8(xt, kp, ab, act_group, g)])

        prep = _build(("wo-prep", k, g, act_group), prep_fn)
        fn = V.q4_vnni if kind == "q4" else V.q8w_vnni
        f = _build(
            ("wo", kind, k, n, g, parts, ab, shared, sdt),
            lambda: fn(k, n, g, parts, sdt, 1, ab, shared),
        )
        x = _arr(rng.standard_normal((1, k)).astype("float32"))
        xd = _arr(np.zeros((1, parts, kp), "int8"))
        xs = _arr(np.zeros((1, kp // ab, parts), "float32"))
        gs = _arr(np.zeros((1, k // g), "float32"))
        rows = kp // 8 if kind == "q4" else kp // 4
        codes = _arr(_rng_u8(rng, (_panels(n), rows, NB, 4)))
        sc = _arr((rng.random((_panels(n), k // g, NB)) * 0.01).astype(sdt))
        of = _arr(np.full((1, 1, NB) if shared else (_panels(n), k // g, NB), 8.0, sdt))
        out = _arr(np.zeros((1, n), "float32"))

        def run():
            prep(x, xd, xs, gs)
            f(xd, xs, gs, codes, sc, of, out)

        return run

    return make


def bytes_wo(
    bits: int, group: int, streams: int = 1, scale_bytes: int = 4
) -> Callable[[int, int], int]:
    """Codes and ``streams`` per-group arrays of ``scale_bytes`` each (scales; and offsets when
    2): float32, or 2 for ``scale_dtype=f16``."""
    return lambda k, n: n * k * bits // 8 + streams * scale_bytes * n * (k // min(group, k))


def q8_portable(k: int, n: int, rng) -> Callable[[], Any]:
    from llmc.backends.kernels import cpu as ck

    f = _build(("q8p", k, n), lambda: ck.panel_gemm_q8(k, n, NB, k, "float32", "float32", 1))
    x = _arr(rng.standard_normal((1, k)).astype("float32"))
    codes = _arr(rng.integers(-127, 128, (_panels(n), k, NB), dtype=np.int8))
    sc = _arr(rng.random((_panels(n), 1, NB)).astype("float32") * 0.01)
    of = _arr(np.zeros((_panels(n), 1, NB), "float32"))
    out = _arr(np.zeros((1, n), "float32"))
    return lambda: f(x, codes, sc, of, out)


def q8_vnni(k: int, n: int, rng) -> Callable[[], Any]:
    """``q8w_vnni`` per channel (3 activation digits), activation preparation included."""
    from tvm import te

    from llmc.backends.kernels import cpu_vnni as V

    kp, ab, parts = V.padded_k(k, k), V.act_block(k, k), 3

    def prep_fn():
        xt = te.placeholder((1, k), "float32", name="x")
        d, s = V.act_digits(xt, kp, ab, parts)
        return te.create_prim_func([xt, d, s, V.group_sums(xt, k)])

    prep = _build(("q8prep", k, parts), prep_fn)
    f = _build(("q8v", k, n, parts), lambda: V.q8w_vnni(k, n, k, parts, "float32", 1))
    x = _arr(rng.standard_normal((1, k)).astype("float32"))
    xd = _arr(np.zeros((1, parts, kp), "int8"))
    xs = _arr(np.zeros((1, kp // ab, parts), "float32"))
    gs = _arr(np.zeros((1, 1), "float32"))
    codes = _arr(_rng_u8(rng, (_panels(n), kp // 4, NB, 4)))
    sc = _arr(rng.random((_panels(n), 1, NB)).astype("float32") * 0.01)
    of = _arr(np.full((_panels(n), 1, NB), 127.0, "float32"))
    out = _arr(np.zeros((1, n), "float32"))

    def run():
        prep(x, xd, xs, gs)
        f(xd, xs, gs, codes, sc, of, out)

    return run


def _act_quant(k: int):
    from tvm import te

    from llmc.backends.kernels import te_ops

    def fn():
        xt = te.placeholder((1, k), "float32", name="x")
        q, s = te_ops.act_quant(xt, 0.0)
        return te.create_prim_func([xt, q, s])

    return _build(("aq", k), fn)


def a8_portable(k: int, n: int, rng) -> Callable[[], Any]:
    from tvm import te

    from llmc.backends.kernels import te_ops

    aq = _act_quant(k)

    def fn():
        xq = te.placeholder((1, k), "int8", name="xq")
        xs = te.placeholder((1,), "float32", name="xs")
        wq = te.placeholder((n, k), "int8", name="wq")
        ws = te.placeholder((n,), "float32", name="ws")
        return te.create_prim_func([xq, xs, wq, ws, te_ops.int8_linear(xq, xs, wq, ws, "float32")])

    f = _build(("a8p", k, n), fn)
    x = _arr(rng.standard_normal((1, k)).astype("float32"))
    xq, xs = _arr(np.zeros((1, k), "int8")), _arr(np.zeros((1,), "float32"))
    wq = _arr(rng.integers(-127, 128, (n, k), dtype=np.int8))
    ws = _arr(rng.random(n).astype("float32"))
    out = _arr(np.zeros((1, n), "float32"))

    def run():
        aq(x, xq, xs)
        f(xq, xs, wq, ws, out)

    return run


def a8_vnni(k: int, n: int, rng) -> Callable[[], Any]:
    """``w8a8_vnni``: the per-token quantization runs inside the kernel."""
    from llmc.backends.kernels import cpu_vnni as V

    f = _build(("a8v", k, n), lambda: V.w8a8_vnni(k, n, 1))
    x = _arr(rng.standard_normal((1, k)).astype("float32"))
    codes = _arr(rng.integers(-127, 128, (_panels(n), (k + 3) // 4, NB, 4), dtype=np.int8))
    wsum = _arr(np.zeros((_panels(n), NB), "int32"))
    ws = _arr(rng.random((_panels(n), NB)).astype("float32"))
    out = _arr(np.zeros((1, n), "float32"))
    return lambda: f(x, codes, wsum, ws, out)


def bytes_q4(k: int, n: int) -> int:
    return n * k // 2 + 2 * 4 * n * (k // G)


def bytes_q8(k: int, n: int) -> int:
    return n * k + 2 * 4 * n


def bytes_a8(k: int, n: int) -> int:
    return n * k + 4 * n  # codes + per-channel scale (the VNNI kernel also reads 4n of sums)


VARIANTS = {
    "rtn4_portable": (q4_portable, bytes_q4),
    "rtn4_vnni3": (q4_vnni(3), bytes_q4),
    "rtn4_vnni1": (q4_vnni(1), bytes_q4),
    "rtn8_portable": (q8_portable, bytes_q8),
    "rtn8_vnni3": (q8_vnni, bytes_q8),
    "w8a8_portable": (a8_portable, bytes_a8),
    "w8a8_vnni": (a8_vnni, bytes_a8),
    # act_bits (QuantSpec): float activations (3 digits) vs int8 per block of 32 (1 digit)
    "rtn4g32_vnni3_offsets": (vnni_wo("q4", 32, None, False), bytes_wo(4, 32, 2)),
    "rtn4g32_vnni3": (vnni_wo("q4", 32, None), bytes_wo(4, 32)),
    "rtn4g32_a8": (vnni_wo("q4", 32, 32), bytes_wo(4, 32)),
    "rtn4g128_a8": (vnni_wo("q4", 128, 32), bytes_wo(4, 128)),
    "rtn8g32_vnni3": (vnni_wo("q8w", 32, None), bytes_wo(8, 32)),
    "rtn8g32_a8": (vnni_wo("q8w", 32, 32), bytes_wo(8, 32)),
    # scale_dtype=f16 (QuantSpec): the same kernels reading half scales (q4_0/q8_0's bytes)
    "rtn4g32_vnni3_f16": (vnni_wo("q4", 32, None, sdt="float16"), bytes_wo(4, 32, 1, 2)),
    "rtn4g32_a8_f16": (vnni_wo("q4", 32, 32, sdt="float16"), bytes_wo(4, 32, 1, 2)),
    "rtn8g32_vnni3_f16": (vnni_wo("q8w", 32, None, sdt="float16"), bytes_wo(8, 32, 1, 2)),
    "rtn8g32_a8_f16": (vnni_wo("q8w", 32, 32, sdt="float16"), bytes_wo(8, 32, 1, 2)),
}


def model_shapes(model: str) -> list[tuple[int, int]]:
    """The decode linears (K, N) of one token of ``model``: ``gpt2``, ``smoke`` (one small
    linear) or else one LLaMA-7B layer."""
    spec = {"gpt2": GPT2, "smoke": SMOKE}.get(model, LLAMA7B)
    shapes = [s for _ in range(spec["layers"]) for s in spec["linears"]]
    return shapes + ([GPT2_HEAD] if model == "gpt2" else [])


MODELS = {
    "dense": ("", "avx512_vnni"),
    "rtn8": ("rtn:bits=8:measure=false", "avx512_vnni"),
    "rtn4_portable": ("rtn:bits=4:group=128:measure=false", "portable"),
    "rtn4_vnni": ("rtn:bits=4:group=128:measure=false", "avx512_vnni"),
    "w8a8_portable": ("w8a8:measure=false", "portable"),
    "w8a8_vnni": ("w8a8:measure=false", "avx512_vnni"),
    # the tied LM head left f32 (the passes' default before head=true): GPT-2's 154 MB table
    "rtn4_vnni_headf32": ("rtn:bits=4:group=128:measure=false:head=false", "avx512_vnni"),
    "rtn4_vnni_head4": ("rtn:bits=4:group=128:measure=false:head_bits=4", "avx512_vnni"),
    "w8a8_vnni_headf32": ("w8a8:measure=false:head=false", "avx512_vnni"),
}

_COMPILE = """
import sys
import llmc.backends.cpu.pipeline as p
from llmc.compile import compile_model
if sys.argv[3] == "portable":
    p.kernel_isa = lambda: "portable"
compile_model(sys.argv[1], target="cpu", passes=sys.argv[2] or None, out=sys.argv[4])
"""


def whole_model(work: Path, repeats: int, names: list[str]) -> dict[str, Any]:
    """Decode tokens/s of GPT-2 small artifacts, interleaved (see the module docstring)."""
    import subprocess

    sys.path.insert(0, str(ROOT / "bench"))
    import cpu_decode

    from llmc.runtime.lm import generate
    from llmc.runtime.tvm_runner import load

    hf = cpu_decode.hf_dir("gpt2", work)
    lms, sizes = {}, {}
    for name in names:
        spec, isa = MODELS[name]
        out = work / f"gpt2-{name}"
        if not (out / "manifest.json").is_file():
            cmd = [sys.executable, "-c", _COMPILE, str(hf), spec, isa, str(out)]
            subprocess.run(cmd, check=True, capture_output=True)
        lms[name] = load(out)
        sizes[name] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    prompt = list(range(100, 132))
    for lm in lms.values():
        generate(lm, prompt, 8)  # warm-up
    samples: dict[str, list[float]] = {n: [] for n in lms}
    for _ in range(repeats):
        for name, lm in lms.items():
            r = generate(lm, prompt, 128)
            samples[name].append(len(r.step_s) / sum(r.step_s))
            time.sleep(0.5)
    return {
        n: {
            "passes": MODELS[n][0],
            "kernels": MODELS[n][1],
            "artifact_mb": round(sizes[n] / 1e6, 1),
            "decode_tokens_per_s_samples": [round(x, 1) for x in s],
            "decode_tokens_per_s_median": round(statistics.median(s), 1),
        }
        for n, s in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", default="gpt2,llama7b-layer", help="and smoke: one 256x128 linear (a check)"
    )
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "bench" / "cpu_quant_decode.json"))
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="kernel level: wall time, or the process's CPU time (steadier on a loaded machine; "
        "with TVM_NUM_THREADS=1 it is the kernels' own time)",
    )
    ap.add_argument("--whole-model", metavar="WORK", help="also time GPT-2 small artifacts")
    ap.add_argument("--whole-models", default=",".join(MODELS), help="which (names of MODELS)")
    args = ap.parse_args(argv)
    from llmc.backends.cpu.pipeline import kernel_isa
    from llmc.targets.host import measure_read_bandwidth

    threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
    load_before = load_average()
    bw = measure_read_bandwidth(threads)
    results: dict[str, Any] = {}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for model in filter(None, args.models.split(",")):
        shapes = model_shapes(model)
        runs: dict[str, list[Callable[[], Any]]] = {}
        nbytes: dict[str, int] = {}
        for v in args.variants.split(","):
            make, nb = VARIANTS[v]
            rng = np.random.default_rng(0)
            runs[v] = [make(k, n, rng) for k, n in shapes]
            nbytes[v] = sum(nb(k, n) for k, n in shapes)
            for r in runs[v]:
                r()  # warm-up
        samples: dict[str, list[float]] = {v: [] for v in runs}
        for _ in range(args.repeats):
            for v, calls in runs.items():  # interleaved
                t0 = clock()
                for _ in range(args.tokens):
                    for c in calls:
                        c()
                samples[v].append((clock() - t0) / args.tokens * 1e3)
                time.sleep(0.2)
        res = {}
        for v, s in samples.items():
            med = statistics.median(s)
            roof = nbytes[v] / bw * 1e3
            res[v] = {
                "ms_per_token_samples": [round(t, 4) for t in s],
                "ms_per_token_median": round(med, 4),
                "bytes_per_token": nbytes[v],
                "roofline_ms": round(roof, 4),
                "pct_of_roofline": round(100 * roof / med, 1),
            }
        results[model] = {"shapes": shapes, "variants": res}
        print(model, {v: (r["ms_per_token_median"], r["pct_of_roofline"]) for v, r in res.items()})
    whole = None
    if args.whole_model:
        Path(args.whole_model).mkdir(parents=True, exist_ok=True)
        load_whole = load_average()
        whole = whole_model(Path(args.whole_model), args.repeats, args.whole_models.split(","))
        whole = {"load_average_before": load_whole, "load_average_after": load_average(), **whole}
        print("whole model", whole)
    doc = {
        "what": "decode linears of one token, kernel level, interleaved; see the script docstring",
        "command": f"TVM_NUM_THREADS={threads} python {shlex.join(sys.argv)}",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "threads": threads, "kernel_isa": kernel_isa()},
        "read_bandwidth_gbs": round(bw / 1e9, 2),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "note": "machine shared with other jobs while measured: see the load averages",
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "clock": args.clock,
        "repeats": args.repeats,
        "tokens_per_sample": args.tokens,
        "results": results,
        "whole_model_gpt2": whole,
    }
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
