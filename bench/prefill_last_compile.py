"""Compile-time cost of the ``prefill_last`` entry: the CPU pipeline's backend phases with entries
``(prefill, decode)`` and ``(prefill, prefill_last, decode)``, alternated, in one process.

Usage::

    TVM_NUM_THREADS=1 python bench/prefill_last_compile.py gpt2 5

Prints one line per compile with each phase's process CPU time (``time.process_time``: steadier
than wall time on a shared machine), ``export_so`` (``export_library``: LLVM code generation and
the link), the total, the wall time and the 1-minute load average; then all rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a model llmc compiles (gpt2, tiny, a Hugging Face directory)")
    ap.add_argument("rounds", type=int, help="compiles of each variant, alternated")
    args = ap.parse_args(argv)
    import llmc.backends.pipeline as P
    from llmc.backends import pipeline_for
    from llmc.backends.lower import PREFILL_LAST, Entry
    from llmc.compile import load
    from llmc.targets import get_target

    name, rounds = args.model, args.rounds
    g = load(name).graph
    t = get_target("cpu")
    pipe = pipeline_for(t)
    decode = Entry("decode", (("batch", 1), ("seq", 1)))
    variants = {
        "without": (Entry("prefill"), decode),
        "with": (Entry("prefill"), PREFILL_LAST, decode),
    }
    res: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for _ in range(rounds):
        for k, entries in variants.items():
            type(pipe).entries = entries
            cpu: dict[str, float] = {}

            @contextmanager
            def timed(timing, phase, cpu=cpu):  # replaces the pipeline's wall-time hook
                c = time.process_time()
                try:
                    yield
                finally:
                    cpu[phase] = cpu.get(phase, 0.0) + time.process_time() - c

            P._timed = timed
            c0, w0 = time.process_time(), time.perf_counter()
            ex, _, _ = pipe.compile(g, t)
            with tempfile.TemporaryDirectory() as d:
                c1 = time.process_time()
                ex.export_library(os.path.join(d, "m.so"))
                cpu["export_so"] = time.process_time() - c1
            cpu["total"] = time.process_time() - c0
            cpu["wall"] = time.perf_counter() - w0
            cpu["load"] = os.getloadavg()[0]
            res[k].append({p: round(v, 2) for p, v in cpu.items()})
            print(name, k, res[k][-1], flush=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
