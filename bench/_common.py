"""What every benchmark records about the machine and the checkout (run as ``python bench/X.py``,
so this module is importable as ``_common``)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform`` where that is unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git(*args: str) -> str:
    """The stdout of ``git ARGS`` in the checkout, as is ("" when git fails)."""
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return r.stdout


def module_at(rev: str, path: str, error: str):
    """``path`` (a Python module of the checkout) as it was at git revision ``rev``, imported from
    a temp file; ``SystemExit(error)`` (one line, exit 1) when that revision has no such file."""
    import importlib.util
    import tempfile

    src = git("show", f"{rev}:{path}")
    if not src:
        raise SystemExit(error)
    f = Path(tempfile.mkdtemp(prefix="llmc-base-")) / Path(path).name
    f.write_text(src)
    spec = importlib.util.spec_from_file_location(f"base_{f.stem}", f)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


def record(script: str, argv: list[str], threads: Any, load_before: list[float]) -> dict[str, Any]:
    """The head of a benchmark's JSON: date, the command (``python bench/SCRIPT ARGV``), machine
    (CPU and thread count), the load average before (``load_before``) and now, and the commit."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": f"python bench/{script} " + " ".join(shlex.quote(x) for x in argv),
        "machine": {"cpu": cpu_name(), "threads": threads},
        "load_average": {"before": load_before, "after": load_average()},
        "llmc_commit": git("rev-parse", "HEAD").strip(),
    }


def finish(res: dict[str, Any], json_path: str | None) -> int:
    """Print the load average of ``res`` (:func:`record`) and write ``res`` to ``json_path``
    (when given); the script's exit status."""
    print(f"load average {res['load_average']['before']} -> {res['load_average']['after']}")
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def bare_decode_call(lm: Any, rt: Any, token: int = 5) -> Callable[[], Any]:
    """The one-token decode VM function of the runner ``lm`` bound to its arguments (``token`` at
    the cache's current length, the cache, the weights), with none of the runner's Python side:
    every call writes the same position. ``rt`` is the TVM runtime module the runner uses."""
    import torch

    entry = lm._entry(1, 1)
    fn = lm._fns[entry]
    n = lm._kv.lengths[0]
    args = [rt.from_dlpack(torch.tensor([[token]])), rt.from_dlpack(torch.tensor([[n]]))]
    args += lm._kv.handles
    if lm._takes_decode_start:
        args.append(rt.from_dlpack(torch.tensor(-1)))
    args += [rt.ShapeTuple(list(lm._kv.lengths[:1]) * len(lm._kv_syms)), *lm._entry_args[entry]]
    return lambda: fn(*args)
