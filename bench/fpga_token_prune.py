"""Token pruning on the FlightLLM model: LLaMA2-7B (architecture only) on the U280, a 1024-token
prompt, prefill time / time to first token with token-prune keep 1.0 / 0.75 / 0.5 / 0.3 against
the dense model.

Usage::

    python bench/fpga_token_prune.py      # writes bench/fpga_token_prune.json, prints a table

The weights are bench/fpga_sim.py's ``int8`` recipe (int8 everywhere, q/k 8:16, so the model
fits the U280's HBM); token-prune runs AIM's default schedule (every token up to layer 8, then
linearly fewer until layer 16, then ``keep``), scored by attention (``window=8``, sink and the
last 4 tokens kept). The cycle model runs every stream in full (layer folding does not apply
when layers run on different row counts): the first segment's chunk streams on all 1024 rows,
each top-k stream, then every later segment's chunk streams on the rows it kept. TTFT is the
prefill: its last row's logits give the first generated token.
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

from _common import ROOT, cpu_name, git, load_average

sys.path.insert(0, str(ROOT))

PROMPT = 1024
KEEPS = (1.0, 0.75, 0.5, 0.3)
WEIGHTS = "magnitude:pattern=8:16:include=q_proj|k_proj,rtn:bits=8:group=0:exclude="


def graph(passes: str):
    from llmc.compile import run_passes
    from llmc.frontends import zoo

    g = zoo.build("llama2-7b")
    run_passes(g, passes, None, target="u280", options={})
    return g


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "fpga_token_prune.json"))
    ap.add_argument("--keeps", default=",".join(map(str, KEEPS)), help="token-prune keep ratios")
    args = ap.parse_args(argv)
    keeps = [float(k) for k in args.keeps.split(",") if k]
    load_at_start = load_average()
    from llmc.fpga.arch import load_arch
    from llmc.fpga.fold import FullCosts
    from llmc.fpga.perf import PerfModel
    from llmc.fpga.program import build_program
    from llmc.fpga.sim import simulate

    t0 = time.perf_counter()
    arch = load_arch("u280")
    rows = []
    for keep in (None, *keeps):
        passes = WEIGHTS if keep is None else f"{WEIGHTS},token-prune:keep={keep}"
        g = graph(passes)
        prog = build_program(g, arch)
        t = time.perf_counter()
        r = simulate(prog, arch, PROMPT, 0)
        secs = time.perf_counter() - t
        plan = prog.prune
        counts = plan.counts(PROMPT) if plan is not None else [PROMPT]
        layer_rows = []
        for layer in range(int(g.meta["num_layers"])):
            seg = sum(1 for p in (plan.points if plan else []) if layer >= p.layer)
            layer_rows.append(counts[seg])
        by_op = r.breakdown["by_instruction"]
        # the top-k streams on their own (scores loaded, SFU topk, kept rows / positions stored)
        ms = 1e3 / arch.clock_hz
        sel = [] if plan is None else plan.prefill_streams(PROMPT, arch.prefill_bucket)
        costs = FullCosts(prog, PerfModel(arch))
        select_ms = sum(costs.perf(st, b).cycles for st, b in sel if st.startswith("psel")) * ms
        rows.append(
            {
                "config": "dense" if keep is None else f"token-prune:keep={keep}",
                "keep": keep,
                "prefill_ms": r.prefill_ms,
                "ttft_ms": r.prefill_ms,
                "rows_per_layer": layer_rows,
                "prefill_token_fraction": sum(layer_rows) / (len(layer_rows) * PROMPT),
                "pruning_points": len(plan.points) if plan else 0,
                "prefill_streams": r.streams["prefill_chunks"],
                "sfu_ms": by_op.get("SFU", {}).get("busy_ms", 0.0),
                "topk_streams_ms": select_ms,
                "mpe_utilization_prefill": r.mpe_utilization["prefill"],
                "instruction_mb_bucketed": r.instruction_bytes / 1e6,
                "notes": r.notes,
                "sim_seconds": secs,
            }
        )
        print(
            f"{rows[-1]['config']:28s} prefill {r.prefill_ms:9.2f} ms  ({secs:.1f} s)", flush=True
        )
    dense = rows[0]["prefill_ms"]
    for row in rows:
        row["speedup_vs_dense"] = dense / row["prefill_ms"]
    out = {
        "what": "LLaMA2-7B (architecture only, int8, q/k 8:16) on u280: 1024-token prompt, "
        "prefill / TTFT simulated with token-prune keep ratios against dense",
        "command": shlex.join(["python", "bench/fpga_token_prune.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "machine": {
            "cpu": cpu_name(),
            "python": platform.python_version(),
            "load_average_at_start": load_at_start,
        },
        "prompt": PROMPT,
        "weights": WEIGHTS,
        "results": rows,
        "seconds": time.perf_counter() - t0,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print()
    print("| config | prefill / TTFT ms | vs dense | kept token fraction | top-k streams ms |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['config']} | {row['prefill_ms']:.1f} | {row['speedup_vs_dense']:.2f}x | "
            f"{row['prefill_token_fraction']:.3f} | {row['topk_streams_ms']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
