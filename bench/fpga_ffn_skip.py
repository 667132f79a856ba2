"""FFN-skip on the FlightLLM model: simulated decode speed against the skip rate.

Usage::

    python bench/fpga_ffn_skip.py         # writes bench/fpga_ffn_skip.json, prints Markdown

LLaMA2-7B (architecture-only) on the U280 with bench/fpga_sim.py's ``int8`` compression, 128
prompt + 512 generated tokens: the dense graph, and the ffn-skip graph (``threshold=0.9``: an
architecture-only model has no weights to calibrate on, and the cycle model does not read the
threshold) at ``--skip-rate`` 0, 0.25 and 0.5, i.e. that fraction of the 32 decode FFN blocks
skipped per token (the last skippable ones). The same figures come from
``llmc simulate llama2-7b --target u280 --passes '<int8>,ffn-skip:threshold=0.9' --skip-rate R``.

Then ``tiny`` with real weights (int4, 8:16, group 64) on the functional simulator: a greedy
decode with skipping on, the skip fraction the device took and the cycle model's replay of exactly
the streams it ran, against the dense tiny graph.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path

from _common import ROOT, cpu_name, load_average

sys.path.insert(0, str(ROOT))

INT8 = "magnitude:pattern=8:16:include=q_proj|k_proj,rtn:bits=8:group=0:exclude="
SKIP = "ffn-skip:threshold=0.9"
RATES = (0.0, 0.25, 0.5)
PREFILL, DECODE = 128, 512


def llama2_7b() -> dict:
    from llmc.compile import run_passes
    from llmc.fpga.arch import load_arch
    from llmc.fpga.program import build_program
    from llmc.fpga.sim import simulate
    from llmc.frontends import zoo

    arch = load_arch("u280")
    out: dict = {}
    g = zoo.build("llama2-7b")
    run_passes(g, INT8, None, target="u280", options={})
    t = time.perf_counter()
    r = simulate(g, arch, PREFILL, DECODE)
    out["dense"] = _row(r, time.perf_counter() - t)
    run_passes(g, SKIP, None, target="u280", options={})
    prog = build_program(g, arch)
    for rate in RATES:
        t = time.perf_counter()
        r = simulate(prog, arch, PREFILL, DECODE, skip_rate=rate)
        out[f"skip_rate_{rate:g}"] = _row(r, time.perf_counter() - t)
    out["branches_per_decode_stream"] = len(g.meta["ffn_skip"]["skippable"])
    return out


def _row(r, seconds: float) -> dict:
    return {
        "decode_tokens_per_s": r.decode_tokens_per_s,
        "decode_ms_per_token": r.decode_ms_per_token,
        "prefill_ms": r.prefill_ms,
        "hbm_bandwidth_utilization": r.hbm_bandwidth_utilization,
        "instructions_per_decode_token": r.streams["instructions_per_decode_token"],
        "sim_seconds": seconds,
    }


def tiny() -> dict:
    import numpy as np

    from llmc.fpga.arch import load_arch
    from llmc.fpga.compress import compress
    from llmc.fpga.funcsim import FuncRunner
    from llmc.fpga.program import build_program
    from llmc.fpga.sim import replay
    from llmc.frontends import load_model
    from llmc.passes import build_pipeline
    from llmc.passes.base import PassContext

    prompt = np.frombuffer(b"def fib(n):\n    return n if n < 2 else fib(n - 1)\n", np.uint8)
    steps = 32
    arch = load_arch("u280")
    out: dict = {"prompt_tokens": int(prompt.size), "decode_steps": steps}
    g = load_model("tiny").graph
    compress(g, n=8, bits=4, group=64)
    for name, spec in (("dense", None), ("ffn-skip:threshold=0.5", "ffn-skip:threshold=0.5")):
        if spec:
            build_pipeline(spec).run(g, PassContext(target="u280"))
        prog = build_program(g, arch)
        r = FuncRunner(prog)
        r.decode_start = int(prompt.size)
        logits = r.prefill(prompt)
        tok = int(np.argmax(logits[-1]))
        toks = []
        for _ in range(steps):
            toks.append(tok)
            tok = int(np.argmax(r.decode(tok)))
        rep = replay(prog, r.trace)
        out[name] = {
            "fpga_decode_ms_per_token": rep["fpga_decode_ms_per_token"],
            "fpga_prefill_ms": rep["fpga_prefill_ms"],
            "generated": toks,
            **({k: v for k, v in r.skip_stats().items()} if spec else {}),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "fpga_ffn_skip.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    load_at_start = load_average()
    result = {
        "command": shlex.join(["python", "bench/fpga_ffn_skip.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": load_at_start,
        },
        "llama2_7b_u280_int8": {
            "model": "llama2-7b (architecture-only)",
            "passes": f"{INT8},{SKIP}",
            "prompt": PREFILL,
            "generated": DECODE,
            **llama2_7b(),
        },
        "tiny_u280_int4_8of16": tiny(),
        "wall_seconds": 0.0,
    }
    result["wall_seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(markdown(result))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def markdown(result: dict) -> str:
    r = result["llama2_7b_u280_int8"]
    lines = [
        "| LLaMA2-7B, u280, int8 | decode tokens/s | ms/token | HBM bandwidth |",
        "|---|---:|---:|---:|",
    ]
    for key, label in [("dense", "dense graph")] + [
        (f"skip_rate_{x:g}", f"ffn-skip graph, skip rate {x:g}") for x in RATES
    ]:
        row = r[key]
        lines.append(
            f"| {label} | {row['decode_tokens_per_s']:.1f} | {row['decode_ms_per_token']:.2f} | "
            f"{100 * row['hbm_bandwidth_utilization']:.1f} % |"
        )
    t = result["tiny_u280_int4_8of16"]
    s = t["ffn-skip:threshold=0.5"]
    lines += [
        "",
        f"tiny (functional simulator, {t['decode_steps']} greedy decode steps): dense "
        f"{t['dense']['fpga_decode_ms_per_token'] * 1e3:.1f} us/token, ffn-skip "
        f"{s['fpga_decode_ms_per_token'] * 1e3:.1f} us/token at a measured skip fraction "
        f"{s['ffn_skip_fraction']:.3f} (per layer {s['ffn_skip_histogram']})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
