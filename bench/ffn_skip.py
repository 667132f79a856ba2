"""FFN skipping vs FFN dropping at equal ratios, in the reference interpreter.

    python bench/ffn_skip.py [--model tiny] [--max-tokens N] [--ratios 0.1,0.2,0.3,0.4] [--protect P]

Per ratio, ``ffn-skip:ratio=R`` and ``ffn-drop:ratio=R`` are applied to the model and scored on
the held-out split exactly as ``llmc eval MODEL --passes SPEC --json`` scores them (windows of
``--window`` tokens, one forward per window; an ffn-skip window is a one-token prompt and its
teacher-forced continuation, whose first ``warmup`` tokens run the full model): perplexity,
next-token agreement with the dense model, and the fraction of decode FFN blocks that did not
run (ffn-drop: the dropped share of the layers). Writes ``--out`` (JSON) and prints a Markdown
table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmc.data import eval_windows  # noqa: E402
from llmc.frontends import load_model  # noqa: E402
from llmc.passes import PassContext, build_pipeline  # noqa: E402
from llmc.runtime.lm import InterpLM, _scored_logits  # noqa: E402


def score(lm: InterpLM, windows: torch.Tensor, ref: torch.Tensor | None, batch: int) -> dict:
    nll, count, agree, preds = 0.0, 0, 0, []
    lm.decode_start = 1
    lm.reset_skip_stats()
    for i in range(0, windows.shape[0], batch):
        chunk = windows[i : i + batch]
        logits = _scored_logits(lm, chunk, 0)
        lp = torch.log_softmax(logits, dim=-1)
        tgt = chunk[:, 1:]
        nll -= float(lp.gather(-1, tgt[..., None]).sum())
        count += tgt.numel()
        am = logits.argmax(-1)
        preds.append(am)
        if ref is not None:
            agree += int((ref[i : i + batch] == am).sum())
    out = {"perplexity": float(torch.tensor(nll / count).exp()), "tokens": count}
    out["agreement"] = agree / count if ref is not None else 1.0
    stats = lm.skip_stats()
    if stats:
        out.update(stats)
    out["_argmax"] = torch.cat(preds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.4")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--protect", type=int, default=None, help="both passes' protect option")
    ap.add_argument("--out", default=str(ROOT / "bench" / "ffn_skip.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = load_model(a.model)
    tok = m.tokenizer if a.model != "tiny" else None
    window = min(a.window, int(m.graph.meta.get("max_position_embeddings", a.window)))
    windows = eval_windows(window, max_tokens=a.max_tokens, tokenizer=tok)
    t0 = time.perf_counter()
    dense = score(InterpLM(m.graph), windows, None, a.batch)
    ref = dense.pop("_argmax")
    rows = [{"method": "dense", "passes": "", "ratio": 0.0, **dense, "seconds": 0.0}]
    print(f"dense {dense['perplexity']:.4f} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    for r in [float(x) for x in a.ratios.split(",")]:
        for method in ("ffn-skip", "ffn-drop"):
            spec = f"{method}:ratio={r}"
            if a.protect is not None:
                spec += f":protect={a.protect}"
            g = m.graph.copy()
            t = time.perf_counter()
            ctx = PassContext(calib_samples=a.calib_samples, tokenizer=tok)
            rep = dict(build_pipeline(spec).run(g, ctx)[0])
            secs = time.perf_counter() - t
            got = score(InterpLM(g), windows, ref, a.batch)
            got.pop("_argmax")
            if method == "ffn-drop":
                got["ffn_skip_fraction"] = rep["skip_fraction"]
            row = {"method": method, "passes": spec, "ratio": r, **got, "seconds": secs}
            row["report"] = {k: v for k, v in rep.items() if k not in ("options",)}
            rows.append(row)
            print(
                f"{spec}: ppl {got['perplexity']:.4f} agree {got['agreement']:.4f} "
                f"skipped {got['ffn_skip_fraction']:.4f}",
                file=sys.stderr,
            )
    info = {
        "model": a.model,
        "window": window,
        "windows": int(windows.shape[0]),
        "tokens": rows[0]["tokens"],
        "calib_samples": a.calib_samples,
        "protect": a.protect,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": a.threads,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    Path(a.out).write_text(json.dumps(info, indent=2, default=str) + "\n")
    print("| method | passes | perplexity | Δ ppl | agreement | FFN blocks skipped | layers |")
    print("|---|---|---:|---:|---:|---:|---|")
    base = rows[0]["perplexity"]
    for row in rows:
        rep = row.get("report", {})
        where = rep.get("layers_dropped", rep.get("layers_skippable", ""))
        hist = row.get("ffn_skip_histogram")
        if row["method"] == "ffn-skip" and hist:
            where = "skips per layer " + "/".join(str(h) for h in hist)
        elif row["method"] == "ffn-drop":
            where = f"dropped {where}"
        print(
            f"| {row['method']} | `{row['passes'] or '—'}` | {row['perplexity']:.4f} | "
            f"{row['perplexity'] - base:+.4f} | {row['agreement']:.4f} | "
            f"{row.get('ffn_skip_fraction', 0.0):.4f} | {where or '—'} |"
        )


if __name__ == "__main__":
    main()
