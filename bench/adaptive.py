"""Quality of the input-adaptive passes (issue 11): FFN skipping vs dropping, token pruning by
attention / PageRank / evenly spaced / random at equal keep, in the reference interpreter.

    python bench/adaptive.py [--model tiny|PATH.gguf] [--part ffn,prune] [--out FILE]

``ffn`` part, per ratio R in ``--ratios`` and method in (ffn-skip, ffn-drop), scored as
``llmc eval MODEL --passes SPEC --json`` scores them (windows of ``--window`` tokens, one forward
each; an ffn-skip window is a one-token prompt and its teacher-forced continuation):
perplexity, next-token agreement with the dense model, the FFN blocks that did not run; and
greedy-output agreement: ``--prompts`` held-out prompts of ``--ffn-prompt`` tokens, ``--new``
greedy tokens each, compared with the dense model's (``exact``: share of prompts whose whole
output is equal; ``prefix``: mean share of the output before the first difference).

``prune`` part, per average keep K in ``--keeps`` and score in (attention, pagerank, uniform,
random, attention+adaptive): ``token-prune:average=K:l1=..:l2=..:score=S``; windows of
``--prompt`` + ``--cont`` tokens: the prompt is prefilled (pruned), the continuation decoded
against the pruned cache and scored (``llmc eval --prompt-len``): perplexity and agreement on the
continuation, ``prefill_token_fraction``, prefill FLOPs relative to dense; greedy agreement on
``--prompts`` prompts of ``--prompt`` tokens.

Writes ``--out`` (JSON, with the machine, date, load average and command) and prints Markdown
tables.
"""

from __future__ import annotations

import argparse
import json
import os
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
from llmc.runtime.lm import InterpLM, evaluate, generate  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from ffn_skip import score as ffn_score  # noqa: E402


def prompts_from(windows: torch.Tensor, n: int, length: int) -> list[list[int]]:
    """``n`` prompts of ``length`` tokens, from evenly spaced held-out windows."""
    step = max(windows.shape[0] // n, 1)
    return [windows[i * step % windows.shape[0], :length].tolist() for i in range(n)]


def greedy(lm: InterpLM, prompts: list[list[int]], new: int) -> list[list[int]]:
    return [generate(lm, p, new).tokens for p in prompts]


def agreement(outs: list[list[int]], ref: list[list[int]]) -> dict[str, float]:
    exact, prefix = 0, 0.0
    for a, b in zip(outs, ref, strict=True):
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(b))
        exact += int(a == b)
        prefix += n / max(len(b), 1)
    return {"greedy_exact": exact / len(ref), "greedy_prefix": prefix / len(ref)}


def apply(
    graph, spec: str, tok, calib: int, seqlen: int | None = None
) -> tuple[InterpLM, dict, float]:
    """The pass applied to a copy; ``seqlen``: calibration window (token-prune: the prompt length
    it will prune, so that adaptive thresholds see prompts of the length they are used on)."""
    g = graph.copy()
    t = time.perf_counter()
    ctx = PassContext(calib_samples=calib, calib_seqlen=seqlen, tokenizer=tok)
    rep = dict(build_pipeline(spec).run(g, ctx)[0])
    return InterpLM(g), rep, time.perf_counter() - t


def ffn_part(m, tok, a) -> list[dict]:
    window = min(a.window, int(m.graph.meta.get("max_position_embeddings", a.window)))
    windows = eval_windows(window, max_tokens=a.max_tokens, tokenizer=tok)
    prompts = prompts_from(windows, a.prompts, a.ffn_prompt)
    dense_lm = InterpLM(m.graph)
    dense = ffn_score(dense_lm, windows, None, a.batch)
    ref = dense.pop("_argmax")
    ref_out = greedy(dense_lm, prompts, a.new)
    rows = [{"method": "dense", "passes": "", "ratio": 0.0, **dense, **agreement(ref_out, ref_out)}]
    log(f"ffn dense ppl {dense['perplexity']:.4f}")
    for r in [float(x) for x in a.ratios.split(",")]:
        for method in ("ffn-skip", "ffn-drop"):
            spec = f"{method}:ratio={r}" + (
                f":protect={a.protect}" if a.protect is not None else ""
            )
            lm, rep, secs = apply(m.graph, spec, tok, a.calib_samples)
            got = ffn_score(lm, windows, ref, a.batch)
            got.pop("_argmax")
            if method == "ffn-drop":
                got["ffn_skip_fraction"] = rep["skip_fraction"]
            lm.reset_skip_stats()
            got.update(agreement(greedy(lm, prompts, a.new), ref_out))
            rep.pop("options", None)
            rows.append(
                {"method": method, "passes": spec, "ratio": r, **got, "pass_s": secs, "report": rep}
            )
            log(
                f"{spec}: ppl {got['perplexity']:.4f} agree {got['agreement']:.4f} skipped "
                f"{got['ffn_skip_fraction']:.4f} greedy {got['greedy_prefix']:.3f}"
            )
    return rows


