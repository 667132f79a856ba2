"""Generation's prefill with the head on the last row only (``prefill_last``) vs every row.

Usage::

    python bench/prefill_last.py --artifacts gpt2=DIR,tiny=DIR [--old gpt2=DIR,tiny=DIR]
        [--prompt 512] [--rounds 5] [--out bench/prefill_last.json]

Each artifact (compiled by this checkout; ``random_weights=True`` where it is architecture-only)
is loaded once; one round times, interleaved, batch-1 prefills of ``--prompt`` tokens from an
empty cache through:

- ``all_rows``: ``forward`` (the ``prefill`` entry: logits for every row, what generation ran
  before);
- ``last_row``: ``forward_last`` (the ``prefill_last`` entry: the head on the last row);
- ``old_artifact`` (with ``--old``): ``forward`` of the same model compiled by another checkout
  (the main branch before this change), to show the all-rows entry did not change.

Each sample is wall time and process CPU time (``time.process_time``: steadier on a shared
machine; TVM's spinning workers count, so it is conservative). The JSON holds every sample, the
medians, prefill tokens/s from the median wall time, the load average per round, and a check
that greedy generation (8 new tokens) gives the same tokens through both paths.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

from _common import ROOT, cpu_name, git, load_average

sys.path.insert(0, str(ROOT))


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, text.split(",")):
        name, _, path = item.partition("=")
        out[name] = path
    return out


def _load(path: str):
    from llmc.runtime.tvm_runner import load

    try:
        return load(path)
    except Exception:  # noqa: BLE001 -- an architecture-only artifact
        return load(path, random_weights=True)


def _time(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main(argv: list[str] | None = None) -> None:
    import torch

    from llmc.runtime.lm import LanguageModel, generate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", required=True, help="NAME=DIR,... compiled by this checkout")
    ap.add_argument("--old", default="", help="NAME=DIR,... the same models, another checkout")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "prefill_last.json"))
    a = ap.parse_args(argv)
    new, old = _pairs(a.artifacts), _pairs(a.old)

    class Sliced(LanguageModel):  # forward_last's default: every row, then the last
        def __init__(self, lm: LanguageModel) -> None:
            self.lm, self.meta = lm, lm.meta

        def forward(self, ids, pos, past):
            return self.lm.forward(ids, pos, past)

    results = {}
    for name, path in new.items():
        lm = _load(path)
        lm_old = _load(old[name]) if name in old else None
        vocab = min(lm.vocab_size, 256)
        ids = torch.tensor([[(i * 7 + 3) % vocab for i in range(a.prompt)]])
        pos = torch.arange(a.prompt)[None]
        ways = {
            "all_rows": lambda lm=lm, ids=ids, pos=pos: lm.forward(ids, pos, lm.empty_past(1)),
            "last_row": lambda lm=lm, ids=ids, pos=pos: lm.forward_last(ids, pos, lm.empty_past(1)),
        }
        if lm_old is not None:
            ways["old_artifact"] = lambda lm=lm_old, ids=ids, pos=pos: lm.forward(
                ids, pos, lm.empty_past(1)
            )
        for fn in ways.values():  # warm-up
            fn()
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in ways}
        loads = []
        for _ in range(a.rounds):
            loads.append(load_average())
            for k, fn in ways.items():
                samples[k].append(_time(fn))
        prompt = [int(t) for t in ids[0, :64]]
        same = generate(lm, prompt, 8).tokens == generate(Sliced(lm), prompt, 8).tokens
        row = {"artifact": path, "samples": samples, "load_average": loads, "tokens_same": same}
        for k, s in samples.items():
            wall = statistics.median(x[0] for x in s)
            cpu = statistics.median(x[1] for x in s)
            row[k] = {
                "median_wall_ms": 1e3 * wall,
                "median_cpu_ms": 1e3 * cpu,
                "prefill_tokens_per_s": a.prompt / wall,
            }
        row["speedup_wall"] = row["all_rows"]["median_wall_ms"] / row["last_row"]["median_wall_ms"]
        row["speedup_cpu"] = row["all_rows"]["median_cpu_ms"] / row["last_row"]["median_cpu_ms"]
        results[name] = row
        print(
            f"{name}: all rows {row['all_rows']['median_wall_ms']:.1f} ms, last row "
            f"{row['last_row']['median_wall_ms']:.1f} ms (x{row['speedup_wall']:.2f} wall, "
            f"x{row['speedup_cpu']:.2f} cpu), tokens same: {same}",
            file=sys.stderr,
        )
    out = {
        "what": "batch-1 prefill from an empty cache: prefill (all rows) vs prefill_last",
        "prompt_tokens": a.prompt,
        "rounds": a.rounds,
        "cpu": cpu_name(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "note": "shared 2-core machine under load (see load_average): medians of interleaved "
        "rounds; CPU time is the steadier figure",
        "models": results,
    }
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
