"""Quantized CPU decode on AVX2, kernel level: the portable float panel kernels vs the AVX2 ones
(:mod:`llmc.backends.kernels.cpu_avx2`), everything built for an AVX2-only CPU.

Usage::

    TVM_NUM_THREADS=1 python bench/cpu_avx2_decode.py          # writes bench/cpu_avx2_decode.json
    python bench/cpu_avx2_decode.py --repeats 3 --tokens 3 --out /tmp/x.json
    python bench/cpu_avx2_decode.py --mcpu znver3              # the tuning of another AVX2 CPU

Every kernel is compiled for ``--mcpu`` (default ``haswell``: AVX2 + FMA, no AVX-512), what
``LLMC_CPU_ISA=avx2`` builds on an AVX-512 host, so the comparison is the one an AVX2 laptop
or server sees (on a CPU with AVX-512 and VNNI, llmc picks bench/cpu_quant_decode.py's kernels
instead). One "token" runs every decode linear of a model once with its own weights (the
shapes of bench/cpu_quant_decode.py: GPT-2 small's 12 layers + 768x50257 LM head, one LLaMA-7B
layer). Variants, each with its activation preparation (quantization, digits, group sums):

- ``rtn4_g128_portable`` / ``rtn4_g32_portable``: ``panel_gemm_q4`` at 256-bit vectors;
- ``rtn4_g128_avx2`` / ``rtn4_g32_avx2``: ``q4_avx2``, 3 activation digits (the default,
  float32-level error); ``rtn4_g128_avx2_1``: 1 digit (int8 activations, llama.cpp's q8);
- ``rtn8_portable`` / ``rtn8_avx2``: ``panel_gemm_q8`` / ``q8w_avx2`` per channel;
- ``w8a8_portable`` / ``w8a8_avx2``: ``act_quant`` + ``int8_linear`` (plain loops) /
  ``w8a8_avx2``.

With ``--whole-model HF_DIR`` (default models: bench/cpu_peers.py's GPT-2-size Llama,
``/tmp/llmc-cpu-peers/hf``) it also compiles that model with ``LLMC_CPU_ISA=avx2`` (``haswell``)
at ``rtn:bits=4:group=32`` (LM head quantized too), ``rtn:bits=8`` and ``w8a8``, each with the
AVX2 kernels and, forced, with the portable ones, and measures decode tokens/s (a 32-token
prompt, ``--gen`` greedy tokens, batch 1), interleaved, ``--repeats`` rounds.

Variants run interleaved (A B C ... A B C ...) ``--repeats`` times, ``--tokens`` tokens each;
each sample records wall time and process CPU time (steadier on a shared machine). The JSON has
every sample, the medians, the machine, the load average before and after, and the command.
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
from typing import Any

import numpy as np
from _common import ROOT, cpu_name, git, load_average

sys.path.insert(0, str(ROOT / "bench"))
import cpu_quant_decode as cqd  # noqa: E402

MCPU = ["haswell"]
NB32 = 32


def _target():
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": MCPU[0]})


_arr, _build = cqd._arr, cqd._build  # main() points cqd._target at _target while it runs


def _p(n: int, nb: int) -> int:
    return (n + nb - 1) // nb


def q4_portable(group: int) -> Callable:
    def make(k: int, n: int, rng) -> Callable[[], Any]:
        from llmc.backends.kernels import cpu as ck

        f = _build(
            ("q4p", k, n, group),
            lambda: ck.panel_gemm_q4(k, n, 64, group, "float32", "float32", 1, 256),
        )
        x = _arr(rng.standard_normal((1, k)).astype("float32"))
        codes = _arr(rng.integers(0, 256, (_p(n, 64), k // 2, 64), dtype=np.uint8))
        sc = _arr(rng.random((_p(n, 64), k // group, 64)).astype("float32") * 0.01)
        of = _arr(np.full((_p(n, 64), k // group, 64), 8.0, "float32"))
        out = _arr(np.zeros((1, n), "float32"))
        return lambda: f(x, codes, sc, of, out)

    return make


def q8_portable(k: int, n: int, rng) -> Callable[[], Any]:
    from llmc.backends.kernels import cpu as ck

    f = _build(("q8p", k, n), lambda: ck.panel_gemm_q8(k, n, 64, k, "float32", "float32", 1, 256))
    x = _arr(rng.standard_normal((1, k)).astype("float32"))
    codes = _arr(rng.integers(-127, 128, (_p(n, 64), k, 64), dtype=np.int8))
    sc = _arr(rng.random((_p(n, 64), 1, 64)).astype("float32") * 0.01)
    of = _arr(np.zeros((_p(n, 64), 1, 64), "float32"))
    out = _arr(np.zeros((1, n), "float32"))
    return lambda: f(x, codes, sc, of, out)


def q_avx2(kernel: str, group: int, parts: int) -> Callable:
    """``q4_avx2`` / ``q8w_avx2`` (group 0: per channel), activation preparation included."""

    def make(k: int, n: int, rng) -> Callable[[], Any]:
        from tvm import te

        from llmc.backends.kernels import cpu_avx2 as A
        from llmc.backends.kernels.cpu_vnni import group_sums

        g = group or k
        kp, ab = A.padded_k(k, g), A.act_block(k, g)

        def prep_fn():
            xt = te.placeholder((1, k), "float32", name="x")
            d, s = A.act_digits(xt, kp, ab, parts)
            return te.create_prim_func([xt, d, s, group_sums(xt, g)])

        fn = A.q4_avx2 if kernel == "q4" else A.q8w_avx2
        prep = _build(("avx2prep", k, g, parts), prep_fn)
        f = _build((kernel + "avx2", k, n, g, parts), lambda: fn(k, n, g, parts, "float32", 1))
        x = _arr(rng.standard_normal((1, k)).astype("float32"))
        xd = _arr(np.zeros((1, parts, kp), "int8"))
        xs = _arr(np.zeros((1, kp // ab, parts), "float32"))
        gs = _arr(np.zeros((1, k // g), "float32"))
        rows = kp // 8 if kernel == "q4" else kp // 4
        codes = _arr(rng.integers(0, 256, (_p(n, NB32), rows, NB32, 4), dtype=np.uint8))
        sc = _arr(rng.random((_p(n, NB32), k // g, NB32)).astype("float32") * 0.01)
        of = _arr(np.full((_p(n, NB32), k // g, NB32), 8.0, "float32"))
        out = _arr(np.zeros((1, n), "float32"))

        def run():
            prep(x, xd, xs, gs)
            f(xd, xs, gs, codes, sc, of, out)

        return run

    return make


def a8_avx2(k: int, n: int, rng) -> Callable[[], Any]:
    from llmc.backends.kernels import cpu_avx2 as A

    aq = cqd._act_quant(k)
    f = _build(("a8avx2", k, n), lambda: A.w8a8_avx2(k, n, 1))
    x = _arr(rng.standard_normal((1, k)).astype("float32"))
    xq, xs = _arr(np.zeros((1, k), "int8")), _arr(np.zeros((1,), "float32"))
    codes = _arr(rng.integers(-127, 128, (_p(n, NB32), (k + 3) // 4, NB32, 4), dtype=np.int8))
    ws = _arr(rng.random((_p(n, NB32), NB32)).astype("float32"))
    out = _arr(np.zeros((1, n), "float32"))

    def run():
        aq(x, xq, xs)
        f(xq, xs, codes, ws, out)

    return run


VARIANTS = {
    "rtn4_g128_portable": q4_portable(128),
    "rtn4_g128_avx2": q_avx2("q4", 128, 3),
    "rtn4_g128_avx2_1": q_avx2("q4", 128, 1),
    "rtn4_g32_portable": q4_portable(32),
    "rtn4_g32_avx2": q_avx2("q4", 32, 3),
    "rtn8_portable": q8_portable,
    "rtn8_avx2": q_avx2("q8w", 0, 3),
    "w8a8_portable": cqd.a8_portable,
    "w8a8_avx2": a8_avx2,
}

#: The pairs the JSON summarizes as "AVX2 kernel speed-up over the portable one".
PAIRS = {
    "rtn4_g128": ("rtn4_g128_portable", "rtn4_g128_avx2"),
    "rtn4_g128_int8act": ("rtn4_g128_portable", "rtn4_g128_avx2_1"),
    "rtn4_g32": ("rtn4_g32_portable", "rtn4_g32_avx2"),
    "rtn8": ("rtn8_portable", "rtn8_avx2"),
    "w8a8": ("w8a8_portable", "w8a8_avx2"),
}


WHOLE = {
    "rtn4_g32": "rtn:bits=4:group=32:exclude=model.embed_tokens:measure=false",
    "rtn8": "rtn:bits=8:group=0:measure=false",
    "w8a8": "w8a8:measure=false",
}

_COMPILE = """
import sys
import llmc.backends.cpu.pipeline as p
from llmc.compile import compile_model
if sys.argv[3] == "portable":
    p.kernel_isa = lambda: "portable"
