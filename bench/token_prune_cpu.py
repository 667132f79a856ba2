"""Token pruning on the CPU artifact: prefill time and decode speed of ``tiny``, dense vs
``token-prune:average=0.5``, against the ideal the FLOP ratio gives.

Usage::

    python bench/token_prune_cpu.py                     # writes bench/token_prune_cpu.json
    python bench/token_prune_cpu.py --repeats 3 --prompt-len 512 --out /tmp/x.json

It compiles ``tiny`` twice for ``--target cpu`` (``llmc compile tiny --target cpu -o WORK/dense``
and the same with ``--passes token-prune:average=0.5``, in this process), loads both with the TVM
runner and, ``--repeats`` times, alternating dense and pruned (a pause between runs), runs batch 1
with a ``--prompt-len``-token prompt, then ``--new-tokens`` greedy decode steps. Per run it records
the prefill call's process CPU time (all threads; less sensitive to other processes on a shared
machine than wall time) and wall time, decode tokens/s (decode calls / their summed wall time)
and the decode calls' CPU time per token (the host loop's argmax included, alike for both). Medians over the runs; the speedup is median(dense) / median(pruned). The ideal speedup is
1 / the FLOP ratio of the two prefills from llmc's cost model (``prefill_flops_ratio``, as
``llmc bench --json`` reports it, at the counts each layer actually kept). The JSON records the
machine, the load average before and after, the versions and every sample.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, cpu_name, git, load_average

sys.path.insert(0, str(ROOT))

SPEC = "token-prune:average=0.5"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passes", default=SPEC, help="the pruning pass spec (default: %(default)s)")
    ap.add_argument("--prompt-len", type=int, default=1000)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5, help="dense/pruned pairs")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between runs")
    ap.add_argument("--work", help="directory for the artifacts (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "token_prune_cpu.json"))
    return ap.parse_args(argv)


def run_once(lm: Any, prompt: list[int], new_tokens: int) -> dict[str, Any]:
    """One prefill (CPU and wall time) and ``new_tokens - 1`` timed greedy decode calls."""
    import torch

    from llmc.runtime.lm import kv_lengths

    ids = torch.tensor([prompt])
    pos = torch.arange(len(prompt))[None]
    c0, w0 = time.process_time(), time.perf_counter()
    logits, past = lm.forward(ids, pos, lm.empty_past(1))
    w1, c1 = time.perf_counter(), time.process_time()
    kept = kv_lengths(past)
    tokens = [int(logits[0, -1].argmax())]
    steps = []
    d0 = time.process_time()
    for i in range(new_tokens - 1):
        t = time.perf_counter()
        logits, past = lm.forward(
            torch.tensor([[tokens[-1]]]), torch.tensor([[len(prompt) + i]]), past
        )
        steps.append(time.perf_counter() - t)
        tokens.append(int(logits[0, -1].argmax()))
    d1 = time.process_time()
    return {
        "prefill_cpu_ms": 1000 * (c1 - c0),
        "prefill_wall_ms": 1000 * (w1 - w0),
        "decode_tokens_per_s": len(steps) / sum(steps) if steps else 0.0,
        "decode_cpu_ms_per_token": 1000 * (d1 - d0) / len(steps) if steps else 0.0,
        "kept_per_layer": kept,
        "tokens": tokens,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from llmc.cli import _prune_fields
    from llmc.compile import compile_model
    from llmc.runtime.tvm_runner import load

    work = Path(args.work or tempfile.mkdtemp(prefix="prune-bench-"))
    result: dict[str, Any] = {
        "benchmark": "tiny prefill time and decode tokens/s on the CPU artifact, dense vs "
        f"{args.passes}",
        "command": shlex.join(["python", "bench/token_prune_cpu.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()},
        "load_average_at_start": load_average(),
        "versions": {
            "python": platform.python_version(),
            "tvm": _version("apache-tvm"),
            "torch": _version("torch"),
            "llmc_commit": git("rev-parse", "HEAD").strip(),
            "llmc_uncommitted_files": [
                ln[3:] for ln in git("status", "--porcelain", "llmc").splitlines() if ln.strip()
            ],
        },
        "settings": {
            "model": "tiny",
            "batch": 1,
            "prompt_tokens": args.prompt_len,
            "new_tokens": args.new_tokens,
            "threads (TVM_NUM_THREADS)": args.threads,
            "repeats": args.repeats,
            "order": "dense, pruned, dense, pruned, ... (pause between runs), after a warm-up",
            "pause_s": args.pause,
            "statistic": "median over repeats; speedup = median dense / median pruned",
        },
    }
    arts = {}
    for name, passes in (("dense", None), ("pruned", args.passes)):
        out = work / name
        t = time.perf_counter()
        compile_model("tiny", target="cpu", passes=passes, out=out)
        cmd = ["llmc", "compile", "tiny", "--target", "cpu", "-o", str(out)]
        if passes:
            cmd += ["--passes", passes]
        result.setdefault("compile", {})[name] = {
            "command": shlex.join(cmd),
            "seconds": round(time.perf_counter() - t, 2),
        }
        arts[name] = out
    lms = {name: load(path) for name, path in arts.items()}
    vocab = lms["dense"].vocab_size
    prompt = [(i * 7 + 3) % vocab for i in range(args.prompt_len)]
    for lm in lms.values():  # warm-up: kernel loading, allocator, the cache buffers
        run_once(lm, prompt, 2)
    samples: dict[str, list[dict[str, Any]]] = {"dense": [], "pruned": []}
    for _ in range(args.repeats):
        for name, lm in lms.items():
            time.sleep(args.pause)
            samples[name].append(run_once(lm, prompt, args.new_tokens))

    def med(name: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[name])

    from llmc.artifact import load_artifact

    kept = samples["pruned"][0]["kept_per_layer"]
    graph = load_artifact(arts["pruned"]).graph
    frac = sum(kept) / (len(kept) * args.prompt_len)
    flops = _prune_fields(graph, args.prompt_len, frac, kept)
    summary: dict[str, Any] = {}
    for name in samples:
        summary[name] = {
            key: round(med(name, key), 3)
            for key in (
                "prefill_cpu_ms",
                "prefill_wall_ms",
                "decode_tokens_per_s",
                "decode_cpu_ms_per_token",
            )
        }
    summary["prefill_speedup_cpu_time"] = round(
        med("dense", "prefill_cpu_ms") / med("pruned", "prefill_cpu_ms"), 3
    )
    summary["prefill_speedup_wall"] = round(
        med("dense", "prefill_wall_ms") / med("pruned", "prefill_wall_ms"), 3
    )
    summary["decode_ratio_pruned_over_dense"] = round(
        med("pruned", "decode_tokens_per_s") / med("dense", "decode_tokens_per_s"), 3
    )
    summary["decode_cpu_time_ratio_pruned_over_dense"] = round(
        med("pruned", "decode_cpu_ms_per_token") / med("dense", "decode_cpu_ms_per_token"), 3
    )
    summary["prefill_flops_ratio"] = round(flops["prefill_flops_ratio"], 4)
    summary["ideal_prefill_speedup"] = round(1 / flops["prefill_flops_ratio"], 3)
    summary["prefill_token_fraction"] = round(frac, 4)
    summary["prefill_kept_per_layer"] = kept
    summary["first_tokens_equal"] = samples["dense"][0]["tokens"] == samples["pruned"][0]["tokens"]
    result["summary"] = summary
    result["prefill_flops"] = {
        "pruned": flops["prefill_flops"],
        "dense": flops["prefill_flops_dense"],
    }
    result["samples"] = {
        name: [{k: v for k, v in s.items() if k != "tokens"} for s in runs]
        for name, runs in samples.items()
    }
    result["load_average_at_end"] = load_average()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    raise SystemExit(main())
