"""Whole-model decode time per token of CPU artifacts, interleaved A/B (grouped decode linears).

Usage::

    TVM_NUM_THREADS=2 python bench/cpu_group_decode.py before=ART_A after=ART_B \\
        --prompt 32 --steps 128 --rounds 5 -o /tmp/group.json

Each artifact is loaded once; each round runs, for every artifact in turn, a ``--prompt``-token
prefill and then ``--steps`` one-token ``lm.forward`` decode calls, timed one by one (wall and
process CPU time). A round's figure is the median step; the report gives, per artifact, the
median over rounds and every round's value, with the load average before and after each round
(the machine may be shared: the rounds interleave so a load change hits both sides).
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
from pathlib import Path

from _common import ROOT, cpu_name, git

sys.path.insert(0, str(ROOT))


def _round(lm, prompt: int, steps: int) -> tuple[float, float]:
    """Median wall and CPU ms of ``steps`` decode calls after a ``prompt``-token prefill."""
    import torch

    torch.manual_seed(0)
    ids = torch.randint(0, min(1000, lm.vocab_size), (1, prompt))  # tiny's vocabulary is 256
    _, past = lm.forward(ids, torch.arange(prompt)[None], lm.empty_past(1))
    walls, cpus = [], []
    tok = torch.tensor([[1]])
    for i in range(steps):
        w, c = time.perf_counter(), time.process_time()
        logits, past = lm.forward(tok, torch.tensor([[prompt + i]]), past)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
        tok = logits[:, -1:].argmax(-1)
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arts", nargs="+", help="LABEL=ARTIFACT_DIR")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-o", "--out", type=Path)
    a = ap.parse_args(argv)
    from llmc.runtime.tvm_runner import load

    arts = dict(s.split("=", 1) for s in a.arts)
    lms = {k: load(v) for k, v in arts.items()}
    for lm in lms.values():  # warm up: first calls page the weights in
        _round(lm, a.prompt, 8)
    res: dict[str, dict] = {k: {"wall_ms": [], "cpu_ms": [], "load": []} for k in lms}
    for _ in range(a.rounds):
        for k, lm in lms.items():
            before = os.getloadavg()[0]
            w, c = _round(lm, a.prompt, a.steps)
            r = res[k]
            r["wall_ms"].append(round(w, 3))
            r["cpu_ms"].append(round(c, 3))
            r["load"].append([round(before, 2), round(os.getloadavg()[0], 2)])
    for k, r in res.items():
        r["artifact"] = arts[k]
        r["median_wall_ms"] = round(statistics.median(r["wall_ms"]), 3)
        r["median_cpu_ms"] = round(statistics.median(r["cpu_ms"]), 3)
        print(
            f"{k:>10}: {r['median_wall_ms']:7.2f} ms/token wall, {r['median_cpu_ms']:7.2f} ms CPU"
            f"  rounds {r['wall_ms']}  load {r['load']}"
        )
    if a.out:
        report = {
            "command": shlex.join(["python", *sys.argv]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpu": cpu_name(),
            "threads": os.environ.get("TVM_NUM_THREADS"),
            "commit": git("rev-parse", "--short", "HEAD").strip(),
            "prompt": a.prompt,
            "steps": a.steps,
            "results": res,
        }
        a.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
