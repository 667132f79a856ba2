"""Measure the compression passes on the embedded ``tiny`` model: the table of docs/passes.md.

Usage::

    python bench/passes_quality.py                       # writes bench/passes_quality.json
    python bench/passes_quality.py --only wanda,gptq     # a subset (rows whose spec matches)

For every pipeline it reports held-out perplexity, next-token agreement with the dense model and
the wall time the passes took, with the definitions and defaults of ``llmc eval`` (windows of 256
tokens over the whole held-out split, batch 8; calibration 64 x 256 tokens of the train split), so
each row can be reproduced with ``llmc eval tiny --passes SPEC --json``. It also checks the
orderings the papers report and records whether each holds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

from _common import ROOT, cpu_name

sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from llmc.passes import PassContext  # noqa: E402
from llmc.passes.calibration import DEFAULT_SEQLEN  # noqa: E402
from llmc.passes.quality import eval_windows, evaluate, reference  # noqa: E402

ROWS: list[tuple[str, str]] = [
    ("dense", ""),
    ("magnitude 50%", "magnitude:sparsity=0.5"),
    ("Wanda 50%", "wanda:sparsity=0.5"),
    ("SparseGPT 50%", "sparsegpt:sparsity=0.5"),
    ("magnitude 2:4", "magnitude:pattern=2:4"),
    ("Wanda 2:4", "wanda:pattern=2:4"),
    ("SparseGPT 2:4", "sparsegpt:pattern=2:4"),
    ("RTN W8 (per channel)", "rtn:bits=8:group=0"),
    ("RTN W4 g128", "rtn:bits=4:group=128"),
    ("GPTQ W4 g128", "gptq:bits=4:group=128"),
    ("GPTQ W4 g128 act-order", "gptq:bits=4:group=128:act_order=true"),
    ("RTN W3 g128", "rtn:bits=3:group=128"),
    ("GPTQ W3 g128", "gptq:bits=3:group=128"),
    ("naive W8A8 (per-token)", "w8a8"),
    ("SmoothQuant W8A8 (per-token)", "smoothquant:alpha=0.5,w8a8"),
    ("SmoothQuant α=0.85 W8A8 (per-token)", "smoothquant:alpha=0.85,w8a8"),
    ("naive W8A8 (per-tensor static)", "w8a8:act=tensor"),
    ("SmoothQuant W8A8 (per-tensor static)", "smoothquant:alpha=0.5,w8a8:act=tensor"),
    ("FLAP FFN channels -20%", "flap:ratio=0.2"),
]

# (claim, better spec, worse spec): "better" must have lower perplexity
ORDERINGS = [
    ("Wanda beats magnitude at 50%", "wanda:sparsity=0.5", "magnitude:sparsity=0.5"),
    ("SparseGPT beats magnitude at 50%", "sparsegpt:sparsity=0.5", "magnitude:sparsity=0.5"),
    ("Wanda beats magnitude at 2:4", "wanda:pattern=2:4", "magnitude:pattern=2:4"),
    ("SparseGPT beats magnitude at 2:4", "sparsegpt:pattern=2:4", "magnitude:pattern=2:4"),
    ("GPTQ beats RTN at 4 bits", "gptq:bits=4:group=128", "rtn:bits=4:group=128"),
    ("GPTQ beats RTN at 3 bits", "gptq:bits=3:group=128", "rtn:bits=3:group=128"),
    ("SmoothQuant beats naive W8A8 (per-token)", "smoothquant:alpha=0.5,w8a8", "w8a8"),
    (
        "SmoothQuant beats naive W8A8 (per-tensor)",
        "smoothquant:alpha=0.5,w8a8:act=tensor",
        "w8a8:act=tensor",
    ),
]


def machine() -> dict:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def markdown(result: dict) -> str:
    lines = [
        "| method | passes | perplexity | Δ ppl | agreement | pass time (s) | stored weights |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    dense = result["rows"][0]["perplexity"]
    for r in result["rows"]:
        spec = f"`{r['passes']}`" if r["passes"] else "—"
        wb = f"{r['weight_mb']:.2f} MB"
        lines.append(
            f"| {r['name']} | {spec} | {r['perplexity']:.4f} | {r['perplexity'] - dense:+.4f} "
            f"| {r['agreement']:.4f} | {r['pass_seconds']:.1f} | {wb} |"
        )
    lines.append("")
    for o in result["orderings"]:
        mark = "holds" if o["holds"] else "DOES NOT HOLD"
        lines.append(
            f"- {o['claim']}: {mark} ({o['better_ppl']:.4f} vs {o['worse_ppl']:.4f} perplexity, "
            f"{o['better_agreement']:.4f} vs {o['worse_agreement']:.4f} agreement)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument(
        "--out",
        type=Path,
        help="default: bench/passes_quality.json, written by full runs only (not with --only)",
    )
    ap.add_argument("--only", default="", help="comma-separated substrings of specs to run")
    ap.add_argument("--max-tokens", type=int, default=None, help="evaluate a prefix only")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from llmc.frontends import load_model

    t_start = time.perf_counter()
    graph = load_model(a.model).graph
    windows = eval_windows(graph, 256, a.max_tokens)
    ref = reference(graph, windows)
    wanted = [s for s in a.only.split(",") if s]
    rows = []
    for name, spec in ROWS:
        if spec and wanted and not any(w in spec for w in wanted):
            continue
        t0 = time.perf_counter()
        g = graph
        if spec:
            res = evaluate(graph, spec, ref=ref, ctx=PassContext())
        else:
            res = {
                "perplexity": ref.perplexity,
                "nll": ref.nll,
                "agreement": 1.0,
                "pass_seconds": 0.0,
                "report": [],
                "tokens": int(windows[:, 1:].numel()),
                "weight_bytes": sum(p.storage_bytes() for p in graph.params.values()),
            }
        weight_bytes = res["weight_bytes"]
        del g
        row = {
            "name": name,
            "passes": spec,
            "perplexity": res["perplexity"],
            "agreement": res["agreement"],
            "pass_seconds": res["pass_seconds"],
            "weight_mb": None if weight_bytes is None else weight_bytes / 1e6,
            "tokens": res["tokens"],
            "command": f"llmc eval {a.model} --passes '{spec}' --json"
            if spec
            else f"llmc eval {a.model} --json",
            "report": [{k: v for k, v in rec.items() if k != "layers"} for rec in res["report"]],
            "layers": [rec.get("layers", []) for rec in res["report"]],
        }
        rows.append(row)
        print(
            f"{name:38s} ppl={row['perplexity']:.4f} agr={row['agreement']:.4f} "
            f"passes={row['pass_seconds']:.1f}s (row {time.perf_counter() - t0:.0f}s)",
            file=sys.stderr,
            flush=True,
        )
    by_spec = {r["passes"]: r for r in rows}
    orderings = []
    for claim, better, worse in ORDERINGS:
        if better in by_spec and worse in by_spec:
            b, w = by_spec[better], by_spec[worse]
            orderings.append(
                {
                    "claim": claim,
                    "better": better,
                    "worse": worse,
                    "holds": b["perplexity"] < w["perplexity"],
                    "better_ppl": b["perplexity"],
                    "worse_ppl": w["perplexity"],
                    "better_agreement": b["agreement"],
                    "worse_agreement": w["agreement"],
                }
            )
    result = {
        "command": "python " + " ".join(["bench/passes_quality.py", *(argv or sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "model": a.model,
        "eval": {
            "split": "heldout",
            "window": int(windows.shape[1]),
            "windows": int(windows.shape[0]),
            "tokens": int(windows[:, 1:].numel()),
        },
        "calibration": {
            "source": "llmc.data train split",
            "samples": PassContext().calib_samples,
            "seqlen": DEFAULT_SEQLEN,
        },
        "dense_perplexity": ref.perplexity,
        "rows": rows,
        "orderings": orderings,
        "wall_seconds": time.perf_counter() - t_start,
    }
    out = a.out or (None if wanted else ROOT / "bench" / "passes_quality.json")
    if out is not None:
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
