"""A decode step's cost outside the kernels, and an A/B of two checkouts' whole decode step.

Usage::

    python bench/decode_overhead.py NEW                         # one artifact, this checkout
    python bench/decode_overhead.py NEW --old OLD --old-code /path/to/other/checkout \\
        --rounds 5 --steps 48 --threads 2 --json bench/decode_overhead.json

Per artifact, in a fresh process (``--one``, the checkout's own runner on ``PYTHONPATH``): prefill
``--past`` tokens, then ``--steps`` decode steps through ``lm.decode`` (the runner's whole step:
argument conversion, cache views, logits) and as many calls of the bare decode VM function on the
same cache; then the VM builtins per step (instrument hook, counts only) and the runner's Python
side alone (the VM function replaced by a stub returning a saved result). With ``--old``, the two
artifacts (each with its own checkout's code) alternate for ``--rounds`` rounds; medians over rounds
of each round's median step. Times are wall (``perf_counter``) and process CPU time
(``process_time``, all threads: with ``--threads 2`` the pool's spinning counts); the load average
is recorded before and after, because the machine these numbers come from is shared.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, bare_decode_call, finish, load_average, record


def one(artifact: Path, past: int, steps: int) -> dict[str, Any]:
    """Measure ``artifact`` with the llmc on ``sys.path`` (see the module docstring)."""

    from llmc.runtime.tvm_runner import import_tvm_runtime, load

    lm = load(artifact)
    rt = import_tvm_runtime()
    prompt = [(i * 7 + 3) % min(lm.vocab_size, 256) for i in range(past)]
    lm.prefill(prompt)
    for _ in range(3):
        lm.decode(5)

    def timed(fn: Any, n: int) -> tuple[list[float], list[float]]:
        wall, cpu = [], []
        for _ in range(n):
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
        return wall, cpu

    lm.prefill(prompt)
    dec_wall, dec_cpu = timed(lambda: lm.decode(5), steps)
    entry = lm._entry(1, 1)
    fn = lm._fns[entry]
    call = bare_decode_call(lm, rt)
    vm_wall, vm_cpu = timed(call, steps)

    calls: collections.Counter[str] = collections.Counter()

    def hook(func: Any, sym: str, before: bool, ret: Any, *a: Any) -> int:
        if not before:
            calls[sym] += 1
        return 0

    lm.vm.set_instrument(hook)
    for _ in range(3):
        call()
    lm.vm.set_instrument(None)
    builtins = {k: v // 3 for k, v in sorted(calls.items()) if k.startswith("vm.builtin.")}
    not_kernels = set(builtins) | set(lm.backend["functions"])
    not_kernels |= set(lm.backend.get("layer_functions", {}))
    not_kernels |= set(lm.backend.get("branch_functions", {}))

    saved = call()
    lm._fns[entry] = lambda *a: saved
    lm.prefill(prompt)  # prefill runs another entry, not the stub
    py_wall, py_cpu = timed(lambda: lm.decode(5), steps)
    lm._fns[entry] = fn

    def ms(xs: list[float]) -> float:
        return round(1e3 * statistics.median(xs), 4)

    return {
        "decode_ms": ms(dec_wall),
        "decode_cpu_ms": ms(dec_cpu),
        "vm_call_ms": ms(vm_wall),
        "vm_call_cpu_ms": ms(vm_cpu),
        "python_side_us": round(1e3 * ms(py_wall), 1),
        "python_side_cpu_us": round(1e3 * ms(py_cpu), 1),
        "vm_builtins_per_step": sum(builtins.values()),
        "vm_builtins": builtins,
        "kernel_calls_per_step": sum(v // 3 for k, v in calls.items() if k not in not_kernels),
        "weights": len(lm._entry_args[entry]),
        "kv_buffers": len(lm._kv.handles),
    }


def _run_one(code: Path, artifact: Path, a: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code), "TVM_NUM_THREADS": str(a.threads)}
    cmd = [sys.executable, __file__, str(artifact), "--one", "--past", str(a.past)]
    cmd += ["--steps", str(a.steps)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} (PYTHONPATH={code}) failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path, help="artifact of this checkout (NEW)")
    ap.add_argument("--old", type=Path, help="artifact compiled by --old-code (OLD)")
    ap.add_argument("--old-code", type=Path, help="the checkout that compiled --old")
    ap.add_argument("--past", type=int, default=64, help="prompt tokens before the timed steps")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args(argv)
    if a.one:  # the llmc on PYTHONPATH (see _run_one)
        print(json.dumps(one(a.artifact, a.past, a.steps)))
        return 0
    if (a.old is None) != (a.old_code is None):
        raise SystemExit("--old and --old-code go together")
    sides = {"new": (ROOT, a.artifact)}
    if a.old is not None:
        sides["old"] = (a.old_code.resolve(), a.old)
    load_before = load_average()
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
    for _ in range(a.rounds):
        for name in sorted(sides, reverse=True):  # old first in each round
            runs[name].append(_run_one(*sides[name], a))
    argv = sys.argv[1:] if argv is None else argv
    res = record("decode_overhead.py", argv, a.threads, load_before)
    res.update(past=a.past, steps=a.steps)
    for name, rs in runs.items():
        summary: dict[str, Any] = {"artifact": str(sides[name][1]), "code": str(sides[name][0])}
        for key in rs[0]:
            if isinstance(rs[0][key], int | float) and key not in ("weights", "kv_buffers"):
                summary[key] = round(statistics.median(r[key] for r in rs), 4)
            else:
                summary[key] = rs[0][key]
        summary["rounds"] = rs
        res[name] = summary
    for name in sorted(sides, reverse=True):
        s = res[name]
        print(
            f"{name}: decode {s['decode_ms']} ms (CPU {s['decode_cpu_ms']}), bare VM call "
            f"{s['vm_call_ms']} ms (CPU {s['vm_call_cpu_ms']}), python side "
            f"{s['python_side_cpu_us']} us CPU, {s['vm_builtins_per_step']} VM builtins/step"
        )
    return finish(res, a.json)


if __name__ == "__main__":
    raise SystemExit(main())
