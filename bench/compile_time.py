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
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, cpu_name, git, load_average

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama2-7b")
    ap.add_argument("--targets", default="h100,a100,mi300x,cpu")
    ap.add_argument("--repeats", type=int, default=2, help="warm runs after the cold one")
    a = ap.parse_args(argv)
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
