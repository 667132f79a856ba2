"""The roofline model against measurements: predicted vs measured CPU time per token.

For GPT-2 small (the zoo configuration, ``GPT2LMHeadModel``'s own initialisation under
``torch.manual_seed(0)``, written once to ``WORK/gpt2-hf``), each compression setting is compiled
for ``--target cpu`` and

- **measured**: ``llmc bench OUT --json --prompt-len 128 --new-tokens 64 --repeat 3`` in a fresh
  process, ``--rounds`` rounds with the settings interleaved (A B C ... A B C ...), the median of
  the rounds' best-of-3 (``--repeat``);
- **bandwidth, in the same run**: right before and right after each of those measurements, this
  process probes the read bandwidth of DRAM (``llmc.targets.host.measure_read_bandwidth``: best of
  9 ``torch.sum`` over 256 MiB), of the last-level cache (the same over
  ``llmc.targets.host.llc_probe_mib``: twice the threads' L2) and at the setting's own working set
  (one decode step's reads), on the threads the artifact uses. A setting's bandwidths are the
  medians of its probes. Once, before the rounds, ``llmc.targets.host.probe_llc`` sweeps working
  sets up to the reported LLC to find the part of it this machine gets (``llc_sweep``);
- **predicted**: ``llmc.codesign.roofline.analyze`` of the artifact's graph on this machine's spec
  (the ``cpu`` target's host spec: peak FLOP/s measured by ``bench/cpu_peak.py``, from the cache
  or ``llmc/targets/data/cpu_peaks.json``) with the setting's same-run DRAM and LLC bandwidths,
  for a 128-token prompt and 64 generated tokens (the decode step at the mean cache length 160, as
  ``llmc bench`` averages over its steps). The memory level is the roofline's own choice
  (``memory_level``: the LLC where one decode step's reads fit in it, its share from the LLC and
  the rest from DRAM where they do not); the DRAM-only prediction is recorded beside it.

``--cpu-time`` (a loaded machine): one thread (``TVM_NUM_THREADS=1``), and instead of ``llmc
bench`` a fresh worker process of this script (``--worker``) runs the same request, timing each
call by the process's CPU time as well as the wall clock; the probes are timed by CPU time too.
CPU time leaves out the time the process waited for a core, which on a shared machine is most of
the wall time; what the neighbours take of the memory bandwidth and the caches stays in.

The error ``measured / predicted`` per setting is the efficiency of the kernels against the
roofline; its spread over settings says whether one factor per kernel class (dense f32, int8,
int4, N:M) corrects the model (the fitted factors are in the JSON and docs/codesign.md).

    python bench/roofline_validate.py [--work /tmp/rv] [--rounds 5] [-o bench/roofline_validate.json]
    python bench/roofline_validate.py --phase compile     # only build the artifacts
    python bench/roofline_validate.py --rederive FILE     # today's roofline on a run's figures
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, cpu_name, git, load_average

sys.path.insert(0, str(ROOT))

PROMPT, NEW = 128, 64
SETTINGS = {
    "dense": "",
    "rtn8": "rtn:bits=8:group=0",
    "rtn4-g128": "rtn:bits=4:group=128",
    "w8a8": "w8a8",
    "nm-2:4": "magnitude:pattern=2:4",
}


def llmc(*args: str) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("llmc")
    cmd = [str(exe), *args, "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{r.stderr}")
    return json.loads(r.stdout)


def run_worker(art: Path, repeat: int) -> dict[str, Any]:
    """``--worker`` in a fresh process (as ``llmc bench`` runs): its JSON line."""
    cmd = [sys.executable, __file__, "--worker", str(art), "--repeat", str(repeat)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def gpt2_dir(work: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmc.frontends import zoo

    d = work / "gpt2-hf"
    if not (d / "model.safetensors").is_file():
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(**zoo.config("gpt2"))).eval().save_pretrained(d)
    return d


def compile_all(work: Path, names: list[str]) -> dict[str, Any]:
    src = gpt2_dir(work)
    out = {}
    for name in names:
        art = work / name
        if (art / "manifest.json").is_file():
            out[name] = {"reused": True}
            continue
        t0 = time.perf_counter()
        args = ["compile", str(src), "--target", "cpu", "-o", str(art)]
        if SETTINGS[name]:
            args += ["--passes", SETTINGS[name]]
        rep = llmc(*args)
        out[name] = {"wall_s": round(time.perf_counter() - t0, 1), "timing_s": rep["timing_s"]}
        print(f"compiled {name} in {out[name]['wall_s']} s", file=sys.stderr)
    return out


def worker(art: str, repeat: int) -> int:
    """``--worker ART``: ``llmc bench``'s request (``generate``'s prefill and greedy steps, batch 1)
    ``repeat`` times after a warm-up, each call timed by the wall clock and by the process's CPU
    time (``time.process_time``, which leaves out the time the process was descheduled: with one
    thread, what the kernels take while they run). Prints one JSON line."""
    import torch

    from llmc.compile import load, runner_for
    from llmc.runtime.bench import bench_prompts

    lm = runner_for(load(art))
    ids = bench_prompts(lm.vocab_size, 1, PROMPT)[0]

    def once(n_prompt: int, new: int) -> dict[str, Any]:
        saved = lm.decode_start
        lm.decode_start = n_prompt
        try:
            x = torch.tensor([ids[:n_prompt]], dtype=torch.int64)
            pos = torch.arange(n_prompt, dtype=torch.int64)[None]
            c, w = time.process_time(), time.perf_counter()
            logits, past = lm.forward_last(x, pos, lm.empty_past(1))
            pre = (time.process_time() - c, time.perf_counter() - w)
            nxt = int(torch.argmax(logits[0, -1]))
            cpu, wall = [], []
            for i in range(new - 1):
                c, w = time.process_time(), time.perf_counter()
                logits, past = lm.forward(
                    torch.tensor([[nxt]], dtype=torch.int64),
                    torch.tensor([[n_prompt + i]], dtype=torch.int64),
                    past,
                )
                cpu.append(time.process_time() - c)
                wall.append(time.perf_counter() - w)
                nxt = int(torch.argmax(logits[0, -1]))
        finally:
            lm.decode_start = saved
        return {"prefill": pre, "cpu": cpu, "wall": wall}

    once(8, 2)  # lazy init, kernel loading
    runs = [once(PROMPT, NEW) for _ in range(repeat)]
    steps = len(runs[0]["cpu"])
    out = {
        # llmc bench's figures: the round with the least decode time (here per clock)
        "decode_ms_per_token": 1e3 * min(sum(r["wall"]) for r in runs) / steps,
        "prefill_tokens_per_s": PROMPT / min(r["prefill"][1] for r in runs),
        "decode_ms_per_token_cpu": 1e3 * min(sum(r["cpu"]) for r in runs) / steps,
        "prefill_ms_cpu": 1e3 * min(r["prefill"][0] for r in runs),
        # per step, the least over the rounds (a step a neighbour did not disturb)
        "decode_ms_per_token_cpu_stepmin": 1e3
        * sum(min(r["cpu"][i] for r in runs) for i in range(steps))
        / steps,
    }
    print(json.dumps(out))
    return 0


def probes(
    threads: int, llc_mib: int | None, ws_mib: int, cpu_time: bool = False
) -> dict[str, float]:
    """Read bandwidth now (bytes/s): DRAM (256 MiB), the LLC (``llc_mib``), the working set;
    ``cpu_time``: timed by the process's CPU time (one thread)."""
    from llmc.targets.host import measure_read_bandwidth

    clock = time.process_time if cpu_time else time.perf_counter
    out = {"dram": measure_read_bandwidth(threads, repeats=9, clock=clock)}
    if llc_mib:
        out["llc"] = measure_read_bandwidth(threads, mib=llc_mib, repeats=9, clock=clock)
    out["working_set"] = measure_read_bandwidth(threads, mib=max(ws_mib, 1), repeats=9, clock=clock)
    return out


