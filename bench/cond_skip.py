"""What a skipped ``cond`` branch costs in a compiled CPU artifact (docs/backends.md, "Control flow").

Usage::

    python bench/cond_skip.py                       # 768/3072 shape, writes bench/cond_skip.json
    python bench/cond_skip.py --shape toy --out /tmp/toy.json   # hidden 32: the fixed overhead
    python bench/cond_skip.py --micro --out bench/cond_skip_micro.json   # the If alone

Three graphs with the same weights (``tests/backends/cond_lm.py``, the toy LM's structure):

- ``plain``: every layer's FFN block (post-attention norm, SwiGLU, residual) runs;
- ``cond``: each FFN block is the ``then`` branch of a ``cond`` whose predicate is computed in
  the layer from the positions (FFN runs when the position is even), so decode steps alternate
  taken / skipped in one artifact and one run;
- ``none``: the FFN blocks removed (what a skipped block should cost: nothing).

Each is compiled for ``cpu`` into ``WORK/NAME``; then ``--rounds`` rounds: each a fresh 128-token
prefill of the three (timed; the FFN runs: position 0 is even), then ``--steps`` decode steps in
which the three artifacts take turns, step by step in rotating order, every decode ``forward`` call
timed alone. This machine is shared, so besides medians the JSON has minima and the differences
paired step by step (same round and position, measured back to back). The JSON has every sample, the medians per model (``cond``
split into taken and skipped steps), the bytes the weights stream per step (all weights but the
embedding table, at their storage size; the FFN's share of them) and the ideal skipped time
``plain * (1 - ffn share)``.

``--micro`` measures the ``If`` alone, without a model around it: a chain of ``K`` conds on an
input flag, each ``then`` branch one multiply of a ``[1, 768]`` tensor, the ``else`` branch a
pass-through; the same chain without conds (``K`` multiplies, which fuse into one kernel); and no
chain. Calls of the compiled ``prefill`` function through the VM, interleaved, ``--rounds``
batches of 2000 calls, median per call; per ``If`` (skipped, or taken with its branch's call and
kernel) it is the difference to no chain divided by ``K``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, cpu_name, git, load_average

sys.path.insert(0, str(ROOT))

SHAPES = {
    # GPT-2 small's widths (12 layers, 768, 12 heads, 3072), SwiGLU as in the toy LM, a
    # Llama-sized 32000 vocabulary
    "768x3072": dict(layers=12, hidden=768, heads=12, kv_heads=12, ffn=3072, vocab=32000),
    "toy": dict(layers=2, hidden=32, heads=4, kv_heads=2, ffn=64, vocab=300),
}
PROMPT = 128
MODELS = ("plain", "cond", "none")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="768x3072", choices=sorted(SHAPES))
    ap.add_argument("--work", default="/tmp/llmc-cond-skip", help="artifacts go here (reused)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=32, help="decode steps per round and model")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--branches",
        default="function",
        choices=("function", "inline"),
        help="how cond branches lower (llmc.backends.lower, 'Control flow')",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "cond_skip.json"))
    ap.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "cpu"),
        help="cpu: the calling thread's CPU time (with --threads 1 the kernels run on it), "
        "which time spent descheduled by other processes does not inflate",
    )
    ap.add_argument("--micro", action="store_true", help="time the If alone (see above)")
    ap.add_argument("--micro-k", type=int, default=64, help="conds in the --micro chain")
    return ap.parse_args(argv)


def build(shape: dict[str, int], work: Path, branches: str) -> dict[str, Any]:
    """Compile the three graphs (skipped when WORK/NAME already holds this shape's artifact)."""
    from llmc.backends.cpu.pipeline import PIPELINE
    from tests.backends.cond_lm import cond_lm
    from tests.backends.conftest import compile_graph

    PIPELINE.cond_branches = branches

    info: dict[str, Any] = {}
    for name in MODELS:
        out = work / name
        stamp = out / "bench-shape.json"
        g = cond_lm("parity", block=name, **shape)
        info[name] = weight_bytes(g)
        if not (stamp.exists() and json.loads(stamp.read_text()) == shape):
            t0 = time.perf_counter()
            compile_graph(g, "cpu", out)
            stamp.write_text(json.dumps(shape))
            print(f"compiled {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        del g
        gc.collect()
    return info


def weight_bytes(g: Any) -> dict[str, int]:
    """Bytes of weights one decode step streams (all but the embedding table) and the FFN's."""
    total = ffn = 0
    for name, p in g.params.items():
        if "embed_tokens" in name:
            continue
        n = int(p.storage_bytes())
        total += n
        if ".mlp." in name or "post_attention_layernorm" in name:
            ffn += n
    return {"step_weight_bytes": total, "ffn_weight_bytes": ffn}


def measure(
    work: Path, rounds: int, steps: int, clock: Any = time.perf_counter
) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[float]]]:
    import torch

    from llmc.runtime.tvm_runner import load

    runners = {name: load(work / name) for name in MODELS}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in MODELS}
    prefill: dict[str, list[float]] = {name: [] for name in MODELS}
    prompt = torch.tensor([[(i * 7 + 3) % 256 for i in range(PROMPT)]])
    for r in range(rounds + 1):  # round 0 warms up
        order = MODELS[r % 3 :] + MODELS[: r % 3]
        past = {}
        for name in order:
            rn = runners[name]
            t0 = clock()
            _, past[name] = rn.forward(prompt, torch.arange(PROMPT)[None], rn.empty_past(1))
            if r:
                prefill[name].append((clock() - t0) * 1e3)
        tok = torch.tensor([[5]])
        for s in range(steps):  # the three models step by step, so neighbours' load is shared
            pos = PROMPT + s
            for name in order[s % 3 :] + order[: s % 3]:
                t0 = clock()
                _, past[name] = runners[name].forward(tok, torch.tensor([[pos]]), past[name])
                dt = clock() - t0
                if r:
                    samples[name].append({"round": r, "pos": pos, "ms": dt * 1e3})
        time.sleep(0.2)
    return samples, prefill


