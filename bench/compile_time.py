"""Compile time of ``llmc compile llama2-7b --target h100`` (and friends) on this machine.

Usage::

    python bench/compile_time.py                         # writes bench/compile_time.json
    python bench/compile_time.py --targets h100,mi300x --repeats 2

Each run is a fresh process (``llmc compile MODEL --target T -o TMP --json``), so imports and the
zoo graph cache are part of the time as a user sees it: the first run of a model traces it
(``cold``), later runs parse the cached graph. The phases come from the compile report
(``timing_s``: load, passes, backend; ``backend.timing_s``: lower, legalize, schedule, build,
export, where export includes nvcc or the AMDGPU link). ``llama2-7b`` is architecture-only (meta
weights): the artifact records its weight layout but holds no weight data, so the time is the
compiler's, not a 13 GB write. Goal (issue 4): <= 60 s for llama2-7b on h100.

Memory (issue 14 item 5)::

    python bench/compile_time.py --memory              # updates the "memory" key of the JSON

compiles, each in a fresh process whose peak RSS is read from ``wait4`` (the kernel's
``ru_maxrss``, as ``/usr/bin/time -v`` reports it), GPT-2 small (the zoo's ``gpt2`` config,
``GPT2LMHeadModel`` initialized under ``torch.manual_seed(0)`` and saved as safetensors in
WORK, so the real checkpoint path is measured) dense, ``rtn:bits=4:group=128`` and
``rtn:bits=8``, and TinyLlama-1.1B's architecture with seeded random weights in f32
(``llmc compile tinyllama-1.1b --random-weights --dtype f32``) dense and rtn4, all for
``--target cpu``, and Llama-2-7B's the same way with rtn4 (27 GB of f32 weights, more than the
RAM of the machine this was measured on). Each row records wall time, peak RSS (and the
peaks of its anonymous and file-backed parts, sampled from ``/proc/PID/status`` every 20 ms),
the stored weight bytes (of the source, before passes), the bound ``stored + 2 GB``, the
artifact's bytes and the compile report's phase times. The machine is shared: wall times are
indicative, RSS is reliable. ``--only LABEL,...`` measures and prints some runs, writing nothing;
with ``--update`` it puts them into the JSON (same label replaced). The calibrated passes
(gptq, wanda, sparsegpt, w8a8 on TinyLlama f32, 8 calibration windows of 128 tokens; a
random-weight model calibrates on byte ids)::

    python bench/compile_time.py --memory --only calibrated --update

The random-weight compiles spill their weights to ``$TMPDIR`` (27 GB free for Llama-2-7B).

A model ``NAME@N`` is zoo model ``NAME`` cut to ``N`` decoder layers of the same shapes
(``bench/zoo_layers.py``; its bound is its own stored bytes + 2 GB): the calibrated passes on
TinyLlama's and Llama-2-7B's shapes at 2 and 4 layers, whose difference is what one more layer
adds (``--only "llama2-7b@2 gptq4 g128 f32 calib 8x128"``). A watchdog samples the machine's
``MemAvailable`` every second and kills a compile when it drops below 3 GiB: that row records
``not_measured`` (the RSS it had reached) instead of a peak, and ``within_bound`` null.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, cpu_name, git, load_average
from zoo_layers import register

GOAL_S = 60.0


def run(model: str, target: str, cache_dir: Path) -> dict:
    out = Path(tempfile.mkdtemp(prefix="llmc-ct-")) / "a"
    cmd = [str(ROOT / ".venv" / "bin" / "llmc"), "compile", model, "--target", target]
    cmd += ["-o", str(out), "--json"]
    env = dict(os.environ, LLMC_CACHE_DIR=str(cache_dir))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.strip()}")
    rep = json.loads(p.stdout)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    meta = json.loads((out / "manifest.json").read_text()).get("backend", {}).get("model_meta", {})
    shutil.rmtree(out.parent, ignore_errors=True)
    return {
        "wall_s": wall,
        "timing_s": rep.get("timing_s"),
        "backend_timing_s": rep.get("backend", {}).get("timing_s"),
        "artifact_bytes": size,
        "kernels": rep.get("backend", {}).get("kernels"),
        "layer_functions": rep.get("backend", {}).get("layer_functions"),
        "dtype": meta.get("dtype"),
    }


GB = 1_000_000_000
#: a small calibration set for the calibrated runs (8 windows of 128 tokens)
CALIB = ["--calib-samples", "8", "--calib-seqlen", "128"]
#: (label, pass spec) of the calibrated memory runs
CALIBRATED = [
    ("gptq4 g128", "gptq:bits=4:group=128"),
    ("wanda 50%", "wanda:sparsity=0.5"),
    ("sparsegpt 50%", "sparsegpt:sparsity=0.5"),
    ("w8a8", "w8a8"),
]
#: (label, model, extra compile arguments); GPT2 is replaced by the generated HF directory
MEMORY_RUNS = [
    ("gpt2 dense", "GPT2", []),
    ("gpt2 rtn4 g128", "GPT2", ["--passes", "rtn:bits=4:group=128"]),
    ("gpt2 rtn8", "GPT2", ["--passes", "rtn:bits=8"]),
    ("tinyllama-1.1b dense f32", "tinyllama-1.1b", ["--random-weights", "--dtype", "f32"]),
    (
        "tinyllama-1.1b rtn4 g128 f32",
        "tinyllama-1.1b",
        ["--random-weights", "--dtype", "f32", "--passes", "rtn:bits=4:group=128"],
    ),
    # 27 GB of f32 weights: more than this machine's RAM (the spilled random weights need as
    # much free disk in $TMPDIR)
    (
        "llama2-7b rtn4 g128 f32",
        "llama2-7b",
        ["--random-weights", "--dtype", "f32", "--passes", "rtn:bits=4:group=128"],
    ),
    # calibrated passes (run layer by layer, llmc.passes.calibration.run_layerwise) on a small
    # calibration set, so that each run takes minutes: GPT-2 small's architecture with random
    # f32 weights (0.5 GB), then TinyLlama's (4.4 GB; about an hour each on a loaded 2-vCPU box)
    *(
        (
            f"gpt2 {label} f32 random calib 8x128",
            "gpt2",
            ["--random-weights", "--dtype", "f32", "--passes", spec, *CALIB],
        )
        for label, spec in CALIBRATED
    ),
    *(
        (
            f"tinyllama-1.1b {label} f32 calib 8x128",
            "tinyllama-1.1b",
            ["--random-weights", "--dtype", "f32", "--passes", spec, *CALIB],
        )
        for label, spec in CALIBRATED
    ),
    # TinyLlama's and Llama-2-7B's layer shapes (2048 x 5632 and 4096 x 11008 linears,
    # 32000-token vocabulary) cut to 2 and 4 layers (bench/zoo_layers.py): all layers of GPTQ
    # take hours on a loaded 2-vCPU box; the difference of two depths' peaks is what one more
    # layer adds
    *(
        (
            f"tinyllama-1.1b@{n} {label} f32 calib 8x128",
            f"tinyllama-1.1b@{n}",
            ["--random-weights", "--dtype", "f32", "--passes", spec, *CALIB],
        )
        for label, spec in CALIBRATED
        for n in (2, 4)
    ),
    *(
        (
            f"llama2-7b@{n} {label} f32 calib 8x128",
            f"llama2-7b@{n}",
            ["--random-weights", "--dtype", "f32", "--passes", spec, *CALIB],
        )
        for label, spec in CALIBRATED
        if label in ("gptq4 g128", "w8a8")
        for n in (2, 4)
    ),
]


def gpt2_dir(work: Path) -> Path:
    d = work / "gpt2-hf"
    if not (d / "model.safetensors").is_file():
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        from llmc.frontends import zoo

        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(**zoo.config("gpt2"))).eval().save_pretrained(d)
    return d


def _mem_available() -> int:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (what the kernel could give without
    swapping)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable")


def _sample_status(
    pid: int, peaks: dict[str, int], stop: threading.Event, min_available: int = 0
) -> None:
    """Peak ``RssAnon`` / ``RssFile`` / ``RssShmem`` of ``pid`` from ``/proc/PID/status``, every
    20 ms (the kernel keeps only the peak of their sum, ``ru_maxrss``; mapped file pages are
    reclaimable, anonymous ones are not). Watchdog: once a second, when the machine's
    ``MemAvailable`` is below ``min_available`` the process is killed (``peaks["killed"]``
    records the RSS and ``MemAvailable`` at that moment), so a compile that would not fit a
    shared machine's RAM stops before the kernel's OOM killer picks some other process."""
    path = f"/proc/{pid}/status"
    tick = 0
    while not stop.is_set():
        try:
            rss = 0
            with open(path) as f:
                for line in f:
                    key, _, val = line.partition(":")
                    if key in ("RssAnon", "RssFile", "RssShmem"):
                        v = int(val.split()[0]) * 1024
                        rss += v
                        peaks[key] = max(peaks.get(key, 0), v)
            if min_available and tick % 50 == 0 and (avail := _mem_available()) < min_available:
                os.kill(pid, signal.SIGKILL)
                peaks["killed"] = 1
                peaks["killed_rss"] = rss
                peaks["killed_mem_available"] = avail
                return
        except OSError:
            return
        tick += 1
        stop.wait(0.02)


#: the watchdog's floor: a compile is killed when the machine's MemAvailable drops below it
MIN_AVAILABLE = 3 * 2**30


def measure(
    model: str, extra: list[str], cache_dir: Path, min_available: int = MIN_AVAILABLE
) -> dict:
    """One compile in a fresh process: wall time and the kernel's peak RSS of that process,
    and the sampled peaks of its anonymous and file-backed parts. ``NAME@N`` is zoo model
    ``NAME`` cut to ``N`` layers (``bench/zoo_layers.py``). A compile killed by the watchdog
    (:func:`_sample_status`) gives a row with ``not_measured`` saying at what RSS it stopped."""
    out = Path(tempfile.mkdtemp(prefix="llmc-mem-")) / "a"
    launcher = [str(ROOT / "bench" / "zoo_layers.py")] if "@" in model else ["-m", "llmc.cli"]
    cmd = [sys.executable, *launcher, "compile", model, "--target", "cpu", *extra]
    cmd += ["-o", str(out), "--json"]
    env = dict(os.environ, LLMC_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT))
    load0 = load_average()
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as so, tempfile.TemporaryFile() as se:
        p = subprocess.Popen(cmd, stdout=so, stderr=se, env=env)
        peaks: dict[str, int] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_status, args=(p.pid, peaks, stop, min_available))
        sampler.start()
        _, status, ru = os.wait4(p.pid, 0)
        stop.set()
        sampler.join()
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read().decode(), se.read().decode()
    command = "llmc " + " ".join(cmd[len(launcher) + 1 :]).replace(str(out), "OUT")
    head = {
        "command": command,
        "load_average_at_start": load0,
        "wall_s": round(wall, 2),
        "peak_rss_bytes": ru.ru_maxrss * 1024,
        "peak_rss_anon_bytes_sampled": peaks.get("RssAnon"),
        "peak_rss_file_bytes_sampled": peaks.get("RssFile"),
    }
    if peaks.get("killed"):
        shutil.rmtree(out.parent, ignore_errors=True)
        rss = peaks["killed_rss"]
        return {
            **head,
            "not_measured": (
                f"would exceed RAM here: killed at RSS {rss / GB:.2f} GB after {wall:.0f} s, "
                f"MemAvailable {peaks['killed_mem_available'] / 2**30:.2f} GiB < "
                f"{min_available / 2**30:.0f} GiB (watchdog)"
            ),
        }
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {stderr.strip()[-2000:]}")
    rep = json.loads(stdout)
    files = {f.name: f.stat().st_size for f in out.rglob("*.safetensors")}
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    shutil.rmtree(out.parent, ignore_errors=True)
    passes = rep.get("passes") or []
    return {
        **head,
        "timing_s": rep.get("timing_s"),
        "pass_calibration": [e.get("calibration") for e in passes if isinstance(e, dict)],
        "artifact_bytes": size,
        "safetensors_bytes": files,
    }


def memory_suite(work: Path, only: list[str] | None = None) -> list[dict]:
    from llmc.analysis import param_summary
    from llmc.compile import load

    cache = Path(tempfile.mkdtemp(prefix="llmc-mem-cache-"))
    src = {"GPT2": str(gpt2_dir(work))}
    rows = []
    for label, model, extra in MEMORY_RUNS:
        if only and label not in only:
            continue
        model = src.get(model, model)
        dtype = extra[extra.index("--dtype") + 1] if "--dtype" in extra else None
        stored = int(param_summary(load(register(model), dtype=dtype).graph)["storage_bytes"])
        head = git("rev-parse", "HEAD").strip()  # the code measured (commits may follow)
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "llmc").strip())
        r = measure(model, extra, cache)
        r = {"label": label, "stored_weight_bytes": stored, **r}
        r["llmc_commit"] = head + ("+dirty llmc/" if dirty else "")
        r["bound_bytes"] = stored + 2 * GB
        r["within_bound"] = r["peak_rss_bytes"] <= r["bound_bytes"]
        if "not_measured" in r:
            r["within_bound"] = None
            print(f"{label}: not measured: {r['not_measured']}", file=sys.stderr)
        rows.append(r)
        if "not_measured" in r:
            continue
        anon = (r["peak_rss_anon_bytes_sampled"] or 0) / GB
        print(
            f"{label}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_bytes'] / GB:.2f} GB "
            f"(anonymous {anon:.2f} GB) "
            f"(weights {stored / GB:.2f} GB, bound {r['bound_bytes'] / GB:.2f} GB), "
            f"artifact {r['artifact_bytes'] / GB:.2f} GB",
            file=sys.stderr,
        )
    shutil.rmtree(cache, ignore_errors=True)
    return rows


def merge_runs(path: Path, rows: list[dict], command: str) -> None:
    """Put ``rows`` into ``path``'s ``memory.runs`` (a run with the same label is replaced),
    each stamped with the commit, date and command that measured it (a row's own
    ``llmc_commit``, recorded when it was measured, is kept)."""
    result = json.loads(path.read_text()) if path.is_file() else {}
    mem = result.setdefault("memory", {"runs": []})
    stamp = {
        "llmc_commit": git("rev-parse", "HEAD").strip(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "suite_command": command,
    }
    new = {r["label"]: {**stamp, **r} for r in rows}  # a row's own commit (measured) wins
    runs = [new.pop(r["label"], r) for r in mem.get("runs", [])]
    mem["runs"] = runs + list(new.values())
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"updated {path} (memory: {', '.join(r['label'] for r in rows)})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama2-7b")
    ap.add_argument("--targets", default="h100,a100,mi300x,cpu")
    ap.add_argument("--repeats", type=int, default=2, help="warm runs after the cold one")
    ap.add_argument(
        "--memory", action="store_true", help="peak RSS and wall time suite (issue 14 item 5)"
    )
    ap.add_argument("--work", default="/tmp/llmc-compile-mem", help="generated model folder")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated labels of memory runs ('calibrated': the calibrated passes' "
        "runs): measure and print those, write nothing (unless --update)",
    )
    ap.add_argument(
        "--update",
        action="store_true",
        help="with --only: put the measured runs into the JSON's memory runs (same label: "
        "replaced), keeping the others",
    )
    a = ap.parse_args(argv)
    if a.memory:
        out = ROOT / "bench" / "compile_time.json"
        result = json.loads(out.read_text()) if out.is_file() else {}
        load0 = load_average()
        if a.only:
            labels = [x for x in a.only.split(",") if x != "calibrated"]
            if "calibrated" in a.only.split(","):
                labels += [r[0] for r in MEMORY_RUNS if "calib" in r[0]]
            rows = memory_suite(Path(a.work), labels)
            print(json.dumps(rows, indent=1))
            if a.update:
                merge_runs(
                    out, rows, "python bench/compile_time.py " + " ".join(argv or sys.argv[1:])
                )
            return 0
        rows = memory_suite(Path(a.work))
        result["memory"] = {
            "command": "python bench/compile_time.py " + " ".join(argv or sys.argv[1:]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpu": cpu_name(),
                "cores": os.cpu_count(),
                "platform": platform.platform(),
                "load_average_at_start": load0,
                "load_average_at_end": load_average(),
                "note": "shared machine: wall times are indicative, peak RSS is reliable",
            },
            "llmc_commit": git("rev-parse", "HEAD").strip(),
            "bound": "peak RSS <= stored weight bytes + 2 GB (issue 14 item 5)",
            "runs": rows,
        }
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out} (memory)", file=sys.stderr)
        return 0
    load0 = load_average()
    cache = Path(tempfile.mkdtemp(prefix="llmc-ct-cache-"))
    rows = []
    for i, target in enumerate(a.targets.split(",")):
        runs = []
        if i == 0:
            runs.append({"cold": True, **run(a.model, target, cache)})
        for _ in range(a.repeats):
            runs.append({"cold": False, **run(a.model, target, cache)})
        warm = [r["wall_s"] for r in runs if not r["cold"]]
        rows.append(
            {
                "target": target,
                "runs": runs,
                "best_warm_wall_s": min(warm) if warm else None,
                "goal_s": GOAL_S if target == "h100" else None,
            }
        )
        print(
            f"{a.model} -> {target}: "
            + ", ".join(f"{r['wall_s']:.1f} s{' (cold)' if r['cold'] else ''}" for r in runs),
            file=sys.stderr,
        )
    shutil.rmtree(cache, ignore_errors=True)
    import tvm

    result = {
        "command": "python bench/compile_time.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_start": load0,
        },
        "versions": {
            "python": platform.python_version(),
            "tvm": tvm.__version__,
            "llmc_commit": git("rev-parse", "HEAD").strip(),
            "nvcc": _first_line(["nvcc", "--version"], -1),
        },
        "model": a.model,
        "results": rows,
    }
    out = ROOT / "bench" / "compile_time.json"
    if out.is_file() and "memory" in (old := json.loads(out.read_text())):
        result["memory"] = old["memory"]
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _first_line(cmd: list[str], index: int = 0) -> str:
    try:
        lines = subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()
        return lines[index] if lines else ""
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