compile_model(sys.argv[1], target="cpu", passes=sys.argv[2] or None, out=sys.argv[4])
"""


def whole_model(hf: str, work: str, repeats: int, gen: int) -> dict[str, Any]:
    """Decode tokens/s of the AVX2 and portable artifacts, interleaved."""
    import subprocess
    from pathlib import Path

    from llmc.runtime.lm import generate
    from llmc.runtime.tvm_runner import load

    env = dict(os.environ, LLMC_CPU_ISA="avx2", LLMC_NO_PROGRESS="1")
    lms, rules = {}, {}
    for name, spec in WHOLE.items():
        for kernels in ("avx2", "portable"):
            out = Path(work) / f"{name}-{kernels}"
            if not (out / "manifest.json").is_file():
                cmd = [sys.executable, "-c", _COMPILE, hf, spec, kernels, str(out)]
                subprocess.run(cmd, check=True, capture_output=True, env=env)
            man = json.loads((out / "manifest.json").read_text())
            rules[f"{name}_{kernels}"] = {
                "mcpu": man["backend"]["cpu"]["mcpu"],
                "rules": {
                    k: v
                    for k, v in man["backend"]["lowering_rules"].items()
                    if "linear" in k or "qlinear" in k
                },
            }
            lms[f"{name}_{kernels}"] = load(out)
    prompt = list(range(100, 132))
    for lm in lms.values():
        generate(lm, prompt, 4)  # warm-up
    samples: dict[str, list[float]] = {n: [] for n in lms}
    for _ in range(repeats):
        for name, lm in lms.items():
            r = generate(lm, prompt, gen)
            samples[name].append(len(r.step_s) / sum(r.step_s))
            time.sleep(0.2)
    res: dict[str, Any] = {
        n: {
            **rules[n],
            "decode_tokens_per_s_samples": [round(x, 1) for x in s],
            "decode_tokens_per_s_median": round(statistics.median(s), 1),
        }
        for n, s in samples.items()
    }
    res["avx2_speedup_over_portable"] = {
        name: round(
            res[f"{name}_avx2"]["decode_tokens_per_s_median"]
            / res[f"{name}_portable"]["decode_tokens_per_s_median"],
            2,
        )
        for name in WHOLE
    }
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", default="gpt2,llama7b-layer", help="and smoke: one 256x128 linear (a check)"
    )
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=5)
    ap.add_argument("--mcpu", default="haswell", help="LLVM CPU to build for (an AVX2 one)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "cpu_avx2_decode.json"))
    ap.add_argument("--whole-model", metavar="HF_DIR", help="also time whole-model decode")
    ap.add_argument("--work", default="/tmp/llmc-cpu-avx2", help="whole-model artifacts")
    ap.add_argument("--gen", type=int, default=64, help="whole-model new tokens per round")
    args = ap.parse_args(argv)
    MCPU[0] = args.mcpu
    threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
    load_before = load_average()
    results: dict[str, Any] = {}
    host_target, cqd._target = cqd._target, _target  # every kernel is built for --mcpu
    try:
        for model in filter(None, args.models.split(",")):
            shapes = cqd.model_shapes(model)
            runs: dict[str, list[Callable[[], Any]]] = {}
            for v in args.variants.split(","):
                rng = np.random.default_rng(0)
                runs[v] = [VARIANTS[v](k, n, rng) for k, n in shapes]
                for r in runs[v]:
                    r()  # warm-up
            wall: dict[str, list[float]] = {v: [] for v in runs}
            cpu: dict[str, list[float]] = {v: [] for v in runs}
            for _ in range(args.repeats):
                for v, calls in runs.items():  # interleaved
                    t0, c0 = time.perf_counter(), time.process_time()
                    for _ in range(args.tokens):
                        for c in calls:
                            c()
                    cpu[v].append((time.process_time() - c0) / args.tokens * 1e3)
                    wall[v].append((time.perf_counter() - t0) / args.tokens * 1e3)
                    time.sleep(0.1)
            res = {
                v: {
                    "wall_ms_per_token_samples": [round(t, 3) for t in wall[v]],
                    "cpu_ms_per_token_samples": [round(t, 3) for t in cpu[v]],
                    "wall_ms_per_token_median": round(statistics.median(wall[v]), 3),
                    "cpu_ms_per_token_median": round(statistics.median(cpu[v]), 3),
                }
                for v in runs
            }
            speedup = {
                name: {
                    "cpu_time": round(
                        res[a]["cpu_ms_per_token_median"] / res[b]["cpu_ms_per_token_median"], 2
                    ),
                    "wall_time": round(
                        res[a]["wall_ms_per_token_median"] / res[b]["wall_ms_per_token_median"], 2
                    ),
                }
                for name, (a, b) in PAIRS.items()
                if a in res and b in res
            }
            results[model] = {
                "shapes": shapes,
                "variants": res,
                "avx2_speedup_over_portable": speedup,
            }
            print(model, {v: r["cpu_ms_per_token_median"] for v, r in res.items()}, speedup)
    finally:
        cqd._target = host_target
    whole = None
    if args.whole_model:
        load_whole = load_average()
        whole = whole_model(args.whole_model, args.work, args.repeats, args.gen)
        whole = {"load_average_before": load_whole, "load_average_after": load_average(), **whole}
        print("whole model", whole)
    doc = {
        "what": "decode linears of one token (M=1), kernel level, interleaved; see the script",
        "command": f"TVM_NUM_THREADS={threads} python {shlex.join(sys.argv)}",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "threads": threads, "built_for_mcpu": args.mcpu},
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "note": "machine shared with other jobs while measured: see the load averages; the "
        "speed-ups compare medians of interleaved samples (process CPU time and wall time)",
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "repeats": args.repeats,
        "tokens_per_sample": args.tokens,
        "results": results,
        "whole_model": whole,
    }
    from pathlib import Path

    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