def paired(samples: dict[str, list[dict[str, float]]], other: str, parity: int) -> float:
    """Median over steps at positions of ``parity`` of ``cond`` minus ``other`` (ms)."""
    ref = {(x["round"], x["pos"]): x["ms"] for x in samples[other]}
    return statistics.median(
        x["ms"] - ref[(x["round"], x["pos"])] for x in samples["cond"] if x["pos"] % 2 == parity
    )


def summarize(samples: dict[str, list[dict[str, float]]], info: dict[str, Any]) -> dict[str, Any]:
    def med(xs: list[dict[str, float]]) -> float:
        return statistics.median(x["ms"] for x in xs)

    def least(xs: list[dict[str, float]]) -> float:
        return min(x["ms"] for x in xs)

    groups = {
        "plain": samples["plain"],
        "cond_taken": [x for x in samples["cond"] if x["pos"] % 2 == 0],
        "cond_skipped": [x for x in samples["cond"] if x["pos"] % 2 == 1],
        "none": samples["none"],
    }
    plain, none = med(samples["plain"]), med(samples["none"])
    taken, skipped = med(groups["cond_taken"]), med(groups["cond_skipped"])
    b = info["plain"]
    share = b["ffn_weight_bytes"] / b["step_weight_bytes"]
    ideal = plain * (1 - share)
    return {
        "median_ms": {
            "plain": plain,
            "cond_taken": taken,
            "cond_skipped": skipped,
            "none": none,
        },
        # under contention from other processes the minimum is the least disturbed figure
        "min_ms": {k: least(v) for k, v in groups.items()},
        "ffn_weight_share": share,
        "ideal_skipped_ms": ideal,
        "taken_overhead_us": (taken - plain) * 1e3,
        "skip_cost_us": (skipped - none) * 1e3,
        # the same differences paired step by step (same round and position, run back to back)
        "paired_taken_overhead_us": paired(samples, "plain", 0) * 1e3,
        "paired_skip_cost_us": paired(samples, "none", 1) * 1e3,
        "speedup_skipped_vs_plain": plain / skipped,
        "ideal_speedup": plain / ideal,
        "fraction_of_ideal_saving": (plain - skipped) / (plain - ideal),
        **b,
    }