def predict(graph: Any, spec: Any, level: str = "auto") -> dict[str, Any]:
    from llmc.codesign.roofline import Scenario, analyze

    rep = analyze(graph, spec, Scenario(prompt=PROMPT, decode=NEW), memory_level=level)
    t = rep.totals
    return {
        "decode_ms_per_token": t["decode"]["ms_per_token"],
        "prefill_ms": t["prefill"]["time_ms"],
        "decode_bytes": t["decode"]["bytes"],
        "decode_weight_bytes": t["decode"]["weight_bytes"],
        "memory_level": t["decode"]["memory_level"],
        "bandwidth": t["decode"]["bandwidth"],
        "working_set_bytes": t["decode"]["working_set_bytes"],
        "decode_compute_bound_ms": t["decode"]["compute_bound_ms"],
    }


def predicted(
    graph: Any, spec: Any, llc_bytes: float, bw: dict[str, float], dec: float, pre: float
) -> dict[str, Any]:
    """A row's predictions and efficiencies: the roofline of ``graph`` on ``spec`` with the
    setting's same-run bandwidths ``bw`` (bytes/s: ``dram``, ``llc``) and the swept effective LLC
    ``llc_bytes`` (0: none), against the measured ``dec`` (ms per token) and ``pre`` (ms)."""
    has_llc = llc_bytes > 0 and bw.get("llc", 0.0) > 0
    run_spec = dataclasses.replace(
        spec,
        mem_bandwidth=bw["dram"],
        llc_bytes=float(llc_bytes) if has_llc else 0.0,
        llc_bandwidth=bw["llc"] if has_llc else 0.0,
    )
    p = predict(graph, run_spec)
    pd = predict(graph, run_spec, "dram")
    return {
        "memory_level": p["memory_level"],
        "working_set_mb": p["working_set_bytes"] / 1e6,
        "predicted_decode_ms": p["decode_ms_per_token"],
        "measured_decode_ms": dec,
        "decode_efficiency": p["decode_ms_per_token"] / dec,
        "predicted_decode_ms_dram": pd["decode_ms_per_token"],
        "decode_efficiency_dram": pd["decode_ms_per_token"] / dec,
        "predicted_prefill_ms": p["prefill_ms"],
        "measured_prefill_ms": pre,
        "prefill_efficiency": p["prefill_ms"] / pre,
        "decode_weight_mb": p["decode_weight_bytes"] / 1e6,
    }


