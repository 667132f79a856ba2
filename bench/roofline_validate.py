"""The roofline model against measurements: predicted vs measured CPU time per token.

For GPT-2 small (the zoo configuration, ``GPT2LMHeadModel``'s own initialisation under
``torch.manual_seed(0)``, written once to ``WORK/gpt2-hf``), each compression setting is compiled
for ``--target cpu`` and

- **predicted**: ``llmc.codesign.roofline.analyze`` of the artifact's graph on this machine's
  measured spec (the ``cpu`` target's host spec: measured read bandwidth, peak FLOP/s from cores x
  clock x vector width), for a 128-token prompt and 64 generated tokens (the decode step at the mean
  cache length 160, as ``llmc bench`` averages over its steps);
- **measured**: ``llmc bench OUT --json --prompt-len 128 --new-tokens 64 --repeat 3`` in a fresh
  process, ``--rounds`` rounds with the settings interleaved (A B C ... A B C ...), the median of
  the rounds' best-of-3.

The error ``measured / predicted`` per setting is the efficiency of the kernels against the
roofline; its spread over settings says whether one factor per kernel class (dense f32, int8,
int4, N:M) corrects the model (the fitted factors are in the JSON and docs/codesign.md).

    python bench/roofline_validate.py [--work /tmp/rv] [--rounds 5] [-o bench/roofline_validate.json]
    python bench/roofline_validate.py --phase compile     # only build the artifacts
"""

from __future__ import annotations

import argparse
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


def predict(art: Path) -> dict[str, Any]:
    from llmc.codesign.roofline import Scenario, analyze, kernel_class
    from llmc.compile import load
    from llmc.targets import get_target, resolve_spec

    spec = resolve_spec(get_target("cpu"))
    g = load(str(art)).graph
    rep = analyze(g, spec, Scenario(prompt=PROMPT, decode=NEW))
    t = rep.totals
    return {
        "kernel_class": kernel_class(g),
        "decode_ms_per_token": t["decode"]["ms_per_token"],
        "prefill_ms": t["prefill"]["time_ms"],
        "decode_bytes": t["decode"]["bytes"],
        "decode_weight_bytes": t["decode"]["weight_bytes"],
        "spec": {
            "mem_bandwidth": spec.mem_bandwidth,
            "peak_flops": spec.peak_flops,
            "source": spec.source,
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/llmc-roofline-validate")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--phase", choices=("compile", "all"), default="all")
    ap.add_argument("-o", "--out", default=None)
    a = ap.parse_args()
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
    pred = {n: predict(work / n) for n in names}
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    loads = []
    for r in range(a.rounds):
        loads.append(load_average())
        for n in names:
            got = llmc(
                "bench",
                str(work / n),
                "--prompt-len",
                str(PROMPT),
                "--new-tokens",
                str(NEW),
                "--repeat",
                "3",
            )
            samples[n].append(
                {
                    "decode_ms_per_token": got["decode_ms_per_token"],
                    "prefill_tokens_per_s": got["prefill_tokens_per_s"],
                }
            )
            time.sleep(1.0)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    rows = []
    for n in names:
        dec = statistics.median(s["decode_ms_per_token"] for s in samples[n])
        pre = PROMPT * 1e3 / statistics.median(s["prefill_tokens_per_s"] for s in samples[n])
        p = pred[n]
        rows.append(
            {
                "setting": n,
                "passes": SETTINGS[n] or "(none)",
                "kernel_class": p["kernel_class"],
                "predicted_decode_ms": p["decode_ms_per_token"],
                "measured_decode_ms": dec,
                "decode_efficiency": p["decode_ms_per_token"] / dec,
                "predicted_prefill_ms": p["prefill_ms"],
                "measured_prefill_ms": pre,
                "prefill_efficiency": p["prefill_ms"] / pre,
                "decode_weight_mb": p["decode_weight_bytes"] / 1e6,
                "samples": samples[n],
            }
        )
    result = {
        "benchmark": "roofline prediction vs measured CPU decode/prefill, GPT-2 small (random init)",
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()},
        "load_average": {"before": load_before, "per_round": loads, "after": load_average()},
        "llmc_commit": git("rev-parse", "HEAD").strip(),
        "settings": {
            "prompt": PROMPT,
            "new_tokens": NEW,
            "rounds": a.rounds,
            "threads": os.environ.get("TVM_NUM_THREADS", str(os.cpu_count())),
        },
        "spec": pred[names[0]]["spec"],
        "compile": compiled,
        "rows": rows,
        "efficiency_by_kernel_class": {
            r["kernel_class"]: {
                "decode": round(r["decode_efficiency"], 3),
                "prefill": round(r["prefill_efficiency"], 3),
            }
            for r in rows
        },
    }
    text = json.dumps(result, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(
        f"{'setting':12s} {'pred ms':>9s} {'meas ms':>9s} {'eff':>6s} {'pre pred':>9s} "
        f"{'pre meas':>9s} {'eff':>6s}"
    )
    for r in rows:
        print(
            f"{r['setting']:12s} {r['predicted_decode_ms']:9.3f} {r['measured_decode_ms']:9.3f} "
            f"{r['decode_efficiency']:6.2f} {r['predicted_prefill_ms']:9.2f} "
            f"{r['measured_prefill_ms']:9.2f} {r['prefill_efficiency']:6.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