def micro_graph(k: int, with_cond: bool) -> Any:
    """``K`` multiplies of a ``[1, 768]`` input, each behind ``cond(flag, h)`` or not."""
    from llmc.ir import GraphBuilder, TensorType

    b = GraphBuilder("chain")
    h = b.input("x", TensorType((1, 768), "f32"))
    flag = b.input("flag", TensorType((), "bool"))
    for _ in range(k):
        if not with_cond:
            h = b.emit("mul", h, b.emit("constant", value=1.0))
            continue
        run_b, (a,) = b.region(h.type)
        run_b.output(run_b.emit("mul", a, run_b.emit("constant", value=1.0)))
        skip_b, (s,) = b.region(h.type)
        skip_b.output(s)
        h = b.emit("cond", flag, h, then_branch=run_b.finish(), else_branch=skip_b.finish())
    b.output(h)
    g = b.finish()
    g.meta = {"num_layers": 0}
    return g


def micro(k: int, rounds: int, branches: str) -> dict[str, Any]:
    import numpy as np
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from llmc.backends.cpu.pipeline import PIPELINE
    from llmc.targets import get_target

    PIPELINE.cond_branches = branches
    t = get_target("cpu")
    fns = {}
    for name, kk, wc in (("empty", 0, False), ("chain", k, False), ("cond", k, True)):
        ex, _, _ = PIPELINE.compile(micro_graph(kk, wc), t)
        vm = VirtualMachine(ex, tvm.cpu())
        fns[name] = (vm, vm["prefill"])
    x = tvm.runtime.tensor(np.ones((1, 768), "float32"))
    flags = {v: tvm.runtime.tensor(np.array(v)) for v in (True, False)}
    cases = [("empty", False), ("chain", False), ("cond", True), ("cond", False)]
    us: dict[str, list[float]] = {f"{n}-{f}": [] for n, f in cases}
    n_calls = 2000
    for r in range(rounds + 1):
        for n, f in cases[r % 4 :] + cases[: r % 4]:
            fn = fns[n][1]
            fl = flags[f]
            t0 = time.perf_counter()
            for _ in range(n_calls):
                fn(x, fl)
            if r:
                us[f"{n}-{f}"].append((time.perf_counter() - t0) / n_calls * 1e6)
    med = {key: statistics.median(v) for key, v in us.items()}
    return {
        "k": k,
        "median_us_per_call": med,
        "if_skipped_us": (med["cond-False"] - med["empty-False"]) / k,
        "branch_taken_us": (med["cond-True"] - med["empty-False"]) / k,
        "fused_chain_us": med["chain-False"] - med["empty-False"],
        "samples_us": us,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    if args.micro:
        res = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": "python bench/cond_skip.py " + " ".join(argv or sys.argv[1:]),
            "commit": git("rev-parse", "--short", "HEAD").strip(),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
            "threads": args.threads,
            "cond_branches": args.branches,
            "load_average": load_average(),
            **micro(args.micro_k, args.rounds, args.branches),
        }
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps({k: v for k, v in res.items() if k != "samples_us"}, indent=1))
        return
    shape = SHAPES[args.shape]
    work = Path(args.work) / f"{args.shape}-{args.branches}"
    work.mkdir(parents=True, exist_ok=True)
    info = build(shape, work, args.branches)
    load0 = load_average()
    if args.clock == "cpu" and args.threads != 1:
        raise SystemExit("--clock cpu needs --threads 1 (worker threads' time is not counted)")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    samples, prefill = measure(work, args.rounds, args.steps, clock)
    res = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python bench/cond_skip.py " + " ".join(argv or sys.argv[1:]),
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "threads": args.threads,
        "clock": args.clock,
        "load_average": {"before": load0, "after": load_average()},
        "shape": {"name": args.shape, **shape},
        "cond_branches": args.branches,
        "prompt_tokens": PROMPT,
        "rounds": args.rounds,
        "steps": args.steps,
        "summary": summarize(samples, info),
        "prefill_median_ms": {k: statistics.median(v) for k, v in prefill.items()},
        "samples": samples,
        "prefill_samples_ms": prefill,
    }
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({"decode": res["summary"], "prefill": res["prefill_median_ms"]}, indent=1))


if __name__ == "__main__":
    main()
