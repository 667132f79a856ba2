"""llmc's roofline against LLM-Viewer's analytic model, LLaMA2-7B on A100 80GB, per op group.

LLM-Viewer (github.com/hahnyuan/LLM-Viewer, model_analyzer.py, the analysis behind the tables of
"LLM Inference Unveiled: Survey and Roofline Model Insights") counts each op of a Llama layer with
closed formulas. This script evaluates those formulas (written out below from its source, without
FlashAttention, W16A16KV16) next to ``llmc roofline`` on the real LLaMA2-7B configuration
(architecture-only, no weights needed), on the same hardware figures (A100 80GB: 2039 GB/s,
312 TFLOP/s f16 — identical in both tools), and writes the side-by-side table. LLM-Viewer's decode
step attends over ``seqlen`` cached tokens: llmc is run with ``--decode 0`` so its decode step
sees the same cache length.

    python bench/roofline_llmviewer.py [--seqlen 1024] [--batch 1] [-o bench/roofline_llmviewer.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import git  # noqa: E402

# LLaMA2-7B (meta-llama/Llama-2-7b-hf config.json)
H, FFN, HEADS, KVH, LAYERS, VOCAB = 4096, 11008, 32, 32, 32, 32000
BW, PEAK = 2039e9, 312e12  # A100 80GB, dense f16 (both tools' figure)

#: llmc group -> the LLM-Viewer rows it corresponds to
MAPPING = {
    "attn.q_proj": ["q_proj"],
    "attn.k_proj": ["k_proj"],
    "attn.v_proj": ["v_proj"],
    "attn.o_proj": ["out_proj"],
    "attention": ["qk_matmul", "softmax", "sv_matmul"],
    "kv_cache": [],
    "norm": ["attn_norm", "mlp_norm"],
    "residual": ["attn_add", "mlp_add"],
    "ffn.gate_proj": ["gate_proj"],
    "ffn.up_proj": ["up_proj"],
    "ffn.act": ["mlp_act"],
    "ffn.down_proj": ["down_proj"],
    "rope": [],
    "attn.other": [],
    "embed": [],
    "lm_head": [],
}


def llm_viewer(seqlen: int, b: int) -> dict[str, dict[str, dict[str, float]]]:
    """LLM-Viewer's per-layer counts (OPs, bytes) for one layer, both stages, a=w=kv=2 bytes."""
    a = w = kv = 2.0
    hd = H // HEADS
    out: dict[str, dict[str, dict[str, float]]] = {"prefill": {}, "decode": {}}

    def put(stage: str, name: str, ops: float, *nbytes: float) -> None:
        out[stage][name] = {"flops": ops, "bytes": sum(nbytes)}

    linears = {
        "q_proj": (H, H),
        "k_proj": (H, H * KVH // HEADS),
        "v_proj": (H, H * KVH // HEADS),
        "out_proj": (H, H),
        "gate_proj": (H, FFN),
        "up_proj": (H, FFN),
        "down_proj": (FFN, H),
    }
    for name, (ic, oc) in linears.items():
        kvp = name in ("k_proj", "v_proj")
        for stage, rows in (("decode", b), ("prefill", b * seqlen)):
            put(
                stage,
                name,
                2 * ic * oc * rows,
                ic * oc * w,
                ic * rows * a,
                0 if kvp else oc * rows * a,
                oc * rows * kv if kvp else 0,
            )
    s = seqlen
    # decode: one query row against s cached rows
    put(
        "decode",
        "qk_matmul",
        2 * s * hd * HEADS * b,
        hd * b * HEADS * a,
        s * b * HEADS * a,
        s * hd * b * KVH * kv,
    )
    put(
        "decode",
        "sv_matmul",
        2 * s * hd * HEADS * b,
        s * b * HEADS * a,
        hd * b * HEADS * a,
        s * hd * b * KVH * kv,
    )
    put("decode", "softmax", 5 * b * HEADS * s, 2 * b * HEADS * s * a)
    # prefill: s query rows
    put(
        "prefill",
        "qk_matmul",
        2 * s * s * hd * HEADS * b,
        s * s * b * HEADS * a,
        2 * s * hd * b * KVH * kv,
    )
    put(
        "prefill",
        "sv_matmul",
        2 * s * s * hd * HEADS * b,
        s * s * b * HEADS * a,
        s * hd * b * HEADS * a,
        s * hd * b * KVH * kv,
    )
    put("prefill", "softmax", 5 * b * HEADS * s * s, 2 * b * HEADS * s * s * a)
    for stage, rows in (("decode", b), ("prefill", b * s)):
        for name in ("attn_norm", "mlp_norm"):
            put(stage, name, 7 * rows * H, 2 * rows * H * a)
        for name in ("attn_add", "mlp_add"):
            put(stage, name, rows * H, 2 * rows * H * a)
        put(stage, "mlp_act", 2 * rows * H, 3 * rows * H * a)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("-o", "--out", default=None)
    a = ap.parse_args()

    from llmc.codesign.roofline import Scenario, analyze
    from llmc.frontends import zoo
    from llmc.targets import get_target, resolve_spec

    spec = resolve_spec(get_target("a100"))
    assert spec.mem_bandwidth == BW and spec.peak("f16") == PEAK
    g = zoo.build("llama2-7b")
    rep = analyze(
        g,
        spec,
        Scenario(batch=a.batch, prompt=a.seqlen, decode=0),
        model="llama2-7b",
        target="a100",
    )
    lv = llm_viewer(a.seqlen, a.batch)

    def t_ms(flops: float, nbytes: float) -> float:
        return 1e3 * max(flops / PEAK, nbytes / BW)

    result: dict[str, Any] = {
        "benchmark": "llmc roofline vs LLM-Viewer's analytic model, LLaMA2-7B, A100 80GB",
        "command": " ".join(["python", *sys.argv]),
        "settings": {
            "seqlen": a.seqlen,
            "batch": a.batch,
            "bits": "w16a16kv16",
            "flash_attention": False,
            "llmc": f"llmc roofline llama2-7b --target a100 "
            f"--prompt {a.seqlen} --decode 0 --batch {a.batch}",
        },
        "date": __import__("datetime")
        .datetime.now(__import__("datetime").timezone.utc)
        .isoformat(timespec="seconds"),
        "llmc_commit": git("rev-parse", "HEAD").strip(),
        "note": "analytic only: no timing, so the machine and load do not matter",
        "stages": {},
    }
    for stage in ("prefill", "decode"):
        rows = []
        groups = {r.group: r for r in rep.groups(stage)}
        for grp, names in MAPPING.items():
            r = groups.get(grp)
            lf = sum(lv[stage][n]["flops"] for n in names) * LAYERS
            lb = sum(lv[stage][n]["bytes"] for n in names) * LAYERS
            lt = sum(t_ms(lv[stage][n]["flops"], lv[stage][n]["bytes"]) for n in names) * LAYERS
            rows.append(
                {
                    "group": grp,
                    "llm_viewer_rows": names,
                    "llmc_gflop": (r.flops if r else 0.0) / 1e9,
                    "llm_viewer_gflop": lf / 1e9,
                    "llmc_mb": (r.bytes if r else 0.0) / 1e6,
                    "llm_viewer_mb": lb / 1e6,
                    "llmc_ms": r.time_ms if r else 0.0,
                    "llm_viewer_ms": lt,
                }
            )
        result["stages"][stage] = {
            "rows": rows,
            "llmc_total_ms": rep.totals[stage]["time_ms"],
            "llm_viewer_total_ms": sum(x["llm_viewer_ms"] for x in rows),
        }
    text = json.dumps(result, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    for stage, st in result["stages"].items():
        print(
            f"\n{stage}: llmc {st['llmc_total_ms']:.3f} ms, LLM-Viewer {st['llm_viewer_total_ms']:.3f} ms"
        )
        print(
            f"{'group':16s} {'GFLOP llmc':>11s} {'LLM-V':>9s} {'MB llmc':>9s} {'LLM-V':>9s} "
            f"{'ms llmc':>9s} {'LLM-V':>9s}"
        )
        for x in st["rows"]:
            print(
                f"{x['group']:16s} {x['llmc_gflop']:11.2f} {x['llm_viewer_gflop']:9.2f} "
                f"{x['llmc_mb']:9.1f} {x['llm_viewer_mb']:9.1f} {x['llmc_ms']:9.4f} "
                f"{x['llm_viewer_ms']:9.4f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