def fit(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``efficiency_by_kernel_class``: each row's decode and prefill efficiency, by kernel class."""
    return {
        r["kernel_class"]: {
            "decode": round(r["decode_efficiency"], 3),
            "prefill": round(r["prefill_efficiency"], 3),
        }
        for r in rows
    }


def rederive(path: Path, work: Path) -> dict[str, Any]:
    """A result file's predictions, efficiencies and fitted factors derived again by today's
    roofline from the run's own measurements (the settings' same-run bandwidths, as stored to
    0.01 GB/s; its LLC sweep; the peak FLOP/s it used), on graphs compiled now with the same
    settings; the measurements stay as they were and ``rederived`` records when and how."""
    from llmc.compile import load
    from llmc.targets import get_target, resolve_spec

    try:
        doc = json.loads(path.read_text())
        names = [r["setting"] for r in doc["rows"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(
            f"roofline_validate.py: --rederive {path}: not a result file ({e})"
        ) from None
    for r in doc["rows"]:
        if (SETTINGS.get(r["setting"]) or "(none)") != r["passes"]:
            raise SystemExit(f"--rederive {path}: setting {r['setting']!r} is not {r['passes']!r}")
    compile_all(work, names)
    spec = dataclasses.replace(
        resolve_spec(get_target("cpu")), peak_flops=dict(doc["spec"]["peak_flops"])
    )
    llc_bytes = float((doc.get("llc_sweep") or {}).get("effective_bytes") or 0)
    for r in doc["rows"]:
        bw = {k: v * 1e9 for k, v in r["read_gbs_same_run"].items()}
        graph = load(str(work / r["setting"])).graph
        r.update(
            predicted(graph, spec, llc_bytes, bw, r["measured_decode_ms"], r["measured_prefill_ms"])
        )
    doc["efficiency_by_kernel_class"] = fit(doc["rows"])
    doc["rederived"] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "HEAD").strip(),
        "command": f"python bench/roofline_validate.py --rederive {path}",
        "what": "memory_level, predictions, efficiencies and efficiency_by_kernel_class by the "
        "roofline of this commit (no measurement changed)",
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/llmc-roofline-validate")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="llmc bench --repeat (best of)")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--phase", choices=("compile", "all"), default="all")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="one thread, every call and probe timed by CPU time (a loaded machine)",
    )
    ap.add_argument("--worker", metavar="ART", help=argparse.SUPPRESS)
    ap.add_argument("-o", "--out", default=None)
    ap.add_argument(
        "--rederive",
        metavar="JSON",
        default=None,
        help="measure nothing: derive a result file's predictions and factors again with "
        "today's roofline from its own measurements (compiles the settings under --work)",
    )
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.repeat)
    if a.rederive:
        doc = rederive(Path(a.rederive), Path(a.work))
        for r in doc["rows"]:
            print(
                f"{r['setting']:12s} {r['memory_level']:>8s} {r['predicted_decode_ms']:8.2f} "
                f"{r['measured_decode_ms']:8.2f} {r['decode_efficiency']:6.3f} "
                f"{r['decode_efficiency_dram']:6.3f} {r['prefill_efficiency']:6.3f}"
            )
        return 0
    if a.cpu_time:
        os.environ["TVM_NUM_THREADS"] = "1"
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    names = [n for n in a.settings.split(",") if n]
    for n in names:
        if n not in SETTINGS:
            raise SystemExit(f"--settings: unknown {n!r} (known: {', '.join(SETTINGS)})")
    load_before = load_average()
    compiled = compile_all(work, names)
    if a.phase == "compile":
        return 0
    from llmc.codesign.roofline import kernel_class
    from llmc.compile import load
    from llmc.targets import get_target, resolve_spec
    from llmc.targets.host import cache_levels, llc_probe_mib, probe_llc

    spec = resolve_spec(get_target("cpu"))
    threads = int(os.environ.get("TVM_NUM_THREADS", "") or os.cpu_count() or 1)
    levels = cache_levels()
    llc_mib = llc_probe_mib(levels, threads)
    # the part of the LLC this machine gets, swept now with the clock of the measurements
    clock = time.process_time if a.cpu_time else time.perf_counter
    dram0 = probes(threads, None, 1, a.cpu_time)["dram"]
    llc_sweep = probe_llc(threads, dram0, levels, clock)
    graphs = {n: load(str(work / n)).graph for n in names}
    ws_mib = {n: int(predict(graphs[n], spec)["working_set_bytes"] // 2**20) for n in names}
    samples: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    loads = []
    for r in range(a.rounds):
        loads.append(load_average())
        for n in names:
            before = probes(threads, llc_mib, ws_mib[n], a.cpu_time)
            if a.cpu_time:
                got = run_worker(work / n, a.repeat)
            else:
                got = llmc(
                    "bench",
                    str(work / n),
                    "--prompt-len",
                    str(PROMPT),
                    "--new-tokens",
                    str(NEW),
                    "--repeat",
                    str(a.repeat),
                )
            after = probes(threads, llc_mib, ws_mib[n], a.cpu_time)
            samples[n].append(
                {
                    **{k: v for k, v in got.items() if k.endswith("_cpu") or "_cpu_" in k},
                    "decode_ms_per_token": got["decode_ms_per_token"],
                    "prefill_tokens_per_s": got["prefill_tokens_per_s"],
                    "read_gbs_before": {k: round(v / 1e9, 2) for k, v in before.items()},
                    "read_gbs_after": {k: round(v / 1e9, 2) for k, v in after.items()},
                    "load_average": load_average(),
                }
            )
            time.sleep(1.0)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    rows = []
    for n in names:
        if a.cpu_time:
            dec = statistics.median(s["decode_ms_per_token_cpu"] for s in samples[n])
            pre = statistics.median(s["prefill_ms_cpu"] for s in samples[n])
        else:
            dec = statistics.median(s["decode_ms_per_token"] for s in samples[n])
            pre = PROMPT * 1e3 / statistics.median(s["prefill_tokens_per_s"] for s in samples[n])

        def med(level: str, n: str = n) -> float:
            vals = [
                s[k][level] * 1e9
                for s in samples[n]
                for k in ("read_gbs_before", "read_gbs_after")
                if level in s[k]
            ]
            return statistics.median(vals) if vals else 0.0

        bw = {k: med(k) for k in ("dram", "llc", "working_set")}
        rows.append(
            {
                "setting": n,
                "passes": SETTINGS[n] or "(none)",
                "kernel_class": kernel_class(graphs[n]),
                "read_gbs_same_run": {k: round(v / 1e9, 2) for k, v in bw.items()},
                **predicted(graphs[n], spec, llc_sweep["effective_bytes"], bw, dec, pre),
                "samples": samples[n],
            }
        )
    result = {
        "benchmark": "roofline prediction vs measured CPU decode/prefill, GPT-2 small (random "
        "init), bandwidths probed in the same run around each measurement",
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "caches": {str(k): v for k, v in levels.items()},
        },
        "load_average": {"before": load_before, "per_round": loads, "after": load_average()},
        "llmc_commit": git("rev-parse", "HEAD").strip(),
        "settings": {
            "prompt": PROMPT,
            "new_tokens": NEW,
            "rounds": a.rounds,
            "repeat": a.repeat,
            "threads": threads,
            "clock": "process CPU time (one thread), calls and probes"
            if a.cpu_time
            else "wall (llmc bench; probes perf_counter)",
            "llc_probe_mib": llc_mib,
        },
        "llc_sweep": {**llc_sweep, "dram_read_gbs": round(dram0 / 1e9, 2)},
        "spec": {
            "peak_flops": spec.peak_flops,
            "llc_bytes": "llc_sweep.effective_bytes",
            "source": spec.source,
            "note": "mem_bandwidth / llc_bandwidth replaced per setting by the same-run probes; "
            "llc_bytes by this run's sweep",
        },
        "compile": compiled,
        "rows": rows,
        "efficiency_by_kernel_class": fit(rows),
    }
    text = json.dumps(result, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(
        f"{'setting':12s} {'level':>5s} {'GB/s':>6s} {'pred ms':>9s} {'meas ms':>9s} {'eff':>6s} "
        f"{'eff@DRAM':>8s} {'pre pred':>9s} {'pre meas':>9s} {'eff':>6s}"
    )
    for r in rows:
        lv = r["memory_level"]
        gbs = r["read_gbs_same_run"]["llc" if lv == "LLC" else "dram"]
        print(
            f"{r['setting']:12s} {lv:>5s} {gbs:6.1f} {r['predicted_decode_ms']:9.3f} "
            f"{r['measured_decode_ms']:9.3f} {r['decode_efficiency']:6.2f} "
            f"{r['decode_efficiency_dram']:8.2f} {r['predicted_prefill_ms']:9.2f} "
            f"{r['measured_prefill_ms']:9.2f} {r['prefill_efficiency']:6.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