def prune_part(m, tok, a) -> list[dict]:
    from llmc.cli import _prune_fields

    length = a.prompt + a.cont
    windows = eval_windows(length, max_tokens=a.prune_tokens, tokenizer=tok)
    prompts = prompts_from(windows, a.prompts, a.prompt)
    dense_lm = InterpLM(m.graph)
    dense = evaluate(dense_lm, windows, batch_size=a.batch, prompt=a.prompt)
    ref_out = greedy(dense_lm, prompts, a.new)
    rows = [
        {
            "score": "dense",
            "passes": "",
            "keep": 1.0,
            **dense.to_dict(),
            "agreement": 1.0,
            "prefill_flops_ratio": 1.0,
            **agreement(ref_out, ref_out),
        }
    ]
    log(f"prune dense ppl {dense.perplexity:.4f} ({windows.shape[0]} windows of {length})")
    sched = f":l1={a.l1}:l2={a.l2}" if a.l1 else ""
    variants = [
        ("attention", ""),
        ("pagerank", ""),
        ("uniform", ""),
        ("random", ""),
        ("attention", ":adaptive=true"),
    ]
    for k in [float(x) for x in a.keeps.split(",")]:
        for score, extra in variants:
            if k >= 1.0 and (score != "attention" or extra):
                continue
            spec = f"token-prune:average={k}{sched}:score={score}{extra}"
            lm, rep, secs = apply(m.graph, spec, tok, a.calib_samples, a.prompt)
            # adaptive thresholds decide per prompt; a batch keeps, per layer, the largest count
            # any of its prompts passes (rectangular tensors), so score adaptive one at a time
            bs = 1 if extra else a.batch
            q = evaluate(lm, windows, reference=dense_lm, batch_size=bs, prompt=a.prompt)
            got = q.to_dict()
            flops = _prune_fields(lm.graph, a.prompt, q.prefill_token_fraction or 1.0)
            got["prefill_flops_ratio"] = flops["prefill_flops_ratio"]
            got.update(agreement(greedy(lm, prompts, a.new), ref_out))
            rep.pop("options", None)
            name = score + ("+adaptive" if extra else "")
            rows.append(
                {"score": name, "passes": spec, "keep": k, **got, "pass_s": secs, "report": rep}
            )
            log(
                f"{spec}: ppl {q.perplexity:.4f} agree {q.agreement:.4f} kept "
                f"{q.prefill_token_fraction:.4f} greedy {got['greedy_prefix']:.3f}"
            )
    return rows


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tables(info: dict) -> None:
    if "ffn" in info:
        base = info["ffn"][0]["perplexity"]
        print(
            "| method | passes | perplexity | Δ ppl | agreement | FFN blocks skipped | greedy exact | greedy prefix |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in info["ffn"]:
            print(
                f"| {r['method']} | `{r['passes'] or '—'}` | {r['perplexity']:.4f} | "
                f"{r['perplexity'] - base:+.4f} | {r['agreement']:.4f} | "
                f"{r.get('ffn_skip_fraction', 0.0):.4f} | {r['greedy_exact']:.2f} | "
                f"{r['greedy_prefix']:.3f} |"
            )
    if "prune" in info:
        base = info["prune"][0]["perplexity"]
        print()
        print(
            "| score | average keep | perplexity | Δ ppl | agreement | tokens kept | prefill FLOPs | greedy exact | greedy prefix |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in info["prune"]:
            print(
                f"| {r['score']} | {r['keep']:.2f} | {r['perplexity']:.4f} | "
                f"{r['perplexity'] - base:+.4f} | {r['agreement']:.4f} | "
                f"{r.get('prefill_token_fraction', 1.0):.4f} | {r['prefill_flops_ratio']:.3f} | "
                f"{r['greedy_exact']:.2f} | {r['greedy_prefix']:.3f} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--part", default="ffn,prune")
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.4")
    ap.add_argument("--keeps", default="1.0,0.75,0.5,0.3")
    ap.add_argument("--window", type=int, default=256, help="ffn part: tokens per window")
    ap.add_argument("--max-tokens", type=int, default=None, help="ffn part: held-out tokens")
    ap.add_argument("--prompt", type=int, default=512, help="prune part: prompt tokens")
    ap.add_argument("--cont", type=int, default=64, help="prune part: scored continuation")
    ap.add_argument("--prune-tokens", type=int, default=None, help="prune part: held-out tokens")
    ap.add_argument("--l1", type=int, default=0, help="prune part: token-prune l1 (0: default)")
    ap.add_argument("--l2", type=int, default=0, help="prune part: token-prune l2")
    ap.add_argument("--prompts", type=int, default=20, help="greedy prompts")
    ap.add_argument("--ffn-prompt", type=int, default=32, help="ffn part: greedy prompt tokens")
    ap.add_argument("--new", type=int, default=32, help="greedy new tokens")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--protect", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "adaptive.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = load_model(a.model)
    tok = m.tokenizer if a.model != "tiny" else None
    info: dict = {
        "command": "python bench/adaptive.py " + " ".join(sys.argv[1:]),
        "model": Path(a.model).name,
        "args": vars(a),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "loadavg": list(os.getloadavg()),
    }
    t0 = time.perf_counter()
    parts = a.part.split(",")
    if "ffn" in parts:
        info["ffn"] = ffn_part(m, tok, a)
    if "prune" in parts:
        info["prune"] = prune_part(m, tok, a)
    info["seconds"] = time.perf_counter() - t0
    info["loadavg_end"] = list(os.getloadavg())
    Path(a.out).write_text(json.dumps(info, indent=2, default=str) + "\n")
    tables(info)


if __name__ == "__main__":
    main()
