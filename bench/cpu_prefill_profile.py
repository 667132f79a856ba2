"""Where a whole-model prefill's time goes, kernel by kernel, against the same kernels alone.

Usage::

    TVM_NUM_THREADS=1 python bench/cpu_prefill_profile.py NAME=DIR[,NAME=DIR] --rows 512 --json OUT

Per artifact (an ``llmc compile ... --target cpu`` dir; ``random_weights=True`` for an
architecture-only compile): one warm-up prefill of ``--rows`` tokens, then ``--calls`` prefills
with the VM's instrument hook, which times every kernel and VM builtin call in *thread* CPU time
(one thread: ``TVM_NUM_THREADS=1`` runs every parallel loop in the calling thread, so thread
time is the kernel's work and leaves out the time a loaded machine descheduled it; at more
threads process CPU time, the workers' spinning included) and wall time,
and calls each kernel a second time at once with the same arguments ("alone": warm caches, the
same moment's load; not counted in the in-model time): its in-model time against its time
with nothing between the calls; ``w8a8_prefill*`` / ``panel_gemm*`` / ``gemm*``
rows also get their GOP/s (2 M K N per call, from the argument shapes). The uninstrumented
prefill (median of ``--calls``) and the kernels' sum give the time outside the kernels (VM
dispatch, allocation, the hook's own cost); ``families`` adds up a kernel's shape variants
(``act_quant``, ``act_quant1``: their calls per prefill count the quantizations). Several artifacts are profiled interleaved, call by
call.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import resource
import statistics
import sys
import time
from typing import Any

from _common import ROOT, finish, load_average, record

sys.path.insert(0, str(ROOT))


def _clock() -> float:
    """Thread CPU time at one thread (the kernel's work), process CPU time at more (both
    threads' work, a waiting worker's spinning included)."""
    return time.thread_time() if os.environ.get("TVM_NUM_THREADS") == "1" else time.process_time()


def _shape(a: Any) -> tuple[int, ...] | None:
    try:
        return tuple(int(d) for d in a.shape)
    except (AttributeError, TypeError):
        return None


def _gop(sym: str, args: tuple) -> float | None:
    """Giga-ops of one GEMM call: 2 M K N from the first argument ``[M, K]`` and the last
    ``[M, N]``."""
    if not sym.startswith(("w8a8_prefill", "panel_gemm", "gemm")):
        return None
    x, c = _shape(args[0]), _shape(args[-1])
    if not x or not c or len(x) != 2 or len(c) != 2:
        return None
    return 2 * x[0] * x[1] * c[1] / 1e9


class Prof:
    def __init__(self, lm: Any, ids: Any, pos: Any) -> None:
        self.lm, self.ids, self.pos = lm, ids, pos
        self.cpu: dict[str, float] = collections.defaultdict(float)
        self.wall: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter[str] = collections.Counter()
        self.first: dict[str, tuple[Any, tuple]] = {}
        self.again: dict[str, float] = collections.defaultdict(float)
        self.plain: list[tuple[float, float]] = []
        self.faults: list[int] = []
        self.n = 0
        self.skip = set(lm.backend["functions"]) | set(lm.backend.get("layer_functions", {}))

    def kernel(self, sym: str) -> bool:
        return not sym.startswith("vm.builtin.") and sym not in self.skip

    def run_plain(self) -> None:
        past = self.lm.empty_past(1)
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0, c0 = time.perf_counter(), _clock()
        self.lm.forward(self.ids, self.pos, past)
        self.plain.append((_clock() - c0, time.perf_counter() - t0))
        self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)

    def run_hooked(self) -> None:
        st = [0.0, 0.0]

        def hook(func: Any, sym: str, before: bool, ret: Any, *args: Any) -> int:
            if before:
                st[0], st[1] = _clock(), time.perf_counter()
            else:
                self.cpu[sym] += _clock() - st[0]
                self.wall[sym] += time.perf_counter() - st[1]
                self.calls[sym] += 1
                if self.kernel(sym):
                    self.first.setdefault(sym, (func, args))
                    # the same call again at once: warm caches, the same moment's load
                    c0 = _clock()
                    func(*args)
                    self.again[sym] += _clock() - c0
            return 0

        self.lm.vm.set_instrument(hook)
        try:
            self.lm.forward(self.ids, self.pos, self.lm.empty_past(1))
        finally:
            self.lm.vm.set_instrument(None)
        self.n += 1

    def report(self) -> dict[str, Any]:
        n = self.n
        rows = []
        for sym in sorted(self.cpu, key=lambda s: -self.cpu[s]):
            row: dict[str, Any] = {
                "name": sym,
                "calls": self.calls[sym] // n,
                "cpu_ms": round(1e3 * self.cpu[sym] / n, 2),
                "wall_ms": round(1e3 * self.wall[sym] / n, 2),
            }
            if self.kernel(sym):
                func, args = self.first[sym]
                row["arg_shapes"] = [_shape(a) for a in args]
                one = self.again[sym] / n / row["calls"]
                row["alone_cpu_ms"] = round(1e3 * self.again[sym] / n, 2)
                row["in_model_over_alone"] = round(
                    row["cpu_ms"] / max(row["alone_cpu_ms"], 1e-6), 3
                )
                g = _gop(sym, args)
                if g is not None:
                    row["gop_per_s_in_model"] = round(g * row["calls"] / (row["cpu_ms"] / 1e3), 1)
                    row["gop_per_s_alone"] = round(g / one, 1)
            rows.append(row)
        fams: dict[str, dict[str, float]] = {}
        for r in rows:  # a kernel's shape variants (``act_quant``, ``act_quant1``) together
            if self.kernel(r["name"]):
                f = fams.setdefault(re.sub(r"\d+$", "", r["name"]), {"calls": 0, "cpu_ms": 0.0})
                f["calls"] += r["calls"]
                f["cpu_ms"] = round(f["cpu_ms"] + r["cpu_ms"], 2)
        kern = sum(r["cpu_ms"] for r in rows if self.kernel(r["name"]))
        builtin = sum(r["cpu_ms"] for r in rows if not self.kernel(r["name"]))
        cpu_plain = statistics.median(c for c, _ in self.plain)
        wall_plain = statistics.median(w for _, w in self.plain)
        return {
            "prefill_cpu_ms_plain_median": round(1e3 * cpu_plain, 1),
            "prefill_wall_ms_plain_median": round(1e3 * wall_plain, 1),
            "prefill_cpu_samples_ms": [round(1e3 * c, 1) for c, _ in self.plain],
            "minor_page_faults_per_prefill": statistics.median(self.faults),
            "kernels_cpu_ms": round(kern, 1),
            "builtins_and_entry_cpu_ms": round(builtin, 1),
            "outside_kernels_cpu_ms": round(1e3 * cpu_plain - kern, 1),
            "kernel_calls": sum(r["calls"] for r in rows if self.kernel(r["name"])),
            "vm_calls": sum(r["calls"] for r in rows),
            "families": dict(sorted(fams.items(), key=lambda kv: -kv[1]["cpu_ms"])),
            "kernels": rows,
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", help="NAME=DIR[,NAME=DIR...]")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--calls", type=int, default=3, help="hooked and plain prefills each")
    ap.add_argument("--top", type=int, default=16)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    load0 = load_average()
    threads = int(os.environ.setdefault("TVM_NUM_THREADS", "1"))
    import torch

    from llmc.runtime.tvm_runner import load

    arts = dict(s.split("=", 1) for s in a.artifacts.split(","))
    lms = {k: load(d, random_weights=True) for k, d in arts.items()}
    vocab = min([50000] + [int(lm.meta.get("vocab_size") or 50000) for lm in lms.values()])
    ids = torch.randint(0, vocab, (1, a.rows), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(a.rows)[None]
    profs = {k: Prof(lm, ids, pos) for k, lm in lms.items()}
    for p in profs.values():
        p.run_plain()  # warm-up
        p.plain.clear()
        p.faults.clear()
    for _ in range(a.calls):
        for p in profs.values():
            p.run_plain()
            p.run_hooked()
    res = record("cpu_prefill_profile.py", sys.argv[1:] if argv is None else argv, threads, load0)
    res["rows"] = a.rows
    res["artifacts"] = arts
    res["profiles"] = {k: p.report() for k, p in profs.items()}
    for k, r in res["profiles"].items():
        print(
            f"{k}: prefill {r['prefill_cpu_ms_plain_median']} CPU ms ({r['prefill_wall_ms_plain_median']}"
            f" wall), kernels {r['kernels_cpu_ms']}, outside kernels {r['outside_kernels_cpu_ms']}, "
            f"{r['kernel_calls']} kernel calls, {r['minor_page_faults_per_prefill']} page faults"
        )
        fam = ", ".join(
            f"{k} {v['cpu_ms']:.1f} ({v['calls']})" for k, v in list(r["families"].items())[:8]
        )
        print(f"  by family, ms (calls): {fam}")
        for row in r["kernels"][: a.top]:
            g = ""
            if "gop_per_s_in_model" in row:
                g = f" {row['gop_per_s_in_model']:7.1f} vs {row['gop_per_s_alone']:7.1f} GOP/s"
            al = f" alone {row['alone_cpu_ms']:8.2f}" if "alone_cpu_ms" in row else " " * 15
            print(f"  {row['cpu_ms']:8.2f} ms{al} {row['calls']:4d} calls{g}  {row['name']}")
    return finish(res, a.json)


if __name__ == "__main__":
    raise SystemExit(main())
